//! The Redis limiter: exact across every gateway instance sharing the Redis. One versioned Lua
//! script per call (`EVALSHA`, reloaded on `NOSCRIPT`), so a check and its reservation are one
//! atomic round trip. Keys expire on their own.
//!
//! With a [`QuotaStore`] attached, the daily and monthly counters are durable: the keys they
//! changed are mirrored to the store in batches ([`RedisLimiter::flush_mirror`]), and a Redis
//! that comes back empty (a restart) gets them back before it admits anything, because the
//! script refuses to run until a restore marker is present.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use gateway_core::{ApiKeyId, Limits};

use crate::connection::SharedConnection;
use crate::window::{DEFAULT_BUCKETS, buckets_for, date_of, periods};
use crate::{
    Decision, LimitError, Period, QuotaStore, QuotaUsage, RateLimiter, Reservation, Snapshot,
    Window,
};

/// The reserve script's answer (see `lua/reserve_v1.lua`).
type Answer = (i64, i64, u64, u64, u64, u64, u64);

/// The settle script, sent by hash in pipelines and loaded by hand when Redis lost it.
const SETTLE_LUA: &str = include_str!("../lua/settle_v1.lua");

/// Counters restored per script call.
const RESTORE_CHUNK: usize = 500;

/// Limits in Redis.
#[derive(Clone)]
pub struct RedisLimiter {
    conn: Arc<SharedConnection>,
    prefix: String,
    timeout: Duration,
    span: i64,
    reserve: redis::Script,
    settle: redis::Script,
    restore: redis::Script,
    durable: Option<Durable>,
}

/// The durable side: where quotas are saved, and which keys changed since the last save.
#[derive(Clone)]
struct Durable {
    store: Arc<dyn QuotaStore>,
    dirty: Arc<std::sync::Mutex<HashMap<ApiKeyId, (u32, u32)>>>,
    /// One restore at a time per process; `restores` tells a waiter one just finished.
    restoring: Arc<tokio::sync::Mutex<()>>,
    restores: Arc<AtomicU64>,
}

impl std::fmt::Debug for RedisLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisLimiter")
            .field("prefix", &self.prefix)
            .field("durable", &self.durable.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("redis did not answer within {0:?}")]
struct Timeout(Duration);

#[derive(Debug, thiserror::Error)]
#[error("redis lost its quota counters and they could not be restored")]
struct NotRestored;

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> LimitError {
    LimitError::Unavailable(Box::new(e))
}

impl RedisLimiter {
    /// `prefix` namespaces every key (several deployments or tests can share a Redis);
    /// `timeout` bounds each call, after which the caller applies its fallback policy.
    pub fn new(client: redis::Client, prefix: &str, timeout: Duration) -> Self {
        Self {
            conn: Arc::new(SharedConnection::new(client)),
            prefix: prefix.to_owned(),
            timeout,
            span: DEFAULT_BUCKETS,
            reserve: redis::Script::new(include_str!("../lua/reserve_v1.lua")),
            settle: redis::Script::new(SETTLE_LUA),
            restore: redis::Script::new(include_str!("../lua/restore_v1.lua")),
            durable: None,
        }
    }

    /// Shortens (or lengthens) the per-minute windows; for tests that cannot wait a minute.
    #[must_use]
    pub fn with_window(mut self, window: Duration) -> Self {
        self.span = buckets_for(window);
        self
    }

    /// Makes the daily and monthly counters durable in `store` (see the module docs).
    #[must_use]
    pub fn with_durable_quotas(mut self, store: Arc<dyn QuotaStore>) -> Self {
        self.durable = Some(Durable {
            store,
            dirty: Arc::default(),
            restoring: Arc::default(),
            restores: Arc::default(),
        });
        self
    }

    fn base(&self, key: ApiKeyId) -> String {
        // The `{...}` hash tag keeps a key's counters on one cluster slot.
        format!("{}:rl:v1:{{{key}}}", self.prefix)
    }

    fn day_key(&self, key: ApiKeyId, day: u32) -> String {
        format!("{}:d:{day}", self.base(key))
    }

    fn month_key(&self, key: ApiKeyId, month: u32) -> String {
        format!("{}:m:{month}", self.base(key))
    }

    fn marker(&self) -> String {
        format!("{}:rl:v1:restored", self.prefix)
    }

    async fn with_timeout<T>(
        &self,
        fut: impl Future<Output = Result<T, LimitError>>,
    ) -> Result<T, LimitError> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| unavailable(Timeout(self.timeout)))?
    }

    async fn call<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'_>,
    ) -> Result<T, LimitError> {
        self.with_timeout(async {
            let mut conn = self.conn.get().await.map_err(|e| self.broken(e))?;
            invocation.invoke_async::<T>(&mut conn).await.map_err(|e| self.broken(e))
        })
        .await
        .inspect_err(|e| {
            if matches!(e, LimitError::Unavailable(inner) if inner.is::<Timeout>()) {
                self.conn.reset();
            }
        })
    }

    async fn command<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, LimitError> {
        self.with_timeout(async {
            let mut conn = self.conn.get().await.map_err(|e| self.broken(e))?;
            cmd.query_async::<T>(&mut conn).await.map_err(|e| self.broken(e))
        })
        .await
    }

    async fn command_pipe(&self, pipe: &redis::Pipeline) -> Result<(), LimitError> {
        self.with_timeout(async {
            let mut conn = self.conn.get().await.map_err(|e| self.broken(e))?;
            pipe.query_async::<()>(&mut conn).await.map_err(|e| self.broken(e))
        })
        .await
    }

    /// A failed call: drop the connection if it may be broken, so the next call reconnects.
    fn broken(&self, e: redis::RedisError) -> LimitError {
        if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
            self.conn.reset();
        }
        unavailable(e)
    }

    async fn try_reserve(
        &self,
        key: ApiKeyId,
        limits: &Limits,
        tokens: u64,
        now_ms: i64,
    ) -> Result<Option<Decision>, LimitError> {
        let now = now_ms.div_euclid(1000);
        let (day, month, to_midnight, to_month_end) = periods(now_ms);
        let base = self.base(key);
        let mut inv = self.reserve.prepare_invoke();
        inv.key(format!("{base}:rpm"))
            .key(format!("{base}:tpm"))
            .key(format!("{base}:d:{day}"))
            .key(format!("{base}:m:{month}"))
            .key(self.marker());
        inv.arg(now)
            .arg(limits.rpm)
            .arg(limits.tpm)
            .arg(limits.daily_tokens)
            .arg(limits.monthly_tokens);
        inv.arg(tokens).arg(to_midnight).arg(to_month_end).arg(self.span);
        inv.arg(u8::from(self.durable.is_some()));
        let (allowed, window, retry_after, req_used, tok_used, req_reset, tok_reset): Answer =
            self.call(inv).await?;
        let snapshot = Snapshot {
            reset_requests_secs: req_reset,
            reset_tokens_secs: tok_reset,
            ..Snapshot::from_usage(limits, req_used, tok_used)
        };
        match allowed {
            -1 => Ok(None),
            1 => {
                self.mark_changed([(key, (day, month))]);
                let reservation =
                    Reservation { key, tokens, second: now, day, month, fallback: false };
                Ok(Some(Decision::Allowed { reservation, snapshot }))
            }
            _ => {
                let window = match window {
                    1 => Window::RequestsPerMinute,
                    2 => Window::TokensPerMinute,
                    3 => Window::TokensPerDay,
                    _ => Window::TokensPerMonth,
                };
                let retry_after_secs = retry_after.max(1);
                Ok(Some(Decision::Refused { window, retry_after_secs, snapshot }))
            }
        }
    }

    /// Remembers keys whose quota counters changed, for the next mirror flush.
    fn mark_changed(&self, changed: impl IntoIterator<Item = (ApiKeyId, (u32, u32))>) {
        if let Some(d) = &self.durable {
            d.dirty.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(changed);
        }
    }

    /// Puts the quotas saved in the store back into Redis (never lowering a counter Redis
    /// holds), then sets the restore marker. Runs when Redis is found empty, and when it comes
    /// back after an outage during which the store counted on its own.
    pub async fn restore(&self, now_ms: i64) -> Result<(), LimitError> {
        let Some(d) = &self.durable else { return Ok(()) };
        let seen = d.restores.load(Ordering::Acquire);
        let _one_at_a_time = d.restoring.lock().await;
        if d.restores.load(Ordering::Acquire) != seen {
            return Ok(()); // another task restored while this one waited
        }
        let (day, month, to_midnight, to_month_end) = periods(now_ms);
        let saved = d
            .store
            .current(date_of(day), date_of(month * 100 + 1))
            .await
            .map_err(|e| LimitError::Unavailable(e.0))?;
        for chunk in saved.chunks(RESTORE_CHUNK) {
            let mut inv = self.restore.prepare_invoke();
            for row in chunk {
                match row.period {
                    Period::Day => {
                        inv.key(self.day_key(row.key, day)).arg(row.used).arg(to_midnight + 3600);
                    }
                    Period::Month => {
                        inv.key(self.month_key(row.key, month))
                            .arg(row.used)
                            .arg(to_month_end + 86_400);
                    }
                }
            }
            self.call::<i64>(inv).await?;
        }
        self.command::<()>(redis::cmd("SET").arg(self.marker()).arg(now_ms)).await?;
        d.restores.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Saves the current daily and monthly counters of every key that changed since the last
    /// call to the store. Returns how many counters were saved; on failure the keys stay
    /// pending for the next call.
    pub async fn flush_mirror(&self) -> Result<usize, LimitError> {
        let Some(d) = &self.durable else { return Ok(0) };
        let pending: Vec<(ApiKeyId, (u32, u32))> =
            d.dirty.lock().unwrap_or_else(std::sync::PoisonError::into_inner).drain().collect();
        if pending.is_empty() {
            return Ok(0);
        }
        let result = self.save(d, &pending).await;
        if result.is_err() {
            let mut dirty = d.dirty.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (key, periods) in pending {
                dirty.entry(key).or_insert(periods);
            }
        }
        result
    }

    async fn save(
        &self,
        d: &Durable,
        pending: &[(ApiKeyId, (u32, u32))],
    ) -> Result<usize, LimitError> {
        let mut rows = Vec::with_capacity(pending.len() * 2);
        for chunk in pending.chunks(RESTORE_CHUNK) {
            let mut cmd = redis::cmd("MGET");
            for (key, (day, month)) in chunk {
                cmd.arg(self.day_key(*key, *day)).arg(self.month_key(*key, *month));
            }
            let values: Vec<Option<u64>> = self.command(&cmd).await?;
            for ((key, (day, month)), pair) in chunk.iter().zip(values.chunks(2)) {
                let (day_used, month_used) = (pair[0], pair.get(1).copied().flatten());
                if let Some(used) = day_used {
                    rows.push(QuotaUsage {
                        key: *key,
                        period: Period::Day,
                        start: date_of(*day),
                        used,
                    });
                }
                if let Some(used) = month_used {
                    let start = date_of(month * 100 + 1);
                    rows.push(QuotaUsage { key: *key, period: Period::Month, start, used });
                }
            }
        }
        d.store.save(&rows).await.map_err(|e| LimitError::Unavailable(e.0))?;
        Ok(rows.len())
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
        if let Some(decision) = self.try_reserve(key, limits, tokens, now_ms).await? {
            return Ok(decision);
        }
        self.restore(now_ms).await?;
        self.try_reserve(key, limits, tokens, now_ms).await?.ok_or_else(|| unavailable(NotRestored))
    }

    async fn settle_many(&self, settlements: &[(Reservation, u64)]) -> Result<(), LimitError> {
        let mut pipe = redis::pipe();
        let mut changed = Vec::with_capacity(settlements.len());
        for (r, actual) in settlements {
            let delta = i128::from(*actual) - i128::from(r.tokens);
            if delta == 0 {
                continue;
            }
            let base = self.base(r.key);
            pipe.cmd("EVALSHA")
                .arg(self.settle.get_hash())
                .arg(3)
                .arg(format!("{base}:tpm"))
                .arg(format!("{base}:d:{}", r.day))
                .arg(format!("{base}:m:{}", r.month))
                .arg(r.second)
                .arg(delta.to_string())
                .ignore();
            changed.push((r.key, (r.day, r.month)));
        }
        if changed.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.command_pipe(&pipe).await {
            if !matches!(&e, LimitError::Unavailable(inner) if inner.downcast_ref::<redis::RedisError>().is_some_and(|e| e.kind() == redis::ServerErrorKind::NoScript.into()))
            {
                return Err(e);
            }
            // The script is not loaded yet (a restarted Redis): load it, then once more.
            self.command::<String>(redis::cmd("SCRIPT").arg("LOAD").arg(SETTLE_LUA)).await?;
            self.command_pipe(&pipe).await?;
        }
        self.mark_changed(changed);
        Ok(())
    }

    async fn settle(&self, r: &Reservation, actual_tokens: u64) -> Result<(), LimitError> {
        self.settle_many(&[(r.clone(), actual_tokens)]).await
    }
}
