//! The Redis adapters against a real Redis (`TEST_REDIS_URL`), each test under a key prefix of
//! its own: the limiter (the port's contract, the window property, exactness across
//! instances, outages and restarts), the outage fallback, the bus and the readiness ping.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use gateway_core::{ApiKeyId, Limits, UserId};
use gateway_ratelimit::{
    Decision, FallbackPolicy, InMemoryLimiter, InMemoryQuotaStore, LeaseConfig, LeasedLimiter,
    LimitError, Period, QuotaRows, QuotaStore, QuotaStoreError, QuotaUsage, RateLimiter,
    ResilientLimiter, Subject, Window,
};
use gateway_redis::bus::{Bus, Heard, Invalidation};
use gateway_redis::{RedisConn, RedisLimiter};

/// `TEST_REDIS_URL`; without it the test fails saying how to run it, never passes.
fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| panic!("TEST_REDIS_URL is not set: run `bash scripts/test.sh`, which brings Redis up and sets it"))
}

fn limiter() -> RedisLimiter {
    let prefix = format!("bmtest{}", uuid::Uuid::new_v4().simple());
    RedisLimiter::new(conn(&redis_url()), &prefix, Duration::from_secs(2))
}

#[tokio::test]
async fn redis_limiter_meets_the_contract() {
    let l = limiter();
    gateway_ratelimit::conformance::limiter_contract(&l).await;
    gateway_ratelimit::conformance::claim_contract(&limiter()).await;
}

/// Leases of simulated instances over one Redis: never more than a limit, and at most the
/// stated share held unused by the others when a request is refused.
#[tokio::test]
async fn leases_over_redis_never_over_admit_and_hold_at_most_the_stated_share() {
    gateway_ratelimit::conformance::lease_property(Arc::new(limiter()), 0..25).await;
}

/// The same 200-at-once as below, through leases: two instances, each a `LeasedLimiter` over
/// its own connection, admit exactly the limit (leases shrink to single requests near it).
#[tokio::test]
async fn concurrent_requests_through_leases_on_two_instances_admit_exactly_the_limit() {
    let url = redis_url();
    let prefix = format!("bmtest{}", uuid::Uuid::new_v4().simple());
    let instances: Vec<Arc<dyn RateLimiter>> = (0..2)
        .map(|_| {
            let shared = RedisLimiter::new(conn(&url), &prefix, Duration::from_secs(5));
            Arc::new(LeasedLimiter::new(Arc::new(shared), LeaseConfig::default()))
                as Arc<dyn RateLimiter>
        })
        .collect();
    let now = 1_800_000_000_000;
    let base =
        Limits { rpm: 10, tpm: 1_000_000, daily_tokens: 1_000_000, monthly_tokens: 1_000_000 };
    for (limits, window) in [
        (base, Window::RequestsPerMinute),
        (Limits { rpm: 1000, tpm: 50, ..base }, Window::TokensPerMinute),
        (Limits { rpm: 1000, daily_tokens: 50, ..base }, Window::TokensPerDay),
    ] {
        let who = alone(ApiKeyId::new(), &limits);
        assert_eq!(
            admitted_of_200(&instances, &[who], now).await,
            (10, vec![window]),
            "{limits:?}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_redis_is_reported_fast_not_waited_for() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", dead.local_addr().unwrap());
    drop(dead);
    let l = RedisLimiter::new(conn(&url), "dead", Duration::from_millis(200));
    let started = std::time::Instant::now();
    let who = alone(ApiKeyId::new(), &gateway_core::Tier::Free.limits());
    let r = gateway_ratelimit::RateLimiter::reserve(&l, &who, 1, 0).await;
    assert!(matches!(r, Err(gateway_ratelimit::LimitError::Unavailable(_))));
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Two hundred reservations at once, from separate limiters (as separate gateway instances
/// would be) sharing one Redis: a key allowing 10 a minute admits exactly 10.
#[tokio::test]
async fn concurrent_reservations_across_instances_admit_exactly_the_limit() {
    let first = limiter();
    let url = redis_url();
    let prefix = format!("bmtest{}", uuid::Uuid::new_v4().simple());
    let instances: Vec<Arc<dyn RateLimiter>> = (0..2)
        .map(|_| {
            Arc::new(RedisLimiter::new(conn(&url), &prefix, Duration::from_secs(5)))
                as Arc<dyn RateLimiter>
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
    let who = alone(key, &limits);
    assert_eq!(
        admitted_of_200(&instances, &[who], now).await,
        (10, vec![Window::RequestsPerMinute])
    );

    // The same for a user's monthly ceiling, across three of the user's keys: 10 requests of
    // 5 tokens fit in 50.
    let limits = gateway_core::Limits { rpm: 1_000, ..limits };
    let user = UserId::new();
    let keys: Vec<Subject> =
        (0..3).map(|_| Subject { key: ApiKeyId::new(), user, limits, ceiling: 50 }).collect();
    assert_eq!(admitted_of_200(&instances, &keys, now).await, (10, vec![Window::UserMonth]));
}

/// Sends 200 reservations of 5 tokens at once, spread over `instances` and `subjects`;
/// returns how many were admitted and which windows refused the others.
async fn admitted_of_200(
    instances: &[Arc<dyn RateLimiter>],
    subjects: &[Subject],
    now: i64,
) -> (usize, Vec<Window>) {
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let l = instances[i % instances.len()].clone();
            let who = subjects[i % subjects.len()];
            tokio::spawn(async move { l.reserve(&who, 5, now).await.unwrap() })
        })
        .collect();
    let (mut admitted, mut windows) = (0, Vec::new());
    for t in tasks {
        match t.await.unwrap() {
            Decision::Allowed { .. } => admitted += 1,
            Decision::Refused { window, .. } => windows.push(window),
        }
    }
    windows.dedup();
    (admitted, windows)
}

/// A key of its own user, whose monthly ceiling is out of the way.
fn alone(key: ApiKeyId, limits: &Limits) -> Subject {
    Subject { key, user: UserId::from(key.as_uuid()), limits: *limits, ceiling: 1 << 53 }
}

fn client(url: &str) -> redis::Client {
    redis::Client::open(url).unwrap()
}

fn conn(url: &str) -> RedisConn {
    RedisConn::open(url).unwrap()
}

fn quota(daily: u64) -> gateway_core::Limits {
    gateway_core::Limits {
        rpm: 1_000,
        tpm: 1_000_000,
        daily_tokens: daily,
        monthly_tokens: 1_000_000,
    }
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

async fn reserve(l: &dyn RateLimiter, key: ApiKeyId, limits: &Limits, tokens: u64) -> Decision {
    l.reserve(&alone(key, limits), tokens, now_ms()).await.unwrap()
}

/// Deletes every key under `prefix`: what a Redis restart does to them.
async fn wipe(url: &str, prefix: &str) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(&mut conn).await.unwrap();
    assert!(!keys.is_empty());
    let _: () = redis::cmd("DEL").arg(keys).query_async(&mut conn).await.unwrap();
}

#[tokio::test]
async fn a_redis_that_lost_its_counters_gets_the_quotas_back_before_it_admits_anything() {
    let url = redis_url();
    let store = Arc::new(InMemoryQuotaStore::default());
    let prefix = format!("bmtest{}", uuid::Uuid::new_v4().simple());
    let l = RedisLimiter::new(conn(&url), &prefix, Duration::from_secs(2))
        .with_durable_quotas(store.clone());
    let key = ApiKeyId::new();
    let Decision::Allowed { reservation, .. } = reserve(&l, key, &quota(1000), 700).await else {
        panic!("the first request is allowed")
    };
    l.settle(&reservation, 600).await.unwrap();
    assert_eq!(
        l.flush_mirror().await.unwrap(),
        3,
        "the key's day and month counters and the user's month are saved"
    );
    assert_eq!(l.flush_mirror().await.unwrap(), 0, "nothing changed since");

    wipe(&url, &prefix).await;
    let Decision::Refused { window, .. } = reserve(&l, key, &quota(1000), 500).await else {
        panic!("600 of 1000 were used before the restart")
    };
    assert_eq!(window, Window::TokensPerDay);
    assert!(matches!(reserve(&l, key, &quota(1000), 400).await, Decision::Allowed { .. }));
    // The user's ceiling came back too: another key of the user finds 1000 used.
    let other = Subject { key: ApiKeyId::new(), ceiling: 1500, ..alone(key, &quota(1000)) };
    let refused = l.reserve(&other, 501, now_ms()).await.unwrap();
    assert!(matches!(refused, Decision::Refused { window: Window::UserMonth, .. }), "{refused:?}");
}

/// A TCP relay in front of Redis that the test can cut (its connections closed, no new ones
/// until restored) or freeze (its connections carry no byte any more but stay open, as a
/// half-open connection or a partition leaves them; new ones carry on).
struct Relay {
    addr: std::net::SocketAddr,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    /// Connections accepted before the latest freeze are frozen.
    freezes: Arc<std::sync::atomic::AtomicU64>,
}

impl Relay {
    async fn start(target: &str) -> Relay {
        let target: std::net::SocketAddr =
            target.trim_start_matches("redis://").trim_end_matches('/').parse().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let freezes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (up2, conns2, freezes2) = (up.clone(), conns.clone(), freezes.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let freezes = freezes2.clone();
                conns2.lock().unwrap().push(tokio::spawn(async move {
                    let born = freezes.load(std::sync::atomic::Ordering::SeqCst);
                    let Ok(out) = tokio::net::TcpStream::connect(target).await else { return };
                    let (a, b) = (inbound.into_split(), out.into_split());
                    let live = || freezes.load(std::sync::atomic::Ordering::SeqCst) == born;
                    tokio::join!(pipe(a.0, b.1, live), pipe(b.0, a.1, live));
                }));
            }
        });
        Relay { addr, up, conns, freezes }
    }

    fn freeze(&self) {
        self.freezes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `from` to `to` until either closes; once `live` says no, holds both open and
/// carries nothing.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    live: impl Fn() -> bool,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        if !live() {
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn resilient(
    url: &str,
    prefix: &str,
    store: Arc<dyn QuotaStore>,
    instances: u32,
) -> ResilientLimiter {
    let redis = RedisLimiter::new(conn(url), prefix, Duration::from_millis(300))
        .with_durable_quotas(store.clone());
    let policy =
        FallbackPolicy { instances, retry_every: Duration::ZERO, ..FallbackPolicy::default() };
    ResilientLimiter::new(redis, InMemoryLimiter::default(), Some(store), policy)
}

#[tokio::test]
async fn while_redis_is_cut_off_quotas_stay_exact_in_the_store_and_come_back_to_redis() {
    let url = redis_url();
    let relay = Relay::start(&url).await;
    let store = Arc::new(InMemoryQuotaStore::default());
    let prefix = format!("bmtest{}", uuid::Uuid::new_v4().simple());
    let l = resilient(&format!("redis://{}", relay.addr), &prefix, store.clone(), 2);
    let key = ApiKeyId::new();
    assert!(matches!(reserve(&l, key, &quota(1000), 300).await, Decision::Allowed { .. }));
    l.flush_mirror().await.unwrap();

    relay.cut();
    // The store counts on from the mirrored 300: exactly 700 more fit, in any order.
    let mut admitted = 0;
    for _ in 0..10 {
        if let Decision::Allowed { reservation, .. } = reserve(&l, key, &quota(1000), 100).await {
            assert!(reservation.fallback);
            admitted += 1;
        }
    }
    assert_eq!(admitted, 7);
    let health = l.health();
    assert!(!health.redis_up);
    assert_eq!(health.outages, 1);
    // Requests per minute fall back to the limit divided by the instances.
    let other = ApiKeyId::new();
    let per_minute = gateway_core::Limits { rpm: 10, ..quota(1_000_000) };
    let mut admitted = 0;
    for _ in 0..10 {
        if matches!(reserve(&l, other, &per_minute, 1).await, Decision::Allowed { .. }) {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 5, "10 a minute over 2 instances is 5 here");

    // A refund during the outage goes to the store.
    let Decision::Allowed { reservation, .. } = reserve(&l, other, &quota(1_000_000), 50).await
    else {
        panic!("allowed")
    };
    l.settle(&reservation, 0).await.unwrap();

    relay.restore();
    // Back on Redis, which first takes the 1000 the store counted: nothing more fits today.
    let Decision::Refused { window, .. } = reserve(&l, key, &quota(1000), 1).await else {
        panic!("the day's quota was used up during the outage")
    };
    assert_eq!(window, Window::TokensPerDay);
    assert!(l.health().redis_up);
}

/// Reserves `tokens` for `key` on `l`: whether it was admitted, and by the fallback.
async fn admit(l: &dyn RateLimiter, key: ApiKeyId, limits: &Limits, tokens: u64) -> Option<bool> {
    match reserve(l, key, limits, tokens).await {
        Decision::Allowed { reservation, .. } => Some(reservation.fallback),
        Decision::Refused { window, .. } => {
            assert_eq!(window, Window::TokensPerDay);
            None
        }
    }
}

/// Two instances sharing a store and a Redis, `a` through a relay the test can cut; 300 of the
/// key's daily 1000 used through `b` and saved.
struct Partial {
    url: String,
    prefix: String,
    relay: Relay,
    store: Arc<InMemoryQuotaStore>,
    a: ResilientLimiter,
    b: ResilientLimiter,
    key: ApiKeyId,
    day: Limits,
}

async fn partial() -> Partial {
    let url = redis_url();
    let relay = Relay::start(&url).await;
    let store = Arc::new(InMemoryQuotaStore::default());
    let prefix = format!("bmtest{}", uuid::Uuid::new_v4().simple());
    let a = resilient(&format!("redis://{}", relay.addr), &prefix, store.clone(), 2);
    let b = resilient(&url, &prefix, store.clone(), 2);
    let (key, day) = (ApiKeyId::new(), quota(1000));
    assert_eq!(admit(&b, key, &day, 300).await, Some(false));
    b.flush_mirror().await.unwrap();
    Partial { url, prefix, relay, store, a, b, key, day }
}

/// An outage only one instance sees (its calls to Redis fail, the other's do not): what it
/// counts alone in the store survives the other's mirror flushes, reaches Redis with the next
/// one, and is not counted again when the instance comes back. Across both, the day admits
/// exactly its quota.
#[tokio::test]
async fn an_outage_one_instance_sees_alone_loses_nothing_and_counts_nothing_twice() {
    let Partial { relay, store, a, b, key, day, .. } = partial().await;

    relay.cut();
    assert_eq!(admit(&a, key, &day, 100).await, Some(true), "a counts alone");
    assert_eq!(admit(&a, key, &day, 100).await, Some(true));
    // b goes on in Redis and flushes its mirror, which used to overwrite a's 200 with Redis's
    // 400: now it hands them to Redis first.
    assert_eq!(admit(&b, key, &day, 100).await, Some(false));
    b.flush_mirror().await.unwrap();
    // Still cut off, a counts against everything: 600 used.
    assert_eq!(admit(&a, key, &day, 300).await, Some(true));
    assert_eq!(admit(&a, key, &day, 101).await, None, "900 used");
    // b knows of a's last 300 after its next flush (the bound: what instances counting alone
    // admitted within one flush interval).
    b.flush_mirror().await.unwrap();
    assert_eq!(admit(&b, key, &day, 101).await, None, "900 used");
    assert_eq!(admit(&b, key, &day, 100).await, Some(false));

    relay.restore();
    assert_eq!(admit(&a, key, &day, 1).await, None, "back on Redis: 1000 used");
    assert!(a.health().redis_up);
    b.flush_mirror().await.unwrap();
    let today = time::OffsetDateTime::now_utc().date();
    let month = today.replace_day(1).unwrap();
    let saved = store.current(today, month, QuotaRows::All).await.unwrap();
    let day_counter = saved.iter().find(|r| r.period == Period::Day).unwrap();
    assert_eq!((day_counter.used, day_counter.pending), (1000, 0), "{saved:?}");
}

/// Redis restarts empty while one instance is cut off from it: the other restores the quotas
/// from the store, with what the cut-off one counted alone, and the cut-off one, back, adds
/// nothing twice.
#[tokio::test]
async fn a_restore_during_an_outage_one_instance_sees_takes_its_counts_once() {
    let Partial { url, prefix, relay, a, b, key, day, .. } = partial().await;

    relay.cut();
    assert_eq!(admit(&a, key, &day, 200).await, Some(true));
    wipe(&url, &prefix).await;
    // b finds Redis empty and restores 500 before it admits anything.
    let mut admitted = 0;
    while admit(&b, key, &day, 100).await.is_some() {
        admitted += 1;
    }
    assert_eq!(admitted, 5);
    relay.restore();
    assert_eq!(admit(&a, key, &day, 1).await, None, "1000 used, none of it twice");
    b.flush_mirror().await.unwrap();
    assert_eq!(admit(&b, key, &day, 1).await, None);
}

/// A store that is down.
struct DeadStore;

#[async_trait::async_trait]
impl QuotaStore for DeadStore {
    async fn try_consume(
        &self,
        _: &Subject,
        _: time::Date,
        _: time::Date,
        _: u64,
    ) -> Result<Option<Window>, QuotaStoreError> {
        Err(QuotaStoreError("down".into()))
    }
    async fn adjust(
        &self,
        _: ApiKeyId,
        _: UserId,
        _: time::Date,
        _: time::Date,
        _: i64,
    ) -> Result<(), QuotaStoreError> {
        Err(QuotaStoreError("down".into()))
    }
    async fn current(
        &self,
        _: time::Date,
        _: time::Date,
        _: QuotaRows,
    ) -> Result<Vec<QuotaUsage>, QuotaStoreError> {
        Err(QuotaStoreError("down".into()))
    }
    async fn save(&self, _: &[QuotaUsage]) -> Result<(), QuotaStoreError> {
        Err(QuotaStoreError("down".into()))
    }
    async fn handed_over(&self, _: &[QuotaUsage]) -> Result<(), QuotaStoreError> {
        Err(QuotaStoreError("down".into()))
    }
}

#[tokio::test]
async fn with_redis_and_the_store_both_down_quota_limited_requests_fail_closed() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", dead.local_addr().unwrap());
    drop(dead);
    let l = resilient(&url, "dead", Arc::new(DeadStore), 1);
    let r = l.reserve(&alone(ApiKeyId::new(), &quota(1000)), 1, now_ms()).await;
    assert!(matches!(r, Err(LimitError::Unavailable(_))), "{r:?}");
    assert_eq!(l.health().unavailable, 1);
}

#[tokio::test]
async fn settling_in_a_batch_works_on_a_redis_that_lost_its_scripts() {
    let l = limiter();
    let key = ApiKeyId::new();
    let Decision::Allowed { reservation, .. } = reserve(&l, key, &quota(1000), 900).await else {
        panic!("allowed")
    };
    // What a restarted Redis looks like to a pipeline of EVALSHA: NOSCRIPT.
    let client = client(&redis_url());
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SCRIPT").arg("FLUSH").query_async(&mut conn).await.unwrap();
    l.settle_many(&[(reservation, 100)]).await.unwrap();
    assert!(matches!(reserve(&l, key, &quota(1000), 900).await, Decision::Allowed { .. }));
}

#[tokio::test]
async fn the_redis_window_keeps_the_promise_of_the_in_memory_one() {
    gateway_ratelimit::conformance::window_property(&limiter(), 0..60).await;
}

/// The fallback alone (Redis unreachable): per-minute limits in memory, quotas in the store,
/// held to the same contract as every limiter.
#[tokio::test]
async fn the_fallback_meets_the_contract_while_redis_is_unreachable() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", dead.local_addr().unwrap());
    drop(dead);
    let store: Arc<dyn QuotaStore> = Arc::new(InMemoryQuotaStore::default());
    let redis = RedisLimiter::new(conn(&url), "dead", Duration::from_millis(200))
        .with_durable_quotas(store.clone());
    // Redis is not tried again for the test's length: every decision is the fallback's.
    let policy =
        FallbackPolicy { retry_every: Duration::from_hours(1), ..FallbackPolicy::default() };
    let l = ResilientLimiter::new(redis, InMemoryLimiter::default(), Some(store), policy);
    gateway_ratelimit::conformance::limiter_contract(&l).await;
    assert!(!l.health().redis_up);
    assert!(l.health().fallback_reservations > 0);
}

/// A message published by one instance reaches a listener of another (the same channel,
/// another connection), after the listener has said it (re)subscribed.
#[tokio::test]
async fn invalidations_reach_every_listener_of_the_deployment() {
    let prefix = format!("bmtest{}", uuid::Uuid::new_v4().simple());
    let url = redis_url();
    let listener = Bus::new(conn(&url), &prefix);
    let publisher = Bus::new(conn(&url), &prefix);
    let other_deployment = Bus::new(conn(&url), &format!("{prefix}x"));
    let (listening, mut rx) = listening(listener);
    assert_eq!(rx.recv().await, Some(Heard::Subscribed));
    let key = ApiKeyId::new();
    other_deployment.publish(Invalidation::Servers).await.unwrap();
    publisher.publish(Invalidation::Key(key)).await.unwrap();
    assert_eq!(rx.recv().await, Some(Heard::Changed(Invalidation::Key(key))));
    assert_eq!(publisher.errors(), 0);
    listening.abort();
}

/// Runs `bus`'s listener in a task of its own; what it hears arrives on the receiver.
fn listening(
    bus: Bus,
) -> (tokio::task::JoinHandle<()>, tokio::sync::mpsc::UnboundedReceiver<Heard>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        bus.listen(move |heard| {
            let _ = tx.send(heard);
        })
        .await;
    });
    (task, rx)
}

/// A subscription whose connection stops carrying bytes without closing (a half-open
/// connection, a partition that drops packets) is noticed by its heartbeat: the listener hears
/// `Lost` (so caches stop trusting the bus), subscribes again, and hears what is published
/// next.
#[tokio::test]
async fn a_subscription_gone_silent_is_noticed_by_its_heartbeat_and_made_again() {
    let prefix = format!("bmtest{}", uuid::Uuid::new_v4().simple());
    let url = redis_url();
    let relay = Relay::start(&url).await;
    let listener = Bus::new(conn(&format!("redis://{}", relay.addr)), &prefix)
        .with_heartbeat(Duration::from_millis(200));
    let publisher = Bus::new(conn(&url), &prefix);
    let (listening, mut rx) = listening(listener);
    let next = async |rx: &mut tokio::sync::mpsc::UnboundedReceiver<Heard>| {
        tokio::time::timeout(Duration::from_secs(10), rx.recv()).await.expect("heard nothing")
    };
    assert_eq!(next(&mut rx).await, Some(Heard::Subscribed));
    // Answered heartbeats keep a live subscription: five of them, and nothing heard.
    assert!(tokio::time::timeout(Duration::from_secs(1), rx.recv()).await.is_err());
    relay.freeze();
    let missed = ApiKeyId::new();
    publisher.publish(Invalidation::Key(missed)).await.unwrap();
    assert_eq!(next(&mut rx).await, Some(Heard::Lost));
    assert_eq!(next(&mut rx).await, Some(Heard::Subscribed));
    let key = ApiKeyId::new();
    publisher.publish(Invalidation::Key(key)).await.unwrap();
    assert_eq!(next(&mut rx).await, Some(Heard::Changed(Invalidation::Key(key))));
    listening.abort();
}

#[tokio::test]
async fn readiness_pings_answer_and_a_dead_redis_is_reported_within_the_timeout() {
    conn(&redis_url()).ping(Duration::from_secs(2)).await.unwrap();
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", dead.local_addr().unwrap());
    drop(dead);
    assert!(conn(&url).ping(Duration::from_millis(500)).await.is_err());
}
