//! SQL adapter of the durable quota store (`rate_limit_state`): the mirror of the Redis quota
//! counters, and the exact counter itself while Redis is unreachable.

use async_trait::async_trait;
use gateway_core::{ApiKeyId, Limits};
use gateway_ratelimit::{Period, QuotaStore, QuotaStoreError, QuotaUsage, Window};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, Set, TransactionTrait,
};
use time::{Date, OffsetDateTime};

use crate::entity::rate_limit_state::{self, Column};
use crate::{Store, StoreError};

/// Quota counters in Postgres or SQLite.
#[derive(Clone, Debug)]
pub struct SqlQuotaStore {
    store: Store,
}

impl SqlQuotaStore {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn err(e: sea_orm::DbErr) -> QuotaStoreError {
    QuotaStoreError(Box::new(StoreError::Db(e)))
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn row(key: ApiKeyId, period: Period, start: Date, used: u64) -> rate_limit_state::ActiveModel {
    rate_limit_state::ActiveModel {
        api_key_id: Set(key.as_uuid()),
        window_kind: Set(period.as_str().to_owned()),
        window_start: Set(start),
        used_tokens: Set(i64_of(used)),
        updated_at: Set(OffsetDateTime::now_utc()),
    }
}

fn the(key: ApiKeyId, period: Period, start: Date) -> Condition {
    Condition::all()
        .add(Column::ApiKeyId.eq(key.as_uuid()))
        .add(Column::WindowKind.eq(period.as_str()))
        .add(Column::WindowStart.eq(start))
}

/// `used_tokens = used_tokens + n WHERE used_tokens + n <= limit`: true when it counted.
async fn add_within(
    db: &impl ConnectionTrait,
    counter: Condition,
    tokens: u64,
    limit: u64,
) -> Result<bool, sea_orm::DbErr> {
    let n = i64_of(tokens);
    let result = rate_limit_state::Entity::update_many()
        .col_expr(Column::UsedTokens, Expr::col(Column::UsedTokens).add(n))
        .col_expr(Column::UpdatedAt, Expr::value(OffsetDateTime::now_utc()))
        .filter(counter)
        .filter(Expr::col(Column::UsedTokens).add(n).lte(i64_of(limit)))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

#[async_trait]
impl QuotaStore for SqlQuotaStore {
    async fn try_consume(
        &self,
        key: ApiKeyId,
        day: Date,
        month: Date,
        tokens: u64,
        limits: &Limits,
    ) -> Result<Option<Window>, QuotaStoreError> {
        let txn = self.store.connection().begin().await.map_err(err)?;
        rate_limit_state::Entity::insert_many([
            row(key, Period::Day, day, 0),
            row(key, Period::Month, month, 0),
        ])
        .on_conflict_do_nothing_on([Column::ApiKeyId, Column::WindowKind, Column::WindowStart])
        .exec_without_returning(&txn)
        .await
        .map_err(err)?;
        // Row locks make the two conditional updates exact across processes; the same order
        // everywhere (day, then month) keeps them from deadlocking.
        if !add_within(&txn, the(key, Period::Day, day), tokens, limits.daily_tokens)
            .await
            .map_err(err)?
        {
            txn.rollback().await.map_err(err)?;
            return Ok(Some(Window::TokensPerDay));
        }
        if !add_within(&txn, the(key, Period::Month, month), tokens, limits.monthly_tokens)
            .await
            .map_err(err)?
        {
            txn.rollback().await.map_err(err)?;
            return Ok(Some(Window::TokensPerMonth));
        }
        txn.commit().await.map_err(err)?;
        Ok(None)
    }

    async fn adjust(
        &self,
        key: ApiKeyId,
        day: Date,
        month: Date,
        delta: i64,
    ) -> Result<(), QuotaStoreError> {
        let adjusted = Expr::case(Expr::col(Column::UsedTokens).add(delta).lt(0), 0)
            .finally(Expr::col(Column::UsedTokens).add(delta));
        rate_limit_state::Entity::update_many()
            .col_expr(Column::UsedTokens, adjusted.into())
            .col_expr(Column::UpdatedAt, Expr::value(OffsetDateTime::now_utc()))
            .filter(Condition::any().add(the(key, Period::Day, day)).add(the(
                key,
                Period::Month,
                month,
            )))
            .exec(self.store.connection())
            .await
            .map_err(err)?;
        Ok(())
    }

    async fn current(&self, day: Date, month: Date) -> Result<Vec<QuotaUsage>, QuotaStoreError> {
        let rows = rate_limit_state::Entity::find()
            .filter(
                Condition::any()
                    .add(
                        Condition::all()
                            .add(Column::WindowKind.eq(Period::Day.as_str()))
                            .add(Column::WindowStart.eq(day)),
                    )
                    .add(
                        Condition::all()
                            .add(Column::WindowKind.eq(Period::Month.as_str()))
                            .add(Column::WindowStart.eq(month)),
                    ),
            )
            .all(self.store.connection())
            .await
            .map_err(err)?;
        Ok(rows
            .into_iter()
            .map(|r| QuotaUsage {
                key: ApiKeyId::from(r.api_key_id),
                period: if r.window_kind == "day" { Period::Day } else { Period::Month },
                start: r.window_start,
                used: u64::try_from(r.used_tokens).unwrap_or(0),
            })
            .collect())
    }

    async fn save(&self, rows: &[QuotaUsage]) -> Result<(), QuotaStoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        // A key deleted since its counters were read has no row to keep: the foreign key
        // refuses it, so each chunk is retried row by row only when the batch fails.
        let upsert =
            OnConflict::columns([Column::ApiKeyId, Column::WindowKind, Column::WindowStart])
                .update_columns([Column::UsedTokens, Column::UpdatedAt])
                .to_owned();
        for chunk in rows.chunks(500) {
            let batch = chunk.iter().map(|r| row(r.key, r.period, r.start, r.used));
            let result = rate_limit_state::Entity::insert_many(batch)
                .on_conflict(upsert.clone())
                .exec_without_returning(self.store.connection())
                .await;
            if result.is_err() {
                for r in chunk {
                    let one =
                        rate_limit_state::Entity::insert(row(r.key, r.period, r.start, r.used))
                            .on_conflict(upsert.clone())
                            .exec_without_returning(self.store.connection())
                            .await;
                    if let Err(e) = one {
                        if self.store.ping().await.is_err() {
                            return Err(err(e));
                        }
                        tracing::debug!(error = %e, "quota counter of a deleted key not saved");
                    }
                }
            }
        }
        Ok(())
    }
}
