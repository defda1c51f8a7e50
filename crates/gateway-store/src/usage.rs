//! SQL adapter of the usage store: multi-row inserts that skip records already stored.
//!
//! On Postgres a batch is one statement of fixed text whatever its size (`INSERT ... SELECT *
//! FROM UNNEST($1, ..., $19)`, one array per column): prepared once per connection, where a
//! multi-row `VALUES` list would be new SQL text with 18 parameters a row to build, send, parse
//! and plan for every batch.

use std::sync::Arc;

use async_trait::async_trait;
use gateway_core::{ApiKeyId, RequestId, ServerId, UserId};
use gateway_usage::query::{StatsSample, aggregate};
use gateway_usage::{
    GroupBy, LogQuery, PlatformTotals, StatsQuery, StatsRow, StatusFilter, UsageError,
    UsageQueries, UsageRecord, UsageStore,
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
}

impl SqlUsageStore {
    pub fn new(store: Store) -> Self {
        Self { store }
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
    }
}

#[async_trait]
impl UsageStore for SqlUsageStore {
    async fn insert_batch(&self, records: &[UsageRecord]) -> Result<(), UsageError> {
        if records.is_empty() {
            return Ok(());
        }
        if self.store.backend() == DatabaseBackend::Postgres {
            let pool = self.store.connection().get_postgres_connection_pool();
            return insert_unnest(pool, records).await.map_err(|e| {
                let refused = refuses_data(&e);
                let e = StoreError::Db(sea_orm::DbErr::Exec(sea_orm::RuntimeErr::SqlxError(
                    Arc::new(e),
                )));
                if refused {
                    UsageError::Rejected(Box::new(e))
                } else {
                    UsageError::Store(Box::new(e))
                }
            });
        }
        // The primary key (request_id, created_at) refuses a second copy of a record.
        let result = usage_logs::Entity::insert_many(records.iter().map(row))
            .on_conflict_do_nothing_on([
                usage_logs::Column::RequestId,
                usage_logs::Column::CreatedAt,
            ])
            .exec_without_returning(self.store.connection())
            .await;
        match result {
            Ok(
                TryInsertResult::Inserted(_) | TryInsertResult::Conflicted | TryInsertResult::Empty,
            ) => Ok(()),
            Err(e) => {
                let refused = match &e {
                    sea_orm::DbErr::Exec(sea_orm::RuntimeErr::SqlxError(inner))
                    | sea_orm::DbErr::Query(sea_orm::RuntimeErr::SqlxError(inner)) => {
                        refuses_data(inner)
                    }
                    _ => false,
                };
                if refused {
                    Err(UsageError::Rejected(Box::new(StoreError::Db(e))))
                } else {
                    Err(query_err(e))
                }
            }
        }
    }
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
const INSERT_UNNEST: &str = "INSERT INTO usage_logs (request_id, created_at, user_id, \
    api_key_id, server_id, endpoint, model, prompt_tokens, completion_tokens, total_tokens, \
    cost_micros, latency_ms, upstream_latency_ms, status_code, is_error, error_message, \
    streamed, client_disconnected, usage_estimated) \
    SELECT * FROM UNNEST($1::uuid[], $2::timestamptz[], $3::uuid[], $4::uuid[], $5::uuid[], \
    $6::text[], $7::text[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int4[], \
    $13::int4[], $14::int2[], $15::bool[], $16::text[], $17::bool[], $18::bool[], \
    $19::bool[]) \
    ON CONFLICT (request_id, created_at) DO NOTHING";

async fn insert_unnest(pool: &sqlx::PgPool, records: &[UsageRecord]) -> Result<(), sqlx::Error> {
    fn column<'a, T>(records: &'a [UsageRecord], f: impl Fn(&'a UsageRecord) -> T) -> Vec<T> {
        records.iter().map(f).collect()
    }
    sqlx::query(INSERT_UNNEST)
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
        .execute(pool)
        .await?;
    Ok(())
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
        use usage_logs::Column as C;
        if self.store.backend() == DatabaseBackend::Postgres {
            return self.stats_in_sql(q).await;
        }
        // Embedded SQLite has no percentile function: aggregate the range in process.
        let rows = usage_logs::Entity::find()
            .filter(C::UserId.eq(q.user_id.as_uuid()))
            .filter(C::CreatedAt.gte(q.from))
            .filter(C::CreatedAt.lt(q.to))
            .all(self.store.connection())
            .await
            .map_err(query_err)?;
        let samples = rows.into_iter().map(|r| StatsSample::from(&record_of(r)));
        Ok(aggregate(samples, q.group_by))
    }

    async fn platform(
        &self,
        from: time::OffsetDateTime,
        to: time::OffsetDateTime,
    ) -> Result<PlatformTotals, UsageError> {
        let backend = self.store.backend();
        let (a, b) = if backend == DatabaseBackend::Postgres { ("$1", "$2") } else { ("?", "?") };
        let sql = format!(
            "SELECT count(*) AS requests, CAST(coalesce(sum(total_tokens), 0) AS BIGINT) AS tokens, \
             CAST(coalesce(sum(CASE WHEN is_error THEN 1 ELSE 0 END), 0) AS BIGINT) AS errors, \
             CAST(coalesce(sum(cost_micros), 0) AS BIGINT) AS cost_micros, \
             count(DISTINCT user_id) AS users \
             FROM usage_logs WHERE created_at >= {a} AND created_at < {b}"
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

impl SqlUsageStore {
    /// Postgres: one aggregate query. The range bounds prune the monthly partitions and the
    /// (user_id, created_at) index finds the user's rows; the p95 is nearest-rank, as in
    /// `gateway_usage::query::aggregate`.
    async fn stats_in_sql(&self, q: &StatsQuery) -> Result<Vec<StatsRow>, UsageError> {
        let group = match q.group_by {
            GroupBy::Day => "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
            GroupBy::Model => "model",
            GroupBy::Key => "coalesce(api_key_id::text, 'none')",
        };
        let sql = format!(
            "SELECT {group} AS grp, count(*) AS requests, \
             sum(prompt_tokens)::bigint AS prompt_tokens, sum(completion_tokens)::bigint AS completion_tokens, \
             sum(total_tokens)::bigint AS total_tokens, sum(cost_micros)::bigint AS cost_micros, \
             count(*) FILTER (WHERE is_error) AS errors, avg(latency_ms)::float8 AS avg_latency_ms, \
             percentile_disc(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95_latency_ms \
             FROM usage_logs WHERE user_id = $1 AND created_at >= $2 AND created_at < $3 \
             GROUP BY grp ORDER BY grp"
        );
        let stmt = Statement::from_sql_and_values(
            DatabaseBackend::Postgres,
            sql,
            [q.user_id.as_uuid().into(), q.from.into(), q.to.into()],
        );
        let rows = self.store.connection().query_all_raw(stmt).await.map_err(query_err)?;
        let u = |v: i64| u64::try_from(v).unwrap_or(0);
        rows.iter()
            .map(|r| {
                Ok(StatsRow {
                    group: r.try_get("", "grp")?,
                    requests: u(r.try_get("", "requests")?),
                    prompt_tokens: u(r.try_get("", "prompt_tokens")?),
                    completion_tokens: u(r.try_get("", "completion_tokens")?),
                    total_tokens: u(r.try_get("", "total_tokens")?),
                    cost_micros: r.try_get("", "cost_micros")?,
                    errors: u(r.try_get("", "errors")?),
                    avg_latency_ms: r.try_get("", "avg_latency_ms")?,
                    p95_latency_ms: u32::try_from(r.try_get::<i32>("", "p95_latency_ms")?)
                        .unwrap_or(0),
                })
            })
            .collect::<Result<Vec<_>, sea_orm::DbErr>>()
            .map_err(query_err)
    }
}
