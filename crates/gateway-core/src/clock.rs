//! Time as a port, so windows, expiries and partitions can be tested without sleeping.

use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use time::{Duration, OffsetDateTime};

/// A source of the current UTC time.
pub trait Clock: Send + Sync + Debug {
    fn now(&self) -> OffsetDateTime;

    /// Milliseconds since the Unix epoch.
    fn now_unix_ms(&self) -> i64 {
        (self.now().unix_timestamp_nanos() / 1_000_000) as i64
    }
}

/// The real clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Clone, Debug)]
pub struct TestClock {
    unix_ms: Arc<AtomicI64>,
}

impl TestClock {
    pub fn at(t: OffsetDateTime) -> Self {
        Self { unix_ms: Arc::new(AtomicI64::new((t.unix_timestamp_nanos() / 1_000_000) as i64)) }
    }

    pub fn advance(&self, by: Duration) {
        self.unix_ms.fetch_add(by.whole_milliseconds() as i64, Ordering::SeqCst);
    }

    pub fn set(&self, t: OffsetDateTime) {
        self.unix_ms.store((t.unix_timestamp_nanos() / 1_000_000) as i64, Ordering::SeqCst);
    }
}

impl Clock for TestClock {
    fn now(&self) -> OffsetDateTime {
        let ms = self.unix_ms.load(Ordering::SeqCst);
        OffsetDateTime::UNIX_EPOCH + Duration::milliseconds(ms)
    }

    fn now_unix_ms(&self) -> i64 {
        self.unix_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn test_clock_moves_only_when_told_and_clones_share_time() {
        let clock = TestClock::at(datetime!(2026-01-31 23:59:59 UTC));
        let other = clock.clone();
        assert_eq!(clock.now(), datetime!(2026-01-31 23:59:59 UTC));
        other.advance(Duration::seconds(2));
        assert_eq!(clock.now(), datetime!(2026-02-01 00:00:01 UTC));
        assert_eq!(clock.now_unix_ms(), datetime!(2026-02-01 00:00:01 UTC).unix_timestamp() * 1000);
    }
}
