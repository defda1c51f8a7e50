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

/// An embeddings body of exactly 100 tokens by the gateway's estimate and the mock's count.
fn embedding_100() -> Value {
    json!({"model": "text-embedding-3-small", "input": "x".repeat(398)})
}

/// Runs the CLI next to the gateway; returns whether it succeeded and what it printed.
async fn cli(gw: &Gateway, args: &[&str]) -> (bool, String) {
    let out =
        support::command(gw.dir.path(), args, &support::env_refs(&gw.env)).output().await.unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test]
async fn plans_ceilings_credits_and_invoices_through_the_binary() {
    use futures_util::StreamExt;
    let mock = Mock::start().await;
    let url = mock.url();
    let extra = [
        ("LITELLM_SERVER_1_URL", url.as_str()),
        ("LITELLM_SERVER_1_MODELS", MODELS),
        // An invoice left open makes its user past due at once.
        ("BLUESMINDS_BILLING__GRACE_DAYS", "0"),
    ];
    let (_db, env) = support::shared_backends(&extra).await;
    let env = support::env_refs(&env);
    let gw = Gateway::start(&[], &env).await;
    let none = Value::Null;

    // The plans, public: the original product's table.
    let plans = support::request(gw.addr, "GET", "/api/billing/plans", b"").await.json();
    let row = |tier: &str| {
        plans["data"].as_array().unwrap().iter().find(|p| p["tier"] == tier).unwrap().clone()
    };
    assert_eq!(row("starter")["price_monthly_micros"], 29_000_000);
    assert_eq!(row("starter")["overage_micros_per_1k"], 2_000);
    assert_eq!(
        (row("free")["max_api_keys"].as_u64(), row("free")["included_tokens"].as_u64()),
        (Some(1), Some(10_000))
    );
    assert_eq!(row("free")["overage_micros_per_1k"], Value::Null);
    assert_eq!(row("enterprise")["retention_days"], 365);

    // Free: a hard stop at the included tokens (an admin lowers them to 250 for every free
    // user at once).
    let admin = support::admin_session(&gw).await;
    let r = support::call(
        gw.addr,
        "PATCH",
        "/api/admin/plans/free",
        &admin,
        &json!({"included_tokens": 250}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r = support::call(
        gw.addr,
        "PATCH",
        "/api/admin/plans/free",
        &admin,
        &json!({"max_api_keys": 0}),
    )
    .await;
    assert_eq!((r.status, r.openai_error()["param"].as_str()), (400, Some("max_api_keys")));
    let free = support::signup(gw.addr, "free@example.com").await;
    let free_key = support::create_key(gw.addr, &free, &json!({"name": "f"})).await;
    for _ in 0..2 {
        assert_eq!(
            post_with_key(gw.addr, "/v1/embeddings", &free_key, &embedding_100()).await.status,
            200
        );
    }
    let r = post_with_key(gw.addr, "/v1/embeddings", &free_key, &embedding_100()).await;
    assert_eq!(r.status, 429);
    let e = r.openai_error();
    assert_eq!(e["code"], "insufficient_quota");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("used the 250 tokens your Free plan includes this month"),
        "{message}"
    );
    assert!(r.header("retry-after").is_some());
    // A free user has no overage to cap.
    let r = support::call(
        gw.addr,
        "PATCH",
        "/api/billing/settings",
        &free,
        &json!({"overage_cap_micros": 1}),
    )
    .await;
    assert_eq!((r.status, r.openai_error()["param"].as_str()), (400, Some("overage_cap_micros")));

    // Paid: a cap between 0 and ten times the price.
    let paid = support::signup(gw.addr, "paid@example.com").await;
    support::set_tier(&gw, &paid, "starter").await;
    let too_high = json!({"overage_cap_micros": 290_000_001});
    let r = support::call(gw.addr, "PATCH", "/api/billing/settings", &paid, &too_high).await;
    assert_eq!(r.status, 400);
    assert!(r.openai_error()["message"].as_str().unwrap().contains("290000000"));
    let r = support::call(
        gw.addr,
        "PATCH",
        "/api/billing/settings",
        &paid,
        &json!({"overage_cap_micros": null}),
    )
    .await;
    assert_eq!(r.status, 200);
    let s = r.json();
    assert_eq!(
        (s["overage_cap_micros"].as_i64(), s["overage_cap_is_default"].as_bool()),
        (Some(29_000_000), Some(true))
    );
    assert_eq!(s["ceiling_tokens"], 15_000_000, "500K included and 14.5M the $29 cap pays for");
    let paid_key = support::create_key(gw.addr, &paid, &json!({"name": "p"})).await;
    for _ in 0..3 {
        assert_eq!(
            post_with_key(gw.addr, "/v1/embeddings", &paid_key, &embedding_100()).await.status,
            200
        );
    }

    // Credits: 1,000 operations at once: 600 grants (300 references, each sent twice: applied
    // once) and 400 debits, some of which may find the balance short.
    let me = support::call(gw.addr, "GET", "/api/auth/me", &paid, &none).await.json();
    let paid_id = me["id"].as_str().unwrap().to_owned();
    let path = format!("/api/admin/users/{paid_id}/credits");
    // (100 connections at a time: every operation on one user's balance waits for that row,
    // so a thousand at once would only test the client's patience.)
    let ops: Vec<(bool, u16)> = futures_util::stream::iter(0..1000)
        .map(|i| {
            let (addr, admin, path) = (gw.addr, admin.clone(), path.clone());
            async move {
                let body = if i % 5 < 3 {
                    // The i-th grant of 600 (i / 5 * 3 + i % 5) uses reference (that % 300).
                    let reference = format!("g{}", (i / 5 * 3 + i % 5) % 300);
                    json!({"amount_micros": 100_000, "reason": "goodwill", "reference": reference})
                } else {
                    json!({"amount_micros": -10_000, "reason": "correction", "reference": format!("d{i}")})
                };
                (i % 5 < 3, support::call(addr, "POST", &path, &admin, &body).await.status)
            }
        })
        .buffer_unordered(100)
        .collect()
        .await;
    let (mut granted, mut repeated, mut debited, mut short) = (0i64, 0i64, 0i64, 0i64);
    for op in ops {
        match op {
            (true, 201) => granted += 1,
            (true, 200) => repeated += 1,
            (false, 201) => debited += 1,
            (false, 409) => short += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((granted, repeated, debited + short), (300, 300, 400));
    let balance = 300 * 100_000 - debited * 10_000;
    let me = support::call(gw.addr, "GET", "/api/auth/me", &paid, &none).await.json();
    assert_eq!(me["credits_micros"], balance);
    // Every entry, page by page: they sum to the balance.
    let (mut sum, mut entries, mut before) = (0i64, 0i64, None::<String>);
    loop {
        let page = match &before {
            Some(b) => format!("/api/billing/ledger?limit=200&before={b}"),
            None => "/api/billing/ledger?limit=200".to_owned(),
        };
        let ledger = support::call(gw.addr, "GET", &page, &paid, &none).await.json();
        for e in ledger["data"].as_array().unwrap() {
            sum += e["amount_micros"].as_i64().unwrap();
            entries += 1;
        }
        match ledger["next_before"].as_str() {
            Some(b) => before = Some(b.to_owned()),
            None => break,
        }
    }
    assert_eq!((sum, entries), (balance, 300 + debited));
    let (ok, out) = cli(&gw, &["billing", "verify"]).await;
    assert!(ok && out.contains("every credit balance equals"), "{out}");
    // Down to $10 for what follows; then more than that cannot be taken.
    let to_ten = json!({"amount_micros": 10_000_000 - balance, "reason": "set to ten dollars", "reference": "ten"});
    assert_eq!(support::call(gw.addr, "POST", &path, &admin, &to_ten).await.status, 201);
    let over = json!({"amount_micros": -20_000_000, "reason": "too much", "reference": "take"});
    let r = support::call(gw.addr, "POST", &path, &admin, &over).await;
    assert_eq!(r.status, 409, "a balance never goes below zero: {:?}", r.body);
    let (ok, out) = cli(&gw, &["billing", "verify"]).await;
    assert!(ok && out.contains("every credit balance equals"), "{out}");

    // Closing the month: the Starter fee and no overage; credits pay $10 of it.
    let summary = support::summary_when(gw.addr, &paid, |s| s["requests"] == 3).await;
    assert_eq!(
        (summary["tokens_used"].as_u64(), summary["overage_micros"].as_i64()),
        (Some(300), Some(0))
    );
    assert_eq!(summary["estimated_total_micros"], 19_000_000);
    let period = summary["period"].as_str().unwrap().to_owned();
    let close = json!({"period": period});
    let r = support::call(gw.addr, "POST", "/api/admin/billing/close-period", &admin, &close).await;
    assert_eq!(r.status, 400, "a month that has not ended needs force");
    let close = json!({"period": period, "force": true});
    let r = support::call(gw.addr, "POST", "/api/admin/billing/close-period", &admin, &close).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["created"], 1, "free users owe nothing");
    let again = support::call(gw.addr, "POST", "/api/admin/billing/close-period", &admin, &close)
        .await
        .json();
    assert_eq!((again["created"].as_u64(), again["already_invoiced"].as_u64()), (Some(0), Some(1)));
    let (ok, out) = cli(&gw, &["billing", "close-period", "--period", &period, "--force"]).await;
    assert!(ok && out.contains("0 invoice(s) created"), "{out}");

    let invoices =
        support::call(gw.addr, "GET", "/api/billing/invoices", &paid, &none).await.json();
    let invoice = invoices["data"][0].clone();
    let number = invoice["number"].as_str().unwrap().to_owned();
    assert_eq!(number, format!("INV-{}-0001", period.replace('-', "")));
    assert_eq!(invoice["status"], "open");
    assert_eq!(
        (
            invoice["subtotal_micros"].as_i64(),
            invoice["credits_applied_micros"].as_i64(),
            invoice["total_micros"].as_i64()
        ),
        (Some(29_000_000), Some(10_000_000), Some(19_000_000))
    );
    let kinds: Vec<&str> =
        invoice["lines"].as_array().unwrap().iter().map(|l| l["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["plan_fee", "credits"]);
    let (ok, out) =
        cli(&gw, &["billing", "invoice", "--user", "paid@example.com", "--period", &period]).await;
    assert!(ok && out.contains(&format!("invoice {number} equals its recomputation")), "{out}");

    // Its printable page; another user's invoice does not exist for them.
    let id = invoice["id"].as_str().unwrap();
    let page = support::call(
        gw.addr,
        "GET",
        &format!("/api/billing/invoices/{id}?format=html"),
        &paid,
        &none,
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    assert!(page.header("content-security-policy").unwrap().contains("default-src 'none'"));
    let html = String::from_utf8_lossy(&page.body);
    assert!(
        html.contains(&number) && html.contains("$19.00") && html.contains("paid@example.com"),
        "{html}"
    );
    let theirs =
        support::call(gw.addr, "GET", &format!("/api/billing/invoices/{id}"), &free, &none).await;
    assert_eq!(theirs.status, 404);

    // Past due (no grace here): free-tier limits until it is paid, and the refusal says why.
    let r = post_with_key(gw.addr, "/v1/embeddings", &paid_key, &embedding_100()).await;
    assert_eq!(r.status, 429, "{:?}", r.body);
    let message = r.openai_error()["message"].as_str().unwrap().to_owned();
    assert!(message.starts_with("Your account is past due"), "{message}");
    let pay =
        json!({"amount_micros": 19_000_000, "reason": "bank transfer", "reference": "wire-1"});
    let r = support::call(gw.addr, "POST", &path, &admin, &pay).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    assert_eq!(r.json()["paid_invoices"][0]["status"], "paid");
    assert_eq!(
        post_with_key(gw.addr, "/v1/embeddings", &paid_key, &embedding_100()).await.status,
        200,
        "paid: the plan's limits again"
    );
    let (ok, out) = cli(&gw, &["billing", "verify"]).await;
    assert!(ok, "{out}");

    // Model prices: the past is fixed, the future may change.
    let from = (time::OffsetDateTime::now_utc() + time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let price = json!({"model": "gpt-4", "input_micros_per_million": 20_000_000, "output_micros_per_million": 40_000_000, "effective_from": from});
    let r = support::call(gw.addr, "POST", "/api/admin/model-prices", &admin, &price).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let future = r.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(
        support::call(gw.addr, "POST", "/api/admin/model-prices", &admin, &price).await.status,
        409
    );
    let list = support::call(gw.addr, "GET", "/api/admin/model-prices?model=gpt-4", &admin, &none)
        .await
        .json();
    let entries = list["data"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "the seeded price and the future one: {list}");
    let seeded = entries[0]["id"].as_str().unwrap().to_owned();
    let cheaper = json!({"model": "gpt-4", "input_micros_per_million": 1, "output_micros_per_million": 1, "effective_from": from});
    let r = support::call(
        gw.addr,
        "PATCH",
        &format!("/api/admin/model-prices/{seeded}"),
        &admin,
        &cheaper,
    )
    .await;
    assert_eq!(r.status, 409, "a price in effect never changes");
    let r = support::call(
        gw.addr,
        "PATCH",
        &format!("/api/admin/model-prices/{future}"),
        &admin,
        &cheaper,
    )
    .await;
    assert_eq!((r.status, r.json()["input_micros_per_million"].as_i64()), (200, Some(1)));
    let past = json!({"model": "gpt-4", "input_micros_per_million": 1, "output_micros_per_million": 1, "effective_from": "2020-01-01T00:00:00Z"});
    let r = support::call(gw.addr, "POST", "/api/admin/model-prices", &admin, &past).await;
    assert_eq!((r.status, r.openai_error()["param"].as_str()), (400, Some("effective_from")));
    let r = support::call(
        gw.addr,
        "DELETE",
        &format!("/api/admin/model-prices/{future}"),
        &admin,
        &none,
    )
    .await;
    assert_eq!(r.status, 200);
    let r = support::call(gw.addr, "GET", "/api/admin/model-prices", &paid, &none).await;
    assert_eq!(r.status, 403, "admins only");
}

/// With an OpenAI client: an answer, a stream without and with `include_usage`, and a stream
/// the client cuts short are each priced from their tokens at gpt-4's price.
#[tokio::test]
async fn an_openai_client_pays_for_answers_whole_streams_and_cut_streams() {
    use async_openai::types::chat::ChatCompletionStreamOptions;
    use futures_util::StreamExt;
    let mock = Mock::start().await;
    let url = mock.url();
    let extra = [("LITELLM_SERVER_1_URL", url.as_str()), ("LITELLM_SERVER_1_MODELS", MODELS)];
    let (_db, env) = support::shared_backends(&extra).await;
    let env = support::env_refs(&env);
    let gw = Gateway::start(&[], &env).await;
    let cookie = support::signup(gw.addr, "sdk@example.com").await;
    support::set_tier(&gw, &cookie, "pro").await;
    let key = support::create_key(gw.addr, &cookie, &json!({"name": "sdk"})).await;
    let config = async_openai::config::OpenAIConfig::new()
        .with_api_base(gw.url("/api/v1"))
        .with_api_key(&key);
    let client = async_openai::Client::with_config(config);

    let answer = client.chat().create(support::chat_request("gpt-4", 6)).await.unwrap();
    let usage = answer.usage.unwrap();
    let answer_cost = cost(
        GPT4,
        &json!({"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens}),
    );

    let mut plain = client.chat().create_stream(support::chat_request("gpt-4", 5)).await.unwrap();
    while let Some(chunk) = plain.next().await {
        assert!(chunk.unwrap().usage.is_none(), "not asked for, not shown");
    }
    let mut req = support::chat_request("gpt-4", 4);
    req.stream_options =
        Some(ChatCompletionStreamOptions { include_usage: Some(true), include_obfuscation: None });
    let mut with_usage = client.chat().create_stream(req).await.unwrap();
    let mut shown = None;
    while let Some(chunk) = with_usage.next().await {
        shown = chunk.unwrap().usage.or(shown);
    }
    let shown = shown.expect("asked for, shown");

    // Cut: the client reads the first chunk of a slow 200-word stream and leaves.
    let body = json!({
        "model": "gpt-4", "stream": true, "max_tokens": 200,
        "messages": [{"role": "user", "content": "Hello there!"}],
        "mock": {"chunk_delay_ms": 20}
    });
    let http = reqwest::Client::new();
    let mut cut = http
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(cut.status(), 200);
    // A few words in (the first event is the role alone), then gone.
    let mut seen = Vec::new();
    while seen.windows(5).filter(|w| *w == b"data:").count() < 5 {
        seen.extend_from_slice(&cut.chunk().await.unwrap().expect("the stream goes on"));
    }
    drop(cut);

    let rows = logs(&gw, &cookie, 4).await;
    let row_cost = |r: &Value| {
        cost(
            GPT4,
            &json!({"prompt_tokens": r["prompt_tokens"], "completion_tokens": r["completion_tokens"]}),
        )
    };
    let (cut_row, with_row, plain_row, answer_row) = (&rows[0], &rows[1], &rows[2], &rows[3]);
    assert_eq!(answer_row["cost_micros"], answer_cost);
    assert_eq!(
        (plain_row["completion_tokens"].as_u64(), plain_row["cost_micros"].as_i64()),
        (Some(5), Some(row_cost(plain_row)))
    );
    assert_eq!(with_row["completion_tokens"], shown.completion_tokens);
    assert_eq!(
        with_row["cost_micros"],
        cost(
            GPT4,
            &json!({"prompt_tokens": shown.prompt_tokens, "completion_tokens": shown.completion_tokens})
        )
    );
    assert_eq!(cut_row["client_disconnected"], true, "{cut_row}");
    let cut_tokens = cut_row["completion_tokens"].as_u64().unwrap();
    assert!((1..200).contains(&cut_tokens), "what was generated before the cut: {cut_row}");
    assert_eq!(cut_row["cost_micros"], row_cost(cut_row), "what was generated is charged");
    assert!(row_cost(cut_row) > 0);
}
