//! Routing and the OpenAI endpoints of the mock.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use crate::State;
use crate::body::{MockBody, SseBody};

const WORDS: [&str; 8] =
    ["Hello", "from", "the", "BluesMinds", "mock", "upstream,", "have", "fun."];
/// Completion length when the request sets no `max_tokens`.
pub const DEFAULT_COMPLETION_TOKENS: u64 = 16;

pub async fn handle(state: &State, req: Request<Incoming>) -> Response<MockBody> {
    let path = req.uri().path();
    let path = path.strip_prefix("/v1").unwrap_or(path);
    match (req.method(), path) {
        (&Method::POST, "/chat/completions") => with_body(state, req, chat).await,
        (&Method::POST, "/embeddings") => with_body(state, req, embeddings).await,
        (&Method::POST, "/completions") => with_body(state, req, crate::apis::completions).await,
        (&Method::POST, "/responses") => with_body(state, req, crate::apis::responses).await,
        (&Method::POST, "/messages") => with_body(state, req, crate::apis::messages).await,
        (&Method::GET, "/models") => {
            state.stats.probes.fetch_add(1, Ordering::Relaxed);
            json_response(StatusCode::OK, state.models_json.clone())
        }
        (&Method::GET, "/health" | "/health/liveliness" | "/health/readiness") => {
            state.stats.probes.fetch_add(1, Ordering::Relaxed);
            json_response(StatusCode::OK, Bytes::from_static(b"\"I'm alive!\""))
        }
        (&Method::GET, "/mock/stats") => {
            json_response(StatusCode::OK, Bytes::from(state.stats.snapshot().to_string()))
        }
        _ => error(StatusCode::NOT_FOUND, "mock: no such route"),
    }
}

async fn with_body(
    state: &State,
    req: Request<Incoming>,
    f: impl FnOnce(&State, &[u8], u64) -> Option<Response<MockBody>>,
) -> Response<MockBody> {
    let n = state.stats.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let auth =
        req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    *state.stats.last_authorization.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
        auth;
    let anthropic = req
        .headers()
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("anthropic-"))
        .map(|(name, value)| format!("{name}: {}", value.to_str().unwrap_or("?")))
        .collect();
    *state.stats.last_anthropic_headers.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
        anthropic;
    if let Some(parent) = req.headers().get("traceparent").and_then(|v| v.to_str().ok()) {
        state
            .stats
            .traceparents
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(parent.to_owned());
    }
    let Ok(body) = req.into_body().collect().await else {
        return error(StatusCode::BAD_REQUEST, "mock: could not read body");
    };
    if !state.config.latency.is_zero() {
        tokio::time::sleep(state.config.latency).await;
    }
    let rate = state.config.fail_rate;
    if rate > 0.0 && ((n as f64) * rate).floor() > (((n - 1) as f64) * rate).floor() {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "mock: injected failure (fail-rate)");
    }
    match f(state, &body.to_bytes(), n) {
        Some(response) => response,
        None => {
            // "hang": no response head for an hour; the caller's timeout must cut this.
            tokio::time::sleep(Duration::from_hours(1)).await;
            error(StatusCode::GATEWAY_TIMEOUT, "mock: hung")
        }
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct Directive {
    pub fail: Option<String>,
    pub status: Option<u16>,
    /// Never send usage, whatever the request asked (streams and whole answers).
    pub omit_usage: Option<bool>,
    pub chunk_delay_ms: Option<u64>,
    /// What the answer generates: `content` (default), `tool_calls` (the words as a tool
    /// call's arguments) or `reasoning` (as `reasoning_content`, then one word of content).
    pub shape: Option<String>,
    /// Completion length when set, whatever `max_tokens` says.
    pub tokens: Option<u64>,
    /// Anthropic answers: prompt tokens read from and written to the prompt cache.
    pub cache_read: Option<u64>,
    pub cache_write: Option<u64>,
}

impl Directive {
    /// The answer an injected failure gives instead of the real one: `Some(None)` hangs.
    pub(crate) fn failure(&self, anthropic: bool) -> Option<Option<Response<MockBody>>> {
        match self.fail.as_deref() {
            Some("status") => {
                let status = StatusCode::from_u16(self.status.unwrap_or(500))
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                Some(Some(if anthropic {
                    anthropic_error(status, "mock: injected failure")
                } else {
                    error(status, "mock: injected failure")
                }))
            }
            Some("hang") => Some(None),
            _ => None,
        }
    }

    /// The completion's length: the directive's, else the request's limit, else the default.
    pub(crate) fn completion_tokens(&self, requested: Option<u64>) -> u64 {
        self.tokens.or(requested).unwrap_or(DEFAULT_COMPLETION_TOKENS).clamp(1, 65_536)
    }
}

/// The mock's words, one token each.
pub(crate) fn words(n: u64) -> impl Iterator<Item = &'static str> {
    (0..n as usize).map(|i| WORDS[i % WORDS.len()])
}

/// A streamed answer of `events`, spaced as the directive or the mock's config says, failing
/// after three events when the directive asks for a mid-stream failure.
pub(crate) fn sse_response(
    state: &State,
    events: Vec<Bytes>,
    directive: &Directive,
) -> Response<MockBody> {
    let fail_after = (directive.fail.as_deref() == Some("midstream")).then_some(3);
    let mut delay =
        directive.chunk_delay_ms.map_or(state.config.chunk_delay, Duration::from_millis);
    if fail_after.is_some() {
        // Space the chunks so the head and the first chunks are on the wire before the
        // failure: it must happen mid-stream, not before the first byte.
        delay = delay.max(Duration::from_millis(20));
    }
    let body = SseBody::new(events, delay, fail_after, state.stats.clone());
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(MockBody::Sse(body))
        .unwrap_or_else(|_| Response::new(MockBody::Full(None)))
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct ChatRequest<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    messages: Vec<Message<'a>>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    mock: Option<Directive>,
}

/// `ceil(bytes / 4)`, at least 1: the mock's tokenizer.
pub fn tokens_for_bytes(bytes: usize) -> u64 {
    (bytes as u64).div_ceil(4).max(1)
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// About where CPython's `json` gives up (its recursion limit is 1,000 frames).
const PYTHON_JSON_DEPTH: usize = 990;

/// The deepest nesting of arrays and objects in a JSON text.
fn depth_of(json: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_text, mut escaped) = (0usize, 0, false, false);
    for &b in json {
        match (in_text, escaped, b) {
            (true, true, _) => escaped = false,
            (true, false, b'\\') => escaped = true,
            (true, false, b'"') | (false, _, b'"') => in_text = !in_text,
            (false, _, b'[' | b'{') => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            (false, _, b']' | b'}') => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Reads a body as a Python upstream (LiteLLM under uvicorn) does: of a duplicated key the
/// last copy wins, and a body its parser gives up on (too deep, not JSON) is a 500, not a 400.
pub(crate) fn parse_like_python<'a, T: Deserialize<'a>>(
    body: &'a [u8],
    normalized: &'a mut String,
) -> Result<T, Box<Response<MockBody>>> {
    let parser_failed = |e: &dyn std::fmt::Display| {
        Box::new(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("mock: the JSON parser failed: {e}"),
        ))
    };
    if depth_of(body) > PYTHON_JSON_DEPTH {
        return Err(parser_failed(&"maximum recursion depth exceeded"));
    }
    match serde_json::from_slice(body) {
        Ok(r) => Ok(r),
        Err(_) => {
            // Duplicate keys: a map keeps the last copy of each, as Python's `json` does.
            let value: serde_json::Value =
                serde_json::from_slice(body).map_err(|e| parser_failed(&e))?;
            *normalized = value.to_string();
            serde_json::from_str(normalized).map_err(|e| {
                Box::new(error(StatusCode::BAD_REQUEST, &format!("mock: bad request: {e}")))
            })
        }
    }
}

fn chat(state: &State, body: &[u8], n: u64) -> Option<Response<MockBody>> {
    let mut normalized = String::new();
    let req: ChatRequest<'_> = match parse_like_python(body, &mut normalized) {
        Ok(r) => r,
        Err(response) => return Some(*response),
    };
    let directive = req.mock.unwrap_or_default();
    if let Some(failure) = directive.failure(false) {
        return failure;
    }
    let model = req.model.as_deref().unwrap_or("mock");
    let prompt_bytes: usize =
        req.messages.iter().filter_map(|m| m.content).map(|c| c.get().len()).sum();
    let prompt_tokens = tokens_for_bytes(prompt_bytes);
    let completion_tokens =
        directive.completion_tokens(req.max_completion_tokens.or(req.max_tokens));
    let omit_usage = directive.omit_usage == Some(true);
    let shape = directive.shape.as_deref().unwrap_or("content");
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let id = format!("chatcmpl-mock-{n}");
    let created = unix_now();
    let words = words(completion_tokens);

    if req.stream != Some(true) {
        let text = words.collect::<Vec<_>>().join(" ");
        let message = match shape {
            "tool_calls" => json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_mock", "type": "function", "function": {"name": "lookup", "arguments": text}}]}),
            "reasoning" => json!({"role": "assistant", "content": "ok", "reasoning_content": text}),
            _ => json!({"role": "assistant", "content": text}),
        };
        let mut resp = json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": null, "finish_reason": "stop"}],
        });
        if !omit_usage {
            resp["usage"] = usage;
        }
        return Some(json_response(StatusCode::OK, Bytes::from(resp.to_string())));
    }

    let include_usage =
        req.stream_options.and_then(|o| o.include_usage).unwrap_or(false) && !omit_usage;
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        let c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        Bytes::from(format!("data: {c}\n\n"))
    };
    let mut events = Vec::with_capacity(completion_tokens as usize + 4);
    match shape {
        "tool_calls" => events.push(chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_mock",
                "type": "function", "function": {"name": "lookup", "arguments": ""}}]}),
            None,
        )),
        _ => events.push(chunk(json!({"role": "assistant", "content": ""}), None)),
    }
    let last = completion_tokens as usize - 1;
    for (i, word) in words.enumerate() {
        let text = if i == last { word.to_owned() } else { format!("{word} ") };
        let delta = match shape {
            "tool_calls" => {
                json!({"tool_calls": [{"index": 0, "function": {"arguments": text}}]})
            }
            "reasoning" => json!({"reasoning_content": text}),
            _ => json!({"content": text}),
        };
        events.push(chunk(delta, None));
    }
    if shape == "reasoning" {
        events.push(chunk(json!({"content": "ok"}), None));
    }
    events.push(chunk(json!({}), Some("stop")));
    if include_usage {
        let c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage,
        });
        events.push(Bytes::from(format!("data: {c}\n\n")));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    Some(sse_response(state, events, &directive))
}

#[derive(Deserialize)]
struct EmbeddingRequest<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
}

#[allow(clippy::unnecessary_wraps)] // shares the handler signature of `chat`
fn embeddings(_state: &State, body: &[u8], _n: u64) -> Option<Response<MockBody>> {
    let mut normalized = String::new();
    let req: EmbeddingRequest<'_> = match parse_like_python(body, &mut normalized) {
        Ok(r) => r,
        Err(response) => return Some(*response),
    };
    let Some(input) = req.input else {
        return Some(error(StatusCode::BAD_REQUEST, "mock: missing input"));
    };
    let count = match serde_json::from_str::<Vec<&RawValue>>(input.get()) {
        Ok(items) if input.get().trim_start().starts_with("[\"") || input.get() == "[]" => {
            items.len()
        }
        _ => 1,
    };
    let tokens = tokens_for_bytes(input.get().len());
    let data: Vec<_> = (0..count)
        .map(|i| {
            let v: Vec<f32> = (0..8).map(|j| ((i * 8 + j) as f32 * 0.125).sin()).collect();
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    let resp = json!({
        "object": "list", "data": data, "model": req.model.as_deref().unwrap_or("mock"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    Some(json_response(StatusCode::OK, Bytes::from(resp.to_string())))
}

pub fn models_json(models: &[String]) -> Bytes {
    let data: Vec<_> = models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "bluesminds-mock"}))
        .collect();
    Bytes::from(json!({"object": "list", "data": data}).to_string())
}

pub(crate) fn json_response(status: StatusCode, body: Bytes) -> Response<MockBody> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(MockBody::Full(Some(body)))
        .unwrap_or_else(|_| Response::new(MockBody::Full(None)))
}

pub(crate) fn error(status: StatusCode, message: &str) -> Response<MockBody> {
    let body =
        json!({"error": {"message": message, "type": "mock_error", "param": null, "code": null}});
    json_response(status, Bytes::from(body.to_string()))
}

/// An error in Anthropic's shape, as an upstream serving `/v1/messages` answers.
pub(crate) fn anthropic_error(status: StatusCode, message: &str) -> Response<MockBody> {
    let body = json!({"type": "error", "error": {"type": "api_error", "message": message}});
    json_response(status, Bytes::from(body.to_string()))
}
