//! Reading usage back: a user's request log (keyset pagination, newest first) and statistics
//! grouped by day, model or key (from the daily rollup).

use async_trait::async_trait;
use gateway_core::{ApiKeyId, RequestId, UserId};
use serde::Serialize;
use time::{Date, OffsetDateTime};

use crate::{UsageError, UsageRecord};

/// Which requests a log lists by outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    Success,
    Error,
    Code(u16),
}

/// One page of a user's log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogQuery {
    pub user_id: UserId,
    /// Only records older than this one (the cursor of the previous page).
    pub before: Option<(OffsetDateTime, RequestId)>,
    pub limit: u32,
    pub model: Option<String>,
    pub key_id: Option<ApiKeyId>,
    pub status: Option<StatusFilter>,
    /// Only records still within their retention at this time (`created_at` plus the
    /// record's `retention_days`): what a user sees stops when its plan's retention ends,
    /// whenever its partition is dropped.
    pub retained_at: Option<OffsetDateTime>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Day,
    Model,
    Key,
}

/// Statistics of a user's usage on the UTC days `[from, to)` (whole days: they are read from
/// the daily rollup, [`crate::rollup`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsQuery {
    pub user_id: UserId,
    pub from: Date,
    pub to: Date,
    pub group_by: GroupBy,
}

/// One group of statistics.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StatsRow {
    /// The day (`YYYY-MM-DD`, UTC), the model, or the key id (`none` for requests without one).
    pub group: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cost_micros: i64,
    pub errors: u64,
    pub avg_latency_ms: f64,
    pub p95_latency_ms: u32,
}

/// Reading usage back.
#[async_trait]
pub trait UsageQueries: Send + Sync {
    /// Newest first, at most `limit`.
    async fn logs(&self, q: &LogQuery) -> Result<Vec<UsageRecord>, UsageError>;
    async fn stats(&self, q: &StatsQuery) -> Result<Vec<StatsRow>, UsageError>;
    /// Every user's usage on the UTC days `[from, to)`, summed.
    async fn platform(&self, from: Date, to: Date) -> Result<PlatformTotals, UsageError>;
}

/// Every user's usage in a range, summed (the administrators' overview).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PlatformTotals {
    pub requests: u64,
    pub tokens: u64,
    pub errors: u64,
    /// At model prices: what the upstreams cost.
    pub cost_micros: i64,
    /// Users with at least one request.
    pub users: u64,
}

/// Whether a record passes a log query's filters (for in-memory adapters and tests).
pub fn matches(r: &UsageRecord, q: &LogQuery) -> bool {
    r.user_id == q.user_id
        && q.before.is_none_or(|(t, id)| (r.created_at, r.request_id) < (t, id))
        && q.retained_at.is_none_or(|now| {
            r.created_at + time::Duration::days(i64::from(r.retention_days)) >= now
        })
        && q.model.as_ref().is_none_or(|m| &r.model == m)
        && q.key_id.is_none_or(|k| r.api_key_id == Some(k))
        && q.status.is_none_or(|s| match s {
            StatusFilter::Success => !r.is_error,
            StatusFilter::Error => r.is_error,
            StatusFilter::Code(c) => r.status_code == c,
        })
}
