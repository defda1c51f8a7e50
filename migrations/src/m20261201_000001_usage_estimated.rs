//! `usage_logs.usage_estimated`: the upstream reported no usage, so the row's tokens are the
//! gateway's estimate of what was sent and generated.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let sql = match manager.get_database_backend() {
            // On the partitioned parent: every partition, existing and future, gets it.
            DatabaseBackend::Postgres => {
                "ALTER TABLE usage_logs ADD COLUMN IF NOT EXISTS usage_estimated boolean NOT NULL DEFAULT false"
            }
            DatabaseBackend::Sqlite => {
                "ALTER TABLE usage_logs ADD COLUMN usage_estimated integer NOT NULL DEFAULT 0"
            }
            other => {
                return Err(DbErr::Migration(format!("unsupported database backend {other:?}")));
            }
        };
        manager.get_connection().execute_unprepared(sql).await?;
        Ok(())
    }
}
