//! Rate limits and quotas as configured: the limiter the pipeline reserves against (in memory
//! without Redis; Redis with its outage fallback and a durable mirror with it), and the
//! `x-ratelimit-*` headers of its answers.

use std::sync::Arc;
use std::time::Duration;

use gateway_ratelimit::{
    CapacityFallback, FallbackPolicy, InMemoryLimiter, LeaseConfig, LeasedLimiter, QuotaFallback,
    QuotaStore, RateLimiter, ResilientLimiter, Snapshot,
};
use gateway_redis::{RedisConn, RedisLimiter};
use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

use crate::config::{CapacityPolicy, Config, QuotaPolicy};

/// The configured limiter, and the Redis one with its fallback when Redis is configured (its
/// health for the metrics, its mirror for the background task).
pub struct Limiter {
    pub limiter: Arc<dyn RateLimiter>,
    pub resilient: Option<Arc<ResilientLimiter>>,
    /// The leases over the shared limiter, when Redis is configured and leases are on.
    pub leased: Option<Arc<LeasedLimiter>>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").field("resilient", &self.resilient).finish_non_exhaustive()
    }
}

/// `None` when limits are disabled.
pub fn build(
    config: &Config,
    redis: Option<&RedisConn>,
    quotas: Arc<dyn QuotaStore>,
) -> Option<Limiter> {
    let l = &config.limits;
    if !l.enabled {
        return None;
    }
    let window = Duration::from_secs(l.window_secs);
    let local = InMemoryLimiter::default().with_window(window);
    let Some(conn) = redis else {
        return Some(Limiter { limiter: Arc::new(local), resilient: None, leased: None });
    };
    let timeout = Duration::from_millis(l.redis_timeout_ms);
    let redis = RedisLimiter::new(conn.clone(), &config.redis.key_prefix, timeout)
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
    let resilient = Arc::new(ResilientLimiter::new(redis, local, Some(quotas), policy));
    // A lease never lasts as long as the per-minute window (tests shorten the window).
    let longest = window.saturating_sub(Duration::from_secs(1));
    let lease = Duration::from_millis(l.lease_ms).min(longest);
    // `lease_long_ms` at or below `lease_ms`: no lease lasts longer than `lease`.
    let long = Duration::from_millis(l.lease_long_ms).min(longest).max(lease);
    if lease.is_zero() {
        return Some(Limiter {
            limiter: resilient.clone(),
            resilient: Some(resilient),
            leased: None,
        });
    }
    let config =
        LeaseConfig { duration: lease, long, share: l.lease_share, ..LeaseConfig::default() };
    let leased = Arc::new(LeasedLimiter::new(resilient.clone(), config));
    Some(Limiter { limiter: leased.clone(), resilient: Some(resilient), leased: Some(leased) })
}

/// Ends the leases whose time is up, a few times a second, so budget an instance no longer
/// uses goes back to the others.
pub async fn expire_leases(leased: Arc<LeasedLimiter>) {
    let mut tick = tokio::time::interval(LEASE_SWEEP);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        if let Err(e) = leased.expire(now).await {
            tracing::warn!(error = %e, "could not give back ended rate-limit leases; retrying");
        }
    }
}

/// How often ended leases are given back.
const LEASE_SWEEP: Duration = Duration::from_millis(250);

/// Saves quota counters changed in Redis to the database.
pub async fn flush_mirror(resilient: &ResilientLimiter) {
    if let Err(e) = resilient.flush_mirror().await {
        tracing::warn!(error = %e, "could not save quota counters to the database; retrying");
    }
}

const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

/// The `x-ratelimit-*` headers, as OpenAI sends them. Constant names (inserting by `&str`
/// would copy each name for every response) and the six values written into one buffer that
/// each header takes its part of: two allocations for the six, where a value each took two.
pub fn add_headers(headers: &mut HeaderMap, s: &Snapshot) {
    use std::fmt::Write;
    // A u64 takes at most 20 digits.
    let mut buf = bytes::BytesMut::with_capacity(6 * 21);
    for (name, n, unit) in [
        (LIMIT_REQUESTS, s.limit_requests, ""),
        (REMAINING_REQUESTS, s.remaining_requests, ""),
        (LIMIT_TOKENS, s.limit_tokens, ""),
        (REMAINING_TOKENS, s.remaining_tokens, ""),
        (RESET_REQUESTS, s.reset_requests_secs, "s"),
        (RESET_TOKENS, s.reset_tokens_secs, "s"),
    ] {
        // Writing to a `BytesMut` cannot fail, and digits with `s` are a valid header value.
        let _ = write!(buf, "{n}{unit}");
        if let Ok(v) = HeaderValue::from_maybe_shared(buf.split().freeze()) {
            headers.insert(name, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_limit_headers_carry_each_value() {
        let mut headers = HeaderMap::new();
        let s = Snapshot {
            limit_requests: 60,
            remaining_requests: 0,
            limit_tokens: u64::MAX,
            remaining_tokens: 18_446_744_073_709_551_000,
            reset_requests_secs: 7,
            reset_tokens_secs: 59,
        };
        add_headers(&mut headers, &s);
        let got: Vec<(&str, &str)> =
            headers.iter().map(|(k, v)| (k.as_str(), v.to_str().unwrap())).collect();
        assert_eq!(
            got,
            [
                ("x-ratelimit-limit-requests", "60"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-limit-tokens", "18446744073709551615"),
                ("x-ratelimit-remaining-tokens", "18446744073709551000"),
                ("x-ratelimit-reset-requests", "7s"),
                ("x-ratelimit-reset-tokens", "59s"),
            ]
        );
    }
}
