//! The contract of every [`RateLimiter`] adapter, run against each: in memory here, Redis and
//! the outage fallback in `gateway-redis`.
//!
//! [`window_property`] holds the per-minute window to its stated approximation: a request is
//! refused only if the last 61 whole seconds (the current second and the 60 before it) already
//! hold the limit, so no 60-second span admits more than the limit, and at most one second's
//! worth of traffic is refused early.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support

use gateway_core::{ApiKeyId, Limits, UserId};

use std::sync::Arc;

use crate::{
    Claim, Decision, Holder, LeaseConfig, LeasedLimiter, Period, QuotaRows, QuotaStore, QuotaUsage,
    RateLimiter, Reservation, Snapshot, Subject, Used, Window,
};

const T0: i64 = 1_800_000_000_000; // a whole second, mid-month

fn limits(rpm: u64, tpm: u64, daily: u64, monthly: u64) -> Limits {
    Limits { rpm, tpm, daily_tokens: daily, monthly_tokens: monthly }
}

/// A key of its own user, whose monthly ceiling is out of the way.
fn alone(key: ApiKeyId, lim: &Limits) -> Subject {
    Subject { key, user: UserId::from(key.as_uuid()), limits: *lim, ceiling: u64::MAX / 4 }
}

async fn allowed(
    l: &dyn RateLimiter,
    key: ApiKeyId,
    lim: &Limits,
    tokens: u64,
    now: i64,
) -> Reservation {
    allowed_as(l, &alone(key, lim), tokens, now).await
}

async fn allowed_as(l: &dyn RateLimiter, who: &Subject, tokens: u64, now: i64) -> Reservation {
    match l.reserve(who, tokens, now).await.unwrap() {
        Decision::Allowed { reservation, .. } => reservation,
        other @ Decision::Refused { .. } => panic!("expected to be allowed, got {other:?}"),
    }
}

async fn refused(
    l: &dyn RateLimiter,
    key: ApiKeyId,
    lim: &Limits,
    tokens: u64,
    now: i64,
) -> (Window, u64) {
    refused_as(l, &alone(key, lim), tokens, now).await
}

async fn refused_as(l: &dyn RateLimiter, who: &Subject, tokens: u64, now: i64) -> (Window, u64) {
    match l.reserve(who, tokens, now).await.unwrap() {
        Decision::Refused { window, retry_after_secs, .. } => (window, retry_after_secs),
        other @ Decision::Allowed { .. } => panic!("expected a refusal, got {other:?}"),
    }
}

pub async fn limiter_contract(l: &dyn RateLimiter) {
    // Requests per minute: the limit, then a refusal that says when to come back, then room
    // again once the window has moved on. No 60-second span holds more than the limit.
    let key = ApiKeyId::new();
    let lim = limits(10, 1_000_000, 1_000_000, 1_000_000);
    for i in 0..10 {
        allowed(l, key, &lim, 1, T0 + i * 1000).await;
    }
    let (window, retry) = refused(l, key, &lim, 1, T0 + 30_000).await;
    assert_eq!(window, Window::RequestsPerMinute);
    assert_eq!(retry, 31, "the first request leaves the window 61 s after it came");
    refused(l, key, &lim, 1, T0 + 60_000).await;
    allowed(l, key, &lim, 1, T0 + 61_000).await;
    refused(l, key, &lim, 1, T0 + 61_500).await;

    // Tokens per minute; a refusal reserves nothing (the request count is untouched).
    let key = ApiKeyId::new();
    let lim = limits(100, 1000, 1_000_000, 1_000_000);
    allowed(l, key, &lim, 600, T0).await;
    let (window, _) = refused(l, key, &lim, 500, T0 + 1000).await;
    assert_eq!(window, Window::TokensPerMinute);
    allowed(l, key, &lim, 400, T0 + 1000).await;
    refused(l, key, &lim, 1, T0 + 2000).await;

    // Settling refunds an over-estimate and charges an under-estimate.
    let key = ApiKeyId::new();
    let lim = limits(100, 1_000_000, 1000, 1_000_000);
    let r = allowed(l, key, &lim, 900, T0).await;
    l.settle(&r, 100).await.unwrap();
    allowed(l, key, &lim, 850, T0 + 1000).await;
    let (window, retry) = refused(l, key, &lim, 100, T0 + 2000).await;
    assert_eq!(window, Window::TokensPerDay);
    assert!(window.is_quota());
    assert!((1..=86_400).contains(&retry), "{retry}");
    let r = allowed(l, key, &lim, 0, T0 + 3000).await;
    l.settle(&r, 500).await.unwrap();
    refused(l, key, &lim, 1, T0 + 4000).await;
    // Many at once: the same as one by one.
    let key = ApiKeyId::new();
    let a = allowed(l, key, &lim, 600, T0).await;
    let b = allowed(l, key, &lim, 400, T0).await;
    l.settle_many(&[(a, 100), (b, 400)]).await.unwrap();
    allowed(l, key, &lim, 500, T0 + 1000).await;
    refused(l, key, &lim, 1, T0 + 1000).await;
    // A failed request settles to zero: its whole estimate comes back.
    let key = ApiKeyId::new();
    let r = allowed(l, key, &lim, 1000, T0).await;
    l.settle(&r, 0).await.unwrap();
    allowed(l, key, &lim, 1000, T0 + 1000).await;

    // The daily quota starts over at UTC midnight; the monthly one holds until the month turns.
    let key = ApiKeyId::new();
    let lim = limits(100, 1_000_000, 500, 700);
    let day_end = time::macros::datetime!(2026-11-30 23:59:59 UTC).unix_timestamp() * 1000;
    allowed(l, key, &lim, 500, day_end - 10_000).await;
    assert_eq!(refused(l, key, &lim, 1, day_end).await, (Window::TokensPerDay, 1));
    let next_day = day_end + 120_000; // 1 December: a new day and a new month
    allowed(l, key, &lim, 500, next_day).await;
    assert_eq!(refused(l, key, &lim, 1, next_day + 1000).await.0, Window::TokensPerDay);
    let early_month = time::macros::datetime!(2026-11-02 10:00 UTC).unix_timestamp() * 1000;
    let key = ApiKeyId::new();
    allowed(l, key, &lim, 400, early_month).await;
    allowed(l, key, &lim, 300, early_month + 86_400_000).await;
    assert_eq!(
        refused(l, key, &lim, 1, early_month + 2 * 86_400_000).await.0,
        Window::TokensPerMonth
    );

    // Keys do not share windows.
    let (a, b) = (ApiKeyId::new(), ApiKeyId::new());
    let lim = limits(1, 1000, 1000, 1000);
    allowed(l, a, &lim, 1, T0).await;
    allowed(l, b, &lim, 1, T0).await;
    refused(l, a, &lim, 1, T0).await;

    // A user's keys share the monthly ceiling: what one key used, another cannot; a refusal
    // changes nothing; a settlement moves the ceiling too; a new month starts from zero.
    let user = UserId::new();
    let lim = limits(100, 1_000_000, 1_000_000, 1_000_000);
    let one = Subject { key: ApiKeyId::new(), user, limits: lim, ceiling: 1000 };
    let two = Subject { key: ApiKeyId::new(), ..one };
    let r = allowed_as(l, &one, 700, T0).await;
    assert_eq!(r.user, user);
    let (window, retry) = refused_as(l, &two, 400, T0).await;
    assert_eq!(window, Window::UserMonth);
    assert!(window.is_quota());
    assert!(retry > 86_400, "the ceiling resets when the month turns: {retry}");
    allowed_as(l, &two, 300, T0).await;
    refused_as(l, &one, 1, T0 + 1000).await;
    l.settle(&r, 500).await.unwrap();
    allowed_as(l, &two, 200, T0 + 2000).await;
    refused_as(l, &two, 1, T0 + 3000).await;
    let month_end = time::macros::datetime!(2027-06-30 23:59:00 UTC).unix_timestamp() * 1000;
    let three = Subject { key: ApiKeyId::new(), user: UserId::new(), ..one };
    allowed_as(l, &three, 1000, month_end).await;
    assert_eq!(refused_as(l, &three, 1, month_end + 1000).await, (Window::UserMonth, 59));
    allowed_as(l, &three, 1000, month_end + 120_000).await;
}

async fn granted(
    l: &dyn RateLimiter,
    who: &Subject,
    claim: Claim,
    now: i64,
) -> (Reservation, Snapshot) {
    match l.claim(who, &claim, now).await.unwrap() {
        Decision::Allowed { reservation, snapshot } => (reservation, snapshot),
        other @ Decision::Refused { .. } => panic!("expected a grant, got {other:?}"),
    }
}

/// Claims (the leases' part of the contract): a share of what remains, counted in the second
/// the lease ends in, given back exactly.
#[allow(clippy::many_single_char_names)] // leases a, b, c... in order
pub async fn claim_contract(l: &dyn RateLimiter) {
    let s0 = T0 / 1000;
    let who = alone(ApiKeyId::new(), &limits(100, 10_000, 1_000_000, 1_000_000));
    let lease = |requests, tokens, need, until_ms, share| Claim {
        ending: None,
        requests,
        tokens,
        need,
        until_ms,
        long_until_ms: until_ms,
        share,
    };
    // A quarter of what remains, counted in the second the lease ends in.
    let (a, snapshot) = granted(l, &who, lease(50, 5000, 10, T0 + 2500, 4), T0).await;
    assert_eq!((a.requests, a.tokens, a.second), (25, 2500, s0 + 2));
    assert_eq!((snapshot.remaining_requests, snapshot.remaining_tokens), (75, 7500));
    // Never more than remains; one request's worth is counted now.
    let (b, _) = granted(l, &who, lease(1000, 1, 1, T0, 1), T0).await;
    assert_eq!((b.requests, b.tokens, b.second), (75, 1, s0));
    assert_eq!(refused_as(l, &who, 0, T0 + 1000).await.0, Window::RequestsPerMinute);
    // The unused part of a lease comes back.
    l.adjust(&[(a, Used { requests: 5, tokens: 100 })]).await.unwrap();
    for _ in 0..20 {
        allowed_as(l, &who, 0, T0 + 1000).await;
    }
    refused_as(l, &who, 0, T0 + 1000).await;
    // The lease's requests stay counted a whole window after its last second (s0 + 2): 75 leave
    // at s0 + 61, 20 at s0 + 62, its 5 at s0 + 63.
    let (c, _) = granted(l, &who, lease(1000, 1, 0, T0 + 61_000, 1), T0 + 61_000).await;
    assert_eq!(c.requests, 75);
    l.adjust(&[(c, Used { requests: 0, tokens: 0 })]).await.unwrap();
    let (d, _) = granted(l, &who, lease(1000, 1, 0, T0 + 62_000, 1), T0 + 62_000).await;
    assert_eq!(d.requests, 95);
    l.adjust(&[(d, Used { requests: 0, tokens: 0 })]).await.unwrap();
    let (e, _) = granted(l, &who, lease(1000, 1, 0, T0 + 63_000, 1), T0 + 63_000).await;
    assert_eq!(e.requests, 100);

    // Tokens by the tightest window (the day, here), at least what the request needs.
    let who = alone(ApiKeyId::new(), &limits(1000, 1_000_000, 1000, 1_000_000));
    let (f, _) = granted(l, &who, lease(100, 10_000, 50, T0 + 1000, 2), T0).await;
    assert_eq!((f.requests, f.tokens), (100, 500));
    assert_eq!(refused_as(l, &who, 600, T0).await.0, Window::TokensPerDay);
    let (g, _) = granted(l, &who, lease(1, 10_000, 450, T0, 2), T0).await;
    assert_eq!(g.tokens, 450, "what the request needs, though that is more than the share");
    // A lease that ends gives back in the same step as the next claim.
    let next =
        Claim { ending: Some((f, Used { requests: 1, tokens: 20 })), ..lease(1, 500, 500, T0, 1) };
    let (h, _) = granted(l, &who, next, T0).await;
    assert_eq!(h.tokens, 500);
    assert_eq!(refused_as(l, &who, 31, T0).await.0, Window::TokensPerDay);
    allowed_as(l, &who, 30, T0).await;

    // A small lease lasts until its long end: at most 1/(share × 16) of what remained of the
    // requests and of the tokens (1/32 here).
    let who = alone(ApiKeyId::new(), &limits(10_000, 1_000_000, 1_000_000_000, u64::MAX / 4));
    let long = |requests, tokens| Claim {
        long_until_ms: T0 + 9500,
        ..lease(requests, tokens, 10, T0 + 2500, 2)
    };
    let (i, _) = granted(l, &who, long(30, 3000), T0).await;
    assert_eq!((i.requests, i.tokens, i.second), (30, 3000, s0 + 9));
    // Too many requests for a long lease (400 × 32 > 9,970 left): its short end.
    let (j, _) = granted(l, &who, long(400, 4000), T0).await;
    assert_eq!((j.requests, j.tokens, j.second), (400, 4000, s0 + 2));
    // Too many tokens (40,000 × 32 > 993,000 left): its short end.
    let (k, _) = granted(l, &who, long(10, 40_000), T0).await;
    assert_eq!((k.requests, k.tokens, k.second), (10, 40_000, s0 + 2));
    // One request's worth is counted now, long end or not.
    let (m, _) = granted(l, &who, long(1, 10), T0).await;
    assert_eq!(m.second, s0);
}

/// The contract of every [`QuotaStore`]; `a` and `b` are keys of `user` the store accepts (a
/// database store needs them to exist).
pub async fn quota_store_contract(s: &dyn QuotaStore, a: ApiKeyId, b: ApiKeyId, user: UserId) {
    let day = time::macros::date!(2026 - 11 - 28);
    let month = time::macros::date!(2026 - 11 - 01);
    let lim = limits(1, 1, 1000, 1500);
    let used = |rows: &[QuotaUsage], key: ApiKeyId, period: Period| {
        rows.iter()
            .find(|r| r.holder == Holder::Key { key, user } && r.period == period)
            .map(|r| r.used)
    };
    let user_used = |rows: &[QuotaUsage]| {
        rows.iter().find(|r| r.holder == Holder::User(user)).map(|r| (r.period, r.start, r.used))
    };
    let sa = Subject { key: a, user, limits: lim, ceiling: 1_000_000 };

    // Conditional: within both limits it counts; beyond either, nothing changes.
    assert_eq!(s.try_consume(&sa, day, month, 600).await.unwrap(), None);
    assert_eq!(s.try_consume(&sa, day, month, 500).await.unwrap(), Some(Window::TokensPerDay));
    assert_eq!(s.try_consume(&sa, day, month, 400).await.unwrap(), None);
    let rows = s.current(day, month, QuotaRows::All).await.unwrap();
    assert_eq!(used(&rows, a, Period::Day), Some(1000));
    assert_eq!(used(&rows, a, Period::Month), Some(1000));
    assert_eq!(user_used(&rows), Some((Period::Month, month, 1000)));
    let next_day = day.next_day().unwrap();
    assert_eq!(
        s.try_consume(&sa, next_day, month, 600).await.unwrap(),
        Some(Window::TokensPerMonth)
    );
    assert_eq!(s.try_consume(&sa, next_day, month, 500).await.unwrap(), None);

    // Adjustments refund or charge every counter, never below zero.
    s.adjust(a, user, day, month, -300).await.unwrap();
    s.adjust(a, user, next_day, month, -10_000).await.unwrap();
    let rows = s.current(day, month, QuotaRows::All).await.unwrap();
    assert_eq!(used(&rows, a, Period::Day), Some(700));
    assert_eq!(used(&rows, a, Period::Month), Some(0));
    assert_eq!(user_used(&rows), Some((Period::Month, month, 0)));
    let holders = [Holder::Key { key: a, user }, Holder::User(user)];
    let listed = rows.iter().filter(|r| holders.contains(&r.holder)).count();
    assert_eq!(listed, 3, "other days are not listed");

    // The user's ceiling counts every key of the user.
    let sb = Subject { key: b, ceiling: 900, ..sa };
    let other_day = next_day.next_day().unwrap();
    assert_eq!(s.try_consume(&sa, other_day, month, 800).await.unwrap(), None);
    assert_eq!(s.try_consume(&sb, other_day, month, 101).await.unwrap(), Some(Window::UserMonth));
    assert_eq!(s.try_consume(&sb, other_day, month, 100).await.unwrap(), None);
    s.adjust(a, user, other_day, month, -800).await.unwrap();
    s.adjust(b, user, other_day, month, -100).await.unwrap();

    // Saving overwrites (the mirror of Redis).
    let saved = [
        QuotaUsage {
            holder: Holder::Key { key: b, user },
            period: Period::Day,
            start: day,
            used: 42,
            pending: 0,
        },
        QuotaUsage {
            holder: Holder::Key { key: b, user },
            period: Period::Month,
            start: month,
            used: 420,
            pending: 0,
        },
        QuotaUsage {
            holder: Holder::User(user),
            period: Period::Month,
            start: month,
            used: 4200,
            pending: 0,
        },
    ];
    s.save(&saved).await.unwrap();
    s.save(&saved[..1]).await.unwrap();
    let rows = s.current(day, month, QuotaRows::All).await.unwrap();
    assert_eq!(used(&rows, b, Period::Day), Some(42));
    assert_eq!(used(&rows, b, Period::Month), Some(420));
    assert_eq!(user_used(&rows), Some((Period::Month, month, 4200)));
    s.save(&[QuotaUsage { used: 0, ..saved[2].clone() }]).await.unwrap();

    // Exact under contention: 40 concurrent requests of 10 tokens on 100 left admit 10, by
    // the key's daily quota and by the user's ceiling.
    let third_day = other_day.next_day().unwrap();
    let day_limited = Subject { limits: limits(1, 1, 100, 1_000_000), ..sb };
    let ceiling_limited = Subject { ceiling: 200, ..sa };
    for (who, day) in [(day_limited, third_day), (ceiling_limited, third_day.next_day().unwrap())] {
        let results =
            futures_util::future::join_all((0..40).map(|_| s.try_consume(&who, day, month, 10)))
                .await;
        let admitted = results.into_iter().filter(|r| matches!(r, Ok(None))).count();
        assert_eq!(admitted, 10, "{who:?}");
    }

    // What is counted alone survives the mirror: an instance that counts alone while another
    // saves Redis's count loses nothing, and limits apply to the sum.
    let b_day = |rows: &[QuotaUsage]| {
        rows.iter()
            .find(|r| r.holder == Holder::Key { key: b, user } && r.period == Period::Day)
            .map(|r| (r.used, r.pending))
    };
    let sb_day = Subject { limits: limits(1, 1, 200, 1_000_000), ceiling: 1_000_000, ..sb };
    assert_eq!(s.try_consume(&sb_day, day, month, 100).await.unwrap(), None, "42 + 100");
    // Another instance's flush: Redis counted 8 more than the 42 it had.
    s.save(&[QuotaUsage { used: 50, ..saved[0].clone() }]).await.unwrap();
    let rows = s.current(day, month, QuotaRows::All).await.unwrap();
    assert_eq!(b_day(&rows), Some((150, 100)));
    assert_eq!(s.try_consume(&sb_day, day, month, 51).await.unwrap(), Some(Window::TokensPerDay));
    let pending = s.current(day, month, QuotaRows::Pending).await.unwrap();
    assert!(pending.iter().all(|r| r.pending != 0), "{pending:?}");
    assert_eq!(b_day(&pending), Some((150, 100)));
    // Counted after the list was read: it stays pending when the listed part is handed over.
    assert_eq!(s.try_consume(&sb_day, day, month, 20).await.unwrap(), None);
    s.handed_over(&pending).await.unwrap();
    let rows = s.current(day, month, QuotaRows::All).await.unwrap();
    assert_eq!(b_day(&rows), Some((170, 20)));
    let late = rows.into_iter().find(|r| b_day(std::slice::from_ref(r)).is_some()).unwrap();
    s.handed_over(&[late]).await.unwrap();
    // Nothing left alone: listed among all, not among the pending.
    let rows = s.current(day, month, QuotaRows::All).await.unwrap();
    assert_eq!(b_day(&rows), Some((170, 0)));
    assert_eq!(b_day(&s.current(day, month, QuotaRows::Pending).await.unwrap()), None);
    // Handed over twice (a repeat after a failure): the sum stays, and the part owed back is
    // listed for the next hand-over to take back.
    s.handed_over(&pending).await.unwrap();
    let listed = s.current(day, month, QuotaRows::Pending).await.unwrap();
    assert_eq!(b_day(&listed), Some((170, -100)));
    // A refund beyond everything takes the sum to zero, not below.
    s.adjust(b, user, day, month, -1000).await.unwrap();
    let rows = s.current(day, month, QuotaRows::All).await.unwrap();
    assert_eq!(b_day(&rows).map(|(used, _)| used), Some(0));
    assert_eq!(s.try_consume(&sb_day, day, month, 200).await.unwrap(), None);
}

const SPAN_MS: i64 = 60_000;

/// Arrival times (ms) of bursts and lulls over about five minutes.
fn arrivals(rng: &mut fastrand::Rng) -> Vec<i64> {
    let mut t = 1_800_000_000_000 + rng.i64(0..1000);
    let mut out = Vec::new();
    while out.len() < 400 {
        // Mostly short gaps, now and then a long lull, sometimes a burst in one millisecond.
        t += match rng.u8(0..10) {
            0 => rng.i64(5_000..40_000),
            1 => 0,
            _ => rng.i64(1..1_500),
        };
        out.push(t);
    }
    out
}

/// Runs `seeds` random arrival patterns through `limiter` (a fresh key each).
pub async fn window_property(limiter: &dyn RateLimiter, seeds: std::ops::Range<u64>) {
    window_property_within(limiter, seeds, 0).await;
}

/// [`window_property`] for a limiter that may refuse up to `early_ms` sooner: a leased one
/// counts a lease's requests in the second it ends in, up to its duration after they came.
pub async fn window_property_within(
    limiter: &dyn RateLimiter,
    seeds: std::ops::Range<u64>,
    early_ms: i64,
) {
    for seed in seeds {
        let mut rng = fastrand::Rng::with_seed(seed);
        let rpm = rng.u64(1..30);
        let limits = Limits {
            rpm,
            tpm: u64::MAX / 4,
            daily_tokens: u64::MAX / 4,
            monthly_tokens: u64::MAX / 4,
        };
        let who = alone(ApiKeyId::new(), &limits);
        let mut admitted: Vec<i64> = Vec::new();
        for t in arrivals(&mut rng) {
            match limiter.reserve(&who, 0, t).await.unwrap() {
                Decision::Allowed { .. } => admitted.push(t),
                Decision::Refused { .. } => {
                    // Justified: the 61 whole seconds up to t already hold the limit.
                    let from = (t.div_euclid(1000) - 60) * 1000 - early_ms;
                    let held = admitted.iter().filter(|&&a| a >= from && a <= t).count() as u64;
                    assert!(
                        held >= rpm,
                        "seed {seed}: refused at {t} with only {held} of {rpm} in the last 61 s"
                    );
                }
            }
        }
        // No 60-second span holds more than the limit (spans starting at each admission cover
        // every maximal case).
        for (i, &start) in admitted.iter().enumerate() {
            let in_span = admitted[i..].iter().take_while(|&&a| a < start + SPAN_MS).count() as u64;
            assert!(
                in_span <= rpm,
                "seed {seed}: {in_span} admitted in the 60 s from {start}, limit {rpm}"
            );
        }
    }
}

/// Leases across several instances: `shared` is what they share (Redis in production). For
/// each seed, 2 to 4 instances take leases of random length and share and admit random
/// arrivals of requests needing random tokens, settled to a random part of their estimate.
/// Holds: no 60-second span admits more than the RPM, none uses more than the TPM, the day no
/// more than the daily quota; and the fairness bound: whenever a request is refused by
/// requests per minute, the other instances hold at most `(k - 1) x rpm / share` requests
/// unused. After the leases end and the window moves on, a burst admits exactly the RPM.
pub async fn lease_property(shared: Arc<dyn RateLimiter>, seeds: std::ops::Range<u64>) {
    let (mut local_total, mut claims_total, mut long_total) = (0, 0, 0);
    for seed in seeds {
        let mut rng = fastrand::Rng::with_seed(seed);
        let k = rng.usize(2..5);
        let share = rng.u64(2..17);
        let duration_ms = rng.i64(500..4000);
        let long_ms = duration_ms * rng.i64(1..6);
        let instances: Vec<LeasedLimiter> = (0..k)
            .map(|_| {
                let config = LeaseConfig {
                    duration: std::time::Duration::from_millis(duration_ms as u64),
                    long: std::time::Duration::from_millis(long_ms as u64),
                    share,
                    max_requests: 1000,
                };
                LeasedLimiter::new(shared.clone(), config)
            })
            .collect();
        let rpm = if rng.bool() { rng.u64(5..300) } else { rng.u64(300..3000) };
        let tpm = rpm * rng.u64(5..40);
        let daily = tpm * rng.u64(2..6);
        let lim = Limits { rpm, tpm, daily_tokens: daily, monthly_tokens: u64::MAX / 4 };
        let who = alone(ApiKeyId::new(), &lim);
        // Admitted requests: (when, actual tokens).
        let mut admitted: Vec<(i64, u64)> = Vec::new();
        let mut t = T0 + 3_600_000 + rng.i64(0..1000);
        for _ in 0..1500 {
            t += match rng.u8(0..20) {
                0 => rng.i64(2_000..20_000),
                1..=4 => 0,
                _ => rng.i64(0..300),
            };
            for l in &instances {
                l.expire(t).await.unwrap();
            }
            let i = rng.usize(0..k);
            let need = rng.u64(1..60);
            match instances[i].reserve(&who, need, t).await.unwrap() {
                Decision::Allowed { reservation, .. } => {
                    let actual = rng.u64(0..=need);
                    instances[i].settle(&reservation, actual).await.unwrap();
                    admitted.push((t, actual));
                }
                Decision::Refused { window, .. } => {
                    if window == Window::RequestsPerMinute {
                        let others =
                            (0..k).filter(|&j| j != i).map(|j| instances[j].held_since(who.key));
                        let (mut held, mut held_long) = (0, 0);
                        for ((requests, _), since) in others {
                            held += requests;
                            // Granted more than `duration` ago: a small lease, living long.
                            if since.is_some_and(|at| t - at > duration_ms) {
                                held_long += requests;
                            }
                        }
                        let bound = (k as u64 - 1) * (rpm / share);
                        assert!(
                            held <= bound,
                            "seed {seed}: refused while others held {held} > {bound}"
                        );
                        let bound = (k as u64 - 1) * (rpm / (share * crate::LONG_LEASE_FACTOR));
                        assert!(
                            held_long <= bound,
                            "seed {seed}: refused while others held {held_long} > {bound} in long leases"
                        );
                    }
                }
            }
        }
        for (i, &(start, _)) in admitted.iter().enumerate() {
            let span = admitted[i..].iter().take_while(|(a, _)| *a < start + SPAN_MS);
            let (requests, tokens) = span.fold((0, 0), |(n, tk), (_, a)| (n + 1, tk + a));
            assert!(requests <= rpm, "seed {seed}: {requests} in the 60 s from {start}, rpm {rpm}");
            assert!(
                tokens <= tpm,
                "seed {seed}: {tokens} tokens in the 60 s from {start}, tpm {tpm}"
            );
        }
        let day_of = |ms: i64| ms.div_euclid(86_400_000);
        for day in
            admitted.iter().map(|(a, _)| day_of(*a)).collect::<std::collections::BTreeSet<_>>()
        {
            let used: u64 =
                admitted.iter().filter(|(a, _)| day_of(*a) == day).map(|(_, tk)| tk).sum();
            assert!(used <= daily, "seed {seed}: {used} tokens on day {day}, daily {daily}");
        }
        let stat = |f: fn(&crate::LeaseStats) -> &std::sync::atomic::AtomicU64| -> u64 {
            instances.iter().map(|l| f(l.stats()).load(std::sync::atomic::Ordering::Relaxed)).sum()
        };
        local_total += stat(|s| &s.local);
        long_total += stat(|s| &s.long);
        claims_total += stat(|s| &s.claims);
        // Everything given back: a minute and the longest lease later, a burst gets exactly
        // the RPM (tokens to spare), across the instances.
        t += SPAN_MS + long_ms + 2_000;
        for l in &instances {
            l.expire(t).await.unwrap();
        }
        let fresh = Subject {
            limits: Limits { tpm: u64::MAX / 4, daily_tokens: u64::MAX / 4, ..lim },
            ..who
        };
        let mut burst = 0;
        for n in 0..rpm * 2 {
            let l = &instances[(n as usize) % k];
            if matches!(l.reserve(&fresh, 0, t).await.unwrap(), Decision::Allowed { .. }) {
                burst += 1;
            }
        }
        // Leases hold budget the other instances then cannot use: the bound again.
        assert!(burst <= rpm, "seed {seed}: a burst admitted {burst} > {rpm}");
        let bound = (k as u64 - 1) * (rpm / share);
        assert!(burst + bound >= rpm, "seed {seed}: a burst admitted only {burst} of {rpm}");
    }
    // Not a vacuous pass: leases did admit requests without a call to the shared limiter.
    assert!(
        local_total > claims_total / 10,
        "{local_total} admitted from leases, {claims_total} claims"
    );
    assert!(long_total > 0, "no lease was small enough to last until its long end");
}
