//! Billing: plans as data, spend caps, users' monthly token counters, the credits ledger
//! and invoices (see `sql/m20261201_000003_billing.*.sql`).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES: &str = include_str!("../sql/m20261201_000003_billing.postgres.sql");
const SQLITE: &str = include_str!("../sql/m20261201_000003_billing.sqlite.sql");

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
