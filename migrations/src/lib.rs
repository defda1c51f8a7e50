//! The BluesMinds database schema, as a sea-orm-migration crate.
//!
//! The schema is written per dialect in `sql/`: Postgres gets a `usage_logs` table
//! range-partitioned by month (the partitions of the current and next months are created here
//! and then daily by the gateway, through [`ensure_usage_partitions`]); SQLite, the embedded
//! mode, gets a plain table. sea-orm-migration records what ran, so migrating twice changes
//! nothing; each migration runs once (in a transaction on Postgres), and a released one is
//! never edited: changes come as new migrations.
//!
//! ```no_run
//! # async fn demo(db: &sea_orm_migration::sea_orm::DatabaseConnection) -> Result<(), sea_orm_migration::DbErr> {
//! use migration::{Migrator, MigratorTrait};
//! Migrator::up(db, None).await?;
//! # Ok(()) }
//! ```

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend};
use time::{Date, Month, OffsetDateTime};

pub use sea_orm_migration::MigratorTrait;

mod m20261128_000001_init;
mod m20261201_000001_usage_estimated;
mod m20261201_000002_model_prices;
mod m20261201_000003_billing;
mod m20261201_000004_payments;
mod m20261201_000005_redemption_codes;
mod m20261201_000006_subscription_lines;
mod m20261201_000007_usage_daily;
mod m20261206_000001_usage_retention;
mod m20261206_000002_usage_daily_hot;
mod m20261206_000003_audit_log;
mod m20261206_000004_password_resets;
mod m20261206_000005_email_verification;
mod m20261207_000001_user_deleted_at;
mod m20261207_000002_new_endpoint_scopes;
mod m20261207_000003_cache_write_price;
mod m20261207_000004_model_routes;
mod m20261207_000005_quota_pending;
mod m20261207_000006_usage_rollup_pending;
pub mod retention;

pub use m20261206_000002_usage_daily_hot::HIST_BUCKETS;

/// Every migration, in order.
#[derive(Debug)]
pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261128_000001_init::Migration),
            Box::new(m20261201_000001_usage_estimated::Migration),
            Box::new(m20261201_000002_model_prices::Migration),
            Box::new(m20261201_000003_billing::Migration),
            Box::new(m20261201_000004_payments::Migration),
            Box::new(m20261201_000005_redemption_codes::Migration),
            Box::new(m20261201_000006_subscription_lines::Migration),
            Box::new(m20261201_000007_usage_daily::Migration),
            Box::new(m20261206_000001_usage_retention::Migration),
            Box::new(m20261206_000002_usage_daily_hot::Migration),
            Box::new(m20261206_000003_audit_log::Migration),
            Box::new(m20261206_000004_password_resets::Migration),
            Box::new(m20261206_000005_email_verification::Migration),
            Box::new(m20261207_000001_user_deleted_at::Migration),
            Box::new(m20261207_000002_new_endpoint_scopes::Migration),
            Box::new(m20261207_000003_cache_write_price::Migration),
            Box::new(m20261207_000004_model_routes::Migration),
            Box::new(m20261207_000005_quota_pending::Migration),
            Box::new(m20261207_000006_usage_rollup_pending::Migration),
        ]
    }
}

/// Recomputes `usage_daily` from `usage_logs` on Postgres (run in one transaction, with the
/// writers held off; see `gateway_store::Store::rebuild_usage_rollup`).
pub const REBUILD_USAGE_DAILY_POSTGRES: &str =
    include_str!("../sql/usage_daily_rebuild.postgres.sql");
/// The same on SQLite.
pub const REBUILD_USAGE_DAILY_SQLITE: &str = include_str!("../sql/usage_daily_rebuild.sqlite.sql");

/// Runs a migration's SQL for the database's dialect (`postgres` or `sqlite`).
pub(crate) async fn run_dialect(
    manager: &SchemaManager<'_>,
    postgres: &str,
    sqlite: &str,
) -> Result<(), DbErr> {
    let sql = match manager.get_database_backend() {
        DatabaseBackend::Postgres => postgres,
        DatabaseBackend::Sqlite => sqlite,
        other => return Err(DbErr::Migration(format!("unsupported database backend {other:?}"))),
    };
    manager.get_connection().execute_unprepared(sql).await?;
    Ok(())
}

/// First day of the month `months_ahead` months after the month of `day`.
pub fn month_start(day: Date, months_ahead: u32) -> Date {
    let index = day.year() * 12 + i32::from(day.month() as u8) - 1 + months_ahead as i32;
    let (year, month0) = (index.div_euclid(12), index.rem_euclid(12) as u8);
    // month0 is 0..=11, so the month and the first day always exist.
    Month::try_from(month0 + 1)
        .ok()
        .and_then(|m| Date::from_calendar_date(year, m, 1).ok())
        .unwrap_or(day)
}

/// Name of the partition of `usage_logs` that holds the month starting at `start`.
pub fn partition_name(start: Date) -> String {
    format!("usage_logs_y{:04}m{:02}", start.year(), start.month() as u8)
}

/// The DDL that creates a plain partition of `usage_logs` for the month starting at `start`
/// (the first migration's; later months are partitioned by retention class).
pub fn partition_ddl(start: Date) -> String {
    let end = month_start(start, 1);
    format!(
        "CREATE TABLE IF NOT EXISTS {name} PARTITION OF usage_logs \
         FOR VALUES FROM ('{start} 00:00:00+00') TO ('{end} 00:00:00+00')",
        name = partition_name(start),
    )
}

/// Creates the monthly partitions of `usage_logs` from the month of `now` through
/// `months_ahead` months later, so inserts never fail when a month turns, each partitioned by
/// retention class ([`retention`]); a month that exists as a plain partition (made before
/// retention classes) is left as it is. A no-op on SQLite. Returns the names of the months
/// ensured.
pub async fn ensure_usage_partitions<C: ConnectionTrait>(
    db: &C,
    now: OffsetDateTime,
    months_ahead: u32,
) -> Result<Vec<String>, DbErr> {
    if db.get_database_backend() != DatabaseBackend::Postgres {
        return Ok(Vec::new());
    }
    let mut names = Vec::new();
    for i in 0..=months_ahead {
        let start = month_start(now.date(), i);
        let name = partition_name(start);
        let plain = db
            .query_one_raw(sea_orm_migration::sea_orm::Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                "SELECT 1 FROM pg_class WHERE relname = $1 AND relkind = 'r'",
                [name.clone().into()],
            ))
            .await?
            .is_some();
        if !plain {
            for ddl in retention::partition_ddl_by_retention(start) {
                db.execute_unprepared(&ddl).await?;
            }
        }
        names.push(name);
    }
    Ok(names)
}

/// The first migration's monthly partitions, plain (before `usage_logs.retention_days`).
pub(crate) async fn ensure_plain_usage_partitions<C: ConnectionTrait>(
    db: &C,
    now: OffsetDateTime,
    months_ahead: u32,
) -> Result<(), DbErr> {
    for i in 0..=months_ahead {
        db.execute_unprepared(&partition_ddl(month_start(now.date(), i))).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn months_roll_over_the_year() {
        assert_eq!(month_start(date!(2026 - 11 - 28), 0), date!(2026 - 11 - 01));
        assert_eq!(month_start(date!(2026 - 12 - 31), 1), date!(2027 - 01 - 01));
        assert_eq!(month_start(date!(2026 - 01 - 15), 13), date!(2027 - 02 - 01));
    }

    #[test]
    fn partition_ddl_covers_exactly_one_month() {
        assert_eq!(
            partition_ddl(date!(2026 - 12 - 01)),
            "CREATE TABLE IF NOT EXISTS usage_logs_y2026m12 PARTITION OF usage_logs \
             FOR VALUES FROM ('2026-12-01 00:00:00+00') TO ('2027-01-01 00:00:00+00')"
        );
    }
}
