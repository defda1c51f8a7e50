//! Helpers of the end-to-end tests: start the real `bluesminds` binary on port 0 in a
//! directory of its own, and talk to it over real sockets.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)] // test support

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_bluesminds");
/// Upper bound for anything that should happen promptly; never a performance assertion.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A loopback port free now (for a process to bind, and to bind again after a restart).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A running gateway process.
pub struct Gateway {
    pub addr: SocketAddr,
    pub child: Child,
    pub dir: tempfile::TempDir,
    /// Everything the process printed to stdout after the listening line is read here.
    pub stdout: Vec<String>,
    /// The environment it was started with (for the CLI next to it).
    pub env: Vec<(String, String)>,
    /// Everything it wrote to stderr (its logs), read as it comes so that a full pipe never
    /// stalls the process.
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stderr_done: Option<tokio::task::JoinHandle<()>>,
}

/// A command for the binary, run in `dir`, with a clean environment of our choosing.
pub fn command(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "info")
        .env("BLUESMINDS_BIND", "127.0.0.1:0")
        // Fast bcrypt for tests; production default is 12.
        .env("BLUESMINDS_AUTH__BCRYPT_COST", "4")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl Gateway {
    /// Starts `bluesminds [args]` and waits for its listening line (`... http://ADDR`).
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, args, env).await
    }

    pub async fn start_in(dir: tempfile::TempDir, args: &[&str], env: &[(&str, &str)]) -> Gateway {
        let mut child = command(dir.path(), args, env).spawn().expect("spawn bluesminds");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let mut seen = Vec::new();
        // `serve` prints "bluesminds listening on http://ADDR"; `demo` prints a banner with
        // "gateway   http://ADDR" and ends it with "Press Ctrl-C to stop.".
        let addr = tokio::time::timeout(PATIENCE, async {
            let mut addr = None;
            while let Some(line) = lines.next_line().await.unwrap() {
                seen.push(line.clone());
                if line.contains("listening on") || line.trim_start().starts_with("gateway") {
                    let url = line.split_whitespace().find(|w| w.starts_with("http://")).unwrap();
                    addr = Some(url.trim_start_matches("http://").parse::<SocketAddr>().unwrap());
                }
                if line.contains("listening on") || line.contains("Press Ctrl-C") {
                    return addr.unwrap();
                }
            }
            panic!("bluesminds exited before listening; stdout: {seen:?}");
        })
        .await
        .expect("bluesminds did not start in time");
        // Keep draining stdout and stderr so the child never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>> = std::sync::Arc::default();
        let mut pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        let stderr_done = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Gateway { addr, child, dir, stdout: seen, env, stderr, stderr_done: Some(stderr_done) }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends SIGTERM.
    pub async fn terminate(&self) {
        let status =
            Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status().await.unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit code and stderr.
    pub async fn wait(&mut self) -> (Option<i32>, String) {
        let status =
            tokio::time::timeout(PATIENCE, self.child.wait()).await.expect("exit in time").unwrap();
        if let Some(done) = self.stderr_done.take() {
            done.await.unwrap();
        }
        let err = String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned();
        (status.code(), err)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("bluesminds.db")
    }
}

/// A response as a test sees it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an OpenAI-shaped error body and returns its `error` object.
    pub fn openai_error(&self) -> serde_json::Value {
        let v = self.json();
        let e = v.get("error").unwrap_or_else(|| panic!("no error object: {v}")).clone();
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(e["type"].is_string(), "{v}");
        assert!(e.get("param").is_some() && e.get("code").is_some(), "{v}");
        e
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Reply {
    request_with(addr, method, path, &[], body).await
}

pub async fn request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let stream = TcpStream::connect(addr).await.unwrap();
    send(stream, addr, method, path, headers, body).await
}

/// [`request_with`] from another loopback address (all of 127.0.0.0/8 is loopback on Linux):
/// a client the gateway tells apart from the others by its address.
pub async fn request_from(
    source: std::net::Ipv4Addr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((source, 0))).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    send(stream, addr, method, path, headers, body).await
}

async fn send(
    stream: TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let mut req =
        http::Request::builder().method(method).uri(path).header("host", addr.to_string());
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    let res = tokio::time::timeout(PATIENCE, sender.send_request(req))
        .await
        .expect("reply in time")
        .unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Reply { status, headers, body }
}

/// A `bluesminds-mock` running in the test process, whose counters the test can read.
pub struct Mock {
    pub addr: SocketAddr,
    pub stats: std::sync::Arc<bluesminds_mock::MockStats>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Mock {
    pub async fn start() -> Mock {
        Self::start_on("127.0.0.1:0", bluesminds_mock::MockConfig::default()).await
    }

    pub async fn start_on(addr: &str, config: bluesminds_mock::MockConfig) -> Mock {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = std::sync::Arc::new(bluesminds_mock::MockStats::default());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(bluesminds_mock::run(listener, config, stats.clone(), async {
            let _ = stopped.await;
        }));
        Mock { addr, stats, stop: Some(stop), task: Some(task) }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> u64 {
        self.stats.requests.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn aborted_streams(&self) -> u64 {
        self.stats.aborted_streams.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stops the mock: its listener closes and its connections are cut, as if it died.
    pub async fn kill(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// Signs a user up (free tier) and logs in; returns the session cookie.
pub async fn signup(addr: SocketAddr, email: &str) -> String {
    let creds =
        serde_json::json!({"email": email, "password": "correct horse battery"}).to_string();
    let r = request(addr, "POST", "/api/auth/signup", creds.as_bytes()).await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    let r = request(addr, "POST", "/api/auth/login", creds.as_bytes()).await;
    assert_eq!(r.status, 200);
    r.header("set-cookie").unwrap().split(';').next().unwrap().to_owned()
}

/// Creates a key with `key_body` in the session `cookie`; returns the key.
pub async fn create_key(addr: SocketAddr, cookie: &str, key_body: &serde_json::Value) -> String {
    let r = request_with(
        addr,
        "POST",
        "/api/keys",
        &[("cookie", cookie)],
        key_body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", r.body);
    r.json()["key"].as_str().unwrap().to_owned()
}

/// A free-tier user's key (10 requests a minute, 1,000 tokens a day).
pub async fn free_user_with_key(
    addr: SocketAddr,
    email: &str,
    key_body: serde_json::Value,
) -> String {
    let cookie = signup(addr, email).await;
    create_key(addr, &cookie, &key_body).await
}

/// An admin session, the admin made with the CLI next to the running gateway.
pub async fn admin_session(gw: &Gateway) -> String {
    let args = ["admin", "create", "--email", "root@example.com", "--password", "root password 1"];
    let out = command(gw.dir.path(), &args, &env_refs(&gw.env)).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let creds =
        serde_json::json!({"email": "root@example.com", "password": "root password 1"}).to_string();
    let r = request(gw.addr, "POST", "/api/auth/login", creds.as_bytes()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.header("set-cookie").unwrap().split(';').next().unwrap().to_owned()
}

/// Moves the user of session `cookie` to `tier`, as an admin.
pub async fn set_tier(gw: &Gateway, cookie: &str, tier: &str) {
    let me = request_with(gw.addr, "GET", "/api/auth/me", &[("cookie", cookie)], b"").await;
    let id = me.json()["id"].as_str().unwrap().to_owned();
    let admin = admin_session(gw).await;
    let body = serde_json::json!({ "tier": tier }).to_string();
    let path = format!("/api/admin/users/{id}");
    let r = request_with(gw.addr, "PATCH", &path, &[("cookie", &admin)], body.as_bytes()).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

/// An enterprise user's key, so that tests about something else stay clear of the limits.
pub async fn user_with_key(gw: &Gateway, email: &str, key_body: serde_json::Value) -> String {
    let cookie = signup(gw.addr, email).await;
    set_tier(gw, &cookie, "enterprise").await;
    create_key(gw.addr, &cookie, &key_body).await
}

/// A TCP relay in front of a real server that a test can cut (every connection dropped, new
/// ones closed at once) and restore: a database outage without stopping the shared database.
pub struct Relay {
    pub addr: SocketAddr,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> =
            std::sync::Arc::default();
        let (up2, conns2) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns2.lock().unwrap().push(task);
            }
        });
        Relay { addr, up, conns }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// POSTs a JSON body with a bearer key.
pub async fn post_with_key(
    addr: SocketAddr,
    path: &str,
    key: &str,
    body: &serde_json::Value,
) -> Reply {
    let auth = format!("Bearer {key}");
    request_with(addr, "POST", path, &[("authorization", &auth)], body.to_string().as_bytes()).await
}

/// Two or more instances on one fresh Postgres database and the test Redis, under a Redis
/// prefix of their own: the database (dropped with it) and the environment to start them
/// with. Fails, saying how to run it, when `TEST_DATABASE_URL` or `TEST_REDIS_URL` is not set.
pub async fn shared_backends(
    extra: &[(&str, &str)],
) -> (gateway_store::testing::TestDb, Vec<(String, String)>) {
    shared_backends_on(&gateway_store::testing::require_redis(), extra).await
}

/// [`shared_backends`] on the Redis at `redis` (a cluster's URL, for instance).
pub async fn shared_backends_on(
    redis: &str,
    extra: &[(&str, &str)],
) -> (gateway_store::testing::TestDb, Vec<(String, String)>) {
    gateway_store::testing::require_postgres();
    let redis = redis.to_owned();
    let db = gateway_store::testing::TestDb::empty(gateway_store::testing::Backend::Postgres).await;
    let secret = "0123456789abcdef0123456789abcdef";
    let mut env: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), db.url.clone()),
        ("REDIS_URL".into(), redis),
        ("JWT_SECRET".into(), secret.into()),
        ("API_KEY_SECRET".into(), secret.into()),
        ("BLUESMINDS_REDIS__KEY_PREFIX".into(), format!("bmtest{}", uuid::Uuid::new_v4().simple())),
    ];
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    (db, env)
}

/// Borrowed view of an owned environment, for `Gateway::start`.
pub fn env_refs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A chat request for the SDK: one user message, `max_tokens` (the mock answers that many
/// words).
pub fn chat_request(
    model: &str,
    max_tokens: u32,
) -> async_openai::types::chat::CreateChatCompletionRequest {
    use async_openai::types::chat::{
        ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequestArgs,
    };
    CreateChatCompletionRequestArgs::default()
        .model(model)
        .max_tokens(max_tokens)
        .messages([ChatCompletionRequestUserMessageArgs::default()
            .content("Hello there!")
            .build()
            .unwrap()
            .into()])
        .build()
        .unwrap()
}

/// A request in the session `cookie` with a JSON body (`null`: none).
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    cookie: &str,
    body: &serde_json::Value,
) -> Reply {
    let bytes = if body.is_null() { Vec::new() } else { body.to_string().into_bytes() };
    request_with(addr, method, path, &[("cookie", cookie)], &bytes).await
}

/// Polls `GET /api/billing/summary` in the session `cookie` until `done` says the usage rows
/// it needs are written (the writer batches them off the request path).
pub async fn summary_when(
    addr: SocketAddr,
    cookie: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let started = std::time::Instant::now();
    loop {
        let r = call(addr, "GET", "/api/billing/summary", cookie, &serde_json::Value::Null).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let v = r.json();
        if done(&v) {
            return v;
        }
        assert!(started.elapsed() < PATIENCE, "the usage rows never arrived: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A local SMTP server that accepts every message and keeps it (headers and body as sent), for
/// the mail the gateway sends. Plain SMTP on loopback, no authentication.
pub struct SmtpSink {
    pub addr: SocketAddr,
    pub messages: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl SmtpSink {
    pub async fn start() -> SmtpSink {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let messages: std::sync::Arc<std::sync::Mutex<Vec<String>>> = std::sync::Arc::default();
        let keep = messages.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let keep = keep.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = tokio::io::BufReader::new(read).lines();
                    if write.write_all(b"220 sink ESMTP\r\n").await.is_err() {
                        return;
                    }
                    while let Ok(Some(line)) = lines.next_line().await {
                        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                        let reply: &[u8] = match verb.as_str() {
                            "EHLO" => b"250-sink\r\n250 8BITMIME\r\n",
                            "DATA" => {
                                if write.write_all(b"354 end with .\r\n").await.is_err() {
                                    return;
                                }
                                let mut message = String::new();
                                while let Ok(Some(l)) = lines.next_line().await {
                                    if l == "." {
                                        break;
                                    }
                                    message.push_str(&l);
                                    message.push('\n');
                                }
                                keep.lock().unwrap().push(message);
                                b"250 queued\r\n"
                            }
                            "QUIT" => {
                                let _ = write.write_all(b"221 bye\r\n").await;
                                return;
                            }
                            _ => b"250 ok\r\n",
                        };
                        if write.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        SmtpSink { addr, messages }
    }

    /// Waits for the `n`th message (1-based) and returns every message so far.
    pub async fn wait_for(&self, n: usize) -> Vec<String> {
        tokio::time::timeout(PATIENCE, async {
            loop {
                let got = self.messages.lock().unwrap().clone();
                if got.len() >= n {
                    return got;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the mail arrives in time")
    }
}

/// A Redis server of the test's own, which it can stop and restart on the same port.
pub struct PrivateRedis {
    port: u16,
    child: Option<tokio::process::Child>,
}

impl PrivateRedis {
    pub async fn start() -> PrivateRedis {
        let mut r = PrivateRedis { port: free_port(), child: None };
        r.restart().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (empty: it keeps nothing on disk) and waits until it answers.
    pub async fn restart(&mut self) {
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server must be installed when TEST_REDIS_URL is set");
        self.child = Some(child);
        let started = std::time::Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(started.elapsed() < PATIENCE, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills it (SIGKILL): everything it held is gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }
}

/// The token of the link to `page` in a mail the sink received (quoted-printable undone).
pub fn mailed_token(mail: &str, page: &str) -> String {
    let text = mail.replace("=\n", "").replace("=3D", "=");
    let link = format!("{page}?token=");
    let at = text.find(&link).unwrap_or_else(|| panic!("no {page} link in {mail}")) + link.len();
    text[at..].chars().take_while(char::is_ascii_hexdigit).collect()
}
