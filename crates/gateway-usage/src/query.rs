//! Reading usage back: a user's request log (keyset pagination, newest first) and statistics
//! grouped by day, model or key.

use std::collections::BTreeMap;

use async_trait::async_trait;
use gateway_core::{ApiKeyId, RequestId, UserId};
use serde::Serialize;
use time::OffsetDateTime;

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupBy {
    Day,
    Model,
    Key,
}

/// Statistics of a user's usage in `[from, to)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsQuery {
    pub user_id: UserId,
    pub from: OffsetDateTime,
    pub to: OffsetDateTime,
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

/// The figures of one request that statistics need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsSample {
    pub created_at: OffsetDateTime,
    pub model: String,
    pub api_key_id: Option<ApiKeyId>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cost_micros: i64,
    pub is_error: bool,
    pub latency_ms: u32,
}

impl From<&UsageRecord> for StatsSample {
    fn from(r: &UsageRecord) -> Self {
        Self {
            created_at: r.created_at,
            model: r.model.clone(),
            api_key_id: r.api_key_id,
            prompt_tokens: r.prompt_tokens,
            completion_tokens: r.completion_tokens,
            total_tokens: r.total_tokens,
            cost_micros: r.cost_micros,
            is_error: r.is_error,
            latency_ms: r.latency_ms,
        }
    }
}

/// Groups samples and sums them up; groups come sorted by key.
pub fn aggregate(
    samples: impl IntoIterator<Item = StatsSample>,
    group_by: GroupBy,
) -> Vec<StatsRow> {
    let mut groups: BTreeMap<String, (StatsRow, Vec<u32>)> = BTreeMap::new();
    for s in samples {
        let key = match group_by {
            GroupBy::Day => {
                let d = s.created_at.to_offset(time::UtcOffset::UTC).date();
                format!("{:04}-{:02}-{:02}", d.year(), d.month() as u8, d.day())
            }
            GroupBy::Model => s.model.clone(),
            GroupBy::Key => s.api_key_id.map_or_else(|| "none".to_owned(), |k| k.to_string()),
        };
        let (row, latencies) = groups.entry(key.clone()).or_insert_with(|| {
            (
                StatsRow {
                    group: key,
                    requests: 0,
                    prompt_tokens: 0,
                    completion_tokens: 0,
                    total_tokens: 0,
                    cost_micros: 0,
                    errors: 0,
                    avg_latency_ms: 0.0,
                    p95_latency_ms: 0,
                },
                Vec::new(),
            )
        });
        row.requests += 1;
        row.prompt_tokens += s.prompt_tokens;
        row.completion_tokens += s.completion_tokens;
        row.total_tokens += s.total_tokens;
        row.cost_micros += s.cost_micros;
        row.errors += u64::from(s.is_error);
        latencies.push(s.latency_ms);
    }
    groups
        .into_values()
        .map(|(mut row, mut latencies)| {
            latencies.sort_unstable();
            let sum: u64 = latencies.iter().map(|&l| u64::from(l)).sum();
            row.avg_latency_ms = sum as f64 / latencies.len() as f64;
            // Nearest-rank p95.
            let rank = ((latencies.len() as f64) * 0.95).ceil() as usize;
            row.p95_latency_ms = latencies[rank.clamp(1, latencies.len()) - 1];
            row
        })
        .collect()
}

/// Reading usage back.
#[async_trait]
pub trait UsageQueries: Send + Sync {
    /// Newest first, at most `limit`.
    async fn logs(&self, q: &LogQuery) -> Result<Vec<UsageRecord>, UsageError>;
    async fn stats(&self, q: &StatsQuery) -> Result<Vec<StatsRow>, UsageError>;
    /// Every user's usage in `[from, to)`, summed.
    async fn platform(
        &self,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<PlatformTotals, UsageError>;
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
        && q.model.as_ref().is_none_or(|m| &r.model == m)
        && q.key_id.is_none_or(|k| r.api_key_id == Some(k))
        && q.status.is_none_or(|s| match s {
            StatusFilter::Success => !r.is_error,
            StatusFilter::Error => r.is_error,
            StatusFilter::Code(c) => r.status_code == c,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn sample(at: OffsetDateTime, model: &str, latency: u32, error: bool) -> StatsSample {
        StatsSample {
            created_at: at,
            model: model.into(),
            api_key_id: None,
            prompt_tokens: 2,
            completion_tokens: 3,
            total_tokens: 5,
            cost_micros: 7,
            is_error: error,
            latency_ms: latency,
        }
    }

    #[test]
    fn groups_sum_and_rank_latencies() {
        let mut samples: Vec<_> = (1..=20)
            .map(|l| sample(datetime!(2026-11-27 23:59 UTC), "a", l * 10, l == 1))
            .collect();
        samples.push(sample(datetime!(2026-11-28 00:00 UTC), "b", 5, false));
        let by_day = aggregate(samples.clone(), GroupBy::Day);
        assert_eq!(
            by_day.iter().map(|r| r.group.as_str()).collect::<Vec<_>>(),
            vec!["2026-11-27", "2026-11-28"]
        );
        let day1 = &by_day[0];
        assert_eq!(
            (day1.requests, day1.total_tokens, day1.cost_micros, day1.errors),
            (20, 100, 140, 1)
        );
        assert_eq!(day1.p95_latency_ms, 190, "nearest rank: the 19th of 20");
        assert!((day1.avg_latency_ms - 105.0).abs() < f64::EPSILON);
        let by_model = aggregate(samples, GroupBy::Model);
        assert_eq!(by_model[1].group, "b");
        assert_eq!(by_model[1].p95_latency_ms, 5);
    }
}
