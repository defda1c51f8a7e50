//! `model_prices` with history: a price applies from `effective_from`, so a new one never
//! rewrites the cost of past requests; seeded with the original product's table.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES: &str = include_str!("../sql/m20261201_000002_model_prices.postgres.sql");
const SQLITE: &str = include_str!("../sql/m20261201_000002_model_prices.sqlite.sql");

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let sql = match manager.get_database_backend() {
            DatabaseBackend::Postgres => POSTGRES,
            DatabaseBackend::Sqlite => SQLITE,
            other => {
                return Err(DbErr::Migration(format!("unsupported database backend {other:?}")));
            }
        };
        manager.get_connection().execute_unprepared(sql).await?;
        Ok(())
    }
}
