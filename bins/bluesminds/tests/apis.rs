//! The endpoints beyond chat and embeddings, through the binary: legacy completions, OpenAI's
//! Responses API and Anthropic's Messages API, plain and streamed, with their usage rows, their
//! refusals (scopes, steering fields, limits) and their error shapes. The SDKs themselves are
//! driven by tests/sdk/suite.py (OpenAI's and Anthropic's Python SDKs).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Gateway, Mock, PATIENCE, Reply, request_with};

const MODELS: &str = "gpt-4o-mini,claude-sonnet-4";

async fn gateway(mock: &Mock) -> Gateway {
    let url = mock.url();
    Gateway::start(&[], &[("LITELLM_SERVER_1_URL", &url), ("LITELLM_SERVER_1_MODELS", MODELS)])
        .await
}

/// An enterprise user's session and a key made with `key_body`.
async fn user(gw: &Gateway, email: &str, key_body: Value) -> (String, String) {
    let cookie = support::signup(gw.addr, email).await;
    support::set_tier(gw, &cookie, "enterprise").await;
    let key = support::create_key(gw.addr, &cookie, &key_body).await;
    (cookie, key)
}

async fn post(gw: &Gateway, path: &str, headers: &[(&str, &str)], body: &Value) -> Reply {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    request_with(gw.addr, "POST", path, &h, body.to_string().as_bytes()).await
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

/// The caller's usage rows, oldest first, once there are `n`.
async fn rows(gw: &Gateway, cookie: &str, n: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let r =
            request_with(gw.addr, "GET", "/api/usage/logs?limit=100", &[("cookie", cookie)], b"")
                .await;
        let mut data = r.json()["data"].as_array().cloned().unwrap_or_default();
        if data.len() >= n {
            data.reverse();
            return data;
        }
        assert!(started.elapsed() < PATIENCE, "{} of {n} usage rows written", data.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `data:` JSON of every event of an SSE body, with its `event:` name when it has one.
fn events(body: &[u8]) -> Vec<(Option<String>, Value)> {
    let text = std::str::from_utf8(body).unwrap();
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: ")).map(str::to_owned);
            let data = e.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
            (name, serde_json::from_str(data).unwrap_or(Value::String(data.to_owned())))
        })
        .collect()
}

fn tokens(row: &Value) -> (u64, u64) {
    (row["prompt_tokens"].as_u64().unwrap(), row["completion_tokens"].as_u64().unwrap())
}

#[tokio::test]
async fn completions_responses_and_messages_are_served_and_recorded_with_their_usage() {
    let mock = Mock::start().await;
    let gw = gateway(&mock).await;
    let (cookie, key) = user(&gw, "apis@example.com", json!({"name": "all"})).await;
    let auth = bearer(&key);
    let auth = [("authorization", auth.as_str())];

    // Legacy completions: the answer's usage, and a stream that asks for no usage chunk gets
    // none although the gateway asked the upstream for it.
    let r = post(
        &gw,
        "/api/v1/completions",
        &auth,
        &json!({"model": "gpt-4o-mini", "prompt": "Say hello", "max_tokens": 3}),
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["choices"][0]["text"], "Hello from the");
    let completion_usage = r.json()["usage"].clone();
    let r = post(
        &gw,
        "/v1/completions",
        &auth,
        &json!({"model": "gpt-4o-mini", "prompt": "Say hello", "max_tokens": 4, "stream": true}),
    )
    .await;
    assert_eq!(r.status, 200);
    let streamed = events(&r.body);
    assert_eq!(streamed.last().unwrap().1, json!("[DONE]"));
    assert!(streamed.iter().all(|(_, e)| e.get("usage").is_none()), "{streamed:?}");

    // Responses: whole and streamed, usage from `usage` and from `response.completed`.
    let body = json!({"model": "gpt-4o-mini", "input": "Say hello", "instructions": "Be brief", "max_output_tokens": 5});
    let r = post(&gw, "/api/v1/responses", &auth, &body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["output"][0]["content"][0]["text"], "Hello from the BluesMinds mock");
    let responses_usage = r.json()["usage"].clone();
    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    let r = post(&gw, "/v1/responses", &auth, &streaming).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let streamed = events(&r.body);
    let last = streamed.last().unwrap();
    assert_eq!(last.0.as_deref(), Some("response.completed"));
    assert_eq!(last.1["response"]["usage"], responses_usage, "relayed as sent");

    // Messages: whole and streamed; Anthropic's cache reads and writes are prompt tokens.
    let body = json!({"model": "claude-sonnet-4", "max_tokens": 6, "system": "Be brief",
        "messages": [{"role": "user", "content": "Say hello, at some length"}],
        "mock": {"cache_read": 2, "cache_write": 1}});
    let anthropic = [
        ("x-api-key", key.as_str()),
        ("anthropic-version", "2023-06-01"),
        ("anthropic-beta", "prompt-caching-2024-07-31"),
    ];
    let r = post(&gw, "/v1/messages", &anthropic, &body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["content"][0]["text"], "Hello from the BluesMinds mock upstream,");
    // Anthropic's version and beta headers reach the upstream; the client's key never does.
    let seen = mock.stats.last_anthropic_headers.lock().unwrap().clone();
    assert_eq!(
        seen,
        ["anthropic-version: 2023-06-01", "anthropic-beta: prompt-caching-2024-07-31"]
    );
    let auth_seen = mock.stats.last_authorization.lock().unwrap().clone();
    assert!(auth_seen.is_none_or(|a| !a.contains(&key)), "the client's key went upstream");
    let u = r.json()["usage"].clone();
    let anthropic_prompt = u["input_tokens"].as_u64().unwrap() + 3;
    assert_eq!(
        (u["cache_read_input_tokens"].as_u64(), u["cache_creation_input_tokens"].as_u64()),
        (Some(2), Some(1))
    );
    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    let r = post(&gw, "/api/v1/messages", &[("x-api-key", &key)], &streaming).await;
    assert_eq!(r.status, 200);
    let names: Vec<_> = events(&r.body).into_iter().filter_map(|(n, _)| n).collect();
    assert_eq!(names.first().map(String::as_str), Some("message_start"));
    assert_eq!(names.last().map(String::as_str), Some("message_stop"));

    let rows = rows(&gw, &cookie, 6).await;
    let summary: Vec<_> = rows
        .iter()
        .map(|r| (r["endpoint"].as_str().unwrap(), r["streamed"].as_bool().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            ("completions", false),
            ("completions", true),
            ("responses", false),
            ("responses", true),
            ("messages", false),
            ("messages", true),
        ]
    );
    for row in &rows {
        assert_eq!(row["status_code"], 200, "{row}");
        assert_eq!(row["usage_estimated"], false, "reported, not estimated: {row}");
        assert!(row["cost_micros"].as_i64().unwrap() > 0, "{row}");
    }
    let prompt = completion_usage["prompt_tokens"].as_u64().unwrap();
    assert_eq!(tokens(&rows[0]), (prompt, 3));
    assert_eq!(tokens(&rows[1]), (prompt, 4), "the stream's usage chunk, stripped but read");
    let input = responses_usage["input_tokens"].as_u64().unwrap();
    assert_eq!(tokens(&rows[2]), (input, 5));
    assert_eq!(tokens(&rows[3]), (input, 5));
    assert_eq!(tokens(&rows[4]), (anthropic_prompt, 6));
    assert_eq!(tokens(&rows[5]), (anthropic_prompt, 6), "message_start and message_delta");
}

#[tokio::test]
async fn a_cut_stream_ends_in_its_apis_error_event_and_is_charged_what_it_generated() {
    let mock = Mock::start().await;
    let gw = gateway(&mock).await;
    let (cookie, key) = user(&gw, "cut@example.com", json!({"name": "all"})).await;
    let auth = bearer(&key);
    let auth = [("authorization", auth.as_str())];
    let r = post(
        &gw,
        "/v1/messages",
        &auth,
        &json!({"model": "claude-sonnet-4", "max_tokens": 8, "stream": true,
        "messages": [{"role": "user", "content": "hi"}], "mock": {"fail": "midstream"}}),
    )
    .await;
    let last = events(&r.body).pop().unwrap();
    assert_eq!(last.0.as_deref(), Some("error"));
    assert_eq!(
        (last.1["type"].as_str(), last.1["error"]["type"].as_str()),
        (Some("error"), Some("api_error"))
    );
    let r = post(
        &gw,
        "/v1/responses",
        &auth,
        &json!({"model": "gpt-4o-mini", "input": "hi", "stream": true,
        "mock": {"fail": "midstream"}}),
    )
    .await;
    let last = events(&r.body).pop().unwrap();
    assert_eq!((last.0.as_deref(), last.1["type"].as_str()), (Some("error"), Some("error")));
    assert_eq!(last.1["code"], "upstream_error");
    let rows = rows(&gw, &cookie, 2).await;
    for row in &rows {
        assert_eq!(row["usage_estimated"], true, "{row}");
        assert!(row["error_message"].as_str().unwrap().contains("mid-stream"), "{row}");
    }
}

#[tokio::test]
async fn the_new_routes_refuse_what_chat_refuses_in_the_shape_their_sdk_reads() {
    let mock = Mock::start().await;
    let gw = gateway(&mock).await;
    let (_, key) = user(&gw, "refusals@example.com", json!({"name": "all"})).await;
    let (_, chat_only) =
        user(&gw, "chat-only@example.com", json!({"name": "chat", "scopes": ["chat.completions"]}))
            .await;
    let message = json!({"model": "claude-sonnet-4", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]});
    let anthropic = |r: &Reply| -> (u16, String) {
        let v = r.json();
        assert_eq!(v["type"], "error", "{v}");
        (r.status, v["error"]["type"].as_str().unwrap().to_owned())
    };

    // Anthropic's shape on its routes: a bad key, a missing scope, an unknown model, a field
    // that steers the upstream, no key at all, a wrong method.
    let r = post(&gw, "/v1/messages", &[("x-api-key", "bm_nope_nope")], &message).await;
    assert_eq!(anthropic(&r), (401, "authentication_error".into()));
    let r = post(&gw, "/v1/messages", &[("x-api-key", &chat_only)], &message).await;
    assert_eq!(anthropic(&r), (403, "permission_error".into()));
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("'messages' scope"));
    let mut unknown = message.clone();
    unknown["model"] = json!("claude-nope");
    let r = post(&gw, "/v1/messages", &[("x-api-key", &key)], &unknown).await;
    assert_eq!(anthropic(&r), (404, "not_found_error".into()));
    for steering in [json!({"api_base": "http://evil"}), json!({"metadata": {"api_key": "x"}})] {
        let mut body = message.clone();
        body.as_object_mut().unwrap().extend(steering.as_object().unwrap().clone());
        let r = post(&gw, "/v1/messages", &[("x-api-key", &key)], &body).await;
        assert_eq!(anthropic(&r), (400, "invalid_request_error".into()));
        assert!(r.json()["error"]["message"].as_str().unwrap().contains("not allowed"));
    }
    let r = post(&gw, "/api/v1/messages", &[], &message).await;
    assert_eq!(anthropic(&r), (401, "authentication_error".into()));
    // An Anthropic SDK's model list: its key as x-api-key, its list and error shapes.
    let version = ("anthropic-version", "2023-06-01");
    let r = request_with(gw.addr, "GET", "/v1/models", &[("x-api-key", &key), version], b"").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let list = r.json();
    assert_eq!(
        (list["has_more"].as_bool(), list["data"][0]["type"].as_str()),
        (Some(false), Some("model"))
    );
    let ids: Vec<_> =
        list["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["claude-sonnet-4", "gpt-4o-mini"]);
    assert_eq!(list["first_id"], "claude-sonnet-4");
    let r = request_with(gw.addr, "GET", "/v1/models", &[("x-api-key", "bm_no_no"), version], b"")
        .await;
    assert_eq!(anthropic(&r), (401, "authentication_error".into()));
    let r = request_with(gw.addr, "GET", "/v1/messages", &[("x-api-key", &key)], b"").await;
    assert_eq!(anthropic(&r), (405, "invalid_request_error".into()));
    let r = post(
        &gw,
        "/v1/messages",
        &[("x-api-key", &key)],
        &json!({"model": "claude-sonnet-4", "max_tokens": 1}),
    )
    .await;
    assert_eq!(anthropic(&r), (400, "invalid_request_error".into()));
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("'messages'"));

    // OpenAI's shape on Responses and completions, with their own scopes.
    let chat_auth = bearer(&chat_only);
    for (path, body) in [
        ("/v1/responses", json!({"model": "gpt-4o-mini", "input": "hi"})),
        ("/v1/completions", json!({"model": "gpt-4o-mini", "prompt": "hi"})),
    ] {
        let r = post(&gw, path, &[("authorization", &chat_auth)], &body).await;
        assert_eq!(r.status, 403, "{path}");
        assert_eq!(r.openai_error()["code"], "permission_denied", "{path}");
        let mut evil = body.clone();
        evil["base_url"] = json!("http://evil");
        let r = post(&gw, path, &[("authorization", &bearer(&key))], &evil).await;
        assert_eq!(
            (r.status, r.openai_error()["param"].as_str()),
            (400, Some("base_url")),
            "{path}"
        );
    }
    let r = post(
        &gw,
        "/v1/completions",
        &[("authorization", &bearer(&key))],
        &json!({"model": "gpt-4o-mini"}),
    )
    .await;
    assert_eq!((r.status, r.openai_error()["param"].as_str()), (400, Some("prompt")));
    assert_eq!(mock.requests(), 0, "nothing refused reached the upstream");
}

#[tokio::test]
async fn limits_hold_on_the_new_routes_across_them() {
    let mock = Mock::start().await;
    let gw = gateway(&mock).await;
    let (_, key) =
        user(&gw, "limited@example.com", json!({"name": "rpm", "rate_limit_rpm": 3})).await;
    let auth = bearer(&key);
    let calls = [
        (
            "/v1/messages",
            json!({"model": "claude-sonnet-4", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}),
        ),
        ("/v1/responses", json!({"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 2})),
        ("/v1/completions", json!({"model": "gpt-4o-mini", "prompt": "hi", "max_tokens": 2})),
    ];
    for (path, body) in &calls {
        let r = post(&gw, path, &[("authorization", &auth)], body).await;
        assert_eq!(r.status, 200, "{path}: {:?}", r.body);
    }
    // One minute's three requests are spent, whichever route asks next.
    let r = post(&gw, calls[0].0, &[("x-api-key", &key)], &calls[0].1).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    assert!(r.header("retry-after").is_some());
    let r = post(&gw, calls[1].0, &[("authorization", &auth)], &calls[1].1).await;
    assert_eq!((r.status, r.openai_error()["code"].as_str()), (429, Some("rate_limit_exceeded")));
    assert_eq!(mock.requests(), 3);
}

/// The id of the server whose `base_url` is `url`, as the admin API lists it.
async fn server_id(gw: &Gateway, admin: &str, url: &str) -> String {
    let r = request_with(gw.addr, "GET", "/api/admin/servers", &[("cookie", admin)], b"").await;
    let servers = r.json()["data"].as_array().cloned().unwrap();
    let s = servers.iter().find(|s| s["base_url"] == url).unwrap_or_else(|| panic!("{servers:?}"));
    s["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn model_routes_alias_split_and_fall_back_to_another_model() {
    let mock = Mock::start().await;
    let url = mock.url();
    // A server that refuses every connection: the route's pinned target fails before a byte.
    let dead = format!("http://127.0.0.1:{}", support::free_port());
    let gw = Gateway::start(
        &[],
        &[
            ("LITELLM_SERVER_1_URL", &url),
            ("LITELLM_SERVER_1_MODELS", "gpt-4o,gpt-4o-mini"),
            ("LITELLM_SERVER_2_URL", &dead),
            ("LITELLM_SERVER_2_MODELS", "gpt-4o"),
        ],
    )
    .await;
    let admin = support::admin_session(&gw).await;
    let (live_id, dead_id) =
        (server_id(&gw, &admin, &url).await, server_id(&gw, &admin, &dead).await);
    let admin_h = [("cookie", admin.as_str())];
    let route = |body: Value| {
        let admin = admin.clone();
        let gw = &gw;
        async move {
            request_with(
                gw.addr,
                "POST",
                "/api/admin/models",
                &[("cookie", &admin)],
                body.to_string().as_bytes(),
            )
            .await
        }
    };
    let r = route(json!({"name": "cheap", "targets": [{"model": "gpt-4o-mini"}]})).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = route(json!({"name": "smart", "targets": [{"server_id": dead_id, "model": "gpt-4o"}],
        "fallbacks": ["cheap"]}))
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let smart = r.json();
    assert_eq!(smart["targets"][0]["weight"], 1, "the default weight");
    let r = route(json!({"name": "split", "targets": [
        {"server_id": live_id, "model": "gpt-4o", "weight": 1}, {"model": "gpt-4o-mini", "weight": 1}]}))
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);

    // What an admin gets wrong is refused with the field at fault.
    for (body, status, param) in [
        (json!({"name": "smart", "targets": [{"model": "x"}]}), 409, "name"),
        (
            json!({"name": "loop", "targets": [{"model": "x"}], "fallbacks": ["loop"]}),
            400,
            "fallbacks",
        ),
        (json!({"name": "none", "targets": []}), 400, "targets"),
        (json!({"name": "w", "targets": [{"model": "x", "weight": 0}]}), 400, "targets"),
        (
            json!({"name": "ghost", "targets": [{"server_id": uuid::Uuid::new_v4().to_string(), "model": "x"}]}),
            400,
            "targets",
        ),
    ] {
        let r = route(body.clone()).await;
        assert_eq!((r.status, r.openai_error()["param"].as_str()), (status, Some(param)), "{body}");
    }
    let r = route(json!({"name": "odd", "targets": [{"model": "x", "provider": "y"}]})).await;
    assert_eq!(r.status, 400, "unknown target fields are refused");

    let (cookie, key) = user(&gw, "routes@example.com", json!({"name": "all"})).await;
    let auth = bearer(&key);
    let auth = [("authorization", auth.as_str())];
    let chat = |model: &str, stream: bool| json!({"model": model, "max_tokens": 2, "stream": stream, "messages": [{"role": "user", "content": "hi"}]});
    // The alias: the pinned target's server is down, so the request falls back to `cheap`,
    // which the mock serves as gpt-4o-mini; the answer and the row say what served it.
    let r = post(&gw, "/v1/chat/completions", &auth, &chat("smart", false)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["model"], "gpt-4o-mini");
    let r = post(&gw, "/v1/chat/completions", &auth, &chat("smart", true)).await;
    assert_eq!(r.status, 200);
    assert!(events(&r.body).iter().any(|(_, e)| e["model"] == "gpt-4o-mini"));
    // The split: both targets serve a share.
    let mut served = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let r = post(&gw, "/v1/chat/completions", &auth, &chat("split", false)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        served.insert(r.json()["model"].as_str().unwrap().to_owned());
    }
    assert_eq!(served.into_iter().collect::<Vec<_>>(), ["gpt-4o", "gpt-4o-mini"]);
    let rows = rows(&gw, &cookie, 32).await;
    assert_eq!(
        (rows[0]["model"].as_str(), rows[1]["model"].as_str()),
        (Some("gpt-4o-mini"), Some("gpt-4o-mini"))
    );
    assert!(rows.iter().all(|r| r["status_code"] == 200 && r["cost_micros"].as_i64().unwrap() > 0));

    // /models lists the public names; a key's allowed models apply to the public name.
    let r = request_with(gw.addr, "GET", "/v1/models", &auth, b"").await;
    let ids: Vec<_> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    for name in ["cheap", "smart", "split", "gpt-4o", "gpt-4o-mini"] {
        assert!(ids.iter().any(|i| i == name), "{name} in {ids:?}");
    }
    let (_, only_smart) =
        user(&gw, "only-smart@example.com", json!({"name": "smart", "allowed_models": ["smart"]}))
            .await;
    let only = bearer(&only_smart);
    let r =
        post(&gw, "/v1/chat/completions", &[("authorization", &only)], &chat("smart", false)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let r =
        post(&gw, "/v1/chat/completions", &[("authorization", &only)], &chat("gpt-4o-mini", false))
            .await;
    assert_eq!(r.status, 403);

    // Turned off, the name is gone; deleted, it is gone for good.
    let id = smart["id"].as_str().unwrap();
    let path = format!("/api/admin/models/{id}");
    let r = request_with(gw.addr, "PATCH", &path, &admin_h, br#"{"is_active": false}"#).await;
    assert_eq!((r.status, r.json()["is_active"].as_bool()), (200, Some(false)));
    let r = post(&gw, "/v1/chat/completions", &auth, &chat("smart", false)).await;
    assert_eq!((r.status, r.openai_error()["code"].as_str()), (404, Some("model_not_found")));
    let r = request_with(gw.addr, "GET", "/api/admin/models", &admin_h, b"").await;
    let names: Vec<_> = r.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["cheap", "smart", "split"]);
    let r = request_with(gw.addr, "DELETE", &path, &admin_h, b"").await;
    assert_eq!(r.status, 200);
    let r = request_with(gw.addr, "DELETE", &path, &admin_h, b"").await;
    assert_eq!(r.status, 404);
    // Users may not manage routes.
    let r = request_with(gw.addr, "GET", "/api/admin/models", &[("cookie", &cookie)], b"").await;
    assert_eq!(r.status, 403);
}
