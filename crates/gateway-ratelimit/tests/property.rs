//! The per-minute window against an exact sliding log, on random arrival patterns (see
//! `conformance::window_property`; the Redis limiter runs the same in `gateway-redis`); and
//! leases across simulated instances (`conformance::lease_property`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use gateway_ratelimit::conformance::{
    lease_property, limiter_contract, window_property, window_property_within,
};
use gateway_ratelimit::{InMemoryLimiter, LeaseConfig, LeasedLimiter};

#[tokio::test]
async fn never_over_admits_and_refuses_only_within_the_stated_approximation() {
    window_property(&InMemoryLimiter::default(), 0..300).await;
}

#[tokio::test]
async fn leases_across_instances_never_over_admit_and_hold_at_most_the_stated_share() {
    lease_property(Arc::new(InMemoryLimiter::default()), 0..150).await;
}

#[tokio::test]
async fn a_leased_limiter_meets_the_limiter_contract_and_the_window_property() {
    let leased =
        || LeasedLimiter::new(Arc::new(InMemoryLimiter::default()), LeaseConfig::default());
    limiter_contract(&leased()).await;
    // A lease's requests are counted in the second it ends in: refusals may come up to one
    // lease (two seconds) and that second sooner.
    window_property_within(&leased(), 0..100, 3000).await;
}
