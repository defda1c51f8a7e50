//! The parts of OpenAI's wire format the gateway reads. Requests are parsed once into borrowed
//! views of the few fields the gateway needs; the bytes forwarded upstream are the client's, so
//! every field we do not name passes through untouched.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::ApiError;

/// `stream_options` of a chat request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// The fields of `POST /v1/chat/completions` that the gateway reads.
#[derive(Debug, Deserialize)]
pub struct ChatRequestFields<'a> {
    #[serde(borrow)]
    pub model: Option<Cow<'a, str>>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub n: Option<u64>,
    #[serde(borrow)]
    pub messages: Option<&'a RawValue>,
}

/// The fields of `POST /v1/embeddings` that the gateway reads.
#[derive(Debug, Deserialize)]
pub struct EmbeddingRequestFields<'a> {
    #[serde(borrow)]
    pub model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub input: Option<&'a RawValue>,
}

/// A validated view of a chat request.
#[derive(Debug)]
pub struct ChatRequest<'a> {
    pub model: Cow<'a, str>,
    pub stream: bool,
    /// Whether the client itself asked for the final usage chunk.
    pub client_wants_usage: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
    /// Size of the `messages` JSON in bytes: the basis of the token estimate.
    pub messages_bytes: usize,
}

/// Parses and validates the fields of a chat request, without copying the body.
pub fn parse_chat_request(body: &[u8]) -> Result<ChatRequest<'_>, ApiError> {
    let fields: ChatRequestFields<'_> = parse_json(body)?;
    let model = non_empty_model(fields.model)?;
    let messages = fields.messages.ok_or_else(|| {
        ApiError::invalid_param("messages", "Missing required parameter: 'messages'.")
    })?;
    if !messages.get().starts_with('[') {
        return Err(ApiError::invalid_param("messages", "'messages' must be an array."));
    }
    Ok(ChatRequest {
        model,
        stream: fields.stream.unwrap_or(false),
        client_wants_usage: fields.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
        max_tokens: fields.max_completion_tokens.or(fields.max_tokens),
        messages_bytes: messages.get().len(),
    })
}

/// A validated view of an embeddings request.
#[derive(Debug)]
pub struct EmbeddingRequest<'a> {
    pub model: Cow<'a, str>,
    pub input_bytes: usize,
}

pub fn parse_embedding_request(body: &[u8]) -> Result<EmbeddingRequest<'_>, ApiError> {
    let fields: EmbeddingRequestFields<'_> = parse_json(body)?;
    let model = non_empty_model(fields.model)?;
    let input = fields
        .input
        .ok_or_else(|| ApiError::invalid_param("input", "Missing required parameter: 'input'."))?;
    Ok(EmbeddingRequest { model, input_bytes: input.get().len() })
}

fn non_empty_model(model: Option<Cow<'_, str>>) -> Result<Cow<'_, str>, ApiError> {
    match model {
        Some(m) if !m.trim().is_empty() => Ok(m),
        Some(_) => Err(ApiError::invalid_param("model", "'model' must not be empty.")),
        None => Err(ApiError::invalid_param("model", "Missing required parameter: 'model'.")),
    }
}

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
    use crate::ErrorKind;

    #[test]
    fn chat_fields_are_read_without_touching_the_rest() {
        let body = br#"{"model":"gpt-4","messages":[{"role":"user","content":"hi"}],
            "stream":true,"stream_options":{"include_usage":true},"max_tokens":7,"foo":{"bar":1}}"#;
        let req = parse_chat_request(body).unwrap();
        assert_eq!(req.model, "gpt-4");
        assert!(req.stream && req.client_wants_usage);
        assert_eq!(req.max_tokens, Some(7));
        assert_eq!(req.messages_bytes, r#"[{"role":"user","content":"hi"}]"#.len());
    }

    #[test]
    fn bad_chat_requests_name_the_field() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"{not json", None),
            (b"", None),
            (br#"{"messages":[]}"#, Some("model")),
            (br#"{"model":"m","messages":"hi"}"#, Some("messages")),
            (br#"{"model":"m"}"#, Some("messages")),
            (br#"{"model":"  ","messages":[]}"#, Some("model")),
        ];
        for (body, param) in cases {
            let err = parse_chat_request(body).unwrap_err();
            assert_eq!(err.kind, ErrorKind::InvalidRequest);
            assert_eq!(err.param.as_deref(), *param, "{}", String::from_utf8_lossy(body));
        }
        let err = parse_chat_request(br#"{"model":"m","messages":[],"stream":"yes"}"#).unwrap_err();
        assert!(err.message.contains("invalid type"), "{}", err.message);
    }

    #[test]
    fn escaped_model_names_are_decoded() {
        let req = parse_chat_request(br#"{"model":"gpt\u002d4","messages":[]}"#).unwrap();
        assert_eq!(req.model, "gpt-4");
    }

    #[test]
    fn embeddings_need_model_and_input() {
        assert_eq!(
            parse_embedding_request(br#"{"model":"e","input":"x"}"#).unwrap().input_bytes,
            3
        );
        let err = parse_embedding_request(br#"{"model":"e"}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("input"));
    }
}
