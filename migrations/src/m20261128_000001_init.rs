//! All tables, constraints, indexes and the seeded billing plans.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES: &str = include_str!("../sql/m20261128_000001_init.postgres.sql");
const SQLITE: &str = include_str!("../sql/m20261128_000001_init.sqlite.sql");

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        match manager.get_database_backend() {
            DatabaseBackend::Postgres => {
                db.execute_unprepared(POSTGRES).await?;
                crate::ensure_plain_usage_partitions(db, time::OffsetDateTime::now_utc(), 1)
                    .await?;
            }
            DatabaseBackend::Sqlite => {
                db.execute_unprepared(SQLITE).await?;
            }
            other => {
                return Err(DbErr::Migration(format!("unsupported database backend {other:?}")));
            }
        }
        Ok(())
    }
}
