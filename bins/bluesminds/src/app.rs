//! The application: configuration plus every adapter, wired once at start and shared by all
//! requests.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use gateway_auth::Accounts;
use gateway_store::{SqlAuthStore, Store, StoreConfig};
use tokio::sync::Semaphore;

use crate::config::Config;

/// Shared state of a running gateway.
pub struct App {
    pub config: Config,
    pub store: Store,
    pub redis: Option<deadpool_redis::Pool>,
    pub accounts: Accounts,
    /// One permit per request in flight (open streams included).
    pub in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Opens the database (and migrates it when told to).
pub async fn open_store(config: &Config, migrate: bool) -> anyhow::Result<Store> {
    let store_config =
        StoreConfig { max_connections: config.database.max_connections, ..StoreConfig::default() };
    let store = Store::connect(&config.database.url, &store_config).await.with_context(|| {
        format!("cannot open the database ({})", redact_url(&config.database.url))
    })?;
    if migrate {
        store.migrate().await.context("database migration failed")?;
        store
            .ensure_usage_partitions(time::OffsetDateTime::now_utc())
            .await
            .context("cannot create usage_logs partitions")?;
    }
    Ok(store)
}

impl App {
    pub async fn build(config: Config) -> anyhow::Result<App> {
        let store = open_store(&config, config.database.migrate_on_start).await?;
        let redis = if config.redis.url.is_empty() {
            None
        } else {
            let mut cfg = deadpool_redis::Config::from_url(config.redis.url.clone());
            let mut pool = deadpool_redis::PoolConfig::new(config.redis.pool_size.max(1));
            pool.timeouts.wait = Some(Duration::from_millis(500));
            pool.timeouts.create = Some(Duration::from_millis(500));
            pool.timeouts.recycle = Some(Duration::from_millis(500));
            cfg.pool = Some(pool);
            Some(cfg.create_pool(Some(deadpool_redis::Runtime::Tokio1)).with_context(|| {
                format!("invalid redis.url ({})", redact_url(&config.redis.url))
            })?)
        };
        let auth_store = Arc::new(SqlAuthStore::new(store.clone()));
        let accounts = Accounts::new(auth_store.clone(), auth_store, config.auth.bcrypt_cost);
        let in_flight = Arc::new(Semaphore::new(config.server.max_in_flight));
        Ok(App { config, store, redis, accounts, in_flight })
    }
}

/// A URL with its password replaced, for logs and errors.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let rest = &url[scheme_end..];
    let host_start = rest.find('/').unwrap_or(rest.len());
    match rest[..host_start].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{}{user}:***@{}", &url[..scheme_end], &rest[at + 1..])
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(redact_url("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_url("redis://:pw@h:6379"), "redis://:***@h:6379");
        assert_eq!(redact_url("sqlite://x.db?mode=rwc"), "sqlite://x.db?mode=rwc");
    }
}
