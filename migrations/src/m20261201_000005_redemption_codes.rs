//! Redemption codes and their uses (see `sql/m20261201_000005_redemption_codes.*.sql`).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES: &str = include_str!("../sql/m20261201_000005_redemption_codes.postgres.sql");
const SQLITE: &str = include_str!("../sql/m20261201_000005_redemption_codes.sqlite.sql");

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_dialect(manager, POSTGRES, SQLITE).await
    }
}
