//! Shared pieces of OpenAI's wire format: JSON body parsing with OpenAI-style errors, and the
//! list and model objects. The request views the gateway reads in one pass live in
//! `gateway_proxy::request`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// Parses a JSON body, turning serde's message into a 400 that names the problem.
pub fn parse_json<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid_request("The request body is empty; expected JSON."));
    }
    serde_json::from_slice(body).map_err(|e| {
        let msg = if e.is_syntax() || e.is_eof() {
            format!("We could not parse the JSON body of your request: {e}")
        } else {
            format!("Invalid request body: {e}")
        };
        ApiError::invalid_request(msg)
    })
}

/// One entry of `GET /v1/models`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Model {
    pub id: String,
    pub object: Cow<'static, str>,
    pub created: i64,
    pub owned_by: String,
}

/// OpenAI's list envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct List<T> {
    pub object: Cow<'static, str>,
    pub data: Vec<T>,
}

impl<T> List<T> {
    pub fn new(data: Vec<T>) -> Self {
        Self { object: Cow::Borrowed("list"), data }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_parse_or_get_a_400_that_says_why() {
        let v: serde_json::Value = parse_json(br#"{"a":1}"#).unwrap();
        assert_eq!(v["a"], 1);
        let empty = parse_json::<serde_json::Value>(b"").unwrap_err();
        assert!(empty.message.contains("empty"), "{}", empty.message);
        let broken = parse_json::<serde_json::Value>(b"{not json").unwrap_err();
        assert!(broken.message.contains("could not parse"), "{}", broken.message);
    }

    #[test]
    fn lists_have_openais_envelope() {
        let l = List::new(vec![1, 2]);
        assert_eq!(
            serde_json::to_value(&l).unwrap(),
            serde_json::json!({"object": "list", "data": [1, 2]})
        );
    }
}
