//! SQL adapter of the durable quota store (`rate_limit_state` for keys, `user_quota_state` for
//! users' monthly ceilings): the mirror of the Redis quota counters (`used_tokens`), and the
//! exact counter itself while Redis is unreachable (`pending_tokens`, the part counted alone;
//! limits apply to the sum).

use std::collections::HashMap;

use async_trait::async_trait;
use gateway_core::{ApiKeyId, UserId};
use gateway_ratelimit::{
    Holder, Period, QuotaRows, QuotaStore, QuotaStoreError, QuotaUsage, Subject, Window,
};
use sea_orm::sea_query::{Expr, ExprTrait, IntoColumnRef, OnConflict, SimpleExpr};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, EntityTrait, QueryFilter, QueryTrait, Set,
    TransactionTrait,
};
use time::{Date, OffsetDateTime};

use crate::entity::rate_limit_state::{self, Column};
use crate::entity::{api_keys, user_quota_state};
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
        pending_tokens: Set(0),
        updated_at: Set(OffsetDateTime::now_utc()),
    }
}

fn the(key: ApiKeyId, period: Period, start: Date) -> Condition {
    Condition::all()
        .add(Column::ApiKeyId.eq(key.as_uuid()))
        .add(Column::WindowKind.eq(period.as_str()))
        .add(Column::WindowStart.eq(start))
}

fn user_row(user: UserId, month: Date, used: u64) -> user_quota_state::ActiveModel {
    user_quota_state::ActiveModel {
        user_id: Set(user.as_uuid()),
        month_start: Set(month),
        used_tokens: Set(i64_of(used)),
        pending_tokens: Set(0),
        updated_at: Set(OffsetDateTime::now_utc()),
    }
}

fn the_user(user: UserId, month: Date) -> Condition {
    Condition::all()
        .add(user_quota_state::Column::UserId.eq(user.as_uuid()))
        .add(user_quota_state::Column::MonthStart.eq(month))
}

/// The user's counter: `pending_tokens + n WHERE used_tokens + pending_tokens + n <= limit`;
/// true when it counted.
async fn add_within_user(
    db: &impl ConnectionTrait,
    user: UserId,
    month: Date,
    tokens: u64,
    limit: u64,
) -> Result<bool, sea_orm::DbErr> {
    use user_quota_state::Column as U;
    let n = i64_of(tokens);
    let result = user_quota_state::Entity::update_many()
        .col_expr(U::PendingTokens, Expr::col(U::PendingTokens).add(n))
        .col_expr(U::UpdatedAt, Expr::value(OffsetDateTime::now_utc()))
        .filter(the_user(user, month))
        .filter(Expr::col(U::UsedTokens).add(Expr::col(U::PendingTokens)).add(n).lte(i64_of(limit)))
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

/// `pending_tokens + n WHERE used_tokens + pending_tokens + n <= limit`: true when it counted.
async fn add_within(
    db: &impl ConnectionTrait,
    counter: Condition,
    tokens: u64,
    limit: u64,
) -> Result<bool, sea_orm::DbErr> {
    let n = i64_of(tokens);
    let result = rate_limit_state::Entity::update_many()
        .col_expr(Column::PendingTokens, Expr::col(Column::PendingTokens).add(n))
        .col_expr(Column::UpdatedAt, Expr::value(OffsetDateTime::now_utc()))
        .filter(counter)
        .filter(
            Expr::col(Column::UsedTokens)
                .add(Expr::col(Column::PendingTokens))
                .add(n)
                .lte(i64_of(limit)),
        )
        .exec(db)
        .await?;
    Ok(result.rows_affected == 1)
}

#[async_trait]
impl QuotaStore for SqlQuotaStore {
    async fn try_consume(
        &self,
        who: &Subject,
        day: Date,
        month: Date,
        tokens: u64,
    ) -> Result<Option<Window>, QuotaStoreError> {
        let (key, limits) = (who.key, &who.limits);
        let txn = self.store.connection().begin().await.map_err(err)?;
        user_quota_state::Entity::insert(user_row(who.user, month, 0))
            .on_conflict_do_nothing_on([
                user_quota_state::Column::UserId,
                user_quota_state::Column::MonthStart,
            ])
            .exec_without_returning(&txn)
            .await
            .map_err(err)?;
        rate_limit_state::Entity::insert_many([
            row(key, Period::Day, day, 0),
            row(key, Period::Month, month, 0),
        ])
        .on_conflict_do_nothing_on([Column::ApiKeyId, Column::WindowKind, Column::WindowStart])
        .exec_without_returning(&txn)
        .await
        .map_err(err)?;
        // Row locks make the conditional updates exact across processes; the same order
        // everywhere (the key's day, its month, then the user's month) keeps them from
        // deadlocking.
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
        if !add_within_user(&txn, who.user, month, tokens, who.ceiling).await.map_err(err)? {
            txn.rollback().await.map_err(err)?;
            return Ok(Some(Window::UserMonth));
        }
        txn.commit().await.map_err(err)?;
        Ok(None)
    }

    async fn adjust(
        &self,
        key: ApiKeyId,
        user: UserId,
        day: Date,
        month: Date,
        delta: i64,
    ) -> Result<(), QuotaStoreError> {
        use user_quota_state::Column as U;
        // The part counted alone moves by `delta`, but never takes the sum below zero. One
        // transaction, one counter per statement, in the order `try_consume` locks them (the
        // key's day, its month, the user's month): a statement locking both of a key's rows
        // in whatever order its plan reads them deadlocks with a reservation.
        let now = OffsetDateTime::now_utc();
        let txn = self.store.connection().begin().await.map_err(err)?;
        let adjusted = pending_moved_by(Column::UsedTokens, Column::PendingTokens, delta);
        for (period, start) in [(Period::Day, day), (Period::Month, month)] {
            rate_limit_state::Entity::update_many()
                .col_expr(Column::PendingTokens, adjusted.clone())
                .col_expr(Column::UpdatedAt, Expr::value(now))
                .filter(the(key, period, start))
                .exec(&txn)
                .await
                .map_err(err)?;
        }
        user_quota_state::Entity::update_many()
            .col_expr(U::PendingTokens, pending_moved_by(U::UsedTokens, U::PendingTokens, delta))
            .col_expr(U::UpdatedAt, Expr::value(now))
            .filter(the_user(user, month))
            .exec(&txn)
            .await
            .map_err(err)?;
        txn.commit().await.map_err(err)
    }

    async fn current(
        &self,
        day: Date,
        month: Date,
        which: QuotaRows,
    ) -> Result<Vec<QuotaUsage>, QuotaStoreError> {
        let pending_only = which == QuotaRows::Pending;
        let rows = rate_limit_state::Entity::find()
            .apply_if(pending_only.then_some(0), |q, zero| q.filter(Column::PendingTokens.ne(zero)))
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
        // Each key's owner, which the shared limiter files the key's counters under.
        let mut owners: HashMap<uuid::Uuid, uuid::Uuid> = HashMap::new();
        let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.api_key_id).collect();
        for chunk in ids.chunks(1000) {
            let keys = api_keys::Entity::find()
                .filter(api_keys::Column::Id.is_in(chunk.iter().copied()))
                .all(self.store.connection())
                .await
                .map_err(err)?;
            owners.extend(keys.into_iter().map(|k| (k.id, k.user_id)));
        }
        let mut usage: Vec<QuotaUsage> = rows
            .into_iter()
            .filter_map(|r| {
                let user = UserId::from(*owners.get(&r.api_key_id)?);
                Some(QuotaUsage {
                    holder: Holder::Key { key: ApiKeyId::from(r.api_key_id), user },
                    period: if r.window_kind == "day" { Period::Day } else { Period::Month },
                    start: r.window_start,
                    used: sum(r.used_tokens, r.pending_tokens),
                    pending: r.pending_tokens,
                })
            })
            .collect();
        let users = user_quota_state::Entity::find()
            .filter(user_quota_state::Column::MonthStart.eq(month))
            .apply_if(pending_only.then_some(0), |q, zero| {
                q.filter(user_quota_state::Column::PendingTokens.ne(zero))
            })
            .all(self.store.connection())
            .await
            .map_err(err)?;
        usage.extend(users.into_iter().map(|r| QuotaUsage {
            holder: Holder::User(UserId::from(r.user_id)),
            period: Period::Month,
            start: r.month_start,
            used: sum(r.used_tokens, r.pending_tokens),
            pending: r.pending_tokens,
        }));
        Ok(usage)
    }

    async fn save(&self, rows: &[QuotaUsage]) -> Result<(), QuotaStoreError> {
        let (keys, users): (Vec<&QuotaUsage>, Vec<&QuotaUsage>) =
            rows.iter().partition(|r| matches!(r.holder, Holder::Key { .. }));
        self.save_keys(&keys).await?;
        self.save_users(&users).await
    }

    /// One statement per counter, each on its own: a counter's two parts move together, and
    /// no transaction holds one counter while waiting for another (the fallback's
    /// reservations lock a key's day, its month and its user's month in that order; a batch
    /// in another order could deadlock with them). Failing halfway leaves the rest pending,
    /// handed over again later: counted too much, never too little.
    async fn handed_over(&self, rows: &[QuotaUsage]) -> Result<(), QuotaStoreError> {
        use user_quota_state::Column as U;
        let db = self.store.connection();
        let now = OffsetDateTime::now_utc();
        for r in rows.iter().filter(|r| r.pending != 0) {
            let n = r.pending;
            match r.holder {
                Holder::Key { key, .. } => {
                    rate_limit_state::Entity::update_many()
                        .col_expr(Column::UsedTokens, plus_at_least_zero(Column::UsedTokens, n))
                        .col_expr(Column::PendingTokens, Expr::col(Column::PendingTokens).sub(n))
                        .col_expr(Column::UpdatedAt, Expr::value(now))
                        .filter(the(key, r.period, r.start))
                        .exec(db)
                        .await
                        .map_err(err)?;
                }
                Holder::User(user) => {
                    user_quota_state::Entity::update_many()
                        .col_expr(U::UsedTokens, plus_at_least_zero(U::UsedTokens, n))
                        .col_expr(U::PendingTokens, Expr::col(U::PendingTokens).sub(n))
                        .col_expr(U::UpdatedAt, Expr::value(now))
                        .filter(the_user(user, r.start))
                        .exec(db)
                        .await
                        .map_err(err)?;
                }
            }
        }
        Ok(())
    }
}

/// `pending + delta`, but never taking the counter's sum (`used + pending`) below zero.
fn pending_moved_by<C: IntoColumnRef + Copy>(used: C, pending: C, delta: i64) -> SimpleExpr {
    Expr::case(Expr::col(used).add(Expr::col(pending)).add(delta).lt(0), Expr::col(used).mul(-1))
        .finally(Expr::col(pending).add(delta))
        .into()
}

/// `column + n`, never below zero.
fn plus_at_least_zero<C: IntoColumnRef + Copy>(column: C, n: i64) -> SimpleExpr {
    Expr::case(Expr::col(column).add(n).lt(0), 0).finally(Expr::col(column).add(n)).into()
}

/// A counter's sum (its mirror and the part counted alone), never below zero.
fn sum(mirror: i64, pending: i64) -> u64 {
    u64::try_from(mirror.saturating_add(pending)).unwrap_or(0)
}

impl SqlQuotaStore {
    async fn save_users(&self, rows: &[&QuotaUsage]) -> Result<(), QuotaStoreError> {
        use user_quota_state::Column as U;
        let upsert = OnConflict::columns([U::UserId, U::MonthStart])
            .update_columns([U::UsedTokens, U::UpdatedAt])
            .to_owned();
        let user_rows = |chunk: &[&QuotaUsage]| -> Vec<user_quota_state::ActiveModel> {
            chunk
                .iter()
                .filter_map(|r| match r.holder {
                    Holder::User(user) => Some(user_row(user, r.start, r.used)),
                    Holder::Key { .. } => None,
                })
                .collect()
        };
        for chunk in rows.chunks(500) {
            let result = user_quota_state::Entity::insert_many(user_rows(chunk))
                .on_conflict(upsert.clone())
                .exec_without_returning(self.store.connection())
                .await;
            if result.is_err() {
                // A user deleted since the counter was read: the foreign key refuses the row.
                for one in chunk {
                    let single = user_quota_state::Entity::insert_many(user_rows(&[*one]))
                        .on_conflict(upsert.clone())
                        .exec_without_returning(self.store.connection())
                        .await;
                    if let Err(e) = single {
                        if self.store.ping().await.is_err() {
                            return Err(err(e));
                        }
                        tracing::debug!(error = %e, "quota counter of a deleted user not saved");
                    }
                }
            }
        }
        Ok(())
    }

    async fn save_keys(&self, rows: &[&QuotaUsage]) -> Result<(), QuotaStoreError> {
        let key_of = |r: &QuotaUsage| match r.holder {
            Holder::Key { key, .. } => Some(row(key, r.period, r.start, r.used)),
            Holder::User(_) => None,
        };
        // A key deleted since its counters were read has no row to keep: the foreign key
        // refuses it, so each chunk is retried row by row only when the batch fails.
        let upsert =
            OnConflict::columns([Column::ApiKeyId, Column::WindowKind, Column::WindowStart])
                .update_columns([Column::UsedTokens, Column::UpdatedAt])
                .to_owned();
        for chunk in rows.chunks(500) {
            let batch = chunk.iter().filter_map(|r| key_of(r));
            let result = rate_limit_state::Entity::insert_many(batch)
                .on_conflict(upsert.clone())
                .exec_without_returning(self.store.connection())
                .await;
            if result.is_err() {
                for r in chunk {
                    let Some(one) = key_of(r) else { continue };
                    let one = rate_limit_state::Entity::insert(one)
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
