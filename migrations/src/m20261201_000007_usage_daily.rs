//! The daily usage rollup, filled from the rows already written (see
//! `sql/m20261201_000007_usage_daily.*.sql` and `sql/usage_daily_rebuild.*.sql`).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES: &str = include_str!("../sql/m20261201_000007_usage_daily.postgres.sql");
const SQLITE: &str = include_str!("../sql/m20261201_000007_usage_daily.sqlite.sql");

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_dialect(manager, POSTGRES, SQLITE).await?;
        crate::run_dialect(
            manager,
            crate::REBUILD_USAGE_DAILY_POSTGRES,
            crate::REBUILD_USAGE_DAILY_SQLITE,
        )
        .await
    }
}
