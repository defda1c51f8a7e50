//! SQL adapter of the billing's price store (`model_prices`).

use async_trait::async_trait;
use gateway_billing::{ModelPrice, Price, PriceStore, PriceStoreError};
use sea_orm::{DbErr, EntityTrait, QueryOrder, Set, TryInsertResult};
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
        Ok(rows
            .into_iter()
            .map(|r| ModelPrice {
                model: r.model,
                price: Price {
                    input: r.input_micros_per_million_tokens,
                    output: r.output_micros_per_million_tokens,
                    cached_input: r.cached_input_micros_per_million_tokens,
                },
                effective_from: r.effective_from,
            })
            .collect())
    }

    async fn add_prices(&self, prices: &[ModelPrice]) -> Result<usize, PriceStoreError> {
        let now = OffsetDateTime::now_utc();
        let mut added = 0;
        // Chunks keep every statement under SQLite's bound-parameter limit.
        for chunk in prices.chunks(500) {
            let rows = chunk.iter().map(|p| model_prices::ActiveModel {
                id: Set(uuid::Uuid::now_v7()),
                model: Set(p.model.clone()),
                input_micros_per_million_tokens: Set(p.price.input),
                output_micros_per_million_tokens: Set(p.price.output),
                cached_input_micros_per_million_tokens: Set(p.price.cached_input),
                effective_from: Set(p.effective_from),
                created_at: Set(now),
            });
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
}
