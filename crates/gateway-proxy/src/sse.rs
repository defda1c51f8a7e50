//! Reading an SSE stream as it is relayed: its usage, everything generated (to estimate tokens
//! when upstream sends no usage: content, reasoning, refusals and tool calls, see
//! [`crate::estimate`]), whether its end arrived, and removing the usage chunk the gateway
//! asked for when the client did not.
//!
//! Each [`Dialect`] ends and reports differently: an OpenAI stream sends its usage in a final
//! chunk and ends with `data: [DONE]`; a Responses stream ends with `response.completed` (or
//! `response.incomplete`, `response.failed`), whose `response.usage` is the usage; an
//! Anthropic stream gives the input in `message_start`, the output so far in each
//! `message_delta`, and ends with `message_stop`. A stream's usage counts as reported only
//! once its end arrived with it: a stream cut before is charged the estimate.

use bytes::{Bytes, BytesMut};
use gateway_core::Usage;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::estimate::{AnthropicUsage, ResponsesUsage, TextTally, read_answer};
use crate::request::Dialect;

/// Watches the events of one stream.
#[derive(Debug)]
pub struct SseTap {
    dialect: Dialect,
    carry: BytesMut,
    strip_usage_chunk: bool,
    seen: Seen,
    events: usize,
}

/// What the events of a stream said so far.
#[derive(Debug, Default)]
struct Seen {
    usage: Option<Usage>,
    /// An Anthropic stream's usage so far, and whether a `message_delta` restated it (boxed:
    /// other streams do not pay for its room in every relayed body).
    anthropic: Option<Box<(AnthropicUsage, bool)>>,
    generated: TextTally,
    done: bool,
}

/// A Responses or Anthropic stream event: the fields the tap reads.
#[derive(Deserialize)]
struct TypedEvent<'a> {
    #[serde(rename = "type", borrow)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    delta: Option<&'a RawValue>,
    response: Option<ResponseUsageHolder>,
    message: Option<AnthropicUsageHolder>,
    usage: Option<AnthropicUsage>,
}

#[derive(Deserialize)]
struct ResponseUsageHolder {
    usage: Option<ResponsesUsage>,
}

#[derive(Deserialize)]
struct AnthropicUsageHolder {
    usage: Option<AnthropicUsage>,
}

/// What to relay of one event.
enum Relay {
    Keep,
    Drop,
    /// The event rewritten without its `usage` field.
    Replace(Bytes),
}

/// A usage chunk the client did not ask for: dropped when its choices carry nothing (OpenAI
/// sends `"choices": []`, LiteLLM a choice with an empty delta), otherwise relayed without
/// its `usage` field. Only usage chunks (one per stream) pay for this parse.
fn usage_free(data: &[u8]) -> Relay {
    let Ok(serde_json::Value::Object(mut chunk)) =
        serde_json::from_slice::<serde_json::Value>(data)
    else {
        return Relay::Keep;
    };
    let carries_nothing = |c: &serde_json::Value| {
        c.get("delta").is_none_or(|d| d.as_object().is_none_or(serde_json::Map::is_empty))
            && c.get("finish_reason").is_none_or(serde_json::Value::is_null)
    };
    let empty = chunk
        .get("choices")
        .is_none_or(|c| c.as_array().is_none_or(|a| a.iter().all(carries_nothing)));
    if empty {
        return Relay::Drop;
    }
    chunk.remove("usage");
    match serde_json::to_string(&chunk) {
        Ok(json) => Relay::Replace(Bytes::from(format!("data: {json}\n\n"))),
        Err(_) => Relay::Keep,
    }
}

/// Where the event starting at the front of `buf` ends, and the delimiter's length.
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

impl SseTap {
    /// `strip_usage_chunk`: remove the usage-only chunk (the client did not ask for it; the
    /// OpenAI dialect only).
    pub fn new(dialect: Dialect, strip_usage_chunk: bool) -> Self {
        Self {
            dialect,
            carry: BytesMut::new(),
            strip_usage_chunk: strip_usage_chunk && dialect == Dialect::OpenAi,
            seen: Seen::default(),
            events: 0,
        }
    }

    /// Takes the next bytes from upstream and returns what to relay now: every complete
    /// event, minus a stripped usage chunk. Bytes are relayed as they came when nothing is
    /// removed and no event was split across chunks.
    pub fn feed(&mut self, chunk: Bytes) -> Option<Bytes> {
        let zero_copy = self.carry.is_empty();
        self.carry.extend_from_slice(&chunk);
        let mut out: Option<BytesMut> = None;
        let mut consumed = 0;
        while let Some((end, delim)) = event_end(&self.carry[consumed..]) {
            let event_start = consumed;
            let event_end = consumed + end + delim;
            let relay = self.observe(event_start, consumed + end);
            if !matches!(relay, Relay::Keep) && out.is_none() {
                // First change: start a copy of what was kept so far.
                out = Some(BytesMut::from(&self.carry[..event_start]));
            }
            match (relay, out.as_mut()) {
                (Relay::Keep, Some(o)) => o.extend_from_slice(&self.carry[event_start..event_end]),
                (Relay::Replace(b), Some(o)) => o.extend_from_slice(&b),
                _ => {}
            }
            consumed = event_end;
        }
        if consumed == 0 {
            return None;
        }
        let complete = self.carry.split_to(consumed).freeze();
        match out {
            Some(o) if o.is_empty() => None,
            Some(o) => Some(o.freeze()),
            None if zero_copy && self.carry.is_empty() => Some(chunk),
            None => Some(complete),
        }
    }

    /// At the end of the stream: whatever partial event is left, relayed as it is.
    pub fn finish(&mut self) -> Option<Bytes> {
        (!self.carry.is_empty()).then(|| self.carry.split().freeze())
    }

    /// Reads one event (`carry[start..end]`); returns what to relay of it.
    fn observe(&mut self, start: usize, end: usize) -> Relay {
        self.events += 1;
        let event = &self.carry[start..end];
        let mut relay = Relay::Keep;
        for line in event.split(|b| *b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(data) = line.strip_prefix(b"data:") else { continue };
            let data = data.strip_prefix(b" ").unwrap_or(data);
            if self.dialect != Dialect::OpenAi {
                self.seen.typed_event(self.dialect, data);
                continue;
            }
            if data == b"[DONE]" {
                self.seen.done = true;
                continue;
            }
            // Every event is read: what it generated may be content, reasoning, a refusal or
            // tool-call arguments, and all of it is charged when no usage arrives.
            let usage = match read_answer(data, &mut self.seen.generated) {
                Ok(usage) => usage,
                Err(_) => {
                    // Not a chunk we know: what it carries counts all the same.
                    self.seen.generated.add(&String::from_utf8_lossy(data));
                    None
                }
            };
            if let Some(usage) = usage {
                self.seen.usage = Some(usage);
                if self.strip_usage_chunk {
                    relay = usage_free(data);
                }
            }
        }
        relay
    }

    /// The usage upstream reported, if it did (and, but for OpenAI streams, reached the end).
    pub fn usage(&self) -> Option<Usage> {
        self.seen.usage
    }

    /// The stream's own error event, to end a stream that failed after its first byte.
    pub fn error_event(&self, message: &str, code: &str) -> Bytes {
        error_event(self.dialect, message, code)
    }

    /// Completion tokens estimated from everything relayed (see [`crate::estimate`]), for
    /// streams that end without a usage chunk.
    pub fn counted_completion_tokens(&self) -> u64 {
        self.seen.generated.tokens()
    }

    /// Whether the stream's end arrived (`data: [DONE]`, `response.completed`, `message_stop`).
    pub fn saw_done(&self) -> bool {
        self.seen.done
    }

    /// Events seen so far.
    pub fn events(&self) -> usize {
        self.events
    }
}

impl Seen {
    /// Reads one event of a Responses or Anthropic stream.
    fn typed_event(&mut self, dialect: Dialect, data: &[u8]) {
        let Seen { usage, anthropic, generated, done } = self;
        let Ok(event) = serde_json::from_slice::<TypedEvent<'_>>(data) else {
            // Not an event we know: what it carries counts all the same.
            generated.add(&String::from_utf8_lossy(data));
            return;
        };
        match (dialect, event.kind.as_ref()) {
            (
                Dialect::Responses,
                "response.completed" | "response.incomplete" | "response.failed",
            ) => {
                *usage = event.response.and_then(|r| r.usage).map(Usage::from);
                *done = true;
            }
            (Dialect::Responses, kind)
                if kind.rsplit_once('.').is_some_and(|(_, l)| l == "delta") =>
            {
                if let Some(delta) = event.delta {
                    generated.add_json(delta);
                }
            }
            (Dialect::Anthropic, "message_start") => {
                let usage = event.message.and_then(|m| m.usage).unwrap_or_default();
                *anthropic = Some(Box::new((usage, false)));
            }
            (Dialect::Anthropic, "message_delta") => {
                let (so_far, restated) = &mut **anthropic.get_or_insert_default();
                so_far.merge(event.usage.unwrap_or_default());
                *restated = true;
            }
            (Dialect::Anthropic, "content_block_delta") => {
                if let Some(delta) = event.delta {
                    crate::estimate::tally_part(delta, generated);
                }
            }
            (Dialect::Anthropic, "message_stop") => {
                *done = true;
                if let Some((so_far, true)) = anthropic.as_deref() {
                    *usage = Some(Usage::from(*so_far));
                }
            }
            _ => {}
        }
    }
}

/// An error event in `dialect`'s shape, to end a stream that failed after its first byte:
/// OpenAI's `data: {"error": ...}`, the Responses API's `error` event, Anthropic's `error`
/// event (an `api_error`, which its SDKs raise).
pub fn error_event(dialect: Dialect, message: &str, code: &str) -> Bytes {
    match dialect {
        Dialect::OpenAi => {
            let body = serde_json::json!({"error": {"message": message, "type": "server_error", "param": null, "code": code}});
            Bytes::from(format!("data: {body}\n\n"))
        }
        Dialect::Responses => {
            let body = serde_json::json!({"type": "error", "code": code, "message": message, "param": null});
            Bytes::from(format!("event: error\ndata: {body}\n\n"))
        }
        Dialect::Anthropic => {
            let body = serde_json::json!({"type": "error", "error": {"type": "api_error", "message": message}});
            Bytes::from(format!("event: error\ndata: {body}\n\n"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTENT: &str =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello \"}}]}\n\n";
    const CONTENT2: &str =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"world\"}}]}\n\n";
    const USAGE: &str = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    fn feed_all(tap: &mut SseTap, parts: &[&str]) -> String {
        let mut out = String::new();
        for p in parts {
            if let Some(b) = tap.feed(Bytes::copy_from_slice(p.as_bytes())) {
                out.push_str(std::str::from_utf8(&b).unwrap());
            }
        }
        if let Some(b) = tap.finish() {
            out.push_str(std::str::from_utf8(&b).unwrap());
        }
        out
    }

    #[test]
    fn whole_events_pass_untouched_and_usage_is_read() {
        let mut tap = SseTap::new(Dialect::OpenAi, false);
        let chunk = Bytes::from(format!("{CONTENT}{CONTENT2}"));
        let out = tap.feed(chunk.clone()).unwrap();
        assert_eq!(out.as_ptr(), chunk.as_ptr(), "relayed without a copy");
        assert_eq!(feed_all(&mut tap, &[USAGE, DONE]), format!("{USAGE}{DONE}"));
        assert_eq!(tap.usage(), Some(Usage::new(3, 2)));
        assert!(tap.saw_done());
        assert_eq!(tap.counted_completion_tokens(), 3, "11 bytes of content");
    }

    #[test]
    fn the_usage_chunk_is_removed_when_the_client_did_not_ask() {
        let mut tap = SseTap::new(Dialect::OpenAi, true);
        let all = format!("{CONTENT}{USAGE}{DONE}");
        assert_eq!(feed_all(&mut tap, &[&all]), format!("{CONTENT}{DONE}"));
        assert_eq!(tap.usage(), Some(Usage::new(3, 2)));
        let mut tap = SseTap::new(Dialect::OpenAi, true);
        assert_eq!(feed_all(&mut tap, &[USAGE]), "");
    }

    #[test]
    fn litellm_usage_chunks_with_an_empty_delta_are_removed_too() {
        let litellm = "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":3,\"total_tokens\":4}}\n\n";
        let mut tap = SseTap::new(Dialect::OpenAi, true);
        assert_eq!(feed_all(&mut tap, &[CONTENT, litellm, DONE]), format!("{CONTENT}{DONE}"));
        assert_eq!(tap.usage(), Some(Usage::new(1, 3)));
        let mut tap = SseTap::new(Dialect::OpenAi, false);
        assert_eq!(feed_all(&mut tap, &[litellm]), litellm, "kept when the client asked");
    }

    #[test]
    fn usage_riding_on_a_content_chunk_is_removed_but_the_content_kept() {
        let both = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"end\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":1,\"total_tokens\":3}}\n\n";
        let mut tap = SseTap::new(Dialect::OpenAi, true);
        let out = feed_all(&mut tap, &[both, DONE]);
        assert!(out.contains("\"content\":\"end\"") && !out.contains("usage"), "{out}");
        assert!(out.ends_with(DONE));
        assert_eq!(tap.usage(), Some(Usage::new(2, 1)));
    }

    #[test]
    fn events_split_across_chunks_are_reassembled() {
        let all = format!("{CONTENT}{CONTENT2}{USAGE}{DONE}");
        for cut in 1..all.len() {
            let mut tap = SseTap::new(Dialect::OpenAi, true);
            let out = feed_all(&mut tap, &[&all[..cut], &all[cut..]]);
            assert_eq!(out, format!("{CONTENT}{CONTENT2}{DONE}"), "cut at {cut}");
            assert_eq!(tap.usage(), Some(Usage::new(3, 2)));
            assert_eq!(tap.events(), 4);
        }
    }

    #[test]
    fn crlf_streams_and_streams_without_usage() {
        let mut tap = SseTap::new(Dialect::OpenAi, true);
        let out = feed_all(
            &mut tap,
            &[
                "data: {\"choices\":[{\"delta\":{\"content\":\"abcdefgh\"}}]}\r\n\r\n",
                "data: [DONE]\r\n\r\n",
            ],
        );
        assert!(out.ends_with("data: [DONE]\r\n\r\n"));
        assert_eq!(tap.usage(), None);
        assert_eq!(tap.counted_completion_tokens(), 2);
    }

    #[test]
    fn error_events_are_openai_shaped() {
        let e = error_event(Dialect::OpenAi, "upstream failed", "upstream_error");
        let s = std::str::from_utf8(&e).unwrap();
        let v: serde_json::Value =
            serde_json::from_str(s.trim_start_matches("data: ").trim()).unwrap();
        assert_eq!(v["error"]["code"], "upstream_error");
    }

    #[test]
    fn tool_calls_reasoning_and_refusals_count_when_no_usage_arrives() {
        let args = "{\\\"q\\\":\\\"".to_owned() + &"x".repeat(96) + "\\\"}";
        let tool = format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"tool_calls\":[{{\"index\":0,\"function\":{{\"arguments\":\"{args}\"}}}}]}}}}]}}\n\n"
        );
        let reasoning =
            "data: {\"choices\":[{\"delta\":{\"reasoning_content\":\"abcdefgh\"}}]}\n\n";
        let refusal = "data: {\"choices\":[{\"delta\":{\"refusal\":\"abcd\"}}]}\n\n";
        let mut tap = SseTap::new(Dialect::OpenAi, true);
        let parts = [tool.as_str(), tool.as_str(), reasoning, refusal, DONE];
        let out = feed_all(&mut tap, &parts);
        assert_eq!(out, parts.concat(), "relayed untouched");
        assert_eq!(tap.usage(), None);
        // Each arguments text is 108 bytes of JSON text (escapes included); reasoning 8 and
        // refusal 4: 228 ASCII bytes in all, four to a token.
        assert_eq!(tap.counted_completion_tokens(), (2 * 108 + 8 + 4) / 4);
    }

    fn typed(kind: &str, data: &str) -> String {
        format!("event: {kind}\ndata: {data}\n\n")
    }

    #[test]
    fn responses_streams_report_usage_at_response_completed_and_pass_unchanged() {
        let parts = [
            typed("response.created", r#"{"type":"response.created","response":{"usage":null}}"#),
            typed(
                "response.output_text.delta",
                r#"{"type":"response.output_text.delta","delta":"abcdefgh"}"#,
            ),
            typed(
                "response.function_call_arguments.delta",
                r#"{"type":"response.function_call_arguments.delta","delta":"{\"q\":1}"}"#,
            ),
            typed(
                "response.completed",
                r#"{"type":"response.completed","response":{"usage":{"input_tokens":7,"input_tokens_details":{"cached_tokens":2},"output_tokens":3,"total_tokens":10}}}"#,
            ),
        ];
        let all = parts.concat();
        for cut in [1, all.len() / 2, all.len() - 1] {
            let mut tap = SseTap::new(Dialect::Responses, true);
            assert_eq!(feed_all(&mut tap, &[&all[..cut], &all[cut..]]), all, "never rewritten");
            assert!(tap.saw_done());
            let usage = tap.usage().unwrap();
            assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.total()), (7, 3, 10));
            assert_eq!(usage.cached_prompt_tokens(), 2);
        }
        // Cut before `response.completed`: no usage, what was generated is counted.
        let mut tap = SseTap::new(Dialect::Responses, false);
        feed_all(&mut tap, &[&parts[..3].concat()]);
        assert!(!tap.saw_done() && tap.usage().is_none());
        assert_eq!(tap.counted_completion_tokens(), 2 + 3, "8 bytes of text, 11 of arguments");
    }

    #[test]
    fn anthropic_streams_add_cache_reads_and_writes_to_the_prompt() {
        let start = typed(
            "message_start",
            r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"output_tokens":1,"cache_creation_input_tokens":4,"cache_read_input_tokens":6}}}"#,
        );
        let delta = typed(
            "content_block_delta",
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"abcdefgh"}}"#,
        );
        let tool = typed(
            "content_block_delta",
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#,
        );
        let end = typed(
            "message_delta",
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":12}}"#,
        );
        let stop = typed("message_stop", r#"{"type":"message_stop"}"#);
        let all =
            [start.as_str(), &delta, &tool, &typed("ping", r#"{"type":"ping"}"#), &end, &stop];
        let mut tap = SseTap::new(Dialect::Anthropic, true);
        assert_eq!(feed_all(&mut tap, &all), all.concat());
        let usage = tap.usage().unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (20, 12));
        assert_eq!((usage.cached_prompt_tokens(), usage.cache_write_prompt_tokens()), (6, 4));
        // Without its `message_delta` (cut, or an upstream that sent none) the usage is not
        // complete: the stream is charged the estimate.
        let mut tap = SseTap::new(Dialect::Anthropic, false);
        feed_all(&mut tap, &[&start, &delta, &stop]);
        assert!(tap.saw_done() && tap.usage().is_none());
        assert_eq!(tap.counted_completion_tokens(), 2);
    }

    #[test]
    fn error_events_have_each_apis_shape() {
        let data = |b: Bytes| -> serde_json::Value {
            let s = String::from_utf8(b.to_vec()).unwrap();
            let line = s.lines().find_map(|l| l.strip_prefix("data: ")).unwrap().to_owned();
            serde_json::from_str(&line).unwrap()
        };
        let e = error_event(Dialect::Anthropic, "gone", "upstream_error");
        assert!(e.starts_with(b"event: error\n"));
        assert_eq!(data(e)["error"]["type"], "api_error");
        let e = error_event(Dialect::Responses, "gone", "upstream_timeout");
        assert!(e.starts_with(b"event: error\n"));
        assert_eq!(data(e)["code"], "upstream_timeout");
    }
}
