//! The Redis adapters against a real three-master Redis Cluster (`TEST_REDIS_CLUSTER_URL`,
//! started by `bash scripts/test.sh`): the limiter's contract, exactness across instances,
//! batches spanning many slots, a node that loses its data, the bus and the readiness ping.
//! A script call whose keys were on two slots would fail here with `CROSSSLOT`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use gateway_core::{ApiKeyId, Limits, UserId};
use gateway_ratelimit::{Decision, InMemoryQuotaStore, RateLimiter, Reservation, Subject, Window};
use gateway_redis::bus::{Bus, Heard, Invalidation};
use gateway_redis::{RedisConn, RedisLimiter};

/// `TEST_REDIS_CLUSTER_URL`; without it the test fails saying how to run it, never passes.
fn cluster_url() -> String {
    std::env::var("TEST_REDIS_CLUSTER_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| panic!("TEST_REDIS_CLUSTER_URL is not set: run `bash scripts/test.sh`, which starts a three-master Redis Cluster and sets it"))
}

/// Each node of the cluster on its own connection.
async fn nodes() -> Vec<redis::aio::MultiplexedConnection> {
    let url = cluster_url();
    let hosts = url.strip_prefix("redis+cluster://").expect("a redis+cluster:// URL");
    let mut out = Vec::new();
    for host in hosts.trim_end_matches('/').split(',') {
        let client = redis::Client::open(format!("redis://{host}")).unwrap();
        out.push(client.get_multiplexed_async_connection().await.unwrap());
    }
    out
}

fn prefix() -> String {
    format!("bmtest{}", uuid::Uuid::new_v4().simple())
}

fn limiter(prefix: &str) -> RedisLimiter {
    let conn = RedisConn::open(&cluster_url()).unwrap();
    assert!(conn.is_cluster());
    RedisLimiter::new(conn, prefix, Duration::from_secs(5))
}

fn alone(key: ApiKeyId, limits: &Limits) -> Subject {
    Subject { key, user: UserId::from(key.as_uuid()), limits: *limits, ceiling: 1 << 53 }
}

fn limits(rpm: u64, daily: u64) -> Limits {
    Limits { rpm, tpm: 10_000_000, daily_tokens: daily, monthly_tokens: 10_000_000 }
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Deletes every key under `prefix` on the nodes for which `which` says so, one key at a time
/// (a node refuses a `DEL` of keys on two slots): what a node that restarts empty loses.
async fn wipe(prefix: &str, which: impl Fn(usize) -> bool) -> usize {
    let mut wiped = 0;
    for (_, mut node) in nodes().await.into_iter().enumerate().filter(|(i, _)| which(*i)) {
        let keys: Vec<String> =
            redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut node).await.unwrap();
        for key in keys {
            let _: () = redis::cmd("DEL").arg(&key).query_async(&mut node).await.unwrap();
            wiped += 1;
        }
    }
    wiped
}

#[tokio::test]
async fn the_limiter_meets_the_contract_on_a_cluster() {
    gateway_ratelimit::conformance::limiter_contract(&limiter(&prefix())).await;
    gateway_ratelimit::conformance::claim_contract(&limiter(&prefix())).await;
    gateway_ratelimit::conformance::lease_property(std::sync::Arc::new(limiter(&prefix())), 0..5)
        .await;
}

/// Two hundred reservations at once from two leased limiters (two gateway instances) sharing
/// the cluster: a key allowing 10 a minute admits exactly 10, and so does a user's ceiling across
/// three keys.
#[tokio::test]
async fn two_instances_on_a_cluster_admit_exactly_the_limit() {
    let p = prefix();
    // Each instance admits through leases, as the gateway does.
    let leased = || {
        let shared = std::sync::Arc::new(limiter(&p));
        std::sync::Arc::new(gateway_ratelimit::LeasedLimiter::new(
            shared,
            gateway_ratelimit::LeaseConfig::default(),
        ))
    };
    let instances = [leased(), leased()];
    let now = now_ms();
    let run = |subjects: Vec<Subject>| {
        let instances = instances.clone();
        async move {
            let tasks: Vec<_> = (0..200)
                .map(|i| {
                    let l = instances[i % 2].clone();
                    let who = subjects[i % subjects.len()];
                    tokio::spawn(async move { l.reserve(&who, 5, now).await.unwrap() })
                })
                .collect();
            let (mut admitted, mut refused_by) = (0, Vec::new());
            for t in tasks {
                match t.await.unwrap() {
                    Decision::Allowed { .. } => admitted += 1,
                    Decision::Refused { window, .. } => refused_by.push(window),
                }
            }
            refused_by.dedup();
            (admitted, refused_by)
        }
    };
    let key = ApiKeyId::new();
    assert_eq!(
        run(vec![alone(key, &limits(10, 1_000_000))]).await,
        (10, vec![Window::RequestsPerMinute])
    );
    let user = UserId::new();
    let keys = (0..3)
        .map(|_| Subject {
            key: ApiKeyId::new(),
            user,
            limits: limits(1000, 1_000_000),
            ceiling: 50,
        })
        .collect();
    assert_eq!(run(keys).await, (10, vec![Window::UserMonth]));
}

/// One settle batch holding reservations of 300 users (on slots of every node) settles each.
#[tokio::test]
async fn a_settle_batch_spanning_every_node_settles_each_reservation() {
    let l = limiter(&prefix());
    let daily = limits(1000, 100);
    let mut settlements: Vec<(Reservation, u64)> = Vec::new();
    let mut keys = Vec::new();
    for _ in 0..300 {
        let key = ApiKeyId::new();
        let Decision::Allowed { reservation, .. } =
            l.reserve(&alone(key, &daily), 90, now_ms()).await.unwrap()
        else {
            panic!("the first reservation fits")
        };
        settlements.push((reservation, 10));
        keys.push(key);
    }
    l.settle_many(&settlements).await.unwrap();
    // Each key was charged 10 of its 100: 90 more fit, 91 would not.
    for key in keys.iter().take(30) {
        assert!(matches!(
            l.reserve(&alone(*key, &daily), 90, now_ms()).await.unwrap(),
            Decision::Allowed { .. }
        ));
        let refused = l.reserve(&alone(*key, &daily), 1, now_ms()).await.unwrap();
        assert!(
            matches!(refused, Decision::Refused { window: Window::TokensPerDay, .. }),
            "{refused:?}"
        );
    }
}

/// A node that restarts empty loses its slots' counters and restore markers: the requests of
/// users on those slots wait for the quotas to come back from the store, and then the quotas
/// hold; users on the other nodes never noticed.
#[tokio::test]
async fn a_node_that_lost_its_data_gets_the_quotas_back_before_it_admits_anything() {
    let p = prefix();
    let store = Arc::new(InMemoryQuotaStore::default());
    let l = limiter(&p).with_durable_quotas(store.clone());
    let daily = limits(1000, 1000);
    let keys: Vec<ApiKeyId> = (0..60).map(|_| ApiKeyId::new()).collect();
    let now = now_ms();
    l.restore(now).await.unwrap();
    for key in &keys {
        let Decision::Allowed { reservation, .. } =
            l.reserve(&alone(*key, &daily), 700, now).await.unwrap()
        else {
            panic!("the first request is allowed")
        };
        l.settle(&reservation, 600).await.unwrap();
    }
    assert_eq!(l.flush_mirror().await.unwrap(), 60 * 3);

    // The first node loses everything under the prefix (counters and markers).
    assert!(wipe(&p, |i| i == 0).await > 0, "60 users put keys on every node");
    for key in &keys {
        let refused = l.reserve(&alone(*key, &daily), 401, now).await.unwrap();
        assert!(
            matches!(refused, Decision::Refused { window: Window::TokensPerDay, .. }),
            "600 of 1000 used: {refused:?}"
        );
        assert!(matches!(
            l.reserve(&alone(*key, &daily), 400, now).await.unwrap(),
            Decision::Allowed { .. }
        ));
    }
}

#[tokio::test]
async fn invalidations_published_on_a_cluster_reach_listeners_on_every_node() {
    let p = prefix();
    let conn = RedisConn::open(&cluster_url()).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Three listeners: the connection's subscriptions go to the seed nodes in turn.
    for _ in 0..3 {
        let bus = Bus::new(conn.clone(), &p);
        let tx = tx.clone();
        tokio::spawn(async move {
            bus.listen(move |heard| {
                let _ = tx.send(heard);
            })
            .await;
        });
    }
    for _ in 0..3 {
        assert_eq!(rx.recv().await, Some(Heard::Subscribed));
    }
    let key = ApiKeyId::new();
    Bus::new(conn.clone(), &p).publish(Invalidation::Key(key)).await.unwrap();
    for _ in 0..3 {
        let heard = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap();
        assert_eq!(heard, Some(Heard::Changed(Invalidation::Key(key))));
    }
    conn.ping(Duration::from_secs(2)).await.unwrap();
}
