//! End-to-end tests of the server skeleton through the real binary: error bodies, request ids,
//! limits, timeouts against slow clients, load shedding, graceful shutdown and config errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::type_complexity)]

mod support;

use std::time::Duration;

use support::{Gateway, PATIENCE, command, request, request_with};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SIGNUP: &str = "/api/auth/signup";

fn signup_body(email: &str) -> Vec<u8> {
    serde_json::json!({"email": email, "password": "long enough password", "full_name": "T"})
        .to_string()
        .into_bytes()
}

#[tokio::test]
async fn healthz_answers_and_every_response_has_a_fresh_request_id() {
    let gw = Gateway::start(&[], &[]).await;
    let a = request(gw.addr, "GET", "/healthz", b"").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.json()["status"], "ok");
    let b = request(gw.addr, "GET", "/nope", b"").await;
    let c = request(gw.addr, "POST", "/healthz", b"").await;
    let ids: Vec<_> =
        [&a, &b, &c].iter().map(|r| r.header("x-request-id").unwrap().to_owned()).collect();
    for id in &ids {
        uuid::Uuid::parse_str(id).unwrap_or_else(|_| panic!("request id {id:?} is not a UUID"));
    }
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2], "{ids:?}");

    assert_eq!(b.status, 404);
    assert_eq!(b.openai_error()["code"], "not_found");
    assert_eq!(c.status, 405);
    assert_eq!(c.header("allow"), Some("GET, HEAD"));
    assert_eq!(c.openai_error()["code"], "method_not_allowed");

    let ready = request(gw.addr, "GET", "/readyz", b"").await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    assert_eq!(ready.json()["checks"]["database"], "ok");
    assert_eq!(ready.json()["checks"]["redis"], "not configured");

    // The original product's health paths answer the same.
    for (path, like) in
        [("/api/health", &a), ("/api/health/live", &a), ("/api/health/ready", &ready)]
    {
        let r = request(gw.addr, "GET", path, b"").await;
        assert_eq!(
            (r.status, r.json()["status"].clone()),
            (like.status, like.json()["status"].clone()),
            "{path}"
        );
    }
}

/// Every response carries the security headers (an answer, an error, a page, a refusal of a
/// key); HSTS only when the public URL is https (the gateway behind TLS).
#[tokio::test]
async fn every_response_carries_the_security_headers_and_hsts_only_behind_tls() {
    let plain = Gateway::start(&[], &[]).await;
    let tls = Gateway::start(&[], &[("BLUESMINDS_PUBLIC_URL", "https://gw.example.com")]).await;
    for (gw, hsts) in [(&plain, None), (&tls, Some("max-age=31536000"))] {
        let replies = [
            request(gw.addr, "GET", "/healthz", b"").await,
            request(gw.addr, "GET", "/nope", b"").await,
            request(gw.addr, "GET", "/login", b"").await,
            request_with(gw.addr, "GET", "/v1/models", &[("authorization", "Bearer bm_x_y")], b"")
                .await,
        ];
        for r in &replies {
            assert_eq!(r.header("x-content-type-options"), Some("nosniff"), "{}", r.status);
            assert_eq!(r.header("x-frame-options"), Some("DENY"), "{}", r.status);
            assert_eq!(r.header("referrer-policy"), Some("same-origin"), "{}", r.status);
            assert_eq!(r.header("strict-transport-security"), hsts, "{}", r.status);
        }
        assert_eq!(replies.map(|r| r.status), [200, 404, 200, 401]);
    }
}

#[tokio::test]
async fn bad_json_and_oversized_bodies_get_openai_errors_and_write_nothing() {
    let gw = Gateway::start(&[], &[("BLUESMINDS_SERVER__MAX_BODY_BYTES", "1024")]).await;
    let bad = request(gw.addr, "POST", SIGNUP, b"{\"email\": ").await;
    assert_eq!(bad.status, 400);
    let e = bad.openai_error();
    assert_eq!(e["type"], "invalid_request_error");
    assert!(e["message"].as_str().unwrap().contains("parse the JSON"), "{e}");

    // Over the limit with a Content-Length: refused before reading.
    let mut big = signup_body("big@example.com");
    big.resize(2048, b' ');
    let too_large = request(gw.addr, "POST", SIGNUP, &big).await;
    assert_eq!(too_large.status, 413);
    assert_eq!(too_large.openai_error()["code"], "request_too_large");
    assert!(too_large.header("x-request-id").is_some());

    // Over the limit without one (chunked): refused while reading.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let chunk = vec![b' '; 1500];
    let mut raw = format!(
        "POST {SIGNUP} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n{:x}\r\n",
        chunk.len()
    )
    .into_bytes();
    raw.extend_from_slice(&chunk);
    raw.extend_from_slice(b"\r\n0\r\n\r\n");
    s.write_all(&raw).await.unwrap();
    let mut reply = String::new();
    tokio::time::timeout(PATIENCE, s.read_to_string(&mut reply)).await.unwrap().ok();
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");

    // Nothing was written by any of them: the email is still free.
    let ok = request(gw.addr, "POST", SIGNUP, &signup_body("big@example.com")).await;
    assert_eq!(ok.status, 201, "{:?}", ok.body);
}

#[tokio::test]
async fn signup_refuses_fields_a_user_may_not_set() {
    let gw = Gateway::start(&[], &[]).await;
    for field in ["role", "tier", "status", "credits_micros", "id"] {
        let mut body: serde_json::Value =
            serde_json::from_slice(&signup_body("mass@example.com")).unwrap();
        body[field] = serde_json::json!("admin");
        let r = request(gw.addr, "POST", SIGNUP, body.to_string().as_bytes()).await;
        assert_eq!(r.status, 400, "{field}");
        assert!(r.openai_error()["message"].as_str().unwrap().contains(field));
    }
    let r = request(gw.addr, "POST", SIGNUP, &signup_body("Mass@Example.com")).await;
    assert_eq!(r.status, 201);
    let user = r.json();
    assert_eq!(
        (user["email"].as_str(), user["role"].as_str(), user["tier"].as_str()),
        (Some("mass@example.com"), Some("user"), Some("free"))
    );
    assert!(
        user.get("password_hash").is_none() && !String::from_utf8_lossy(&r.body).contains("$2b$")
    );
    let dup = request(gw.addr, "POST", SIGNUP, &signup_body("mass@example.com")).await;
    assert_eq!(dup.status, 409);
}

/// Opens a signup request whose body is only half sent, so it stays in flight until
/// `finish` sends the rest.
struct HalfSent {
    stream: TcpStream,
    rest: Vec<u8>,
}

async fn half_sent(gw: &Gateway, email: &str) -> HalfSent {
    let body = signup_body(email);
    let (head, rest) = body.split_at(body.len() / 2);
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    let mut raw = format!(
        "POST {SIGNUP} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(head);
    stream.write_all(&raw).await.unwrap();
    HalfSent { stream, rest: rest.to_vec() }
}

impl HalfSent {
    async fn finish(mut self) -> String {
        self.stream.write_all(&self.rest).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(PATIENCE, self.stream.read(&mut buf))
            .await
            .expect("reply")
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

/// Polls until a probe is shed, which proves the half-sent request holds the only permit.
/// Both race to the server; if the half-sent one arrived while a probe held the permit, it was
/// shed itself (it has a reply waiting), so it is opened again.
async fn wait_until_saturated(gw: &Gateway, slow: &mut HalfSent, email: &str) -> support::Reply {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let r = request(gw.addr, "POST", SIGNUP, &signup_body("probe@example.com")).await;
        if r.status == 503 {
            return r;
        }
        let mut byte = [0u8; 1];
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(1), slow.stream.peek(&mut byte)).await
        {
            *slow = half_sent(gw, email).await;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the half-sent request never held its permit"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn load_beyond_the_in_flight_cap_is_shed_with_503_but_probes_answer() {
    let gw = Gateway::start(&[], &[("BLUESMINDS_SERVER__MAX_IN_FLIGHT", "1")]).await;
    let mut slow = half_sent(&gw, "slow@example.com").await;
    let shed = wait_until_saturated(&gw, &mut slow, "slow@example.com").await;
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert_eq!(shed.openai_error()["code"], "overloaded");
    assert_eq!(request(gw.addr, "GET", "/healthz", b"").await.status, 200, "probes are never shed");
    let reply = slow.finish().await;
    assert!(reply.starts_with("HTTP/1.1 201"), "{reply}");
    // The permit came back: requests are admitted again.
    assert_eq!(
        request(gw.addr, "POST", SIGNUP, &signup_body("after@example.com")).await.status,
        201
    );
}

#[tokio::test]
async fn sigterm_stops_accepting_and_drains_the_request_in_flight() {
    let mut gw = Gateway::start(&[], &[("BLUESMINDS_SERVER__MAX_IN_FLIGHT", "1")]).await;
    let mut slow = half_sent(&gw, "drain@example.com").await;
    wait_until_saturated(&gw, &mut slow, "drain@example.com").await;
    gw.terminate().await;

    // New connections are refused once the listener is closed.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while TcpStream::connect(gw.addr).await.is_ok() {
        assert!(tokio::time::Instant::now() < deadline, "still accepting after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The request in flight still completes.
    let reply = slow.finish().await;
    assert!(reply.starts_with("HTTP/1.1 201"), "{reply}");
    let (code, stderr) = gw.wait().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("drained"), "{stderr}");
}

#[tokio::test]
async fn shutdown_cuts_what_is_still_open_after_the_grace_period() {
    // The body timeout (30 s) is longer than PATIENCE: only the grace cut can end this.
    let mut gw = Gateway::start(
        &[],
        &[
            ("BLUESMINDS_SERVER__MAX_IN_FLIGHT", "1"),
            ("BLUESMINDS_SERVER__SHUTDOWN_GRACE_MS", "300"),
        ],
    )
    .await;
    let mut stuck = half_sent(&gw, "stuck@example.com").await;
    wait_until_saturated(&gw, &mut stuck, "stuck@example.com").await;
    gw.terminate().await;
    let (code, stderr) = gw.wait().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.contains("cutting open connections"), "{stderr}");
    let mut buf = [0u8; 64];
    let n = stuck.stream.read(&mut buf).await.unwrap_or(0);
    assert_eq!(
        n,
        0,
        "the cut connection gets no response: {:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}

#[tokio::test]
async fn slow_clients_are_timed_out() {
    let gw = Gateway::start(
        &[],
        &[
            ("BLUESMINDS_SERVER__HEADER_TIMEOUT_MS", "300"),
            ("BLUESMINDS_SERVER__BODY_TIMEOUT_MS", "300"),
        ],
    )
    .await;
    // Headers that never finish: the connection is closed without a response.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert!(!String::from_utf8_lossy(&buf[..n]).contains(" 200 "), "slow headers were served");

    // An idle keep-alive connection is closed too.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let n = tokio::time::timeout(PATIENCE, s.read(&mut buf))
        .await
        .expect("idle connection closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0);

    // A body that never finishes: 408 with an OpenAI error.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(
        format!("POST {SIGNUP} HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{{\"email\"")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut reply = String::new();
    tokio::time::timeout(PATIENCE, s.read_to_string(&mut reply)).await.expect("408 in time").ok();
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("\"code\":\"request_timeout\""), "{reply}");
}

#[tokio::test]
async fn h2c_prior_knowledge_is_served() {
    let gw = Gateway::start(&[], &[]).await;
    let stream = TcpStream::connect(gw.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{}/healthz", gw.addr))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    assert_eq!(res.version(), http::Version::HTTP_2);
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-request-id"));
}

async fn run_to_end(
    args: &[&str],
    env: &[(&str, &str)],
    dir: &std::path::Path,
) -> (Option<i32>, String, String) {
    let out = tokio::time::timeout(PATIENCE, command(dir, args, env).output())
        .await
        .expect("exit in time")
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn invalid_configuration_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &[(&str, &str)], &str)] = &[
        (&[], &[("BLUESMINDS_SERVER__MAX_IN_FLIGHT", "lots")], "server.max_in_flight"),
        (&[], &[("BLUESMINDS_BIND", "not-an-address")], "server.bind"),
        (&[], &[("DATABASE_URL", "postgres://127.0.0.1/x")], "JWT_SECRET"),
        (&["--config", "missing.toml"], &[], "missing.toml"),
    ];
    for (args, env, key) in cases {
        let (code, _, stderr) = run_to_end(args, env, dir.path()).await;
        assert_eq!(code, Some(64), "{env:?}: {stderr}");
        assert!(stderr.contains(key), "{env:?}: {stderr:?} should name {key}");
    }
    std::fs::write(dir.path().join("bluesminds.toml"), "[server]\nmax_inflight = 3\n").unwrap();
    let (code, _, stderr) = run_to_end(&[], &[], dir.path()).await;
    assert_eq!(code, Some(64));
    assert!(stderr.contains("max_inflight") && stderr.contains("TOML"), "{stderr}");
}

#[tokio::test]
async fn migrate_twice_on_sqlite_is_a_no_op_the_second_time() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run_to_end(&["migrate"], &[], dir.path()).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("applied 19 pending migration(s)"), "{out}");
    let (code, out, err) = run_to_end(&["migrate"], &[], dir.path()).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("applied 0 pending migration(s)"), "{out}");
}

#[tokio::test]
async fn usage_drop_expired_says_what_it_dropped_and_drops_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run_to_end(&["usage", "drop-expired"], &[], dir.path()).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("no usage records have outlived their retention"), "{out}");
}

#[tokio::test]
async fn migrate_on_postgres_creates_partitions_for_this_and_next_month() {
    use gateway_store::testing::{Backend, TestDb};
    use sea_orm::{ConnectionTrait, Statement};
    let db = TestDb::empty(Backend::Postgres).await;
    let secret = "s".repeat(32);
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("JWT_SECRET", secret.as_str()),
        ("API_KEY_SECRET", secret.as_str()),
    ];
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = run_to_end(&["migrate"], &env, dir.path()).await;
    assert_eq!(code, Some(0), "{err}");
    let today = time::OffsetDateTime::now_utc().date();
    for months in [0, 1] {
        let name = migration::partition_name(migration::month_start(today, months));
        assert!(out.contains(&name), "{out} should list {name}");
    }
    let conn = db.store.connection();
    let parts = conn
        .query_all_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT count(*) AS n FROM pg_inherits WHERE inhparent = 'usage_logs'::regclass",
        ))
        .await
        .unwrap();
    assert_eq!(parts[0].try_get::<i64>("", "n").unwrap(), 2);
    let (code, out, _) = run_to_end(&["migrate"], &env, dir.path()).await;
    assert_eq!(code, Some(0));
    assert!(out.contains("applied 0 pending migration(s)"), "{out}");
    assert_eq!(db.store.pending_migrations().await.unwrap(), 0);
}

#[tokio::test]
async fn admin_create_creates_an_admin_or_promotes_an_existing_user() {
    use gateway_auth::UserStore;
    // A user signs up through the API...
    let mut gw = Gateway::start(&[], &[]).await;
    let signed_up = request(gw.addr, "POST", SIGNUP, &signup_body("root@example.com")).await.json();
    assert_eq!(signed_up["role"], "user");
    gw.terminate().await;
    let dir = gw.dir.path().to_owned();
    let (code, stderr) = gw.wait().await;
    assert_eq!(code, Some(0), "{stderr}");

    // ...and `admin create` promotes that same account instead of creating another.
    let args = ["admin", "create", "--email", "Root@Example.com", "--password", "root password 1"];
    let (code, out, err) = run_to_end(&args, &[], &dir).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("admin root@example.com is ready"), "{out}");
    assert!(out.contains(signed_up["id"].as_str().unwrap()), "same id: {out}");
    assert!(
        !err.contains("root password 1") && !out.contains("root password 1"),
        "no password in output"
    );

    // A fresh email creates a new admin; a bad password is refused with a clear message.
    let (code, out, _) = run_to_end(
        &["admin", "create", "--email", "ops@example.com", "--password", "ops password 1"],
        &[],
        &dir,
    )
    .await;
    assert_eq!(code, Some(0));
    assert!(out.contains("admin ops@example.com is ready"), "{out}");
    let (code, _, err) = run_to_end(
        &["admin", "create", "--email", "x@example.com", "--password", "short"],
        &[],
        &dir,
    )
    .await;
    assert_eq!(code, Some(1));
    assert!(err.contains("invalid password"), "{err}");

    let url = format!("sqlite://{}?mode=rw", dir.join("bluesminds.db").display());
    let auth = gateway_store::SqlAuthStore::new(
        gateway_store::Store::connect(&url, &gateway_store::StoreConfig::default()).await.unwrap(),
    );
    for email in ["root@example.com", "ops@example.com"] {
        let rec = auth.find_user_by_email(email).await.unwrap().expect("stored");
        assert_eq!(rec.user.role, gateway_core::Role::Admin, "{email}");
        assert!(rec.password_hash.starts_with("$2b$"));
    }
    assert!(auth.find_user_by_email("x@example.com").await.unwrap().is_none());
}

#[tokio::test]
async fn demo_prints_a_key_and_curl_lines_that_work() {
    let mut gw = Gateway::start(&["demo"], &[]).await;
    let banner = gw.stdout.join("\n");
    let key = banner
        .split_whitespace()
        .find(|w| w.starts_with("bm_"))
        .unwrap_or_else(|| panic!("no key in {banner}"))
        .trim_matches('"');
    assert!(gateway_auth::apikey::parse(key).is_some(), "{key} is not a well-formed key");
    assert!(
        banner.contains(&format!("curl http://{}/api/v1/chat/completions", gw.addr)),
        "{banner}"
    );
    // The banner's curl line, as a request: it is answered by the in-process mock.
    let auth = format!("Bearer {key}");
    let body = br#"{"model":"gpt-4","messages":[{"role":"user","content":"Hello!"}]}"#;
    let r = request_with(
        gw.addr,
        "POST",
        "/api/v1/chat/completions",
        &[("authorization", &auth)],
        body,
    )
    .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(
        r.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("Hello from the BluesMinds mock")
    );
    // The Messages line too: the demo key holds every scope.
    assert!(banner.contains(&format!("curl http://{}/v1/messages", gw.addr)), "{banner}");
    let body = br#"{"model":"gpt-4","max_tokens":16,"messages":[{"role":"user","content":"Hi"}]}"#;
    let r = request_with(gw.addr, "POST", "/v1/messages", &[("x-api-key", key)], body).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.json()["type"], "message");
    gw.terminate().await;
    let (code, stderr) = gw.wait().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(!stderr.contains(key), "the key must not reach the logs");
}

#[tokio::test]
async fn readyz_checks_redis_when_configured() {
    let redis_url = gateway_store::testing::require_redis();
    let gw = Gateway::start(&[], &[("REDIS_URL", redis_url.as_str())]).await;
    let ready = request(gw.addr, "GET", "/readyz", b"").await;
    assert_eq!(ready.status, 200, "{:?}", ready.body);
    assert_eq!(ready.json()["checks"]["redis"], "ok");

    // A Redis nobody listens on: not ready, and the body says which dependency failed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("redis://{}", dead.local_addr().unwrap());
    drop(dead);
    let gw = Gateway::start(&[], &[("REDIS_URL", dead_url.as_str())]).await;
    let not_ready = request(gw.addr, "GET", "/readyz", b"").await;
    assert_eq!(not_ready.status, 503);
    assert_eq!(not_ready.header("retry-after"), Some("5"));
    assert_eq!(not_ready.openai_error()["code"], "service_unavailable");
    let body = not_ready.json();
    assert_eq!(body["checks"]["database"], "ok");
    assert_ne!(body["checks"]["redis"], "ok");
    assert_eq!(
        request(gw.addr, "GET", "/healthz", b"").await.status,
        200,
        "liveness does not depend on Redis"
    );
}

/// The container health check: `bluesminds probe URL` exits 0 on a 2xx answer, 1 otherwise
/// (an unknown path, nothing listening), reading no configuration.
#[tokio::test]
async fn the_probe_command_answers_for_the_health_paths() {
    let gw = Gateway::start(&[], &[]).await;
    let probe = |path: &str| {
        let url = format!("http://{}{path}", gw.addr);
        async move {
            tokio::process::Command::new(support::BIN)
                .args(["probe", &url])
                .env_clear()
                .output()
                .await
                .unwrap()
        }
    };
    let ready = probe("/api/health/ready").await;
    assert_eq!(ready.status.code(), Some(0), "{ready:?}");
    assert!(String::from_utf8_lossy(&ready.stdout).starts_with("HTTP/1.0 200"), "{ready:?}");
    assert_eq!(probe("/healthz").await.status.code(), Some(0));
    let missing = probe("/no/such/path").await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"), "{missing:?}");
    let dead = tokio::process::Command::new(support::BIN)
        .args(["probe", "http://127.0.0.1:1/readyz"])
        .output()
        .await
        .unwrap();
    assert_eq!(dead.status.code(), Some(1));
}
