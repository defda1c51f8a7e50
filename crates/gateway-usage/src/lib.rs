//! Usage records of the BluesMinds gateway: exactly one per request, written off the hot path,
//! never lost, queryable by their owner.
//!
//! - [`UsageRecord`]: what one request used and how it ended.
//! - [`UsageStore`]: the persistence port (idempotent on `request_id`), with
//!   [`InMemoryUsageStore`]; `gateway-store` implements it on Postgres and SQLite.
//! - [`UsageSink`]: where the gateway hands each request's record, without waiting.
//! - [`UsageReader`]: reading usage back under its rules (whose usage, page sizes, cursors,
//!   ranges) through the [`UsageQueries`] port.
//! - [`UsageWriter`]: the batched writer, the production sink. [`UsageWriter::record`] never
//!   waits: it puts the record on a bounded channel; a task writes batches (by size or every
//!   100 ms), retries with backoff when the database fails, and spills to an append-only file when the channel would
//!   overflow or the database stays down; the file is replayed when the database is back, and
//!   shutdown flushes everything. A record the database refuses never blocks others: a refused
//!   batch is split until the record at fault is found, which goes to a quarantine file
//!   (counted, logged once) while the rest are written. Each record is also appended to a
//!   journal file (one `write`, no `fsync`) before it is queued, so a process killed outright
//!   loses nothing held in memory: the next start replays it.
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use std::sync::Arc;
//! use gateway_usage::{InMemoryUsageStore, UsageRecord, UsageStore, UsageWriter, WriterConfig};
//!
//! let store = Arc::new(InMemoryUsageStore::default());
//! let dir = tempfile::tempdir().unwrap();
//! let writer =
//!     UsageWriter::start(store.clone(), WriterConfig::new(dir.path().join("spill.jsonl"))).unwrap();
//! writer.record(UsageRecord::example());
//! writer.shutdown().await;
//! assert_eq!(store.len(), 1);
//! # });
//! ```

#[cfg(any(test, feature = "test-util"))]
pub mod conformance;
mod journal;
mod memory;
pub mod query;
pub mod read;
mod record;
pub mod rollup;
mod writer;

pub use memory::InMemoryUsageStore;
pub use query::{
    GroupBy, LogQuery, PlatformTotals, StatsQuery, StatsRow, StatusFilter, UsageQueries,
};
pub use read::UsageReader;
pub use record::{DEFAULT_RETENTION_DAYS, UsageRecord};
pub use writer::{UsageWriter, WriterConfig, WriterStats};

use async_trait::async_trait;

/// Errors of a usage store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsageError {
    /// The store could not be reached or failed: the same records may be written later.
    #[error("usage store failed")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The store refused the data itself (a value it cannot hold, a constraint): retrying the
    /// same records fails the same way, so the writer isolates and quarantines the one at fault.
    #[error("usage store refused a record")]
    Rejected(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Takes one usage record per request without waiting; [`UsageWriter`] is the production
/// sink.
pub trait UsageSink: Send + Sync {
    fn record(&self, record: UsageRecord);
}

impl UsageSink for UsageWriter {
    fn record(&self, record: UsageRecord) {
        UsageWriter::record(self, record);
    }
}

/// Where usage records are kept.
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Inserts records; a record whose `request_id` is already stored is skipped, so a retried
    /// batch never counts twice.
    async fn insert_batch(&self, records: &[UsageRecord]) -> Result<(), UsageError>;

    /// Writes the rollup sums the store holds in memory (a store that adds a few seconds of
    /// batches up before writing them, as `gateway-store`'s Postgres adapter does) when they
    /// are due, or all of them with `now` (at shutdown), and sums batches other instances left
    /// unsummed. The writer calls it when [`UsageStore::rollup_due_in`] says. Default: the
    /// store holds nothing.
    async fn fold_rollup(&self, now: bool) -> Result<(), UsageError> {
        let _ = now;
        Ok(())
    }

    /// How long until [`UsageStore::fold_rollup`] has work to do; `None`: never.
    fn rollup_due_in(&self) -> Option<std::time::Duration> {
        None
    }
}
