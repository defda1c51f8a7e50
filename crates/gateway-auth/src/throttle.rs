//! Failed-login throttling, per email and per client address: after a few failures each attempt
//! is slowed down; after more, the email or address is refused for a while.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_core::Clock;

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

#[derive(Clone, Copy, Debug)]
struct Entry {
    failures: u32,
    window_start_ms: i64,
}

/// Counts failed logins in memory (per instance).
#[derive(Debug)]
pub struct LoginThrottle {
    config: ThrottleConfig,
    clock: Arc<dyn Clock>,
    entries: Mutex<HashMap<String, Entry>>,
}

impl LoginThrottle {
    pub fn new(config: ThrottleConfig, clock: Arc<dyn Clock>) -> Self {
        Self { config, clock, entries: Mutex::default() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn window_ms(&self) -> i64 {
        self.config.window.as_millis() as i64
    }

    fn live(&self, entries: &HashMap<String, Entry>, key: &str, now: i64) -> Option<Entry> {
        entries.get(key).copied().filter(|e| now - e.window_start_ms < self.window_ms())
    }

    /// Decides on an attempt for `email` from `ip`.
    pub fn admit(&self, email: &str, ip: &str) -> Admission {
        let now = self.clock.now_unix_ms();
        let entries = self.lock();
        let by_email = self.live(&entries, &format!("e:{email}"), now);
        let by_ip = self.live(&entries, &format!("i:{ip}"), now);
        for (entry, limit) in
            [(by_email, self.config.lock_after_per_email), (by_ip, self.config.lock_after_per_ip)]
        {
            if let Some(e) = entry.filter(|e| e.failures >= limit) {
                let remaining_ms = e.window_start_ms + self.window_ms() - now;
                return Admission::Refuse {
                    retry_after_secs: (remaining_ms.max(0) as u64).div_ceil(1000).max(1),
                };
            }
        }
        let failures = by_email.map_or(0, |e| e.failures).max(by_ip.map_or(0, |e| e.failures));
        let delay = if failures < self.config.slow_after {
            Duration::ZERO
        } else {
            // 250 ms, 500 ms, 1 s, then 2 s at most.
            Duration::from_millis(250 << (failures - self.config.slow_after).min(3))
        };
        Admission::Proceed { delay }
    }

    /// Records a failed attempt.
    pub fn failed(&self, email: &str, ip: &str) {
        let now = self.clock.now_unix_ms();
        let window = self.window_ms();
        let mut entries = self.lock();
        if entries.len() >= self.config.max_entries {
            entries.retain(|_, e| now - e.window_start_ms < window);
        }
        if entries.len() >= self.config.max_entries {
            // Still full of live windows: drop one at random rather than grow without bound.
            if let Some(k) = entries.keys().next().cloned() {
                entries.remove(&k);
            }
        }
        for key in [format!("e:{email}"), format!("i:{ip}")] {
            let e = entries.entry(key).or_insert(Entry { failures: 0, window_start_ms: now });
            if now - e.window_start_ms >= window {
                *e = Entry { failures: 0, window_start_ms: now };
            }
            e.failures += 1;
        }
    }

    /// A successful login clears the email's failures (the address keeps its count).
    pub fn succeeded(&self, email: &str) {
        self.lock().remove(&format!("e:{email}"));
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

    #[test]
    fn failures_slow_then_refuse_then_expire() {
        let (t, clock) = throttle();
        for _ in 0..3 {
            assert_eq!(t.admit("a@x.co", "1.1.1.1"), Admission::Proceed { delay: Duration::ZERO });
            t.failed("a@x.co", "1.1.1.1");
        }
        assert_eq!(
            t.admit("a@x.co", "1.1.1.1"),
            Admission::Proceed { delay: Duration::from_millis(250) }
        );
        for _ in 3..10 {
            t.failed("a@x.co", "1.1.1.1");
        }
        let Admission::Refuse { retry_after_secs } = t.admit("a@x.co", "2.2.2.2") else {
            panic!("ten failures must lock the email, from any address");
        };
        assert_eq!(retry_after_secs, 15 * 60);
        clock.advance(time::Duration::minutes(10));
        assert_eq!(t.admit("a@x.co", "2.2.2.2"), Admission::Refuse { retry_after_secs: 5 * 60 });
        clock.advance(time::Duration::minutes(5));
        assert_eq!(t.admit("a@x.co", "2.2.2.2"), Admission::Proceed { delay: Duration::ZERO });
    }

    #[test]
    fn one_address_trying_many_emails_is_refused_too() {
        let (t, _) = throttle();
        for i in 0..50 {
            t.failed(&format!("user{i}@x.co"), "6.6.6.6");
        }
        assert!(matches!(t.admit("fresh@x.co", "6.6.6.6"), Admission::Refuse { .. }));
        assert_eq!(t.admit("fresh@x.co", "7.7.7.7"), Admission::Proceed { delay: Duration::ZERO });
    }

    #[test]
    fn success_clears_the_email() {
        let (t, _) = throttle();
        for _ in 0..5 {
            t.failed("a@x.co", "1.1.1.1");
        }
        t.succeeded("a@x.co");
        assert_eq!(t.admit("a@x.co", "9.9.9.9"), Admission::Proceed { delay: Duration::ZERO });
    }
}
