//! The Redis limiter: exact across every gateway instance sharing the Redis. One versioned Lua
//! script per call (`EVALSHA`, reloaded on `NOSCRIPT`), so a check and its reservation are one
//! atomic round trip. Keys expire on their own.

use std::time::Duration;

use async_trait::async_trait;
use gateway_core::{ApiKeyId, Limits};

use crate::window::periods;
use crate::{Decision, LimitError, RateLimiter, Reservation, Snapshot, Window};

/// Limits in Redis.
#[derive(Clone)]
pub struct RedisLimiter {
    pool: deadpool_redis::Pool,
    prefix: String,
    timeout: Duration,
    reserve: redis::Script,
    settle: redis::Script,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("redis did not answer within {0:?}")]
struct Timeout(Duration);

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> LimitError {
    LimitError::Unavailable(Box::new(e))
}

impl RedisLimiter {
    /// `prefix` namespaces every key (several deployments or tests can share a Redis);
    /// `timeout` bounds each call, after which the caller applies its fallback policy.
    pub fn new(pool: deadpool_redis::Pool, prefix: &str, timeout: Duration) -> Self {
        Self {
            pool,
            prefix: prefix.to_owned(),
            timeout,
            reserve: redis::Script::new(include_str!("../lua/reserve_v1.lua")),
            settle: redis::Script::new(include_str!("../lua/settle_v1.lua")),
        }
    }

    /// The key's four counters; the `{...}` hash tag keeps them on one cluster slot.
    fn keys(&self, key: ApiKeyId, day: u32, month: u32) -> [String; 4] {
        let base = format!("{}:rl:v1:{{{key}}}", self.prefix);
        [
            format!("{base}:rpm"),
            format!("{base}:tpm"),
            format!("{base}:d:{day}"),
            format!("{base}:m:{month}"),
        ]
    }

    async fn call<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, LimitError> {
        let fut = async {
            let mut conn = self.pool.get().await.map_err(unavailable)?;
            invocation.invoke_async::<T>(&mut conn).await.map_err(unavailable)
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| unavailable(Timeout(self.timeout)))?
    }
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn reserve(
        &self,
        key: ApiKeyId,
        limits: &Limits,
        tokens: u64,
        now_ms: i64,
    ) -> Result<Decision, LimitError> {
        let now = now_ms.div_euclid(1000);
        let (day, month, to_midnight, to_month_end) = periods(now_ms);
        let [rpm_key, tpm_key, day_key, month_key] = self.keys(key, day, month);
        let mut inv = self.reserve.prepare_invoke();
        inv.key(rpm_key).key(tpm_key).key(day_key).key(month_key);
        inv.arg(now)
            .arg(limits.rpm)
            .arg(limits.tpm)
            .arg(limits.daily_tokens)
            .arg(limits.monthly_tokens);
        inv.arg(tokens).arg(to_midnight).arg(to_month_end);
        let (allowed, window, retry_after, req_used, tok_used): (i64, i64, u64, u64, u64) =
            self.call(inv).await?;
        let mut snapshot = Snapshot::from_usage(limits, req_used, tok_used);
        if allowed != 1 {
            snapshot.reset_requests_secs = retry_after;
        }
        if allowed == 1 {
            return Ok(Decision::Allowed {
                reservation: Reservation { key, tokens, second: now, day, month },
                snapshot,
            });
        }
        let window = match window {
            1 => Window::RequestsPerMinute,
            2 => Window::TokensPerMinute,
            3 => Window::TokensPerDay,
            _ => Window::TokensPerMonth,
        };
        Ok(Decision::Refused { window, retry_after_secs: retry_after.max(1), snapshot })
    }

    async fn settle(&self, r: &Reservation, actual_tokens: u64) -> Result<(), LimitError> {
        let delta = i128::from(actual_tokens) - i128::from(r.tokens);
        if delta == 0 {
            return Ok(());
        }
        let [_, tpm_key, day_key, month_key] = self.keys(r.key, r.day, r.month);
        let mut inv = self.settle.prepare_invoke();
        inv.key(tpm_key).key(day_key).key(month_key).arg(r.second).arg(delta.to_string());
        self.call::<i64>(inv).await.map(|_| ())
    }
}
