//! The daily rollup: every user's usage summed per UTC day, key and model, kept by the store
//! from exactly the records it stored (in their batch's transaction, or held a few seconds and
//! written with the batches marked pending until then), so statistics, dashboards and invoices read
//! a few rows per day instead of every request. Latency percentiles come from a histogram of
//! fixed buckets kept in each row (sums of histograms are histograms).
//!
//! This module is the one definition of how records become rollup rows and rows become
//! statistics; the stores only persist and add rows up.

use std::collections::BTreeMap;

use gateway_core::{ApiKeyId, UserId};
use time::Date;

use crate::UsageRecord;
use crate::query::{GroupBy, PlatformTotals, StatsRow};

/// Upper bounds (inclusive, milliseconds) of the latency buckets: each about 25% above the
/// one before, from 1 ms to 149 s; one more bucket holds everything slower.
pub const LATENCY_BOUNDS: [u32; 51] = [
    1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 19, 24, 30, 38, 48, 60, 75, 94, 118, 148, 185, 231, 289, 361,
    451, 564, 705, 881, 1101, 1376, 1720, 2150, 2688, 3360, 4200, 5250, 6562, 8202, 10252, 12815,
    16019, 20024, 25030, 31288, 39110, 48888, 61110, 76388, 95485, 119_356, 149_195,
];

/// Buckets in a histogram: one per bound and the overflow.
pub const BUCKETS: usize = LATENCY_BOUNDS.len() + 1;

/// The bucket of a latency: the number of bounds below it.
pub fn bucket(latency_ms: u32) -> usize {
    LATENCY_BOUNDS.partition_point(|&b| b < latency_ms)
}

/// The 95th percentile (nearest rank) a histogram can tell: the upper bound of the bucket that
/// holds it, or the largest latency seen when that is lower (or the request is in the
/// overflow bucket). At most 25% above the exact figure. Zero for an empty histogram.
pub fn p95(hist: &[u64], max_ms: u32) -> u32 {
    let n: u64 = hist.iter().sum();
    if n == 0 {
        return 0;
    }
    let rank = n.saturating_mul(95).div_ceil(100).max(1);
    let mut seen = 0;
    for (i, count) in hist.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return LATENCY_BOUNDS.get(i).map_or(max_ms, |b| (*b).min(max_ms));
        }
    }
    max_ms
}

/// The sums of one user's requests on one UTC day, with one key (or none) and one model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DayRow {
    pub user_id: UserId,
    pub day: Date,
    pub api_key_id: Option<ApiKeyId>,
    pub model: String,
    pub requests: u64,
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub cost_micros: i64,
    pub latency_ms_sum: u64,
    pub latency_ms_max: u32,
    /// [`BUCKETS`] counts.
    pub latency_hist: Vec<u64>,
}

impl DayRow {
    fn empty(user_id: UserId, day: Date, api_key_id: Option<ApiKeyId>, model: String) -> Self {
        Self {
            user_id,
            day,
            api_key_id,
            model,
            requests: 0,
            errors: 0,
            prompt_tokens: 0,
            completion_tokens: 0,
            total_tokens: 0,
            cost_micros: 0,
            latency_ms_sum: 0,
            latency_ms_max: 0,
            latency_hist: vec![0; BUCKETS],
        }
    }

    /// Adds `other`'s sums (same group) to this row's.
    pub fn merge(&mut self, other: &DayRow) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.prompt_tokens += other.prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.total_tokens += other.total_tokens;
        self.cost_micros += other.cost_micros;
        self.latency_ms_sum += other.latency_ms_sum;
        self.latency_ms_max = self.latency_ms_max.max(other.latency_ms_max);
        self.latency_hist.resize(BUCKETS, 0);
        for (mine, theirs) in self.latency_hist.iter_mut().zip(&other.latency_hist) {
            *mine += theirs;
        }
    }
}

/// The records summed into rollup rows, one per (user, day, key, model), in that order.
pub fn rollup<'a>(records: impl IntoIterator<Item = &'a UsageRecord>) -> Vec<DayRow> {
    let mut rows: BTreeMap<(UserId, Date, Option<ApiKeyId>, &str), DayRow> = BTreeMap::new();
    for r in records {
        let day = r.created_at.to_offset(time::UtcOffset::UTC).date();
        let row = rows
            .entry((r.user_id, day, r.api_key_id, r.model.as_str()))
            .or_insert_with(|| DayRow::empty(r.user_id, day, r.api_key_id, r.model.clone()));
        row.requests += 1;
        row.errors += u64::from(r.is_error);
        row.prompt_tokens += r.prompt_tokens;
        row.completion_tokens += r.completion_tokens;
        row.total_tokens += r.total_tokens;
        row.cost_micros += r.cost_micros;
        row.latency_ms_sum += u64::from(r.latency_ms);
        row.latency_ms_max = row.latency_ms_max.max(r.latency_ms);
        row.latency_hist[bucket(r.latency_ms)] += 1;
    }
    rows.into_values().collect()
}

/// Rollup rows grouped by day (`YYYY-MM-DD`), model or key (its id, `none` for requests
/// without one), groups in order.
pub fn stats<'a>(rows: impl IntoIterator<Item = &'a DayRow>, group_by: GroupBy) -> Vec<StatsRow> {
    let mut groups: BTreeMap<String, DayRow> = BTreeMap::new();
    for r in rows {
        let key = match group_by {
            GroupBy::Day => r.day.to_string(),
            GroupBy::Model => r.model.clone(),
            GroupBy::Key => r.api_key_id.map_or_else(|| "none".to_owned(), |k| k.to_string()),
        };
        groups
            .entry(key)
            .or_insert_with(|| DayRow::empty(r.user_id, r.day, r.api_key_id, String::new()))
            .merge(r);
    }
    groups
        .into_iter()
        .map(|(group, g)| StatsRow {
            group,
            requests: g.requests,
            prompt_tokens: g.prompt_tokens,
            completion_tokens: g.completion_tokens,
            total_tokens: g.total_tokens,
            cost_micros: g.cost_micros,
            errors: g.errors,
            avg_latency_ms: if g.requests == 0 {
                0.0
            } else {
                g.latency_ms_sum as f64 / g.requests as f64
            },
            p95_latency_ms: p95(&g.latency_hist, g.latency_ms_max),
        })
        .collect()
}

/// Every row summed (the platform's totals); `users` counts distinct users.
pub fn totals<'a>(rows: impl IntoIterator<Item = &'a DayRow>) -> PlatformTotals {
    let mut t = PlatformTotals::default();
    let mut users = std::collections::BTreeSet::new();
    for r in rows {
        t.requests += r.requests;
        t.tokens += r.total_tokens;
        t.errors += r.errors;
        t.cost_micros += r.cost_micros;
        users.insert(r.user_id);
    }
    t.users = users.len() as u64;
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_latencies_up_to_their_bound() {
        assert_eq!((bucket(0), bucket(1), bucket(2), bucket(7), bucket(8)), (0, 0, 1, 6, 6));
        assert_eq!(bucket(149_195), 50);
        assert_eq!(bucket(149_196), 51, "the overflow bucket");
        assert!(LATENCY_BOUNDS.windows(2).all(|w| w[0] < w[1] && w[1] <= w[0] + w[0] / 4 + 1));
    }

    #[test]
    fn the_p95_is_within_a_bucket_of_the_exact_nearest_rank() {
        // 95 requests at 1..=95 ms and 5 at 5 s: the exact nearest-rank p95 is 95 ms.
        let mut hist = vec![0; BUCKETS];
        for ms in (1..=95).chain([5_000; 5]) {
            hist[bucket(ms)] += 1;
        }
        assert_eq!(p95(&hist, 5_000), 118, "the bound of the bucket holding 95 ms");
        let one = {
            let mut h = vec![0; BUCKETS];
            h[bucket(40)] += 1;
            h
        };
        assert_eq!(p95(&one, 40), 40, "never above the slowest request");
        assert_eq!(p95(&vec![0; BUCKETS], 0), 0);
        let mut slow = vec![0; BUCKETS];
        slow[BUCKETS - 1] = 3;
        assert_eq!(p95(&slow, 200_000), 200_000, "the overflow bucket reports the slowest");
    }

    #[test]
    fn rows_merge_into_the_same_statistics_as_the_records() {
        let user = UserId::new();
        let base = time::macros::datetime!(2026-12-01 23:59:00 UTC);
        let records: Vec<UsageRecord> = (0..40u32)
            .map(|i| UsageRecord {
                user_id: user,
                created_at: base + time::Duration::seconds(i64::from(i) * 5),
                model: if i % 2 == 0 { "a".into() } else { "b".into() },
                latency_ms: i * 10,
                is_error: i % 7 == 0,
                api_key_id: None,
                ..UsageRecord::example()
            })
            .collect();
        let whole = rollup(&records);
        assert_eq!(whole.len(), 4, "two days, two models");
        // The same records rolled up in two halves and merged give the same rows.
        let (a, b) = records.split_at(17);
        let mut merged = rollup(a);
        for row in rollup(b) {
            match merged.iter_mut().find(|m| (m.day, &m.model) == (row.day, &row.model)) {
                Some(m) => m.merge(&row),
                None => merged.push(row),
            }
        }
        merged.sort_by(|x, y| (x.day, &x.model).cmp(&(y.day, &y.model)));
        assert_eq!(merged, whole);
        let by_day = stats(&whole, GroupBy::Day);
        assert_eq!(
            by_day.iter().map(|r| r.group.as_str()).collect::<Vec<_>>(),
            ["2026-12-01", "2026-12-02"]
        );
        assert_eq!(by_day.iter().map(|r| r.requests).sum::<u64>(), 40);
        assert_eq!(by_day[0].requests, 12, "23:59:00 to 23:59:55");
        assert_eq!(totals(&whole).users, 1);
    }
}
