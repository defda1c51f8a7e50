//! SQL adapter of the billing's price store (`model_prices`).

use async_trait::async_trait;
use gateway_billing::{ModelPrice, Price, PriceChange, PriceEntry, PriceStore, PriceStoreError};
use gateway_core::PriceId;
use sea_orm::sea_query::Expr;
use sea_orm::{
    ColumnTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, Set, SqlErr, TryInsertResult,
};
use time::OffsetDateTime;

use crate::entity::model_prices::{self, Column};
use crate::{Store, StoreError};

/// Model prices in Postgres or SQLite.
#[derive(Clone, Debug)]
pub struct SqlPriceStore {
    store: Store,
}

impl SqlPriceStore {
    pub fn new(store: Store) -> Self {
        Self { store }
    }
}

fn err(e: DbErr) -> PriceStoreError {
    PriceStoreError(Box::new(StoreError::Db(e)))
}

#[async_trait]
impl PriceStore for SqlPriceStore {
    async fn list_prices(&self) -> Result<Vec<ModelPrice>, PriceStoreError> {
        let rows = model_prices::Entity::find()
            .order_by_asc(Column::Model)
            .order_by_asc(Column::EffectiveFrom)
            .all(self.store.connection())
            .await
            .map_err(err)?;
        Ok(rows.into_iter().map(|r| model_price(&r)).collect())
    }

    async fn add_prices(&self, prices: &[ModelPrice]) -> Result<usize, PriceStoreError> {
        let now = OffsetDateTime::now_utc();
        let mut added = 0;
        // Chunks keep every statement under SQLite's bound-parameter limit.
        for chunk in prices.chunks(500) {
            let rows = chunk.iter().map(|p| row(PriceId::new(), p, now));
            let result = model_prices::Entity::insert_many(rows)
                .on_conflict_do_nothing_on([Column::Model, Column::EffectiveFrom])
                .exec_without_returning(self.store.connection())
                .await
                .map_err(err)?;
            if let TryInsertResult::Inserted(n) = result {
                added += usize::try_from(n).unwrap_or(usize::MAX);
            }
        }
        Ok(added)
    }

    async fn price_entries(&self) -> Result<Vec<PriceEntry>, PriceStoreError> {
        let rows = model_prices::Entity::find()
            .order_by_asc(Column::Model)
            .order_by_asc(Column::EffectiveFrom)
            .all(self.store.connection())
            .await
            .map_err(err)?;
        Ok(rows.iter().map(|r| PriceEntry::new(PriceId::from(r.id), &model_price(r))).collect())
    }

    async fn add_price(&self, p: &ModelPrice) -> Result<PriceChange, PriceStoreError> {
        let id = PriceId::new();
        match model_prices::Entity::insert(row(id, p, OffsetDateTime::now_utc()))
            .exec_without_returning(self.store.connection())
            .await
        {
            Ok(_) => Ok(PriceChange::Done(PriceEntry::new(id, p))),
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                Ok(PriceChange::Taken)
            }
            Err(e) => Err(err(e)),
        }
    }

    async fn update_future_price(
        &self,
        id: PriceId,
        new: &ModelPrice,
        now: OffsetDateTime,
    ) -> Result<PriceChange, PriceStoreError> {
        if new.effective_from <= now {
            return self.refusal(id).await;
        }
        let result = model_prices::Entity::update_many()
            .col_expr(Column::Model, Expr::value(new.model.clone()))
            .col_expr(Column::InputMicrosPerMillionTokens, Expr::value(new.price.input))
            .col_expr(Column::OutputMicrosPerMillionTokens, Expr::value(new.price.output))
            .col_expr(
                Column::CachedInputMicrosPerMillionTokens,
                Expr::value(new.price.cached_input),
            )
            .col_expr(
                Column::CacheWriteInputMicrosPerMillionTokens,
                Expr::value(new.price.cache_write_input),
            )
            .col_expr(Column::EffectiveFrom, Expr::value(new.effective_from))
            .filter(Column::Id.eq(id.as_uuid()))
            .filter(Column::EffectiveFrom.gt(now))
            .exec(self.store.connection())
            .await;
        match result {
            Ok(r) if r.rows_affected == 1 => Ok(PriceChange::Done(PriceEntry::new(id, new))),
            Ok(_) => self.refusal(id).await,
            Err(e) if matches!(e.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
                Ok(PriceChange::Taken)
            }
            Err(e) => Err(err(e)),
        }
    }

    async fn delete_future_price(
        &self,
        id: PriceId,
        now: OffsetDateTime,
    ) -> Result<PriceChange, PriceStoreError> {
        let Some(row) = model_prices::Entity::find_by_id(id.as_uuid())
            .one(self.store.connection())
            .await
            .map_err(err)?
        else {
            return Ok(PriceChange::NotFound);
        };
        let deleted = model_prices::Entity::delete_many()
            .filter(Column::Id.eq(id.as_uuid()))
            .filter(Column::EffectiveFrom.gt(now))
            .exec(self.store.connection())
            .await
            .map_err(err)?;
        if deleted.rows_affected == 1 {
            Ok(PriceChange::Done(PriceEntry::new(id, &model_price(&row))))
        } else {
            self.refusal(id).await
        }
    }
}

impl SqlPriceStore {
    /// Why a change to `id` did not happen: it is gone, or it applies.
    async fn refusal(&self, id: PriceId) -> Result<PriceChange, PriceStoreError> {
        let exists = model_prices::Entity::find_by_id(id.as_uuid())
            .one(self.store.connection())
            .await
            .map_err(err)?
            .is_some();
        Ok(if exists { PriceChange::InEffect } else { PriceChange::NotFound })
    }
}

/// A price as a row, stored at `now`.
fn row(id: PriceId, p: &ModelPrice, now: OffsetDateTime) -> model_prices::ActiveModel {
    model_prices::ActiveModel {
        id: Set(id.as_uuid()),
        model: Set(p.model.clone()),
        input_micros_per_million_tokens: Set(p.price.input),
        output_micros_per_million_tokens: Set(p.price.output),
        cached_input_micros_per_million_tokens: Set(p.price.cached_input),
        cache_write_input_micros_per_million_tokens: Set(p.price.cache_write_input),
        effective_from: Set(p.effective_from),
        created_at: Set(now),
    }
}

fn model_price(r: &model_prices::Model) -> ModelPrice {
    ModelPrice {
        model: r.model.clone(),
        price: Price {
            input: r.input_micros_per_million_tokens,
            output: r.output_micros_per_million_tokens,
            cached_input: r.cached_input_micros_per_million_tokens,
            cache_write_input: r.cache_write_input_micros_per_million_tokens,
        },
        effective_from: r.effective_from,
    }
}
