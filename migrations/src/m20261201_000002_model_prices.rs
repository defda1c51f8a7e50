//! `model_prices` with history: a price applies from `effective_from`, so a new one never
//! rewrites the cost of past requests; seeded with the original product's table.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES: &str = include_str!("../sql/m20261201_000002_model_prices.postgres.sql");
const SQLITE: &str = include_str!("../sql/m20261201_000002_model_prices.sqlite.sql");

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_dialect(manager, POSTGRES, SQLITE).await
    }
}
