//! `users.deleted_at`: when an administrator deleted the account (a soft delete: its keys are
//! revoked and sessions ended, its history kept). A deleted account keeps `status` =
//! `suspended` (the column's CHECK predates deletion, and SQLite cannot change a CHECK without
//! rebuilding the table); the store reads it as deleted.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES: &str = "ALTER TABLE users ADD COLUMN IF NOT EXISTS deleted_at timestamptz";
const SQLITE: &str = "ALTER TABLE users ADD COLUMN deleted_at text";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_dialect(manager, POSTGRES, SQLITE).await
    }
}
