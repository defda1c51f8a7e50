//! The limiter's cost per request: one `reserve` and one `settle`, in memory and against the
//! Redis at `TEST_REDIS_URL` (round trip included), one caller at a time and 64 at once.
//!
//! `cargo bench -p gateway-ratelimit --bench limiter`

#![allow(clippy::unwrap_used, clippy::panic, clippy::print_stdout, clippy::print_stderr)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_core::{ApiKeyId, Limits};
use gateway_ratelimit::{Decision, InMemoryLimiter, RateLimiter, RedisLimiter};

const LIMITS: Limits = Limits {
    rpm: u64::MAX / 4,
    tpm: u64::MAX / 4,
    daily_tokens: u64::MAX / 4,
    monthly_tokens: u64::MAX / 4,
};

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// One request's limiter work: reserve 300 tokens, settle to 250.
async fn one(l: &dyn RateLimiter, key: ApiKeyId) {
    let Decision::Allowed { reservation, .. } =
        l.reserve(key, &LIMITS, 300, now_ms()).await.unwrap()
    else {
        panic!("limits far above the load")
    };
    l.settle(&reservation, 250).await.unwrap();
}

fn pct(sorted: &[u128], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

async fn sequential(name: &str, l: Arc<dyn RateLimiter>, n: usize) {
    let key = ApiKeyId::new();
    for _ in 0..n / 10 {
        one(l.as_ref(), key).await;
    }
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        one(l.as_ref(), key).await;
        times.push(t.elapsed().as_nanos());
    }
    times.sort_unstable();
    println!(
        "| {name} | 1 | {:.1} | {:.1} | {:.0} |",
        pct(&times, 0.5),
        pct(&times, 0.99),
        1e9 / (times.iter().sum::<u128>() as f64 / n as f64)
    );
}

async fn concurrent(name: &str, l: Arc<dyn RateLimiter>, n: usize, tasks: usize) {
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        let l = l.clone();
        set.spawn(async move {
            let key = ApiKeyId::new();
            for _ in 0..n / tasks {
                one(l.as_ref(), key).await;
            }
        });
    }
    while set.join_next().await.is_some() {}
    let per_sec = n as f64 / started.elapsed().as_secs_f64();
    println!("| {name} | {tasks} | | | {per_sec:.0} |");
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        println!("| Limiter | Callers | p50 µs (reserve + settle) | p99 µs | Requests/s |");
        println!("|---|---:|---:|---:|---:|");
        let memory: Arc<dyn RateLimiter> = Arc::new(InMemoryLimiter::default());
        sequential("in memory", memory.clone(), 200_000).await;
        concurrent("in memory", memory, 200_000, 64).await;
        let Ok(url) = std::env::var("TEST_REDIS_URL") else {
            eprintln!("TEST_REDIS_URL not set: the Redis rows are skipped");
            return;
        };
        let prefix = format!("bmbench{}", std::process::id());
        let redis: Arc<dyn RateLimiter> = Arc::new(RedisLimiter::new(
            redis::Client::open(url).unwrap(),
            &prefix,
            Duration::from_secs(2),
        ));
        sequential("Redis (one Lua call each way)", redis.clone(), 20_000).await;
        concurrent("Redis (one Lua call each way)", redis, 100_000, 64).await;
    });
}
