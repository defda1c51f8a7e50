//! `usage_rollup_pending`: usage batches whose rows are in `usage_logs` but whose sums are not
//! yet in the daily rollup. On Postgres a gateway adds a batch's rollup sums up in memory for
//! a few seconds (`usage.rollup_interval_ms`) and writes them as one upsert per rollup row,
//! so a key used every second costs one upsert per interval instead of one per batch. Each
//! batch leaves one row here, in the batch's own transaction (the request ids it stored); the
//! upsert deletes the rows of the batches it sums in its transaction. A row that stays (the
//! gateway was killed first) is summed from the `usage_logs` rows it names by whichever
//! gateway finds it, in the same transaction that deletes it: no batch is counted twice or
//! lost. SQLite keeps its rollup in each batch's transaction and never writes here.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES: &str = "
CREATE TABLE IF NOT EXISTS usage_rollup_pending (
    id bigserial PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now(),
    request_ids uuid[] NOT NULL,
    first_at timestamptz NOT NULL,
    last_at timestamptz NOT NULL
);
-- Request ids do not compress: stored out of line without trying.
ALTER TABLE usage_rollup_pending ALTER COLUMN request_ids SET STORAGE EXTERNAL;
";

const SQLITE: &str = "
CREATE TABLE IF NOT EXISTS usage_rollup_pending (
    id integer PRIMARY KEY AUTOINCREMENT,
    created_at text NOT NULL DEFAULT CURRENT_TIMESTAMP,
    request_ids text NOT NULL,
    first_at text NOT NULL,
    last_at text NOT NULL
);
";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_dialect(manager, POSTGRES, SQLITE).await
    }
}
