//! In-memory usage store, for tests and embedding.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use gateway_core::RequestId;

use crate::{UsageError, UsageRecord, UsageStore};

/// Records in process memory, keyed by request id. Can be told to fail, to test the writer;
/// like Postgres, it refuses text holding a NUL character (the whole batch).
#[derive(Debug, Default)]
pub struct InMemoryUsageStore {
    records: Mutex<HashMap<RequestId, UsageRecord>>,
    failing: std::sync::atomic::AtomicBool,
    /// Calls to `insert_batch`, for tests of the writer.
    inserts: std::sync::atomic::AtomicU64,
}

impl InMemoryUsageStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<RequestId, UsageRecord>> {
        self.records.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub fn records(&self) -> Vec<UsageRecord> {
        let mut v: Vec<_> = self.lock().values().cloned().collect();
        v.sort_by_key(|r| r.request_id);
        v
    }

    /// While set, every insert fails (a database outage).
    pub fn set_failing(&self, failing: bool) {
        self.failing.store(failing, std::sync::atomic::Ordering::SeqCst);
    }

    /// Calls to `insert_batch` so far.
    pub fn inserts(&self) -> u64 {
        self.inserts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("simulated outage")]
struct Outage;

#[derive(Debug, thiserror::Error)]
#[error("invalid byte sequence: text cannot hold NUL (0x00)")]
struct NulInText;

/// As Postgres refuses it: `text` cannot hold a NUL character.
fn holds_nul(r: &UsageRecord) -> bool {
    [r.model.as_str(), r.endpoint.as_str(), r.error_message.as_deref().unwrap_or("")]
        .iter()
        .any(|s| s.contains('\0'))
}

#[async_trait]
impl UsageStore for InMemoryUsageStore {
    async fn insert_batch(&self, records: &[UsageRecord]) -> Result<(), UsageError> {
        self.inserts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(UsageError::Store(Box::new(Outage)));
        }
        // All or nothing, as one INSERT statement is.
        if records.iter().any(holds_nul) {
            return Err(UsageError::Rejected(Box::new(NulInText)));
        }
        let mut map = self.lock();
        for r in records {
            map.entry(r.request_id).or_insert_with(|| r.clone());
        }
        Ok(())
    }
}

#[async_trait]
impl crate::UsageQueries for InMemoryUsageStore {
    async fn logs(&self, q: &crate::LogQuery) -> Result<Vec<UsageRecord>, UsageError> {
        let mut v: Vec<_> =
            self.lock().values().filter(|r| crate::query::matches(r, q)).cloned().collect();
        v.sort_by_key(|r| std::cmp::Reverse((r.created_at, r.request_id)));
        v.truncate(q.limit as usize);
        Ok(v)
    }

    async fn stats(&self, q: &crate::StatsQuery) -> Result<Vec<crate::StatsRow>, UsageError> {
        let records = self.lock();
        let mine = records.values().filter(|r| {
            let day = r.created_at.to_offset(time::UtcOffset::UTC).date();
            r.user_id == q.user_id && day >= q.from && day < q.to
        });
        Ok(crate::rollup::stats(&crate::rollup::rollup(mine), q.group_by))
    }

    async fn platform(
        &self,
        from: time::Date,
        to: time::Date,
    ) -> Result<crate::PlatformTotals, UsageError> {
        let records = self.lock();
        let all = records.values().filter(|r| {
            let day = r.created_at.to_offset(time::UtcOffset::UTC).date();
            day >= from && day < to
        });
        Ok(crate::rollup::totals(&crate::rollup::rollup(all)))
    }
}
