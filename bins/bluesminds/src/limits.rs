//! Rate limits and quotas on the gateway path: the limiter chosen by the configuration
//! (in memory without Redis; Redis with its outage fallback and a durable mirror with it),
//! reservations before forwarding and settlements after, off the response's path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use gateway_core::{ApiError, ErrorKind, Limits, Usage};
use gateway_ratelimit::{
    CapacityFallback, Decision, FallbackPolicy, InMemoryLimiter, QuotaFallback, QuotaStore,
    RateLimiter, RedisLimiter, Reservation, ResilientLimiter, Snapshot, Window,
};
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use tokio::sync::{Notify, mpsc};

use crate::config::{CapacityPolicy, Config, QuotaPolicy};

/// The limiter of a running gateway.
pub struct Limiting {
    limiter: Arc<dyn RateLimiter>,
    /// The Redis limiter with its fallback, when Redis is configured: its health for the
    /// metrics, its mirror for the background task.
    pub resilient: Option<Arc<ResilientLimiter>>,
    /// Settlements go to one task that sends whatever has queued up in one batch (one
    /// pipelined Redis round trip under load, instead of a task and a round trip each).
    settles: mpsc::UnboundedSender<(Reservation, u64)>,
    /// Settlements queued or being sent; shutdown waits until it is zero.
    pending: Arc<Pending>,
    settle_errors: Arc<AtomicU64>,
    default_completion_tokens: u64,
}

impl std::fmt::Debug for Limiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiting").field("resilient", &self.resilient).finish_non_exhaustive()
    }
}

impl Limiting {
    /// `None` when limits are disabled.
    pub fn build(
        config: &Config,
        redis: Option<&redis::Client>,
        quotas: Arc<dyn QuotaStore>,
    ) -> Option<Limiting> {
        let l = &config.limits;
        if !l.enabled {
            return None;
        }
        let window = Duration::from_secs(l.window_secs);
        let local = InMemoryLimiter::default().with_window(window);
        let (limiter, resilient): (Arc<dyn RateLimiter>, _) = match redis {
            None => (Arc::new(local), None),
            Some(client) => {
                let timeout = Duration::from_millis(l.redis_timeout_ms);
                let redis = RedisLimiter::new(client.clone(), &config.redis.key_prefix, timeout)
                    .with_window(window)
                    .with_durable_quotas(quotas.clone());
                let policy = FallbackPolicy {
                    instances: l.instances,
                    capacity: match l.on_redis_down_capacity {
                        CapacityPolicy::Local => CapacityFallback::Local,
                        CapacityPolicy::Allow => CapacityFallback::Allow,
                        CapacityPolicy::Refuse => CapacityFallback::Refuse,
                    },
                    quotas: match l.on_redis_down_quota {
                        QuotaPolicy::Database => QuotaFallback::Store,
                        QuotaPolicy::Allow => QuotaFallback::Allow,
                        QuotaPolicy::Refuse => QuotaFallback::Refuse,
                    },
                    ..FallbackPolicy::default()
                };
                let r = Arc::new(ResilientLimiter::new(redis, local, Some(quotas), policy));
                (r.clone(), Some(r))
            }
        };
        let (settles, queue) = mpsc::unbounded_channel();
        let pending = Arc::new(Pending::default());
        let settle_errors = Arc::new(AtomicU64::new(0));
        tokio::spawn(settle_queued(limiter.clone(), queue, pending.clone(), settle_errors.clone()));
        Some(Limiting {
            limiter,
            resilient,
            settles,
            pending,
            settle_errors,
            default_completion_tokens: l.default_completion_tokens,
        })
    }

    /// Tokens to reserve: the prompt estimate plus the completion asked for (or the default).
    pub fn estimate(&self, prompt: u64, max_tokens: Option<u64>, completes: bool) -> u64 {
        if completes {
            prompt + max_tokens.unwrap_or(self.default_completion_tokens)
        } else {
            prompt
        }
    }

    /// Reserves one request and `tokens` for the key; a refusal is the error to answer with.
    pub async fn reserve(
        &self,
        key: gateway_core::ApiKeyId,
        limits: &Limits,
        tokens: u64,
    ) -> Result<(Reservation, Snapshot), (ApiError, Option<Snapshot>)> {
        let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        match self.limiter.reserve(key, limits, tokens, now_ms).await {
            Ok(Decision::Allowed { reservation, snapshot }) => Ok((reservation, snapshot)),
            Ok(Decision::Refused { window, retry_after_secs, snapshot }) => {
                Err((refusal(window, limits, tokens, retry_after_secs), Some(snapshot)))
            }
            Err(e) => {
                tracing::error!(error = %e, "rate limits cannot be checked; refusing (fail closed)");
                let err = ApiError::new(
                    ErrorKind::ServiceUnavailable,
                    "Rate limits cannot be checked right now. Please retry shortly.",
                )
                .with_retry_after(1);
                Err((err, None))
            }
        }
    }

    /// Replaces the reservation's estimate with `actual` tokens, in the background.
    pub fn settle(&self, reservation: Reservation, actual: u64) {
        if reservation.tokens == actual {
            return;
        }
        self.pending.count.fetch_add(1, Ordering::AcqRel);
        if self.settles.send((reservation, actual)).is_err() {
            self.pending.done(1);
        }
    }

    /// Settles a whole (not streamed) answer: a failed request is refunded, a successful one is
    /// charged its usage (reported, or estimated by the handler); without any, the reservation
    /// stands.
    pub fn settle_answer(&self, reservation: Reservation, success: bool, usage: Option<Usage>) {
        let actual = match (success, usage) {
            (false, _) => 0,
            (true, Some(u)) => u.total(),
            (true, None) => reservation.tokens,
        };
        self.settle(reservation, actual);
    }

    pub fn settle_errors(&self) -> u64 {
        self.settle_errors.load(Ordering::Relaxed)
    }

    /// Waits (up to `deadline`) for queued settlements, then saves the quota mirror.
    pub async fn shutdown(&self, deadline: Duration) {
        let drained = async {
            loop {
                let idle = self.pending.idle.notified();
                if self.pending.count.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        if tokio::time::timeout(deadline, drained).await.is_err() {
            let left = self.pending.count.load(Ordering::Acquire);
            tracing::warn!(left, "rate-limit settlements cut at shutdown");
        }
        self.flush_mirror().await;
    }

    /// Saves quota counters changed in Redis to the database.
    pub async fn flush_mirror(&self) {
        if let Some(r) = &self.resilient
            && let Err(e) = r.flush_mirror().await
        {
            tracing::warn!(error = %e, "could not save quota counters to the database; retrying");
        }
    }
}

#[derive(Debug, Default)]
struct Pending {
    count: AtomicUsize,
    idle: Notify,
}

impl Pending {
    fn done(&self, n: usize) {
        if self.count.fetch_sub(n, Ordering::AcqRel) == n {
            self.idle.notify_waiters();
        }
    }
}

/// Settles whatever has queued since the last batch, in one call to the limiter.
async fn settle_queued(
    limiter: Arc<dyn RateLimiter>,
    mut queue: mpsc::UnboundedReceiver<(Reservation, u64)>,
    pending: Arc<Pending>,
    errors: Arc<AtomicU64>,
) {
    let mut batch = Vec::with_capacity(256);
    while queue.recv_many(&mut batch, 1024).await > 0 {
        if let Err(e) = limiter.settle_many(&batch).await {
            errors.fetch_add(batch.len() as u64, Ordering::Relaxed);
            tracing::warn!(error = %e, settlements = batch.len(), "could not settle rate-limit reservations");
        }
        pending.done(batch.len());
        batch.clear();
    }
}

/// OpenAI's 429 for the window that refused.
fn refusal(window: Window, limits: &Limits, requested: u64, retry_after: u64) -> ApiError {
    let message = match window {
        Window::RequestsPerMinute => format!(
            "Rate limit reached for requests per minute (RPM): limit {}. Please try again in {retry_after}s.",
            limits.rpm
        ),
        Window::TokensPerMinute => format!(
            "Rate limit reached for tokens per minute (TPM): limit {}, requested {requested}. Please try again in {retry_after}s.",
            limits.tpm
        ),
        Window::TokensPerDay => format!(
            "You exceeded your daily token quota ({} tokens; this request needs about {requested}). It resets at midnight UTC, in {retry_after}s.",
            limits.daily_tokens
        ),
        Window::TokensPerMonth => format!(
            "You exceeded your monthly token quota ({} tokens; this request needs about {requested}). It resets on the first of the month (UTC), in {retry_after}s.",
            limits.monthly_tokens
        ),
    };
    let kind = if window.is_quota() { ErrorKind::QuotaExceeded } else { ErrorKind::RateLimited };
    ApiError::new(kind, message).with_retry_after(retry_after)
}

const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

/// The `x-ratelimit-*` headers, as OpenAI sends them (constant names: inserting by `&str`
/// would copy each name for every response).
pub fn add_headers(headers: &mut HeaderMap, s: &Snapshot) {
    let secs =
        |n: u64| HeaderValue::try_from(format!("{n}s")).unwrap_or(HeaderValue::from_static("0s"));
    headers.insert(LIMIT_REQUESTS, HeaderValue::from(s.limit_requests));
    headers.insert(REMAINING_REQUESTS, HeaderValue::from(s.remaining_requests));
    headers.insert(LIMIT_TOKENS, HeaderValue::from(s.limit_tokens));
    headers.insert(REMAINING_TOKENS, HeaderValue::from(s.remaining_tokens));
    headers.insert(RESET_REQUESTS, secs(s.reset_requests_secs));
    headers.insert(RESET_TOKENS, secs(s.reset_tokens_secs));
}
