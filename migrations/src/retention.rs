//! How long raw usage rows are kept, and how they go: by whole partitions.
//!
//! Every usage row carries the retention of its user's plan, rounded up to one of
//! [`RETENTION_CLASSES`]. On Postgres each month of `usage_logs` is a partition that is itself
//! partitioned by that class (`usage_logs_y2027m01_r7`, `..._r30`, ..., and `..._rother` for
//! anything else), so [`drop_expired_usage`] drops a whole sub-partition once its month has
//! ended and its class has passed: a free user's rows of January go in the second week of
//! February, a year's plan's a year after January. Months created before this scheme (plain
//! partitions) go whole once the longest retention of any plan has passed. The daily rollup
//! and the invoices keep the totals. On SQLite (the embedded mode) the rows are deleted.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DatabaseBackend, Statement};
use time::{Date, OffsetDateTime};

use crate::{month_start, partition_name};

/// The retention classes, in days: a row is kept for the smallest class at least its plan's
/// retention (and until the end of its month's partition).
pub const RETENTION_CLASSES: [u32; 11] = [7, 14, 30, 60, 90, 180, 365, 730, 1095, 1825, 3650];

/// The class of a plan's retention: the smallest class at least `days` (the largest beyond).
pub fn retention_class(days: u32) -> u32 {
    RETENTION_CLASSES.iter().copied().find(|c| *c >= days).unwrap_or(3650)
}

/// The DDL of a month of `usage_logs` partitioned by retention class, with a partition for each
/// class and a default one.
pub fn partition_ddl_by_retention(start: Date) -> Vec<String> {
    let end = month_start(start, 1);
    let name = partition_name(start);
    let mut ddl = vec![format!(
        "CREATE TABLE IF NOT EXISTS {name} PARTITION OF usage_logs \
         FOR VALUES FROM ('{start} 00:00:00+00') TO ('{end} 00:00:00+00') \
         PARTITION BY LIST (retention_days)"
    )];
    for class in RETENTION_CLASSES {
        ddl.push(format!(
            "CREATE TABLE IF NOT EXISTS {name}_r{class} PARTITION OF {name} FOR VALUES IN ({class})"
        ));
    }
    ddl.push(format!("CREATE TABLE IF NOT EXISTS {name}_rother PARTITION OF {name} DEFAULT"));
    ddl
}

/// What a child of `usage_logs` is, from its name.
#[derive(Debug, PartialEq, Eq)]
enum Part {
    /// A month (`usage_logs_yYYYYmMM`).
    Month(Date),
    /// A month's retention class (`..._rN`), or its default (`..._rother`: `None`).
    Class(Date, Option<u32>),
}

fn parse(name: &str) -> Option<Part> {
    let rest = name.strip_prefix("usage_logs_y")?;
    let (year, rest) = rest.split_at_checked(4)?;
    let rest = rest.strip_prefix('m')?;
    let (month, rest) = rest.split_at_checked(2)?;
    let month = time::Month::try_from(month.parse::<u8>().ok()?).ok()?;
    let start = Date::from_calendar_date(year.parse().ok()?, month, 1).ok()?;
    match rest {
        "" => Some(Part::Month(start)),
        "_rother" => Some(Part::Class(start, None)),
        _ => Some(Part::Class(start, Some(rest.strip_prefix("_r")?.parse().ok()?))),
    }
}

/// How long after its month ends a partition may still get rows (a spill file replayed late).
const SETTLED: time::Duration = time::Duration::days(7);

async fn is_empty<C: ConnectionTrait>(db: &C, table: &str) -> Result<bool, DbErr> {
    let row = db
        .query_one_raw(Statement::from_string(
            DatabaseBackend::Postgres,
            format!("SELECT NOT EXISTS (SELECT 1 FROM {table}) AS empty"),
        ))
        .await?;
    Ok(row.map(|r| r.try_get::<bool>("", "empty")).transpose()?.unwrap_or(false))
}

/// When a partition's rows have all outlived their retention.
fn expires(part: &Part, longest_days: u32) -> OffsetDateTime {
    let (start, days) = match part {
        Part::Month(start) | Part::Class(start, None) => (*start, longest_days),
        Part::Class(start, Some(class)) => (*start, *class),
    };
    month_start(start, 1).midnight().assume_utc() + time::Duration::days(i64::from(days))
}

/// Drops every partition of `usage_logs` whose rows have all outlived their retention at `now`
/// (a month's class partitions, a month left with none, a plain month or a month's default
/// after `longest_days`, the longest retention of any plan); on SQLite deletes the rows past
/// their retention. Returns what it dropped (on SQLite, `"N rows"`). Running it again drops
/// nothing more.
pub async fn drop_expired_usage<C: ConnectionTrait>(
    db: &C,
    now: OffsetDateTime,
    longest_days: u32,
) -> Result<Vec<String>, DbErr> {
    if db.get_database_backend() != DatabaseBackend::Postgres {
        let deleted = db
            .execute_raw(Statement::from_sql_and_values(
                DatabaseBackend::Sqlite,
                "DELETE FROM usage_logs WHERE julianday(created_at) + retention_days < julianday(?)",
                [now.into()],
            ))
            .await?
            .rows_affected();
        return Ok(if deleted == 0 { Vec::new() } else { vec![format!("{deleted} rows")] });
    }
    let children = db
        .query_all_raw(Statement::from_string(
            DatabaseBackend::Postgres,
            "SELECT c.relname::text AS name, p.relname::text AS parent \
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             JOIN pg_class p ON p.oid = i.inhparent \
             WHERE p.relname = 'usage_logs' OR p.relname LIKE 'usage\\_logs\\_y%'",
        ))
        .await?;
    let mut parts: Vec<(String, String)> = Vec::new();
    for row in &children {
        parts.push((row.try_get("", "name")?, row.try_get("", "parent")?));
    }
    let mut dropped = Vec::new();
    // Class partitions first: expired ones, and empty ones of a month over for a week (the
    // classes no plan uses; the month's default stays until it expires, so a row replayed
    // later still has a home); then months plain or left with none.
    for (name, _) in parts.iter().filter(|(_, parent)| parent != "usage_logs") {
        let Some(part @ Part::Class(start, class)) = parse(name) else { continue };
        let settled = month_start(start, 1).midnight().assume_utc() + SETTLED <= now;
        let unused = class.is_some() && settled && is_empty(db, name).await?;
        if expires(&part, longest_days) <= now || unused {
            db.execute_unprepared(&format!("DROP TABLE IF EXISTS {name}")).await?;
            dropped.push(name.clone());
        }
    }
    for (name, _) in parts.iter().filter(|(_, parent)| parent == "usage_logs") {
        let Some(part @ Part::Month(_)) = parse(name) else { continue };
        let children_left =
            parts.iter().any(|(child, parent)| parent == name && !dropped.contains(child));
        let is_partitioned = parts.iter().any(|(_, parent)| parent == name);
        let due = if is_partitioned { !children_left } else { expires(&part, longest_days) <= now };
        if due {
            db.execute_unprepared(&format!("DROP TABLE IF EXISTS {name}")).await?;
            dropped.push(name.clone());
        }
    }
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    #[test]
    fn a_plans_retention_rounds_up_to_a_class() {
        assert_eq!(retention_class(1), 7);
        assert_eq!(retention_class(7), 7);
        assert_eq!(retention_class(45), 60);
        assert_eq!(retention_class(365), 365);
        assert_eq!(retention_class(5000), 3650);
    }

    #[test]
    fn partitions_are_known_by_their_names() {
        assert_eq!(parse("usage_logs_y2027m01"), Some(Part::Month(date!(2027 - 01 - 01))));
        assert_eq!(
            parse("usage_logs_y2027m01_r30"),
            Some(Part::Class(date!(2027 - 01 - 01), Some(30)))
        );
        assert_eq!(
            parse("usage_logs_y2027m01_rother"),
            Some(Part::Class(date!(2027 - 01 - 01), None))
        );
        assert_eq!(parse("usage_logs_y2027m13"), None);
        assert_eq!(parse("usage_logs_daily"), None);
    }

    #[test]
    fn a_class_expires_that_long_after_its_month_ends() {
        let january_r7 = Part::Class(date!(2027 - 01 - 01), Some(7));
        assert_eq!(expires(&january_r7, 365), datetime!(2027-02-08 00:00 UTC));
        let plain = Part::Month(date!(2027 - 01 - 01));
        assert_eq!(expires(&plain, 365), datetime!(2028-02-01 00:00 UTC));
    }

    #[test]
    fn a_month_by_retention_has_a_partition_per_class_and_a_default() {
        let ddl = partition_ddl_by_retention(date!(2027 - 01 - 01));
        assert_eq!(ddl.len(), RETENTION_CLASSES.len() + 2);
        assert!(ddl[0].ends_with("PARTITION BY LIST (retention_days)"));
        assert!(
            ddl[1].contains(
                "usage_logs_y2027m01_r7 PARTITION OF usage_logs_y2027m01 FOR VALUES IN (7)"
            )
        );
        assert!(ddl.last().is_some_and(|d| d.contains("usage_logs_y2027m01_rother") && d.ends_with("DEFAULT")));
    }
}
