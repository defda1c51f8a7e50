//! Store conformance: every test runs on SQLite and on Postgres (`TEST_DATABASE_URL`, which
//! `bash scripts/test.sh` sets; without it the tests fail saying so), each in a database of
//! its own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::type_complexity)]

use gateway_core::Tier;
use gateway_store::entity::{billing_plans, usage_logs};
use gateway_store::testing::{Backend, TestDb, backends};
use sea_orm::{ConnectionTrait, EntityTrait, Set, Statement};
use time::OffsetDateTime;
use time::macros::datetime;

const TABLES: [&str; 11] = [
    "api_keys",
    "billing_plans",
    "credit_ledger",
    "invoices",
    "litellm_servers",
    "model_prices",
    "payment_transactions",
    "rate_limit_state",
    "sessions",
    "usage_logs",
    "users",
];

async fn table_names(db: &TestDb) -> Vec<String> {
    let sql = match db.backend() {
        Backend::Sqlite => "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
        Backend::Postgres => {
            "SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition \
             ORDER BY c.relname"
        }
    };
    let conn = db.store.connection();
    let rows =
        conn.query_all_raw(Statement::from_string(conn.get_database_backend(), sql)).await.unwrap();
    rows.iter().map(|r| r.try_get::<String>("", "name").unwrap()).collect()
}

#[tokio::test]
async fn migrate_creates_every_table_seeds_plans_and_is_idempotent() {
    for backend in backends() {
        let db = TestDb::empty(backend).await;
        assert_eq!(db.store.pending_migrations().await.unwrap(), 2, "{backend:?}");
        db.store.migrate().await.unwrap();
        let names = table_names(&db).await;
        for t in TABLES {
            assert!(names.iter().any(|n| n == t), "{backend:?}: table {t} missing from {names:?}");
        }

        let check_plans = || async {
            let plans = billing_plans::Entity::find().all(db.store.connection()).await.unwrap();
            assert_eq!(plans.len(), 4, "{backend:?}");
            for plan in plans {
                let tier: Tier = plan.tier.parse().unwrap();
                let l = tier.limits();
                assert_eq!(
                    (
                        plan.rate_limit_rpm,
                        plan.rate_limit_tpm,
                        plan.quota_daily,
                        plan.quota_monthly
                    ),
                    (l.rpm as i64, l.tpm as i64, l.daily_tokens as i64, l.monthly_tokens as i64),
                    "{backend:?} {tier}"
                );
                assert_eq!(plan.max_api_keys, tier.max_api_keys() as i32);
            }
        };
        check_plans().await;

        // A second run changes nothing.
        db.store.migrate().await.unwrap();
        assert_eq!(db.store.pending_migrations().await.unwrap(), 0);
        assert_eq!(table_names(&db).await, names, "{backend:?}");
        check_plans().await;
    }
}

fn usage_row(request_id: uuid::Uuid, created_at: OffsetDateTime) -> usage_logs::ActiveModel {
    usage_logs::ActiveModel {
        request_id: Set(request_id),
        created_at: Set(created_at),
        user_id: Set(uuid::Uuid::now_v7()),
        api_key_id: Set(None),
        server_id: Set(None),
        endpoint: Set("chat.completions".into()),
        model: Set("gpt-4".into()),
        prompt_tokens: Set(3),
        completion_tokens: Set(4),
        total_tokens: Set(7),
        cost_micros: Set(0),
        latency_ms: Set(12),
        upstream_latency_ms: Set(Some(10)),
        status_code: Set(200),
        is_error: Set(false),
        error_message: Set(None),
        streamed: Set(false),
        client_disconnected: Set(false),
        usage_estimated: Set(false),
    }
}

#[tokio::test]
async fn usage_rows_for_this_and_next_month_insert_and_duplicates_are_refused() {
    for backend in backends() {
        let db = TestDb::migrated(backend).await;
        let conn = db.store.connection();
        let now = OffsetDateTime::now_utc();
        let next_month = migration::month_start(now.date(), 1).midnight().assume_utc();
        let id = uuid::Uuid::now_v7();
        usage_logs::Entity::insert(usage_row(id, now)).exec_without_returning(conn).await.unwrap();
        usage_logs::Entity::insert(usage_row(uuid::Uuid::now_v7(), next_month))
            .exec_without_returning(conn)
            .await
            .unwrap_or_else(|e| panic!("{backend:?}: insert next month: {e}"));
        let dup = usage_logs::Entity::insert(usage_row(id, now)).exec_without_returning(conn).await;
        assert!(dup.is_err(), "{backend:?}: a retried record must not count twice");
        assert_eq!(usage_logs::Entity::find().all(conn).await.unwrap().len(), 2);
    }
}

async fn partitions(db: &TestDb) -> Vec<String> {
    let conn = db.store.connection();
    let rows = conn
        .query_all_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE i.inhparent = 'usage_logs'::regclass ORDER BY c.relname",
        ))
        .await
        .unwrap();
    rows.iter().map(|r| r.try_get::<String>("", "name").unwrap()).collect()
}

#[tokio::test]
async fn postgres_partitions_usage_logs_by_month_ahead_of_the_calendar() {
    let db = TestDb::migrated(Backend::Postgres).await;
    let now = OffsetDateTime::now_utc();
    let this = migration::partition_name(migration::month_start(now.date(), 0));
    let next = migration::partition_name(migration::month_start(now.date(), 1));
    assert_eq!(partitions(&db).await, vec![this.clone(), next.clone()]);

    // The daily job near a year's end creates the next months, idempotently.
    let created = db.store.ensure_usage_partitions(datetime!(2030-12-31 23:00 UTC)).await.unwrap();
    assert_eq!(created, vec!["usage_logs_y2030m12", "usage_logs_y2031m01"]);
    db.store.ensure_usage_partitions(datetime!(2030-12-31 23:00 UTC)).await.unwrap();
    assert_eq!(
        partitions(&db).await,
        vec![this, next, "usage_logs_y2030m12".into(), "usage_logs_y2031m01".into()]
    );
    let conn = db.store.connection();
    usage_logs::Entity::insert(usage_row(uuid::Uuid::now_v7(), datetime!(2031-01-01 00:00 UTC)))
        .exec_without_returning(conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn sqlite_needs_no_partitions() {
    let db = TestDb::migrated(Backend::Sqlite).await;
    assert!(db.store.ensure_usage_partitions(OffsetDateTime::now_utc()).await.unwrap().is_empty());
}

#[tokio::test]
async fn sql_auth_store_meets_the_auth_contract() {
    for backend in backends() {
        let db = TestDb::migrated(backend).await;
        let store = gateway_store::SqlAuthStore::new(db.store.clone());
        gateway_auth::conformance::user_store_contract(&store).await;
        gateway_auth::conformance::key_store_contract(&store, &store).await;
        gateway_auth::conformance::session_store_contract(&store, &store).await;
    }
}

#[tokio::test]
async fn sql_server_store_meets_the_pool_contract() {
    for backend in backends() {
        let db = TestDb::migrated(backend).await;
        let store = gateway_store::SqlServerStore::new(db.store.clone());
        gateway_balancer::store::conformance::server_store_contract(&store).await;
    }
}

#[tokio::test]
async fn sql_usage_store_inserts_batches_once() {
    use gateway_usage::{UsageRecord, UsageStore};
    for backend in backends() {
        let db = TestDb::migrated(backend).await;
        let store = gateway_store::SqlUsageStore::new(db.store.clone());
        let records: Vec<_> = (0..300).map(|_| UsageRecord::example()).collect();
        store.insert_batch(&records).await.unwrap();
        // A retried batch, partly new: only the new record is added.
        let mut retry = records[..10].to_vec();
        retry.push(UsageRecord::example());
        store.insert_batch(&retry).await.unwrap();
        store.insert_batch(&records[..5]).await.unwrap();
        let rows = usage_logs::Entity::find().all(db.store.connection()).await.unwrap();
        assert_eq!(rows.len(), 301, "{backend:?}");
        let first = rows.iter().find(|r| r.request_id == records[0].request_id.as_uuid()).unwrap();
        assert_eq!((first.prompt_tokens, first.completion_tokens, first.total_tokens), (3, 5, 8));
    }
}

/// Postgres refuses text holding NUL (SQLSTATE 22021): the adapter says the data was refused,
/// not that the database failed, and the writer then writes every other record of the batch
/// and quarantines that one. SQLite stores it.
#[tokio::test]
async fn a_record_the_database_refuses_is_quarantined_and_its_batch_written() {
    use gateway_usage::{UsageError, UsageRecord, UsageStore, UsageWriter, WriterConfig};
    use std::sync::atomic::Ordering;
    for backend in backends() {
        let db = TestDb::migrated(backend).await;
        let store = std::sync::Arc::new(gateway_store::SqlUsageStore::new(db.store.clone()));
        let mut bad = UsageRecord::example();
        bad.model = "gpt-4\0".into();
        let refused = store.insert_batch(std::slice::from_ref(&bad)).await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = WriterConfig::new(dir.path().join("spill.jsonl"));
        // One batch of all 50 records (none is flushed early).
        config.batch_size = 50;
        config.flush_every = std::time::Duration::from_hours(1);
        let writer = UsageWriter::start(store.clone(), config);
        let good: Vec<_> = (0..49).map(|_| UsageRecord::example()).collect();
        for r in &good[..20] {
            writer.record(r.clone());
        }
        writer.record(bad.clone());
        for r in &good[20..] {
            writer.record(r.clone());
        }
        writer.shutdown().await;
        let rows = usage_logs::Entity::find().all(db.store.connection()).await.unwrap();
        let quarantined = writer.stats().quarantined.load(Ordering::Relaxed);
        match backend {
            Backend::Postgres => {
                assert!(matches!(refused, Err(UsageError::Rejected(_))), "{refused:?}");
                assert_eq!(rows.len(), 49);
                assert_eq!(quarantined, 1);
                let kept = std::fs::read_to_string(writer.quarantine_path()).unwrap();
                assert!(kept.contains(&bad.request_id.to_string()), "{kept}");
            }
            Backend::Sqlite => {
                refused.unwrap();
                assert_eq!((rows.len(), quarantined), (50, 0));
            }
        }
        assert_eq!(writer.stats().spilled.load(Ordering::Relaxed), 0, "{backend:?}");
    }
}

#[tokio::test]
async fn usage_logs_page_newest_first_and_stats_group() {
    use gateway_core::UserId;
    use gateway_usage::{
        GroupBy, LogQuery, StatsQuery, StatusFilter, UsageQueries, UsageRecord, UsageStore,
    };
    for backend in backends() {
        let db = TestDb::migrated(backend).await;
        let store = gateway_store::SqlUsageStore::new(db.store.clone());
        let user = UserId::new();
        let base = OffsetDateTime::now_utc() - time::Duration::hours(1);
        let mut records = Vec::new();
        for i in 0..25i64 {
            let mut r = UsageRecord::example();
            r.user_id = user;
            // Several records share a timestamp: the cursor must break ties by request id.
            r.created_at = base + time::Duration::seconds(i / 3);
            r.model = if i % 2 == 0 { "gpt-4".into() } else { "gpt-3.5-turbo".into() };
            r.is_error = i % 5 == 0;
            r.status_code = if r.is_error { 503 } else { 200 };
            records.push(r);
        }
        let mut other = UsageRecord::example();
        other.created_at = base;
        records.push(other);
        store.insert_batch(&records).await.unwrap();

        let mut seen = Vec::new();
        let mut q = LogQuery {
            user_id: user,
            before: None,
            limit: 10,
            model: None,
            key_id: None,
            status: None,
        };
        loop {
            let page = store.logs(&q).await.unwrap();
            if page.is_empty() {
                break;
            }
            q.before = page.last().map(|r| (r.created_at, r.request_id));
            seen.extend(page);
        }
        assert_eq!(seen.len(), 25, "{backend:?}: every record of the user once, none of others");
        assert!(
            seen.windows(2)
                .all(|w| (w[0].created_at, w[0].request_id) > (w[1].created_at, w[1].request_id)),
            "newest first"
        );
        let errors = store
            .logs(&LogQuery {
                status: Some(StatusFilter::Error),
                limit: 100,
                before: None,
                ..q.clone()
            })
            .await
            .unwrap();
        assert_eq!(errors.len(), 5);
        let gpt4 = store
            .logs(&LogQuery {
                model: Some("gpt-4".into()),
                limit: 100,
                before: None,
                status: None,
                ..q.clone()
            })
            .await
            .unwrap();
        assert_eq!(gpt4.len(), 13);

        let stats = store
            .stats(&StatsQuery {
                user_id: user,
                from: base,
                to: base + time::Duration::hours(1),
                group_by: GroupBy::Model,
            })
            .await
            .unwrap();
        assert_eq!(
            stats.iter().map(|s| (s.group.as_str(), s.requests)).collect::<Vec<_>>(),
            vec![("gpt-3.5-turbo", 12), ("gpt-4", 13)]
        );
        assert_eq!(stats.iter().map(|s| s.errors).sum::<u64>(), 5);
        assert_eq!(stats[1].total_tokens, 13 * 8);
        // Every grouping agrees with the reference aggregation, whichever way the backend
        // computes it (SQL on Postgres, in process on SQLite).
        let mine: Vec<_> = records
            .iter()
            .filter(|r| r.user_id == user)
            .map(gateway_usage::query::StatsSample::from)
            .collect();
        for group_by in [GroupBy::Day, GroupBy::Model, GroupBy::Key] {
            let got = store
                .stats(&StatsQuery {
                    user_id: user,
                    from: base,
                    to: base + time::Duration::hours(1),
                    group_by,
                })
                .await
                .unwrap();
            let want = gateway_usage::query::aggregate(mine.clone(), group_by);
            assert_eq!(got.len(), want.len(), "{backend:?} {group_by:?}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(
                    (&g.group, g.requests, g.total_tokens, g.errors, g.p95_latency_ms),
                    (&w.group, w.requests, w.total_tokens, w.errors, w.p95_latency_ms),
                    "{backend:?} {group_by:?}"
                );
                assert!((g.avg_latency_ms - w.avg_latency_ms).abs() < 1e-9);
            }
        }
    }
}

/// Two keys of one user, made through the accounts service (the quota table refers to keys).
async fn two_keys(db: &TestDb) -> (gateway_core::ApiKeyId, gateway_core::ApiKeyId) {
    use gateway_auth::{Accounts, AccountsConfig, AuthStores, NewKey};
    let store = std::sync::Arc::new(gateway_store::SqlAuthStore::new(db.store.clone()));
    let config = AccountsConfig { password_cost: 4, key_cost: 4, ..AccountsConfig::default() };
    let accounts =
        Accounts::new(AuthStores::from(store), b"0123456789abcdef0123456789abcdef", config);
    let user = accounts.signup("quota@example.com", "correct horse battery", None).await.unwrap();
    let scopes = vec![gateway_core::Scope::ChatCompletions];
    let a = accounts.create_key(user.id, NewKey::named("a", scopes.clone())).await.unwrap();
    let b = accounts.create_key(user.id, NewKey::named("b", scopes)).await.unwrap();
    (a.meta.id, b.meta.id)
}

#[tokio::test]
async fn sql_quota_store_meets_the_quota_contract() {
    for backend in backends() {
        let db = TestDb::migrated(backend).await;
        let (a, b) = two_keys(&db).await;
        let quotas = gateway_store::SqlQuotaStore::new(db.store.clone());
        gateway_ratelimit::conformance::quota_store_contract(&quotas, a, b).await;
    }
}
