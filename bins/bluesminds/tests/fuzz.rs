//! Mutation fuzzing of every parser that reads bytes from outside: the SSE tap (the upstream's
//! stream), request inspection and the body forwarded upstream (the client's JSON, the
//! `include_usage` splice, refused fields), usage extraction (the upstream's answer), API-key
//! parsing, form and query decoding (cookies' and forms' bytes), and payment webhooks (the
//! signature header and the event body).
//!
//! No coverage-guided fuzzer builds on this machine's stable toolchain (cargo-fuzz needs
//! nightly's sanitizers; cargo-afl needs AFL++'s LLVM plugins built for rustc's LLVM), so this
//! is the fallback the issue allows: seeded mutations of a corpus with large case counts. Each
//! target checks properties, not just the absence of panics (the tap relays a stream it has no
//! reason to change byte for byte, however it is split; a body inspection accepts is forwarded
//! as valid JSON; a parsed key is made of its parts).
//!
//! `tests/fuzz-corpus/<target>/` holds the seeds and every input that ever failed: each file
//! runs as it is on every run, then `FUZZ_CASES` mutated inputs per target (default 3,000, a
//! few seconds in CI) from `FUZZ_SEED` (default: fixed, so CI is reproducible). Long runs:
//! `FUZZ_CASES=2000000 FUZZ_SEED=$RANDOM cargo test --release --test fuzz`; a failure prints
//! the input and writes it to `target/fuzz-failures/` to be added to the corpus.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use bytes::Bytes;
use gateway_proxy::request::{Dialect, Endpoint, RequestRules, forward_body, inspect};
use gateway_proxy::sse::SseTap;

/// xorshift64*: small, fast, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Tokens that matter to the parsers, spliced in by the mutator.
const DICTIONARY: &[&[u8]] = &[
    b"data: ",
    b"data:",
    b"\n\n",
    b"\r\n\r\n",
    b"\r\n",
    b"[DONE]",
    b"{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2,\"total_tokens\":3}}",
    b"\"usage\":null",
    b"\"stream\":true",
    b"\"stream_options\":{\"include_usage\":false}",
    b"\"stream_options\":",
    b"\"api_base\":\"x\"",
    b"\"choices\":[]",
    b"\"delta\":{}",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\\",
    b"\\u0000",
    b"\\ud800",
    b",",
    b":",
    b"1e309",
    b"-1",
    b"18446744073709551616",
    b"null",
    b"%",
    b"%zz",
    b"%E2%9C",
    b"+",
    b"&",
    b"=",
    b"bm_",
    b"_",
    b"\xff\xfe",
    b"\xe2\x9c",
];

fn mutate(rng: &mut Rng, seed: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..=rng.below(8) {
        let len = data.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next() as u8;
            }
            2 => {
                let token = DICTIONARY[rng.below(DICTIONARY.len())];
                let at = rng.below(len + 1);
                data.splice(at..at, token.iter().copied());
            }
            3 if len > 0 => {
                let from = rng.below(len);
                let to = (from + 1 + rng.below(16)).min(len);
                data.drain(from..to);
            }
            4 if len > 0 => {
                let from = rng.below(len);
                let to = (from + 1 + rng.below(64)).min(len);
                let copy = data[from..to].to_vec();
                let at = rng.below(len + 1);
                data.splice(at..at, copy);
            }
            5 if !corpus.is_empty() => {
                let other = &corpus[rng.below(corpus.len())];
                let at = rng.below(len + 1);
                let take = rng.below(other.len() + 1);
                data.truncate(at);
                data.extend_from_slice(&other[other.len() - take..]);
            }
            6 => {
                let at = rng.below(len + 1);
                let n = rng.below(8);
                let random: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(at..at, random);
            }
            _ => {
                // Deep nesting, which parsers must refuse without recursing through it.
                let depth = rng.below(200);
                let at = rng.below(len + 1);
                let open = if rng.below(2) == 0 { b'[' } else { b'{' };
                data.splice(at..at, std::iter::repeat_n(open, depth));
            }
        }
    }
    data
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus").join(target)
}

fn load(target: &str) -> Vec<Vec<u8>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("corpus of {target}: {e}"))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|p| std::fs::read(p).unwrap()).collect()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs `check` on the corpus as it is, then on `FUZZ_CASES` mutations of it. On a failure,
/// writes the input under `target/fuzz-failures/<target>/` and fails with it.
fn fuzz(target: &str, check: impl Fn(&[u8], &mut Rng) + std::panic::RefUnwindSafe) {
    let corpus = load(target);
    assert!(!corpus.is_empty(), "the corpus of {target} is empty");
    let cases = env_u64("FUZZ_CASES", 3_000);
    let seed = env_u64("FUZZ_SEED", 0x5eed_b10e5_u64) ^ target.bytes().map(u64::from).sum::<u64>();
    let mut rng = Rng(seed.max(1));
    let inputs = corpus.iter().cloned().map(Some).chain((0..cases).map(|_| None));
    for (n, input) in inputs.enumerate() {
        let data = input.unwrap_or_else(|| {
            let base = &corpus[rng.below(corpus.len())];
            mutate(&mut rng, base, &corpus)
        });
        let mut inner = Rng(rng.next().max(1));
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data, &mut inner)));
        if let Err(panic) = outcome {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/fuzz-failures")
                .join(target);
            std::fs::create_dir_all(&dir).unwrap();
            let file = dir.join(format!("case-{n}-seed-{seed:x}"));
            std::fs::write(&file, &data).unwrap();
            panic!(
                "{target}: input {n} failed ({:?}); saved to {}; bytes: {:?}",
                panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or(panic.downcast_ref::<&str>().copied()),
                file.display(),
                String::from_utf8_lossy(&data)
            );
        }
    }
}

/// Feeds `data` to a tap in random chunks; returns what it relayed.
fn relay(data: &[u8], dialect: Dialect, strip: bool, rng: &mut Rng) -> (Vec<u8>, SseTap) {
    let mut tap = SseTap::new(dialect, strip);
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let n = (1 + rng.below(rest.len().min(64))).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        if let Some(b) = tap.feed(Bytes::copy_from_slice(chunk)) {
            out.extend_from_slice(&b);
        }
        rest = tail;
    }
    if let Some(b) = tap.finish() {
        out.extend_from_slice(&b);
    }
    (out, tap)
}

#[test]
fn the_sse_tap_relays_what_it_does_not_strip_byte_for_byte() {
    fuzz("sse", |data, rng| {
        let (kept, _) = relay(data, Dialect::OpenAi, false, rng);
        assert_eq!(kept, data, "a stream relayed without stripping is unchanged");
        let (stripped, tap) = relay(data, Dialect::OpenAi, true, rng);
        if tap.usage().is_none() {
            assert_eq!(stripped, data, "nothing to strip: unchanged");
        }
        assert!(
            stripped.len() <= data.len() + 64 * tap.events(),
            "stripping never grows a stream much"
        );
        // Responses and Anthropic streams are never rewritten, whatever they hold.
        for dialect in [Dialect::Responses, Dialect::Anthropic] {
            let (kept, _) = relay(data, dialect, true, rng);
            assert_eq!(kept, data, "{dialect:?} streams are relayed unchanged");
        }
    });
}

#[test]
fn request_inspection_refuses_or_forwards_valid_json() {
    let rules = RequestRules::default();
    fuzz("request", |data, _| {
        for endpoint in [
            Endpoint::ChatCompletions,
            Endpoint::Completions,
            Endpoint::Embeddings,
            Endpoint::Responses,
            Endpoint::Messages,
        ] {
            let Ok(view) = inspect(data, endpoint, &rules) else { continue };
            if let Ok(body) = forward_body(Bytes::copy_from_slice(data), &view) {
                // What an upstream's parser (Python's `json`) takes: UTF-8 text, JSON's grammar
                // (numbers of any size: `1e309` is valid JSON, and Python reads it), no string
                // that is no text (an unpaired surrogate), an object.
                let text = std::str::from_utf8(&body).expect("forwarded body is UTF-8");
                serde_json::from_str::<serde::de::IgnoredAny>(text)
                    .unwrap_or_else(|e| panic!("forwarded body is not JSON ({e})"));
                assert!(!gateway_proxy::request::has_lone_surrogate(&body));
                assert!(text.trim_start().starts_with('{'), "forwarded body is an object");
            }
        }
    });
}

#[test]
fn usage_extraction_reads_any_answer_without_failing() {
    fuzz("answer", |data, _| {
        let mut tally = gateway_proxy::estimate::TextTally::default();
        if let Ok(Some(usage)) = gateway_proxy::estimate::read_answer(data, &mut tally) {
            let _ = format!("{usage:?}");
        }
        for dialect in [Dialect::OpenAi, Dialect::Responses, Dialect::Anthropic] {
            let _ = gateway_proxy::estimate::read_whole(dialect, data, &mut tally);
            let _ = gateway_proxy::estimate::usage_of_answer(dialect, data);
            let _ = gateway_proxy::estimate::completion_of_answer(dialect, data);
        }
    });
}

#[test]
fn key_parsing_accepts_only_its_shape() {
    fuzz("key", |data, _| {
        let text = String::from_utf8_lossy(data);
        if let Some(parsed) = gateway_auth::apikey::parse(&text) {
            assert_eq!(text.len(), gateway_auth::apikey::KEY_LEN);
            assert_eq!(format!("bm_{}_{}", parsed.prefix, parsed.secret), text);
            assert!(
                parsed
                    .prefix
                    .bytes()
                    .chain(parsed.secret.bytes())
                    .all(|b| b.is_ascii_alphanumeric())
            );
        }
        let _ = gateway_auth::token::is_session_token(&text);
    });
}

#[test]
fn form_and_query_decoding_never_fails_and_round_trips() {
    fuzz("form", |data, _| {
        for (name, value) in gateway_web::form::parse(data) {
            assert!(!name.contains('&') || data.contains(&b'%'), "{name:?}");
            let _ = value;
        }
        if let Some(text) = gateway_web::form::decode(data) {
            // What decodes is UTF-8 and holds no encoded escape left undone by accident.
            assert!(std::str::from_utf8(text.as_bytes()).is_ok());
        }
    });
}

#[test]
fn webhook_signatures_and_events_are_read_safely() {
    use gateway_billing::payments::{Purpose, parse_event, signature_valid};
    fuzz("webhook", |data, rng| {
        let secret = (0..rng.below(40)).map(|_| rng.next() as u8).collect::<Vec<u8>>();
        let text = String::from_utf8_lossy(data);
        assert!(!signature_valid(&secret, data, Some(&text)), "random bytes are no signature");
        let head: String = text.chars().take(70).collect();
        assert!(!signature_valid(&secret, data, Some(&head)));
        let _ = parse_event(data);
        let _ = Purpose::parse(&text);
    });
}
