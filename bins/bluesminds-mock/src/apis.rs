//! The endpoints beyond chat and embeddings: legacy completions, OpenAI's Responses API and
//! Anthropic's Messages API, each in the shape its SDK reads (plain and streamed). Answers are
//! as deterministic as chat's: prompt tokens are `ceil(bytes / 4)` of the prompt's text, the
//! completion is that many words of the mock's sentence, and the `"mock"` directive applies.

use std::borrow::Cow;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::State;
use crate::body::MockBody;
use crate::handlers::{
    Directive, anthropic_error, json_response, parse_like_python, sse_response, tokens_for_bytes,
    unix_now, words,
};

/// Bytes of a prompt's text: a string's content, else every string inside (message contents,
/// content parts' `text`), else the JSON text itself.
fn prompt_bytes(raw: Option<&RawValue>) -> usize {
    fn strings(v: &Value) -> usize {
        match v {
            Value::String(s) => s.len(),
            Value::Array(items) => items.iter().map(strings).sum(),
            Value::Object(map) => map
                .iter()
                .filter(|(k, _)| *k == "content" || *k == "text")
                .map(|(_, v)| strings(v))
                .sum(),
            _ => 0,
        }
    }
    raw.map_or(0, |r| serde_json::from_str::<Value>(r.get()).map_or(r.get().len(), |v| strings(&v)))
}

/// One SSE event: `event: <type>` and its JSON, as the Responses and Anthropic streams send.
fn typed_event(kind: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

#[derive(Deserialize)]
struct CompletionRequest<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    prompt: Option<&'a RawValue>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u64>,
    mock: Option<Directive>,
}

/// `POST /v1/completions`: the legacy text completion.
pub fn completions(state: &State, body: &[u8], n: u64) -> Option<Response<MockBody>> {
    let mut normalized = String::new();
    let req: CompletionRequest<'_> = match parse_like_python(body, &mut normalized) {
        Ok(r) => r,
        Err(response) => return Some(*response),
    };
    let directive = req.mock.unwrap_or_default();
    if let Some(failure) = directive.failure(false) {
        return failure;
    }
    let model = req.model.as_deref().unwrap_or("mock");
    let prompt_tokens = tokens_for_bytes(prompt_bytes(req.prompt));
    let completion_tokens = directive.completion_tokens(req.max_tokens);
    let omit_usage = directive.omit_usage == Some(true);
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let (id, created) = (format!("cmpl-mock-{n}"), unix_now());
    let choice = |text: &str, finish: Option<&str>| json!({"text": text, "index": 0, "logprobs": null, "finish_reason": finish});
    if req.stream != Some(true) {
        let text = words(completion_tokens).collect::<Vec<_>>().join(" ");
        let mut resp = json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [choice(&text, Some("stop"))],
        });
        if !omit_usage {
            resp["usage"] = usage;
        }
        return Some(json_response(StatusCode::OK, Bytes::from(resp.to_string())));
    }
    let chunk = |choices: Value| {
        let c = json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": choices});
        Bytes::from(format!("data: {c}\n\n"))
    };
    let last = completion_tokens as usize - 1;
    let mut events: Vec<Bytes> = words(completion_tokens)
        .enumerate()
        .map(|(i, w)| {
            chunk(json!([choice(&if i == last { w.to_owned() } else { format!("{w} ") }, None)]))
        })
        .collect();
    events.push(chunk(json!([choice("", Some("stop"))])));
    if req.stream_options.and_then(|o| o.include_usage).unwrap_or(false) && !omit_usage {
        let c = json!({"id": id, "object": "text_completion", "created": created, "model": model, "choices": [], "usage": usage});
        events.push(Bytes::from(format!("data: {c}\n\n")));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    Some(sse_response(state, events, &directive))
}

#[derive(Deserialize)]
struct ResponsesRequest<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow)]
    instructions: Option<&'a RawValue>,
    stream: Option<bool>,
    max_output_tokens: Option<u64>,
    mock: Option<Directive>,
}

/// `POST /v1/responses`: OpenAI's Responses API, one message of output text.
pub fn responses(state: &State, body: &[u8], n: u64) -> Option<Response<MockBody>> {
    let mut normalized = String::new();
    let req: ResponsesRequest<'_> = match parse_like_python(body, &mut normalized) {
        Ok(r) => r,
        Err(response) => return Some(*response),
    };
    let directive = req.mock.unwrap_or_default();
    if let Some(failure) = directive.failure(false) {
        return failure;
    }
    let model = req.model.as_deref().unwrap_or("mock");
    let input_tokens = tokens_for_bytes(prompt_bytes(req.input) + prompt_bytes(req.instructions));
    let output_tokens = directive.completion_tokens(req.max_output_tokens);
    let usage = if directive.omit_usage == Some(true) {
        Value::Null
    } else {
        json!({
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        })
    };
    let (id, item_id, created) = (format!("resp_mock_{n}"), format!("msg_mock_{n}"), unix_now());
    let text = words(output_tokens).collect::<Vec<_>>().join(" ");
    let message = |text: &str, status: &str| {
        json!({
            "type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": []}],
        })
    };
    let response = |status: &str, output: Value, usage: Value| {
        json!({
            "id": id, "object": "response", "created_at": created, "status": status,
            "model": model, "output": output, "usage": usage, "error": null,
            "incomplete_details": null, "instructions": null, "metadata": {},
            "parallel_tool_calls": true, "tool_choice": "auto", "tools": [],
            "temperature": 1.0, "top_p": 1.0, "text": {"format": {"type": "text"}},
        })
    };
    let done = response("completed", json!([message(&text, "completed")]), usage);
    if req.stream != Some(true) {
        return Some(json_response(StatusCode::OK, Bytes::from(done.to_string())));
    }
    let mut seq = 0u64;
    let mut event = |kind: &str, mut data: Value| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        seq += 1;
        typed_event(kind, &data)
    };
    let at = json!({"item_id": item_id, "output_index": 0, "content_index": 0});
    let with = |extra: Value| {
        let mut v = at.clone();
        if let (Some(v), Value::Object(extra)) = (v.as_object_mut(), extra) {
            v.extend(extra);
        }
        v
    };
    let mut events = vec![
        event(
            "response.created",
            json!({"response": response("in_progress", json!([]), Value::Null)}),
        ),
        event(
            "response.in_progress",
            json!({"response": response("in_progress", json!([]), Value::Null)}),
        ),
        event(
            "response.output_item.added",
            json!({"output_index": 0, "item": {"type": "message", "id": item_id, "status": "in_progress", "role": "assistant", "content": []}}),
        ),
        event(
            "response.content_part.added",
            with(json!({"part": {"type": "output_text", "text": "", "annotations": []}})),
        ),
    ];
    let last = output_tokens as usize - 1;
    for (i, w) in words(output_tokens).enumerate() {
        let delta = if i == last { w.to_owned() } else { format!("{w} ") };
        events.push(event("response.output_text.delta", with(json!({"delta": delta}))));
    }
    events.push(event("response.output_text.done", with(json!({"text": text}))));
    events.push(event(
        "response.content_part.done",
        with(json!({"part": {"type": "output_text", "text": text, "annotations": []}})),
    ));
    events.push(event(
        "response.output_item.done",
        json!({"output_index": 0, "item": message(&text, "completed")}),
    ));
    events.push(event("response.completed", json!({"response": done})));
    Some(sse_response(state, events, &directive))
}

#[derive(Deserialize)]
struct MessagesRequest<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
    #[serde(borrow)]
    system: Option<&'a RawValue>,
    stream: Option<bool>,
    max_tokens: Option<u64>,
    mock: Option<Directive>,
}

/// `POST /v1/messages`: Anthropic's Messages API, one text block. `cache_read` and
/// `cache_write` in the directive report prompt-cache reads and writes: Anthropic counts them
/// apart from `input_tokens`, which is what was neither.
pub fn messages(state: &State, body: &[u8], n: u64) -> Option<Response<MockBody>> {
    let mut normalized = String::new();
    let req: MessagesRequest<'_> = match parse_like_python(body, &mut normalized) {
        Ok(r) => r,
        Err(response) => return Some(*response),
    };
    let directive = req.mock.unwrap_or_default();
    if let Some(failure) = directive.failure(true) {
        return failure;
    }
    if req.max_tokens.is_none() {
        let message = "max_tokens: Field required";
        return Some(anthropic_error(StatusCode::BAD_REQUEST, message));
    }
    let model = req.model.as_deref().unwrap_or("mock");
    let prompt = tokens_for_bytes(prompt_bytes(req.messages) + prompt_bytes(req.system));
    let (read, written) = (directive.cache_read.unwrap_or(0), directive.cache_write.unwrap_or(0));
    let input_tokens = prompt.saturating_sub(read + written);
    let output_tokens = directive.completion_tokens(req.max_tokens);
    let omit_usage = directive.omit_usage == Some(true);
    let usage = |output: u64| {
        json!({
            "input_tokens": input_tokens, "output_tokens": output,
            "cache_creation_input_tokens": written, "cache_read_input_tokens": read,
        })
    };
    let id = format!("msg_mock_{n}");
    let message = |content: Value, stop: Option<&str>, usage: Value| {
        json!({
            "id": id, "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": stop, "stop_sequence": null, "usage": usage,
        })
    };
    if req.stream != Some(true) {
        let text = words(output_tokens).collect::<Vec<_>>().join(" ");
        let mut resp = message(
            json!([{"type": "text", "text": text}]),
            Some("end_turn"),
            usage(output_tokens),
        );
        if omit_usage {
            resp.as_object_mut().map(|m| m.remove("usage"));
        }
        return Some(json_response(StatusCode::OK, Bytes::from(resp.to_string())));
    }
    let mut events = vec![
        typed_event(
            "message_start",
            &json!({"type": "message_start", "message": message(json!([]), None, usage(1))}),
        ),
        typed_event(
            "content_block_start",
            &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        typed_event("ping", &json!({"type": "ping"})),
    ];
    let last = output_tokens as usize - 1;
    for (i, w) in words(output_tokens).enumerate() {
        let text = if i == last { w.to_owned() } else { format!("{w} ") };
        let delta = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}});
        events.push(typed_event("content_block_delta", &delta));
    }
    events.push(typed_event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    let mut delta = json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}});
    if !omit_usage {
        delta["usage"] = json!({"output_tokens": output_tokens});
    }
    events.push(typed_event("message_delta", &delta));
    events.push(typed_event("message_stop", &json!({"type": "message_stop"})));
    Some(sse_response(state, events, &directive))
}
