//! Counting what an upstream generated, for answers that arrive without usage.
//!
//! The gateway always asks streams for their usage chunk, and most upstreams put `usage` in
//! whole answers; when one still does not, the request is charged an estimate, never zero,
//! and its usage record says so. The estimator, stated once here:
//!
//! - completion: every text the answer carries, as its JSON text: `content`,
//!   `reasoning_content`, `reasoning`, `refusal`, tool calls' `function.name` and
//!   `function.arguments`, legacy `function_call` and completions' `text`, of every choice
//!   (deltas of a stream, messages of a whole answer); one token per 4 ASCII bytes (rounded
//!   up) plus one per non-ASCII character (most tokenizers spend at least that on them);
//! - prompt: one token per 4 bytes of the request's `messages` (or `input`) JSON.

use gateway_core::Usage;
use serde::Deserialize;
use serde_json::value::RawValue;

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

/// Completion tokens of a whole answer that reported no usage.
pub fn completion_of_answer(body: &[u8]) -> u64 {
    let mut tally = TextTally::default();
    if read_answer(body, &mut tally).is_err() {
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
        assert!(completion_of_answer(b"not json at all") > 0);
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
}
