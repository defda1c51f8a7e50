//! Failed-login throttling, per email and per client address: after a few failures each attempt
//! is slowed down; after more, the email or address is refused for a while.
//!
//! Failures are counted in this instance's memory and, when a [`SharedFailures`] is given (the
//! gateway's Redis), there too, so ten failures spread over any number of instances lock the
//! email on all of them. The shared store sees keys only as keyed hashes (no email or address
//! in Redis). While it fails, each instance goes on with its own counts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use gateway_core::Clock;

use crate::token::KeyedHasher;

/// Throttling policy.
#[derive(Clone, Debug)]
pub struct ThrottleConfig {
    /// Failures counted within this window.
    pub window: Duration,
    /// Failures after which every attempt is delayed.
    pub slow_after: u32,
    /// Failures of one email after which it is refused until the window ends.
    pub lock_after_per_email: u32,
    /// Failures from one address after which it is refused (higher: addresses are shared).
    pub lock_after_per_ip: u32,
    /// Most entries kept; the oldest windows are dropped first.
    pub max_entries: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_mins(15),
            slow_after: 3,
            lock_after_per_email: 10,
            lock_after_per_ip: 50,
            max_entries: 100_000,
        }
    }
}

/// What to do with a login attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead, after waiting this long (zero when there were few failures).
    Proceed { delay: Duration },
    /// Refuse with 429; retry after this many seconds.
    Refuse { retry_after_secs: u64 },
}

/// A window of failed logins: how many, and when the first of them came.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failures {
    pub count: u32,
    pub since_ms: i64,
}

/// Failed logins counted where every instance sees them. Keys are opaque (`e:` or `i:` and a
/// keyed hash); a key's window starts at its first failure and ends `window_ms` later.
#[async_trait]
pub trait SharedFailures: Send + Sync {
    /// The live window of each key, in order (`None`: no failure within its window).
    async fn read(&self, keys: &[String], now_ms: i64) -> Result<Vec<Option<Failures>>, String>;
    /// One more failure for each key.
    async fn add(&self, keys: &[String], now_ms: i64, window_ms: i64) -> Result<(), String>;
    /// Forgets a key's failures.
    async fn clear(&self, key: &str) -> Result<(), String>;
}

/// Counts failed logins in memory and, when given one, in a [`SharedFailures`].
pub struct LoginThrottle {
    config: ThrottleConfig,
    clock: Arc<dyn Clock>,
    entries: Mutex<HashMap<String, Failures>>,
    shared: Option<(Arc<dyn SharedFailures>, KeyedHasher)>,
}

impl std::fmt::Debug for LoginThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginThrottle")
            .field("config", &self.config)
            .field("shared", &self.shared.is_some())
            .finish_non_exhaustive()
    }
}

impl LoginThrottle {
    pub fn new(config: ThrottleConfig, clock: Arc<dyn Clock>) -> Self {
        Self { config, clock, entries: Mutex::default(), shared: None }
    }

    /// Counts in `shared` too, under keys hashed with `hasher` (the same secret on every
    /// instance, so they agree on the keys).
    #[must_use]
    pub fn with_shared(mut self, shared: Arc<dyn SharedFailures>, hasher: KeyedHasher) -> Self {
        self.shared = Some((shared, hasher));
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Failures>> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn window_ms(&self) -> i64 {
        self.config.window.as_millis() as i64
    }

    fn live(&self, entries: &HashMap<String, Failures>, key: &str, now: i64) -> Option<Failures> {
        entries.get(key).copied().filter(|e| now - e.since_ms < self.window_ms())
    }

    /// The email's and the address's keys in memory.
    fn keys(email: &str, ip: &str) -> [String; 2] {
        [format!("e:{email}"), format!("i:{ip}")]
    }

    /// A key as the shared store sees it: its kind and a keyed hash.
    fn shared_key(hasher: &KeyedHasher, key: &str) -> String {
        let digest = hasher.hash(key.as_bytes());
        let mut out = String::with_capacity(34);
        out.push_str(&key[..2]);
        for b in &digest[..16] {
            use std::fmt::Write;
            let _ = write!(out, "{b:02x}");
        }
        out
    }

    /// Decides on an attempt for `email` from `ip`.
    pub async fn admit(&self, email: &str, ip: &str) -> Admission {
        let keys = Self::keys(email, ip);
        self.decide(&keys, &[self.config.lock_after_per_email, self.config.lock_after_per_ip]).await
    }

    /// Decides on an attempt that names no email (a password-reset token) from `ip`: the
    /// address's count only.
    pub async fn admit_address(&self, ip: &str) -> Admission {
        self.decide(&[format!("i:{ip}")], &[self.config.lock_after_per_ip]).await
    }

    /// The live windows of `keys` (in memory, and the shared store's when it knows more), and
    /// what they mean for an attempt: refused at `limits`, slowed after `slow_after`.
    async fn decide(&self, keys: &[String], limits: &[u32]) -> Admission {
        let now = self.clock.now_unix_ms();
        let mut windows: Vec<Option<Failures>> = {
            let entries = self.lock();
            keys.iter().map(|k| self.live(&entries, k, now)).collect()
        };
        if let Some((shared, hasher)) = &self.shared {
            let hashed: Vec<String> = keys.iter().map(|k| Self::shared_key(hasher, k)).collect();
            match shared.read(&hashed, now).await {
                Ok(seen) => {
                    for (mine, theirs) in windows.iter_mut().zip(seen) {
                        if theirs.is_some_and(|t| mine.is_none_or(|m| t.count > m.count)) {
                            *mine = theirs;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "shared login throttle unreachable; counting on this instance only");
                }
            }
        }
        for (entry, limit) in windows.iter().zip(limits) {
            if let Some(e) = entry.filter(|e| e.count >= *limit) {
                let remaining_ms = e.since_ms + self.window_ms() - now;
                return Admission::Refuse {
                    retry_after_secs: (remaining_ms.max(0) as u64).div_ceil(1000).max(1),
                };
            }
        }
        let failures = windows.iter().map(|w| w.map_or(0, |e| e.count)).max().unwrap_or(0);
        let delay = if failures < self.config.slow_after {
            Duration::ZERO
        } else {
            // 250 ms, 500 ms, 1 s, then 2 s at most.
            Duration::from_millis(250 << (failures - self.config.slow_after).min(3))
        };
        Admission::Proceed { delay }
    }

    /// Records a failed attempt.
    pub async fn failed(&self, email: &str, ip: &str) {
        self.count(&Self::keys(email, ip)).await;
    }

    /// Records a failed attempt that names no email (a wrong reset token) from `ip`.
    pub async fn failed_address(&self, ip: &str) {
        self.count(&[format!("i:{ip}")]).await;
    }

    async fn count(&self, keys: &[String]) {
        let now = self.clock.now_unix_ms();
        let window = self.window_ms();
        {
            let mut entries = self.lock();
            if entries.len() >= self.config.max_entries {
                entries.retain(|_, e| now - e.since_ms < window);
            }
            if entries.len() >= self.config.max_entries {
                // Still full of live windows: drop one at random rather than grow without bound.
                if let Some(k) = entries.keys().next().cloned() {
                    entries.remove(&k);
                }
            }
            for key in keys {
                let e = entries.entry(key.clone()).or_insert(Failures { count: 0, since_ms: now });
                if now - e.since_ms >= window {
                    *e = Failures { count: 0, since_ms: now };
                }
                e.count += 1;
            }
        }
        if let Some((shared, hasher)) = &self.shared {
            let hashed: Vec<String> = keys.iter().map(|k| Self::shared_key(hasher, k)).collect();
            if let Err(e) = shared.add(&hashed, now, window).await {
                tracing::warn!(error = %e, "could not count a failed login on the shared throttle");
            }
        }
    }

    /// A successful login clears the email's failures (the address keeps its count).
    pub async fn succeeded(&self, email: &str) {
        let key = format!("e:{email}");
        self.lock().remove(&key);
        if let Some((shared, hasher)) = &self.shared
            && let Err(e) = shared.clear(&Self::shared_key(hasher, &key)).await
        {
            tracing::warn!(error = %e, "could not clear an email on the shared throttle");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::TestClock;

    fn throttle() -> (LoginThrottle, TestClock) {
        let clock = TestClock::at(time::macros::datetime!(2026-01-01 00:00 UTC));
        (LoginThrottle::new(ThrottleConfig::default(), Arc::new(clock.clone())), clock)
    }

    #[tokio::test]
    async fn failures_slow_then_refuse_then_expire() {
        let (t, clock) = throttle();
        for _ in 0..3 {
            assert_eq!(
                t.admit("a@x.co", "1.1.1.1").await,
                Admission::Proceed { delay: Duration::ZERO }
            );
            t.failed("a@x.co", "1.1.1.1").await;
        }
        assert_eq!(
            t.admit("a@x.co", "1.1.1.1").await,
            Admission::Proceed { delay: Duration::from_millis(250) }
        );
        for _ in 3..10 {
            t.failed("a@x.co", "1.1.1.1").await;
        }
        let Admission::Refuse { retry_after_secs } = t.admit("a@x.co", "2.2.2.2").await else {
            panic!("ten failures must lock the email, from any address");
        };
        assert_eq!(retry_after_secs, 15 * 60);
        clock.advance(time::Duration::minutes(10));
        assert_eq!(
            t.admit("a@x.co", "2.2.2.2").await,
            Admission::Refuse { retry_after_secs: 5 * 60 }
        );
        clock.advance(time::Duration::minutes(5));
        assert_eq!(
            t.admit("a@x.co", "2.2.2.2").await,
            Admission::Proceed { delay: Duration::ZERO }
        );
    }

    #[tokio::test]
    async fn one_address_trying_many_emails_is_refused_too() {
        let (t, _) = throttle();
        for i in 0..50 {
            t.failed(&format!("user{i}@x.co"), "6.6.6.6").await;
        }
        assert!(matches!(t.admit("fresh@x.co", "6.6.6.6").await, Admission::Refuse { .. }));
        assert_eq!(
            t.admit("fresh@x.co", "7.7.7.7").await,
            Admission::Proceed { delay: Duration::ZERO }
        );
    }

    #[tokio::test]
    async fn success_clears_the_email() {
        let (t, _) = throttle();
        for _ in 0..5 {
            t.failed("a@x.co", "1.1.1.1").await;
        }
        t.succeeded("a@x.co").await;
        assert_eq!(
            t.admit("a@x.co", "9.9.9.9").await,
            Admission::Proceed { delay: Duration::ZERO }
        );
    }

    /// A shared store in memory, as two instances would see one Redis; or a broken one.
    #[derive(Default)]
    struct Shared {
        keys: Mutex<HashMap<String, (u32, i64)>>,
        broken: bool,
    }

    #[async_trait]
    impl SharedFailures for Shared {
        async fn read(
            &self,
            keys: &[String],
            now_ms: i64,
        ) -> Result<Vec<Option<Failures>>, String> {
            if self.broken {
                return Err("down".into());
            }
            let map = self.keys.lock().unwrap();
            Ok(keys
                .iter()
                .map(|k| {
                    map.get(k).filter(|(_, until)| *until > now_ms).map(|(count, until)| Failures {
                        count: *count,
                        since_ms: until - 15 * 60_000,
                    })
                })
                .collect())
        }
        async fn add(&self, keys: &[String], now_ms: i64, window_ms: i64) -> Result<(), String> {
            if self.broken {
                return Err("down".into());
            }
            let mut map = self.keys.lock().unwrap();
            for k in keys {
                assert!(!k.contains('@') && !k.contains("1.1.1.1"), "no email or address in {k}");
                let e = map.entry(k.clone()).or_insert((0, now_ms + window_ms));
                if e.1 <= now_ms {
                    *e = (0, now_ms + window_ms);
                }
                e.0 += 1;
            }
            Ok(())
        }
        async fn clear(&self, key: &str) -> Result<(), String> {
            self.keys.lock().unwrap().remove(key);
            Ok(())
        }
    }

    fn pair(shared: &Arc<Shared>) -> (LoginThrottle, LoginThrottle) {
        let clock: Arc<dyn Clock> =
            Arc::new(TestClock::at(time::macros::datetime!(2026-01-01 00:00 UTC)));
        let one = || {
            LoginThrottle::new(ThrottleConfig::default(), clock.clone())
                .with_shared(shared.clone(), KeyedHasher::new(b"secret"))
        };
        (one(), one())
    }

    #[tokio::test]
    async fn failures_on_two_instances_lock_the_email_on_both() {
        let (a, b) = pair(&Arc::default());
        for i in 0..10 {
            let t = if i % 2 == 0 { &a } else { &b };
            t.failed("a@x.co", "1.1.1.1").await;
        }
        for t in [&a, &b] {
            assert!(matches!(t.admit("a@x.co", "2.2.2.2").await, Admission::Refuse { .. }));
        }
        b.succeeded("a@x.co").await;
        assert!(
            matches!(a.admit("a@x.co", "2.2.2.2").await, Admission::Proceed { .. }),
            "a success on one instance clears the email on the shared store"
        );
    }

    #[tokio::test]
    async fn a_broken_shared_store_leaves_each_instance_its_own_count() {
        let (a, b) = pair(&Arc::new(Shared { broken: true, ..Shared::default() }));
        for _ in 0..10 {
            a.failed("a@x.co", "1.1.1.1").await;
        }
        assert!(matches!(a.admit("a@x.co", "2.2.2.2").await, Admission::Refuse { .. }));
        assert_eq!(
            b.admit("a@x.co", "2.2.2.2").await,
            Admission::Proceed { delay: Duration::ZERO }
        );
    }
}
