//! End-to-end tests of the gateway path: the real binary in front of two `bluesminds-mock`
//! servers, driven by the `async-openai` client (and by raw HTTP where a test needs to see
//! bytes or drop a connection).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::ChatCompletionStreamOptions;
use async_openai::types::embeddings::CreateEmbeddingRequestArgs;
use futures_util::StreamExt;
use serde_json::json;
use support::{Gateway, Mock, PATIENCE, chat_request, request_with, user_with_key};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MODELS: &str = "gpt-4,gpt-3.5-turbo,text-embedding-3-small";

/// A gateway in front of two mocks, and an OpenAI client with a key of every scope.
struct Setup {
    gw: Gateway,
    mocks: Vec<Mock>,
    client: Client<OpenAIConfig>,
    key: String,
}

async fn setup(extra_env: &[(&str, &str)]) -> Setup {
    let mocks = vec![Mock::start().await, Mock::start().await];
    let (u1, u2) = (mocks[0].url(), mocks[1].url());
    let mut env = vec![
        ("LITELLM_SERVER_1_URL", u1.as_str()),
        ("LITELLM_SERVER_1_MODELS", MODELS),
        ("LITELLM_SERVER_2_URL", u2.as_str()),
        ("LITELLM_SERVER_2_MODELS", MODELS),
    ];
    env.extend_from_slice(extra_env);
    let gw = Gateway::start(&[], &env).await;
    let key = user_with_key(&gw, "sdk@example.com", json!({"name": "sdk"})).await;
    let client = openai(&gw, &key);
    Setup { gw, mocks, client, key }
}

fn openai(gw: &Gateway, key: &str) -> Client<OpenAIConfig> {
    Client::with_config(OpenAIConfig::new().with_api_base(gw.url("/api/v1")).with_api_key(key))
}

/// What the mock answers to `max_tokens` words: "Hello from the BluesMinds mock ...".
fn mock_text(words: usize) -> String {
    let w = ["Hello", "from", "the", "BluesMinds", "mock", "upstream,", "have", "fun."];
    (0..words).map(|i| w[i % w.len()]).collect::<Vec<_>>().join(" ")
}

/// Status and `error.code` of an SDK error (4xx bodies are parsed by the SDK).
fn api_error(e: OpenAIError) -> (u16, Option<String>) {
    match e {
        OpenAIError::ApiError(r) => (r.status_code.as_u16(), r.api_error.code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn chat_streaming_embeddings_and_models_through_the_sdk() {
    let s = setup(&[]).await;

    let res = s.client.chat().create(chat_request("gpt-4", 5)).await.unwrap();
    assert_eq!(res.choices[0].message.content.as_deref(), Some(mock_text(5).as_str()));
    let usage = res.usage.unwrap();
    assert_eq!((usage.completion_tokens, usage.total_tokens), (5, usage.prompt_tokens + 5));

    // Streamed: the same content, one chunk per word plus the role and finish chunks, and no
    // usage chunk since the client did not ask for one.
    let mut stream = s.client.chat().create_stream(chat_request("gpt-4", 7)).await.unwrap();
    let (mut text, mut chunks, mut usage_chunks) = (String::new(), 0, 0);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        chunks += 1;
        usage_chunks += usize::from(chunk.usage.is_some());
        if let Some(c) = chunk.choices.first().and_then(|c| c.delta.content.clone()) {
            text.push_str(&c);
        }
    }
    assert_eq!(text, mock_text(7));
    assert_eq!((chunks, usage_chunks), (7 + 2, 0));

    // Asked for: the usage chunk is there, with the mock's counts.
    let mut req = chat_request("gpt-4", 4);
    req.stream_options =
        Some(ChatCompletionStreamOptions { include_usage: Some(true), include_obfuscation: None });
    let mut stream = s.client.chat().create_stream(req).await.unwrap();
    let mut last_usage = None;
    while let Some(chunk) = stream.next().await {
        if let Some(u) = chunk.unwrap().usage {
            last_usage = Some(u);
        }
    }
    assert_eq!(last_usage.unwrap().completion_tokens, 4);

    let emb = CreateEmbeddingRequestArgs::default()
        .model("text-embedding-3-small")
        .input(["a", "b"])
        .build()
        .unwrap();
    let emb = s.client.embeddings().create(emb).await.unwrap();
    assert_eq!(emb.data.len(), 2);
    assert_eq!(emb.data[1].index, 1);

    let models = s.client.models().list().await.unwrap();
    let ids: Vec<_> = models.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, vec!["gpt-3.5-turbo", "gpt-4", "text-embedding-3-small"]);

    // Both mocks served some of it: the balancer spreads the load.
    assert!(s.mocks.iter().map(Mock::requests).sum::<u64>() >= 4);
}

#[tokio::test]
async fn unknown_models_forbidden_models_and_missing_scopes_are_refused() {
    let s = setup(&[]).await;
    let (status, code) =
        api_error(s.client.chat().create(chat_request("no-such-model", 3)).await.unwrap_err());
    assert_eq!((status, code.as_deref()), (404, Some("model_not_found")));

    let limited = user_with_key(
        &s.gw,
        "limited@example.com",
        json!({"name": "l", "allowed_models": ["gpt-3.5-turbo"], "scopes": ["chat.completions"]}),
    )
    .await;
    let client = openai(&s.gw, &limited);
    let (status, code) =
        api_error(client.chat().create(chat_request("gpt-4", 3)).await.unwrap_err());
    assert_eq!((status, code.as_deref()), (403, Some("permission_denied")));
    assert!(client.chat().create(chat_request("gpt-3.5-turbo", 3)).await.is_ok());
    let emb = CreateEmbeddingRequestArgs::default()
        .model("text-embedding-3-small")
        .input("a")
        .build()
        .unwrap();
    let (status, code) = api_error(client.embeddings().create(emb).await.unwrap_err());
    assert_eq!((status, code.as_deref()), (403, Some("permission_denied")), "no embeddings scope");
    let before = s.mocks.iter().map(Mock::requests).sum::<u64>();
    assert_eq!(before, 1, "only the allowed request reached an upstream");
}

#[tokio::test]
async fn bad_requests_are_refused_before_anything_is_forwarded() {
    let s = setup(&[("BLUESMINDS_SERVER__MAX_BODY_BYTES", "2048")]).await;
    let auth = format!("Bearer {}", s.key);
    let big =
        json!({"model": "gpt-4", "messages": [{"role": "user", "content": "x".repeat(4000)}]})
            .to_string();
    let cases: Vec<(String, u16, Option<&str>)> = vec![
        ("{not json".into(), 400, None),
        (json!({"messages": []}).to_string(), 400, Some("model")),
        (json!({"model": "gpt-4", "messages": "hello"}).to_string(), 400, Some("messages")),
        (
            json!({"model": "gpt-4", "messages": [], "stream": "yes"}).to_string(),
            400,
            Some("stream"),
        ),
        (
            json!({"model": "gpt-4", "messages": [], "api_base": "http://attacker.example"})
                .to_string(),
            400,
            Some("api_base"),
        ),
        (
            json!({"model": "gpt-4", "messages": [], "metadata": {"api_key": "sk-x"}}).to_string(),
            400,
            Some("metadata"),
        ),
        (
            json!({"model": "gpt-4", "messages": [], "litellm_params": {}}).to_string(),
            400,
            Some("litellm_params"),
        ),
        (big, 413, None),
    ];
    for (body, status, param) in cases {
        let r = request_with(
            s.gw.addr,
            "POST",
            "/api/v1/chat/completions",
            &[("authorization", &auth)],
            body.as_bytes(),
        )
        .await;
        assert_eq!(r.status, status, "{}", &body[..body.len().min(80)]);
        let e = r.openai_error();
        assert_eq!(e["param"].as_str(), param, "{e}");
    }
    assert_eq!(s.mocks.iter().map(Mock::requests).sum::<u64>(), 0, "nothing reached an upstream");
}

#[tokio::test]
async fn when_an_upstream_dies_every_following_request_still_succeeds() {
    let mut s = setup(&[]).await;
    for _ in 0..4 {
        s.client.chat().create(chat_request("gpt-4", 2)).await.unwrap();
    }
    s.mocks[0].kill().await;
    for i in 0..20 {
        let res = s.client.chat().create(chat_request("gpt-4", 2)).await;
        assert!(res.is_ok(), "request {i} after the kill failed: {:?}", res.err());
    }
    let mut stream = s.client.chat().create_stream(chat_request("gpt-4", 3)).await.unwrap();
    let mut n = 0;
    while let Some(c) = stream.next().await {
        c.unwrap();
        n += 1;
    }
    assert_eq!(n, 5);
    s.mocks[1].kill().await;
    // async-openai keeps a 5xx body as the raw message rather than parsing its code.
    let auth = format!("Bearer {}", s.key);
    let body =
        json!({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let r = request_with(
        s.gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth)],
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 503);
    let e = r.openai_error();
    assert_eq!(e["message"], "No healthy servers available");
    assert_eq!(r.header("retry-after"), Some("1"));
}

async fn raw_stream(gw: &Gateway, key: &str, body: serde_json::Value) -> tokio::net::TcpStream {
    let body = body.to_string();
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    s
}

#[tokio::test]
async fn a_stream_that_fails_midway_ends_with_an_error_event() {
    let s = setup(&[]).await;
    let mut conn = raw_stream(
        &s.gw,
        &s.key,
        json!({"model": "gpt-4", "stream": true, "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}], "mock": {"fail": "midstream"}}),
    )
    .await;
    let mut text = String::new();
    tokio::time::timeout(PATIENCE, conn.read_to_string(&mut text))
        .await
        .expect("the stream ends")
        .unwrap();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("text/event-stream"));
    assert!(
        text.contains("\"content\":\"Hello \""),
        "chunks before the failure were relayed: {text}"
    );
    assert!(text.contains("\"error\"") && text.contains("upstream_error"), "{text}");
    assert!(!text.contains("[DONE]"), "never a clean end: {text}");
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_closes_the_upstream_stream() {
    let s = setup(&[]).await;
    let mut conn = raw_stream(
        &s.gw,
        &s.key,
        json!({"model": "gpt-4", "stream": true, "max_tokens": 200,
        "messages": [{"role": "user", "content": "hi"}], "mock": {"chunk_delay_ms": 50}}),
    )
    .await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(PATIENCE, conn.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("data: "), "the stream started");
    drop(conn);
    let started = std::time::Instant::now();
    while s.mocks.iter().map(Mock::aborted_streams).sum::<u64>() == 0 {
        assert!(started.elapsed() < PATIENCE, "the upstream stream was never closed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 200 chunks 50 ms apart would take 10 s; the upstream saw its client leave long before.
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn every_gateway_response_reports_its_overhead() {
    let s = setup(&[]).await;
    let auth = format!("Bearer {}", s.key);
    let body =
        json!({"model": "gpt-4", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    let r = request_with(
        s.gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth)],
        body.as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    let overhead: f64 = r.header("x-bluesminds-overhead-ms").unwrap().parse().unwrap();
    assert!(overhead >= 0.0);
    assert!(r.header("x-request-id").is_some());
    // Refusals and /models too.
    let refused =
        request_with(s.gw.addr, "POST", "/v1/chat/completions", &[], body.as_bytes()).await;
    assert_eq!(refused.status, 401);
    let models =
        request_with(s.gw.addr, "GET", "/v1/models", &[("authorization", &auth)], b"").await;
    for r in [&refused, &models] {
        assert!(
            r.header("x-bluesminds-overhead-ms").is_some() && r.header("x-request-id").is_some()
        );
    }
}

#[tokio::test]
async fn upstream_redirects_are_never_followed() {
    let s = setup(&[]).await;
    let auth = format!("Bearer {}", s.key);
    let body = json!({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "mock": {"fail": "status", "status": 307}}).to_string();
    let r = request_with(
        s.gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth)],
        body.as_bytes(),
    )
    .await;
    assert!(r.status == 502 || r.status == 503, "{}: {:?}", r.status, r.body);
    r.openai_error();
    assert!(r.header("location").is_none(), "the redirect is not passed on either");
}

/// An admin change on one instance reaches another through Redis: the pool reloads there.
#[tokio::test]
async fn a_server_added_on_one_instance_is_used_by_another() {
    let (_db, env) =
        support::shared_backends(&[("BLUESMINDS_HEALTH__INTERVAL_SECS", "3600")]).await;
    let env = support::env_refs(&env);
    let a = Gateway::start(&[], &env).await;
    let b = Gateway::start(&[], &env).await;
    let cookie = admin_cookie_with(&a, &env).await;
    let key = user_with_key(&a, "two@example.com", json!({"name": "k"})).await;
    let client_b = openai(&b, &key);
    let (status, _) =
        api_error(client_b.chat().create(chat_request("gpt-4", 2)).await.unwrap_err());
    assert_eq!(status, 404, "no server yet");

    let mock = Mock::start().await;
    let r = admin(
        &a,
        &cookie,
        "POST",
        "/api/admin/servers",
        json!({"name": "new", "base_url": mock.url(), "supported_models": ["gpt-4"]}),
    )
    .await;
    assert_eq!(r.status, 201);
    let started = std::time::Instant::now();
    loop {
        if client_b.chat().create(chat_request("gpt-4", 2)).await.is_ok() {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the second instance never learned of the new server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(mock.requests() >= 1);
}

/// An admin session made with the CLI next to the running gateway.
async fn admin_cookie(gw: &Gateway) -> String {
    admin_cookie_with(gw, &[]).await
}

/// The same, with the instance's environment (so the CLI uses the instance's database).
async fn admin_cookie_with(gw: &Gateway, env: &[(&str, &str)]) -> String {
    let args = ["admin", "create", "--email", "root@example.com", "--password", "root password 1"];
    let out = support::command(gw.dir.path(), &args, env).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let creds = json!({"email": "root@example.com", "password": "root password 1"}).to_string();
    let r = support::request(gw.addr, "POST", "/api/auth/login", creds.as_bytes()).await;
    r.header("set-cookie").unwrap().split(';').next().unwrap().to_owned()
}

async fn admin(
    gw: &Gateway,
    cookie: &str,
    method: &str,
    path: &str,
    body: serde_json::Value,
) -> support::Reply {
    let bytes = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
    request_with(gw.addr, method, path, &[("cookie", cookie)], &bytes).await
}

#[tokio::test]
async fn admins_manage_the_pool_and_upstream_keys_stay_write_only() {
    let s = setup(&[("BLUESMINDS_HEALTH__INTERVAL_SECS", "3600")]).await;
    let cookie = admin_cookie(&s.gw).await;

    let listed = admin(&s.gw, &cookie, "GET", "/api/admin/servers", serde_json::Value::Null).await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.json()["data"].as_array().unwrap().len(), 2, "the two seeded servers");

    // A third server with an upstream key, sent upstream as a Bearer token and never shown.
    let third = Mock::start().await;
    let created = admin(&s.gw, &cookie, "POST", "/api/admin/servers", json!({"name": "third", "base_url": third.url(), "api_key": "sk-upstream-secret", "priority": 1, "weight": 5, "supported_models": ["only-third"]})).await;
    assert_eq!(created.status, 201, "{:?}", created.body);
    assert_eq!(created.json()["has_api_key"], true);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    for r in [
        &created,
        &admin(&s.gw, &cookie, "GET", "/api/admin/servers", serde_json::Value::Null).await,
    ] {
        assert!(!String::from_utf8_lossy(&r.body).contains("sk-upstream-secret"));
    }
    s.client.chat().create(chat_request("only-third", 2)).await.unwrap();
    let seen = third.stats.last_authorization.lock().unwrap().clone();
    assert_eq!(
        seen.as_deref(),
        Some("Bearer sk-upstream-secret"),
        "the server's own key, never the client's"
    );

    // Validation and conflicts.
    for (body, param) in [
        (json!({"name": "x", "base_url": "ftp://x"}), "base_url"),
        (json!({"name": "x", "base_url": "http://user:pw@h"}), "base_url"),
        (json!({"name": "x", "base_url": "http://h2", "priority": 0}), "priority"),
        (json!({"name": "x", "base_url": "http://h3", "weight": 0}), "weight"),
        (
            json!({"name": "x", "base_url": "http://h4", "health_status": "healthy"}),
            "health_status",
        ),
    ] {
        let r = admin(&s.gw, &cookie, "POST", "/api/admin/servers", body.clone()).await;
        assert_eq!(r.status, 400, "{body}");
        assert!(String::from_utf8_lossy(&r.body).contains(param), "{body}: {:?}", r.body);
    }
    let dup = admin(
        &s.gw,
        &cookie,
        "POST",
        "/api/admin/servers",
        json!({"name": "again", "base_url": third.url()}),
    )
    .await;
    assert_eq!(dup.status, 409);

    // Deactivated: never used. Deleted: gone.
    let before = third.requests();
    let off = admin(
        &s.gw,
        &cookie,
        "PATCH",
        &format!("/api/admin/servers/{id}"),
        json!({"is_active": false}),
    )
    .await;
    assert_eq!((off.status, off.json()["is_active"].as_bool()), (200, Some(false)));
    let (status, code) =
        api_error(s.client.chat().create(chat_request("only-third", 2)).await.unwrap_err());
    assert_eq!((status, code.as_deref()), (404, Some("model_not_found")));
    assert_eq!(third.requests(), before);
    assert_eq!(
        admin(
            &s.gw,
            &cookie,
            "DELETE",
            &format!("/api/admin/servers/{id}"),
            serde_json::Value::Null
        )
        .await
        .status,
        200
    );
    assert_eq!(
        admin(&s.gw, &cookie, "PATCH", &format!("/api/admin/servers/{id}"), json!({"weight": 2}))
            .await
            .status,
        404
    );

    // Not for ordinary users.
    let user = user_with_key(&s.gw, "plain@example.com", json!({"name": "k"})).await;
    let _ = user;
    let creds =
        json!({"email": "plain@example.com", "password": "correct horse battery"}).to_string();
    let r = support::request(s.gw.addr, "POST", "/api/auth/login", creds.as_bytes()).await;
    let plain = r.header("set-cookie").unwrap().split(';').next().unwrap().to_owned();
    for (method, path) in [
        ("GET", "/api/admin/servers"),
        ("POST", "/api/admin/servers"),
        ("GET", "/api/admin/health"),
        ("POST", "/api/admin/health"),
    ] {
        assert_eq!(
            admin(&s.gw, &plain, method, path, json!({})).await.status,
            403,
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn a_dead_upstream_is_marked_unhealthy_and_used_again_when_it_returns() {
    let mut s = setup(&[("BLUESMINDS_HEALTH__INTERVAL_SECS", "3600")]).await;
    let cookie = admin_cookie(&s.gw).await;
    let dead_addr = s.mocks[0].addr;
    s.mocks[0].kill().await;

    let checked = admin(&s.gw, &cookie, "POST", "/api/admin/health", serde_json::Value::Null).await;
    assert_eq!(checked.status, 200);
    let status_of = |body: &serde_json::Value, url: &str| {
        body["data"].as_array().unwrap().iter().find(|s| s["base_url"] == url).unwrap()["health"]["status"].as_str().unwrap().to_owned()
    };
    let dead_url = format!("http://{dead_addr}");
    assert_eq!(status_of(&checked.json(), &dead_url), "unhealthy");
    assert_eq!(status_of(&checked.json(), &s.mocks[1].url()), "healthy");
    let persisted =
        admin(&s.gw, &cookie, "GET", "/api/admin/health", serde_json::Value::Null).await.json();
    assert_eq!(status_of(&persisted, &dead_url), "unhealthy");
    for _ in 0..10 {
        s.client.chat().create(chat_request("gpt-4", 2)).await.unwrap();
    }

    // It comes back on the same address; the next check sees it, and it gets traffic again.
    s.mocks[0] =
        Mock::start_on(&dead_addr.to_string(), bluesminds_mock::MockConfig::default()).await;
    let checked = admin(&s.gw, &cookie, "POST", "/api/admin/health", serde_json::Value::Null).await;
    assert_eq!(status_of(&checked.json(), &dead_url), "healthy");
    for _ in 0..40 {
        s.client.chat().create(chat_request("gpt-4", 2)).await.unwrap();
    }
    assert!(s.mocks[0].requests() > 0, "the returned server is used again");
}

#[tokio::test]
async fn upstreams_that_hang_or_go_quiet_are_cut_by_the_timeouts() {
    let s = setup(&[
        ("BLUESMINDS_PROXY__FIRST_BYTE_TIMEOUT_MS", "300"),
        ("BLUESMINDS_PROXY__STREAM_IDLE_TIMEOUT_MS", "300"),
    ])
    .await;
    let auth = format!("Bearer {}", s.key);
    // No response head: every server times out, and the client hears so instead of hanging.
    let body = json!({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}], "mock": {"fail": "hang"}}).to_string();
    let started = std::time::Instant::now();
    let r = request_with(
        s.gw.addr,
        "POST",
        "/v1/chat/completions",
        &[("authorization", &auth)],
        body.as_bytes(),
    )
    .await;
    assert!(r.status == 502 || r.status == 503, "{}", r.status);
    r.openai_error();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by the timeouts, took {:?}",
        started.elapsed()
    );
    assert_eq!(s.mocks.iter().map(Mock::requests).sum::<u64>(), 2, "each server was tried once");

    // A stream that goes quiet for longer than the idle timeout ends with an error event.
    let mut conn = raw_stream(
        &s.gw,
        &s.key,
        json!({"model": "gpt-4", "stream": true, "max_tokens": 5,
        "messages": [{"role": "user", "content": "hi"}], "mock": {"chunk_delay_ms": 2000}}),
    )
    .await;
    let mut text = String::new();
    tokio::time::timeout(PATIENCE, conn.read_to_string(&mut text))
        .await
        .expect("the stream ends")
        .unwrap();
    assert!(text.contains("upstream_timeout"), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
}

/// Upstream servers close idle keep-alive connections (uvicorn, LiteLLM's server, after 5 s);
/// a request sent on one they are closing fails. The gateway stops reusing a connection once
/// it has been idle for `proxy.pool_idle_timeout_ms`, and keeps reusing it before that.
#[tokio::test]
async fn an_upstream_connection_idle_past_the_pool_timeout_is_not_reused() {
    let mock = Mock::start().await;
    let url = mock.url();
    let env = [
        ("LITELLM_SERVER_1_URL", url.as_str()),
        ("LITELLM_SERVER_1_MODELS", MODELS),
        ("BLUESMINDS_PROXY__POOL_IDLE_TIMEOUT_MS", "300"),
    ];
    let gw = Gateway::start(&[], &env).await;
    let key = user_with_key(&gw, "pool@example.com", json!({"name": "pool"})).await;
    let client = openai(&gw, &key);
    let connections = || mock.stats.connections.load(std::sync::atomic::Ordering::Relaxed);

    client.chat().create(chat_request("gpt-4", 2)).await.unwrap();
    let warm = connections();
    client.chat().create(chat_request("gpt-4", 2)).await.unwrap();
    assert_eq!(connections(), warm, "a connection idle for less than the timeout is reused");

    // Past the timeout (with a wide margin): the idle connection is dropped, a new one opened.
    tokio::time::sleep(Duration::from_millis(900)).await;
    client.chat().create(chat_request("gpt-4", 2)).await.unwrap();
    assert_eq!(connections(), warm + 1, "a connection idle past the timeout is not reused");
}
