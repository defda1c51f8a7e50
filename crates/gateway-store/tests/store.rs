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

const TABLES: [&str; 20] = [
    "api_keys",
    "billing_plans",
    "billing_webhook_events",
    "credit_ledger",
    "invoice_lines",
    "invoice_numbers",
    "invoices",
    "litellm_servers",
    "model_prices",
    "model_routes",
    "payment_transactions",
    "rate_limit_state",
    "redemption_codes",
    "redemptions",
    "sessions",
    "usage_daily",
    "usage_logs",
    "usage_rollup_pending",
    "user_quota_state",
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
        assert_eq!(db.store.pending_migrations().await.unwrap(), 19, "{backend:?}");
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
                assert_eq!(plan.max_api_keys, tier.default_plan().max_api_keys as i32);
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
        retention_days: Set(30),
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
async fn sql_price_store_meets_the_price_contract_and_is_seeded() {
    use gateway_billing::{PriceStore, SEED_PRICES};
    for backend in backends() {
        let db = TestDb::migrated(backend).await;
        let store = gateway_store::SqlPriceStore::new(db.store.clone());
        // The migration seeds the original product's table, applying since the epoch.
        let seeded = store.list_prices().await.unwrap();
        for (model, price) in SEED_PRICES {
            let p = seeded.iter().find(|p| p.model == model).unwrap();
            assert_eq!(
                (p.price, p.effective_from),
                (price, OffsetDateTime::UNIX_EPOCH),
                "{backend:?}"
            );
        }
        gateway_billing::prices::conformance::price_store_contract(&store).await;
        let plans = gateway_store::SqlPlanStore::new(db.store.clone());
        gateway_billing::plans::conformance::plan_store_contract(&plans).await;
    }
}

/// Each backend with each way it inserts usage batches (Postgres has two).
fn insert_methods() -> Vec<(gateway_store::testing::Backend, gateway_store::InsertMethod)> {
    use gateway_store::InsertMethod;
    backends()
        .into_iter()
        .flat_map(|b| {
            let methods = match b {
                gateway_store::testing::Backend::Postgres => {
                    vec![InsertMethod::Unnest, InsertMethod::CopyBinary]
                }
                gateway_store::testing::Backend::Sqlite => vec![InsertMethod::Unnest],
            };
            methods.into_iter().map(move |m| (b, m))
        })
        .collect()
}

#[tokio::test]
async fn sql_usage_store_meets_the_usage_contract() {
    for (backend, method) in insert_methods() {
        let db = TestDb::migrated(backend).await;
        let store = gateway_store::SqlUsageStore::new(db.store.clone()).with_insert_method(method);
        gateway_usage::conformance::usage_store_contract(&store, &store).await;
    }
}

/// The rollup the writer keeps, batch by batch, equals the one recomputed from the rows by SQL
/// (the migration's backfill and `usage rebuild-rollup`): the same sums, and every latency in
/// the same histogram bucket, across the buckets' edges.
#[tokio::test]
async fn the_rollup_kept_by_the_writer_equals_the_one_rebuilt_from_the_rows() {
    use gateway_usage::rollup::LATENCY_BOUNDS;
    use gateway_usage::{GroupBy, StatsQuery, UsageQueries, UsageRecord, UsageStore};
    // Postgres's bm_hist_add is written out for this many buckets.
    assert_eq!(migration::HIST_BUCKETS, gateway_usage::rollup::BUCKETS);
    for (backend, method) in insert_methods() {
        let db = TestDb::migrated(backend).await;
        let store = gateway_store::SqlUsageStore::new(db.store.clone()).with_insert_method(method);
        let user = gateway_core::UserId::new();
        let key = gateway_core::ApiKeyId::new();
        let base = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let day = base.date();
        let mut latencies: Vec<u32> = vec![0, 500_000];
        for b in LATENCY_BOUNDS {
            latencies.extend([b - 1, b, b + 1]);
        }
        let records: Vec<UsageRecord> = latencies
            .iter()
            .enumerate()
            .map(|(i, &latency_ms)| UsageRecord {
                user_id: user,
                api_key_id: (i % 3 != 0).then_some(key),
                model: if i % 2 == 0 { "m-even".into() } else { "m-odd".into() },
                created_at: (day.midnight().assume_utc()) + time::Duration::seconds(i as i64),
                latency_ms,
                is_error: i % 5 == 0,
                ..UsageRecord::example()
            })
            .collect();
        // In three batches, one of them sent twice.
        for chunk in records.chunks(60).chain(records.chunks(60).take(1)) {
            store.insert_batch(chunk).await.unwrap();
        }
        let read = |group_by| {
            let store = store.clone();
            async move {
                let q =
                    StatsQuery { user_id: user, from: day, to: day.next_day().unwrap(), group_by };
                store.stats(&q).await.unwrap()
            }
        };
        let kept = (read(GroupBy::Model).await, read(GroupBy::Key).await);
        assert_eq!(
            kept.0.iter().map(|r| r.requests).sum::<u64>(),
            records.len() as u64,
            "{backend:?}"
        );
        let rows = db.store.rebuild_usage_rollup().await.unwrap();
        assert_eq!(rows, 4, "two models, with and without a key: {backend:?}");
        let rebuilt = (read(GroupBy::Model).await, read(GroupBy::Key).await);
        assert_eq!(kept, rebuilt, "{backend:?}");
        let want =
            gateway_usage::rollup::stats(&gateway_usage::rollup::rollup(&records), GroupBy::Model);
        assert_eq!(rebuilt.0, want, "{backend:?}");
    }
}

/// Records of `keys` keys of one user, `n` each, today.
fn held_records(
    user: gateway_core::UserId,
    keys: usize,
    n: usize,
) -> Vec<gateway_usage::UsageRecord> {
    let keys: Vec<_> = (0..keys).map(|_| gateway_core::ApiKeyId::new()).collect();
    (0..n * keys.len())
        .map(|i| gateway_usage::UsageRecord {
            user_id: user,
            api_key_id: Some(keys[i % keys.len()]),
            latency_ms: 5 + (i as u32 * 37) % 4000,
            prompt_tokens: 1 + i as u64 % 7,
            total_tokens: 6 + i as u64 % 7,
            cost_micros: 10 + i as i64,
            is_error: i % 9 == 0,
            ..gateway_usage::UsageRecord::example()
        })
        .collect()
}

/// The user's stats today by key, and the pending batches left.
async fn rollup_now(
    db: &TestDb,
    store: &gateway_store::SqlUsageStore,
    user: gateway_core::UserId,
) -> (Vec<gateway_usage::StatsRow>, i64) {
    use gateway_usage::{GroupBy, StatsQuery, UsageQueries};
    let day = OffsetDateTime::now_utc().date();
    let q = StatsQuery {
        user_id: user,
        from: day,
        to: day.next_day().unwrap(),
        group_by: GroupBy::Key,
    };
    let stats = store.stats(&q).await.unwrap();
    let conn = db.store.connection();
    let pending = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT CAST(count(*) AS BIGINT) AS n FROM usage_rollup_pending",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    (stats, pending)
}

/// With a rollup interval, Postgres holds the rollup sums of each batch of many keys in memory
/// and writes them when due (one upsert per row for many batches), each batch pending in the
/// database until then; a batch of few rows writes them at once; what is read afterwards
/// equals the rows exactly, a retried batch counted once. SQLite writes them in each batch's
/// transaction whatever the interval.
#[tokio::test]
async fn held_rollup_sums_are_written_when_due_and_equal_the_rows() {
    use gateway_usage::{GroupBy, UsageStore, UsageWriter, WriterConfig};
    for (backend, method) in insert_methods() {
        let db = TestDb::migrated(backend).await;
        let store = gateway_store::SqlUsageStore::new(db.store.clone())
            .with_insert_method(method)
            .with_rollup_interval(std::time::Duration::from_hours(1));
        let user = gateway_core::UserId::new();
        // Batches of 25 keys (held), then one of 5 (few rows: written with its batch).
        let records = held_records(user, 40, 2);
        for chunk in records.chunks(25).chain(records.chunks(25).take(1)) {
            store.insert_batch(chunk).await.unwrap();
        }
        let want =
            gateway_usage::rollup::stats(&gateway_usage::rollup::rollup(&records), GroupBy::Key);
        let (read, pending) = rollup_now(&db, &store, user).await;
        if backend == Backend::Sqlite {
            assert_eq!((read, pending), (want, 0), "SQLite writes the rollup with each batch");
            assert_eq!(store.rollup_due_in(), None);
            continue;
        }
        let small = gateway_usage::rollup::stats(
            &gateway_usage::rollup::rollup(&records[75..]),
            GroupBy::Key,
        );
        assert_eq!(read, small, "{method:?}: only the small batch is written before it is due");
        assert_eq!(pending, 3, "{method:?}: a pending row per held batch, none for the retry");
        assert!(store.rollup_due_in().is_some(), "it looks for batches left pending at once");
        store.fold_rollup(false).await.unwrap();
        assert_eq!(rollup_now(&db, &store, user).await.1, 3, "{method:?}: not due yet");
        store.fold_rollup(true).await.unwrap();
        assert_eq!(rollup_now(&db, &store, user).await, (want.clone(), 0), "{method:?}");
        store.fold_rollup(true).await.unwrap();
        assert_eq!(rollup_now(&db, &store, user).await, (want, 0), "{method:?}: written once");

        // Through the writer: what it holds at shutdown is written then.
        let user = gateway_core::UserId::new();
        let records = held_records(user, 40, 5);
        let dir = tempfile::tempdir().unwrap();
        let mut config = WriterConfig::new(dir.path().join("spill.jsonl"));
        config.batch_size = 30;
        let store = std::sync::Arc::new(store);
        let writer = UsageWriter::start(store.clone(), config).unwrap();
        for r in &records {
            writer.record(r.clone());
        }
        writer.shutdown().await;
        let want =
            gateway_usage::rollup::stats(&gateway_usage::rollup::rollup(&records), GroupBy::Key);
        assert_eq!(rollup_now(&db, &store, user).await, (want, 0), "{method:?}");

        // A running writer writes them when they are due, with no record coming after.
        let store = std::sync::Arc::new(
            gateway_store::SqlUsageStore::new(db.store.clone())
                .with_insert_method(method)
                .with_rollup_interval(std::time::Duration::from_millis(200)),
        );
        let user = gateway_core::UserId::new();
        let records = held_records(user, 40, 1);
        let writer =
            UsageWriter::start(store.clone(), WriterConfig::new(dir.path().join("s2.jsonl")))
                .unwrap();
        for r in &records {
            writer.record(r.clone());
        }
        let want =
            gateway_usage::rollup::stats(&gateway_usage::rollup::rollup(&records), GroupBy::Key);
        let started = std::time::Instant::now();
        while rollup_now(&db, &store, user).await != (want.clone(), 0) {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "{method:?}: never written"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        writer.shutdown().await;
    }
}

/// Held sums are never counted twice nor lost, whoever writes them: batches a gateway left
/// pending (killed before writing its sums) are summed from `usage_logs` by the next gateway
/// that looks once they are old; batches summed meanwhile by another (an invoice run writes
/// all that is pending first) or by a rollup rebuild are dropped from what their gateway
/// holds, and the rest of its batches summed from the rows.
#[tokio::test]
async fn held_rollup_sums_are_counted_once_whoever_writes_them() {
    use gateway_usage::{GroupBy, UsageStore};
    let db = TestDb::migrated(Backend::Postgres).await;
    let hour = std::time::Duration::from_hours(1);
    let gateway = || gateway_store::SqlUsageStore::new(db.store.clone()).with_rollup_interval(hour);
    let want = |r: &[gateway_usage::UsageRecord]| {
        gateway_usage::rollup::stats(&gateway_usage::rollup::rollup(r), GroupBy::Key)
    };

    // A gateway killed while holding sums: its batches are summed once they are old.
    let user = gateway_core::UserId::new();
    let records = held_records(user, 30, 2);
    let killed = gateway();
    for chunk in records.chunks(20) {
        killed.insert_batch(chunk).await.unwrap();
    }
    drop(killed);
    let next = gateway();
    next.fold_rollup(false).await.unwrap();
    assert_eq!(rollup_now(&db, &next, user).await, (vec![], 3), "recent batches are not taken");
    let conn = db.store.connection();
    conn.execute_unprepared(
        "UPDATE usage_rollup_pending SET created_at = now() - interval '1 day'",
    )
    .await
    .unwrap();
    let next = gateway();
    assert_eq!(
        next.rollup_due_in(),
        Some(std::time::Duration::ZERO),
        "a new gateway looks at once"
    );
    next.fold_rollup(false).await.unwrap();
    assert_eq!(rollup_now(&db, &next, user).await, (want(&records), 0));

    // Batches taken by an invoice run while a gateway holds their sums, then more batches.
    let user = gateway_core::UserId::new();
    let records = held_records(user, 30, 2);
    let holder = gateway();
    for chunk in records[..40].chunks(20) {
        holder.insert_batch(chunk).await.unwrap();
    }
    assert_eq!(gateway().sum_pending_batches().await.unwrap(), 2);
    assert_eq!(rollup_now(&db, &holder, user).await, (want(&records[..40]), 0));
    for chunk in records[40..].chunks(20) {
        holder.insert_batch(chunk).await.unwrap();
    }
    holder.fold_rollup(true).await.unwrap();
    assert_eq!(rollup_now(&db, &holder, user).await, (want(&records), 0), "each batch once");

    // A rebuild while a gateway holds sums.
    let user = gateway_core::UserId::new();
    let records = held_records(user, 20, 2);
    let holder = gateway();
    for chunk in records.chunks(20) {
        holder.insert_batch(chunk).await.unwrap();
    }
    db.store.rebuild_usage_rollup().await.unwrap();
    assert_eq!(rollup_now(&db, &holder, user).await, (want(&records), 0));
    holder.fold_rollup(true).await.unwrap();
    assert_eq!(rollup_now(&db, &holder, user).await, (want(&records), 0), "not added again");
}

/// Postgres refuses text holding NUL (SQLSTATE 22021): the adapter says the data was refused,
/// not that the database failed, and the writer then writes every other record of the batch
/// and quarantines that one. SQLite stores it.
#[tokio::test]
async fn a_record_the_database_refuses_is_quarantined_and_its_batch_written() {
    use gateway_usage::{UsageError, UsageRecord, UsageStore, UsageWriter, WriterConfig};
    use std::sync::atomic::Ordering;
    for (backend, method) in insert_methods() {
        let db = TestDb::migrated(backend).await;
        let store = std::sync::Arc::new(
            gateway_store::SqlUsageStore::new(db.store.clone()).with_insert_method(method),
        );
        let mut bad = UsageRecord::example();
        bad.model = "gpt-4\0".into();
        let refused = store.insert_batch(std::slice::from_ref(&bad)).await;
        let dir = tempfile::tempdir().unwrap();
        let mut config = WriterConfig::new(dir.path().join("spill.jsonl"));
        // One batch of all 50 records (none is flushed early).
        config.batch_size = 50;
        config.flush_every = std::time::Duration::from_hours(1);
        let writer = UsageWriter::start(store.clone(), config).unwrap();
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

async fn two_keys(
    db: &TestDb,
) -> (gateway_core::ApiKeyId, gateway_core::ApiKeyId, gateway_core::UserId) {
    use gateway_auth::{Accounts, AccountsConfig, AuthStores, NewKey};
    let store = std::sync::Arc::new(gateway_store::SqlAuthStore::new(db.store.clone()));
    let config = AccountsConfig { password_cost: 4, key_cost: 4, ..AccountsConfig::default() };
    let accounts =
        Accounts::new(AuthStores::from(store), b"0123456789abcdef0123456789abcdef", config);
    let user = accounts.signup("quota@example.com", "correct horse battery", None).await.unwrap();
    // Two keys: more than the free plan allows.
    let pro = gateway_auth::AdminUserUpdate { tier: Some(Tier::Pro), ..Default::default() };
    accounts.admin_update_user(gateway_core::UserId::new(), user.id, pro).await.unwrap();
    let scopes = vec![gateway_core::Scope::ChatCompletions];
    let a = accounts.create_key(user.id, NewKey::named("a", scopes.clone())).await.unwrap();
    let b = accounts.create_key(user.id, NewKey::named("b", scopes)).await.unwrap();
    (a.meta.id, b.meta.id, user.id)
}

#[tokio::test]
async fn sql_quota_store_meets_the_quota_contract() {
    for backend in backends() {
        let db = TestDb::migrated(backend).await;
        let (a, b, user) = two_keys(&db).await;
        let quotas = gateway_store::SqlQuotaStore::new(db.store.clone());
        gateway_ratelimit::conformance::quota_store_contract(&quotas, a, b, user).await;
    }
}

/// A user of `tier`, made through the accounts service.
async fn user_on(db: &TestDb, email: &str, tier: Tier) -> gateway_core::UserId {
    use gateway_auth::{Accounts, AccountsConfig, AdminUserUpdate, AuthStores};
    let store = std::sync::Arc::new(gateway_store::SqlAuthStore::new(db.store.clone()));
    let config = AccountsConfig { password_cost: 4, key_cost: 4, ..AccountsConfig::default() };
    let accounts =
        Accounts::new(AuthStores::from(store), b"0123456789abcdef0123456789abcdef", config);
    let user = accounts.signup(email, "correct horse battery", None).await.unwrap();
    let update = AdminUserUpdate { tier: Some(tier), ..AdminUserUpdate::default() };
    accounts.admin_update_user(gateway_core::UserId::new(), user.id, update).await.unwrap();
    user.id
}

#[tokio::test]
async fn sql_ledger_meets_the_ledger_contract() {
    for backend in backends() {
        let db = TestDb::migrated(backend).await;
        let user = user_on(&db, "ledger@example.com", Tier::Free).await;
        let other = user_on(&db, "other@example.com", Tier::Free).await;
        let store = std::sync::Arc::new(gateway_store::SqlBillingStore::new(db.store.clone()));
        gateway_billing::ledger::conformance::ledger_store_contract(store, user, other).await;
    }
}

/// Closing a period while a gateway holds the rollup sums of a batch of many keys invoices
/// them: the close sums pending batches before it reads the rollup, so the usage and the
/// overage charged are the records', to the micro-dollar.
#[tokio::test]
async fn closing_a_period_counts_the_usage_a_gateway_holds() {
    use gateway_billing::invoice::{BillingPeriod, InvoiceStore};
    use gateway_usage::{UsageRecord, UsageStore};
    for backend in backends() {
        let db = TestDb::migrated(backend).await;
        let alice = user_on(&db, "alice@example.com", Tier::Starter).await;
        let now = OffsetDateTime::now_utc();
        let period = BillingPeriod::containing(now);
        let held = gateway_store::SqlUsageStore::new(db.store.clone())
            .with_rollup_interval(std::time::Duration::from_hours(1));
        // 20 keys of 30,000 tokens each: 600,000, 100,000 past Starter's included tokens.
        let records: Vec<UsageRecord> = held_records(alice, 20, 1)
            .into_iter()
            .map(|r| UsageRecord {
                created_at: period.starts_at() + time::Duration::minutes(30),
                prompt_tokens: 30_000,
                completion_tokens: 0,
                total_tokens: 30_000,
                cost_micros: 150,
                ..r
            })
            .collect();
        held.insert_batch(&records).await.unwrap();
        let billing = gateway_store::SqlBillingStore::new(db.store.clone());
        let plans: Vec<_> =
            Tier::ALL.iter().map(|t| std::sync::Arc::new(t.default_plan())).collect();
        let report =
            billing.close_period(period, &plans, time::Duration::days(14), now).await.unwrap();
        assert_eq!(report.created, 1, "{backend:?}");
        let a = billing.invoice_for(alice, period).await.unwrap().unwrap();
        assert_eq!((a.charges.used_tokens, a.charges.overage_tokens), (600_000, 100_000));
        assert_eq!(a.charges.usage_cost_micros, 3_000, "{backend:?}");
        assert_eq!(a.total_micros, 29_200_000, "{backend:?}: the fee and 100,000 tokens over");
        // The gateway finds its batch summed and drops what it held: nothing counted twice.
        held.fold_rollup(true).await.unwrap();
        assert_eq!(billing.period_usage(alice, period).await.unwrap().tokens, 600_000);
    }
}

#[tokio::test]
async fn closing_a_period_invoices_fees_and_overage_once_and_credits_pay_what_they_can() {
    use gateway_billing::invoice::{
        BillingPeriod, InvoiceStatus, InvoiceStore, LineKind, recompute,
    };
    use gateway_billing::ledger::{EntryKind, LedgerStore, NewEntry};
    use gateway_usage::{UsageRecord, UsageStore};
    for backend in backends() {
        let db = TestDb::migrated(backend).await;
        let alice = user_on(&db, "alice@example.com", Tier::Starter).await;
        let bob = user_on(&db, "bob@example.com", Tier::Free).await;
        let carol = user_on(&db, "carol@example.com", Tier::Pro).await;
        let now = OffsetDateTime::now_utc();
        let period = BillingPeriod::containing(now);
        // Usage in the period: alice 100,000 tokens beyond Starter's 500,000.
        let usage = gateway_store::SqlUsageStore::new(db.store.clone());
        let at = period.starts_at() + time::Duration::minutes(30);
        let record = |user, tokens: u64, cost| UsageRecord {
            user_id: user,
            created_at: at,
            total_tokens: tokens,
            prompt_tokens: tokens,
            completion_tokens: 0,
            cost_micros: cost,
            ..UsageRecord::example()
        };
        usage
            .insert_batch(&[
                record(alice, 400_000, 1_000),
                record(alice, 200_000, 2_000),
                record(bob, 5_000, 10),
                record(carol, 1_000, 20),
            ])
            .await
            .unwrap();
        let billing = gateway_store::SqlBillingStore::new(db.store.clone());
        let grant = NewEntry {
            user: carol,
            kind: EntryKind::Grant,
            amount_micros: 100_000_000,
            reference: "welcome".into(),
            reason: "welcome credits".into(),
        };
        billing.append(&grant, now).await.unwrap();

        let plans: Vec<_> =
            Tier::ALL.iter().map(|t| std::sync::Arc::new(t.default_plan())).collect();
        let grace = time::Duration::days(14);
        let report = billing.close_period(period, &plans, grace, now).await.unwrap();
        assert_eq!((report.created, report.paid_by_credits), (2, 1), "{backend:?} {report:?}");
        assert_eq!(report.open_micros, 29_200_000, "{backend:?}");

        let a = billing.invoice_for(alice, period).await.unwrap().unwrap();
        assert_eq!(a.number, period.invoice_number(1), "{backend:?}");
        assert_eq!((a.status, a.total_micros), (InvoiceStatus::Open, 29_200_000));
        assert_eq!((a.charges.used_tokens, a.charges.overage_tokens), (600_000, 100_000));
        assert_eq!(a.charges.usage_cost_micros, 3_000);
        assert_eq!(
            a.lines.iter().map(|l| (l.kind, l.amount_micros)).collect::<Vec<_>>(),
            [(LineKind::PlanFee, 29_000_000), (LineKind::Overage, 200_000)]
        );
        let c = billing.invoice_for(carol, period).await.unwrap().unwrap();
        assert_eq!(c.number, period.invoice_number(2));
        assert_eq!(
            (c.status, c.credits_applied_micros, c.total_micros),
            (InvoiceStatus::Paid, 99_000_000, 0)
        );
        assert!(billing.invoice_for(bob, period).await.unwrap().is_none(), "free: nothing to bill");

        // The unpaid invoice makes alice past due after the grace period.
        let users = gateway_store::SqlAuthStore::new(db.store.clone());
        let alice_row =
            gateway_auth::UserStore::find_user_by_id(&users, alice).await.unwrap().unwrap();
        assert_eq!(
            alice_row.user.past_due_after.map(OffsetDateTime::unix_timestamp),
            Some((now + grace).unix_timestamp())
        );
        let carol_row =
            gateway_auth::UserStore::find_user_by_id(&users, carol).await.unwrap().unwrap();
        assert_eq!(
            (carol_row.user.credits_micros, carol_row.user.past_due_after),
            (1_000_000, None)
        );

        // Twice: nothing changes.
        let again = billing.close_period(period, &plans, grace, now).await.unwrap();
        assert_eq!((again.created, again.already_invoiced), (0, 2), "{backend:?}");
        assert_eq!(billing.invoice_for(alice, period).await.unwrap().unwrap(), a);
        // Recomputed from the usage records, it is what was stored.
        let used = billing.period_usage(alice, period).await.unwrap();
        assert_eq!(recompute(&a, used), a, "{backend:?}");

        // Credits granted later pay the open invoice and end the past-due state.
        let top_up = NewEntry {
            user: alice,
            kind: EntryKind::TopUp,
            amount_micros: 30_000_000,
            reference: "pack-1".into(),
            reason: "credit pack".into(),
        };
        billing.append(&top_up, now).await.unwrap();
        let paid = billing.pay_open_invoices(alice, now).await.unwrap();
        assert_eq!(paid.len(), 1);
        assert_eq!(
            (paid[0].status, paid[0].total_micros, paid[0].credits_applied_micros),
            (InvoiceStatus::Paid, 0, 29_200_000)
        );
        assert_eq!(paid[0].lines.last().map(|l| l.amount_micros), Some(-29_200_000));
        assert!(billing.pay_open_invoices(alice, now).await.unwrap().is_empty(), "nothing left");
        let alice_row =
            gateway_auth::UserStore::find_user_by_id(&users, alice).await.unwrap().unwrap();
        assert_eq!((alice_row.user.credits_micros, alice_row.user.past_due_after), (800_000, None));
        assert!(
            billing.verify().await.unwrap().is_empty(),
            "{backend:?}: balances are their ledgers' sums"
        );
    }
}

/// Replicas starting together each run the migrations: the advisory lock lets one apply them
/// and the others find nothing pending, so none fails on a table that already exists.
#[tokio::test]
async fn four_replicas_migrating_one_fresh_postgres_at_once_all_succeed() {
    gateway_store::testing::require_postgres();
    let db = TestDb::empty(gateway_store::testing::Backend::Postgres).await;
    let mut replicas = Vec::new();
    for _ in 0..4 {
        let config = gateway_store::StoreConfig { max_connections: 4, ..Default::default() };
        replicas.push(gateway_store::Store::connect(&db.url, &config).await.unwrap());
    }
    let runs: Vec<_> = replicas
        .iter()
        .map(
            |store| async move { store.migrate().await.map_err(|e| gateway_core::error_chain(&e)) },
        )
        .collect();
    for result in futures_util::future::join_all(runs).await {
        assert_eq!(result, Ok(()));
    }
    assert_eq!(db.store.pending_migrations().await.unwrap(), 0);
}

/// Raw rows go once their plan's retention has passed: by whole partitions on Postgres (a
/// month's retention class after the month and the class; a month made before classes, and
/// now empty months, whole), row by row on SQLite. The daily rollup keeps the totals, and a
/// second run drops nothing.
#[tokio::test]
async fn expired_usage_goes_by_whole_partitions_and_the_rollup_keeps_the_totals() {
    use gateway_usage::{GroupBy, StatsQuery, UsageQueries, UsageRecord, UsageStore};
    for (backend, method) in insert_methods() {
        let db = TestDb::migrated(backend).await;
        let store = gateway_store::SqlUsageStore::new(db.store.clone()).with_insert_method(method);
        let conn = db.store.connection();
        let now = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let user = gateway_core::UserId::new();
        // A free plan's 7 days, a starter's 30, a custom 45 (kept as 60), an enterprise's 365.
        let records: Vec<UsageRecord> = [7, 30, 45, 365]
            .iter()
            .flat_map(|&days| {
                (0..5).map(move |_| UsageRecord {
                    user_id: user,
                    created_at: now,
                    retention_days: days,
                    ..UsageRecord::example()
                })
            })
            .collect();
        store.insert_batch(&records).await.unwrap();
        let this = migration::partition_name(migration::month_start(now.date(), 0));
        let month_end = migration::month_start(now.date(), 1).midnight().assume_utc();
        let count = || async {
            let row = conn
                .query_one_raw(Statement::from_string(
                    conn.get_database_backend(),
                    "SELECT count(*) AS n FROM usage_logs",
                ))
                .await
                .unwrap()
                .unwrap();
            row.try_get::<i64>("", "n").unwrap()
        };
        if backend == Backend::Postgres {
            let rows = conn
                .query_all_raw(Statement::from_string(
                    conn.get_database_backend(),
                    "SELECT tableoid::regclass::text AS part, retention_days FROM usage_logs",
                ))
                .await
                .unwrap();
            for row in rows {
                let (part, class) = (
                    row.try_get::<String>("", "part").unwrap(),
                    row.try_get::<i32>("", "retention_days").unwrap(),
                );
                assert_eq!(part, format!("{this}_r{class}"), "each row in its class's partition");
                assert!([7, 30, 60, 365].contains(&class), "{class}");
            }
        }
        let stats = || async {
            let q = StatsQuery {
                user_id: user,
                from: now.date(),
                to: now.date().next_day().unwrap(),
                group_by: GroupBy::Day,
            };
            store.stats(&q).await.unwrap()
        };
        let before = stats().await;
        assert_eq!(before.iter().map(|r| r.requests).sum::<u64>(), 20);
        // The log hides a record once its own retention has passed, before its partition goes.
        let logs_at = |at: OffsetDateTime| {
            let store = store.clone();
            async move {
                let q = gateway_usage::LogQuery {
                    user_id: user,
                    before: None,
                    limit: 100,
                    model: None,
                    key_id: None,
                    status: None,
                    retained_at: Some(at),
                };
                store.logs(&q).await.unwrap()
            }
        };
        assert_eq!(logs_at(now).await.len(), 20, "{backend:?}");
        let eight_days_on = logs_at(now + time::Duration::days(8)).await;
        assert_eq!(eight_days_on.len(), 15, "{backend:?}: the 7-day rows are past their retention");
        assert!(eight_days_on.iter().all(|r| r.retention_days > 7));

        assert!(db.store.drop_expired_usage(now).await.unwrap().is_empty(), "nothing yet");
        let week_after = month_end + time::Duration::days(8);
        let dropped = db.store.drop_expired_usage(week_after).await.unwrap();
        match backend {
            Backend::Postgres => {
                assert!(dropped.contains(&format!("{this}_r7")), "{dropped:?}");
                // The classes holding rows stay; the empty ones of the month go.
                let kept = [30, 60, 365].map(|c| format!("{this}_r{c}"));
                assert!(kept.iter().all(|k| !dropped.contains(k)), "{dropped:?}");
                assert!(dropped.contains(&format!("{this}_r3650")), "{dropped:?}");
                // The month's default stays, so a spill replayed later still finds a home.
                assert!(!dropped.contains(&format!("{this}_rother")), "{dropped:?}");
                assert_eq!(count().await, 15, "the 7-day rows went, whole");
            }
            Backend::Sqlite => {
                // Row by row: every row older than its retention, at least the 7-day ones.
                let left = count().await;
                assert!((5..=15).contains(&left), "{left}");
            }
        }
        assert_eq!(stats().await, before, "the rollup keeps the totals");
        assert!(db.store.drop_expired_usage(week_after).await.unwrap().is_empty(), "idempotent");

        // A year and a month on, the longest class has passed too: the month goes whole.
        let later = month_end + time::Duration::days(366);
        let dropped = db.store.drop_expired_usage(later).await.unwrap();
        assert_eq!(count().await, 0, "{backend:?}: {dropped:?}");
        if backend == Backend::Postgres {
            assert!(dropped.contains(&this), "{dropped:?}");
            assert!(!partitions(&db).await.contains(&this));
        }
        assert_eq!(stats().await, before, "the rollup keeps the totals");

        // A month made before retention classes (a plain partition) goes whole after the
        // longest retention of any plan.
        if backend == Backend::Postgres {
            conn.execute_unprepared(
                "CREATE TABLE usage_logs_y2020m01 PARTITION OF usage_logs \
                 FOR VALUES FROM ('2020-01-01 00:00:00+00') TO ('2020-02-01 00:00:00+00')",
            )
            .await
            .unwrap();
            usage_logs::Entity::insert(usage_row(
                uuid::Uuid::now_v7(),
                datetime!(2020-01-15 12:00 UTC),
            ))
            .exec_without_returning(conn)
            .await
            .unwrap();
            let dropped =
                db.store.drop_expired_usage(datetime!(2021-01-30 23:59 UTC)).await.unwrap();
            // 365 days after the month's end (2020 was a leap year).
            assert!(!dropped.contains(&"usage_logs_y2020m01".to_owned()), "not before a year");
            let dropped =
                db.store.drop_expired_usage(datetime!(2021-01-31 00:00 UTC)).await.unwrap();
            assert!(dropped.contains(&"usage_logs_y2020m01".to_owned()), "{dropped:?}");
        }
    }
}

/// Upgrading a database that holds usage: the month with rows stays a plain partition (its
/// rows keep the 365 days given to rows written before retention classes), the empty month
/// ahead is made again by class, and both take new rows.
#[tokio::test]
async fn the_retention_migration_keeps_the_rows_of_a_month_already_written() {
    use migration::MigratorTrait;
    let db = TestDb::empty(Backend::Postgres).await;
    let conn = db.store.connection();
    migration::Migrator::up(conn, Some(8)).await.unwrap();
    let now = OffsetDateTime::now_utc();
    let id = uuid::Uuid::now_v7();
    conn.execute_unprepared(&format!(
        "INSERT INTO usage_logs (request_id, created_at, user_id, endpoint, model, latency_ms, status_code) \
         VALUES ('{id}', now(), gen_random_uuid(), 'chat.completions', 'gpt-4', 5, 200)"
    ))
    .await
    .unwrap();
    db.store.migrate().await.unwrap();
    let kinds = conn
        .query_all_raw(Statement::from_string(
            conn.get_database_backend(),
            "SELECT c.relname::text AS name, c.relkind::text AS kind FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'usage_logs'::regclass \
             ORDER BY 1",
        ))
        .await
        .unwrap();
    let kinds: Vec<(String, String)> = kinds
        .iter()
        .map(|r| (r.try_get("", "name").unwrap(), r.try_get("", "kind").unwrap()))
        .collect();
    let this = migration::partition_name(migration::month_start(now.date(), 0));
    let next = migration::partition_name(migration::month_start(now.date(), 1));
    assert_eq!(kinds, vec![(this, "r".to_owned()), (next, "p".to_owned())]);
    let row = conn
        .query_one_raw(Statement::from_string(
            conn.get_database_backend(),
            format!("SELECT retention_days FROM usage_logs WHERE request_id = '{id}'"),
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get::<i32>("", "retention_days").unwrap(), 365);
    let next_month = migration::month_start(now.date(), 1).midnight().assume_utc();
    for at in [now, next_month] {
        usage_logs::Entity::insert(usage_row(uuid::Uuid::now_v7(), at))
            .exec_without_returning(conn)
            .await
            .unwrap();
    }
}

/// The audit log keeps what is appended, reads it newest first with filters (a user's own
/// events: theirs and those about them), and the database refuses every update and delete.
#[tokio::test]
async fn the_audit_log_is_append_only_and_reads_newest_first() {
    use gateway_auth::audit::{AuditEntry, AuditLog, AuditQuery, Outcome};
    use gateway_core::{RequestId, UserId};
    for backend in backends() {
        let db = TestDb::migrated(backend).await;
        let log = gateway_store::SqlAuditLog::new(db.store.clone());
        let (alice, admin) = (UserId::new(), UserId::new());
        let at = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap();
        let entry =
            |actor: Option<UserId>, action: &str, target: Option<String>, outcome| AuditEntry {
                id: uuid::Uuid::now_v7(),
                at,
                actor_id: actor,
                action: action.to_owned(),
                target,
                outcome,
                status: if outcome == Outcome::Ok { 200 } else { 401 },
                source_ip: Some("10.0.0.1".into()),
                request_id: RequestId::new(),
                detail: None,
            };
        let written = [
            entry(None, "auth.login", Some("email:a@x.co".into()), Outcome::Refused),
            entry(Some(alice), "auth.login", Some("email:a@x.co".into()), Outcome::Ok),
            entry(Some(admin), "admin.user.update", Some(format!("user:{alice}")), Outcome::Ok),
            entry(Some(admin), "admin.price.add", None, Outcome::Ok),
        ];
        for e in &written {
            log.append(e).await.unwrap();
        }
        let all = log.list(&AuditQuery { limit: 10, ..AuditQuery::default() }).await.unwrap();
        let newest_first: Vec<_> = written.iter().rev().cloned().collect();
        assert_eq!(all, newest_first, "{backend:?}");
        let mine = AuditQuery {
            actor_id: Some(alice),
            or_targets: vec!["email:a@x.co".into(), format!("user:{alice}")],
            limit: 10,
            ..AuditQuery::default()
        };
        assert_eq!(log.list(&mine).await.unwrap(), newest_first[1..].to_vec(), "{backend:?}");
        let q =
            AuditQuery { action_prefix: Some("admin.".into()), limit: 10, ..AuditQuery::default() };
        assert_eq!(log.list(&q).await.unwrap().len(), 2);
        let q = AuditQuery { outcome: Some(Outcome::Refused), limit: 10, ..AuditQuery::default() };
        assert_eq!(log.list(&q).await.unwrap(), vec![written[0].clone()]);
        let q = AuditQuery { before: Some(written[2].id), limit: 1, ..AuditQuery::default() };
        assert_eq!(log.list(&q).await.unwrap(), vec![written[1].clone()], "the next page");

        let conn = db.store.connection();
        for sql in ["UPDATE audit_log SET action = 'x'", "DELETE FROM audit_log"] {
            let refused = conn.execute_unprepared(sql).await;
            let err = refused.expect_err(sql).to_string();
            assert!(err.contains("append-only"), "{backend:?}: {err}");
        }
        if backend == Backend::Postgres {
            let err = conn.execute_unprepared("TRUNCATE audit_log").await.unwrap_err().to_string();
            assert!(err.contains("append-only"), "{err}");
        }
        assert_eq!(
            log.list(&AuditQuery { limit: 10, ..AuditQuery::default() }).await.unwrap().len(),
            4
        );
    }
}

/// Keys issued before the completions, responses and messages endpoints existed: one that held
/// every scope gains theirs; one its owner narrowed does not.
#[tokio::test]
async fn keys_that_held_every_scope_gain_the_scopes_of_later_endpoints() {
    use gateway_auth::{Accounts, AccountsConfig, AdminUserUpdate, AuthStores, NewKey};
    use gateway_core::Scope;
    use migration::MigratorTrait;
    for backend in backends() {
        let db = TestDb::empty(backend).await;
        // The schema as it was before migration 15.
        migration::Migrator::up(db.store.connection(), Some(14)).await.unwrap();
        let store = std::sync::Arc::new(gateway_store::SqlAuthStore::new(db.store.clone()));
        let config = AccountsConfig { password_cost: 4, key_cost: 4, ..AccountsConfig::default() };
        let accounts =
            Accounts::new(AuthStores::from(store), b"0123456789abcdef0123456789abcdef", config);
        let user = accounts.signup("scopes@example.com", "correct horse battery", None).await;
        let user = user.unwrap();
        let pro = AdminUserUpdate { tier: Some(Tier::Pro), ..AdminUserUpdate::default() };
        accounts.admin_update_user(gateway_core::UserId::new(), user.id, pro).await.unwrap();
        let old_all = vec![Scope::ChatCompletions, Scope::Embeddings, Scope::Models];
        let all = accounts.create_key(user.id, NewKey::named("all", old_all)).await.unwrap();
        let narrow = vec![Scope::ChatCompletions, Scope::Models];
        let narrow = accounts.create_key(user.id, NewKey::named("narrow", narrow)).await.unwrap();
        db.store.migrate().await.unwrap();
        let keys = accounts.list_keys(user.id).await.unwrap();
        let scopes_of = |id| {
            let mut s: Vec<&str> = keys
                .iter()
                .find(|k| k.id == id)
                .unwrap()
                .scopes
                .iter()
                .map(|s| s.as_str())
                .collect();
            s.sort_unstable();
            s
        };
        assert_eq!(
            scopes_of(all.meta.id),
            ["chat.completions", "completions", "embeddings", "messages", "models", "responses"],
            "{backend:?}"
        );
        assert_eq!(scopes_of(narrow.meta.id), ["chat.completions", "models"], "{backend:?}");

        // A scope a newer build wrote (a rolling upgrade) is left out here, not an error.
        {
            use gateway_store::entity::api_keys;
            use sea_orm::{ColumnTrait, QueryFilter, sea_query::Expr};
            api_keys::Entity::update_many()
                .col_expr(
                    api_keys::Column::Scopes,
                    Expr::value(serde_json::json!(["chat.completions", "from.the.future"])),
                )
                .filter(api_keys::Column::Id.eq(narrow.meta.id.as_uuid()))
                .exec(db.store.connection())
                .await
                .unwrap();
        }
        let keys = accounts.list_keys(user.id).await.unwrap();
        let narrow = keys.iter().find(|k| k.id == narrow.meta.id).unwrap();
        assert_eq!(narrow.scopes, [Scope::ChatCompletions], "{backend:?}");
    }
}
