//! A rolling restart under load: three gateway processes on one Postgres and one Redis behind
//! a local HAProxy (Debian's `haproxy`, health-checking `/readyz`), OpenAI SDK clients sending
//! chat requests, streamed and not, without pause; each instance is sent SIGTERM and started
//! again in turn. The clients see no error, and the usage log holds exactly one row per
//! completed request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use futures_util::StreamExt;
use sea_orm::{EntityTrait, PaginatorTrait};
use serde_json::json;
use support::{Gateway, Mock, PATIENCE, chat_request, env_refs, free_port};

/// How long a stopping instance keeps serving while it reports not ready: well above what
/// HAProxy needs to notice (one failed check, every 100 ms).
const SHUTDOWN_DELAY_MS: &str = "1000";
/// SDK clients sending without pause.
const CLIENTS: usize = 6;

/// HAProxy in front of `backends`, with a stats page, as a child process.
struct Haproxy {
    child: tokio::process::Child,
    addr: SocketAddr,
    stats: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    fn start(backends: &[u16]) -> Haproxy {
        let bin = which("haproxy").unwrap_or_else(|| {
            panic!("haproxy is not installed: run `bash scripts/test.sh`, which installs Debian's haproxy")
        });
        let (port, stats_port) = (free_port(), free_port());
        let servers: Vec<String> = backends
            .iter()
            .enumerate()
            .map(|(i, p)| format!("  server gw{i} 127.0.0.1:{p} check"))
            .collect();
        let servers = servers.join("\n") + "\n";
        // Requests go only to servers whose last check passed, and HAProxy retries nothing
        // (`retries 0`): a request sent to an instance that already stopped accepting would
        // reach the client as a 503. So zero errors means each instance left the rotation,
        // through its failing `/readyz`, before it closed its listener. (With
        // `shutdown_delay_ms` 0 this test sees such 503s.)
        let config = format!(
            "global\n  maxconn 1024\n\
             defaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  \
             retries 0\n\
             frontend api\n  bind 127.0.0.1:{port}\n  default_backend gateways\n\
             frontend stats\n  bind 127.0.0.1:{stats_port}\n  stats enable\n  stats uri /stats\n\
             backend gateways\n  balance roundrobin\n  option httpchk GET /readyz\n  http-check expect status 200\n  \
             default-server inter 100ms fall 1 rise 1\n{servers}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let check =
            std::process::Command::new(&bin).arg("-c").arg("-f").arg(&path).output().unwrap();
        assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
        let child = tokio::process::Command::new(&bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let stats: SocketAddr = format!("127.0.0.1:{stats_port}").parse().unwrap();
        Haproxy { child, addr, stats, _dir: dir }
    }

    /// Each backend server's status as HAProxy sees it (`UP`, `DOWN`, ...), from the stats CSV.
    async fn statuses(&self) -> Vec<(String, String)> {
        if tokio::net::TcpStream::connect(self.stats).await.is_err() {
            return vec![]; // not listening yet
        }
        let r = support::request(self.stats, "GET", "/stats;csv", b"").await;
        let csv = String::from_utf8_lossy(&r.body).into_owned();
        csv.lines()
            .filter(|l| l.starts_with("gateways,gw"))
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[1].to_owned(), f[17].to_owned())
            })
            .collect()
    }

    /// Waits until HAProxy sees `server` as `want` (and, for UP, every server UP).
    async fn wait_for(&self, server: &str, want: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let s = self.statuses().await;
            let this = s.iter().find(|(n, _)| n == server).map(|(_, st)| st.as_str());
            if this == Some(want) && (want != "UP" || s.iter().all(|(_, st)| st == "UP")) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "{server} never {want}: {s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    errors: std::sync::Mutex<Vec<String>>,
}

async fn client_loop(
    client: Client<OpenAIConfig>,
    n: usize,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) {
    let mut i = 0usize;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let stream = (i + n).is_multiple_of(2);
        let outcome = if stream {
            match client.chat().create_stream(chat_request("gpt-4", 8)).await {
                Ok(mut s) => {
                    let mut failed = None;
                    let mut chunks = 0;
                    while let Some(chunk) = s.next().await {
                        match chunk {
                            Ok(_) => chunks += 1,
                            Err(e) => {
                                failed = Some(format!("stream: {e}"));
                                break;
                            }
                        }
                    }
                    match failed {
                        Some(e) => Err(e),
                        None if chunks == 0 => Err("stream: no chunk".to_owned()),
                        None => Ok(()),
                    }
                }
                Err(e) => Err(format!("stream open: {e}")),
            }
        } else {
            client
                .chat()
                .create(chat_request("gpt-4", 8))
                .await
                .map(drop)
                .map_err(|e| format!("chat: {e}"))
        };
        match outcome {
            Ok(()) => tally.ok.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                tally.errors.lock().unwrap().push(e);
                0
            }
        };
    }
}

#[tokio::test]
async fn restarting_each_instance_in_turn_under_load_costs_no_request_and_no_row() {
    let (db, mut env) = support::shared_backends(&[
        ("BLUESMINDS_SERVER__SHUTDOWN_DELAY_MS", SHUTDOWN_DELAY_MS),
        ("BLUESMINDS_LIMITS__REDIS_TIMEOUT_MS", "5000"),
    ])
    .await;
    let mock = Mock::start_on(
        "127.0.0.1:0",
        bluesminds_mock::MockConfig {
            latency: Duration::from_millis(5),
            chunk_delay: Duration::from_millis(2),
            ..Default::default()
        },
    )
    .await;
    env.push(("LITELLM_SERVER_1_URL".into(), mock.url()));
    env.push(("LITELLM_SERVER_1_MODELS".into(), "gpt-4".into()));
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let start = |port: u16| {
        let mut env = env.clone();
        env.push(("BLUESMINDS_BIND".into(), format!("127.0.0.1:{port}")));
        async move { Gateway::start(&[], &env_refs(&env)).await }
    };
    let mut gateways = Vec::new();
    for port in &ports {
        gateways.push(start(*port).await);
    }
    // An admin's key, its limits raised past the load, so limits (on, in Redis) refuse nothing.
    let admin = support::admin_session(&gateways[0]).await;
    let key = support::create_key(
        gateways[0].addr,
        &admin,
        &json!({"name": "load", "rate_limit_rpm": 10_000_000, "rate_limit_tpm": 1_000_000_000,
                "quota_daily": 1_000_000_000_000u64, "quota_monthly": 1_000_000_000_000u64}),
    )
    .await;

    let lb = Haproxy::start(&ports);
    for i in 0..3 {
        lb.wait_for(&format!("gw{i}"), "UP").await;
    }
    let config =
        OpenAIConfig::new().with_api_base(format!("http://{}/v1", lb.addr)).with_api_key(&key);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            // No retries in the SDK: every failure the gateway gives is counted.
            let client = Client::with_config(config.clone()).with_http_service(
                async_openai::middleware::ReqwestService::new(reqwest::Client::new()),
            );
            tokio::spawn(client_loop(client, n, stop.clone(), tally.clone()))
        })
        .collect();

    // Load is flowing; then each instance in turn: SIGTERM, wait for it to exit, start it
    // again on its port, wait until HAProxy has it back.
    let wait_for_more = |at_least: u64| {
        let tally = tally.clone();
        async move {
            let deadline = tokio::time::Instant::now() + PATIENCE;
            while tally.ok.load(Ordering::Relaxed) < at_least {
                assert!(tokio::time::Instant::now() < deadline, "the load stalled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for_more(200).await;
    for (i, port) in ports.iter().enumerate() {
        let name = format!("gw{i}");
        gateways[i].terminate().await;
        lb.wait_for(&name, "DOWN").await;
        let (code, stderr) = gateways[i].wait().await;
        assert_eq!(code, Some(0), "{stderr}");
        assert!(stderr.contains("reporting not ready"), "{stderr}");
        gateways[i] = start(*port).await;
        lb.wait_for(&name, "UP").await;
        let seen = tally.ok.load(Ordering::Relaxed);
        wait_for_more(seen + 100).await;
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let ok = tally.ok.load(Ordering::Relaxed);
    let errors = tally.errors.lock().unwrap().clone();
    eprintln!("rolling restart: {ok} requests completed, {} errors", errors.len());
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );

    // Every instance stops, flushing what it holds; then the rows are counted.
    for gw in &mut gateways {
        gw.terminate().await;
        let (code, stderr) = gw.wait().await;
        assert_eq!(code, Some(0), "{stderr}");
    }
    let rows = gateway_store::entity::usage_logs::Entity::find()
        .count(db.store.connection())
        .await
        .unwrap();
    assert_eq!(rows, ok, "one usage row per completed request");
    assert_eq!(mock.requests(), ok, "every completed request reached the upstream once");
}
