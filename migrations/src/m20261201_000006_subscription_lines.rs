//! Invoice lines may say what a plan subscription paid (see
//! `sql/m20261201_000006_subscription_lines.*.sql`).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES: &str = include_str!("../sql/m20261201_000006_subscription_lines.postgres.sql");
const SQLITE: &str = include_str!("../sql/m20261201_000006_subscription_lines.sqlite.sql");

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_dialect(manager, POSTGRES, SQLITE).await
    }
}
