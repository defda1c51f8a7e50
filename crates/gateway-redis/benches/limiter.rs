//! The limiter's cost per request (criterion): one `reserve` and one `settle`, in memory and
//! against the Redis at `TEST_REDIS_URL` (round trip included), one caller at a time
//! (latency) and 64 callers at once (throughput: the time per request when 64 share the
//! limiter).
//!
//! `cargo bench -p gateway-redis --bench limiter`

#![allow(clippy::unwrap_used, clippy::panic, clippy::print_stderr, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use gateway_core::{ApiKeyId, Limits, UserId};
use gateway_ratelimit::{Decision, InMemoryLimiter, RateLimiter, Subject};
use gateway_redis::{RedisConn, RedisLimiter};

const LIMITS: Limits = Limits {
    rpm: u64::MAX / 4,
    tpm: u64::MAX / 4,
    daily_tokens: u64::MAX / 4,
    monthly_tokens: u64::MAX / 4,
};

const CALLERS: u64 = 64;

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// One request's limiter work: reserve 300 tokens, settle to 250.
async fn one(l: &dyn RateLimiter, key: ApiKeyId) {
    let who = Subject { key, user: UserId::from(key.as_uuid()), limits: LIMITS, ceiling: 1 << 53 };
    let Decision::Allowed { reservation, .. } = l.reserve(&who, 300, now_ms()).await.unwrap()
    else {
        panic!("limits far above the load")
    };
    l.settle(&reservation, 250).await.unwrap();
}

/// `iters` requests spread over 64 concurrent callers, each with its own key.
async fn concurrent(l: Arc<dyn RateLimiter>, iters: u64) -> Duration {
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for caller in 0..CALLERS {
        let l = l.clone();
        let n = iters / CALLERS + u64::from(caller < iters % CALLERS);
        set.spawn(async move {
            let key = ApiKeyId::new();
            for _ in 0..n {
                one(l.as_ref(), key).await;
            }
        });
    }
    while set.join_next().await.is_some() {}
    started.elapsed()
}

fn bench(c: &mut Criterion, name: &str, rt: &tokio::runtime::Runtime, l: &Arc<dyn RateLimiter>) {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    let key = ApiKeyId::new();
    group.bench_function("reserve+settle, 1 caller", |b| {
        b.to_async(rt).iter(|| one(l.as_ref(), key));
    });
    group.bench_function("reserve+settle, 64 callers", |b| {
        b.iter_custom(|iters| rt.block_on(concurrent(l.clone(), iters)));
    });
    group.finish();
}

fn limiter(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let memory: Arc<dyn RateLimiter> = Arc::new(InMemoryLimiter::default());
    bench(c, "in memory", &rt, &memory);
    let Ok(url) = std::env::var("TEST_REDIS_URL") else {
        eprintln!("TEST_REDIS_URL not set: the Redis benchmarks are skipped");
        return;
    };
    let prefix = format!("bmbench{}", std::process::id());
    let redis = RedisLimiter::new(RedisConn::open(&url).unwrap(), &prefix, Duration::from_secs(2));
    let redis: Arc<dyn RateLimiter> = Arc::new(redis);
    bench(c, "redis", &rt, &redis);
}

criterion_group!(benches, limiter);
criterion_main!(benches);
