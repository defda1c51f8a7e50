//! Payments through Creem: customer and subscription ids, subscription ends, webhook events
//! once, what a payment was for (see `sql/m20261201_000004_payments.*.sql`).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES: &str = include_str!("../sql/m20261201_000004_payments.postgres.sql");
const SQLITE: &str = include_str!("../sql/m20261201_000004_payments.sqlite.sql");

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_dialect(manager, POSTGRES, SQLITE).await
    }
}
