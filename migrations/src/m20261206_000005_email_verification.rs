//! `users.email_unverified`: an account signed up while `email.verify_signups` is on cannot
//! sign in until it opens the link mailed to it (tokens in `password_resets`, under their own
//! label). Existing accounts are verified (`false`).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES: &str =
    "ALTER TABLE users ADD COLUMN IF NOT EXISTS email_unverified boolean NOT NULL DEFAULT false";
const SQLITE: &str = "ALTER TABLE users ADD COLUMN email_unverified integer NOT NULL DEFAULT 0";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_dialect(manager, POSTGRES, SQLITE).await
    }
}
