//! Does a flood of wrong API keys slow down valid requests?
//!
//! Starts the gateway in-process (embedded SQLite, production bcrypt cost for keys), then
//! measures the latency of sequential `GET /v1/models` requests with a valid key: alone, and
//! while 1,000 requests with random wrong keys arrive on 40 other connections. Prints a
//! Markdown table for docs/BENCHMARKS.md.
//!
//! `cargo bench -p bluesminds --bench key_flood`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bluesminds::config::{Config, UpstreamSeed};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

async fn connect(addr: SocketAddr) -> SendRequest<Empty<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

async fn get(sender: &mut SendRequest<Empty<Bytes>>, key: &str) -> u16 {
    sender.ready().await.unwrap();
    let req = http::Request::get("/v1/models")
        .header("host", "bench")
        .header("authorization", format!("Bearer {key}"))
        .body(Empty::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    res.into_body().collect().await.unwrap();
    status
}

/// Latencies of `n` sequential valid requests, in microseconds, sorted.
async fn measure(addr: SocketAddr, key: &str, n: usize) -> Vec<u64> {
    let mut sender = connect(addr).await;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        assert_eq!(get(&mut sender, key).await, 200);
        out.push(t.elapsed().as_micros() as u64);
    }
    out.sort_unstable();
    out
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

/// Sends `count` requests with freshly generated (so unknown) keys over `conns` connections.
async fn flood(
    addr: SocketAddr,
    count: usize,
    conns: usize,
    known_prefix: Option<String>,
) -> (usize, Duration) {
    let started = Instant::now();
    assert_eq!(count % conns, 0, "spread the flood evenly");
    let per = count / conns;
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let prefix = known_prefix.clone();
            tokio::spawn(async move {
                let mut sender = connect(addr).await;
                let mut refused = 0;
                for _ in 0..per {
                    let fresh = gateway_auth::apikey::generate().unwrap();
                    let key = match &prefix {
                        Some(p) => format!("{p}_{}", fresh.secret),
                        None => fresh.full(),
                    };
                    if matches!(get(&mut sender, &key).await, 401 | 503) {
                        refused += 1;
                    }
                }
                refused
            })
        })
        .collect();
    let mut refused = 0;
    for t in tasks {
        refused += t.await.unwrap();
    }
    (refused, started.elapsed())
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.database.url = format!("sqlite://{}?mode=rwc", dir.path().join("bench.db").display());
        config.auth.jwt_secret = "j".repeat(32);
        config.auth.api_key_secret = "k".repeat(32);
        config.auth.bcrypt_cost = 4;
        config.upstreams.push(UpstreamSeed { url: "http://127.0.0.1:9".into(), api_key: None, models: vec!["gpt-4".into()] });
        let key_cost = config.auth.key_bcrypt_cost;
        let app = Arc::new(bluesminds::App::build(config).await.unwrap());
        let user = app.accounts.signup("bench@example.com", "password-1", None).await.unwrap();
        let issued = app
            .accounts
            .create_key(user.id, gateway_auth::NewKey::named("bench", gateway_core::Scope::ALL.to_vec()))
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(bluesminds::run(listener, app, async {
            let _ = stopped.await;
        }));

        let n = 3000;
        measure(addr, &issued.key, 500).await; // warm up: the key is verified and cached
        let baseline = measure(addr, &issued.key, n).await;
        let flooded_random = {
            let flood = tokio::spawn(flood(addr, 1000, 40, None));
            let lat = measure(addr, &issued.key, n).await;
            let (refused, took) = flood.await.unwrap();
            assert_eq!(refused, 1000);
            (lat, took)
        };
        let prefix = issued.meta.key_prefix.clone();
        let flooded_known = {
            let flood = tokio::spawn(flood(addr, 256, 32, Some(prefix)));
            let lat = measure(addr, &issued.key, n).await;
            let (refused, took) = flood.await.unwrap();
            assert_eq!(refused, 256);
            (lat, took)
        };

        println!("key bcrypt cost {key_cost}; {n} sequential valid requests per row (GET /v1/models, one keep-alive connection)\n");
        println!("| Scenario | p50 ms | p99 ms | flood duration |");
        println!("|---|---|---|---|");
        println!("| valid key alone | {:.3} | {:.3} | - |", pct(&baseline, 0.5), pct(&baseline, 0.99));
        let (lat, took) = &flooded_random;
        println!("| + 1,000 random wrong keys (unknown prefixes) on 40 connections | {:.3} | {:.3} | {:.2} s |", pct(lat, 0.5), pct(lat, 0.99), took.as_secs_f64());
        let (lat, took) = &flooded_known;
        println!("| + 256 wrong secrets for the valid key's prefix (bcrypt each) on 32 connections | {:.3} | {:.3} | {:.2} s |", pct(lat, 0.5), pct(lat, 0.99), took.as_secs_f64());
        println!("\nmedian ratio, random flood / alone: {:.2}x", pct(&flooded_random.0, 0.5) / pct(&baseline, 0.5));
        println!("median ratio, known-prefix flood / alone: {:.2}x", pct(&flooded_known.0, 0.5) / pct(&baseline, 0.5));
        let _ = stop.send(());
        server.await.unwrap();
    });
}
