//! Password-reset tokens (see `sql/m20261206_000004_password_resets.*.sql`).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES: &str = include_str!("../sql/m20261206_000004_password_resets.postgres.sql");
const SQLITE: &str = include_str!("../sql/m20261206_000004_password_resets.sqlite.sql");

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_dialect(manager, POSTGRES, SQLITE).await
    }
}
