//! `model_prices.cache_write_input_micros_per_million_tokens`: the price of prompt tokens an
//! upstream writes to its prompt cache (Anthropic's cache creation, 1.25 times the input price
//! for Claude models); empty, they are charged the input price.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES: &str = "ALTER TABLE model_prices ADD COLUMN IF NOT EXISTS \
     cache_write_input_micros_per_million_tokens bigint \
     CHECK (cache_write_input_micros_per_million_tokens >= 0)";
const SQLITE: &str = "ALTER TABLE model_prices ADD COLUMN \
     cache_write_input_micros_per_million_tokens integer \
     CHECK (cache_write_input_micros_per_million_tokens >= 0)";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_dialect(manager, POSTGRES, SQLITE).await
    }
}
