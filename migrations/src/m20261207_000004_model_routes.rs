//! `model_routes`: public model names and how they are served (upstream targets, each on one
//! server or any, with a weight; the names to fall back to). Targets and fallbacks are JSON
//! arrays, read and written whole (a route is one admin object, never queried by its parts).
//! Deleting a server leaves a route that pins it without that target's server: the route then
//! has no server for it, and the admin API says so when the route is next saved.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

const POSTGRES: &str = "
CREATE TABLE IF NOT EXISTS model_routes (
    id          uuid PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    targets     jsonb NOT NULL,
    fallbacks   jsonb NOT NULL DEFAULT '[]',
    is_active   boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
)";

const SQLITE: &str = "
CREATE TABLE IF NOT EXISTS model_routes (
    id          text PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    targets     text NOT NULL,
    fallbacks   text NOT NULL DEFAULT '[]',
    is_active   integer NOT NULL DEFAULT 1,
    created_at  text NOT NULL,
    updated_at  text NOT NULL
)";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        crate::run_dialect(manager, POSTGRES, SQLITE).await
    }
}
