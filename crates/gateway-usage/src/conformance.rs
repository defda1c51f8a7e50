//! The contract of every usage store adapter (in memory here; Postgres and SQLite in
//! `gateway-store`): writes are idempotent on `request_id`, the log pages newest first with
//! ties broken by request id, filters hold, and statistics (read from the daily rollup the
//! store keeps as it writes) agree with the reference ([`crate::rollup`] over the records).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support

use gateway_core::UserId;
use time::{Duration, OffsetDateTime};

use crate::query::{GroupBy, LogQuery, StatsQuery, StatusFilter};
use crate::{UsageQueries, UsageRecord, UsageStore};

/// Every record of `user`, newest first, read page by page.
async fn all_of(q: &dyn UsageQueries, user: UserId, limit: u32) -> Vec<UsageRecord> {
    let mut query = LogQuery {
        user_id: user,
        before: None,
        limit,
        model: None,
        key_id: None,
        status: None,
        retained_at: None,
    };
    let mut seen = Vec::new();
    loop {
        let page = q.logs(&query).await.unwrap();
        if page.is_empty() {
            return seen;
        }
        query.before = page.last().map(|r| (r.created_at, r.request_id));
        seen.extend(page);
    }
}

pub async fn usage_store_contract(store: &dyn UsageStore, queries: &dyn UsageQueries) {
    // Inserts are idempotent: a retried batch, partly new, adds only what is new.
    let user = UserId::new();
    let base = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap() - Duration::hours(1);
    let records: Vec<UsageRecord> = (0..300i64)
        .map(|i| UsageRecord {
            user_id: user,
            created_at: base + Duration::seconds(i),
            ..UsageRecord::example()
        })
        .collect();
    store.insert_batch(&records).await.unwrap();
    let mut retry = records[..10].to_vec();
    retry.push(UsageRecord { user_id: user, created_at: base, ..UsageRecord::example() });
    store.insert_batch(&retry).await.unwrap();
    store.insert_batch(&records[..5]).await.unwrap();
    let stored = all_of(queries, user, 100).await;
    assert_eq!(stored.len(), 301, "each record once");
    let today = base.date();
    let days = |from: time::Date, n: i64| (from, from + Duration::days(n));
    let (from, to) = days(today, 2);
    let counted = queries
        .stats(&StatsQuery { user_id: user, from, to, group_by: GroupBy::Model })
        .await
        .unwrap();
    assert_eq!(
        counted.iter().map(|s| s.requests).sum::<u64>(),
        301,
        "the rollup counts each record once, however often its batch was retried"
    );
    let first = stored.iter().find(|r| r.request_id == records[0].request_id).unwrap();
    assert_eq!(first, &records[0], "a record reads back as written");

    // The log: newest first, every record once, none of another user, filters.
    let user = UserId::new();
    let mut records = Vec::new();
    for i in 0..25i64 {
        let mut r = UsageRecord::example();
        r.user_id = user;
        // Several records share a timestamp: the cursor must break ties by request id.
        r.created_at = base + Duration::seconds(i / 3);
        r.model = if i % 2 == 0 { "gpt-4".into() } else { "gpt-3.5-turbo".into() };
        r.is_error = i % 5 == 0;
        r.status_code = if r.is_error { 503 } else { 200 };
        records.push(r);
    }
    records.push(UsageRecord { created_at: base, ..UsageRecord::example() });
    store.insert_batch(&records).await.unwrap();
    let seen = all_of(queries, user, 10).await;
    assert_eq!(seen.len(), 25, "every record of the user once, none of others");
    assert!(
        seen.windows(2)
            .all(|w| (w[0].created_at, w[0].request_id) > (w[1].created_at, w[1].request_id)),
        "newest first"
    );
    let q = LogQuery {
        user_id: user,
        before: None,
        limit: 100,
        model: None,
        key_id: None,
        status: None,
        retained_at: None,
    };
    let errors =
        queries.logs(&LogQuery { status: Some(StatusFilter::Error), ..q.clone() }).await.unwrap();
    assert_eq!(errors.len(), 5);
    let code = queries
        .logs(&LogQuery { status: Some(StatusFilter::Code(503)), ..q.clone() })
        .await
        .unwrap();
    assert_eq!(code.len(), 5);
    let gpt4 = queries.logs(&LogQuery { model: Some("gpt-4".into()), ..q.clone() }).await.unwrap();
    assert_eq!(gpt4.len(), 13);
    let key = records[0].api_key_id;
    let one_key = queries.logs(&LogQuery { key_id: key, ..q.clone() }).await.unwrap();
    assert_eq!(one_key.len(), 1);

    // Statistics: every grouping agrees with the reference aggregation.
    let stats = queries
        .stats(&StatsQuery { user_id: user, from, to, group_by: GroupBy::Model })
        .await
        .unwrap();
    assert_eq!(
        stats.iter().map(|s| (s.group.as_str(), s.requests)).collect::<Vec<_>>(),
        vec![("gpt-3.5-turbo", 12), ("gpt-4", 13)]
    );
    assert_eq!(stats.iter().map(|s| s.errors).sum::<u64>(), 5);
    assert_eq!(stats[1].total_tokens, 13 * 8);
    let mine = crate::rollup::rollup(records.iter().filter(|r| r.user_id == user));
    for group_by in [GroupBy::Day, GroupBy::Model, GroupBy::Key] {
        let got = queries.stats(&StatsQuery { user_id: user, from, to, group_by }).await.unwrap();
        let want = crate::rollup::stats(&mine, group_by);
        assert_eq!(got.len(), want.len(), "{group_by:?}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(
                (&g.group, g.requests, g.total_tokens, g.errors, g.p95_latency_ms),
                (&w.group, w.requests, w.total_tokens, w.errors, w.p95_latency_ms),
                "{group_by:?}"
            );
            assert!((g.avg_latency_ms - w.avg_latency_ms).abs() < 1e-9);
        }
    }
    // A range that ends before the records holds none of them.
    let (from, to) = days(today - Duration::days(2), 2);
    let before = queries
        .stats(&StatsQuery { user_id: user, from, to, group_by: GroupBy::Day })
        .await
        .unwrap();
    assert!(before.is_empty());

    // Platform totals: every user's records in the range, none outside it.
    let later = (today + Duration::days(3)).midnight().assume_utc() + Duration::hours(1);
    let (ada, bob) = (UserId::new(), UserId::new());
    let records: Vec<UsageRecord> = (0..7i64)
        .map(|i| UsageRecord {
            user_id: if i < 4 { ada } else { bob },
            created_at: later + Duration::minutes(i),
            is_error: i == 6,
            cost_micros: 1_000 + i,
            ..UsageRecord::example()
        })
        .collect();
    store.insert_batch(&records).await.unwrap();
    let (from, to) = days(later.date(), 1);
    let totals = queries.platform(from, to).await.unwrap();
    let tokens: u64 = records.iter().map(|r| r.total_tokens).sum();
    assert_eq!(
        (totals.requests, totals.tokens, totals.errors, totals.cost_micros, totals.users),
        (7, tokens, 1, 7_021, 2)
    );
    let none = queries.platform(from - Duration::days(1), from).await.unwrap();
    assert_eq!(none, crate::PlatformTotals::default());
}

#[cfg(test)]
#[tokio::test]
async fn the_in_memory_store_meets_the_contract() {
    let store = crate::InMemoryUsageStore::default();
    usage_store_contract(&store, &store).await;
}
