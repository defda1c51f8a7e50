//! Persistence for BluesMinds: the SeaORM entities of every table and the Postgres/SQLite
//! adapters of the domain crates' ports.
//!
//! [`Store::connect`] opens Postgres (`postgres://...`) or an embedded SQLite file
//! (`sqlite://path?mode=rwc`); [`Store::migrate`] applies the schema of the `migration` crate;
//! [`Store::ensure_usage_partitions`] keeps the monthly partitions of `usage_logs` ahead of the
//! calendar on Postgres. [`SqlAuthStore`] implements `gateway_auth::{UserStore, KeyStore}`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), gateway_store::StoreError> {
//! let store = gateway_store::Store::connect("sqlite://bluesminds.db?mode=rwc", &Default::default()).await?;
//! store.migrate().await?;
//! let auth = gateway_store::SqlAuthStore::new(store.clone());
//! # let _ = auth; Ok(()) }
//! ```

mod audit;
mod auth;
mod billing;
mod codes;
pub mod entity;
mod error;
mod payments;
mod plans;
mod prices;
mod quotas;
mod servers;
#[cfg(feature = "test-util")]
pub mod testing;
mod usage;

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseBackend, DatabaseConnection, Statement,
    TransactionTrait,
};
use time::OffsetDateTime;

pub use audit::SqlAuditLog;
pub use auth::SqlAuthStore;
pub use billing::SqlBillingStore;
pub use codes::SqlCodeStore;
pub use error::StoreError;
pub use payments::SqlPaymentStore;
pub use plans::SqlPlanStore;
pub use prices::SqlPriceStore;
pub use quotas::SqlQuotaStore;
pub use servers::SqlServerStore;
pub use usage::{InsertMethod, SqlUsageStore};

/// Connection pool settings.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub max_connections: u32,
    pub connect_timeout: Duration,
    pub acquire_timeout: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_connections: 16,
            connect_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
        }
    }
}

/// A database connection pool, Postgres or SQLite. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
}

/// The advisory lock `Store::migrate` holds on Postgres ("bmmigr" in ASCII).
const MIGRATE_LOCK: i64 = 0x626d_6d69_6772;

/// The advisory lock of the retention job ("bmdrop"): one instance drops at a time.
const DROP_LOCK: i64 = 0x626d_6472_6f70;

impl Store {
    /// Opens a pool. SQLite files get WAL journaling and a busy timeout, so the usage writer and
    /// request handlers do not trip over each other's locks.
    pub async fn connect(url: &str, config: &StoreConfig) -> Result<Self, StoreError> {
        let mut opts = ConnectOptions::new(url.to_owned());
        opts.max_connections(config.max_connections)
            .connect_timeout(config.connect_timeout)
            .acquire_timeout(config.acquire_timeout)
            .sqlx_logging(false);
        if url.starts_with("sqlite:") {
            opts.max_connections(config.max_connections.min(4)).map_sqlx_sqlite_opts(|o| {
                o.journal_mode(sea_orm::sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sea_orm::sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5))
                    .foreign_keys(true)
            });
        }
        let db = Database::connect(opts).await.map_err(StoreError::Connect)?;
        Ok(Self { db })
    }

    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    pub fn backend(&self) -> DatabaseBackend {
        self.db.get_database_backend()
    }

    /// Applies every pending migration. Running it again is a no-op.
    /// Applies the pending migrations. On Postgres under a session advisory lock, so replicas
    /// starting together (or a migration job beside them) apply each migration once: the
    /// others wait, then find nothing pending.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        if self.backend() != DatabaseBackend::Postgres {
            return Migrator::up(&self.db, None).await.map_err(StoreError::Migrate);
        }
        let pool = self.db.get_postgres_connection_pool();
        let sql_err = |e: sqlx::Error| StoreError::Migrate(error::sqlx_db_err(e));
        let mut lock = pool.acquire().await.map_err(sql_err)?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATE_LOCK)
            .execute(&mut *lock)
            .await
            .map_err(sql_err)?;
        let result = Migrator::up(&self.db, None).await.map_err(StoreError::Migrate);
        // Closing the connection would release it too; unlocking keeps it reusable.
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATE_LOCK)
            .execute(&mut *lock)
            .await;
        result
    }

    /// How many migrations are still to apply.
    pub async fn pending_migrations(&self) -> Result<usize, StoreError> {
        Ok(Migrator::get_pending_migrations(&self.db).await.map_err(StoreError::Migrate)?.len())
    }

    /// Recomputes the daily usage rollup (`usage_daily`) from `usage_logs` in one transaction
    /// (for an operator: after restoring `usage_logs`, or rows written by an instance too old
    /// to keep the rollup). On Postgres the usage writers wait until it commits (a `SHARE`
    /// lock on `usage_logs`) and their records are then added on top. Returns the rollup's
    /// row count.
    pub async fn rebuild_usage_rollup(&self) -> Result<u64, StoreError> {
        self.rebuild_in_txn().await.map_err(StoreError::Db)
    }

    async fn rebuild_in_txn(&self) -> Result<u64, sea_orm::DbErr> {
        use sea_orm::{ConnectionTrait as _, TransactionTrait as _};
        let txn = self.db.begin().await?;
        if self.backend() == DatabaseBackend::Postgres {
            txn.execute_unprepared("LOCK TABLE usage_logs IN SHARE MODE").await?;
            // Batches whose sums gateways hold are in usage_logs, so in what is recomputed:
            // their pending rows go, and the gateways drop the sums when they find them gone.
            txn.execute_unprepared("DELETE FROM usage_rollup_pending").await?;
            txn.execute_unprepared(migration::REBUILD_USAGE_DAILY_POSTGRES).await?;
        } else {
            txn.execute_unprepared(migration::REBUILD_USAGE_DAILY_SQLITE).await?;
        }
        let count = sea_orm::Statement::from_string(
            self.backend(),
            "SELECT CAST(count(*) AS BIGINT) AS n FROM usage_daily",
        );
        let n: i64 = match txn.query_one_raw(count).await? {
            Some(row) => row.try_get("", "n")?,
            None => 0,
        };
        txn.commit().await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Creates the `usage_logs` partitions for the month of `now` and the next one (Postgres).
    pub async fn ensure_usage_partitions(
        &self,
        now: OffsetDateTime,
    ) -> Result<Vec<String>, StoreError> {
        migration::ensure_usage_partitions(&self.db, now, 1).await.map_err(StoreError::Db)
    }

    /// Drops the raw usage rows that have outlived their plan's retention at `now`, by whole
    /// partitions on Postgres (rows on SQLite); the daily rollup and the invoices keep their
    /// totals. Idempotent: returns what it dropped, nothing on a second run.
    pub async fn drop_expired_usage(&self, now: OffsetDateTime) -> Result<Vec<String>, StoreError> {
        // Rows of months made before retention classes, and rows of an unknown class, go once
        // the longest retention of any plan (or the 365 days old rows were given) has passed.
        let longest = self
            .db
            .query_one_raw(Statement::from_string(
                self.backend(),
                "SELECT max(retention_days) AS n FROM billing_plans",
            ))
            .await
            .map_err(StoreError::Db)?
            .and_then(|r| r.try_get::<Option<i32>>("", "n").ok().flatten())
            .map_or(0, |n| u32::try_from(n).unwrap_or(0));
        let longest = migration::retention::retention_class(longest)
            .max(gateway_usage::DEFAULT_RETENTION_DAYS);
        if self.backend() != DatabaseBackend::Postgres {
            return migration::retention::drop_expired_usage(&self.db, now, longest)
                .await
                .map_err(StoreError::Db);
        }
        // One transaction under a lock that only one instance gets (the others find the work
        // done, or being done); the drops are catalog changes, over in milliseconds.

        let txn = self.db.begin().await.map_err(StoreError::Db)?;
        let locked = txn
            .query_one_raw(Statement::from_sql_and_values(
                DatabaseBackend::Postgres,
                "SELECT pg_try_advisory_xact_lock($1) AS locked",
                [DROP_LOCK.into()],
            ))
            .await
            .map_err(StoreError::Db)?
            .is_some_and(|r| r.try_get::<bool>("", "locked").unwrap_or(false));
        if !locked {
            return Ok(Vec::new());
        }
        let dropped = migration::retention::drop_expired_usage(&txn, now, longest)
            .await
            .map_err(StoreError::Db)?;
        txn.commit().await.map_err(StoreError::Db)?;
        Ok(dropped)
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.ping().await.map_err(StoreError::Db)
    }
}
