//! Criterion micro-benchmarks of the proxy's per-request work: reading the few fields the
//! gateway needs from a chat body (one pass, forbidden fields checked), the streaming-usage
//! splice of the forwarded body, and relaying an SSE stream through the usage tap.
//!
//! `cargo bench -p gateway-proxy --bench hot_path`

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gateway_proxy::request::{Endpoint, RequestRules, forward_body, inspect, nested_deeper_than};
use gateway_proxy::sse::SseTap;

/// A chat body with `turns` user/assistant exchanges of about 200 bytes each.
fn chat_body(turns: usize, stream: bool) -> Bytes {
    let text = "The quick brown fox jumps over the lazy dog. ".repeat(4);
    let mut messages = vec![serde_json::json!({"role": "system", "content": "You are helpful."})];
    for _ in 0..turns {
        messages.push(serde_json::json!({"role": "user", "content": text}));
        messages.push(serde_json::json!({"role": "assistant", "content": text}));
    }
    let body = serde_json::json!({
        "model": "gpt-4", "stream": stream, "max_tokens": 256, "temperature": 0.7,
        "messages": messages, "metadata": {"trace": "abc"},
    });
    Bytes::from(body.to_string())
}

/// An upstream SSE stream of `chunks` content events, a usage event and `[DONE]`, cut into
/// network-sized pieces that split events.
fn sse_stream(chunks: usize) -> Vec<Bytes> {
    let mut all = String::new();
    for i in 0..chunks {
        let _ = write!(
            all,
            "data: {{\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"word{i} \"}}}}]}}\n\n"
        );
    }
    all.push_str("data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":64,\"total_tokens\":76}}\n\n");
    all.push_str("data: [DONE]\n\n");
    all.as_bytes().chunks(700).map(Bytes::copy_from_slice).collect()
}

fn request_fields(c: &mut Criterion) {
    let rules = RequestRules::default();
    let mut group = c.benchmark_group("inspect");
    for turns in [1, 10, 100] {
        let body = chat_body(turns, false);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("chat body {} bytes", body.len()), |b| {
            b.iter(|| {
                let view = inspect(black_box(&body), Endpoint::ChatCompletions, &rules).unwrap();
                black_box((view.max_tokens, view.estimated_prompt_tokens()));
            });
        });
    }
    group.finish();

    // The nesting check alone (part of `inspect` above): bodies with fewer opening brackets
    // than the limit are settled by counting them, others are scanned.
    for turns in [10, 100] {
        let body = chat_body(turns, false);
        c.bench_function(&format!("depth check {} bytes", body.len()), |b| {
            b.iter(|| black_box(nested_deeper_than(black_box(&body), 64)));
        });
    }

    let body = chat_body(10, true);
    let name =
        format!("inspect + forward_body with the include_usage splice ({} bytes)", body.len());
    c.bench_function(&name, |b| {
        b.iter(|| {
            let view = inspect(&body, Endpoint::ChatCompletions, &rules).unwrap();
            black_box(forward_body(body.clone(), &view).unwrap());
        });
    });
}

fn sse_relay(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse relay");
    for strip in [false, true] {
        let pieces = sse_stream(64);
        let bytes: usize = pieces.iter().map(Bytes::len).sum();
        group.throughput(Throughput::Bytes(bytes as u64));
        let name = if strip { "64 chunks, usage chunk removed" } else { "64 chunks, usage kept" };
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut tap = SseTap::new(gateway_proxy::request::Dialect::OpenAi, strip);
                for piece in &pieces {
                    black_box(tap.feed(piece.clone()));
                }
                black_box((tap.finish(), tap.usage()));
            });
        });
    }
    group.finish();
}

criterion_group!(benches, request_fields, sse_relay);
criterion_main!(benches);
