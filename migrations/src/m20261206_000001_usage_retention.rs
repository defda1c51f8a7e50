//! `usage_logs.retention_days`: the retention class of the row's plan (see [`crate::retention`]),
//! in the primary key so that each month can be partitioned by it; months not written yet are
//! made again partitioned by class. Rows written before keep 365 (the longest seeded plan's).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{DatabaseBackend, Statement};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        match manager.get_database_backend() {
            DatabaseBackend::Postgres => {
                // A partition's unique key must hold every column it is partitioned by.
                db.execute_unprepared(
                    "ALTER TABLE usage_logs ADD COLUMN IF NOT EXISTS retention_days integer NOT NULL DEFAULT 365;
                     ALTER TABLE usage_logs DROP CONSTRAINT IF EXISTS usage_logs_pkey;
                     ALTER TABLE usage_logs ADD CONSTRAINT usage_logs_pkey
                       PRIMARY KEY (request_id, created_at, retention_days);",
                )
                .await?;
                // Months made ahead and still empty are made again, partitioned by class; those
                // holding rows stay plain and go whole after the longest retention.
                let plain = db
                    .query_all_raw(Statement::from_string(
                        DatabaseBackend::Postgres,
                        "SELECT c.relname::text AS name FROM pg_inherits i \
                         JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent \
                         WHERE p.relname = 'usage_logs' AND c.relkind = 'r'",
                    ))
                    .await?;
                for row in plain {
                    let name: String = row.try_get("", "name")?;
                    let empty = db
                        .query_one_raw(Statement::from_string(
                            DatabaseBackend::Postgres,
                            format!("SELECT NOT EXISTS (SELECT 1 FROM {name}) AS empty"),
                        ))
                        .await?
                        .map(|r| r.try_get::<bool>("", "empty"))
                        .transpose()?
                        .unwrap_or(false);
                    if empty {
                        db.execute_unprepared(&format!("DROP TABLE {name}")).await?;
                    }
                }
                crate::ensure_usage_partitions(db, time::OffsetDateTime::now_utc(), 1).await?;
            }
            DatabaseBackend::Sqlite => {
                db.execute_unprepared(
                    "ALTER TABLE usage_logs ADD COLUMN retention_days integer NOT NULL DEFAULT 365",
                )
                .await?;
            }
            other => {
                return Err(DbErr::Migration(format!("unsupported database backend {other:?}")));
            }
        }
        Ok(())
    }
}
