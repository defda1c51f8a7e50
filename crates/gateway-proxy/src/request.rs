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
use gateway_core::{ApiError, Scope};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

/// The endpoints the gateway forwards: OpenAI's, and Anthropic's Messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    /// The legacy text completions (`prompt` in, `choices[].text` out).
    Completions,
    Embeddings,
    /// OpenAI's Responses API.
    Responses,
    /// Anthropic's Messages API.
    Messages,
}

/// How an endpoint's answers and streams are shaped: where their usage is, how a stream ends,
/// what an error looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dialect {
    /// Chat completions, completions and embeddings: `usage.prompt_tokens`; a stream reports
    /// usage in a final chunk when `stream_options.include_usage` asks, and ends with `[DONE]`.
    OpenAi,
    /// The Responses API: `usage.input_tokens`; a stream's `response.completed` event carries
    /// the response and its usage, and ends it.
    Responses,
    /// Anthropic's Messages: `usage.input_tokens` plus cache writes and reads; a stream's
    /// `message_start` holds the input, `message_delta` the output so far, `message_stop` ends it.
    Anthropic,
}

impl Endpoint {
    /// The path below `/v1/`.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat/completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
        }
    }

    /// The name used in logs, metrics and usage records.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat.completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Responses => "responses",
            Endpoint::Messages => "messages",
        }
    }

    /// The scope a key needs to call it.
    pub fn scope(self) -> Scope {
        match self {
            Endpoint::ChatCompletions => Scope::ChatCompletions,
            Endpoint::Completions => Scope::Completions,
            Endpoint::Embeddings => Scope::Embeddings,
            Endpoint::Responses => Scope::Responses,
            Endpoint::Messages => Scope::Messages,
        }
    }

    pub fn dialect(self) -> Dialect {
        match self {
            Endpoint::ChatCompletions | Endpoint::Completions | Endpoint::Embeddings => {
                Dialect::OpenAi
            }
            Endpoint::Responses => Dialect::Responses,
            Endpoint::Messages => Dialect::Anthropic,
        }
    }

    /// Whether the endpoint generates tokens (all but embeddings): its reservation counts the
    /// completion it may generate.
    pub fn generates(self) -> bool {
        self != Endpoint::Embeddings
    }

    /// The field holding the prompt (required), and a second one counted with it (optional):
    /// the basis of the token estimate.
    fn prompt_fields(self) -> (&'static str, Option<&'static str>) {
        match self {
            Endpoint::ChatCompletions => ("messages", None),
            Endpoint::Completions => ("prompt", None),
            Endpoint::Embeddings => ("input", None),
            Endpoint::Responses => ("input", Some("instructions")),
            Endpoint::Messages => ("messages", Some("system")),
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

/// What the gateway checks of every request body before anything is forwarded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestRules {
    pub forbidden: ForbiddenFields,
    /// Deepest nesting of arrays and objects accepted. Upstream parsers give up on deep bodies
    /// with a 500 (Python's `json` near 1,000 levels), which would read as a server failure.
    pub max_json_depth: usize,
    /// Longest `model` accepted, in bytes.
    pub max_model_bytes: usize,
}

impl Default for RequestRules {
    fn default() -> Self {
        Self { forbidden: ForbiddenFields::default(), max_json_depth: 64, max_model_bytes: 256 }
    }
}

/// What the gateway knows about a request after one pass over its body.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestView<'a> {
    pub endpoint: Endpoint,
    pub model: Cow<'a, str>,
    /// Where the `model` value (its JSON text, quotes included) starts in the body, and the
    /// text: the gateway replaces it when a route sends the request to another model.
    pub model_at: (usize, &'a str),
    pub stream: bool,
    /// The client asked for the final usage chunk itself.
    pub client_wants_usage: bool,
    /// Where the client's `stream_options` value starts in the body, and its JSON text,
    /// whatever it is (`null` included): the gateway replaces it in place.
    pub stream_options: Option<(usize, &'a str)>,
    /// The most the answer may generate: `max_output_tokens` (Responses), else
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
    /// Bytes of the prompt's fields (`messages`; `prompt`; `input`; `input` and
    /// `instructions`; `messages` and `system`): the basis of the token estimate.
    pub prompt_bytes: usize,
}

impl RequestView<'_> {
    /// A cheap estimate of the prompt's tokens (4 bytes of JSON per token), for the limiter's
    /// reservation before the real count is known.
    pub fn estimated_prompt_tokens(&self) -> u64 {
        (self.prompt_bytes as u64).div_ceil(4).max(1)
    }
}

/// Client text made safe to quote in an error message, a log line or a usage row: control
/// characters replaced, at most `max` characters.
pub fn printable(s: &str, max: usize) -> String {
    s.chars().take(max).map(|c| if c.is_control() { '\u{FFFD}' } else { c }).collect()
}

/// Whether `body` nests arrays and objects deeper than `max`. Nesting deeper than `max` takes
/// more than `max` opening brackets, and most bodies have fewer: looking for them with
/// `memchr` settles those. Others are scanned, strings skipped with `memchr`.
pub fn nested_deeper_than(body: &[u8], max: usize) -> bool {
    if memchr::memchr2_iter(b'[', b'{', body).nth(max).is_none() {
        return false;
    }
    let mut depth = 0usize;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'"' => {
                // To the closing quote, stepping over escapes.
                i += 1;
                loop {
                    match memchr::memchr2(b'"', b'\\', &body[i..]) {
                        Some(n) if body[i + n] == b'\\' => i += n + 2,
                        Some(n) => {
                            i += n;
                            break;
                        }
                        None => return false,
                    }
                    if i >= body.len() {
                        return false;
                    }
                }
            }
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

/// Whether a string of `body` holds a `\\uD800`-`\\uDFFF` escape that is not one half of a
/// pair. JSON's grammar allows it, but it is no text: serde and the upstream's encoders fail on
/// it later (a 500 that reads as the server's failure). Found by tests/fuzz.rs. One pass over
/// the backslashes; outside strings a backslash is a syntax error the parser reports anyway.
pub fn has_lone_surrogate(body: &[u8]) -> bool {
    fn unit(b: &[u8]) -> Option<u16> {
        let hex = std::str::from_utf8(b.get(..4)?).ok()?;
        u16::from_str_radix(hex, 16).ok()
    }
    let mut i = 0;
    while let Some(at) = memchr::memchr(b'\\', &body[i..]) {
        let at = i + at;
        match body.get(at + 1) {
            Some(b'u') => match unit(&body[at + 2..]) {
                Some(0xD800..=0xDBFF) => {
                    let low = (body.get(at + 6..at + 8) == Some(b"\\u"))
                        .then(|| unit(&body[at + 8..]))
                        .flatten();
                    if !matches!(low, Some(0xDC00..=0xDFFF)) {
                        return true;
                    }
                    i = at + 12;
                }
                Some(0xDC00..=0xDFFF) => return true,
                _ => i = at + 2,
            },
            Some(_) => i = at + 2,
            None => return false,
        }
    }
    false
}

/// Parses and checks a request body for `endpoint` in one pass (after a scan for depth).
pub fn inspect<'a>(
    body: &'a [u8],
    endpoint: Endpoint,
    rules: &RequestRules,
) -> Result<RequestView<'a>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid_request("The request body is empty; expected JSON."));
    }
    // JSON is UTF-8, and serde skips the strings of fields it ignores without checking them:
    // a stray byte there would reach the upstream, whose parser fails on it (a 500 that reads
    // as the server's failure). Found by tests/fuzz.rs.
    if std::str::from_utf8(body).is_err() {
        return Err(ApiError::invalid_request("The request body is not valid UTF-8."));
    }
    if has_lone_surrogate(body) {
        return Err(ApiError::invalid_request(
            "The request body has a string with an unpaired UTF-16 surrogate escape (such as \
             \\ud800 alone), which is no text.",
        ));
    }
    if nested_deeper_than(body, rules.max_json_depth) {
        return Err(ApiError::invalid_request(format!(
            "The JSON body is nested deeper than {} levels.",
            rules.max_json_depth
        )));
    }
    let bad_field = RefCell::new(None);
    let seed = Inspector { endpoint, rules, bad_field: &bad_field };
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = seed.deserialize(&mut de).and_then(|view| de.end().map(|()| view));
    match parsed {
        Ok(mut view) => {
            if let Some((at, raw)) = &mut view.stream_options {
                *at = offset_in(body, raw).ok_or_else(ApiError::internal)?;
            }
            view.model_at.0 = offset_in(body, view.model_at.1).ok_or_else(ApiError::internal)?;
            Ok(view)
        }
        Err(e) => {
            let message = e.to_string();
            let message = message.split(" at line ").next().unwrap_or(&message);
            let message = printable(message, 300);
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

/// A field name, borrowed from the body when it has no escapes (serde's own `Cow<str>` copies
/// every key it reads: a few allocations per request for nothing).
struct Key<'de>(Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }

            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }

        d.deserialize_str(KeyVisitor)
    }
}

struct Inspector<'f> {
    endpoint: Endpoint,
    rules: &'f RequestRules,
    /// The field at fault, for the error's `param`.
    bad_field: &'f RefCell<Option<String>>,
}

/// `stream_options`: an object whose `include_usage` (once at most) is a boolean or null.
struct StreamOptionsSeed;

impl<'de> DeserializeSeed<'de> for StreamOptionsSeed {
    type Value = Option<bool>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Option<bool>, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for StreamOptionsSeed {
    type Value = Option<bool>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<bool>, A::Error> {
        let mut include_usage: Option<Option<bool>> = None;
        while let Some(Key(key)) = map.next_key()? {
            if key == "include_usage" {
                if include_usage.is_some() {
                    return Err(de::Error::custom(
                        "'stream_options.include_usage' appears more than once",
                    ));
                }
                include_usage = Some(map.next_value().map_err(|_| {
                    de::Error::custom("'stream_options.include_usage' must be a boolean")
                })?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(include_usage.flatten())
    }
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
        while let Some(Key(key)) = map.next_key()? {
            if self.0.forbids(&key) {
                return Err(de::Error::custom(format!(
                    "'metadata.{}' is not allowed: the gateway chooses the upstream",
                    printable(&key, 64)
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

/// The top-level fields the gateway reads: each may appear once, so that the gateway and the
/// upstream (whose parser may keep the first copy or the last) always read the same value.
const READ_FIELDS: [&str; 12] = [
    "model",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "metadata",
    "messages",
    "input",
    "prompt",
    "system",
    "instructions",
];

impl<'de> Visitor<'de> for Inspector<'_> {
    type Value = RequestView<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut model: Option<(Cow<'de, str>, &'de str)> = None;
        let mut stream = None;
        let mut stream_options: Option<(usize, &'de str)> = None;
        let mut include_usage = None;
        let mut max_tokens = None;
        let mut max_completion_tokens = None;
        let mut max_output_tokens = None;
        let mut prompt: Option<&'de RawValue> = None;
        let mut prompt_extra = 0;
        let mut seen = 0u16;
        let (prompt_field, extra_field) = self.endpoint.prompt_fields();
        let fail = |field: &str| {
            *self.bad_field.borrow_mut() = Some(field.to_owned());
        };
        while let Some(Key(key)) = map.next_key()? {
            if let Some(i) = READ_FIELDS.iter().position(|f| *f == key) {
                fail(READ_FIELDS[i]);
                if seen & (1 << i) != 0 {
                    return Err(de::Error::custom(format!(
                        "'{}' appears more than once in the request body",
                        READ_FIELDS[i]
                    )));
                }
                seen |= 1 << i;
            }
            match key.as_ref() {
                "model" => {
                    let not_text = || de::Error::custom("'model' must be a string");
                    let raw: &'de RawValue = map.next_value().map_err(|_| not_text())?;
                    let m: Cow<'de, str> = serde_json::from_str::<String>(raw.get())
                        .map(Cow::Owned)
                        .map_err(|_| not_text())?;
                    model = Some((m, raw.get()));
                }
                "stream" => {
                    let s: Option<bool> = map
                        .next_value()
                        .map_err(|_| de::Error::custom("'stream' must be a boolean"))?;
                    stream = s;
                }
                "stream_options" => {
                    let raw: &'de RawValue = map.next_value()?;
                    if raw.get() != "null" {
                        let mut de = serde_json::Deserializer::from_str(raw.get());
                        include_usage = StreamOptionsSeed.deserialize(&mut de).map_err(|e| {
                            let e = e.to_string();
                            if e.contains("stream_options") {
                                de::Error::custom(e)
                            } else {
                                de::Error::custom(
                                    "'stream_options' must be an object with a boolean 'include_usage'",
                                )
                            }
                        })?;
                    }
                    stream_options = Some((0, raw.get()));
                }
                "max_tokens" => {
                    max_tokens = map.next_value::<Option<u64>>().map_err(|_| {
                        de::Error::custom("'max_tokens' must be a non-negative integer")
                    })?;
                }
                "max_completion_tokens" => {
                    max_completion_tokens = map.next_value::<Option<u64>>().map_err(|_| {
                        de::Error::custom("'max_completion_tokens' must be a non-negative integer")
                    })?;
                }
                "max_output_tokens" => {
                    max_output_tokens = map.next_value::<Option<u64>>().map_err(|_| {
                        de::Error::custom("'max_output_tokens' must be a non-negative integer")
                    })?;
                }
                "metadata" => {
                    map.next_value_seed(MetadataSeed(&self.rules.forbidden))?;
                }
                k if k == prompt_field => {
                    prompt = Some(map.next_value()?);
                }
                k if Some(k) == extra_field => {
                    prompt_extra = map.next_value::<&'de RawValue>()?.get().len();
                }
                "messages" | "input" | "prompt" | "system" | "instructions" => {
                    map.next_value::<IgnoredAny>()?;
                }
                k if self.rules.forbidden.forbids(k) => {
                    let k = printable(k, 64);
                    fail(&k);
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
        let (model, model_raw) = match model {
            Some((m, _)) if m.trim().is_empty() => {
                fail("model");
                return Err(de::Error::custom("'model' must not be empty"));
            }
            // The model reaches usage rows, logs and metric labels: no control characters.
            Some((m, _)) if m.chars().any(char::is_control) => {
                fail("model");
                return Err(de::Error::custom("'model' must not contain control characters"));
            }
            Some((m, _)) if m.len() > self.rules.max_model_bytes => {
                fail("model");
                return Err(de::Error::custom(format!(
                    "'model' is longer than {} bytes",
                    self.rules.max_model_bytes
                )));
            }
            Some(m) => m,
            None => {
                fail("model");
                return Err(de::Error::custom("Missing required parameter: 'model'"));
            }
        };
        let Some(prompt) = prompt else {
            fail(prompt_field);
            return Err(de::Error::custom(format!("Missing required parameter: '{prompt_field}'")));
        };
        if prompt_field == "messages" && !prompt.get().starts_with('[') {
            fail("messages");
            return Err(de::Error::custom("'messages' must be an array"));
        }
        let stream = stream.unwrap_or(false);
        if stream && self.endpoint == Endpoint::Embeddings {
            fail("stream");
            return Err(de::Error::custom("embeddings cannot be streamed"));
        }
        let max_tokens = match self.endpoint {
            Endpoint::Responses => max_output_tokens,
            _ => max_completion_tokens.or(max_tokens),
        };
        Ok(RequestView {
            endpoint: self.endpoint,
            model,
            model_at: (0, model_raw),
            stream,
            client_wants_usage: include_usage.unwrap_or(false),
            stream_options,
            max_tokens,
            prompt_bytes: prompt.get().len() + prompt_extra,
        })
    }
}

/// Where `part` (a slice borrowed from `body`) starts in `body`, if it is one.
fn offset_in(body: &[u8], part: &str) -> Option<usize> {
    let start = (part.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= body.len() && &body[start..end] == part.as_bytes()).then_some(start)
}

/// The body to forward: the client's bytes, except that a streaming request of the OpenAI
/// dialect is made to ask for the final usage chunk whatever the client sent (Responses and
/// Messages streams always carry their usage). Without `stream_options` that is one splice
/// after the opening brace; with one (`null`, `{}`, `include_usage: false`, ...) its value is
/// replaced in place by the same object with `include_usage: true`. Either way it is a copy of
/// the client's bytes, never a re-serialisation of the body, and since the fields the gateway
/// reads appear once (see [`inspect`]) no other copy of the field can undo it.
pub fn forward_body(body: Bytes, view: &RequestView<'_>) -> Result<Bytes, ApiError> {
    rewrite(body, view, None)
}

/// [`forward_body`] for another model than the client asked for (a model route's target):
/// the `model` value is replaced in place as well.
pub fn forward_body_as(
    body: Bytes,
    view: &RequestView<'_>,
    model: &str,
) -> Result<Bytes, ApiError> {
    let value = serde_json::to_string(model).map_err(|_| ApiError::internal())?;
    rewrite(body, view, Some(value))
}

/// Applies the splices the request needs, in the order they appear in the body.
fn rewrite(body: Bytes, view: &RequestView<'_>, model: Option<String>) -> Result<Bytes, ApiError> {
    const FIELD: &[u8] = br#""stream_options":{"include_usage":true},"#;
    const VALUE: &[u8] = br#"{"include_usage":true}"#;
    // (start, end, replacement) of each splice.
    let mut edits: Vec<(usize, usize, Cow<'static, [u8]>)> = Vec::new();
    // A span must hold the text inspected there: otherwise this is not the inspected body.
    let holds =
        |start: usize, raw: &str| body.get(start..start + raw.len()) == Some(raw.as_bytes());
    let asks_usage =
        view.stream && !view.client_wants_usage && view.endpoint.dialect() == Dialect::OpenAi;
    if asks_usage {
        match view.stream_options {
            None => {
                let open = body
                    .iter()
                    .position(|b| *b == b'{')
                    .ok_or_else(|| ApiError::invalid_request("expected a JSON object"))?;
                edits.push((open + 1, open + 1, Cow::Borrowed(FIELD)));
            }
            Some((start, raw)) => {
                if !holds(start, raw) {
                    return Err(ApiError::internal());
                }
                let value = if raw == "null" {
                    Cow::Borrowed(VALUE)
                } else {
                    // The client's other options are kept; `include_usage` is set.
                    let mut options: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_str(raw).map_err(|_| ApiError::internal())?;
                    options.insert("include_usage".into(), serde_json::Value::Bool(true));
                    Cow::Owned(serde_json::to_vec(&options).map_err(|_| ApiError::internal())?)
                };
                edits.push((start, start + raw.len(), value));
            }
        }
    }
    if let Some(model) = model {
        let (start, raw) = view.model_at;
        if !holds(start, raw) {
            return Err(ApiError::internal());
        }
        edits.push((start, start + raw.len(), Cow::Owned(model.into_bytes())));
    }
    if edits.is_empty() {
        return Ok(body);
    }
    edits.sort_by_key(|e| e.0);
    let grown: usize = edits.iter().map(|e| e.2.len()).sum();
    let mut out = BytesMut::with_capacity(body.len() + grown);
    let mut at = 0;
    for (start, end, replacement) in edits {
        // Not the body that was inspected, or splices that overlap: never forward a guess.
        if start < at || end > body.len() {
            return Err(ApiError::internal());
        }
        out.put_slice(&body[at..start]);
        out.put_slice(&replacement);
        at = end;
    }
    out.put_slice(&body[at..]);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<RequestView<'_>, ApiError> {
        inspect(body.as_bytes(), Endpoint::ChatCompletions, &RequestRules::default())
    }

    #[test]
    fn unpaired_surrogate_escapes_are_found_and_pairs_pass() {
        assert!(has_lone_surrogate(br#"{"input":["\ud800a"]}"#), "found by tests/fuzz.rs");
        assert!(has_lone_surrogate(br#"{"a":"\uDC00"}"#));
        assert!(has_lone_surrogate(br#"{"a":"\ud83d"}"#));
        assert!(has_lone_surrogate(br#"{"a":"\ud83d\u0041"}"#));
        assert!(!has_lone_surrogate(br#"{"a":"\ud83d\ude00 and \u00e9 \\ud800"}"#));
        assert!(!has_lone_surrogate(br#"{"a":"\\\\", "b":"\""}"#));
        let e = inspect(
            br#"{"model":"e","input":["\ud800a"]}"#,
            Endpoint::Embeddings,
            &RequestRules::default(),
        )
        .unwrap_err();
        assert!(e.message.contains("surrogate"), "{}", e.message);
    }

    #[test]
    fn a_body_that_is_not_utf8_is_refused_even_in_a_field_it_ignores() {
        // Found by tests/fuzz.rs: serde skips an ignored field's string without checking it.
        let body = b"{\"model\":\"e\",\"input\":\"a\",\"encoding_format\":\"f\xffoat\"}";
        let e = inspect(body, Endpoint::Embeddings, &RequestRules::default()).unwrap_err();
        assert_eq!(e.message, "The request body is not valid UTF-8.");
    }

    #[test]
    fn reads_the_fields_it_needs_and_ignores_the_rest() {
        let v = chat(r#"{"model":"gpt-4","messages":[{"role":"user","content":"hi"}],"stream":true,
            "max_tokens":7,"temperature":0.2,"tools":[{"x":{"y":[1,2]}}],"metadata":{"trace":"a"}}"#)
        .unwrap();
        assert_eq!(v.model, "gpt-4");
        assert!(v.stream && !v.client_wants_usage && v.stream_options.is_none());
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
    fn escaped_field_names_are_read_and_checked_like_plain_ones() {
        // Field names are borrowed from the body unless they hold an escape.
        let v = chat(r#"{"m\u006fdel":"gpt-4","messages":[],"max_\u0074okens":3}"#).unwrap();
        assert_eq!((v.model.as_ref(), v.max_tokens), ("gpt-4", Some(3)));
        assert!(chat(r#"{"model":"m","messages":[],"api\u005fbase":"http://evil"}"#).is_err());
        assert!(
            chat(r#"{"model":"m","messages":[],"stream":true,"stream_options":{"include\u005fusage":true}}"#)
                .unwrap()
                .client_wants_usage
        );
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
        let custom = RequestRules {
            forbidden: ForbiddenFields { names: vec!["seed".into()], prefixes: vec![] },
            ..RequestRules::default()
        };
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
            &RequestRules::default(),
        );
        assert_eq!(e.unwrap_err().param.as_deref(), Some("stream"));
        let e = inspect(br#"{"model":"e"}"#, Endpoint::Embeddings, &RequestRules::default());
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

    /// Whatever the client sent as `stream_options`, the forwarded body asks for usage once,
    /// keeps the client's other options, and passes the gateway's own checks (no duplicate).
    #[test]
    fn the_gateways_include_usage_wins_whatever_the_client_sent() {
        for options in [
            "null",
            "{}",
            r#"{"include_usage":false}"#,
            r#"{"include_usage":null}"#,
            r#"{"include_usage":false,"continuous_usage_stats":true}"#,
            r#"{ "include_usage" : false }"#,
        ] {
            for body in [
                format!(
                    r#"{{"model":"m","messages":[],"stream":true,"stream_options":{options}}}"#
                ),
                format!(
                    r#"{{"stream_options":{options},"model":"m","stream":true,"messages":[]}}"#
                ),
            ] {
                let view = chat(&body).unwrap();
                assert!(!view.client_wants_usage, "{body}");
                let out = forward_body(Bytes::from(body.clone()), &view).unwrap();
                let again = chat(std::str::from_utf8(&out).unwrap())
                    .unwrap_or_else(|e| panic!("{body} -> {out:?}: {}", e.message));
                assert!(again.client_wants_usage, "{body} -> {out:?}");
                let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
                assert_eq!(v["stream_options"]["include_usage"], true);
                if options.contains("continuous") {
                    assert_eq!(v["stream_options"]["continuous_usage_stats"], true);
                }
                assert_eq!(v["messages"], serde_json::json!([]));
            }
        }
    }

    #[test]
    fn fields_the_gateway_reads_may_appear_only_once() {
        for (body, field) in [
            (
                r#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true},"stream_options":null}"#,
                "stream_options",
            ),
            (
                r#"{"model":"m","messages":[],"stream_options":null,"stream":true,"stream_options":{"include_usage":true}}"#,
                "stream_options",
            ),
            (r#"{"model":"cheap","messages":[],"model":"expensive"}"#, "model"),
            (r#"{"model":"m","mod\u0065l":"x","messages":[]}"#, "model"),
            (r#"{"model":"m","messages":[],"stream":false,"stream":true}"#, "stream"),
            (r#"{"model":"m","messages":[],"max_tokens":1,"max_tokens":100000}"#, "max_tokens"),
            (
                r#"{"model":"m","messages":[],"messages":[{"role":"user","content":"x"}]}"#,
                "messages",
            ),
            (r#"{"model":"m","messages":[],"metadata":{},"metadata":{"a":1}}"#, "metadata"),
        ] {
            let err = chat(body).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(field), "{body}: {}", err.message);
            assert!(err.message.contains("more than once"), "{body}: {}", err.message);
        }
        let err = chat(r#"{"model":"m","messages":[],"stream":true,"stream_options":{"include_usage":true,"include_usage":false}}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("stream_options"));
        assert!(err.message.contains("more than once"), "{}", err.message);
        // Fields the gateway does not read pass through as the client wrote them.
        assert!(chat(r#"{"model":"m","messages":[],"temperature":1,"temperature":0}"#).is_ok());
    }

    #[test]
    fn control_characters_and_overlong_names_in_model_are_refused() {
        for model in ["gpt-4\\u0000", "\\u0000", "gpt\\n4", "gpt\\u007f", "a\\u0085b", "x\\ty"] {
            let body = format!(r#"{{"model":"{model}","messages":[]}}"#);
            let err = chat(&body).unwrap_err();
            assert_eq!(err.param.as_deref(), Some("model"), "{body}");
            assert!(err.message.contains("control characters"), "{}", err.message);
        }
        let long = "m".repeat(257);
        let err = chat(&format!(r#"{{"model":"{long}","messages":[]}}"#)).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("model"));
        assert!(chat(&format!(r#"{{"model":"{}","messages":[]}}"#, "m".repeat(256))).is_ok());
        assert!(chat(r#"{"model":"Qwen/Qwen2.5-7B:free ü","messages":[]}"#).is_ok());
    }

    #[test]
    fn client_text_in_error_messages_has_no_control_characters() {
        let err = chat(r#"{"model":"m","messages":[],"litellm_\u0000\n":1}"#).unwrap_err();
        assert!(err.message.contains("not allowed"), "{}", err.message);
        assert!(!err.message.chars().any(char::is_control), "{:?}", err.message);
        assert!(!err.param.unwrap().chars().any(char::is_control));
        let err = chat(r#"{"model":"m","messages":[],"metadata":{"api_key\u0000":1,"api_key":1}}"#)
            .unwrap_err();
        assert!(!err.message.chars().any(char::is_control), "{:?}", err.message);
    }

    fn nested(depth: usize) -> String {
        format!(
            r#"{{"model":"m","messages":[],"x":{}1{}}}"#,
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
    }

    #[test]
    fn bodies_nested_deeper_than_the_limit_are_refused() {
        let rules = RequestRules::default();
        assert!(inspect(nested(64).as_bytes(), Endpoint::ChatCompletions, &rules).is_ok());
        let err = inspect(nested(65).as_bytes(), Endpoint::ChatCompletions, &rules).unwrap_err();
        assert!(err.message.contains("nested deeper than 64"), "{}", err.message);
        let err = inspect(nested(1200).as_bytes(), Endpoint::ChatCompletions, &rules).unwrap_err();
        assert_eq!(err.kind, gateway_core::ErrorKind::InvalidRequest);
        // Brackets inside strings, escaped quotes and backslashes are text, not nesting.
        let text = format!(
            r#"{{"model":"m","messages":[{{"content":"{}\"\\{}"}}]}}"#,
            "[{".repeat(500),
            "[[["
        );
        assert!(inspect(text.as_bytes(), Endpoint::ChatCompletions, &rules).is_ok());
        // `"\\"` is a string holding one backslash: the brackets after it are nesting.
        assert!(nested_deeper_than(br#""\\"[[[["#, 3));
        assert!(!nested_deeper_than(br#""\\"[[[["#, 4));
        assert!(nested_deeper_than(br#"{"a\"":[[[1]]]}"#, 3));
        assert!(!nested_deeper_than(br#"{"a\"":[[[1]]]}"#, 4));
        assert!(!nested_deeper_than(br#""unterminated \"#, 1));
    }

    #[test]
    fn each_endpoint_reads_its_own_prompt_and_limit() {
        let rules = RequestRules::default();
        let v = inspect(
            br#"{"model":"m","prompt":"abcd","max_tokens":3}"#,
            Endpoint::Completions,
            &rules,
        )
        .unwrap();
        assert_eq!((v.prompt_bytes, v.max_tokens), (6, Some(3)));
        let v = inspect(
            br#"{"model":"m","input":"abcd","instructions":"xy","max_output_tokens":9,"max_tokens":1}"#,
            Endpoint::Responses,
            &rules,
        )
        .unwrap();
        assert_eq!((v.prompt_bytes, v.max_tokens), (6 + 4, Some(9)));
        let v = inspect(
            br#"{"model":"m","system":"be","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"stream":true}"#,
            Endpoint::Messages,
            &rules,
        )
        .unwrap();
        assert_eq!((v.prompt_bytes, v.max_tokens, v.stream), (32 + 4, Some(5), true));
        // Messages and Responses streams are forwarded as sent: their usage comes unasked.
        let body =
            Bytes::from_static(br#"{"model":"m","messages":[],"max_tokens":5,"stream":true}"#);
        let v = inspect(&body, Endpoint::Messages, &rules).unwrap();
        assert_eq!(forward_body(body.clone(), &v).unwrap(), body);
        // A completions stream is made to ask for usage, as chat's is.
        let body = Bytes::from_static(br#"{"model":"m","prompt":"x","stream":true}"#);
        let v = inspect(&body, Endpoint::Completions, &rules).unwrap();
        assert!(forward_body(body.clone(), &v).unwrap().len() > body.len());
        for (body, endpoint, param) in [
            (&br#"{"model":"m"}"#[..], Endpoint::Completions, "prompt"),
            (br#"{"model":"m","max_tokens":1}"#, Endpoint::Messages, "messages"),
            (br#"{"model":"m","messages":"hi"}"#, Endpoint::Messages, "messages"),
            (
                br#"{"model":"m","input":"x","max_output_tokens":-1}"#,
                Endpoint::Responses,
                "max_output_tokens",
            ),
            (
                br#"{"model":"m","input":"x","system":"a","system":"b"}"#,
                Endpoint::Responses,
                "system",
            ),
            (
                br#"{"model":"m","input":"x","api_base":"http://evil"}"#,
                Endpoint::Responses,
                "api_base",
            ),
        ] {
            let e = inspect(body, endpoint, &rules).unwrap_err();
            assert_eq!(e.param.as_deref(), Some(param), "{endpoint:?}: {}", e.message);
        }
    }

    #[test]
    fn a_routed_request_names_its_target_model_and_keeps_every_other_byte() {
        for body in [
            r#"{"model":"smart","messages":[],"stream":true,"x":1}"#,
            r#"{"stream":true,"stream_options":null,"messages":[],"model":"smart"}"#,
            r#"{"messages":[],"model":"sm\u0061rt","stream_options":{"include_usage":false},"stream":true}"#,
            r#"{"model":"smart","messages":[]}"#,
        ] {
            let view = chat(body).unwrap();
            assert_eq!(view.model, "smart");
            let out =
                forward_body_as(Bytes::from(body.to_owned()), &view, "gpt-4o \"mini\"").unwrap();
            let again = chat(std::str::from_utf8(&out).unwrap()).unwrap();
            assert_eq!(again.model, "gpt-4o \"mini\"", "{body} -> {out:?}");
            assert_eq!(again.stream, view.stream);
            assert!(!view.stream || again.client_wants_usage, "{body} -> {out:?}");
            let (a, b): (serde_json::Value, serde_json::Value) =
                (serde_json::from_str(body).unwrap(), serde_json::from_slice(&out).unwrap());
            assert_eq!(a["messages"], b["messages"]);
        }
        // Not the body that was inspected: refused, never guessed.
        let view = chat(r#"{"model":"smart","messages":[]}"#).unwrap();
        assert!(forward_body_as(Bytes::from_static(b"{}"), &view, "x").is_err());
    }
}
