//! Billing: plans as data, spend caps, users' monthly token counters, the credits ledger
//! and invoices (see `sql/m20261201_000003_billing.*.sql`).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES: &str = include_str!("../sql/m20261201_000003_billing.postgres.sql");
const SQLITE: &str = include_str!("../sql/m20261201_000003_billing.sqlite.sql");

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_dialect(manager, POSTGRES, SQLITE).await
    }
}
