//! End-to-end tests of usage records: every request leaves exactly one row, with the tokens
//! the upstream reported, whichever way it ended.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::float_cmp)] // metric values are small integer counts, exact in f64

mod support;

use std::time::Duration;

use gateway_store::entity::usage_logs;
use sea_orm::EntityTrait;
use serde_json::json;
use support::{Gateway, Mock, PATIENCE, request_with, user_with_key};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MODELS: &str = "gpt-4,text-embedding-3-small";

async fn rows(gw: &Gateway) -> Vec<usage_logs::Model> {
    let url = format!("sqlite://{}?mode=ro", gw.db_path().display());
    let store =
        gateway_store::Store::connect(&url, &gateway_store::StoreConfig::default()).await.unwrap();
    let mut rows = usage_logs::Entity::find().all(store.connection()).await.unwrap();
    rows.sort_by_key(|r| r.request_id);
    rows
}

#[tokio::test]
async fn every_request_leaves_exactly_one_record_with_the_upstreams_tokens() {
    let mock = Mock::start().await;
    let url = mock.url();
    let mut gw = Gateway::start(
        &[],
        &[("LITELLM_SERVER_1_URL", url.as_str()), ("LITELLM_SERVER_1_MODELS", MODELS)],
    )
    .await;
    let key = user_with_key(&gw, "usage@example.com", json!({"name": "u"})).await;
    let auth = format!("Bearer {key}");
    let post = |path: &'static str, body: serde_json::Value| {
        let (key, addr) = (key.clone(), gw.addr);
        async move { support::post_with_key(addr, path, &key, &body).await }
    };
    let msg = json!([{"role": "user", "content": "Hello there!"}]);
    // The mock: prompt tokens = ceil(bytes of the content JSON / 4) = ceil(14 / 4) = 4.
    let prompt = 4;
    let mut expected_tokens: Vec<(u64, u64, bool)> = Vec::new(); // (prompt, completion, is_error)

    for n in [3, 5] {
        let r = post(
            "/v1/chat/completions",
            json!({"model": "gpt-4", "messages": msg, "max_tokens": n}),
        )
        .await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["usage"]["prompt_tokens"], prompt);
        expected_tokens.push((prompt, n, false));
    }
    // Streamed, with and without the usage chunk asked for: the upstream's counts either way.
    for include in [false, true] {
        let r = post("/v1/chat/completions", json!({"model": "gpt-4", "messages": msg, "max_tokens": 4, "stream": true, "stream_options": {"include_usage": include}})).await;
        assert_eq!(r.status, 200);
        assert_eq!(String::from_utf8_lossy(&r.body).contains("\"usage\""), include);
        expected_tokens.push((prompt, 4, false));
    }
    // A stream whose upstream sends no usage: the prompt estimate plus what was relayed.
    let r = post("/v1/chat/completions", json!({"model": "gpt-4", "messages": msg, "max_tokens": 4, "stream": true, "mock": {"omit_usage": true}})).await;
    assert_eq!(r.status, 200);
    let r = post("/v1/embeddings", json!({"model": "text-embedding-3-small", "input": "abcdefgh"}))
        .await;
    assert_eq!(r.status, 200);
    let embedding_tokens = r.json()["usage"]["prompt_tokens"].as_u64().unwrap();
    expected_tokens.push((embedding_tokens, 0, false));
    // Failing upstream, refused model, bad body: one record each, marked as errors.
    let r = post(
        "/v1/chat/completions",
        json!({"model": "gpt-4", "messages": msg, "mock": {"fail": "status", "status": 500}}),
    )
    .await;
    // The only server failed it: no other server can tell whose fault it is, so the client
    // gets the upstream's answer (and the server is not blamed).
    assert_eq!(r.status, 500);
    let r = post("/v1/chat/completions", json!({"model": "no-such-model", "messages": msg})).await;
    assert_eq!(r.status, 404);
    let r =
        post("/v1/chat/completions", json!({"model": "gpt-4", "messages": "not an array"})).await;
    assert_eq!(r.status, 400);
    // Not authenticated: no user to charge, no record.
    let r = request_with(gw.addr, "POST", "/v1/chat/completions", &[], b"{}").await;
    assert_eq!(r.status, 401);
    // A client that leaves mid-stream.
    let body = json!({"model": "gpt-4", "messages": msg, "max_tokens": 100, "stream": true, "mock": {"chunk_delay_ms": 30}}).to_string();
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    conn.write_all(format!("POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: {auth}\r\ncontent-length: {}\r\n\r\n{body}", body.len()).as_bytes()).await.unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 2048];
    while !seen.contains("\"content\":\"Hello ") {
        let n = tokio::time::timeout(PATIENCE, conn.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.starts_with("HTTP/1.1 200"));
    drop(conn);
    let started = std::time::Instant::now();
    while mock.aborted_streams() == 0 {
        assert!(started.elapsed() < PATIENCE);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    gw.terminate().await;
    let (code, logs) = gw.wait().await;
    assert_eq!(code, Some(0), "{logs}");
    let rows = rows(&gw).await;
    assert_eq!(rows.len(), 10, "one row per authenticated request: {rows:#?}");
    let ids: std::collections::HashSet<_> = rows.iter().map(|r| r.request_id).collect();
    assert_eq!(ids.len(), 10);

    let ok: Vec<_> = rows.iter().filter(|r| !r.is_error && !r.client_disconnected).collect();
    let mut seen: Vec<(u64, u64, bool)> = ok
        .iter()
        .filter(|r| !(r.streamed && r.completion_tokens == 4 && r.prompt_tokens != prompt as i64))
        .map(|r| (r.prompt_tokens as u64, r.completion_tokens as u64, r.is_error))
        .collect();
    seen.sort_unstable();
    let mut want = expected_tokens.clone();
    want.sort_unstable();
    assert!(want.iter().all(|w| seen.contains(w)), "want {want:?} within {seen:?}");
    for r in &rows {
        assert_eq!(r.total_tokens, r.prompt_tokens + r.completion_tokens, "{r:?}");
    }
    let no_usage = rows.iter().find(|r| {
        r.streamed && !r.is_error && !r.client_disconnected && r.prompt_tokens != prompt as i64
    });
    let no_usage = no_usage.expect("the stream without a usage chunk");
    assert!(
        no_usage.prompt_tokens > 0 && no_usage.completion_tokens > 0,
        "counted, never zero: {no_usage:?}"
    );
    assert!(no_usage.usage_estimated, "and marked as estimated");
    assert!(rows.iter().filter(|r| r.usage_estimated).count() <= 2, "only where usage was missing");
    let errors: Vec<_> = rows
        .iter()
        .filter(|r| r.is_error && !r.client_disconnected)
        .map(|r| r.status_code)
        .collect();
    let mut errors = errors;
    errors.sort_unstable();
    assert_eq!(errors, vec![400, 404, 500]);
    let gone = rows.iter().find(|r| r.client_disconnected).expect("the abandoned stream");
    assert!(gone.streamed && gone.completion_tokens > 0, "billed for what was relayed: {gone:?}");
    assert!(!gone.is_error, "leaving is not an error");
    assert!(rows.iter().all(|r| r.api_key_id.is_some()));
    assert!(logs.contains("usage flushed"), "{logs}");
}

async fn login(addr: std::net::SocketAddr, email: &str) -> String {
    let creds = json!({"email": email, "password": "correct horse battery"}).to_string();
    let r = support::request(addr, "POST", "/api/auth/login", creds.as_bytes()).await;
    r.header("set-cookie").unwrap().split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn owners_read_their_logs_and_stats_and_nobody_else_does() {
    let mock = Mock::start().await;
    let url = mock.url();
    let gw = Gateway::start(
        &[],
        &[("LITELLM_SERVER_1_URL", url.as_str()), ("LITELLM_SERVER_1_MODELS", MODELS)],
    )
    .await;
    let key = user_with_key(&gw, "owner@example.com", json!({"name": "u"})).await;
    user_with_key(&gw, "other@example.com", json!({"name": "o"})).await;
    let (owner, other) =
        (login(gw.addr, "owner@example.com").await, login(gw.addr, "other@example.com").await);
    for n in 1..=7u64 {
        let body = json!({"model": "gpt-4", "max_tokens": n, "messages": [{"role": "user", "content": "Hello there!"}]});
        assert_eq!(
            support::post_with_key(gw.addr, "/v1/chat/completions", &key, &body).await.status,
            200
        );
    }
    let get = |path: String, cookie: String| async move {
        request_with(gw.addr, "GET", &path, &[("cookie", &cookie)], b"").await
    };

    // The writer flushes within 100 ms; wait for all seven rows.
    let started = std::time::Instant::now();
    loop {
        let r = get("/api/usage/logs?limit=100".into(), owner.clone()).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        if r.json()["data"].as_array().unwrap().len() == 7 {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "rows never appeared");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Pages of three, newest first, through the cursor.
    let (mut cursor, mut completions) = (None::<String>, Vec::new());
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/usage/logs?limit=3&cursor={c}"),
            None => "/api/usage/logs?limit=3".into(),
        };
        let page = get(path, owner.clone()).await.json();
        for r in page["data"].as_array().unwrap() {
            completions.push(r["completion_tokens"].as_u64().unwrap());
            assert_eq!(r["user_id"], page["data"][0]["user_id"]);
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(completions, vec![7, 6, 5, 4, 3, 2, 1], "newest first, each once");

    let stats = get("/api/usage/stats?group_by=model".into(), owner.clone()).await;
    assert_eq!(stats.status, 200, "{:?}", stats.body);
    let rows = stats.json()["data"].clone();
    assert_eq!(rows[0]["group"], "gpt-4");
    assert_eq!(rows[0]["requests"], 7);
    assert_eq!(rows[0]["completion_tokens"], 28);
    assert!(rows[0]["p95_latency_ms"].as_u64().is_some());
    let by_day = get("/api/usage/stats?group_by=day".into(), owner.clone()).await.json();
    assert_eq!(by_day["data"].as_array().unwrap().len(), 1);

    // Another user sees none of it, and may not ask for it.
    assert_eq!(get("/api/usage/logs".into(), other.clone()).await.json()["data"], json!([]));
    assert_eq!(get("/api/usage/stats".into(), other.clone()).await.json()["data"], json!([]));
    let owner_id =
        get("/api/auth/me".into(), owner.clone()).await.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(get(format!("/api/usage/logs?user_id={owner_id}"), other.clone()).await.status, 403);
    assert_eq!(get("/api/usage/logs".into(), String::new()).await.status, 401);
    // An admin may read anyone's usage by user_id.
    let out = support::command(
        gw.dir.path(),
        &["admin", "create", "--email", "root@example.com", "--password", "correct horse battery"],
        &[],
    )
    .output()
    .await
    .unwrap();
    assert!(out.status.success());
    let admin = login(gw.addr, "root@example.com").await;
    let theirs = get(format!("/api/usage/logs?user_id={owner_id}&limit=100"), admin.clone()).await;
    assert_eq!(theirs.json()["data"].as_array().unwrap().len(), 7);
    let their_stats =
        get(format!("/api/usage/stats?user_id={owner_id}&group_by=key"), admin).await.json();
    assert_eq!(their_stats["data"][0]["requests"], 7);

    for (query, param) in [
        ("/api/usage/logs?limit=0", "limit"),
        ("/api/usage/logs?limit=abc", "limit"),
        ("/api/usage/logs?status=maybe", "status"),
        ("/api/usage/logs?key_id=x'--", "key_id"),
        ("/api/usage/logs?cursor=nope", "cursor"),
        ("/api/usage/logs?sort=asc", "sort"),
        ("/api/usage/stats?group_by=hour", "group_by"),
        ("/api/usage/stats?from=2026-13-01", "from"),
        ("/api/usage/stats?from=2026-11-02&to=2026-11-01", "from"),
    ] {
        let r = get(query.into(), owner.clone()).await;
        assert_eq!(r.status, 400, "{query}");
        assert_eq!(r.openai_error()["param"], param, "{query}");
    }
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_never_carry_secrets() {
    let mock = Mock::start().await;
    let url = mock.url();
    let gw = Gateway::start(
        &[],
        &[("LITELLM_SERVER_1_URL", url.as_str()), ("LITELLM_SERVER_1_MODELS", MODELS)],
    )
    .await;
    let key = user_with_key(&gw, "metrics@example.com", json!({"name": "m"})).await;
    for _ in 0..3 {
        let body = json!({"model": "gpt-4", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]});
        assert_eq!(
            support::post_with_key(gw.addr, "/v1/chat/completions", &key, &body).await.status,
            200
        );
    }
    let body = json!({"model": "made-up-model-from-a-client", "messages": []});
    assert_eq!(
        support::post_with_key(gw.addr, "/v1/chat/completions", &key, &body).await.status,
        404
    );

    let r = request_with(gw.addr, "GET", "/metrics", &[], b"").await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("valid Prometheus text");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(value("bluesminds_requests_total", &[("model", "gpt-4"), ("status", "200")]), 3.0);
    assert_eq!(value("bluesminds_requests_total", &[("model", "other"), ("status", "404")]), 1.0);
    assert_eq!(
        value("bluesminds_tokens_total", &[("model", "gpt-4"), ("kind", "completion")]),
        6.0
    );
    assert_eq!(value("bluesminds_upstream_healthy", &[("server", "env-1")]), 1.0);
    assert!(
        scrape.samples.iter().any(|s| s.metric == "bluesminds_request_duration_seconds"),
        "the latency histogram is there"
    );
    assert!(scrape.samples.iter().any(|s| s.metric == "bluesminds_gateway_overhead_seconds"));
    for secret in [&key[..], &key[3..11], "metrics@example.com", "made-up-model-from-a-client"] {
        assert!(!text.contains(secret), "{secret} in /metrics");
    }
}

/// The host:port of a Postgres URL.
fn pg_addr(url: &str) -> std::net::SocketAddr {
    let rest = url.split("://").nth(1).unwrap();
    let host = rest.split('/').next().unwrap();
    let host = host.rsplit('@').next().unwrap();
    let host = if host.contains(':') { host.to_owned() } else { format!("{host}:5432") };
    std::net::ToSocketAddrs::to_socket_addrs(&host).unwrap().next().unwrap()
}

#[tokio::test]
async fn a_database_outage_loses_no_request_and_no_record() {
    let pg = gateway_store::testing::require_postgres();
    let db = gateway_store::testing::TestDb::empty(gateway_store::testing::Backend::Postgres).await;
    let relay = support::Relay::start(pg_addr(&pg)).await;
    let host = pg_addr(&pg).to_string();
    let proxied = db.url.replacen(&host, &relay.addr.to_string(), 1).replacen(
        "localhost:5432",
        &relay.addr.to_string(),
        1,
    );
    assert_ne!(proxied, db.url, "the gateway must reach Postgres through the relay");
    let mock = Mock::start().await;
    let url = mock.url();
    let secret = "0123456789abcdef0123456789abcdef";
    let gw = Gateway::start(
        &[],
        &[
            ("DATABASE_URL", proxied.as_str()),
            ("JWT_SECRET", secret),
            ("API_KEY_SECRET", secret),
            ("LITELLM_SERVER_1_URL", url.as_str()),
            ("LITELLM_SERVER_1_MODELS", MODELS),
            ("BLUESMINDS_DATABASE__MAX_CONNECTIONS", "4"),
        ],
    )
    .await;
    let key = user_with_key(&gw, "outage@example.com", json!({"name": "o"})).await;
    let chat = |stream: bool| {
        let (key, addr) = (key.clone(), gw.addr);
        async move {
            let body = json!({"model": "gpt-4", "max_tokens": 2, "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
            support::post_with_key(addr, "/v1/chat/completions", &key, &body).await.status
        }
    };
    assert_eq!(chat(false).await, 200, "the key is verified and cached");

    relay.cut();
    let mut served = 1;
    for i in 0..40 {
        assert_eq!(chat(i % 3 == 0).await, 200, "request {i} during the outage");
        served += 1;
    }
    let ready = request_with(gw.addr, "GET", "/readyz", &[], b"").await;
    assert_eq!(ready.status, 503, "readiness tells the outage");
    assert_ne!(ready.json()["checks"]["database"], "ok");
    // Keep the database down until the writer has tried, failed and spilled.
    let scrape = || async {
        String::from_utf8(request_with(gw.addr, "GET", "/metrics", &[], b"").await.body.to_vec())
            .unwrap()
    };
    let counter = |metrics: &str, name: &str| -> u64 {
        metrics.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0)
    };
    let started = std::time::Instant::now();
    while counter(&scrape().await, "bluesminds_usage_spilled_total ") == 0 {
        assert!(started.elapsed() < PATIENCE, "the writer never spilled during the outage");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(counter(&scrape().await, "bluesminds_database_errors_total ") > 0);
    assert_eq!(chat(true).await, 200, "still serving");
    served += 1;

    relay.restore();
    let count = || async {
        use sea_orm::PaginatorTrait;
        usage_logs::Entity::find().count(db.store.connection()).await.unwrap()
    };
    let started = std::time::Instant::now();
    while count().await < served {
        assert!(
            started.elapsed() < PATIENCE,
            "only {} of {served} rows arrived after the outage",
            count().await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count().await, served, "every request left exactly one row");
    // And they got there the long way: spilled during the outage, replayed after it.
    let metrics = scrape().await;
    let spilled = counter(&metrics, "bluesminds_usage_spilled_total ");
    assert!(spilled > 0, "{metrics}");
    assert_eq!(counter(&metrics, "bluesminds_usage_replayed_total "), spilled);
    assert_eq!(counter(&metrics, "bluesminds_usage_dropped_total "), 0);
}

#[tokio::test]
async fn sigterm_under_load_leaves_one_row_per_completed_request() {
    let mock = Mock::start().await;
    let url = mock.url();
    let mut gw = Gateway::start(
        &[],
        &[("LITELLM_SERVER_1_URL", url.as_str()), ("LITELLM_SERVER_1_MODELS", MODELS)],
    )
    .await;
    let key = user_with_key(&gw, "load@example.com", json!({"name": "l"})).await;
    let completed = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let (completed, stop, key, addr) = (completed.clone(), stop.clone(), key.clone(), gw.addr);
            tokio::spawn(async move {
                let auth = format!("Bearer {key}");
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    i += 1;
                    let stream = (w + i).is_multiple_of(2);
                    let body = json!({"model": "gpt-4", "max_tokens": 8, "stream": stream, "messages": [{"role": "user", "content": "hi"}], "mock": {"chunk_delay_ms": 5}}).to_string();
                    // A fresh connection per request: one the server never accepted is not
                    // counted by either side.
                    let Ok(conn) = tokio::net::TcpStream::connect(addr).await else { break };
                    let Ok((mut sender, c)) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(conn)).await else { break };
                    tokio::spawn(c);
                    let req = http::Request::post("/v1/chat/completions")
                        .header("host", "x")
                        .header("authorization", &auth)
                        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
                        .unwrap();
                    let Ok(res) = sender.send_request(req).await else { break };
                    let status = res.status();
                    let Ok(body) = http_body_util::BodyExt::collect(res.into_body()).await else { break };
                    let text = String::from_utf8_lossy(&body.to_bytes()).into_owned();
                    let whole = if stream { text.contains("[DONE]") } else { text.contains("\"usage\"") };
                    if status == 200 && whole {
                        completed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    // Let the load build up, then ask the gateway to stop while requests are in flight.
    let started = std::time::Instant::now();
    while completed.load(std::sync::atomic::Ordering::SeqCst) < 40 {
        assert!(started.elapsed() < PATIENCE);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    gw.terminate().await;
    let (code, logs) = gw.wait().await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(code, Some(0), "{logs}");
    let rows = rows(&gw).await;
    let done = completed.load(std::sync::atomic::Ordering::SeqCst) as usize;
    assert_eq!(rows.len(), done, "rows must equal the completed requests");
    assert!(rows.iter().all(|r| r.status_code == 200 && !r.client_disconnected));
}

/// On Postgres, the rollup sums of a usage batch of many keys are held in memory
/// (`usage.rollup_interval_ms`), the batch marked pending in the database: a gateway killed
/// outright while holding them loses none, and they are counted once, from the usage rows.
#[tokio::test]
async fn a_gateway_killed_while_holding_rollup_sums_loses_none_of_them() {
    let mock = Mock::start().await;
    let url = mock.url();
    let extra = [
        ("LITELLM_SERVER_1_URL", url.as_str()),
        ("LITELLM_SERVER_1_MODELS", MODELS),
        // Held until the kill; the burst below goes in one batch.
        ("BLUESMINDS_USAGE__ROLLUP_INTERVAL_MS", "60000"),
        ("BLUESMINDS_USAGE__FLUSH_INTERVAL_MS", "2000"),
    ];
    let (db, env) = support::shared_backends(&extra).await;
    let env = support::env_refs(&env);
    let mut gw = Gateway::start(&[], &env).await;
    let cookie = support::signup(gw.addr, "keys@example.com").await;
    support::set_tier(&gw, &cookie, "enterprise").await;
    let mut keys = Vec::new();
    for i in 0..20 {
        keys.push(support::create_key(gw.addr, &cookie, &json!({"name": format!("k{i}")})).await);
    }
    let body =
        json!({"model": "gpt-4", "max_tokens": 3, "messages": [{"role": "user", "content": "hi"}]});
    let count = |sql: &'static str| {
        let conn = db.store.connection();
        async move {
            sea_orm::ConnectionTrait::query_one_raw(
                conn,
                sea_orm::Statement::from_string(sea_orm::DatabaseBackend::Postgres, sql),
            )
            .await
            .unwrap()
            .unwrap()
            .try_get::<i64>("", "n")
            .unwrap()
        }
    };
    let rows_reach = |n: i64| async move {
        let started = std::time::Instant::now();
        while count("SELECT count(*)::bigint AS n FROM usage_logs").await < n {
            assert!(started.elapsed() < PATIENCE, "the usage rows never arrived");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // Each key's first use waits for its bcrypt: one request each first, then all at once.
    for key in &keys {
        let r = support::post_with_key(gw.addr, "/v1/chat/completions", key, &body).await;
        assert_eq!(r.status, 200);
    }
    rows_reach(20).await;
    let pending = "SELECT count(*)::bigint AS n FROM usage_rollup_pending";
    let before = count(pending).await;
    let calls = keys.iter().cycle().take(60).map(|key| {
        let (key, body) = (key.clone(), body.clone());
        let addr = gw.addr;
        async move { support::post_with_key(addr, "/v1/chat/completions", &key, &body).await.status }
    });
    let statuses = futures_util::future::join_all(calls).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    rows_reach(80).await;
    let rolled = "SELECT COALESCE(SUM(requests), 0)::bigint AS n FROM usage_daily";
    assert!(count(pending).await > before, "the batch of 20 keys is held");
    assert!(count(rolled).await <= 20, "its rollup sums are not written yet");

    let st = tokio::process::Command::new("kill")
        .args(["-KILL", &gw.pid().to_string()])
        .status()
        .await
        .unwrap();
    assert!(st.success());
    assert_eq!(gw.wait().await.0, None, "killed by a signal");
    // What the next gateway to look (or an invoice run) does with the batches it left.
    let next = gateway_store::SqlUsageStore::new(db.store.clone());
    assert!(next.sum_pending_batches().await.unwrap() >= 1);
    assert_eq!(count(rolled).await, 80, "every request counted once");
    assert_eq!(count(pending).await, 0);
    let per_key = "SELECT (count(*) * 100 + min(requests))::bigint AS n FROM usage_daily";
    assert_eq!(count(per_key).await, 20 * 100 + 4, "20 rows (one per key) of 4 requests");
}
