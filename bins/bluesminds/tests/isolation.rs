//! Tenant isolation through the real binary: a hostile tenant with a free key can neither
//! escape metering nor hurt other tenants. Each test plays one attack against an upstream that
//! behaves like LiteLLM under uvicorn (`bluesminds-mock`: last duplicate key wins, a body its
//! parser gives up on is a 500, usage can be withheld, tool calls and reasoning can be
//! streamed) while another tenant's traffic goes on, and checks both tenants' answers and rows.
//! docs/SECURITY.md names the rule each test proves.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use gateway_store::entity::usage_logs;
use sea_orm::EntityTrait;
use serde_json::json;
use support::{Gateway, Mock, PATIENCE, Reply, post_with_key, request_with, user_with_key};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MODELS: &str = "gpt-4,text-embedding-3-small";

/// The mock's words, cycled: "Hello from the BluesMinds mock upstream, have fun." is 51 bytes
/// with the spaces between the words and after the last.
const CYCLE_BYTES: u64 = 51;

/// The bytes of text the mock generates for `words` words ("w1 w2 ... wn").
fn generated_bytes(words: u64) -> u64 {
    const LENS: [u64; 8] = [5, 4, 3, 10, 4, 9, 4, 4];
    assert_eq!(LENS.iter().sum::<u64>() + 8, CYCLE_BYTES);
    let cycles = words / 8;
    let rest: u64 = LENS[..(words % 8) as usize].iter().sum();
    cycles * CYCLE_BYTES + rest + (words % 8) - 1
}

async fn sqlite_rows(gw: &Gateway) -> Vec<usage_logs::Model> {
    let url = format!("sqlite://{}?mode=ro", gw.db_path().display());
    let store =
        gateway_store::Store::connect(&url, &gateway_store::StoreConfig::default()).await.unwrap();
    usage_logs::Entity::find().all(store.connection()).await.unwrap()
}

fn chat(model: &str, extra: &serde_json::Value) -> serde_json::Value {
    let mut body =
        json!({"model": model, "messages": [{"role": "user", "content": "Hello there!"}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

/// A well-behaved tenant's request: the mock answers `max_tokens` words and reports usage.
async fn polite(gw: &Gateway, key: &str, n: u64, stream: bool) -> Reply {
    let body = chat("gpt-4", &json!({"max_tokens": n, "stream": stream}));
    let r = post_with_key(gw.addr, "/v1/chat/completions", key, &body).await;
    assert_eq!(r.status, 200, "the other tenant is served: {:?}", r.body);
    r
}

/// A raw body from a key, as a hostile client would write it (not re-serialised).
async fn raw(gw: &Gateway, key: &str, body: &[u8]) -> Reply {
    let auth = format!("Bearer {key}");
    request_with(gw.addr, "POST", "/v1/chat/completions", &[("authorization", &auth)], body).await
}

/// Fault 1: `"stream_options": null` after the gateway's own, an upstream that never sends
/// usage, and answers made of tool calls and reasoning. Every way, the free key is charged
/// what it generated, the first answer exhausts its 1,000-token day, and the next is refused.
#[tokio::test]
async fn metering_cannot_be_switched_off_by_the_client() {
    let mock = Mock::start().await;
    let url = mock.url();
    let mut gw = Gateway::start(
        &[],
        &[("LITELLM_SERVER_1_URL", url.as_str()), ("LITELLM_SERVER_1_MODELS", MODELS)],
    )
    .await;
    let other = user_with_key(&gw, "other@example.com", json!({"name": "o"})).await;
    let attacks: [(&str, &[u8]); 5] = [
        // The gateway's field first, the client's null last: a Python upstream keeps the last.
        ("null after", br#"{"model":"gpt-4","stream":true,"messages":[{"role":"user","content":"hi"}],"mock":{"shape":"tool_calls","tokens":8000},"stream_options":null}"#),
        ("duplicate", br#"{"model":"gpt-4","stream":true,"stream_options":{"include_usage":true},"messages":[],"stream_options":null,"mock":{"tokens":8000}}"#),
        ("false", br#"{"model":"gpt-4","stream":true,"stream_options":{"include_usage":false},"messages":[],"mock":{"shape":"reasoning","tokens":8000}}"#),
        ("no usage stream", br#"{"model":"gpt-4","stream":true,"stream_options":{},"messages":[],"mock":{"shape":"tool_calls","tokens":8000,"omit_usage":true}}"#),
        ("no usage answer", br#"{"model":"gpt-4","messages":[],"mock":{"shape":"tool_calls","tokens":8000,"omit_usage":true}}"#),
    ];
    let mut outcomes = Vec::new();
    for (i, (name, body)) in attacks.iter().enumerate() {
        let key = support::free_user_with_key(
            gw.addr,
            &format!("free{i}@example.com"),
            json!({"name": "f"}),
        )
        .await;
        let first = raw(&gw, &key, body).await;
        polite(&gw, &other, 3, i % 2 == 0).await;
        let second = raw(&gw, &key, body).await;
        polite(&gw, &other, 5, i % 2 == 1).await;
        outcomes.push((*name, key, first, second));
    }
    for (name, _, first, second) in &outcomes {
        if *name == "duplicate" {
            // The gateway and the upstream could read different values: refused outright.
            assert_eq!(first.status, 400, "{name}: {:?}", first.body);
            assert_eq!(first.openai_error()["param"], "stream_options");
            continue;
        }
        assert_eq!(first.status, 200, "{name}: {:?}", first.body);
        let text = String::from_utf8_lossy(&first.body);
        // The client did not ask for the usage chunk, so it does not see it.
        assert!(!text.contains("\"usage\""), "{name}: usage shown to a client that did not ask");
        // The day's 1,000 tokens are spent (and, past 10,000, the minute's too).
        assert_eq!(second.status, 429, "{name}: {:?}", second.body);
        let code = second.openai_error()["code"].clone();
        assert!(code == "insufficient_quota" || code == "rate_limit_exceeded", "{name}: {code}");
    }
    gw.terminate().await;
    let (code, logs) = gw.wait().await;
    assert_eq!(code, Some(0), "{logs}");
    let rows = sqlite_rows(&gw).await;
    let row_of = |r: &Reply| {
        let id = r.header("x-request-id").unwrap();
        rows.iter().find(|row| row.request_id.to_string() == id).unwrap().clone()
    };
    // The mock counts one token a word; the estimate is a token per 4 bytes of what was
    // generated (docs/USAGE.md): the tool call's name "lookup" and its arguments.
    let tool_estimate = (generated_bytes(8000) + 6).div_ceil(4);
    for (name, _, first, _) in &outcomes {
        if *name == "duplicate" {
            let row = row_of(first);
            assert_eq!((row.status_code, row.total_tokens), (400, 0));
            continue;
        }
        let row = row_of(first);
        let expected = match *name {
            "null after" | "false" => (8000, false),
            _ => (tool_estimate, true),
        };
        assert_eq!(
            (row.completion_tokens as u64, row.usage_estimated),
            expected,
            "{name}: what the free key was charged"
        );
        assert!(row.prompt_tokens > 0, "{name}");
    }
    // The other tenant: ten requests, all answered, each recorded with the mock's counts.
    let theirs: Vec<_> = rows
        .iter()
        .filter(|r| r.api_key_id.is_some() && r.status_code == 200 && r.completion_tokens <= 5)
        .collect();
    assert_eq!(theirs.len(), 10, "{theirs:#?}");
    assert!(theirs.iter().all(|r| !r.usage_estimated && r.prompt_tokens == 4));
}

/// Fault 2: rows the database refuses. A model with a NUL is refused at the edge (400, a clean
/// row); a row Postgres refuses all the same, here one left in the spill file by an earlier
/// run, is quarantined while everything else is written, and is never replayed again.
#[tokio::test]
async fn one_tenant_cannot_stop_usage_recording_for_all() {
    let (db, env) = support::shared_backends(&[]).await;
    let mock = Mock::start().await;
    let url = mock.url();
    let dir = tempfile::tempdir().unwrap();
    // What an earlier run spilled: good rows with a poisoned one among them.
    let spill = dir.path().join("usage-spill.jsonl");
    let mut left: Vec<spilled::Record> = (0..30).map(|_| spilled::good()).collect();
    let mut poisoned = spilled::good();
    poisoned["model"] = json!("gpt-4\u{0}");
    left.insert(11, poisoned.clone());
    let lines: String = left.iter().map(|r| serde_json::to_string(r).unwrap() + "\n").collect();
    std::fs::write(&spill, lines).unwrap();
    let spill_str = spill.display().to_string();
    let mut env = support::env_refs(&env);
    env.extend([
        ("LITELLM_SERVER_1_URL", url.as_str()),
        ("LITELLM_SERVER_1_MODELS", MODELS),
        ("BLUESMINDS_USAGE__SPILL_PATH", spill_str.as_str()),
    ]);
    let gw = Gateway::start_in(tempfile::tempdir().unwrap(), &[], &env).await;
    let attacker =
        support::free_user_with_key(gw.addr, "nul@example.com", json!({"name": "a"})).await;
    let other = user_with_key(&gw, "victim@example.com", json!({"name": "v"})).await;
    let hostile = [
        r#"{"model":"gpt-4\u0000","messages":[]}"#,
        r#"{"model":"\u0000","messages":[]}"#,
        r#"{"model":"gpt-4\n\r","messages":[]}"#,
        r#"{"model":"gpt-4","messages":[],"litellm_\u0000":1}"#,
    ];
    let mut attacker_requests = 0;
    let mut other_requests = Vec::new();
    for round in 0..5 {
        for body in hostile {
            let r = raw(&gw, &attacker, body.as_bytes()).await;
            assert_eq!(r.status, 400, "{body}: {:?}", r.body);
            attacker_requests += 1;
        }
        other_requests.push(polite(&gw, &other, 2 + round, round % 2 == 0).await);
    }
    let all_rows = || usage_logs::Entity::find().all(db.store.connection());
    let expected = attacker_requests + other_requests.len() + 30;
    let started = std::time::Instant::now();
    let rows = loop {
        let rows = all_rows().await.unwrap();
        if rows.len() >= expected {
            break rows;
        }
        assert!(started.elapsed() < PATIENCE, "{} of {expected} rows", rows.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rows.len(), expected, "every row but the poisoned one, once");
    let poisoned_id = poisoned["request_id"].as_str().unwrap().to_owned();
    assert!(rows.iter().all(|r| r.request_id.to_string() != poisoned_id));
    for r in &other_requests {
        let id = r.header("x-request-id").unwrap();
        let row = rows.iter().find(|row| row.request_id.to_string() == id).unwrap();
        assert_eq!(row.status_code, 200);
        assert!(row.completion_tokens >= 2 && !row.usage_estimated);
    }
    let mine: Vec<_> = rows.iter().filter(|r| r.status_code == 400).collect();
    assert_eq!(mine.len(), attacker_requests, "the attacker's requests are recorded too");
    assert!(mine.iter().all(|r| !r.model.contains('\0') && r.is_error));
    let metrics =
        String::from_utf8(request_with(gw.addr, "GET", "/metrics", &[], b"").await.body.to_vec())
            .unwrap();
    assert!(metrics.contains("bluesminds_usage_quarantined_total 1\n"), "{metrics}");
    let quarantine = std::fs::read_to_string(format!("{spill_str}.quarantine")).unwrap();
    assert_eq!(quarantine.lines().count(), 1);
    assert!(quarantine.contains(&poisoned_id));
    assert!(!spill.exists(), "the spill file is replayed and gone");
}

/// The usage record's JSON-lines form, as the spill file holds it.
mod spilled {
    pub type Record = serde_json::Value;

    pub fn good() -> Record {
        serde_json::json!({
            "request_id": uuid::Uuid::now_v7(), "created_at": "2026-12-01T10:00:00Z",
            "user_id": uuid::Uuid::now_v7(), "api_key_id": null, "server_id": null,
            "endpoint": "chat.completions", "model": "gpt-4", "prompt_tokens": 1,
            "completion_tokens": 2, "total_tokens": 3, "cost_micros": 0, "latency_ms": 5,
            "upstream_latency_ms": 4, "status_code": 200, "is_error": false,
            "error_message": null, "streamed": false, "client_disconnected": false
        })
    }
}

async fn admin_health(gw: &Gateway, admin: &str) -> Vec<serde_json::Value> {
    let r = request_with(gw.addr, "GET", "/api/admin/health", &[("cookie", admin)], b"").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.json()["data"].as_array().unwrap().clone()
}

/// Fault 3: request content that every upstream fails. Too deep a body is refused before
/// anything is forwarded; a request that two servers fail goes back to its client and blames
/// no server; the other tenant is served throughout. A server that is at fault still has its
/// circuit opened, and never more than half the pool at once.
#[tokio::test]
async fn request_content_cannot_take_servers_away_from_others() {
    let mocks = [Mock::start().await, Mock::start().await, Mock::start().await];
    let urls: Vec<String> = mocks.iter().map(Mock::url).collect();
    let mut gw = Gateway::start(
        &[],
        &[
            ("LITELLM_SERVER_1_URL", urls[0].as_str()),
            ("LITELLM_SERVER_1_MODELS", MODELS),
            ("LITELLM_SERVER_2_URL", urls[1].as_str()),
            ("LITELLM_SERVER_2_MODELS", MODELS),
            ("LITELLM_SERVER_3_URL", urls[2].as_str()),
            ("LITELLM_SERVER_3_MODELS", MODELS),
        ],
    )
    .await;
    // On the enterprise tier: its requests reach the servers instead of its rate limits.
    let attacker = user_with_key(&gw, "deep@example.com", json!({"name": "a"})).await;
    let other = user_with_key(&gw, "bystander@example.com", json!({"name": "b"})).await;
    let forwarded = || mocks.iter().map(Mock::requests).sum::<u64>();
    let mut theirs = Vec::new();

    // 1,200 levels deep: a 400 from the gateway, nothing forwarded.
    let deep = format!(
        r#"{{"model":"gpt-4","messages":[{{"role":"user","content":"hi"}}],"x":{}1{}}}"#,
        "[".repeat(1200),
        "]".repeat(1200)
    );
    let before = forwarded();
    for _ in 0..5 {
        let r = raw(&gw, &attacker, deep.as_bytes()).await;
        assert_eq!(r.status, 400, "{:?}", r.body);
        assert!(r.openai_error()["message"].as_str().unwrap().contains("nested deeper"));
        theirs.push(polite(&gw, &other, 2, false).await);
    }
    assert_eq!(forwarded() - before, 5, "only the other tenant's requests were forwarded");

    // Nested as deep as the gateway allows, but an upstream that takes less would 500 on it
    // (as every mock does on this directive): two servers fail it, the client hears it, no
    // server is blamed, and the other tenant never notices.
    let poison = chat("gpt-4", &json!({"mock": {"fail": "status", "status": 500}}));
    for round in 0..10 {
        let before = forwarded();
        let r = post_with_key(gw.addr, "/v1/chat/completions", &attacker, &poison).await;
        assert_eq!(r.status, 500, "the upstream's answer goes back: {:?}", r.body);
        assert_eq!(forwarded() - before, 2, "round {round}: tried on two servers, not all");
        theirs.push(polite(&gw, &other, 2, round % 2 == 0).await);
    }
    // An upstream's 4xx is the request's: answered as is, after one attempt.
    for status in [400, 422] {
        let before = forwarded();
        let body = chat("gpt-4", &json!({"mock": {"fail": "status", "status": status}}));
        let r = post_with_key(gw.addr, "/v1/chat/completions", &attacker, &body).await;
        assert_eq!(r.status, status);
        assert_eq!(forwarded() - before, 1, "a 4xx is not retried elsewhere");
    }
    let admin = support::admin_session(&gw).await;
    let health = admin_health(&gw, &admin).await;
    assert_eq!(health.len(), 3);
    assert!(health.iter().all(|s| s["health"]["circuit_open"] == false), "{health:#?}");
    assert!(health.iter().all(|s| s["health"]["consecutive_failures"] == 0), "{health:#?}");

    // The other tenant's requests are all recorded, with the mock's counts.
    gw.terminate().await;
    let (code, logs) = gw.wait().await;
    assert_eq!(code, Some(0), "{logs}");
    let rows = sqlite_rows(&gw).await;
    for r in &theirs {
        let id = r.header("x-request-id").unwrap();
        let row = rows.iter().find(|row| row.request_id.to_string() == id).unwrap();
        assert_eq!((row.status_code, row.completion_tokens, row.usage_estimated), (200, 2, false));
    }
    assert_eq!(theirs.len(), 15);
}

/// What is the server's fault still opens its circuit: three of four servers fail every
/// request that the fourth answers. No more than half the pool is taken out at once; once two
/// are out, every request is answered. Before that, a request that two failing servers happen
/// to fail in turn goes back to its client as their 500 (the rule that keeps request content
/// from opening circuits cannot tell these apart).
#[tokio::test]
async fn failing_servers_are_ejected_but_never_more_than_half_the_pool() {
    let failing = bluesminds_mock::MockConfig { fail_rate: 1.0, ..Default::default() };
    let mocks = [
        Mock::start_on("127.0.0.1:0", failing.clone()).await,
        Mock::start_on("127.0.0.1:0", failing.clone()).await,
        Mock::start_on("127.0.0.1:0", failing).await,
        Mock::start().await,
    ];
    let urls: Vec<String> = mocks.iter().map(Mock::url).collect();
    let mut env = Vec::new();
    for (i, url) in urls.iter().enumerate() {
        env.push((format!("LITELLM_SERVER_{}_URL", i + 1), url.clone()));
        env.push((format!("LITELLM_SERVER_{}_MODELS", i + 1), MODELS.to_owned()));
    }
    let gw = Gateway::start(&[], &support::env_refs(&env)).await;
    let key = user_with_key(&gw, "many@example.com", json!({"name": "m"})).await;
    let admin = support::admin_session(&gw).await;
    let open_circuits = || async {
        let health = admin_health(&gw, &admin).await;
        health.iter().filter(|s| s["health"]["circuit_open"] == true).count()
    };
    let mut sent = 0;
    while open_circuits().await < 2 {
        let body = chat("gpt-4", &json!({"max_tokens": 2}));
        let r = post_with_key(gw.addr, "/v1/chat/completions", &key, &body).await;
        assert!(r.status == 200 || r.status == 500, "{}: {:?}", r.status, r.body);
        sent += 1;
        assert!(sent < 200, "two circuits should have opened by now");
    }
    for i in 0..20 {
        polite(&gw, &key, 2, i % 3 == 0).await;
    }
    let health = admin_health(&gw, &admin).await;
    let open: Vec<&str> = health
        .iter()
        .filter(|s| s["health"]["circuit_open"] == true)
        .map(|s| s["base_url"].as_str().unwrap())
        .collect();
    assert_eq!(open.len(), 2, "half of four: {health:#?}");
    assert!(!open.contains(&urls[3].as_str()), "the good server stays in");
    // The third failing server stays in service: its failures are counted, not acted on.
    let third = health
        .iter()
        .find(|s| s["base_url"] != urls[3].as_str() && s["health"]["circuit_open"] == false)
        .unwrap();
    assert!(third["health"]["consecutive_failures"].as_u64().unwrap() >= 3, "{third:#?}");
}

/// Request heads beyond 16 KB are refused with 431, and do not hold memory.
#[tokio::test]
async fn oversized_request_headers_get_431() {
    let gw = Gateway::start(&[], &[]).await;
    let send = |size: usize| async move {
        let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let filler = "a".repeat(size);
        let head = format!("GET /healthz HTTP/1.1\r\nhost: x\r\nx-filler: {filler}\r\n\r\n");
        let _ = conn.write_all(head.as_bytes()).await;
        let mut buf = vec![0u8; 1024];
        let n = tokio::time::timeout(PATIENCE, conn.read(&mut buf)).await.unwrap().unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(send(15 * 1024).await.starts_with("HTTP/1.1 200"), "a big but allowed head");
    assert!(send(17 * 1024).await.starts_with("HTTP/1.1 431"));
    assert!(send(400 * 1024).await.starts_with("HTTP/1.1 431"));

    // HTTP/2 (h2c): the header list is capped alike.
    let h2 = |size: usize| async move {
        let io =
            hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(gw.addr).await.unwrap());
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get(format!("http://{}/healthz", gw.addr))
            .header("x-filler", "a".repeat(size))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        sender.send_request(req).await.map(|r| r.status().as_u16())
    };
    assert_eq!(h2(10 * 1024).await.unwrap(), 200);
    assert_eq!(h2(20 * 1024).await.unwrap(), 431);
}

/// One hostile body, of the kinds a tenant could try against the gateway or its upstreams.
fn hostile(rng: &mut fastrand::Rng) -> Vec<u8> {
    const READ: [&str; 6] =
        ["model", "stream", "stream_options", "max_tokens", "messages", "metadata"];
    let valid = |extra: &str| {
        format!(r#"{{"model":"gpt-4","messages":[{{"role":"user","content":"x"}}]{extra}}}"#)
    };
    let control = |rng: &mut fastrand::Rng| char::from_u32(rng.u32(0..0x20)).unwrap();
    let body = match rng.u8(0..12) {
        0 => {
            let depth = rng.usize(65..2000);
            valid(&format!(r#","tools":{}0{}"#, "[".repeat(depth), "]".repeat(depth)))
        }
        1 => {
            let model = format!("gpt-4{}", control(rng));
            serde_json::to_string(&json!({"model": model, "messages": []})).unwrap()
        }
        2 => {
            let field = READ[rng.usize(0..READ.len())];
            let value = match field {
                "model" => r#""gpt-4""#,
                "stream" => "true",
                "stream_options" => "null",
                "max_tokens" => "100000",
                "messages" => "[]",
                _ => "{}",
            };
            valid(&format!(r#","{field}":{value},"stream":true"#))
                .replace(r#""stream":true,"stream":true"#, r#""stream":true,"stream":false"#)
        }
        3 => {
            let options =
                ["null", "false", "{}", r#"{"include_usage":false}"#, "[]"][rng.usize(0..5)];
            let shape = ["content", "tool_calls", "reasoning"][rng.usize(0..3)];
            valid(&format!(
                r#","stream":true,"stream_options":{options},"mock":{{"shape":"{shape}","tokens":{},"omit_usage":{}}}"#,
                rng.u32(1..400),
                rng.bool()
            ))
        }
        4 => {
            let names = ["api_base", "base_url", "api_key", "user_config", "litellm_x"];
            let name = names[rng.usize(0..names.len())];
            if rng.bool() {
                valid(&format!(r#","{name}":"http://127.0.0.1:1""#))
            } else {
                valid(&format!(r#","metadata":{{"{name}\\u{:04x}":1}}"#, u32::from(control(rng))))
            }
        }
        5 => {
            let mut b = valid("").into_bytes();
            let at = b.iter().position(|c| *c == b'x').unwrap();
            b[at] = [0xff, 0xc3, 0x80, 0xfe][rng.usize(0..4)];
            return b;
        }
        6 => {
            let b = valid(r#","stream":true"#);
            b[..rng.usize(1..b.len())].to_owned()
        }
        7 => valid(&format!(
            r#","mock":{{"fail":"status","status":{}}}"#,
            [500, 502, 503, 400, 422, 307][rng.usize(0..6)]
        )),
        8 => valid(
            [
                r#","stream":"yes""#,
                r#","max_tokens":-1"#,
                r#","max_tokens":1e30"#,
                r#","stream_options":7"#,
            ][rng.usize(0..4)],
        )
        .replace(
            r#""model":"gpt-4""#,
            if rng.bool() { r#""model":4"# } else { r#""model":"gpt-4""# },
        ),
        9 => serde_json::to_string(
            &json!({"model": "m".repeat(rng.usize(257..5000)), "messages": []}),
        )
        .unwrap(),
        10 => return (0..rng.usize(1..200)).map(|_| rng.u8(..)).collect(),
        _ => serde_json::to_string(&json!({"model": "gpt-4\u{202e}\u{fffd}", "messages": []}))
            .unwrap(),
    };
    body.into_bytes()
}

/// Random hostile bodies from one key (seeded, so a failure names its seed) while another key
/// sends ordinary requests: the other key's answers and rows are exactly what they would be
/// alone, every request of both keys leaves one row, nothing is quarantined, and no circuit
/// opens.
#[tokio::test]
async fn random_hostile_bodies_from_one_key_leave_another_key_unaffected() {
    let (db, env) = support::shared_backends(&[]).await;
    let mocks = [Mock::start().await, Mock::start().await];
    let urls: Vec<String> = mocks.iter().map(Mock::url).collect();
    let mut env = support::env_refs(&env);
    env.extend([
        ("LITELLM_SERVER_1_URL", urls[0].as_str()),
        ("LITELLM_SERVER_1_MODELS", MODELS),
        ("LITELLM_SERVER_2_URL", urls[1].as_str()),
        ("LITELLM_SERVER_2_MODELS", MODELS),
    ]);
    let gw = Gateway::start(&[], &env).await;
    // Both on the enterprise tier, so the attacker's bodies reach the upstreams, not a 429.
    let attacker = user_with_key(&gw, "hostile@example.com", json!({"name": "h"})).await;
    let other = user_with_key(&gw, "calm@example.com", json!({"name": "c"})).await;
    let mut theirs = Vec::new();
    let mut hostile_sent = 0;
    for seed in 0..4u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        for i in 0..60 {
            let body = hostile(&mut rng);
            let r = raw(&gw, &attacker, &body).await;
            hostile_sent += 1;
            assert!(
                r.status >= 400 || r.status == 200,
                "seed {seed} #{i}: {} for {:?}",
                r.status,
                String::from_utf8_lossy(&body)
            );
            if r.status >= 400 {
                let e = r.openai_error();
                // A 5xx is an upstream's answer (or the gateway's word about the upstream),
                // never the gateway failing.
                assert_ne!(e["code"], "internal_error", "seed {seed} #{i}: {e}");
                assert_ne!(e["code"], "no_healthy_upstream", "seed {seed} #{i}: {e}");
            }
            if i % 3 == 0 {
                let n = 1 + (i as u64 % 7);
                let reply = polite(&gw, &other, n, i % 2 == 0).await;
                theirs.push((reply.header("x-request-id").unwrap().to_owned(), n));
            }
        }
    }
    let admin = support::admin_session(&gw).await;
    let health = admin_health(&gw, &admin).await;
    assert!(health.iter().all(|s| s["health"]["circuit_open"] == false), "{health:#?}");

    let expected = hostile_sent + theirs.len();
    let started = std::time::Instant::now();
    let rows = loop {
        let rows = usage_logs::Entity::find().all(db.store.connection()).await.unwrap();
        if rows.len() >= expected {
            break rows;
        }
        assert!(started.elapsed() < PATIENCE, "{} of {expected} rows", rows.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rows.len(), expected, "one row per request of either key");
    let their_key = rows
        .iter()
        .find(|r| r.request_id.to_string() == theirs[0].0)
        .and_then(|r| r.api_key_id)
        .unwrap();
    let their_rows: Vec<_> = rows.iter().filter(|r| r.api_key_id == Some(their_key)).collect();
    assert_eq!(their_rows.len(), theirs.len());
    for (id, n) in &theirs {
        let row = their_rows.iter().find(|r| r.request_id.to_string() == *id).unwrap();
        assert_eq!(
            (row.status_code, row.prompt_tokens, row.completion_tokens as u64, row.usage_estimated),
            (200, 4, *n, false),
            "{id}"
        );
    }
    let metrics =
        String::from_utf8(request_with(gw.addr, "GET", "/metrics", &[], b"").await.body.to_vec())
            .unwrap();
    assert!(metrics.contains("bluesminds_usage_quarantined_total 0\n"), "{metrics}");
}
