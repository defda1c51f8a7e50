//! The Redis limiter against a real Redis (`TEST_REDIS_URL`), under a prefix of its own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use gateway_ratelimit::RedisLimiter;

fn limiter() -> Option<RedisLimiter> {
    let url = std::env::var("TEST_REDIS_URL").ok().filter(|u| !u.is_empty())?;
    let pool = deadpool_redis::Config::from_url(url)
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let prefix = format!("bmtest{}", uuid::Uuid::new_v4().simple());
    Some(RedisLimiter::new(pool, &prefix, Duration::from_secs(2)))
}

#[tokio::test]
async fn redis_limiter_meets_the_contract() {
    let Some(l) = limiter() else {
        eprintln!("TEST_REDIS_URL not set: Redis limiter test skipped");
        return;
    };
    gateway_ratelimit::conformance::limiter_contract(&l).await;
}

#[tokio::test]
async fn an_unreachable_redis_is_reported_fast_not_waited_for() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", dead.local_addr().unwrap());
    drop(dead);
    let mut cfg = deadpool_redis::Config::from_url(url);
    cfg.pool = Some(deadpool_redis::PoolConfig::new(2));
    let pool = cfg.create_pool(Some(deadpool_redis::Runtime::Tokio1)).unwrap();
    let l = RedisLimiter::new(pool, "dead", Duration::from_millis(200));
    let started = std::time::Instant::now();
    let r = gateway_ratelimit::RateLimiter::reserve(
        &l,
        gateway_core::ApiKeyId::new(),
        &gateway_core::Tier::Free.limits(),
        1,
        0,
    )
    .await;
    assert!(matches!(r, Err(gateway_ratelimit::LimitError::Unavailable(_))));
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Two hundred reservations at once, from separate limiters (as separate gateway instances
/// would be) sharing one Redis: a key allowing 10 a minute admits exactly 10.
#[tokio::test]
async fn concurrent_reservations_across_instances_admit_exactly_the_limit() {
    let Some(first) = limiter() else {
        eprintln!("TEST_REDIS_URL not set: Redis concurrency test skipped");
        return;
    };
    let url = std::env::var("TEST_REDIS_URL").unwrap();
    let prefix = format!("bmtest{}", uuid::Uuid::new_v4().simple());
    let instances: Vec<RedisLimiter> = (0..2)
        .map(|_| {
            let pool = deadpool_redis::Config::from_url(url.clone())
                .create_pool(Some(deadpool_redis::Runtime::Tokio1))
                .unwrap();
            RedisLimiter::new(pool, &prefix, Duration::from_secs(5))
        })
        .collect();
    drop(first);
    let key = gateway_core::ApiKeyId::new();
    let limits = gateway_core::Limits {
        rpm: 10,
        tpm: 1_000_000,
        daily_tokens: 1_000_000,
        monthly_tokens: 1_000_000,
    };
    let now = 1_800_000_000_000;
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let l = instances[i % 2].clone();
            tokio::spawn(async move {
                gateway_ratelimit::RateLimiter::reserve(&l, key, &limits, 5, now).await.unwrap()
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        if matches!(t.await.unwrap(), gateway_ratelimit::Decision::Allowed { .. }) {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10);
}
