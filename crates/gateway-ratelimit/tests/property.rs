//! The per-minute window against an exact sliding log, on random arrival patterns (see
//! `conformance::window_property`; the Redis limiter runs the same in `gateway-redis`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gateway_ratelimit::InMemoryLimiter;
use gateway_ratelimit::conformance::window_property;

#[tokio::test]
async fn never_over_admits_and_refuses_only_within_the_stated_approximation() {
    window_property(&InMemoryLimiter::default(), 0..300).await;
}
