//! One pass over a request body: the few fields the gateway needs, and the refusal of fields
//! that would steer the upstream.
//!
//! LiteLLM honours request-body fields such as `api_base`, `base_url`, `api_key` and
//! `user_config`; they have been used to send provider keys to an attacker's server
//! (CVE-2024-6587). The gateway refuses any such field, at the top level or inside
//! `metadata`, and any field with a forbidden prefix (`litellm_`), before anything is
//! forwarded. Every other field passes through untouched: the bytes forwarded are the client's.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use gateway_core::ApiError;
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The OpenAI endpoints the gateway forwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Embeddings,
}

impl Endpoint {
    /// The path below `/v1/`.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat/completions",
            Endpoint::Embeddings => "embeddings",
        }
    }

    /// The name used in logs, metrics and usage records.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

/// Fields a client may not send (configurable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForbiddenFields {
    pub names: Vec<String>,
    pub prefixes: Vec<String>,
}

impl Default for ForbiddenFields {
    fn default() -> Self {
        let names = [
            "api_base",
            "base_url",
            "api_key",
            "api_version",
            "user_config",
            "organization",
            "azure_ad_token",
            "aws_access_key_id",
            "aws_secret_access_key",
            "aws_session_token",
            "aws_region_name",
            "vertex_credentials",
            "vertex_project",
            "vertex_location",
            "custom_llm_provider",
            "extra_headers",
            "proxy_server_request",
            "secret_fields",
        ];
        Self { names: names.map(String::from).to_vec(), prefixes: vec!["litellm_".into()] }
    }
}

impl ForbiddenFields {
    pub fn forbids(&self, field: &str) -> bool {
        self.names.iter().any(|n| n == field)
            || self.prefixes.iter().any(|p| field.starts_with(p.as_str()))
    }
}

/// What the gateway knows about a request after one pass over its body.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestView<'a> {
    pub model: Cow<'a, str>,
    pub stream: bool,
    /// The client asked for the final usage chunk itself.
    pub client_wants_usage: bool,
    /// The body has a `stream_options` object.
    pub has_stream_options: bool,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
    /// Bytes of `messages` (chat) or `input` (embeddings): the basis of the token estimate.
    pub prompt_bytes: usize,
}

impl RequestView<'_> {
    /// A cheap estimate of the prompt's tokens (4 bytes of JSON per token), for the limiter's
    /// reservation before the real count is known.
    pub fn estimated_prompt_tokens(&self) -> u64 {
        (self.prompt_bytes as u64).div_ceil(4).max(1)
    }
}

/// Parses and checks a request body for `endpoint` in one pass.
pub fn inspect<'a>(
    body: &'a [u8],
    endpoint: Endpoint,
    forbidden: &ForbiddenFields,
) -> Result<RequestView<'a>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid_request("The request body is empty; expected JSON."));
    }
    let bad_field = RefCell::new(None);
    let seed = Inspector { endpoint, forbidden, bad_field: &bad_field };
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = seed.deserialize(&mut de).and_then(|view| de.end().map(|()| view));
    match parsed {
        Ok(view) => Ok(view),
        Err(e) => {
            let message = e.to_string();
            let message = message.split(" at line ").next().unwrap_or(&message).to_owned();
            Err(match bad_field.into_inner() {
                Some(field) => ApiError::invalid_request(message).with_param(field),
                None if e.is_syntax() || e.is_eof() => ApiError::invalid_request(format!(
                    "We could not parse the JSON body of your request: {message}"
                )),
                None => ApiError::invalid_request(format!("Invalid request body: {message}")),
            })
        }
    }
}

struct Inspector<'f> {
    endpoint: Endpoint,
    forbidden: &'f ForbiddenFields,
    /// The field at fault, for the error's `param`.
    bad_field: &'f RefCell<Option<String>>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// Checks the keys of `metadata` for forbidden fields, ignoring values.
struct MetadataSeed<'f>(&'f ForbiddenFields);

impl<'de> DeserializeSeed<'de> for MetadataSeed<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for MetadataSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            if self.0.forbids(&key) {
                return Err(de::Error::custom(format!(
                    "'metadata.{key}' is not allowed: the gateway chooses the upstream"
                )));
            }
            map.next_value::<IgnoredAny>()?;
        }
        Ok(())
    }

    // Anything but an object is none of our business.
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Inspector<'_> {
    type Value = RequestView<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Inspector<'_> {
    type Value = RequestView<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut model: Option<Cow<'de, str>> = None;
        let mut stream = None;
        let mut stream_options: Option<StreamOptions> = None;
        let mut max_tokens = None;
        let mut max_completion_tokens = None;
        let mut prompt: Option<&'de RawValue> = None;
        let prompt_field = match self.endpoint {
            Endpoint::ChatCompletions => "messages",
            Endpoint::Embeddings => "input",
        };
        let fail = |field: &str| {
            *self.bad_field.borrow_mut() = Some(field.to_owned());
        };
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match key.as_ref() {
                "model" => {
                    fail("model");
                    let m: Cow<'de, str> = map
                        .next_value()
                        .map_err(|_| de::Error::custom("'model' must be a string"))?;
                    model = Some(m);
                }
                "stream" => {
                    fail("stream");
                    let s: Option<bool> = map
                        .next_value()
                        .map_err(|_| de::Error::custom("'stream' must be a boolean"))?;
                    stream = s;
                }
                "stream_options" => {
                    fail("stream_options");
                    let o: Option<StreamOptions> = map.next_value().map_err(|_| {
                        de::Error::custom(
                            "'stream_options' must be an object with a boolean 'include_usage'",
                        )
                    })?;
                    stream_options = o;
                }
                "max_tokens" => {
                    fail("max_tokens");
                    max_tokens = map.next_value::<Option<u64>>().map_err(|_| {
                        de::Error::custom("'max_tokens' must be a non-negative integer")
                    })?;
                }
                "max_completion_tokens" => {
                    fail("max_completion_tokens");
                    max_completion_tokens = map.next_value::<Option<u64>>().map_err(|_| {
                        de::Error::custom("'max_completion_tokens' must be a non-negative integer")
                    })?;
                }
                "metadata" => {
                    fail("metadata");
                    map.next_value_seed(MetadataSeed(self.forbidden))?;
                }
                k if k == prompt_field => {
                    fail(if prompt_field == "messages" { "messages" } else { "input" });
                    prompt = Some(map.next_value()?);
                }
                k if self.forbidden.forbids(k) => {
                    fail(k);
                    return Err(de::Error::custom(format!(
                        "'{k}' is not allowed: the gateway chooses the upstream"
                    )));
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            *self.bad_field.borrow_mut() = None;
        }
        let model = match model {
            Some(m) if !m.trim().is_empty() => m,
            Some(_) => {
                fail("model");
                return Err(de::Error::custom("'model' must not be empty"));
            }
            None => {
                fail("model");
                return Err(de::Error::custom("Missing required parameter: 'model'"));
            }
        };
        let Some(prompt) = prompt else {
            fail(if prompt_field == "messages" { "messages" } else { "input" });
            return Err(de::Error::custom(format!("Missing required parameter: '{prompt_field}'")));
        };
        if self.endpoint == Endpoint::ChatCompletions && !prompt.get().starts_with('[') {
            fail("messages");
            return Err(de::Error::custom("'messages' must be an array"));
        }
        let stream = stream.unwrap_or(false);
        if stream && self.endpoint == Endpoint::Embeddings {
            fail("stream");
            return Err(de::Error::custom("embeddings cannot be streamed"));
        }
        Ok(RequestView {
            model,
            stream,
            client_wants_usage: stream_options
                .as_ref()
                .and_then(|o| o.include_usage)
                .unwrap_or(false),
            has_stream_options: stream_options.is_some(),
            max_tokens: max_completion_tokens.or(max_tokens),
            prompt_bytes: prompt.get().len(),
        })
    }
}

/// The body to forward: the client's bytes, except that a streaming request is made to ask
/// for the final usage chunk. Without `stream_options` that is one splice after the opening
/// brace (a copy, no re-serialisation); a `stream_options` without `include_usage: true` is
/// rewritten through a JSON value, which only such requests pay for.
pub fn forward_body(body: Bytes, view: &RequestView<'_>) -> Result<Bytes, ApiError> {
    const FIELD: &[u8] = br#""stream_options":{"include_usage":true},"#;
    if !view.stream || view.client_wants_usage {
        return Ok(body);
    }
    if !view.has_stream_options {
        let open = body
            .iter()
            .position(|b| *b == b'{')
            .ok_or_else(|| ApiError::invalid_request("expected a JSON object"))?;
        let mut out = BytesMut::with_capacity(body.len() + FIELD.len());
        out.put_slice(&body[..=open]);
        out.put_slice(FIELD);
        out.put_slice(&body[open + 1..]);
        return Ok(out.freeze());
    }
    let mut value: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid_request(format!("Invalid request body: {e}")))?;
    value["stream_options"]["include_usage"] = serde_json::Value::Bool(true);
    serde_json::to_vec(&value).map(Bytes::from).map_err(|_| ApiError::internal())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<RequestView<'_>, ApiError> {
        inspect(body.as_bytes(), Endpoint::ChatCompletions, &ForbiddenFields::default())
    }

    #[test]
    fn reads_the_fields_it_needs_and_ignores_the_rest() {
        let v = chat(r#"{"model":"gpt-4","messages":[{"role":"user","content":"hi"}],"stream":true,
            "max_tokens":7,"temperature":0.2,"tools":[{"x":{"y":[1,2]}}],"metadata":{"trace":"a"}}"#)
        .unwrap();
        assert_eq!(v.model, "gpt-4");
        assert!(v.stream && !v.client_wants_usage && !v.has_stream_options);
        assert_eq!(v.max_tokens, Some(7));
        assert_eq!(v.prompt_bytes, r#"[{"role":"user","content":"hi"}]"#.len());
        let v = chat(
            r#"{"model":"m","messages":[],"max_tokens":5,"max_completion_tokens":9,"stream":null}"#,
        )
        .unwrap();
        assert_eq!((v.max_tokens, v.stream), (Some(9), false));
    }

    #[test]
    fn escaped_model_names_are_decoded() {
        assert_eq!(chat(r#"{"model":"gpt\u002d4","messages":[]}"#).unwrap().model, "gpt-4");
    }

    #[test]
    fn fields_that_steer_the_upstream_are_refused_anywhere() {
        for body in [
            r#"{"model":"m","messages":[],"api_base":"http://evil"}"#,
            r#"{"api_key":"sk-x","model":"m","messages":[]}"#,
            r#"{"model":"m","messages":[],"base_url":"http://evil"}"#,
            r#"{"model":"m","messages":[],"user_config":{"model_list":[]}}"#,
            r#"{"model":"m","messages":[],"litellm_logging_obj":1}"#,
            r#"{"model":"m","messages":[],"metadata":{"api_base":"http://evil"}}"#,
            r#"{"model":"m","messages":[],"metadata":{"litellm_x":true}}"#,
        ] {
            let err = chat(body).unwrap_err();
            assert_eq!(err.kind, gateway_core::ErrorKind::InvalidRequest, "{body}");
            assert!(err.message.contains("not allowed"), "{body}: {}", err.message);
            assert!(
                err.param.as_deref().is_some_and(|p| body.contains(p)),
                "{body}: {:?}",
                err.param
            );
        }
        let custom = ForbiddenFields { names: vec!["seed".into()], prefixes: vec![] };
        assert!(
            inspect(br#"{"model":"m","messages":[],"seed":1}"#, Endpoint::ChatCompletions, &custom)
                .is_err()
        );
        assert!(
            inspect(
                br#"{"model":"m","messages":[],"api_base":"x"}"#,
                Endpoint::ChatCompletions,
                &custom
            )
            .is_ok()
        );
    }

    #[test]
    fn bad_input_names_the_field() {
        let cases = [
            (r#"{"messages":[]}"#, Some("model")),
            (r#"{"model":"","messages":[]}"#, Some("model")),
            (r#"{"model":7,"messages":[]}"#, Some("model")),
            (r#"{"model":"m"}"#, Some("messages")),
            (r#"{"model":"m","messages":"hi"}"#, Some("messages")),
            (r#"{"model":"m","messages":[],"stream":"yes"}"#, Some("stream")),
            (r#"{"model":"m","messages":[],"max_tokens":-1}"#, Some("max_tokens")),
            (
                r#"{"model":"m","messages":[],"stream_options":{"include_usage":"y"}}"#,
                Some("stream_options"),
            ),
            (r#"{"model":"m","messages":[]"#, None),
            (r"[1,2]", None),
            (r#"{"model":"m","messages":[]} trailing"#, None),
        ];
        for (body, param) in cases {
            let err = chat(body).unwrap_err();
            assert_eq!(err.param.as_deref(), param, "{body}: {}", err.message);
            assert!(!err.message.contains(" at line "), "{}", err.message);
        }
        let e = inspect(
            br#"{"model":"e","input":"x","stream":true}"#,
            Endpoint::Embeddings,
            &ForbiddenFields::default(),
        );
        assert_eq!(e.unwrap_err().param.as_deref(), Some("stream"));
        let e = inspect(br#"{"model":"e"}"#, Endpoint::Embeddings, &ForbiddenFields::default());
        assert_eq!(e.unwrap_err().param.as_deref(), Some("input"));
    }

    #[test]
    fn streaming_bodies_ask_for_usage_without_losing_a_byte() {
        let body =
            Bytes::from_static(br#" {"model":"m","messages":[],"stream":true,"x":{"keep":"me"}}"#);
        let view = chat(std::str::from_utf8(&body).unwrap()).unwrap();
        let out = forward_body(body.clone(), &view).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["x"]["keep"], "me");
        assert_eq!(out.len(), body.len() + r#""stream_options":{"include_usage":true},"#.len());

        let with_options = Bytes::from_static(br#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":false}}"#);
        let view = chat(std::str::from_utf8(&with_options).unwrap()).unwrap();
        let v: serde_json::Value =
            serde_json::from_slice(&forward_body(with_options.clone(), &view).unwrap()).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);

        for unchanged in [
            &br#"{"model":"m","messages":[]}"#[..],
            br#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true}}"#,
        ] {
            let b = Bytes::from_static(unchanged);
            let view = chat(std::str::from_utf8(unchanged).unwrap()).unwrap();
            assert_eq!(forward_body(b.clone(), &view).unwrap(), b);
        }
    }
}
