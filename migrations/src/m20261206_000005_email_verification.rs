//! `users.email_unverified`: an account signed up while `email.verify_signups` is on cannot
//! sign in until it opens the link mailed to it (tokens in `password_resets`, under their own
//! label). Existing accounts are verified (`false`).

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let sql = match manager.get_database_backend() {
            DatabaseBackend::Postgres => {
                "ALTER TABLE users ADD COLUMN IF NOT EXISTS email_unverified boolean NOT NULL DEFAULT false"
            }
            DatabaseBackend::Sqlite => {
                "ALTER TABLE users ADD COLUMN email_unverified integer NOT NULL DEFAULT 0"
            }
            other => {
                return Err(DbErr::Migration(format!("unsupported database backend {other:?}")));
            }
        };
        manager.get_connection().execute_unprepared(sql).await?;
        Ok(())
    }
}
