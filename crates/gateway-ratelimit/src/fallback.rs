//! Limits that survive a Redis outage: Redis while it answers; when it does not, the policy
//! decides. Requests and tokens per minute protect capacity, so by default they fall back to
//! per-instance limits in memory (the limit divided by the number of instances); daily and
//! monthly quotas protect money, so by default they fall back to exact conditional updates in
//! the [`QuotaStore`]. When the store fails too, reservations fail with
//! [`LimitError::Unavailable`] (the gateway answers 503 with `Retry-After`).
//!
//! After an outage Redis is tried again at most once per `retry_every`; before it is used
//! again, it is given what the store counted alone meanwhile (and the quotas it lost, if it
//! restarted). Every instance that reaches Redis hands it the store's counts in its mirror
//! flush too, so what an instance counts alone while the others still reach Redis (an outage
//! only it sees) reaches Redis within a flush interval, even if that instance never comes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use gateway_core::Limits;

use crate::window::{date_of, periods};
use crate::{
    Claim, Decision, InMemoryLimiter, LimitError, QuotaStore, RateLimiter, Reservation,
    SharedLimiter, Subject, Used, Window,
};

/// What requests and tokens per minute do while Redis is unreachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CapacityFallback {
    /// Per-instance limits in memory at the limit divided by the number of instances.
    #[default]
    Local,
    /// No per-minute limits.
    Allow,
    /// Refuse every request (503).
    Refuse,
}

/// What daily and monthly quotas do while Redis is unreachable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QuotaFallback {
    /// Exact conditional updates in the quota store; 503 when it fails too.
    #[default]
    Store,
    /// No quotas.
    Allow,
    /// Refuse every request (503).
    Refuse,
}

#[derive(Clone, Copy, Debug)]
pub struct FallbackPolicy {
    /// Gateway instances sharing the limits (divides the per-minute limits in memory).
    pub instances: u32,
    pub capacity: CapacityFallback,
    pub quotas: QuotaFallback,
    /// How long after a failure Redis is left alone before it is tried again.
    pub retry_every: Duration,
}

impl Default for FallbackPolicy {
    fn default() -> Self {
        Self {
            instances: 1,
            capacity: CapacityFallback::Local,
            quotas: QuotaFallback::Store,
            retry_every: Duration::from_secs(1),
        }
    }
}

/// For metrics and readiness.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LimiterHealth {
    pub redis_up: bool,
    /// Outages seen (Redis going from answering to not answering).
    pub outages: u64,
    /// Reservations decided by the fallback.
    pub fallback_reservations: u64,
    /// Requests refused because neither Redis nor the fallback could decide.
    pub unavailable: u64,
}

/// The shared limiter (Redis), with the fallback policy when it does not answer.
pub struct ResilientLimiter {
    redis: Box<dyn SharedLimiter>,
    local: InMemoryLimiter,
    store: Option<Arc<dyn QuotaStore>>,
    policy: FallbackPolicy,
    down: AtomicBool,
    /// Unix milliseconds before which Redis is not tried again during an outage.
    retry_at: AtomicI64,
    outages: AtomicU64,
    fallback_reservations: AtomicU64,
    unavailable: AtomicU64,
}

impl std::fmt::Debug for ResilientLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResilientLimiter")
            .field("redis", &self.redis)
            .field("policy", &self.policy)
            .field("health", &self.health())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("redis is unreachable and the fallback policy refuses")]
struct Refused;

impl ResilientLimiter {
    /// `local` should have the same window length as `redis`; `store` is where quotas go
    /// while Redis is down (and should be the one `redis` mirrors to).
    pub fn new(
        redis: impl SharedLimiter + 'static,
        local: InMemoryLimiter,
        store: Option<Arc<dyn QuotaStore>>,
        policy: FallbackPolicy,
    ) -> Self {
        Self {
            redis: Box::new(redis),
            local,
            store,
            policy,
            down: AtomicBool::new(false),
            retry_at: AtomicI64::new(0),
            outages: AtomicU64::new(0),
            fallback_reservations: AtomicU64::new(0),
            unavailable: AtomicU64::new(0),
        }
    }

    pub fn health(&self) -> LimiterHealth {
        LimiterHealth {
            redis_up: !self.down.load(Ordering::Relaxed),
            outages: self.outages.load(Ordering::Relaxed),
            fallback_reservations: self.fallback_reservations.load(Ordering::Relaxed),
            unavailable: self.unavailable.load(Ordering::Relaxed),
        }
    }

    /// Mirrors changed quota counters to the store (nothing while Redis is down: the store
    /// is then the counter itself).
    pub async fn flush_mirror(&self) -> Result<usize, LimitError> {
        if self.down.load(Ordering::Acquire) {
            return Ok(0);
        }
        self.redis.flush_mirror().await
    }

    fn enter_outage(&self, now_ms: i64, error: &LimitError) {
        let retry = i64::try_from(self.policy.retry_every.as_millis()).unwrap_or(i64::MAX / 2);
        self.retry_at.store(now_ms.saturating_add(retry), Ordering::Release);
        if !self.down.swap(true, Ordering::AcqRel) {
            self.outages.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                error = %error,
                capacity = ?self.policy.capacity,
                quotas = ?self.policy.quotas,
                "rate limiter: redis is unreachable, limits fall back (capacity per instance, quotas in the database)"
            );
        }
    }

    fn unavailable(&self, error: LimitError) -> LimitError {
        self.unavailable.fetch_add(1, Ordering::Relaxed);
        error
    }

    async fn fallback(
        &self,
        who: &Subject,
        tokens: u64,
        now_ms: i64,
    ) -> Result<Decision, LimitError> {
        let limits = &who.limits;
        self.fallback_reservations.fetch_add(1, Ordering::Relaxed);
        let n = u64::from(self.policy.instances.max(1));
        let local_limits = match self.policy.capacity {
            CapacityFallback::Local => Limits {
                rpm: (limits.rpm / n).max(1),
                tpm: (limits.tpm / n).max(1),
                daily_tokens: u64::MAX,
                monthly_tokens: u64::MAX,
            },
            CapacityFallback::Allow => Limits {
                rpm: u64::MAX,
                tpm: u64::MAX,
                daily_tokens: u64::MAX,
                monthly_tokens: u64::MAX,
            },
            CapacityFallback::Refuse => {
                return Err(self.unavailable(LimitError::Unavailable(Box::new(Refused))));
            }
        };
        // The local limiter keeps the per-minute windows only; quotas and the ceiling are the
        // store's.
        let local = Subject { limits: local_limits, ceiling: u64::MAX, ..*who };
        let (mut reservation, snapshot) = match self.local.reserve(&local, tokens, now_ms).await? {
            Decision::Allowed { reservation, snapshot } => (reservation, snapshot),
            refused @ Decision::Refused { .. } => return Ok(refused),
        };
        reservation.fallback = true;
        let store = match (self.policy.quotas, &self.store) {
            (QuotaFallback::Allow, _) => None,
            (QuotaFallback::Store, Some(store)) => Some(store),
            (QuotaFallback::Refuse | QuotaFallback::Store, _) => {
                self.local.settle(&reservation, 0).await?;
                return Err(self.unavailable(LimitError::Unavailable(Box::new(Refused))));
            }
        };
        if let Some(store) = store {
            let (day, month, to_midnight, to_month_end) = periods(now_ms);
            let consumed = store.try_consume(who, date_of(day), date_of(month * 100 + 1), tokens);
            match consumed.await {
                Ok(None) => {}
                Ok(Some(window)) => {
                    self.local.settle(&reservation, 0).await?;
                    let retry_after_secs =
                        if window == Window::TokensPerDay { to_midnight } else { to_month_end };
                    return Ok(Decision::Refused { window, retry_after_secs, snapshot });
                }
                Err(e) => {
                    self.local.settle(&reservation, 0).await?;
                    tracing::error!(
                        error = %e,
                        "rate limiter: redis and the quota store are both unreachable; refusing"
                    );
                    return Err(self.unavailable(LimitError::Unavailable(e.0)));
                }
            }
        }
        Ok(Decision::Allowed { reservation, snapshot })
    }
}

#[async_trait]
impl RateLimiter for ResilientLimiter {
    /// A claim goes to Redis; while Redis is down, the fallback reserves exactly what the
    /// request needs (no leases: the store's conditional updates stay per request).
    async fn claim(
        &self,
        who: &Subject,
        claim: &Claim,
        now_ms: i64,
    ) -> Result<Decision, LimitError> {
        let tokens = claim.need;
        let down = self.down.load(Ordering::Acquire);
        // While Redis is down, a lease it granted cannot give its unused part back: that part
        // stays counted there (refusing early, never admitting more).
        let fallback = |_: &Claim| self.fallback(who, tokens, now_ms);
        if down && now_ms < self.retry_at.load(Ordering::Acquire) {
            return fallback(claim).await;
        }
        if down {
            // Coming back: whatever the store counted alone goes into Redis first.
            if let Err(e) = self.redis.catch_up(now_ms).await {
                self.enter_outage(now_ms, &e);
                return fallback(claim).await;
            }
        }
        match self.redis.claim(who, claim, now_ms).await {
            Ok(decision) => {
                if down && self.down.swap(false, Ordering::AcqRel) {
                    tracing::warn!("rate limiter: redis answers again; limits are shared again");
                }
                Ok(decision)
            }
            Err(e) => {
                self.enter_outage(now_ms, &e);
                fallback(claim).await
            }
        }
    }

    async fn adjust(&self, used: &[(Reservation, Used)]) -> Result<(), LimitError> {
        let (fallback, redis): (Vec<_>, Vec<_>) =
            used.iter().copied().partition(|(r, _)| r.fallback);
        let redis_result = if redis.is_empty() { Ok(()) } else { self.redis.adjust(&redis).await };
        if !fallback.is_empty() {
            self.local.adjust(&fallback).await?;
        }
        for (r, used) in &fallback {
            let delta = i64::try_from(used.tokens).unwrap_or(i64::MAX)
                - i64::try_from(r.tokens).unwrap_or(i64::MAX);
            if let (Some(store), QuotaFallback::Store, true) =
                (&self.store, self.policy.quotas, delta != 0)
            {
                store
                    .adjust(r.key, r.user, date_of(r.day), date_of(r.month * 100 + 1), delta)
                    .await
                    .map_err(|e| LimitError::Unavailable(e.0))?;
            }
        }
        redis_result
    }
}
