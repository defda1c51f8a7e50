//! The cost of requests, through the binary on Postgres and Redis: answers carry it in a
//! header, every usage row holds it at the price that applied, streams are priced when they
//! end, and `bluesminds prices import` changes prices from now on, never in the past.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Gateway, Mock, PATIENCE, post_with_key};

const MODELS: &str = "gpt-4,claude-3-haiku,llama-9,text-embedding-3-small";

/// Micro-dollars per million tokens of the seeded table (docs/BILLING.md).
const GPT4: (i64, i64) = (30_000_000, 60_000_000);
const HAIKU: (i64, i64) = (250_000, 1_250_000);
const DEFAULT: (i64, i64) = (1_000_000, 2_000_000);

/// The stated rule: the exact sum, rounded once to the nearest micro-dollar, halves up.
fn cost(price: (i64, i64), usage: &Value) -> i64 {
    let prompt = usage["prompt_tokens"].as_i64().unwrap();
    let completion = usage["completion_tokens"].as_i64().unwrap_or(0);
    (prompt * price.0 + completion * price.1 + 500_000) / 1_000_000
}

/// The caller's usage log, newest first, once it holds `n` rows.
async fn logs(gw: &Gateway, cookie: &str, n: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let r = support::request_with(
            gw.addr,
            "GET",
            "/api/usage/logs?limit=100",
            &[("cookie", cookie)],
            b"",
        )
        .await;
        let data = r.json()["data"].as_array().cloned().unwrap_or_default();
        if data.len() >= n {
            return data;
        }
        assert!(started.elapsed() < PATIENCE, "{} of {n} usage rows written", data.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_request_is_priced_at_the_price_of_its_moment() {
    let mock = Mock::start().await;
    let url = mock.url();
    let extra = [
        ("LITELLM_SERVER_1_URL", url.as_str()),
        ("LITELLM_SERVER_1_MODELS", MODELS),
        // Prices imported by the CLI reach the running gateway at the next reload.
        ("BLUESMINDS_HEALTH__INTERVAL_SECS", "1"),
    ];
    let (_db, env) = support::shared_backends(&extra).await;
    let env = support::env_refs(&env);
    let gw = Gateway::start(&[], &env).await;
    let cookie = support::signup(gw.addr, "billing@example.com").await;
    support::set_tier(&gw, &cookie, "enterprise").await;
    let key = support::create_key(gw.addr, &cookie, &json!({"name": "b"})).await;
    let msg = json!([{"role": "user", "content": "Price this, please."}]);

    // Whole answers: the header is the cost of the tokens the body reports.
    let mut expected = Vec::new();
    for (model, price) in [("gpt-4", GPT4), ("claude-3-haiku", HAIKU), ("llama-9", DEFAULT)] {
        let r = post_with_key(
            gw.addr,
            "/v1/chat/completions",
            &key,
            &json!({"model": model, "messages": msg, "max_tokens": 7}),
        )
        .await;
        assert_eq!(r.status, 200, "{model}");
        let want = cost(price, &r.json()["usage"]);
        assert!(want > 0);
        assert_eq!(
            r.header("x-bluesminds-cost-micros"),
            Some(want.to_string().as_str()),
            "{model}"
        );
        expected.push(want);
    }
    // Embeddings: the prompt at the input price (unknown model: the default).
    let r = post_with_key(
        gw.addr,
        "/v1/embeddings",
        &key,
        &json!({"model": "text-embedding-3-small", "input": "a sentence to embed"}),
    )
    .await;
    assert_eq!(r.status, 200);
    let embed = cost(DEFAULT, &r.json()["usage"]);
    assert_eq!(r.header("x-bluesminds-cost-micros"), Some(embed.to_string().as_str()));
    // A stream: no header (it is priced when it ends), the row holds the cost.
    let r = post_with_key(
        gw.addr,
        "/v1/chat/completions",
        &key,
        &json!({"model": "gpt-4", "messages": msg, "max_tokens": 9, "stream": true}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-bluesminds-cost-micros"), None);

    let rows = logs(&gw, &cookie, 5).await;
    let stream_row = &rows[0];
    assert_eq!(stream_row["streamed"], true);
    let stream_usage = json!({
        "prompt_tokens": stream_row["prompt_tokens"],
        "completion_tokens": stream_row["completion_tokens"],
    });
    assert_eq!(stream_row["completion_tokens"], 9);
    assert_eq!(stream_row["cost_micros"], cost(GPT4, &stream_usage));
    assert_eq!(rows[1]["cost_micros"], embed);
    let answers: Vec<i64> =
        rows[2..5].iter().rev().map(|r| r["cost_micros"].as_i64().unwrap()).collect();
    assert_eq!(answers, expected);

    // A new gpt-4 price, from LiteLLM's format, through the CLI: it applies from now on.
    let file = gw.dir.path().join("prices.json");
    std::fs::write(
        &file,
        json!({
            "gpt-4": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06, "mode": "chat"},
            "dall-e-3": {"input_cost_per_pixel": 1e-08, "mode": "image_generation"}
        })
        .to_string(),
    )
    .unwrap();
    let file_arg = file.to_str().unwrap();
    let out = support::command(gw.dir.path(), &["prices", "import", file_arg], &env)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("1 new or changed")
            && stdout.contains("entries without chat prices skipped: 1"),
        "{stdout}"
    );
    let again = support::command(gw.dir.path(), &["prices", "import", file_arg], &env)
        .output()
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&again.stdout)
            .contains("0 new or changed (applying from now), 1 unchanged")
    );

    let started = Instant::now();
    let cheaper = (1_000_000, 2_000_000);
    loop {
        let r = post_with_key(
            gw.addr,
            "/v1/chat/completions",
            &key,
            &json!({"model": "gpt-4", "messages": msg, "max_tokens": 7}),
        )
        .await;
        let usage = r.json()["usage"].clone();
        let header: i64 = r.header("x-bluesminds-cost-micros").unwrap().parse().unwrap();
        if header == cost(cheaper, &usage) {
            break;
        }
        assert_eq!(header, cost(GPT4, &usage), "the old price until the reload");
        assert!(started.elapsed() < PATIENCE, "the imported price never applied");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The past keeps its price.
    let rows = logs(&gw, &cookie, 6).await;
    let first: Vec<i64> =
        rows.iter().rev().take(3).map(|r| r["cost_micros"].as_i64().unwrap()).collect();
    assert_eq!(first, expected);
}
