//! Throw-away databases for tests: a fresh SQLite file, or a fresh Postgres database created
//! next to the one `TEST_DATABASE_URL` names and dropped again when the handle is dropped (even
//! when the test panics), so test runs never see each other's rows.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test support: failing loudly is the job

use sea_orm::{ConnectionTrait, Database};

use crate::{Store, StoreConfig};

/// Which database a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database that exists for one test.
#[derive(Debug)]
pub struct TestDb {
    pub store: Store,
    pub url: String,
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

/// The Postgres URL tests should use, if configured.
pub fn postgres_url() -> Option<String> {
    std::env::var("TEST_DATABASE_URL").ok().filter(|u| !u.is_empty())
}

/// `TEST_DATABASE_URL`, or a panic saying how to run the suite: a test that needs Postgres
/// never passes without it.
pub fn require_postgres() -> String {
    postgres_url().unwrap_or_else(|| panic!("TEST_DATABASE_URL is not set: run `bash scripts/test.sh`, which brings Postgres up and sets it"))
}

/// `TEST_REDIS_URL`, or a panic saying how to run the suite.
pub fn require_redis() -> String {
    std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| panic!("TEST_REDIS_URL is not set: run `bash scripts/test.sh`, which brings Redis up and sets it"))
}

/// `TEST_REDIS_CLUSTER_URL` (a three-master Redis Cluster), or a failure saying how to run
/// the test.
pub fn require_redis_cluster() -> String {
    std::env::var("TEST_REDIS_CLUSTER_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| panic!("TEST_REDIS_CLUSTER_URL is not set: run `bash scripts/test.sh`, which starts a three-master Redis Cluster and sets it"))
}

/// The backends every conformance test runs against: SQLite and Postgres (`TEST_DATABASE_URL`
/// must be set; see [`require_postgres`]).
pub fn backends() -> Vec<Backend> {
    require_postgres();
    vec![Backend::Sqlite, Backend::Postgres]
}

/// Replaces the database name (the URL's path) of a Postgres URL.
pub fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    let mut out = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

impl TestDb {
    /// Creates an empty, unmigrated database.
    pub async fn empty(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("tempdir");
                let url = format!("sqlite://{}?mode=rwc", dir.path().join("test.db").display());
                let store = Store::connect(&url, &StoreConfig::default()).await.expect("sqlite");
                TestDb { store, url, cleanup: Cleanup::Sqlite(dir) }
            }
            Backend::Postgres => {
                let admin_url = postgres_url().expect("TEST_DATABASE_URL");
                let name = format!("bm_test_{}", uuid::Uuid::new_v4().simple());
                let admin = Database::connect(&admin_url).await.expect("connect TEST_DATABASE_URL");
                admin
                    .execute_unprepared(&format!("CREATE DATABASE {name}"))
                    .await
                    .expect("create test database");
                admin.close().await.ok();
                let url = with_database(&admin_url, &name);
                let store = Store::connect(&url, &StoreConfig::default()).await.expect("postgres");
                TestDb { store, url, cleanup: Cleanup::Postgres { admin_url, name } }
            }
        }
    }

    /// Creates a database with the schema applied.
    pub async fn migrated(backend: Backend) -> TestDb {
        let db = Self::empty(backend).await;
        db.store.migrate().await.expect("migrate");
        db
    }

    pub fn backend(&self) -> Backend {
        match self.cleanup {
            Cleanup::Sqlite(_) => Backend::Sqlite,
            Cleanup::Postgres { .. } => Backend::Postgres,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Cleanup::Postgres { admin_url, name } = &self.cleanup else { return };
        let (admin_url, name) = (admin_url.clone(), name.clone());
        // Drop may run inside a runtime; do the async cleanup on a thread of its own.
        let handle = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    if let Ok(admin) = Database::connect(&admin_url).await {
                        let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                        let _ = admin.execute_unprepared(&sql).await;
                        let _ = admin.close().await;
                    }
                });
            }
        });
        let _ = handle.join();
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_name_is_replaced_keeping_credentials_and_query() {
        assert_eq!(
            with_database("postgres://u:p@127.0.0.1:5432/test?sslmode=disable", "x"),
            "postgres://u:p@127.0.0.1:5432/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://127.0.0.1", "x"), "postgres://127.0.0.1/x");
    }
}
