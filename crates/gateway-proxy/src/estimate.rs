//! Counting what an upstream generated, for answers that arrive without usage.
//!
//! The gateway always asks streams for their usage chunk, and most upstreams put `usage` in
//! whole answers; when one still does not, the request is charged an estimate, never zero,
//! and its usage record says so. The estimator, stated once here:
//!
//! - completion: every text the answer carries, as its JSON text: `content`,
//!   `reasoning_content`, `reasoning`, `refusal`, tool calls' `function.name` and
//!   `function.arguments`, legacy `function_call` and completions' `text`, of every choice
//!   (deltas of a stream, messages of a whole answer); a Responses answer's output texts,
//!   refusals, reasoning summaries and call arguments (a stream's `*.delta` events); a
//!   Messages answer's text, thinking and tool input (a stream's `content_block_delta`s); one
//!   token per 4 ASCII bytes (rounded up) plus one per non-ASCII character (most tokenizers
//!   spend at least that on them);
//! - prompt: one token per 4 bytes of the request's prompt fields' JSON (see
//!   [`crate::request::RequestView::prompt_bytes`]).
//!
//! The usage each dialect reports is read into one [`Usage`]: a Responses `input_tokens` is
//! the prompt (its `input_tokens_details.cached_tokens` the cached part); Anthropic's
//! `input_tokens` counts only the uncached input after the last cache breakpoint, so the
//! prompt is `input_tokens + cache_creation_input_tokens + cache_read_input_tokens`, of which
//! the cache reads are cached and the cache writes are counted in
//! `prompt_tokens_details.cache_write_tokens`.

use gateway_core::{PromptTokensDetails, Usage};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::request::Dialect;

/// Text generated so far, tallied for the estimate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TextTally {
    ascii_bytes: u64,
    other_chars: u64,
}

impl TextTally {
    /// Adds a JSON value's text: a string's content without its quotes, anything else whole.
    pub fn add_json(&mut self, raw: &RawValue) {
        let text = raw.get();
        let text = text
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(if text == "null" { "" } else { text });
        self.add(text);
    }

    pub fn add(&mut self, text: &str) {
        if text.is_ascii() {
            self.ascii_bytes += text.len() as u64;
            return;
        }
        for b in text.bytes() {
            if b < 0x80 {
                self.ascii_bytes += 1;
            } else if b >= 0xC0 {
                // The first byte of a multi-byte character.
                self.other_chars += 1;
            }
        }
    }

    /// The estimated tokens.
    pub fn tokens(&self) -> u64 {
        self.ascii_bytes.div_ceil(4) + self.other_chars
    }
}

#[derive(Deserialize)]
struct FunctionPart<'a> {
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    arguments: Option<&'a RawValue>,
}

impl FunctionPart<'_> {
    fn tally(&self, t: &mut TextTally) {
        for part in self.name.into_iter().chain(self.arguments) {
            t.add_json(part);
        }
    }
}

/// Tallies `raw` read as `T` with `each`; a shape of its own counts whole.
fn tally_as<'a, T: Deserialize<'a>>(
    raw: &'a RawValue,
    t: &mut TextTally,
    each: impl FnOnce(&T, &mut TextTally),
) {
    match serde_json::from_str::<T>(raw.get()) {
        Ok(value) => each(&value, t),
        Err(_) => t.add_json(raw),
    }
}

#[derive(Deserialize)]
struct ToolCall<'a> {
    #[serde(borrow)]
    function: Option<FunctionPart<'a>>,
}

/// The generated parts of a stream's `delta` or an answer's `message`.
#[derive(Deserialize)]
struct Generated<'a> {
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    reasoning_content: Option<&'a RawValue>,
    #[serde(borrow)]
    reasoning: Option<&'a RawValue>,
    #[serde(borrow)]
    refusal: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_calls: Option<&'a RawValue>,
    #[serde(borrow)]
    function_call: Option<&'a RawValue>,
}

impl Generated<'_> {
    fn tally(&self, t: &mut TextTally) {
        for part in [self.content, self.reasoning_content, self.reasoning, self.refusal]
            .into_iter()
            .flatten()
        {
            t.add_json(part);
        }
        if let Some(calls) = self.tool_calls {
            tally_as(calls, t, |calls: &Vec<ToolCall<'_>>, t| {
                calls.iter().filter_map(|c| c.function.as_ref()).for_each(|f| f.tally(t));
            });
        }
        if let Some(call) = self.function_call {
            tally_as(call, t, FunctionPart::tally);
        }
    }
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(borrow)]
    delta: Option<Generated<'a>>,
    #[serde(borrow)]
    message: Option<Generated<'a>>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
}

/// A chat completion, a stream chunk or a legacy completion: its choices and usage.
#[derive(Deserialize)]
struct Answer<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<Choice<'a>>>,
    usage: Option<Usage>,
}

/// Reads one JSON answer or stream event: adds what it generated to `tally` and returns the
/// usage it reports. `Err` when it is not such JSON (the caller decides what that counts for).
pub fn read_answer(json: &[u8], tally: &mut TextTally) -> Result<Option<Usage>, serde_json::Error> {
    let answer: Answer<'_> = serde_json::from_slice(json)?;
    for choice in answer.choices.iter().flatten() {
        for g in [&choice.delta, &choice.message].into_iter().flatten() {
            g.tally(tally);
        }
        if let Some(text) = choice.text {
            tally.add_json(text);
        }
    }
    Ok(answer.usage)
}

/// A Responses API `usage`.
#[derive(Clone, Copy, Debug, Deserialize)]
pub struct ResponsesUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    total_tokens: u64,
    input_tokens_details: Option<PromptTokensDetails>,
}

impl From<ResponsesUsage> for Usage {
    fn from(u: ResponsesUsage) -> Self {
        Usage {
            prompt_tokens: u.input_tokens,
            completion_tokens: u.output_tokens,
            total_tokens: u.total_tokens,
            prompt_tokens_details: u.input_tokens_details,
        }
    }
}

/// An Anthropic `usage`, or the part of it one stream event carries.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[allow(clippy::struct_field_names)] // Anthropic's names
pub struct AnthropicUsage {
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

impl AnthropicUsage {
    /// Takes the counts `later` carries (a stream's `message_delta` restates them cumulatively).
    pub fn merge(&mut self, later: AnthropicUsage) {
        self.input_tokens = later.input_tokens.or(self.input_tokens);
        self.output_tokens = later.output_tokens.or(self.output_tokens);
        self.cache_creation_input_tokens =
            later.cache_creation_input_tokens.or(self.cache_creation_input_tokens);
        self.cache_read_input_tokens =
            later.cache_read_input_tokens.or(self.cache_read_input_tokens);
    }
}

impl From<AnthropicUsage> for Usage {
    fn from(u: AnthropicUsage) -> Self {
        let read = u.cache_read_input_tokens.unwrap_or(0);
        let written = u.cache_creation_input_tokens.unwrap_or(0);
        let mut usage =
            Usage::new(u.input_tokens.unwrap_or(0) + written + read, u.output_tokens.unwrap_or(0));
        if read > 0 || written > 0 {
            usage.prompt_tokens_details =
                Some(PromptTokensDetails { cached_tokens: read, cache_write_tokens: written });
        }
        usage
    }
}

/// A text-bearing part: of a Responses output item (`content`, `summary`) or of an Anthropic
/// answer (`content` blocks, a stream's `delta`).
#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow)]
    text: Option<&'a RawValue>,
    #[serde(borrow)]
    refusal: Option<&'a RawValue>,
    #[serde(borrow)]
    thinking: Option<&'a RawValue>,
    /// A tool call's input: whole (a block) or as it streams (a delta).
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow)]
    partial_json: Option<&'a RawValue>,
}

impl Part<'_> {
    fn tally(&self, t: &mut TextTally) {
        [self.text, self.refusal, self.thinking, self.input, self.partial_json]
            .into_iter()
            .flatten()
            .for_each(|p| t.add_json(p));
    }
}

/// Tallies one part (an Anthropic stream's `delta`); a shape of its own counts whole.
pub(crate) fn tally_part(raw: &RawValue, t: &mut TextTally) {
    tally_as(raw, t, |part: &Part<'_>, t| part.tally(t));
}

fn tally_parts(raw: &RawValue, t: &mut TextTally) {
    tally_as(raw, t, |parts: &Vec<Part<'_>>, t| parts.iter().for_each(|p| p.tally(t)));
}

/// One item of a Responses answer's `output`.
#[derive(Deserialize)]
struct OutputItem<'a> {
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    summary: Option<&'a RawValue>,
    #[serde(borrow)]
    arguments: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ResponsesAnswer<'a> {
    #[serde(borrow)]
    output: Option<Vec<OutputItem<'a>>>,
    usage: Option<ResponsesUsage>,
}

#[derive(Deserialize)]
struct AnthropicAnswer<'a> {
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    usage: Option<AnthropicUsage>,
}

/// Reads a whole answer of `dialect`: adds what it generated to `tally`, returns its usage.
pub fn read_whole(
    dialect: Dialect,
    json: &[u8],
    tally: &mut TextTally,
) -> Result<Option<Usage>, serde_json::Error> {
    match dialect {
        Dialect::OpenAi => read_answer(json, tally),
        Dialect::Responses => {
            let answer: ResponsesAnswer<'_> = serde_json::from_slice(json)?;
            for item in answer.output.iter().flatten() {
                for parts in [item.content, item.summary].into_iter().flatten() {
                    tally_parts(parts, tally);
                }
                if let Some(arguments) = item.arguments {
                    tally.add_json(arguments);
                }
            }
            Ok(answer.usage.map(Usage::from))
        }
        Dialect::Anthropic => {
            let answer: AnthropicAnswer<'_> = serde_json::from_slice(json)?;
            if let Some(content) = answer.content {
                tally_parts(content, tally);
            }
            Ok(answer.usage.map(Usage::from))
        }
    }
}

#[derive(Deserialize)]
struct OpenAiUsageOnly {
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct ResponsesUsageOnly {
    usage: Option<ResponsesUsage>,
}

#[derive(Deserialize)]
struct AnthropicUsageOnly {
    usage: Option<AnthropicUsage>,
}

/// The usage a whole answer of `dialect` reports, read without looking at what it generated.
pub fn usage_of_answer(dialect: Dialect, body: &[u8]) -> Option<Usage> {
    match dialect {
        Dialect::OpenAi => serde_json::from_slice::<OpenAiUsageOnly>(body).ok()?.usage,
        Dialect::Responses => {
            serde_json::from_slice::<ResponsesUsageOnly>(body).ok()?.usage.map(Usage::from)
        }
        Dialect::Anthropic => {
            serde_json::from_slice::<AnthropicUsageOnly>(body).ok()?.usage.map(Usage::from)
        }
    }
}

/// Completion tokens of a whole answer that reported no usage.
pub fn completion_of_answer(dialect: Dialect, body: &[u8]) -> u64 {
    let mut tally = TextTally::default();
    if read_whole(dialect, body, &mut tally).is_err() {
        // Not an answer we know: whatever it holds counts.
        tally.add(&String::from_utf8_lossy(body));
    }
    tally.tokens()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens_of(json: &str) -> u64 {
        let mut t = TextTally::default();
        read_answer(json.as_bytes(), &mut t).unwrap();
        t.tokens()
    }

    #[test]
    fn ascii_counts_four_bytes_a_token_and_other_characters_one_each() {
        let mut t = TextTally::default();
        t.add("abcdefghi");
        assert_eq!(t.tokens(), 3);
        let mut t = TextTally::default();
        t.add("日本語ab");
        assert_eq!(t.tokens(), 3 + 1);
        assert_eq!(TextTally::default().tokens(), 0);
    }

    #[test]
    fn every_generated_text_counts_not_only_content() {
        let args = "x".repeat(400);
        let tool = format!(
            r#"{{"choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":0,"id":"c","type":"function","function":{{"name":"abcd","arguments":"{args}"}}}}]}}}}]}}"#
        );
        assert_eq!(tokens_of(&tool), 1 + 100);
        let reasoning =
            r#"{"choices":[{"delta":{"reasoning_content":"12345678","reasoning":"1234"}}]}"#;
        assert_eq!(tokens_of(reasoning), 3);
        let refusal = r#"{"choices":[{"delta":{"refusal":"no no no"},"finish_reason":null}]}"#;
        assert_eq!(tokens_of(refusal), 2);
        let legacy = r#"{"choices":[{"delta":{"function_call":{"name":"f","arguments":"123"}}}]}"#;
        assert_eq!(tokens_of(legacy), 1);
        let whole = r#"{"choices":[{"message":{"role":"assistant","content":"abcd","tool_calls":[{"function":{"name":"efgh","arguments":"ijkl"}}]}},{"message":{"content":"mnop"}}]}"#;
        assert_eq!(tokens_of(whole), 4, "all choices, all parts");
        assert_eq!(tokens_of(r#"{"choices":[{"text":"abcdefgh"}]}"#), 2);
        assert_eq!(tokens_of(r#"{"choices":[{"delta":{"content":null,"role":"assistant"}}]}"#), 0);
    }

    #[test]
    fn unknown_shapes_count_whole_rather_than_not_at_all() {
        let odd = r#"{"choices":[{"delta":{"tool_calls":{"weird":"12345678"}}}]}"#;
        assert!(tokens_of(odd) >= 2);
        assert!(completion_of_answer(Dialect::OpenAi, b"not json at all") > 0);
    }

    #[test]
    fn usage_is_read_when_present() {
        let mut t = TextTally::default();
        let u = read_answer(
            br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#,
            &mut t,
        )
        .unwrap();
        assert_eq!(u, Some(Usage::new(3, 2)));
        assert_eq!(read_answer(br#"{"choices":[],"usage":null}"#, &mut t).unwrap(), None);
    }

    #[test]
    fn responses_and_anthropic_answers_are_read_in_their_own_shapes() {
        let responses = br#"{"output":[{"type":"reasoning","summary":[{"type":"summary_text","text":"abcd"}]},
            {"type":"message","content":[{"type":"output_text","text":"abcdefgh"}]},
            {"type":"function_call","arguments":"{\"x\":1}"}],
            "usage":{"input_tokens":5,"output_tokens":9,"total_tokens":14,"input_tokens_details":{"cached_tokens":1}}}"#;
        let u = usage_of_answer(Dialect::Responses, responses).unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total(), u.cached_prompt_tokens()),
            (5, 9, 14, 1)
        );
        assert_eq!(completion_of_answer(Dialect::Responses, responses), 1 + 2 + 3);

        let anthropic = br#"{"content":[{"type":"text","text":"abcdefgh"},{"type":"thinking","thinking":"abcd"},
            {"type":"tool_use","id":"t","name":"f","input":{"a":1}}],
            "usage":{"input_tokens":3,"output_tokens":7,"cache_creation_input_tokens":2,"cache_read_input_tokens":5}}"#;
        let u = usage_of_answer(Dialect::Anthropic, anthropic).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens, u.total()), (10, 7, 17));
        assert_eq!((u.cached_prompt_tokens(), u.cache_write_prompt_tokens()), (5, 2));
        assert_eq!(completion_of_answer(Dialect::Anthropic, anthropic), 2 + 1 + 2);
        // An answer of another dialect has no usage where this one looks.
        assert_eq!(
            usage_of_answer(Dialect::OpenAi, anthropic).map(|u| u.completion_tokens),
            Some(0)
        );
        assert!(usage_of_answer(Dialect::Anthropic, b"{}").is_none());
    }
}
