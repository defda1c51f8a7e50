//! Per-key rate limits and token quotas for the BluesMinds gateway: requests and tokens per
//! minute, tokens per calendar UTC day and month; and the user's monthly ceiling (tokens across
//! all of a user's keys in a calendar month: what their plan and spend cap allow).
//!
//! One [`RateLimiter::reserve`] call before forwarding checks every window and, only if all of
//! them allow it, reserves one request and a token estimate in all of them at once;
//! [`RateLimiter::settle`] replaces the estimate with the real count afterwards (refunding or
//! charging the difference; a failed request settles to zero tokens).
//!
//! Per-minute windows count one-second buckets over the last 61 seconds, so no 60-second span
//! ever admits more than the limit; the price is that a client may be refused up to one
//! second's worth of traffic early. Days and months are calendar periods in UTC.
//!
//! Adapters: [`InMemoryLimiter`] (one process) here; `gateway_redis::RedisLimiter` (one Lua
//! script, one round trip, exact across any number of gateway instances sharing the Redis), a
//! [`SharedLimiter`], in the Redis adapter crate. [`ResilientLimiter`] puts a shared limiter
//! and the in-memory one behind the outage policy. Every adapter is held to one conformance
//! suite. This crate does no I/O.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use gateway_core::{ApiKeyId, Tier, UserId};
//! use gateway_ratelimit::{Decision, InMemoryLimiter, RateLimiter, Subject};
//!
//! let limiter = InMemoryLimiter::default();
//! // 10 requests a minute; the user may use 10,000 tokens this month across all keys.
//! let who = Subject { key: ApiKeyId::new(), user: UserId::new(), limits: Tier::Free.limits(), ceiling: 10_000 };
//! let now = 1_800_000_000_000;
//! for _ in 0..10 {
//!     let Decision::Allowed { reservation, .. } = limiter.reserve(&who, 10, now).await.unwrap() else { panic!() };
//!     limiter.settle(&reservation, 8).await.unwrap();
//! }
//! assert!(matches!(limiter.reserve(&who, 10, now).await.unwrap(), Decision::Refused { .. }));
//! # });
//! ```

mod fallback;
mod lease;
mod memory;
pub mod window;

#[cfg(any(test, feature = "test-util"))]
pub mod conformance;

use async_trait::async_trait;
use gateway_core::{ApiKeyId, Limits, UserId};

pub use fallback::{
    CapacityFallback, FallbackPolicy, LimiterHealth, QuotaFallback, ResilientLimiter,
};
pub use lease::{LeaseConfig, LeaseStats, LeasedLimiter};
pub use memory::{InMemoryLimiter, InMemoryQuotaStore};

/// Which window refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    RequestsPerMinute,
    TokensPerMinute,
    TokensPerDay,
    TokensPerMonth,
    /// The user's tokens this month across all keys (the plan's included tokens, or its
    /// spend cap).
    UserMonth,
}

impl Window {
    /// Requests and tokens per minute protect capacity (`rate_limit_exceeded`); daily and
    /// monthly tokens protect money (`insufficient_quota`).
    pub fn is_quota(self) -> bool {
        matches!(self, Window::TokensPerDay | Window::TokensPerMonth | Window::UserMonth)
    }
}

/// Whose request a reservation is for, and what limits it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subject {
    pub key: ApiKeyId,
    /// The key's owner: the monthly ceiling counts every key of the user.
    pub user: UserId,
    /// The key's limits.
    pub limits: Limits,
    /// The most tokens the user may use in the current calendar month (UTC).
    pub ceiling: u64,
}

/// What the `x-ratelimit-*` headers report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub limit_requests: u64,
    pub remaining_requests: u64,
    pub limit_tokens: u64,
    pub remaining_tokens: u64,
    /// Seconds until the request window has room again.
    pub reset_requests_secs: u64,
    pub reset_tokens_secs: u64,
}

impl Snapshot {
    /// The headers' view of `limits` with `requests` and `tokens` used in the current minute.
    pub fn from_usage(limits: &Limits, requests: u64, tokens: u64) -> Self {
        Self {
            limit_requests: limits.rpm,
            remaining_requests: limits.rpm.saturating_sub(requests),
            limit_tokens: limits.tpm,
            remaining_tokens: limits.tpm.saturating_sub(tokens),
            reset_requests_secs: 0,
            reset_tokens_secs: 0,
        }
    }
}

/// A reservation to settle once the real usage is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reservation {
    pub key: ApiKeyId,
    pub user: UserId,
    /// Requests counted: one, or a lease's.
    pub requests: u64,
    pub tokens: u64,
    /// The second the reservation was counted in (unix seconds).
    pub second: i64,
    /// `YYYYMMDD` and `YYYYMM` of the quota periods charged.
    pub day: u32,
    pub month: u32,
    /// Made by a [`ResilientLimiter`]'s fallback while Redis was unreachable.
    pub fallback: bool,
    /// The [`LeasedLimiter`] lease the request was admitted under (0: none); adapters below
    /// it ignore it.
    pub lease: u64,
}

/// A claim on a key's windows: at least one request and `need` tokens, or nothing; beyond that,
/// up to `requests` and `tokens` more for a lease, each at most `1/share` of what remains in its
/// tightest window ([`grant`]). What a claim gets beyond one request's worth may be used until
/// `until_ms` (until `long_until_ms` when it is small beside what remains: [`counted_second`]),
/// so it is counted in the per-minute windows at the second its end falls in: every request
/// admitted under it then stays counted at least a full window after it came, and no window
/// ever holds less than what was admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The claimant's previous lease of the key, ending: what it did not use goes back in the
    /// same atomic step, before the claim is checked.
    pub ending: Option<(Reservation, Used)>,
    /// Requests wanted (at least one is needed).
    pub requests: u64,
    /// Tokens wanted (at least `need`).
    pub tokens: u64,
    /// Tokens the request at hand needs: granted in full or refused.
    pub need: u64,
    /// Until when a lease may be used (unix milliseconds; never past the day it starts in).
    pub until_ms: i64,
    /// Until when a small lease may be used (at least `until_ms`; the same day): one that
    /// holds at most `1/(share × LONG_LEASE_FACTOR)` of what remains in every window.
    pub long_until_ms: i64,
    /// A claim takes at most this fraction (1/share) of what remains beyond one request's worth.
    pub share: u64,
}

impl Claim {
    /// A grant at most `1/small_divisor()` of what remains is small enough to last until
    /// `long_until_ms` (`share × LONG_LEASE_FACTOR`).
    pub fn small_divisor(&self) -> u64 {
        self.share.max(1).saturating_mul(LONG_LEASE_FACTOR)
    }

    /// One request and `tokens`, counted now: a plain reservation.
    pub fn single(tokens: u64, now_ms: i64) -> Self {
        Self {
            ending: None,
            requests: 1,
            tokens,
            need: tokens,
            until_ms: now_ms,
            long_until_ms: now_ms,
            share: 1,
        }
    }
}

/// What a claim gets when `requests` and `tokens` remain in the key's tightest windows
/// (the caller has checked that at least one request and `need` tokens remain): every
/// adapter grants by this rule.
pub fn grant(claim: &Claim, requests: u64, tokens: u64) -> (u64, u64) {
    let share = claim.share.max(1);
    let n = claim.requests.min((requests / share).max(1)).max(1);
    if n == 1 {
        // The request at hand takes the one request: tokens beyond its need would serve none.
        return (1, claim.need);
    }
    let t = claim.tokens.min((tokens / share).max(claim.need)).max(claim.need).min(tokens);
    (n, t)
}

/// How much smaller than the `1/share` cap a lease must be to last until its claim's
/// `long_until_ms`: a lease that holds so little of a key's budget costs the other instances
/// little however long it lives, and a key used now and then needs fewer claims.
pub const LONG_LEASE_FACTOR: u64 = 16;

/// The second a grant is counted in: the current one for one request's worth; the second the
/// lease ends in otherwise (no earlier than now): `long_until_ms` when the grant is at most
/// `1/(share × LONG_LEASE_FACTOR)` of the `requests` and the `tokens` that remained (before the
/// grant, in the tightest windows, as for [`grant`]), else `until_ms`.
pub fn counted_second(
    claim: &Claim,
    granted: (u64, u64),
    remaining: (u64, u64),
    now_ms: i64,
) -> i64 {
    let now = now_ms.div_euclid(1000);
    if granted == (1, claim.need) {
        return now;
    }
    let small = claim.small_divisor();
    let long = granted.0.saturating_mul(small) <= remaining.0
        && granted.1.saturating_mul(small) <= remaining.1;
    let end = if long { claim.long_until_ms.max(claim.until_ms) } else { claim.until_ms };
    end.div_euclid(1000).max(now)
}

/// What a reservation turned out to use: its requests (fewer for a lease that ends with some
/// unused) and its real tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Used {
    pub requests: u64,
    pub tokens: u64,
}

/// The answer to a reservation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed { reservation: Reservation, snapshot: Snapshot },
    Refused { window: Window, retry_after_secs: u64, snapshot: Snapshot },
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// The backing store (Redis) failed or did not answer in time.
    #[error("rate limiter unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Checks and reserves every window of a key at once.
#[async_trait]
pub trait RateLimiter: Send + Sync {
    /// Checks every window of the key and the user's monthly ceiling and, if one request and
    /// `claim.need` tokens fit in all of them, reserves what [`grant`] gives in all of them at
    /// once; otherwise nothing. `now_ms`: milliseconds since the Unix epoch.
    async fn claim(
        &self,
        who: &Subject,
        claim: &Claim,
        now_ms: i64,
    ) -> Result<Decision, LimitError>;

    /// Reserves one request and `tokens` (an estimate) in every window of the key and in the
    /// user's monthly ceiling, or nothing if any of them would be exceeded.
    async fn reserve(
        &self,
        who: &Subject,
        tokens: u64,
        now_ms: i64,
    ) -> Result<Decision, LimitError> {
        self.claim(who, &Claim::single(tokens, now_ms), now_ms).await
    }

    /// Replaces what reservations counted with what they used (never below zero), in one step
    /// where the adapter can (Redis: one script call per batch). Stops at the first failure.
    async fn adjust(&self, used: &[(Reservation, Used)]) -> Result<(), LimitError>;

    /// Replaces the reservation's token estimate with `actual_tokens`.
    async fn settle(
        &self,
        reservation: &Reservation,
        actual_tokens: u64,
    ) -> Result<(), LimitError> {
        let used = Used { requests: reservation.requests, tokens: actual_tokens };
        self.adjust(&[(*reservation, used)]).await
    }

    /// Settles the reservation at once, without I/O, when the limiter holds what it counted
    /// (a live lease); false when it must go through [`RateLimiter::settle`] instead.
    fn settle_in_place(&self, _reservation: &Reservation, _actual_tokens: u64) -> bool {
        false
    }

    /// Settles many reservations at once.
    async fn settle_many(&self, settlements: &[(Reservation, u64)]) -> Result<(), LimitError> {
        let used: Vec<(Reservation, Used)> = settlements
            .iter()
            .map(|(r, actual)| (*r, Used { requests: r.requests, tokens: *actual }))
            .collect();
        self.adjust(&used).await
    }
}

/// A limiter whose counters several gateway instances share (Redis), and which can lose them
/// (a restarted Redis) or miss what an instance counted without it (an outage, whole or seen
/// by one instance only): [`ResilientLimiter`] brings it up to date before using it again
/// after an outage, and mirrors its quotas to the durable [`QuotaStore`].
#[async_trait]
pub trait SharedLimiter: RateLimiter + std::fmt::Debug {
    /// Gives the backend what the durable store counted alone ([`QuotaUsage::pending`]) and
    /// brings back quota counters it lost, before it admits anything.
    async fn catch_up(&self, now_ms: i64) -> Result<(), LimitError>;

    /// Saves the quota counters changed since the last call to the durable store (first
    /// giving the backend what the store counted alone meanwhile, whoever counted it);
    /// returns how many counters were saved.
    async fn flush_mirror(&self) -> Result<usize, LimitError>;
}

/// A daily or monthly quota period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Period {
    Day,
    Month,
}

impl Period {
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Month => "month",
        }
    }
}

/// Whose counter: a key's daily and monthly quotas, or a user's monthly ceiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Holder {
    /// A key, and its owner (a shared limiter keeps a user's counters together).
    Key { key: ApiKeyId, user: UserId },
    /// Counted by month only.
    User(UserId),
}

/// Tokens a key or user used in one quota period (`start`: the day, or the month's first day).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaUsage {
    pub holder: Holder,
    pub period: Period,
    pub start: time::Date,
    /// Everything the store knows was used: the mirror of the shared limiter's counter plus
    /// [`QuotaUsage::pending`].
    pub used: u64,
    /// The part of `used` the store counted alone (while the shared limiter was unreachable
    /// from some instance) and has not handed to the shared limiter yet; negative when more
    /// was handed over than is owed (a hand-over repeated after a failure), which the next
    /// hand-over takes back.
    pub pending: i64,
}

impl QuotaUsage {
    /// Whose counter it is, or whose key's.
    pub fn user(&self) -> UserId {
        match self.holder {
            Holder::Key { user, .. } | Holder::User(user) => user,
        }
    }
}

/// Which counters [`QuotaStore::current`] lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaRows {
    /// Every counter of the periods.
    All,
    /// Only those with a part counted alone ([`QuotaUsage::pending`] not zero).
    Pending,
}

/// The durable store of daily and monthly quota usage (Postgres in the gateway): the mirror
/// of the Redis counters, and the exact counter itself while Redis is unreachable.
///
/// Each counter has two parts: the mirror (what the shared limiter held when it was last
/// saved, overwritten by [`QuotaStore::save`]) and the part counted alone
/// ([`QuotaUsage::pending`], changed only by [`QuotaStore::try_consume`],
/// [`QuotaStore::adjust`] and [`QuotaStore::handed_over`]), so an instance that counts alone
/// while others still reach Redis and save their mirror loses nothing. Limits are checked
/// against the sum.
#[async_trait]
pub trait QuotaStore: Send + Sync {
    /// Adds `tokens` to the key's counters of `day` and `month` and to the user's counter of
    /// `month` (their parts counted alone) only if all stay within
    /// `who.limits.daily_tokens`, `who.limits.monthly_tokens` and `who.ceiling`, atomically
    /// and exactly however many processes share the store. Returns the window that would be
    /// exceeded (nothing changed).
    async fn try_consume(
        &self,
        who: &Subject,
        day: time::Date,
        month: time::Date,
        tokens: u64,
    ) -> Result<Option<Window>, QuotaStoreError>;

    /// Adds `delta` (negative: a refund) to the part counted alone of the key's two counters
    /// and the user's one, never taking a counter's sum below zero.
    async fn adjust(
        &self,
        key: ApiKeyId,
        user: UserId,
        day: time::Date,
        month: time::Date,
        delta: i64,
    ) -> Result<(), QuotaStoreError>;

    /// The keys' counters of `day` and `month`, and the users' of `month`: all, or only those
    /// with a part counted alone.
    async fn current(
        &self,
        day: time::Date,
        month: time::Date,
        which: QuotaRows,
    ) -> Result<Vec<QuotaUsage>, QuotaStoreError>;

    /// Overwrites the mirror part of these counters with `used` (what the shared limiter
    /// holds); `pending` is ignored, and the parts counted alone are kept.
    async fn save(&self, rows: &[QuotaUsage]) -> Result<(), QuotaStoreError>;

    /// The shared limiter now holds each row's `pending` tokens: they move from the part
    /// counted alone to the mirror (`pending -= row.pending`, `mirror += row.pending`), so
    /// the sum stays and tokens counted alone since the row was read stay pending.
    async fn handed_over(&self, rows: &[QuotaUsage]) -> Result<(), QuotaStoreError>;
}

#[derive(Debug, thiserror::Error)]
#[error("quota store unavailable")]
pub struct QuotaStoreError(#[source] pub Box<dyn std::error::Error + Send + Sync>);
