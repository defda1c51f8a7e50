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

    // Credits: 200 grants at once, each of 100 references sent twice, applied once each.
    let me = support::call(gw.addr, "GET", "/api/auth/me", &paid, &none).await.json();
    let paid_id = me["id"].as_str().unwrap().to_owned();
    let path = format!("/api/admin/users/{paid_id}/credits");
    let grants: Vec<_> = (0..200)
        .map(|i| {
            let (addr, admin, path) = (gw.addr, admin.clone(), path.clone());
            tokio::spawn(async move {
                let body = json!({"amount_micros": 100_000, "reason": "goodwill", "reference": format!("g{}", i % 100)});
                support::call(addr, "POST", &path, &admin, &body).await.status
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for g in grants {
        statuses.push(g.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 100, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 100, "repeats are acknowledged");
    let over = json!({"amount_micros": -20_000_000, "reason": "too much", "reference": "take"});
    let r = support::call(gw.addr, "POST", &path, &admin, &over).await;
    assert_eq!(r.status, 409, "a balance never goes below zero: {:?}", r.body);
    let ledger =
        support::call(gw.addr, "GET", "/api/billing/ledger?limit=200", &paid, &none).await.json();
    assert_eq!(ledger["balance_micros"], 10_000_000);
    assert_eq!(ledger["data"].as_array().unwrap().len(), 100);
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
