//! Errors of the store.

use sea_orm::DbErr;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("could not connect to the database")]
    Connect(#[source] DbErr),
    #[error("database migration failed")]
    Migrate(#[source] DbErr),
    #[error("database query failed")]
    Db(#[source] DbErr),
    /// A stored value the domain cannot read (a role or scope it does not know).
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
}

/// A statement run through sqlx directly (the Postgres fast paths) that failed, as SeaORM
/// reports one.
pub(crate) fn sqlx_db_err(e: sqlx::Error) -> DbErr {
    DbErr::Exec(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(e)))
}
