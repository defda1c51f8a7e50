//! API-key verification on the hot path.
//!
//! A verified key is cached under HMAC-SHA256(`API_KEY_SECRET`, full key) for a short TTL, so a
//! request with a known key costs one HMAC and one read-locked map lookup: no database, no
//! bcrypt. A miss looks the key up by its prefix and runs bcrypt on the blocking pool, behind a
//! concurrency bound and a bounded queue (beyond it: [`VerifyError::Busy`], never an unbounded
//! pile-up). Concurrent misses for the same key share one verification. Wrong keys land in a
//! negative cache. When a verified entry's time is up, the key is looked up again (revocation,
//! expiry, suspension and plan changes are seen), but if its record still holds the very hash
//! the bearer was checked against, bcrypt is not run again: many keys in use cost a lookup per
//! key and TTL, not a bcrypt. A bearer that is not a well-formed `bm_` key never reaches the
//! database or bcrypt. An unknown prefix waits as long as a bcrypt verification takes before answering,
//! so it is told apart from a wrong secret neither by the answer nor by its timing, without
//! spending the CPU.
//!
//! An entry whose time is up is refreshed in the background while the request it came with is
//! served from it, for at most [`VerifierConfig::stale_grace`] past its TTL: no request waits
//! for the database to confirm a key it verified a moment ago, and while the database cannot
//! be reached, keys verified before the outage keep working for that long (a failed refresh is
//! tried again every [`REFRESH_RETRY`]). Past the grace the refresh is the request's own, and an
//! unreachable database refuses it ([`VerifyError::Unavailable`]): a database error never
//! makes a key valid that was not verified before. Revocations published on the bus remove
//! entries at once, outage or not.
//!
//! While the invalidation bus is subscribed (and answering its heartbeat), every change made
//! through any instance reaches this cache at once, so an entry whose record was read after
//! the subscription was made is trusted for [`VerifierConfig::ttl_with_bus`] instead of
//! [`VerifierConfig::ttl`]: with 10,000 keys in use, a tenth of the record reads. When the
//! subscription is lost ([`KeyVerifier::bus_lost`]) every entry falls back to its `ttl` at
//! once, with no pass over the cache: a change missed since is seen within `ttl` of its
//! record's read, as without a bus.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use gateway_core::{
    ApiKeyId, Clock, LimitOverrides, Limits, Plan, Role, Scope, Tier, UserId, UserStatus,
};
use time::OffsetDateTime;
use tokio::sync::{OnceCell, Semaphore};

use crate::token::KeyedHasher;
use crate::{KeyStore, UserStore, apikey};

/// Who is calling, as established from an API key.
#[derive(Debug)]
pub struct Principal {
    pub user_id: UserId,
    pub key_id: ApiKeyId,
    pub key_prefix: String,
    pub role: Role,
    pub tier: Tier,
    pub scopes: Vec<Scope>,
    /// The key's own limits, applied over its plan's (see [`Principal::limits`]).
    pub overrides: LimitOverrides,
    /// The owner's spend cap (`None`: the plan's monthly price).
    pub overage_cap_micros: Option<i64>,
    /// From this moment the owner is past due and gets the free tier's limits.
    pub past_due_after: Option<OffsetDateTime>,
    /// `None`: every model.
    pub allowed_models: Option<Vec<String>>,
    last_used_ms: AtomicI64,
    flushed_ms: AtomicI64,
}

impl Principal {
    pub fn has_scope(&self, scope: Scope) -> bool {
        self.scopes.contains(&scope)
    }

    pub fn may_use_model(&self, model: &str) -> bool {
        self.allowed_models.as_ref().is_none_or(|m| m.iter().any(|a| a == model))
    }

    /// The key's limits under `plan`: the plan's, lowered by the key's overrides (an admin's
    /// key may also raise them).
    pub fn limits(&self, plan: &Plan) -> Limits {
        plan.limits.with_overrides(&self.overrides, self.role == Role::Admin)
    }

    /// Whether the owner is past due at `now`: an invoice stayed open past its grace period.
    pub fn is_past_due(&self, now: OffsetDateTime) -> bool {
        self.past_due_after.is_some_and(|t| t <= now)
    }
}

/// Why a bearer did not authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error("no API key was provided")]
    Missing,
    #[error("the Authorization header is not `Bearer bm_...` with a well-formed key")]
    Malformed,
    /// Unknown prefix or wrong secret: deliberately one answer.
    #[error("incorrect API key")]
    Unknown,
    #[error("the API key has been revoked")]
    Revoked,
    #[error("the API key is disabled")]
    Inactive,
    #[error("the API key has expired")]
    Expired,
    #[error("the account is suspended")]
    Suspended,
    /// Too many verifications are queued for bcrypt; retry shortly.
    #[error("key verification is overloaded")]
    Busy,
    /// The store failed. Authentication fails closed: this never makes a key valid.
    #[error("key verification is unavailable")]
    Unavailable,
}

/// Verifier settings.
#[derive(Clone, Debug)]
pub struct VerifierConfig {
    /// How long a verified key is trusted without looking again (each entry up to a fifth
    /// less, spread by its key).
    pub ttl: Duration,
    /// How long, instead, while the invalidation bus is subscribed (from before the record
    /// was read until now): changes made through the gateway reach the cache at once, so
    /// this bounds only changes made around it (in the database directly). At least `ttl`.
    pub ttl_with_bus: Duration,
    /// How long a refused key is refused without looking again.
    pub negative_ttl: Duration,
    /// Most cached entries (positive and negative).
    pub max_entries: usize,
    /// bcrypt verifications running at once.
    pub max_concurrent_bcrypt: usize,
    /// Verifications waiting for bcrypt before new ones are refused as busy.
    pub max_waiting: usize,
    /// bcrypt cost used to calibrate the wait of unknown prefixes.
    pub bcrypt_cost: u32,
    /// How long past its TTL a verified entry is still served while it is refreshed in the
    /// background (and while the refresh fails because the database is unreachable).
    pub stale_grace: Duration,
}

/// How much newer than the last one written a key's use must be to be written again (the
/// precision of a key's "last used").
pub const LAST_USE_STEP: Duration = Duration::from_mins(1);

/// How long after a failed background refresh the next one starts.
pub const REFRESH_RETRY: Duration = Duration::from_secs(5);

impl Default for VerifierConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        Self {
            ttl: Duration::from_secs(30),
            ttl_with_bus: Duration::from_mins(5),
            negative_ttl: Duration::from_secs(30),
            max_entries: 100_000,
            max_concurrent_bcrypt: (cores / 2).max(1),
            max_waiting: 256,
            bcrypt_cost: 12,
            stale_grace: Duration::from_mins(10),
        }
    }
}

enum Cached {
    /// `verified`: the stored bcrypt hash the bearer was checked against. When the entry
    /// expires and the key's record still holds that hash, the bearer is known to match it:
    /// the refresh reads the record again, but runs no bcrypt.
    Valid {
        principal: Arc<Principal>,
        /// Its end by [`VerifierConfig::ttl`].
        until_ms: i64,
        /// Its end by [`VerifierConfig::ttl_with_bus`], which applies while the bus has been
        /// subscribed since before `read_at_ms`.
        bus_until_ms: i64,
        /// When its record was read (the read started).
        read_at_ms: i64,
        verified: Verified,
        /// What it is never served past, refreshed or not: the key's expiry, the end of a
        /// rotated secret's grace period (`i64::MAX`: neither). Before that, it may be served
        /// for the grace past its end while it is refreshed.
        hard_end_ms: i64,
        /// When a background refresh may start next (first at `until_ms`; pushed back by
        /// [`REFRESH_RETRY`] when one starts, so one runs at a time).
        refresh_after_ms: AtomicI64,
    },
    Refused {
        error: VerifyError,
        key_id: Option<ApiKeyId>,
        user_id: Option<UserId>,
        until_ms: i64,
    },
}

impl Cached {
    /// The latest it may be trusted without looking again.
    fn until_ms(&self) -> i64 {
        match self {
            Cached::Valid { bus_until_ms: until_ms, .. } | Cached::Refused { until_ms, .. } => {
                *until_ms
            }
        }
    }

    fn concerns_key(&self, id: ApiKeyId) -> bool {
        match self {
            Cached::Valid { principal, .. } => principal.key_id == id,
            Cached::Refused { key_id, .. } => *key_id == Some(id),
        }
    }

    fn concerns_user(&self, id: UserId) -> bool {
        match self {
            Cached::Valid { principal, .. } => principal.user_id == id,
            Cached::Refused { user_id, .. } => *user_id == Some(id),
        }
    }
}

type Shared = Arc<OnceCell<Result<Arc<Principal>, VerifyError>>>;

/// Which stored hash a bearer matched, kept to refresh its entry without bcrypt (never shown:
/// no `Debug`).
#[derive(Clone)]
struct Verified {
    hash: Arc<str>,
}

/// What the cache knows of a bearer.
enum Lookup {
    Hit(Result<Arc<Principal>, VerifyError>),
    /// A verified entry whose time is up, in its grace: served, and refreshed in the
    /// background by this request.
    Refresh(Arc<Principal>, Verified),
    /// A verified entry past its grace.
    Stale(Verified),
    Miss,
}

/// Verifies bearer strings against the key store, with the caches described above.
pub struct KeyVerifier {
    /// Itself, for the background refreshes it spawns.
    me: std::sync::Weak<KeyVerifier>,
    keys: Arc<dyn KeyStore>,
    users: Arc<dyn UserStore>,
    hasher: KeyedHasher,
    clock: Arc<dyn Clock>,
    config: VerifierConfig,
    cache: RwLock<HashMap<[u8; 32], Cached>>,
    inflight: Mutex<HashMap<[u8; 32], Shared>>,
    bcrypt: Semaphore,
    waiting: AtomicUsize,
    /// Moving average of one bcrypt verification, in microseconds.
    bcrypt_micros: AtomicU64,
    /// bcrypt verifications run (cache misses that needed one).
    bcrypt_runs: AtomicU64,
    /// Last uses of entries dropped from the cache before they were flushed.
    orphaned_uses: Mutex<Vec<(ApiKeyId, i64)>>,
    /// When the invalidation bus's current subscription was made (unix ms); `i64::MAX`
    /// while there is none.
    bus_since_ms: AtomicI64,
}

impl std::fmt::Debug for KeyVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVerifier").field("config", &self.config).finish_non_exhaustive()
    }
}

/// What the blocking bcrypt step found.
enum SecretMatch {
    Current,
    Previous,
    None,
}

impl KeyVerifier {
    pub fn new(
        keys: Arc<dyn KeyStore>,
        users: Arc<dyn UserStore>,
        api_key_secret: &[u8],
        clock: Arc<dyn Clock>,
        config: VerifierConfig,
    ) -> Arc<Self> {
        let bcrypt = Semaphore::new(config.max_concurrent_bcrypt.max(1));
        // A first estimate of a bcrypt verification (about 60 µs per 2^cost on a current
        // core), replaced by measurements as real verifications run.
        let estimate = 60u64 << config.bcrypt_cost.min(20);
        Arc::new_cyclic(|me| Self {
            me: me.clone(),
            keys,
            users,
            hasher: KeyedHasher::new(api_key_secret),
            clock,
            config,
            cache: RwLock::default(),
            inflight: Mutex::default(),
            bcrypt,
            waiting: AtomicUsize::new(0),
            bcrypt_micros: AtomicU64::new(estimate / 4),
            bcrypt_runs: AtomicU64::new(0),
            orphaned_uses: Mutex::default(),
            bus_since_ms: AtomicI64::new(i64::MAX),
        })
    }

    /// Verifies an `Authorization` header value.
    pub async fn verify_header(
        &self,
        authorization: Option<&str>,
    ) -> Result<Arc<Principal>, VerifyError> {
        let value = authorization.ok_or(VerifyError::Missing)?.trim();
        let token = match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
            Some(_) => return Err(VerifyError::Malformed),
            // The bare key, as the original product took it.
            None => value,
        };
        self.verify(token).await
    }

    /// Verifies a bearer token (`bm_...`).
    pub async fn verify(&self, token: &str) -> Result<Arc<Principal>, VerifyError> {
        let parsed = apikey::parse(token).ok_or(VerifyError::Malformed)?;
        let digest = self.hasher.hash(token.as_bytes());
        let now = self.clock.now_unix_ms();
        let stale = match self.cached(&digest, now) {
            Lookup::Hit(hit) => return hit,
            Lookup::Refresh(principal, verified) => {
                self.refresh_in_background(token, digest, verified);
                return Ok(principal);
            }
            Lookup::Stale(verified) => Some(verified),
            Lookup::Miss => None,
        };
        let shared: Shared = {
            let mut inflight =
                self.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            inflight.entry(digest).or_default().clone()
        };
        let result =
            shared.get_or_init(|| self.verify_uncached(parsed, digest, stale)).await.clone();
        let mut inflight = self.inflight.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if inflight.get(&digest).is_some_and(|s| Arc::ptr_eq(s, &shared)) {
            inflight.remove(&digest);
        }
        result
    }

    /// Refreshes an entry in its grace from the store, off the request.
    fn refresh_in_background(&self, token: &str, digest: [u8; 32], verified: Verified) {
        let Some(me) = self.me.upgrade() else { return };
        let token = token.to_owned();
        tokio::spawn(async move {
            let Some(parsed) = apikey::parse(&token) else { return };
            if let Err(VerifyError::Unavailable) =
                me.verify_uncached(parsed, digest, Some(verified)).await
            {
                tracing::warn!(
                    retry_in_s = REFRESH_RETRY.as_secs(),
                    "a cached key could not be refreshed; it is served from the cache until its grace ends"
                );
            }
        });
    }

    fn cached(&self, digest: &[u8; 32], now: i64) -> Lookup {
        let cache = self.cache.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (principal, verified, end, hard_end_ms, refresh_after_ms) = match cache.get(digest) {
            None => return Lookup::Miss,
            Some(Cached::Refused { error, until_ms, .. }) => {
                return if *until_ms > now { Lookup::Hit(Err(*error)) } else { Lookup::Miss };
            }
            Some(Cached::Valid {
                principal,
                verified,
                until_ms,
                bus_until_ms,
                read_at_ms,
                hard_end_ms,
                refresh_after_ms,
            }) => {
                // Past `ttl`, it lasts to `ttl_with_bus` if the bus has been subscribed since
                // before its record was read.
                let end = if *until_ms > now
                    || self.bus_since_ms.load(Ordering::Relaxed) >= *read_at_ms
                {
                    *until_ms
                } else {
                    *bus_until_ms
                };
                (principal, verified, end, *hard_end_ms, refresh_after_ms)
            }
        };
        if end > now {
            principal.last_used_ms.store(now, Ordering::Relaxed);
            return Lookup::Hit(Ok(principal.clone()));
        }
        let grace = self.config.stale_grace.as_millis() as i64;
        if end.saturating_add(grace).min(hard_end_ms) <= now {
            return Lookup::Stale(verified.clone());
        }
        principal.last_used_ms.store(now, Ordering::Relaxed);
        let due = refresh_after_ms.load(Ordering::Relaxed);
        let retry = now + REFRESH_RETRY.as_millis() as i64;
        if due <= now
            && refresh_after_ms
                .compare_exchange(due, retry, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Lookup::Refresh(principal.clone(), verified.clone());
        }
        Lookup::Hit(Ok(principal.clone()))
    }

    /// bcrypt verifications run so far (misses of keys not seen with their current hash).
    pub fn bcrypt_runs(&self) -> u64 {
        self.bcrypt_runs.load(Ordering::Relaxed)
    }

    async fn verify_uncached(
        &self,
        parsed: apikey::ParsedKey<'_>,
        digest: [u8; 32],
        stale: Option<Verified>,
    ) -> Result<Arc<Principal>, VerifyError> {
        let read_at_ms = self.clock.now_unix_ms();
        let prefix = format!("bm_{}", parsed.prefix);
        let record = match self.keys.find_key_by_prefix(&prefix).await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "key lookup failed; refusing the request");
                return Err(VerifyError::Unavailable);
            }
        };
        let Some(record) = record else {
            // Answer after as long as a bcrypt verification would take.
            tokio::time::sleep(Duration::from_micros(self.bcrypt_micros.load(Ordering::Relaxed)))
                .await;
            self.refuse(digest, VerifyError::Unknown, None, None);
            return Err(VerifyError::Unknown);
        };
        let now = self.clock.now();
        let previous_until = record.previous_key_expires_at.filter(|t| *t > now);
        let previous_hash = previous_until.and(record.previous_key_hash.as_deref());
        // An expired entry of this very bearer, checked against a hash the record still holds:
        // the answer bcrypt would give is known.
        let known = stale.and_then(|v| {
            if *v.hash == *record.key_hash {
                Some(SecretMatch::Current)
            } else if previous_hash == Some(&*v.hash) {
                Some(SecretMatch::Previous)
            } else {
                None
            }
        });
        let matched = match known {
            Some(m) => m,
            None => {
                self.bcrypt_verify(
                    parsed.secret.to_owned(),
                    record.key_hash.clone(),
                    previous_hash.map(str::to_owned),
                )
                .await?
            }
        };
        let meta = &record.meta;
        let refusal = match matched {
            SecretMatch::None => Some(VerifyError::Unknown),
            _ if record.revoked_at.is_some() => Some(VerifyError::Revoked),
            _ if meta.expires_at.is_some_and(|t| t <= now) => Some(VerifyError::Expired),
            _ if !meta.is_active => Some(VerifyError::Inactive),
            _ => None,
        };
        if let Some(error) = refusal {
            let key_id = (error != VerifyError::Unknown).then_some(meta.id);
            self.refuse(digest, error, key_id, Some(meta.user_id));
            return Err(error);
        }
        let owner = match self.users.find_user_by_id(meta.user_id).await {
            Ok(Some(owner)) => owner.user,
            Ok(None) => {
                self.refuse(digest, VerifyError::Unknown, Some(meta.id), Some(meta.user_id));
                return Err(VerifyError::Unknown);
            }
            Err(e) => {
                tracing::error!(error = %e, "key owner lookup failed; refusing the request");
                return Err(VerifyError::Unavailable);
            }
        };
        if owner.status == UserStatus::Deleted {
            self.refuse(digest, VerifyError::Revoked, Some(meta.id), Some(owner.id));
            return Err(VerifyError::Revoked);
        }
        if owner.status == UserStatus::Suspended {
            self.refuse(digest, VerifyError::Suspended, Some(meta.id), Some(owner.id));
            return Err(VerifyError::Suspended);
        }
        // Up to a fifth shorter, by the key's digest: keys verified together (a restart, a
        // burst of new clients) do not all look again in the same instant.
        let share = f64::from(digest[0]) / 255.0 / 5.0;
        let ttl_with_bus = self.config.ttl_with_bus.max(self.config.ttl);
        let mut until = now + self.config.ttl.saturating_sub(self.config.ttl.mul_f64(share));
        let mut bus_until = now + ttl_with_bus.saturating_sub(ttl_with_bus.mul_f64(share));
        // What no stale entry outlives: the key's expiry, a rotated secret's last moment.
        let mut hard_end = meta.expires_at;
        if let (SecretMatch::Previous, Some(grace_end)) = (&matched, previous_until) {
            hard_end = Some(hard_end.map_or(grace_end, |t| t.min(grace_end)));
        }
        if let Some(end) = hard_end {
            until = until.min(end);
            bus_until = bus_until.min(end);
        }
        let verified = Verified {
            hash: match matched {
                SecretMatch::Previous => previous_hash.unwrap_or_default().into(),
                _ => record.key_hash.as_str().into(),
            },
        };
        let now_ms = self.clock.now_unix_ms();
        let principal = Arc::new(Principal {
            user_id: owner.id,
            key_id: meta.id,
            key_prefix: meta.key_prefix.clone(),
            role: owner.role,
            tier: owner.tier,
            scopes: meta.scopes.clone(),
            overrides: meta.overrides,
            overage_cap_micros: owner.overage_cap_micros,
            past_due_after: owner.past_due_after,
            allowed_models: meta.allowed_models.clone(),
            last_used_ms: AtomicI64::new(now_ms),
            flushed_ms: AtomicI64::new(0),
        });
        let until_ms = unix_ms(until);
        self.insert(
            digest,
            Cached::Valid {
                principal: principal.clone(),
                until_ms,
                bus_until_ms: unix_ms(bus_until),
                read_at_ms,
                verified,
                hard_end_ms: hard_end.map_or(i64::MAX, unix_ms),
                refresh_after_ms: AtomicI64::new(until_ms),
            },
        );
        Ok(principal)
    }

    async fn bcrypt_verify(
        &self,
        secret: String,
        current: String,
        previous: Option<String>,
    ) -> Result<SecretMatch, VerifyError> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.config.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!("key verification queue is full: refusing as busy");
            return Err(VerifyError::Busy);
        }
        let permit = self.bcrypt.acquire().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let _permit = permit.map_err(|_| VerifyError::Unavailable)?;
        self.bcrypt_runs.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let matched = tokio::task::spawn_blocking(move || {
            if bcrypt::verify(&secret, &current).unwrap_or(false) {
                SecretMatch::Current
            } else if previous.is_some_and(|p| bcrypt::verify(&secret, &p).unwrap_or(false)) {
                SecretMatch::Previous
            } else {
                SecretMatch::None
            }
        })
        .await
        .map_err(|_| VerifyError::Unavailable)?;
        let took = started.elapsed().as_micros() as u64;
        let avg = self.bcrypt_micros.load(Ordering::Relaxed);
        self.bcrypt_micros.store((avg * 7 + took) / 8, Ordering::Relaxed);
        Ok(matched)
    }

    fn refuse(
        &self,
        digest: [u8; 32],
        error: VerifyError,
        key_id: Option<ApiKeyId>,
        user_id: Option<UserId>,
    ) {
        let until_ms = self.clock.now_unix_ms() + self.config.negative_ttl.as_millis() as i64;
        self.insert(digest, Cached::Refused { error, key_id, user_id, until_ms });
    }

    fn insert(&self, digest: [u8; 32], entry: Cached) {
        let now = self.clock.now_unix_ms();
        let mut cache = self.cache.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= self.config.max_entries {
            self.evict(&mut cache, |c| c.until_ms() <= now);
            if cache.len() >= self.config.max_entries {
                // Full of live entries (a flood of distinct keys): drop the refusals first.
                self.evict(&mut cache, |c| matches!(c, Cached::Refused { .. }));
                if cache.len() >= self.config.max_entries {
                    self.evict(&mut cache, |_| true);
                }
            }
        }
        if let (Cached::Valid { principal, .. }, Some(Cached::Valid { principal: old, .. })) =
            (&entry, cache.get(&digest))
        {
            // Carry an unflushed use over to the replacement.
            principal
                .last_used_ms
                .fetch_max(old.last_used_ms.load(Ordering::Relaxed), Ordering::Relaxed);
            principal.flushed_ms.store(old.flushed_ms.load(Ordering::Relaxed), Ordering::Relaxed);
        }
        cache.insert(digest, entry);
    }

    /// Drops the entries `drop` selects, keeping their unflushed last use for the next flush.
    fn evict(&self, cache: &mut HashMap<[u8; 32], Cached>, drop: impl Fn(&Cached) -> bool) {
        let mut orphaned = Vec::new();
        cache.retain(|_, c| {
            if !drop(c) {
                return true;
            }
            if let Cached::Valid { principal, .. } = c {
                let used = principal.last_used_ms.load(Ordering::Relaxed);
                if used > principal.flushed_ms.load(Ordering::Relaxed) {
                    orphaned.push((principal.key_id, used));
                }
            }
            false
        });
        if !orphaned.is_empty() {
            self.orphaned_uses
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(orphaned);
        }
    }

    /// Forgets everything cached about a key (revoked, rotated, changed).
    pub fn invalidate_key(&self, id: ApiKeyId) {
        let mut cache = self.cache.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.evict(&mut cache, |c| c.concerns_key(id));
    }

    /// Forgets everything cached about a user's keys (suspended, tier or role changed).
    pub fn invalidate_user(&self, id: UserId) {
        let mut cache = self.cache.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.evict(&mut cache, |c| c.concerns_user(id));
    }

    /// Trusts no entry any more (after invalidations may have been missed, e.g. a lost
    /// pub/sub connection): the next use of each verified key waits for its record to be read
    /// again, as past its grace (so a key revoked meanwhile is refused), but runs no bcrypt
    /// unless its hash changed; refusals are forgotten. Dropping the entries instead would
    /// make every key in use cost a bcrypt at once (10,000 keys: minutes of one core).
    fn expire_all(&self) {
        let mut cache = self.cache.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.evict(&mut cache, |c| matches!(c, Cached::Refused { .. }));
        for entry in cache.values_mut() {
            if let Cached::Valid { until_ms, bus_until_ms, hard_end_ms, .. } = entry {
                *until_ms = i64::MIN;
                *bus_until_ms = i64::MIN;
                *hard_end_ms = i64::MIN;
            }
        }
    }

    /// The invalidation bus has (re)subscribed: invalidations may have been missed before,
    /// so every entry is expired ([`Self::expire_all`]); records read from now on are trusted
    /// for [`VerifierConfig::ttl_with_bus`].
    pub fn bus_subscribed(&self) {
        self.bus_since_ms.store(self.clock.now_unix_ms(), Ordering::Relaxed);
        self.expire_all();
    }

    /// The invalidation bus's subscription ended: every entry is trusted for its
    /// [`VerifierConfig::ttl`] only, from now until the next [`Self::bus_subscribed`] (whose
    /// records are then read again).
    pub fn bus_lost(&self) {
        self.bus_since_ms.store(i64::MAX, Ordering::Relaxed);
    }

    /// Number of cached entries (positive and negative).
    pub fn cached_entries(&self) -> usize {
        self.cache.read().unwrap_or_else(std::sync::PoisonError::into_inner).len()
    }

    /// Writes the last-use times recorded since the previous flush, in one batch: a key's
    /// first use, and then a use at least [`LAST_USE_STEP`] after the last one written (a key
    /// in steady use is written once a minute, not at every flush; with 10,000 keys in use the
    /// flush rewrote 10,000 rows every 10 s). Uses of entries dropped from the cache are
    /// always written.
    pub async fn flush_last_used(&self) -> Result<usize, crate::AuthError> {
        let step = LAST_USE_STEP.as_millis() as i64;
        let orphaned = std::mem::take(
            &mut *self.orphaned_uses.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let batch: Vec<(Arc<Principal>, i64)> = {
            let cache = self.cache.read().unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut seen = HashMap::new();
            for c in cache.values() {
                if let Cached::Valid { principal, .. } = c {
                    let used = principal.last_used_ms.load(Ordering::Relaxed);
                    let flushed = principal.flushed_ms.load(Ordering::Relaxed);
                    if used > flushed && (flushed == 0 || used - flushed >= step) {
                        seen.entry(principal.key_id).or_insert_with(|| (principal.clone(), used));
                    }
                }
            }
            seen.into_values().collect()
        };
        let mut latest: HashMap<ApiKeyId, i64> = HashMap::new();
        for (id, ms) in batch.iter().map(|(p, ms)| (p.key_id, *ms)).chain(orphaned.iter().copied())
        {
            let e = latest.entry(id).or_insert(ms);
            *e = (*e).max(ms);
        }
        if latest.is_empty() {
            return Ok(0);
        }
        let used: Vec<(ApiKeyId, OffsetDateTime)> =
            latest.iter().map(|(id, ms)| (*id, from_unix_ms(*ms))).collect();
        if let Err(e) = self.keys.touch_keys(&used).await {
            // Keep the orphans for the next attempt; live entries are still unflushed.
            self.orphaned_uses
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(orphaned);
            return Err(e);
        }
        for (p, ms) in &batch {
            p.flushed_ms.fetch_max(*ms, Ordering::Relaxed);
        }
        Ok(used.len())
    }
}

fn unix_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_unix_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Accounts, AccountsConfig, AuthStores, InMemoryAuthStore, NewKey};
    use gateway_core::TestClock;

    struct Fixture {
        accounts: Accounts,
        verifier: Arc<KeyVerifier>,
        clock: TestClock,
        user: UserId,
    }

    async fn fixture(grace: Duration) -> Fixture {
        let store = Arc::new(InMemoryAuthStore::default());
        let clock = TestClock::at(time::macros::datetime!(2026-03-01 12:00 UTC));
        let config = AccountsConfig {
            password_cost: 4,
            key_cost: 4,
            rotation_grace: grace,
            ..AccountsConfig::default()
        };
        let accounts = Accounts::new(AuthStores::from(store.clone()), b"s", config)
            .with_clock(Arc::new(clock.clone()));
        let verifier = KeyVerifier::new(
            store.clone(),
            store,
            b"api key secret",
            Arc::new(clock.clone()),
            VerifierConfig { bcrypt_cost: 4, ..VerifierConfig::default() },
        );
        let user = accounts.signup("v@example.com", "password-1", None).await.unwrap().id;
        // A plan with room for several keys.
        let starter = crate::AdminUserUpdate { tier: Some(Tier::Starter), ..Default::default() };
        accounts.admin_update_user(UserId::new(), user, starter).await.unwrap();
        Fixture { accounts, verifier, clock, user }
    }

    #[tokio::test]
    async fn a_valid_key_yields_its_principal_and_is_served_from_cache() {
        let f = fixture(Duration::ZERO).await;
        let mut new = NewKey::named("k", vec![Scope::ChatCompletions]);
        new.allowed_models = Some(vec!["gpt-4".into()]);
        new.overrides.rate_limit_rpm = Some(5);
        let issued = f.accounts.create_key(f.user, new).await.unwrap();
        let p = f.verifier.verify_header(Some(&format!("Bearer {}", issued.key))).await.unwrap();
        assert_eq!((p.user_id, p.key_id, p.tier), (f.user, issued.meta.id, Tier::Starter));
        let limits = p.limits(&Tier::Starter.default_plan());
        assert_eq!(limits.rpm, 5);
        assert_eq!(limits.tpm, Tier::Starter.limits().tpm);
        assert!(p.has_scope(Scope::ChatCompletions) && !p.has_scope(Scope::Embeddings));
        assert!(p.may_use_model("gpt-4") && !p.may_use_model("gpt-3.5-turbo"));
        assert_eq!(f.verifier.cached_entries(), 1);
        let again = f.verifier.verify(&issued.key).await.unwrap();
        assert!(Arc::ptr_eq(&p, &again), "the second call is a cache hit");
        let bare = f.verifier.verify_header(Some(&issued.key)).await.unwrap();
        assert!(
            Arc::ptr_eq(&p, &bare),
            "the key without `Bearer `, as the original product took it"
        );
        for refused in [format!("Basic {}", issued.key), "Bearer".to_owned(), String::new()] {
            assert!(f.verifier.verify_header(Some(&refused)).await.is_err(), "{refused:?}");
        }
    }

    #[tokio::test]
    async fn bad_bearers_get_typed_errors_and_unknown_equals_wrong_secret() {
        let f = fixture(Duration::ZERO).await;
        let issued =
            f.accounts.create_key(f.user, NewKey::named("k", vec![Scope::Models])).await.unwrap();
        let v = &f.verifier;
        assert_eq!(v.verify_header(None).await.unwrap_err(), VerifyError::Missing);
        assert_eq!(v.verify_header(Some("Basic abc")).await.unwrap_err(), VerifyError::Malformed);
        assert_eq!(v.verify("sk-openai-style").await.unwrap_err(), VerifyError::Malformed);
        assert_eq!(v.verify("bm_x' OR 1=1--").await.unwrap_err(), VerifyError::Malformed);
        let unknown_prefix = apikey::generate().unwrap().full();
        let wrong_secret =
            format!("{}_{}", issued.meta.key_prefix, apikey::generate_secret().unwrap());
        assert_eq!(v.verify(&unknown_prefix).await.unwrap_err(), VerifyError::Unknown);
        assert_eq!(v.verify(&wrong_secret).await.unwrap_err(), VerifyError::Unknown);
        // Both now sit in the negative cache.
        assert_eq!(v.cached_entries(), 2);
        assert!(
            v.verify_header(Some(&format!("bearer {}", issued.key))).await.is_ok(),
            "scheme is case-insensitive"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_unknown_prefix_takes_as_long_as_a_bcrypt_check() {
        let f = fixture(Duration::ZERO).await;
        let estimate = Duration::from_micros(f.verifier.bcrypt_micros.load(Ordering::Relaxed));
        assert!(estimate > Duration::ZERO);
        let started = tokio::time::Instant::now();
        assert_eq!(
            f.verifier.verify(&apikey::generate().unwrap().full()).await.unwrap_err(),
            VerifyError::Unknown
        );
        assert!(
            started.elapsed() >= estimate,
            "answered after {:?}, expected at least {estimate:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn revocation_expiry_deactivation_and_suspension_refuse_after_invalidation() {
        let f = fixture(Duration::ZERO).await;
        let v = &f.verifier;
        let mut new = NewKey::named("k", vec![Scope::Models]);
        new.expires_at = Some(f.clock.now() + time::Duration::hours(1));
        let k = f.accounts.create_key(f.user, new).await.unwrap();
        assert!(v.verify(&k.key).await.is_ok());

        // Expiry applies even to a cached entry.
        f.clock.advance(time::Duration::hours(1));
        assert_eq!(v.verify(&k.key).await.unwrap_err(), VerifyError::Expired);

        let k2 =
            f.accounts.create_key(f.user, NewKey::named("k2", vec![Scope::Models])).await.unwrap();
        assert!(v.verify(&k2.key).await.is_ok());
        let off = crate::KeyUpdate { is_active: Some(false), ..Default::default() };
        f.accounts.update_key(f.user, k2.meta.id, off).await.unwrap();
        v.invalidate_key(k2.meta.id);
        assert_eq!(v.verify(&k2.key).await.unwrap_err(), VerifyError::Inactive);
        let on = crate::KeyUpdate { is_active: Some(true), ..Default::default() };
        f.accounts.update_key(f.user, k2.meta.id, on).await.unwrap();
        v.invalidate_key(k2.meta.id);
        assert!(v.verify(&k2.key).await.is_ok(), "reactivation clears the cached refusal");

        let suspend =
            crate::AdminUserUpdate { status: Some(UserStatus::Suspended), ..Default::default() };
        f.accounts.admin_update_user(UserId::new(), f.user, suspend).await.unwrap();
        v.invalidate_user(f.user);
        assert_eq!(v.verify(&k2.key).await.unwrap_err(), VerifyError::Suspended);
        let activate =
            crate::AdminUserUpdate { status: Some(UserStatus::Active), ..Default::default() };
        f.accounts.admin_update_user(UserId::new(), f.user, activate).await.unwrap();
        v.invalidate_user(f.user);
        assert!(v.verify(&k2.key).await.is_ok());

        f.accounts.revoke_key(f.user, k2.meta.id).await.unwrap();
        v.invalidate_key(k2.meta.id);
        assert_eq!(v.verify(&k2.key).await.unwrap_err(), VerifyError::Revoked);
    }

    #[tokio::test]
    async fn a_rotated_secret_works_until_the_grace_period_ends() {
        let f = fixture(Duration::from_mins(1)).await;
        let v = &f.verifier;
        let old =
            f.accounts.create_key(f.user, NewKey::named("k", vec![Scope::Models])).await.unwrap();
        assert!(v.verify(&old.key).await.is_ok());
        let new = f.accounts.rotate_key(f.user, old.meta.id).await.unwrap();
        v.invalidate_key(old.meta.id);
        assert_eq!(v.verify(&new.key).await.unwrap().key_id, old.meta.id);
        assert_eq!(
            v.verify(&old.key).await.unwrap().key_id,
            old.meta.id,
            "inside the grace period"
        );
        f.clock.advance(time::Duration::seconds(61));
        assert_eq!(
            v.verify(&old.key).await.unwrap_err(),
            VerifyError::Unknown,
            "the cache entry ends with the grace"
        );
        assert!(v.verify(&new.key).await.is_ok());
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_bcrypt_and_uses_are_flushed_in_one_batch() {
        let f = fixture(Duration::ZERO).await;
        let k =
            f.accounts.create_key(f.user, NewKey::named("k", vec![Scope::Models])).await.unwrap();
        let v = Arc::new(f.verifier);
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let (v, key) = (v.clone(), k.key.clone());
                tokio::spawn(async move { v.verify(&key).await.map(|p| Arc::as_ptr(&p) as usize) })
            })
            .collect();
        let mut ptrs = std::collections::HashSet::new();
        for t in tasks {
            ptrs.insert(t.await.unwrap().unwrap());
        }
        assert_eq!(ptrs.len(), 1, "all 32 callers got the principal of one verification");

        assert_eq!(f.accounts.get_key(f.user, k.meta.id).await.unwrap().last_used_at, None);
        assert_eq!(v.flush_last_used().await.unwrap(), 1);
        assert_eq!(
            f.accounts.get_key(f.user, k.meta.id).await.unwrap().last_used_at,
            Some(f.clock.now())
        );
        assert_eq!(v.flush_last_used().await.unwrap(), 0, "nothing new to write");
        // A use within a minute of the last one written waits; a minute later it is written.
        let first_use = f.clock.now();
        f.clock.advance(time::Duration::seconds(59));
        v.verify(&k.key).await.unwrap();
        assert_eq!(v.flush_last_used().await.unwrap(), 0, "within the minute");
        assert_eq!(
            f.accounts.get_key(f.user, k.meta.id).await.unwrap().last_used_at,
            Some(first_use)
        );
        f.clock.advance(time::Duration::seconds(1));
        v.verify(&k.key).await.unwrap();
        assert_eq!(v.flush_last_used().await.unwrap(), 1);
        assert_eq!(
            f.accounts.get_key(f.user, k.meta.id).await.unwrap().last_used_at,
            Some(f.clock.now())
        );

        // A use followed by an invalidation (rotation, revocation) before the flush is kept.
        f.clock.advance(time::Duration::seconds(5));
        v.verify(&k.key).await.unwrap();
        v.invalidate_key(k.meta.id);
        assert_eq!(v.cached_entries(), 0);
        assert_eq!(v.flush_last_used().await.unwrap(), 1);
        assert_eq!(
            f.accounts.get_key(f.user, k.meta.id).await.unwrap().last_used_at,
            Some(f.clock.now())
        );
    }

    #[tokio::test]
    async fn an_expired_entry_is_looked_up_again_without_bcrypt_unless_the_hash_changed() {
        let f = fixture(Duration::from_mins(5)).await;
        let v = &f.verifier;
        let k =
            f.accounts.create_key(f.user, NewKey::named("k", vec![Scope::Models])).await.unwrap();
        let first = v.verify(&k.key).await.unwrap();
        assert_eq!(v.bcrypt_runs(), 1);
        // Past the TTL: the request is served from the entry while the record is read again in
        // the background (a new principal), without bcrypt.
        f.clock.advance(time::Duration::seconds(31));
        let stale = v.verify(&k.key).await.unwrap();
        assert!(Arc::ptr_eq(&first, &stale), "no request waits for the refresh");
        let again = after_refresh(v, &k.key, &stale).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &again), "the entry was refreshed from the store");
        assert_eq!(v.bcrypt_runs(), 1);
        // What changed in the record meanwhile is seen at the refresh.
        let off = crate::KeyUpdate { is_active: Some(false), ..Default::default() };
        f.accounts.update_key(f.user, k.meta.id, off).await.unwrap();
        f.clock.advance(time::Duration::seconds(31));
        let stale = v.verify(&k.key).await.unwrap();
        assert_eq!(after_refresh(v, &k.key, &stale).await.unwrap_err(), VerifyError::Inactive);
        let on = crate::KeyUpdate { is_active: Some(true), ..Default::default() };
        f.accounts.update_key(f.user, k.meta.id, on).await.unwrap();
        v.invalidate_key(k.meta.id);
        assert!(v.verify(&k.key).await.is_ok());
        assert_eq!(v.bcrypt_runs(), 2, "an invalidated entry is verified in full");
        // A rotation moves the old hash to the previous slot: the old bearer's entry refreshes
        // against it without bcrypt while the grace lasts; the new bearer needs one bcrypt.
        let new = f.accounts.rotate_key(f.user, k.meta.id).await.unwrap();
        f.clock.advance(time::Duration::seconds(31));
        let stale = v.verify(&k.key).await.unwrap();
        assert!(after_refresh(v, &k.key, &stale).await.is_ok(), "the old secret, in its grace");
        assert!(v.verify(&new.key).await.is_ok());
        assert_eq!(v.bcrypt_runs(), 3);
        f.clock.advance(time::Duration::seconds(31));
        let (old_stale, new_stale) = (v.verify(&k.key).await, v.verify(&new.key).await);
        assert!(after_refresh(v, &k.key, &old_stale.unwrap()).await.is_ok());
        assert!(after_refresh(v, &new.key, &new_stale.unwrap()).await.is_ok());
        assert_eq!(v.bcrypt_runs(), 3);
        // Past the grace period the old bearer is refused (its hash is gone: checked in full).
        f.clock.advance(time::Duration::minutes(5));
        assert_eq!(v.verify(&k.key).await.unwrap_err(), VerifyError::Unknown);
        // A wrong secret for the same prefix never rides on another bearer's entry.
        let wrong = format!("{}_{}", k.meta.key_prefix, apikey::generate_secret().unwrap());
        assert_eq!(v.verify(&wrong).await.unwrap_err(), VerifyError::Unknown);
        assert_eq!(v.bcrypt_runs(), 5);
    }

    /// After invalidations may have been missed (the bus reconnected), every key is looked up
    /// again at its next use, before it is served: a key revoked meanwhile is refused at once,
    /// and a key still valid costs no bcrypt.
    #[tokio::test]
    async fn after_expire_all_each_key_is_looked_up_again_before_use_without_bcrypt() {
        let f = fixture(Duration::from_mins(5)).await;
        let v = &f.verifier;
        let keep =
            f.accounts.create_key(f.user, NewKey::named("a", vec![Scope::Models])).await.unwrap();
        let lose =
            f.accounts.create_key(f.user, NewKey::named("b", vec![Scope::Models])).await.unwrap();
        let first = v.verify(&keep.key).await.unwrap();
        v.verify(&lose.key).await.unwrap();
        assert_eq!(v.bcrypt_runs(), 2);
        // Revoked with no invalidation heard (this fixture's accounts tell no verifier).
        f.accounts.revoke_key(f.user, lose.meta.id).await.unwrap();
        assert!(v.verify(&lose.key).await.is_ok(), "the entry is trusted until told otherwise");
        v.expire_all();
        assert_eq!(v.verify(&lose.key).await.unwrap_err(), VerifyError::Revoked);
        let again = v.verify(&keep.key).await.unwrap();
        assert!(!Arc::ptr_eq(&first, &again), "read again from the store");
        assert_eq!(v.bcrypt_runs(), 2, "no bcrypt for either");
        assert_eq!(v.cached_entries(), 2);
    }

    /// While the bus is subscribed, an entry read after the subscription was made is trusted
    /// for `ttl_with_bus` (5 min) instead of `ttl` (30 s); from the moment the subscription is
    /// lost every entry is trusted for its `ttl` only, so a change the bus missed is seen
    /// within `ttl` of the record's read, as with no bus at all.
    #[tokio::test]
    async fn while_the_bus_is_subscribed_keys_are_trusted_longer_and_not_once_it_is_lost() {
        let f = fixture(Duration::from_mins(5)).await;
        let v = &f.verifier;
        let lose =
            f.accounts.create_key(f.user, NewKey::named("a", vec![Scope::Models])).await.unwrap();
        let keep =
            f.accounts.create_key(f.user, NewKey::named("b", vec![Scope::Models])).await.unwrap();
        v.bus_subscribed();
        f.clock.advance(time::Duration::seconds(1));
        let first = v.verify(&lose.key).await.unwrap();
        let kept = v.verify(&keep.key).await.unwrap();
        // Revoked with no invalidation heard (this fixture's accounts tell no verifier).
        f.accounts.revoke_key(f.user, lose.meta.id).await.unwrap();
        f.clock.advance(time::Duration::seconds(40));
        for _ in 0..3 {
            let again = v.verify(&lose.key).await.unwrap();
            assert!(Arc::ptr_eq(&first, &again), "past `ttl`, still trusted: no record read");
        }
        // The subscription is lost: past its `ttl`, the entry is read again.
        v.bus_lost();
        let stale = v.verify(&lose.key).await.unwrap();
        assert_eq!(after_refresh(v, &lose.key, &stale).await.unwrap_err(), VerifyError::Revoked);
        // Subscribed again: read again at its next use (it may have missed changes), then
        // trusted until `ttl_with_bus`, less its spread of up to a fifth, and read again after.
        v.bus_subscribed();
        f.clock.advance(time::Duration::seconds(1));
        let fresh = v.verify(&keep.key).await.unwrap();
        assert!(!Arc::ptr_eq(&kept, &fresh), "read again after subscribing");
        f.clock.advance(time::Duration::minutes(3) + time::Duration::seconds(59));
        assert!(Arc::ptr_eq(&fresh, &v.verify(&keep.key).await.unwrap()));
        f.clock.advance(time::Duration::minutes(1) + time::Duration::seconds(2));
        let stale = v.verify(&keep.key).await.unwrap();
        let refreshed = after_refresh(v, &keep.key, &stale).await.unwrap();
        assert!(!Arc::ptr_eq(&fresh, &refreshed), "read again past `ttl_with_bus`");
        assert_eq!(v.bcrypt_runs(), 2, "no bcrypt for any of it");
    }

    /// Calls `verify` until the background refresh an expired entry started has landed (the
    /// answer is no longer `stale`); bounded by turns of the runtime, not by time.
    async fn after_refresh(
        v: &KeyVerifier,
        key: &str,
        stale: &Arc<Principal>,
    ) -> Result<Arc<Principal>, VerifyError> {
        for _ in 0..1000 {
            tokio::task::yield_now().await;
            match v.verify(key).await {
                Ok(p) if Arc::ptr_eq(&p, stale) => {}
                other => return other,
            }
        }
        panic!("the background refresh never landed")
    }

    #[tokio::test]
    async fn while_the_store_is_down_a_verified_key_works_for_its_grace_and_no_longer() {
        use crate::{KeyStore as _, UserStore as _};
        let store = Arc::new(InMemoryAuthStore::default());
        let accounts = Accounts::new(
            AuthStores::from(store.clone()),
            b"s",
            AccountsConfig { password_cost: 4, key_cost: 4, ..AccountsConfig::default() },
        );
        let user = accounts.signup("d@example.com", "password-1", None).await.unwrap().id;
        let k = accounts.create_key(user, NewKey::named("k", vec![Scope::Models])).await.unwrap();
        let record = store.find_key_by_prefix(&k.meta.key_prefix).await.unwrap().unwrap();
        let owner = store.find_user_by_id(user).await.unwrap().unwrap();
        // Stores that answer from those records, or fail while `down`.
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut keys = crate::ports::MockKeyStore::new();
        let d = down.clone();
        keys.expect_find_key_by_prefix().returning(move |_| {
            if d.load(Ordering::Relaxed) {
                Err(crate::AuthError::Conflict("simulated outage"))
            } else {
                Ok(Some(record.clone()))
            }
        });
        let mut users = crate::ports::MockUserStore::new();
        users.expect_find_user_by_id().returning(move |_| Ok(Some(owner.clone())));
        let clock = TestClock::at(time::macros::datetime!(2026-03-01 12:00 UTC));
        let v = KeyVerifier::new(
            Arc::new(keys),
            Arc::new(users),
            b"k",
            Arc::new(clock.clone()),
            VerifierConfig { bcrypt_cost: 4, ..VerifierConfig::default() },
        );
        let first = v.verify(&k.key).await.unwrap();
        down.store(true, Ordering::Relaxed);
        // Past the TTL, the database gone: served from the entry, the refresh failing behind.
        clock.advance(time::Duration::seconds(31));
        for _ in 0..100 {
            let p = v.verify(&k.key).await.unwrap();
            assert!(Arc::ptr_eq(&p, &first));
            tokio::task::yield_now().await;
        }
        clock.advance(time::Duration::minutes(9));
        assert!(v.verify(&k.key).await.is_ok(), "still within the ten minutes of grace");
        // Past the grace the database must confirm the key, and it cannot.
        clock.advance(time::Duration::minutes(2));
        assert_eq!(v.verify(&k.key).await.unwrap_err(), VerifyError::Unavailable);
        // Back: confirmed without bcrypt (the record still holds the hash it matched).
        down.store(false, Ordering::Relaxed);
        assert!(v.verify(&k.key).await.is_ok());
        assert_eq!(v.bcrypt_runs(), 1);
    }

    #[tokio::test]
    async fn a_failing_store_never_makes_a_key_valid() {
        let mut keys = crate::ports::MockKeyStore::new();
        keys.expect_find_key_by_prefix()
            .returning(|_| Err(crate::AuthError::Conflict("simulated outage")));
        let users = crate::ports::MockUserStore::new();
        let v = KeyVerifier::new(
            Arc::new(keys),
            Arc::new(users),
            b"k",
            Arc::new(gateway_core::SystemClock),
            VerifierConfig { bcrypt_cost: 4, ..VerifierConfig::default() },
        );
        let key = apikey::generate().unwrap().full();
        assert_eq!(v.verify(&key).await.unwrap_err(), VerifyError::Unavailable);
        assert_eq!(v.cached_entries(), 0, "an outage is not cached as a refusal");
    }
}
