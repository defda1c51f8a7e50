//! The Redis limiter: exact across every gateway instance sharing the Redis. One versioned Lua
//! script per call (`EVALSHA`, reloaded on `NOSCRIPT`), so a check and its reservation are one
//! atomic round trip. Keys expire on their own.
//!
//! With a [`QuotaStore`] attached, the daily and monthly counters are durable: the keys they
//! changed are mirrored to the store in batches ([`RedisLimiter::flush_mirror`]), and a Redis
//! that comes back empty (a restart) gets them back before it admits anything, because the
//! script refuses to run until a restore marker is present.
//!
//! In a Redis Cluster every key one script call touches is on one slot: a user's counters
//! share the user's hash tag, the restore marker is kept once per slot ([`crate::slot`]), and
//! settlements and restores are sent in batches of one slot each.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use gateway_core::{ApiKeyId, Clock, SystemClock, UserId};

use gateway_ratelimit::window::{DEFAULT_BUCKETS, buckets_for, date_of, periods};
use gateway_ratelimit::{
    Claim, Decision, Holder, LimitError, Period, QuotaRows, QuotaStore, QuotaUsage, RateLimiter,
    Reservation, SharedLimiter, Snapshot, Subject, Used, Window,
};

use crate::{RedisConn, RedisError, slot};

/// The claim script's answer (see `lua/reserve_v5.lua`).
type Answer = (i64, i64, u64, u64, u64, u64, u64, u64, i64);

/// The scripts, sent by hash and loaded when Redis lost them (see `RedisLimiter::eval`).
const RESERVE_LUA: &str = include_str!("../lua/reserve_v5.lua");
const SETTLE_LUA: &str = include_str!("../lua/settle_v4.lua");
const SYNC_LUA: &str = include_str!("../lua/sync_v1.lua");

/// Settlements per settle script call (each costs about 6 µs of Redis time).
const SETTLE_CHUNK: usize = 256;

/// The least time a settle batch gets (it runs off the request path).
const BATCH_TIMEOUT: Duration = Duration::from_secs(2);

/// Counters synced (restored, or given what the store counted alone) per script call.
const SYNC_CHUNK: usize = 500;

/// Restore markers set per `MSET`.
const MARKER_CHUNK: usize = 2048;

/// Limits in Redis.
#[derive(Clone)]
pub struct RedisLimiter {
    conn: RedisConn,
    prefix: String,
    /// Set once the daily and monthly counters are in Redis (see [`RedisLimiter::restore`]);
    /// one key per slot, this name followed by the slot's tag.
    marker: String,
    timeout: Duration,
    span: i64,
    reserve: redis::Script,
    settle: redis::Script,
    sync: redis::Script,
    durable: Option<Durable>,
}

/// The durable side: where quotas are saved, and which keys changed since the last save.
#[derive(Clone)]
struct Durable {
    store: Arc<dyn QuotaStore>,
    dirty: Arc<std::sync::Mutex<HashMap<ApiKeyId, Changed>>>,
    /// One restore or catch-up at a time per process; `restores` tells a waiter one just
    /// finished. Catch-ups are numbered as they begin (`catch_ups_begun`);
    /// `caught_up` is the number of the last one that finished.
    restoring: Arc<tokio::sync::Mutex<()>>,
    restores: Arc<AtomicU64>,
    catch_ups_begun: Arc<AtomicU64>,
    caught_up: Arc<AtomicU64>,
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
#[error("redis lost its quota counters and they could not be restored")]
struct NotRestored;

fn unavailable(e: impl std::error::Error + Send + Sync + 'static) -> LimitError {
    LimitError::Unavailable(Box::new(e))
}

impl RedisLimiter {
    /// `prefix` namespaces every key (several deployments or tests can share a Redis);
    /// `timeout` bounds each call, after which the caller applies its fallback policy.
    pub fn new(conn: RedisConn, prefix: &str, timeout: Duration) -> Self {
        Self {
            conn,
            prefix: prefix.to_owned(),
            marker: format!("{prefix}:rl:v2:restored"),
            timeout,
            span: DEFAULT_BUCKETS,
            reserve: redis::Script::new(RESERVE_LUA),
            settle: redis::Script::new(SETTLE_LUA),
            sync: redis::Script::new(SYNC_LUA),
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
            catch_ups_begun: Arc::default(),
            caught_up: Arc::default(),
        });
        self
    }

    fn counter(&self, user: UserId, counter: Counter) -> CounterKey<'_> {
        CounterKey { prefix: &self.prefix, user, counter }
    }

    async fn command<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, LimitError> {
        self.conn.query(cmd, self.timeout).await.map_err(unavailable)
    }

    /// The restore marker on the slot of `user`'s counters; a single Redis has one marker
    /// (slot 0's), since it loses all its data at once.
    fn marker(&self, user: UserId) -> MarkerKey<'_> {
        let slot = if self.conn.is_cluster() { user_slot(user) } else { 0 };
        MarkerKey { base: &self.marker, slot }
    }

    /// `items` in the batches one script call may take: chunks of at most `chunk`, and in a
    /// cluster each of one slot (the slot of `user_of` the item).
    fn batches<'a, T>(
        &self,
        items: &'a [T],
        user_of: impl Fn(&T) -> UserId,
        chunk: usize,
    ) -> Vec<Vec<&'a T>> {
        if !self.conn.is_cluster() {
            return items.chunks(chunk).map(|c| c.iter().collect()).collect();
        }
        let mut by_slot = std::collections::BTreeMap::<u16, Vec<&T>>::new();
        for item in items {
            by_slot.entry(user_slot(user_of(item))).or_default().push(item);
        }
        by_slot
            .into_values()
            .flat_map(|v| v.chunks(chunk).map(<[_]>::to_vec).collect::<Vec<_>>())
            .collect()
    }

    /// Runs a script's `EVALSHA` command (built in place by the caller); a Redis that lost the script (a restart or a
    /// `SCRIPT FLUSH`) gets it loaded and the command sent once more.
    async fn eval<T: redis::FromRedisValue>(
        &self,
        source: &str,
        cmd: &redis::Cmd,
    ) -> Result<T, LimitError> {
        self.eval_within(source, cmd, self.timeout).await
    }

    /// [`RedisLimiter::eval`] with its own time limit (batches off the request path get more).
    async fn eval_within<T: redis::FromRedisValue>(
        &self,
        source: &str,
        cmd: &redis::Cmd,
        timeout: Duration,
    ) -> Result<T, LimitError> {
        let run = async {
            let mut conn = self.conn.get().await.map_err(|e| self.broken(e))?;
            match cmd.query_async::<T>(&mut conn).await {
                Err(e) if e.kind() == redis::ServerErrorKind::NoScript.into() => {
                    redis::cmd("SCRIPT")
                        .arg("LOAD")
                        .arg(source)
                        .query_async::<String>(&mut conn)
                        .await
                        .map_err(|e| self.broken(e))?;
                    cmd.query_async::<T>(&mut conn).await.map_err(|e| self.broken(e))
                }
                other => other.map_err(|e| self.broken(e)),
            }
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(result) => result,
            Err(_) => {
                // A call cut short may leave its answer on the connection: start a new one.
                self.conn.reset();
                Err(unavailable(RedisError::Timeout(timeout)))
            }
        }
    }

    /// A failed call: drop the connection if it may be broken, so the next call reconnects.
    fn broken(&self, e: redis::RedisError) -> LimitError {
        self.conn.check(&e);
        unavailable(e)
    }

    async fn try_claim(
        &self,
        who: &Subject,
        claim: &Claim,
        now_ms: i64,
    ) -> Result<Option<Decision>, LimitError> {
        let (key, user, limits) = (who.key, who.user, &who.limits);
        let now = now_ms.div_euclid(1000);
        let (day, month, to_midnight, to_month_end) = periods(now_ms);
        // One command buffer, keys and numbers written straight into it.
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.reserve.get_hash())
            .arg(5)
            .arg(self.counter(user, Counter::Minute(key)))
            .arg(self.counter(user, Counter::Day(key, day)))
            .arg(self.counter(user, Counter::Month(key, month)))
            .arg(self.counter(user, Counter::UserMonth(month)))
            .arg(self.marker(user));
        cmd.arg(now)
            .arg(limits.rpm)
            .arg(limits.tpm)
            .arg(limits.daily_tokens)
            .arg(limits.monthly_tokens);
        cmd.arg(claim.need).arg(to_midnight).arg(to_month_end).arg(self.span);
        cmd.arg(u8::from(self.durable.is_some())).arg(who.ceiling);
        cmd.arg(claim.requests)
            .arg(claim.tokens)
            .arg(claim.until_ms.div_euclid(1000))
            .arg(claim.share.max(1));
        match &claim.ending {
            Some((r, used)) => {
                let (requests, tokens) = deltas(r, used);
                cmd.arg(r.second).arg(requests.to_string()).arg(tokens.to_string());
            }
            None => {
                cmd.arg("").arg(0).arg(0);
            }
        }
        cmd.arg(claim.long_until_ms.div_euclid(1000)).arg(claim.small_divisor());
        let (allowed, window, retry_after, req_used, tok_used, reset, n, t, second): Answer =
            self.eval(RESERVE_LUA, &cmd).await?;
        if allowed != -1
            && let Some((r, _)) = &claim.ending
        {
            self.mark_changed([(r.key, Changed { user: r.user, day: r.day, month: r.month })]);
        }
        let snapshot = Snapshot {
            reset_requests_secs: reset,
            reset_tokens_secs: reset,
            ..Snapshot::from_usage(limits, req_used, tok_used)
        };
        match allowed {
            -1 => Ok(None),
            1 => {
                self.mark_changed([(key, Changed { user, day, month })]);
                let reservation = Reservation {
                    key,
                    user,
                    requests: n,
                    tokens: t,
                    second,
                    day,
                    month,
                    fallback: false,
                    lease: 0,
                };
                Ok(Some(Decision::Allowed { reservation, snapshot }))
            }
            _ => {
                let window = match window {
                    1 => Window::RequestsPerMinute,
                    2 => Window::TokensPerMinute,
                    3 => Window::TokensPerDay,
                    4 => Window::TokensPerMonth,
                    _ => Window::UserMonth,
                };
                let retry_after_secs = retry_after.max(1);
                Ok(Some(Decision::Refused { window, retry_after_secs, snapshot }))
            }
        }
    }

    /// Remembers keys whose quota counters changed, for the next mirror flush.
    fn mark_changed(&self, changed: impl IntoIterator<Item = (ApiKeyId, Changed)>) {
        if let Some(d) = &self.durable {
            d.dirty.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend(changed);
        }
    }

    /// Puts the quotas saved in the store back into Redis (never lowering a counter Redis
    /// holds; on the slots that kept their counters, only what the store counted alone is
    /// added), then sets the restore markers. Runs when Redis is found without its marker (a
    /// restart).
    pub async fn restore(&self, now_ms: i64) -> Result<(), LimitError> {
        let Some(d) = &self.durable else { return Ok(()) };
        let seen = d.restores.load(Ordering::Acquire);
        let _one_at_a_time = d.restoring.lock().await;
        if d.restores.load(Ordering::Acquire) != seen {
            return Ok(()); // another task restored while this one waited
        }
        // The markers say "restored at": set only after every counter is back.
        self.sync(d, now_ms, QuotaRows::All).await.map_err(SyncFailed::into_limit_error)?;
        // Every slot's marker in a cluster (the client splits the command by slot); the one
        // marker of a single Redis.
        let slots = if self.conn.is_cluster() { slot::SLOTS } else { 1 };
        for slots in (0..slots).collect::<Vec<_>>().chunks(MARKER_CHUNK) {
            let mut cmd = redis::cmd("MSET");
            for &slot in slots {
                cmd.arg(MarkerKey { base: &self.marker, slot }).arg(now_ms);
            }
            self.command::<()>(&cmd).await?;
        }
        d.restores.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Gives Redis what the store counted alone (instances that could not reach Redis, this
    /// one or others, living or dead), and restores the quotas if Redis lost them. Runs when
    /// this instance reaches Redis again after an outage, and before every mirror flush.
    pub async fn catch_up(&self, now_ms: i64) -> Result<(), LimitError> {
        let Some(d) = &self.durable else { return Ok(()) };
        let begun = d.catch_ups_begun.load(Ordering::Acquire);
        let kept = {
            let _one_at_a_time = d.restoring.lock().await;
            if d.caught_up.load(Ordering::Acquire) > begun {
                // One that began after this call read everything pending when it began.
                return Ok(());
            }
            let number = d.catch_ups_begun.fetch_add(1, Ordering::AcqRel) + 1;
            let kept = match self.sync(d, now_ms, QuotaRows::Pending).await {
                Ok(kept) => kept,
                // Redis answers; only the store does not: Redis is used meanwhile (its marker
                // still guards against its having lost the counters), and what the store
                // counted alone reaches it at a flush once the store answers again.
                Err(SyncFailed::Store(e)) => {
                    tracing::debug!(error = %e, "rate limiter: quota store unreadable; catching up later");
                    return Ok(());
                }
                Err(SyncFailed::Redis(e)) => return Err(e),
            };
            d.caught_up.store(number, Ordering::Release);
            kept
        };
        if kept { Ok(()) } else { self.restore(now_ms).await }
    }

    /// Brings the store's counters of the current day and month (`which`) into Redis with the
    /// sync script, one slot per call, and tells the store which parts counted alone Redis
    /// now holds. Returns false when a slot had lost its restore marker (its counters were
    /// put back, the marker was not: the caller restores).
    ///
    /// A hand-over repeated after a failure between Redis and the store (a timed-out call that
    /// ran, the store failing after Redis took the part) counts that part twice in Redis:
    /// too much, never too little.
    async fn sync(&self, d: &Durable, now_ms: i64, which: QuotaRows) -> Result<bool, SyncFailed> {
        let (day, month, to_midnight, to_month_end) = periods(now_ms);
        let rows = d
            .store
            .current(date_of(day), date_of(month * 100 + 1), which)
            .await
            .map_err(SyncFailed::Store)?;
        // Each counter's key, and how long it lives past its period's end (a day's an hour, a
        // month's a day), as the reserve script sets it.
        let counter = |row: &QuotaUsage| match (row.holder, row.period) {
            (Holder::Key { key, user }, Period::Day) => {
                (self.counter(user, Counter::Day(key, day)), to_midnight + 3600)
            }
            (Holder::Key { key, user }, Period::Month) => {
                (self.counter(user, Counter::Month(key, month)), to_month_end + 86_400)
            }
            (Holder::User(user), _) => {
                (self.counter(user, Counter::UserMonth(month)), to_month_end + 86_400)
            }
        };
        let mut kept = true;
        for chunk in self.batches(&rows, QuotaUsage::user, SYNC_CHUNK) {
            let Some(first) = chunk.first() else { continue };
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(self.sync.get_hash()).arg(chunk.len() + 1).arg(self.marker(first.user()));
            for row in &chunk {
                cmd.arg(counter(row).0);
            }
            for row in &chunk {
                cmd.arg(row.used).arg(row.pending).arg(counter(row).1);
            }
            let marked: i64 = self
                .eval_within(SYNC_LUA, &cmd, self.timeout.max(BATCH_TIMEOUT))
                .await
                .map_err(SyncFailed::Redis)?;
            kept &= marked == 1;
            let handed: Vec<QuotaUsage> =
                chunk.iter().filter(|r| r.pending != 0).map(|r| (*r).clone()).collect();
            if handed.is_empty() {
                continue;
            }
            d.store.handed_over(&handed).await.map_err(SyncFailed::Store)?;
            tracing::info!(
                counters = handed.len(),
                "rate limiter: quota tokens counted in the database without redis handed to redis"
            );
            // The mirror flush saves what Redis now holds.
            self.mark_changed(handed.iter().filter_map(|r| match r.holder {
                Holder::Key { key, user } => Some((key, Changed { user, day, month })),
                Holder::User(_) => None,
            }));
        }
        Ok(kept)
    }

    /// Saves the current daily and monthly counters of every key that changed since the last
    /// call to the store. Returns how many counters were saved; on failure the keys stay
    /// pending for the next call.
    ///
    /// First gives Redis what the store counted alone ([`RedisLimiter::catch_up`]), so the
    /// counts of an instance that could not reach Redis while this one could reach it within
    /// a flush interval, even if that instance never comes back.
    pub async fn flush_mirror(&self) -> Result<usize, LimitError> {
        let Some(d) = &self.durable else { return Ok(0) };
        let caught_up = self.catch_up(SystemClock.now_unix_ms()).await;
        let saved = self.save_changed(d).await;
        caught_up?;
        saved
    }

    /// The mirror flush's saving part.
    async fn save_changed(&self, d: &Durable) -> Result<usize, LimitError> {
        let pending: Vec<(ApiKeyId, Changed)> =
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
        pending: &[(ApiKeyId, Changed)],
    ) -> Result<usize, LimitError> {
        let mut rows = Vec::with_capacity(pending.len() * 3);
        let mut users = std::collections::HashSet::new();
        for chunk in pending.chunks(SYNC_CHUNK) {
            let mut cmd = redis::cmd("MGET");
            for (key, c) in chunk {
                cmd.arg(self.counter(c.user, Counter::Day(*key, c.day)))
                    .arg(self.counter(c.user, Counter::Month(*key, c.month)))
                    .arg(self.counter(c.user, Counter::UserMonth(c.month)));
            }
            let values: Vec<Option<u64>> = self.command(&cmd).await?;
            for ((key, c), counts) in chunk.iter().zip(values.chunks(3)) {
                let count = |i: usize| counts.get(i).copied().flatten();
                let (holder, month) =
                    (Holder::Key { key: *key, user: c.user }, date_of(c.month * 100 + 1));
                // Redis's counts: the mirror part (nothing pending).
                let saved = |holder, period, start, used| QuotaUsage {
                    holder,
                    period,
                    start,
                    used,
                    pending: 0,
                };
                if let Some(used) = count(0) {
                    rows.push(saved(holder, Period::Day, date_of(c.day), used));
                }
                if let Some(used) = count(1) {
                    rows.push(saved(holder, Period::Month, month, used));
                }
                if let Some(used) = count(2).filter(|_| users.insert((c.user, c.month))) {
                    rows.push(saved(Holder::User(c.user), Period::Month, month, used));
                }
            }
        }
        d.store.save(&rows).await.map_err(|e| LimitError::Unavailable(e.0))?;
        Ok(rows.len())
    }
}

#[async_trait]
impl RateLimiter for RedisLimiter {
    async fn claim(
        &self,
        who: &Subject,
        claim: &Claim,
        now_ms: i64,
    ) -> Result<Decision, LimitError> {
        if let Some(decision) = self.try_claim(who, claim, now_ms).await? {
            return Ok(decision);
        }
        self.restore(now_ms).await?;
        self.try_claim(who, claim, now_ms).await?.ok_or_else(|| unavailable(NotRestored))
    }

    async fn adjust(&self, used: &[(Reservation, Used)]) -> Result<(), LimitError> {
        let changed: Vec<(&Reservation, (i128, i128))> = used
            .iter()
            .map(|(r, used)| (r, deltas(r, used)))
            .filter(|(_, (requests, tokens))| *requests != 0 || *tokens != 0)
            .collect();
        // One call per batch (in a cluster, per slot), the batches at once.
        let calls = self.batches(&changed, |(r, _)| r.user, SETTLE_CHUNK).into_iter().map(
            |chunk| async move {
                let mut cmd = redis::cmd("EVALSHA");
                cmd.arg(self.settle.get_hash()).arg(chunk.len() * 4);
                for (r, _) in &chunk {
                    cmd.arg(self.counter(r.user, Counter::Minute(r.key)))
                        .arg(self.counter(r.user, Counter::Day(r.key, r.day)))
                        .arg(self.counter(r.user, Counter::Month(r.key, r.month)))
                        .arg(self.counter(r.user, Counter::UserMonth(r.month)));
                }
                for (r, (requests, tokens)) in &chunk {
                    cmd.arg(r.second).arg(requests.to_string()).arg(tokens.to_string());
                }
                // Off the request path: a large batch may take longer than a reservation may.
                self.eval_within::<i64>(SETTLE_LUA, &cmd, self.timeout.max(BATCH_TIMEOUT)).await?;
                let changed = chunk
                    .iter()
                    .map(|(r, _)| (r.key, Changed { user: r.user, day: r.day, month: r.month }));
                self.mark_changed(changed);
                Ok::<(), LimitError>(())
            },
        );
        futures_util::future::join_all(calls).await.into_iter().collect()
    }
}

/// Why a sync stopped: the store failed (reading the counters, or recording a hand-over), or
/// Redis did.
enum SyncFailed {
    Store(gateway_ratelimit::QuotaStoreError),
    Redis(LimitError),
}

impl SyncFailed {
    fn into_limit_error(self) -> LimitError {
        match self {
            SyncFailed::Store(e) => LimitError::Unavailable(e.0),
            SyncFailed::Redis(e) => e,
        }
    }
}

/// What a reservation used minus what it counted: requests, tokens.
fn deltas(r: &Reservation, used: &Used) -> (i128, i128) {
    (
        i128::from(used.requests) - i128::from(r.requests),
        i128::from(used.tokens) - i128::from(r.tokens),
    )
}

/// A key whose quota counters changed since the last mirror flush.
#[derive(Clone, Copy)]
struct Changed {
    user: UserId,
    day: u32,
    month: u32,
}

/// Which counter of a user.
#[derive(Clone, Copy)]
enum Counter {
    /// Both per-minute windows of a key, in one hash.
    Minute(ApiKeyId),
    /// A key's tokens on a `YYYYMMDD` day.
    Day(ApiKeyId, u32),
    /// A key's tokens in a `YYYYMM` month.
    Month(ApiKeyId, u32),
    /// The user's tokens in a `YYYYMM` month, across keys (the ceiling).
    UserMonth(u32),
}

/// A counter's Redis key, written straight into a command (no string of its own).
struct CounterKey<'a> {
    prefix: &'a str,
    user: UserId,
    counter: Counter,
}

impl std::fmt::Display for CounterKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The `{...}` hash tag keeps every counter of a user on one cluster slot, so a
        // reservation touches one slot.
        write!(f, "{}:rl:v2:{{{}}}", self.prefix, self.user)?;
        match self.counter {
            // `w2`: seconds a lease counts ahead of now (v4 scripts); `w` was v3's.
            Counter::Minute(key) => write!(f, ":{key}:w2"),
            Counter::Day(key, day) => write!(f, ":{key}:d:{day}"),
            Counter::Month(key, month) => write!(f, ":{key}:m:{month}"),
            Counter::UserMonth(month) => write!(f, ":m:{month}"),
        }
    }
}

/// The slot of a user's counters (their hash tag is the user id).
fn user_slot(user: UserId) -> u16 {
    let mut buf = [0u8; 36];
    slot::of(user.0.hyphenated().encode_lower(&mut buf).as_bytes())
}

/// A slot's restore marker: `<prefix>:rl:v2:restored:{<tag>}`, the tag putting it on the slot.
struct MarkerKey<'a> {
    base: &'a str,
    slot: u16,
}

impl std::fmt::Display for MarkerKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{{{}}}", self.base, slot::tag_for(self.slot))
    }
}

impl redis::ToRedisArgs for MarkerKey<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg_fmt(self);
    }
}

impl redis::ToRedisArgs for CounterKey<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg_fmt(self);
    }
}

#[async_trait]
impl SharedLimiter for RedisLimiter {
    async fn catch_up(&self, now_ms: i64) -> Result<(), LimitError> {
        RedisLimiter::catch_up(self, now_ms).await
    }

    async fn flush_mirror(&self) -> Result<usize, LimitError> {
        RedisLimiter::flush_mirror(self).await
    }
}
