//! SQL adapter of the usage store: multi-row inserts that skip records already stored, and the
//! daily rollup (`usage_daily`) summed from exactly the records that were new, so a retried
//! batch counts nothing twice: in the batch's transaction, or on Postgres with a rollup
//! interval held in memory and written as one upsert per row for many batches, each batch
//! marked in `usage_rollup_pending` (in its transaction) until its sums are written (see
//! [`SqlUsageStore::with_rollup_interval`] and `fold_rollup`).
//!
//! On Postgres a batch goes in by `COPY usage_logs (...) FROM STDIN (FORMAT binary)` (the rows
//! encoded here in PostgreSQL's binary format: nothing to parse but the bytes), then the
//! rollup's upsert from arrays, in one transaction. A batch holding a record stored already (a
//! retry, a replayed spill) fails the copy on the primary key, and goes again as `INSERT ...
//! SELECT * FROM UNNEST($1, ..., $19) ON CONFLICT DO NOTHING` (one array per column; run again
//! with `RETURNING` to learn which records were new). Statements of fixed text, prepared once
//! per connection; `InsertMethod::Unnest` keeps the insert for every batch (both are measured
//! by `cargo bench -p gateway-store --bench usage_writer`). The
//! rollup's rows are upserted in key order, so two instances adding to the same rows lock them
//! in the same order. On SQLite (one writer at a time) the rows are added up in process.

use std::sync::Arc;

use async_trait::async_trait;
use gateway_core::{ApiKeyId, RequestId, ServerId, UserId};
use gateway_usage::rollup::{self, BUCKETS, DayRow};
use gateway_usage::{
    LogQuery, PlatformTotals, StatsQuery, StatsRow, StatusFilter, UsageError, UsageQueries,
    UsageRecord, UsageStore,
};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseBackend, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set, Statement, TryInsertResult,
};

use crate::entity::usage_logs;
use crate::{Store, StoreError};

/// Usage records in Postgres (monthly partitions) or SQLite.
#[derive(Clone, Debug)]
pub struct SqlUsageStore {
    store: Store,
    method: InsertMethod,
    /// Postgres: how long rollup sums are added up in memory before they are written
    /// (`None`: in each batch's transaction).
    interval: Option<std::time::Duration>,
    held: Arc<std::sync::Mutex<Held>>,
}

/// Rollup sums of stored batches, added up in memory until they are written; each batch
/// also has its row in `usage_rollup_pending` until then (see [`SqlUsageStore::fold_rollup`]).
#[derive(Debug, Default)]
struct Held {
    rows: std::collections::BTreeMap<(UserId, time::Date, Option<ApiKeyId>, String), DayRow>,
    /// The batches' `usage_rollup_pending` ids.
    batches: Vec<i64>,
    /// When the oldest sums held were added.
    since: Option<std::time::Instant>,
    /// When pending rows other gateways left were last looked for.
    swept: Option<std::time::Instant>,
    /// Writing the sums failing now (logged once per streak).
    failing: bool,
}

impl Held {
    /// A stored batch's sums, held.
    fn add(&mut self, batch: i64, deltas: Vec<DayRow>) {
        self.put(deltas);
        self.batches.push(batch);
    }

    /// Rows added to those held, by their key.
    fn put(&mut self, rows: Vec<DayRow>) {
        for row in rows {
            let key = (row.user_id, row.day, row.api_key_id, row.model.clone());
            match self.rows.entry(key) {
                std::collections::btree_map::Entry::Occupied(mut e) => e.get_mut().merge(&row),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(row);
                }
            }
        }
        self.since.get_or_insert_with(std::time::Instant::now);
    }
}

/// A batch with at most this many rollup rows writes them in its own transaction even with a
/// rollup interval: that costs no more than its pending row would, and keeps the rollup of a
/// few busy keys as fresh as the log. Holding pays off for batches of many keys.
const INLINE_ROWS: usize = 16;

/// Most rollup rows held before they are written, whatever the interval.
const HELD_ROWS_MAX: usize = 20_000;

/// A pending batch older than this (and [`ORPHAN_INTERVALS`] intervals) is taken as left by a
/// gateway that stopped without writing its sums, and summed from `usage_logs`.
const ORPHAN_AFTER: std::time::Duration = std::time::Duration::from_mins(1);
const ORPHAN_INTERVALS: u32 = 10;

/// How often a gateway looks for such batches.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// How a batch of usage rows goes into Postgres (both are measured by
/// `cargo bench -p gateway-store --bench usage_writer`; docs/BENCHMARKS.md says which won).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InsertMethod {
    /// `INSERT ... SELECT * FROM UNNEST(<one array per column>) ON CONFLICT DO NOTHING`.
    Unnest,
    /// `COPY usage_logs FROM STDIN (FORMAT binary)`; a batch holding a row stored already
    /// (a retry, a replay) fails the copy and goes again by `Unnest`. The default: about a
    /// third less Postgres CPU per row.
    #[default]
    CopyBinary,
}

impl SqlUsageStore {
    pub fn new(store: Store) -> Self {
        Self { store, method: InsertMethod::default(), interval: None, held: Arc::default() }
    }

    /// On Postgres, adds the rollup sums of stored batches up in memory for `interval` and
    /// writes them then, one upsert per rollup row ([`UsageStore::fold_rollup`]); zero: in
    /// each batch's transaction. The rollup (statistics, dashboards) then trails the usage
    /// rows by up to `interval`; invoices write what is pending before they read.
    #[must_use]
    pub fn with_rollup_interval(mut self, interval: std::time::Duration) -> Self {
        self.interval = (!interval.is_zero()).then_some(interval);
        self
    }

    fn deferred(&self) -> Option<std::time::Duration> {
        self.interval.filter(|_| self.store.backend() == DatabaseBackend::Postgres)
    }

    /// How batches go into Postgres (SQLite has one way).
    #[must_use]
    pub fn with_insert_method(mut self, method: InsertMethod) -> Self {
        self.method = method;
        self
    }
}

// The record's unsigned fields in the table's signed columns, saturating (both inserts).
fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn i32_of(v: u32) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn i16_of(v: u16) -> i16 {
    i16::try_from(v).unwrap_or(i16::MAX)
}

fn row(r: &UsageRecord) -> usage_logs::ActiveModel {
    usage_logs::ActiveModel {
        request_id: Set(r.request_id.as_uuid()),
        created_at: Set(r.created_at),
        user_id: Set(r.user_id.as_uuid()),
        api_key_id: Set(r.api_key_id.map(|k| k.as_uuid())),
        server_id: Set(r.server_id.map(|s| s.as_uuid())),
        endpoint: Set(r.endpoint.clone()),
        model: Set(r.model.clone()),
        prompt_tokens: Set(i64_of(r.prompt_tokens)),
        completion_tokens: Set(i64_of(r.completion_tokens)),
        total_tokens: Set(i64_of(r.total_tokens)),
        cost_micros: Set(r.cost_micros),
        latency_ms: Set(i32_of(r.latency_ms)),
        upstream_latency_ms: Set(r.upstream_latency_ms.map(i32_of)),
        status_code: Set(i16_of(r.status_code)),
        is_error: Set(r.is_error),
        error_message: Set(r.error_message.clone()),
        streamed: Set(r.streamed),
        client_disconnected: Set(r.client_disconnected),
        usage_estimated: Set(r.usage_estimated),
        retention_days: Set(retention_of(r)),
    }
}

/// The retention class a record is stored under (its plan's retention, rounded up).
fn retention_of(r: &UsageRecord) -> i32 {
    i32::try_from(migration::retention::retention_class(r.retention_days)).unwrap_or(i32::MAX)
}

#[async_trait]
impl UsageStore for SqlUsageStore {
    async fn insert_batch(&self, records: &[UsageRecord]) -> Result<(), UsageError> {
        if records.is_empty() {
            return Ok(());
        }
        if self.store.backend() == DatabaseBackend::Postgres {
            let pool = self.store.connection().get_postgres_connection_pool();
            let defer = self.deferred().is_some();
            let copied = match self.method {
                InsertMethod::CopyBinary => copy_postgres(pool, records, defer).await,
                InsertMethod::Unnest => Ok(None),
            };
            let inserted = match copied {
                Ok(Some(done)) => Ok(done),
                Ok(None) => insert_postgres(pool, records, defer).await,
                Err(e) => Err(e),
            };
            if let Ok(Some((batch, deltas))) = inserted {
                self.lock_held().add(batch, deltas);
                return Ok(());
            }
            return inserted.map(drop).map_err(|e| {
                let refused = refuses_data(&e);
                let e = StoreError::Db(crate::error::sqlx_db_err(e));
                if refused {
                    UsageError::Rejected(Box::new(e))
                } else {
                    UsageError::Store(Box::new(e))
                }
            });
        }
        insert_sqlite(self.store.connection(), records).await.map_err(|e| {
            let refused = match &e {
                sea_orm::DbErr::Exec(sea_orm::RuntimeErr::SqlxError(inner))
                | sea_orm::DbErr::Query(sea_orm::RuntimeErr::SqlxError(inner)) => {
                    refuses_data(inner)
                }
                _ => false,
            };
            if refused { UsageError::Rejected(Box::new(StoreError::Db(e))) } else { query_err(e) }
        })
    }

    async fn fold_rollup(&self, now: bool) -> Result<(), UsageError> {
        let Some(interval) = self.deferred() else { return Ok(()) };
        let pool = self.store.connection().get_postgres_connection_pool();
        let (rows, batches, sweep) = {
            let mut held = self.lock_held();
            let due = now
                || held.rows.len() >= HELD_ROWS_MAX
                || held.since.is_some_and(|t| t.elapsed() >= interval);
            let sweep = held.swept.is_none_or(|t| t.elapsed() >= SWEEP_EVERY);
            if sweep {
                held.swept = Some(std::time::Instant::now());
            }
            if due {
                held.since = None;
                let rows = std::mem::take(&mut held.rows);
                (rows, std::mem::take(&mut held.batches), sweep)
            } else {
                (std::collections::BTreeMap::new(), Vec::new(), sweep)
            }
        };
        let mut written = Ok(());
        if !batches.is_empty() {
            let rows: Vec<DayRow> = rows.into_values().collect();
            if let Err(e) = write_held(pool, &rows, &batches).await {
                // Held again for the next attempt, an interval from now (a batch whose sums did
                // get written is found gone then, and not counted twice).
                let mut held = self.lock_held();
                held.put(rows);
                held.batches.extend(batches);
                written = Err(e);
            }
        }
        if sweep && written.is_ok() {
            let age = ORPHAN_AFTER.max(interval * ORPHAN_INTERVALS);
            match sum_pending(pool, Pending::OlderThan(age)).await {
                Ok(0) => {}
                Ok(n) => tracing::warn!(
                    batches = n,
                    "usage rollup: summed batches a stopped gateway had not written"
                ),
                Err(e) => written = Err(e),
            }
        }
        let mut held = self.lock_held();
        match written {
            Ok(()) => {
                if std::mem::replace(&mut held.failing, false) {
                    tracing::info!("usage rollup written again");
                }
                Ok(())
            }
            Err(e) => {
                if !std::mem::replace(&mut held.failing, true) {
                    tracing::warn!(error = %e, "cannot write the usage rollup; its sums are held and tried again");
                }
                Err(UsageError::Store(Box::new(StoreError::Db(crate::error::sqlx_db_err(e)))))
            }
        }
    }

    fn rollup_due_in(&self) -> Option<std::time::Duration> {
        let interval = self.deferred()?;
        let held = self.lock_held();
        let sweep = held
            .swept
            .map_or(std::time::Duration::ZERO, |t| SWEEP_EVERY.saturating_sub(t.elapsed()));
        // Sums held: due an interval after the oldest, or at once past the row limit.
        let fold = held.since.map(|t| {
            if held.rows.len() >= HELD_ROWS_MAX {
                std::time::Duration::ZERO
            } else {
                interval.saturating_sub(t.elapsed())
            }
        });
        Some(fold.map_or(sweep, |f| f.min(sweep)))
    }
}

impl SqlUsageStore {
    /// Sums every pending batch into the rollup (those other gateways hold too, which drop
    /// them when they find them gone), waiting for batches being written; returns how many it
    /// summed. Invoices call it before they read the rollup.
    pub async fn sum_pending_batches(&self) -> Result<u64, StoreError> {
        sum_all_pending(&self.store).await
    }

    fn lock_held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The key the rollup stores for requests without one (its key column is part of the primary
/// key, so it cannot be NULL).
const NO_KEY: uuid::Uuid = uuid::Uuid::nil();

/// SQLite: each record inserted unless stored already, then the new ones added to their
/// rollup rows, in one transaction.
async fn insert_sqlite(
    db: &sea_orm::DatabaseConnection,
    records: &[UsageRecord],
) -> Result<(), sea_orm::DbErr> {
    use sea_orm::TransactionTrait as _;
    let txn = db.begin().await?;
    let mut new = Vec::with_capacity(records.len());
    for r in records {
        // The primary key (request_id, created_at) refuses a second copy of a record.
        let inserted = usage_logs::Entity::insert(row(r))
            .on_conflict_do_nothing_on([
                usage_logs::Column::RequestId,
                usage_logs::Column::CreatedAt,
            ])
            .exec_without_returning(&txn)
            .await?;
        if matches!(inserted, TryInsertResult::Inserted(n) if n > 0) {
            new.push(r);
        }
    }
    for delta in rollup::rollup(new) {
        let key = delta.api_key_id.map_or(NO_KEY, |k| k.as_uuid());
        let select = Statement::from_sql_and_values(
            DatabaseBackend::Sqlite,
            format!(
                "SELECT {DAY_COLUMNS} FROM usage_daily WHERE user_id = ? AND day = ? AND api_key_id = ? AND model = ?"
            ),
            [
                delta.user_id.as_uuid().into(),
                delta.day.into(),
                key.into(),
                delta.model.clone().into(),
            ],
        );
        let mut row = match txn.query_one_raw(select).await? {
            Some(found) => day_row(&found, DatabaseBackend::Sqlite)?,
            None => DayRow { requests: 0, ..delta.clone() },
        };
        if row.requests == 0 {
            row = delta;
        } else {
            row.merge(&delta);
        }
        let hist = row.latency_hist.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
        let upsert = Statement::from_sql_and_values(
            DatabaseBackend::Sqlite,
            "INSERT OR REPLACE INTO usage_daily (user_id, day, api_key_id, model, requests, errors, \
             prompt_tokens, completion_tokens, total_tokens, cost_micros, latency_ms_sum, \
             latency_ms_max, latency_hist) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                row.user_id.as_uuid().into(),
                row.day.into(),
                key.into(),
                row.model.clone().into(),
                i64_of(row.requests).into(),
                i64_of(row.errors).into(),
                i64_of(row.prompt_tokens).into(),
                i64_of(row.completion_tokens).into(),
                i64_of(row.total_tokens).into(),
                row.cost_micros.into(),
                i64_of(row.latency_ms_sum).into(),
                i64::from(row.latency_ms_max).into(),
                hist.into(),
            ],
        );
        txn.execute_raw(upsert).await?;
    }
    txn.commit().await
}

/// The rollup's columns, in the order [`day_row`] reads them.
const DAY_COLUMNS: &str = "user_id, day, api_key_id, model, requests, errors, prompt_tokens, \
    completion_tokens, total_tokens, cost_micros, latency_ms_sum, latency_ms_max, latency_hist";

/// A rollup row as the domain has it (the histogram is an array on Postgres, comma-separated
/// text on SQLite).
fn day_row(r: &sea_orm::QueryResult, backend: DatabaseBackend) -> Result<DayRow, sea_orm::DbErr> {
    let u = |name: &str| r.try_get::<i64>("", name).map(|v| u64::try_from(v).unwrap_or(0));
    let hist: Vec<u64> = if backend == DatabaseBackend::Postgres {
        let v: Vec<i64> = r.try_get("", "latency_hist")?;
        v.into_iter().map(|c| u64::try_from(c).unwrap_or(0)).collect()
    } else {
        let text: String = r.try_get("", "latency_hist")?;
        text.split(',').map(|c| c.trim().parse().unwrap_or(0)).collect()
    };
    let key: uuid::Uuid = r.try_get("", "api_key_id")?;
    let mut latency_hist = hist;
    latency_hist.resize(BUCKETS, 0);
    Ok(DayRow {
        user_id: UserId(r.try_get("", "user_id")?),
        day: r.try_get("", "day")?,
        api_key_id: (key != NO_KEY).then_some(ApiKeyId(key)),
        model: r.try_get("", "model")?,
        requests: u("requests")?,
        errors: u("errors")?,
        prompt_tokens: u("prompt_tokens")?,
        completion_tokens: u("completion_tokens")?,
        total_tokens: u("total_tokens")?,
        cost_micros: r.try_get("", "cost_micros")?,
        latency_ms_sum: u("latency_ms_sum")?,
        latency_ms_max: u32::try_from(r.try_get::<i32>("", "latency_ms_max")?).unwrap_or(0),
        latency_hist,
    })
}

/// Whether the database refused the data itself (so the same records fail again however often
/// they are sent), not failed to run the statement: Postgres's SQLSTATE classes 22 (data
/// exception, e.g. a NUL in text) and 23 (integrity constraint), or a constraint on SQLite.
fn refuses_data(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => match db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        {
            Some(pg) => pg.code().starts_with("22") || pg.code().starts_with("23"),
            None => !matches!(db.kind(), sqlx::error::ErrorKind::Other),
        },
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

/// The Postgres batch insert; the primary key (request_id, created_at) refuses a second copy
/// of a record.
macro_rules! insert_unnest {
    () => {
        "INSERT INTO usage_logs (request_id, created_at, user_id, \
    api_key_id, server_id, endpoint, model, prompt_tokens, completion_tokens, total_tokens, \
    cost_micros, latency_ms, upstream_latency_ms, status_code, is_error, error_message, \
    streamed, client_disconnected, usage_estimated, retention_days) \
    SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::uuid[], $4::uuid[], $5::uuid[], \
    $6::text[], $7::text[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int4[], \
    $13::int4[], $14::int2[], $15::bool[], $16::text[], $17::bool[], $18::bool[], \
    $19::bool[], $20::int4[]) \
    ON CONFLICT (request_id, created_at, retention_days) DO NOTHING"
    };
}
const INSERT_UNNEST: &str = insert_unnest!();
/// The same, saying which records were new (for a batch that held some stored already).
const INSERT_UNNEST_RETURNING: &str =
    concat!(insert_unnest!(), " RETURNING request_id, created_at");

/// The rollup's upsert on Postgres: the new records' sums added to their rows.
/// The rollup's upsert: one row per delta, the histograms sent as one flat `int8[]` of
/// [`BUCKETS`] counts per row and sliced by the row's ordinal (no text to format and parse).
static UPSERT_DAILY: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "INSERT INTO usage_daily (user_id, day, api_key_id, model, \
         requests, errors, prompt_tokens, completion_tokens, total_tokens, cost_micros, \
         latency_ms_sum, latency_ms_max, latency_hist) \
         SELECT u, d, k, m, r, e, pt, ct, tt, c, ls, mx, \
         ($13::int8[])[(i - 1) * {BUCKETS} + 1 : i * {BUCKETS}] \
         FROM UNNEST($1::uuid[], $2::date[], $3::uuid[], $4::text[], $5::int8[], $6::int8[], \
         $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int4[]) \
         WITH ORDINALITY AS t(u, d, k, m, r, e, pt, ct, tt, c, ls, mx, i) \
         ON CONFLICT (user_id, day, api_key_id, model) DO UPDATE SET \
         requests = usage_daily.requests + excluded.requests, \
         errors = usage_daily.errors + excluded.errors, \
         prompt_tokens = usage_daily.prompt_tokens + excluded.prompt_tokens, \
         completion_tokens = usage_daily.completion_tokens + excluded.completion_tokens, \
         total_tokens = usage_daily.total_tokens + excluded.total_tokens, \
         cost_micros = usage_daily.cost_micros + excluded.cost_micros, \
         latency_ms_sum = usage_daily.latency_ms_sum + excluded.latency_ms_sum, \
         latency_ms_max = greatest(usage_daily.latency_ms_max, excluded.latency_ms_max), \
         latency_hist = bm_hist_add(usage_daily.latency_hist, excluded.latency_hist)"
    )
});

/// The columns of a usage row, in the order both inserts send them.
const COLUMNS: &str = "request_id, created_at, user_id, api_key_id, server_id, endpoint, model, \
    prompt_tokens, completion_tokens, total_tokens, cost_micros, latency_ms, upstream_latency_ms, \
    status_code, is_error, error_message, streamed, client_disconnected, usage_estimated, \
    retention_days";

/// A stored batch's rollup sums left to be held in memory, with its `usage_rollup_pending`
/// row (`None`: they were written in the batch's transaction).
type Deferred = Option<(i64, Vec<DayRow>)>;

/// Postgres by `COPY ... FROM STDIN (FORMAT binary)`, then the rollup (or, `defer`, the
/// batch's pending row), in one transaction. `Ok(None)`: some record was stored already (a
/// retry or a replay); nothing was written and the caller goes the `ON CONFLICT` way.
async fn copy_postgres(
    pool: &sqlx::PgPool,
    records: &[UsageRecord],
    defer: bool,
) -> Result<Option<Deferred>, sqlx::Error> {
    let mut txn = pool.begin().await?;
    let statement = format!("COPY usage_logs ({COLUMNS}) FROM STDIN (FORMAT binary)");
    let mut copy = txn.copy_in_raw(&statement).await?;
    copy.send(copy_binary(records)).await?;
    match copy.finish().await {
        Ok(_) => {}
        Err(sqlx::Error::Database(db)) if db.is_unique_violation() => return Ok(None),
        Err(e) => return Err(e),
    }
    let deferred = rollup_in(&mut txn, records.iter(), defer).await?;
    txn.commit().await?;
    Ok(Some(deferred))
}

/// The new records' rollup sums upserted, or (`defer`) the batch's pending row written and
/// the sums returned to be held.
async fn rollup_in<'a>(
    txn: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    new: impl Iterator<Item = &'a UsageRecord> + Clone,
    defer: bool,
) -> Result<Deferred, sqlx::Error> {
    let deltas = rollup::rollup(new.clone());
    if !defer || deltas.len() <= INLINE_ROWS {
        upsert_rollup(txn, &deltas).await?;
        return Ok(None);
    }
    let ids: Vec<uuid::Uuid> = new.clone().map(|r| r.request_id.as_uuid()).collect();
    let first = new.clone().map(|r| r.created_at).min();
    let last = new.map(|r| r.created_at).max();
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO usage_rollup_pending (request_ids, first_at, last_at) \
         VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(ids)
    .bind(first)
    .bind(last)
    .fetch_one(&mut **txn)
    .await?;
    Ok(Some((id, deltas)))
}

/// Rows in PostgreSQL's binary COPY format: the header, then per row the field count and each
/// field as its length (-1: NULL) and its bytes in network order, then the trailer.
fn copy_binary(records: &[UsageRecord]) -> Vec<u8> {
    /// Microseconds from the Unix epoch to Postgres's, 2000-01-01.
    const PG_EPOCH_US: i128 = 946_684_800_000_000;
    let mut out = Vec::with_capacity(19 + records.len() * 270);
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&[0; 8]); // flags, header extension length
    let field = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    let null = |out: &mut Vec<u8>| out.extend_from_slice(&(-1i32).to_be_bytes());
    for r in records {
        out.extend_from_slice(&20i16.to_be_bytes());
        field(&mut out, r.request_id.as_uuid().as_bytes());
        let us = r.created_at.unix_timestamp_nanos() / 1000 - PG_EPOCH_US;
        field(&mut out, &(us as i64).to_be_bytes());
        field(&mut out, r.user_id.as_uuid().as_bytes());
        match r.api_key_id {
            Some(k) => field(&mut out, k.as_uuid().as_bytes()),
            None => null(&mut out),
        }
        match r.server_id {
            Some(s) => field(&mut out, s.as_uuid().as_bytes()),
            None => null(&mut out),
        }
        field(&mut out, r.endpoint.as_bytes());
        field(&mut out, r.model.as_bytes());
        for n in [r.prompt_tokens, r.completion_tokens, r.total_tokens] {
            field(&mut out, &i64_of(n).to_be_bytes());
        }
        field(&mut out, &r.cost_micros.to_be_bytes());
        field(&mut out, &i32_of(r.latency_ms).to_be_bytes());
        match r.upstream_latency_ms {
            Some(ms) => field(&mut out, &i32_of(ms).to_be_bytes()),
            None => null(&mut out),
        }
        field(&mut out, &i16_of(r.status_code).to_be_bytes());
        field(&mut out, &[u8::from(r.is_error)]);
        match &r.error_message {
            Some(m) => field(&mut out, m.as_bytes()),
            None => null(&mut out),
        }
        for b in [r.streamed, r.client_disconnected, r.usage_estimated] {
            field(&mut out, &[u8::from(b)]);
        }
        field(&mut out, &retention_of(r).to_be_bytes());
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// Postgres: the batch inserted, then the records that were new added to the rollup (or held,
/// `defer`), in one transaction.
async fn insert_postgres(
    pool: &sqlx::PgPool,
    records: &[UsageRecord],
    defer: bool,
) -> Result<Deferred, sqlx::Error> {
    use sqlx::Row as _;
    let mut txn = pool.begin().await?;
    let inserted = bind_records(sqlx::query(INSERT_UNNEST), records).execute(&mut *txn).await?;
    // Every record new (the common case): all of them go to the rollup. Otherwise (a retried
    // batch, a replayed spill), insert again asking which rows were new.
    let deferred = if inserted.rows_affected() == records.len() as u64 {
        rollup_in(&mut txn, records.iter(), defer).await?
    } else {
        txn.rollback().await?;
        txn = pool.begin().await?;
        let rows = bind_records(sqlx::query(INSERT_UNNEST_RETURNING), records)
            .fetch_all(&mut *txn)
            .await?;
        let new: std::collections::HashSet<(uuid::Uuid, time::OffsetDateTime)> = rows
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        let new_records =
            records.iter().filter(|r| new.contains(&(r.request_id.as_uuid(), r.created_at)));
        rollup_in(&mut txn, new_records, defer).await?
    };
    txn.commit().await?;
    Ok(deferred)
}

/// Which pending batches [`sum_pending`] sums from `usage_logs`.
enum Pending<'a> {
    /// These (a gateway's own, after another took some of them).
    Ids(&'a [i64]),
    /// Left longer than this (by a gateway that stopped without writing its sums); skips
    /// batches another gateway is writing.
    OlderThan(std::time::Duration),
    /// All of them, waiting for batches being written (before an invoice reads the rollup).
    All,
}

/// Writes `rows` (the held sums of `batches`, in key order) and deletes the batches' pending
/// rows, in one transaction. If another gateway (or a rollup rebuild) has taken some of the
/// batches, the held sums are dropped and what is left of the batches summed from
/// `usage_logs`, so none is counted twice.
async fn write_held(
    pool: &sqlx::PgPool,
    rows: &[DayRow],
    batches: &[i64],
) -> Result<(), sqlx::Error> {
    let mut txn = pool.begin().await?;
    let deleted = sqlx::query("DELETE FROM usage_rollup_pending WHERE id = ANY($1)")
        .bind(batches)
        .execute(&mut *txn)
        .await?
        .rows_affected();
    if deleted == batches.len() as u64 {
        upsert_rollup(&mut txn, rows).await?;
        return txn.commit().await;
    }
    txn.rollback().await?;
    tracing::info!(
        batches = batches.len(),
        found = deleted,
        "usage rollup: some held batches were summed elsewhere; summing the rest from usage_logs"
    );
    sum_pending(pool, Pending::Ids(batches)).await.map(drop)
}

/// Sums pending batches from the `usage_logs` rows they name into the rollup, deleting their
/// pending rows in the same transaction; returns how many batches it summed.
async fn sum_pending(pool: &sqlx::PgPool, which: Pending<'_>) -> Result<u64, sqlx::Error> {
    use sqlx::Row as _;
    let mut summed = 0;
    loop {
        let mut txn = pool.begin().await?;
        // A chunk of pending batches taken (deleted), their contents returned.
        macro_rules! take {
            ($filter:literal, $lock:literal) => {
                concat!(
                    "DELETE FROM usage_rollup_pending WHERE id IN (SELECT id FROM ",
                    "usage_rollup_pending WHERE ",
                    $filter,
                    " ORDER BY id LIMIT 100 FOR UPDATE",
                    $lock,
                    ") RETURNING request_ids, first_at, last_at"
                )
            };
        }
        let taken = match which {
            Pending::Ids(ids) => {
                sqlx::query(take!("id = ANY($1)", "")).bind(ids).fetch_all(&mut *txn).await?
            }
            Pending::OlderThan(age) => {
                sqlx::query(take!("created_at < now() - make_interval(secs => $1)", " SKIP LOCKED"))
                    .bind(age.as_secs_f64())
                    .fetch_all(&mut *txn)
                    .await?
            }
            Pending::All => sqlx::query(take!("true", "")).fetch_all(&mut *txn).await?,
        };
        if taken.is_empty() {
            txn.commit().await?;
            return Ok(summed);
        }
        // The chunk's usage rows in one read: its request ids, within its time range.
        let (mut ids, mut first, mut last) = (Vec::<uuid::Uuid>::new(), None, None);
        for batch in &taken {
            ids.extend(batch.try_get::<Vec<uuid::Uuid>, _>(0)?);
            let (a, b): (time::OffsetDateTime, time::OffsetDateTime) =
                (batch.try_get(1)?, batch.try_get(2)?);
            first = Some(first.map_or(a, |f| Ord::min(f, a)));
            last = Some(last.map_or(b, |l| Ord::max(l, b)));
        }
        let rows = sqlx::query(
            "SELECT user_id, created_at, api_key_id, model, is_error, prompt_tokens, \
             completion_tokens, total_tokens, cost_micros, latency_ms FROM usage_logs \
             WHERE request_id = ANY($1) AND created_at BETWEEN $2 AND $3",
        )
        .bind(&ids)
        .bind(first)
        .bind(last)
        .fetch_all(&mut *txn)
        .await?;
        let records = rows.iter().map(summed_record).collect::<Result<Vec<_>, _>>()?;
        upsert_rollup(&mut txn, &rollup::rollup(&records)).await?;
        txn.commit().await?;
        summed += taken.len() as u64;
    }
}

/// A stored usage row as a record, with what the rollup sums (the rest left empty).
fn summed_record(row: &sqlx::postgres::PgRow) -> Result<UsageRecord, sqlx::Error> {
    use sqlx::Row as _;
    let u = |name: &str| row.try_get::<i64, _>(name).map(|v| u64::try_from(v).unwrap_or(0));
    Ok(UsageRecord {
        request_id: RequestId(uuid::Uuid::nil()),
        created_at: row.try_get("created_at")?,
        user_id: UserId(row.try_get("user_id")?),
        api_key_id: row.try_get::<Option<uuid::Uuid>, _>("api_key_id")?.map(ApiKeyId),
        server_id: None,
        endpoint: String::new(),
        model: row.try_get("model")?,
        prompt_tokens: u("prompt_tokens")?,
        completion_tokens: u("completion_tokens")?,
        total_tokens: u("total_tokens")?,
        cost_micros: row.try_get("cost_micros")?,
        latency_ms: u32::try_from(row.try_get::<i32, _>("latency_ms")?).unwrap_or(0),
        upstream_latency_ms: None,
        status_code: 0,
        is_error: row.try_get("is_error")?,
        error_message: None,
        streamed: false,
        client_disconnected: false,
        usage_estimated: false,
        retention_days: 0,
    })
}

/// Sums every pending batch into the rollup, waiting for those being written (Postgres; the
/// other backends hold none): what an invoice reads is then complete.
pub(crate) async fn sum_all_pending(store: &Store) -> Result<u64, StoreError> {
    if store.backend() != DatabaseBackend::Postgres {
        return Ok(0);
    }
    sum_pending(store.connection().get_postgres_connection_pool(), Pending::All)
        .await
        .map_err(|e| StoreError::Db(crate::error::sqlx_db_err(e)))
}

/// Most rollup rows one upsert statement carries: a connection keeps a buffer as large as the
/// largest statement it sent (tens of thousands of held rows in one statement grew every
/// pooled connection's buffer by megabytes).
const UPSERT_ROWS: usize = 1_000;

/// The rollup's rows of the new records added to `usage_daily` (in key order, by statements
/// of at most [`UPSERT_ROWS`] rows).
async fn upsert_rollup(
    txn: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    deltas: &[DayRow],
) -> Result<(), sqlx::Error> {
    for part in deltas.chunks(UPSERT_ROWS) {
        upsert_rows(txn, part).await?;
    }
    Ok(())
}

async fn upsert_rows(
    txn: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    deltas: &[DayRow],
) -> Result<(), sqlx::Error> {
    fn column<T>(rows: &[DayRow], f: impl Fn(&DayRow) -> T) -> Vec<T> {
        rows.iter().map(f).collect()
    }
    // Every row's histogram, exactly BUCKETS counts each (the slices the upsert takes).
    let mut hists = Vec::with_capacity(deltas.len() * BUCKETS);
    for r in deltas {
        let counts = r.latency_hist.iter().copied().chain(std::iter::repeat(0)).take(BUCKETS);
        hists.extend(counts.map(i64_of));
    }
    sqlx::query(UPSERT_DAILY.as_str())
        .bind(column(deltas, |r| r.user_id.as_uuid()))
        .bind(column(deltas, |r| r.day))
        .bind(column(deltas, |r| r.api_key_id.map_or(NO_KEY, |k| k.as_uuid())))
        .bind(column(deltas, |r| r.model.clone()))
        .bind(column(deltas, |r| i64_of(r.requests)))
        .bind(column(deltas, |r| i64_of(r.errors)))
        .bind(column(deltas, |r| i64_of(r.prompt_tokens)))
        .bind(column(deltas, |r| i64_of(r.completion_tokens)))
        .bind(column(deltas, |r| i64_of(r.total_tokens)))
        .bind(column(deltas, |r| r.cost_micros))
        .bind(column(deltas, |r| i64_of(r.latency_ms_sum)))
        .bind(column(deltas, |r| i32_of(r.latency_ms_max)))
        .bind(hists)
        .execute(&mut **txn)
        .await?;
    Ok(())
}

/// `query` (one of the batch inserts) with the records' 20 column arrays bound.
fn bind_records<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    records: &'q [UsageRecord],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    fn column<'a, T>(records: &'a [UsageRecord], f: impl Fn(&'a UsageRecord) -> T) -> Vec<T> {
        records.iter().map(f).collect()
    }
    query
        .bind(column(records, |r| r.request_id.as_uuid()))
        .bind(column(records, |r| r.created_at))
        .bind(column(records, |r| r.user_id.as_uuid()))
        .bind(column(records, |r| r.api_key_id.map(|k| k.as_uuid())))
        .bind(column(records, |r| r.server_id.map(|s| s.as_uuid())))
        .bind(column(records, |r| r.endpoint.as_str()))
        .bind(column(records, |r| r.model.as_str()))
        .bind(column(records, |r| i64_of(r.prompt_tokens)))
        .bind(column(records, |r| i64_of(r.completion_tokens)))
        .bind(column(records, |r| i64_of(r.total_tokens)))
        .bind(column(records, |r| r.cost_micros))
        .bind(column(records, |r| i32_of(r.latency_ms)))
        .bind(column(records, |r| r.upstream_latency_ms.map(i32_of)))
        .bind(column(records, |r| i16_of(r.status_code)))
        .bind(column(records, |r| r.is_error))
        .bind(column(records, |r| r.error_message.as_deref()))
        .bind(column(records, |r| r.streamed))
        .bind(column(records, |r| r.client_disconnected))
        .bind(column(records, |r| r.usage_estimated))
        .bind(column(records, retention_of))
}

fn record_of(row: usage_logs::Model) -> UsageRecord {
    let u64_of = |v: i64| u64::try_from(v).unwrap_or(0);
    UsageRecord {
        request_id: RequestId(row.request_id),
        created_at: row.created_at,
        user_id: UserId(row.user_id),
        api_key_id: row.api_key_id.map(ApiKeyId),
        server_id: row.server_id.map(ServerId),
        endpoint: row.endpoint,
        model: row.model,
        prompt_tokens: u64_of(row.prompt_tokens),
        completion_tokens: u64_of(row.completion_tokens),
        total_tokens: u64_of(row.total_tokens),
        cost_micros: row.cost_micros,
        latency_ms: u32::try_from(row.latency_ms).unwrap_or(0),
        upstream_latency_ms: row.upstream_latency_ms.map(|v| u32::try_from(v).unwrap_or(0)),
        status_code: u16::try_from(row.status_code).unwrap_or(0),
        is_error: row.is_error,
        error_message: row.error_message,
        streamed: row.streamed,
        client_disconnected: row.client_disconnected,
        usage_estimated: row.usage_estimated,
        retention_days: u32::try_from(row.retention_days)
            .unwrap_or(gateway_usage::DEFAULT_RETENTION_DAYS),
    }
}

fn query_err(e: sea_orm::DbErr) -> UsageError {
    UsageError::Store(Box::new(StoreError::Db(e)))
}

#[async_trait]
impl UsageQueries for SqlUsageStore {
    async fn logs(&self, q: &LogQuery) -> Result<Vec<UsageRecord>, UsageError> {
        use usage_logs::Column as C;
        let mut select = usage_logs::Entity::find().filter(C::UserId.eq(q.user_id.as_uuid()));
        if let Some((t, id)) = q.before {
            // Keyset as a row comparison, so the index seeks straight to the page:
            // (created_at, request_id) < (t, id). The redundant bound on created_at alone lets
            // Postgres prune the monthly partitions after the cursor.
            let row = Expr::tuple([Expr::col(C::CreatedAt), Expr::col(C::RequestId)]);
            let cursor = Expr::tuple([Expr::value(t), Expr::value(id.as_uuid())]);
            select = select.filter(row.lt(cursor)).filter(C::CreatedAt.lte(t));
        }
        if let Some(now) = q.retained_at {
            // The record's own retention, so what a user sees ends with it, whenever its
            // partition goes.
            let kept = if self.store.backend() == DatabaseBackend::Postgres {
                Expr::cust_with_values(
                    "created_at >= $1::timestamptz - make_interval(days => retention_days)",
                    [now],
                )
            } else {
                Expr::cust_with_values(
                    "julianday(created_at) + retention_days >= julianday(?)",
                    [now],
                )
            };
            select = select.filter(kept);
        }
        if let Some(m) = &q.model {
            select = select.filter(C::Model.eq(m.as_str()));
        }
        if let Some(k) = q.key_id {
            select = select.filter(C::ApiKeyId.eq(k.as_uuid()));
        }
        select = match q.status {
            Some(StatusFilter::Success) => select.filter(C::IsError.eq(false)),
            Some(StatusFilter::Error) => select.filter(C::IsError.eq(true)),
            Some(StatusFilter::Code(c)) => {
                select.filter(C::StatusCode.eq(i16::try_from(c).unwrap_or(i16::MAX)))
            }
            None => select,
        };
        let rows = select
            .order_by_desc(C::CreatedAt)
            .order_by_desc(C::RequestId)
            .limit(u64::from(q.limit))
            .all(self.store.connection())
            .await
            .map_err(query_err)?;
        Ok(rows.into_iter().map(record_of).collect())
    }

    async fn stats(&self, q: &StatsQuery) -> Result<Vec<StatsRow>, UsageError> {
        let backend = self.store.backend();
        let (a, b, c) =
            if backend == DatabaseBackend::Postgres { ("$1", "$2", "$3") } else { ("?", "?", "?") };
        let sql = format!(
            "SELECT {DAY_COLUMNS} FROM usage_daily WHERE user_id = {a} AND day >= {b} AND day < {c}"
        );
        let stmt = Statement::from_sql_and_values(
            backend,
            sql,
            [q.user_id.as_uuid().into(), q.from.into(), q.to.into()],
        );
        let rows = self.store.connection().query_all_raw(stmt).await.map_err(query_err)?;
        let rows = rows
            .iter()
            .map(|r| day_row(r, backend))
            .collect::<Result<Vec<_>, _>>()
            .map_err(query_err)?;
        Ok(rollup::stats(&rows, q.group_by))
    }

    async fn platform(
        &self,
        from: time::Date,
        to: time::Date,
    ) -> Result<PlatformTotals, UsageError> {
        let backend = self.store.backend();
        let (a, b) = if backend == DatabaseBackend::Postgres { ("$1", "$2") } else { ("?", "?") };
        let sql = format!(
            "SELECT CAST(coalesce(sum(requests), 0) AS BIGINT) AS requests, \
             CAST(coalesce(sum(total_tokens), 0) AS BIGINT) AS tokens, \
             CAST(coalesce(sum(errors), 0) AS BIGINT) AS errors, \
             CAST(coalesce(sum(cost_micros), 0) AS BIGINT) AS cost_micros, \
             count(DISTINCT user_id) AS users \
             FROM usage_daily WHERE day >= {a} AND day < {b}"
        );
        let stmt = Statement::from_sql_and_values(backend, sql, [from.into(), to.into()]);
        let row = self.store.connection().query_one_raw(stmt).await.map_err(query_err)?;
        let Some(r) = row else { return Ok(PlatformTotals::default()) };
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        let get = |name: &str| r.try_get::<i64>("", name).map_err(query_err);
        Ok(PlatformTotals {
            requests: u(get("requests")?),
            tokens: u(get("tokens")?),
            errors: u(get("errors")?),
            cost_micros: get("cost_micros")?,
            users: u(get("users")?),
        })
    }
}
