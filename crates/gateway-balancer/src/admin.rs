//! The admin rules of the server pool: defaults, validation, the change applied to this
//! instance's pool at once and announced to the others, and what an admin sees of each server
//! (its settings joined with this instance's view of its health).

use std::sync::Arc;

use gateway_core::{HealthStatus, RouteId, ServerId, UpstreamServer};
use time::OffsetDateTime;

use crate::health::{CheckReport, HealthConfig, Prober, check_all};
use crate::routes::{InvalidRoute, ModelRoute, RouteTarget, RouteUpdate, validate_route};
use crate::store::{HealthRecord, InvalidServer, ServerStore, ServerStoreError, ServerUpdate};
use crate::{ServerPool, ServerState, validate_server};

/// A server as an admin adds it; what is left out takes its default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewServer {
    pub name: String,
    pub base_url: String,
    /// Empty means none.
    pub api_key: Option<String>,
    /// Default 1 (the most preferred).
    pub priority: Option<u32>,
    /// Default 1.
    pub weight: Option<u32>,
    pub max_concurrent_requests: Option<u32>,
    /// Default: none listed, which means any model.
    pub supported_models: Option<Vec<String>>,
    /// Default true.
    pub is_active: Option<bool>,
}

/// Why an admin change was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    #[error("invalid server: {0}")]
    Invalid(InvalidServer),
    #[error("no such server")]
    NotFound,
    /// Another server has this base URL.
    #[error("a server with this base_url already exists")]
    Conflict,
    #[error("invalid model route: {0}")]
    InvalidRoute(InvalidRoute),
    #[error("no such model route")]
    RouteNotFound,
    /// Another route has this name.
    #[error("a model route with this name already exists")]
    RouteNameTaken,
    #[error(transparent)]
    Store(ServerStoreError),
}

impl From<ServerStoreError> for AdminError {
    fn from(e: ServerStoreError) -> Self {
        match e {
            ServerStoreError::Conflict => AdminError::Conflict,
            ServerStoreError::RouteNameTaken => AdminError::RouteNameTaken,
            other => AdminError::Store(other),
        }
    }
}

/// A model route as an admin adds it; what is left out takes its default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewRoute {
    pub name: String,
    pub targets: Vec<RouteTarget>,
    /// Default: none.
    pub fallbacks: Option<Vec<String>>,
    /// Default true.
    pub is_active: Option<bool>,
}

/// A server's health as this instance sees it: the pool's runtime state where the server is in
/// the pool, the last persisted check otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHealth {
    pub status: HealthStatus,
    pub last_check_at: Option<OffsetDateTime>,
    pub latency_ms: Option<u32>,
    pub consecutive_failures: u32,
    pub in_flight: u32,
    pub circuit_open: bool,
    pub total_requests: u64,
    pub total_errors: u64,
}

/// A server with its health, and what the last check said when there was one just now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerReport {
    pub server: UpstreamServer,
    pub health: ServerHealth,
    /// Why the check just run failed, if it did.
    pub detail: Option<String>,
}

/// Told after every change, to reach the other instances (the invalidation bus).
pub trait PoolChanged: Send + Sync {
    fn servers_changed(&self);
}

/// The admin operations on the server pool.
pub struct ServerAdmin {
    store: Arc<dyn ServerStore>,
    pool: Arc<ServerPool>,
    announce: Arc<dyn PoolChanged>,
}

impl std::fmt::Debug for ServerAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerAdmin").field("pool", &self.pool).finish_non_exhaustive()
    }
}

impl ServerAdmin {
    pub fn new(
        store: Arc<dyn ServerStore>,
        pool: Arc<ServerPool>,
        announce: Arc<dyn PoolChanged>,
    ) -> Self {
        Self { store, pool, announce }
    }

    /// Loads the pool and the model routes from the store. Servers that stay keep their
    /// runtime state.
    pub async fn reload(&self) -> Result<(), ServerStoreError> {
        self.pool.replace(self.store.list_servers().await?);
        self.pool.replace_routes(self.store.list_routes().await?);
        Ok(())
    }

    /// Every model route, active or not, in name order.
    pub async fn routes(&self) -> Result<Vec<ModelRoute>, AdminError> {
        Ok(self.store.list_routes().await?)
    }

    /// Adds a model route (checked before anything is written; a pinned server must exist),
    /// then applies it everywhere.
    pub async fn create_route(&self, new: NewRoute) -> Result<ModelRoute, AdminError> {
        let route = ModelRoute {
            id: RouteId::new(),
            name: new.name.trim().to_owned(),
            targets: new.targets,
            fallbacks: new.fallbacks.unwrap_or_default(),
            is_active: new.is_active.unwrap_or(true),
        };
        self.check_route(&route).await?;
        self.store.insert_route(route.clone()).await?;
        self.changed().await?;
        tracing::info!(route = %route.name, "model route added");
        Ok(route)
    }

    /// Changes a model route; the result is checked before anything is written.
    pub async fn update_route(
        &self,
        id: RouteId,
        mut update: RouteUpdate,
    ) -> Result<ModelRoute, AdminError> {
        update.name = update.name.map(|n| n.trim().to_owned());
        let routes = self.store.list_routes().await?;
        let mut preview =
            routes.into_iter().find(|r| r.id == id).ok_or(AdminError::RouteNotFound)?;
        update.apply(&mut preview);
        self.check_route(&preview).await?;
        let route = self.store.update_route(id, update).await?.ok_or(AdminError::RouteNotFound)?;
        self.changed().await?;
        tracing::info!(route = %route.name, "model route changed");
        Ok(route)
    }

    pub async fn delete_route(&self, id: RouteId) -> Result<(), AdminError> {
        if !self.store.delete_route(id).await? {
            return Err(AdminError::RouteNotFound);
        }
        self.changed().await?;
        tracing::info!(route = %id, "model route deleted");
        Ok(())
    }

    async fn check_route(&self, route: &ModelRoute) -> Result<(), AdminError> {
        validate_route(route).map_err(AdminError::InvalidRoute)?;
        for server in route.targets.iter().filter_map(|t| t.server_id) {
            if self.store.get_server(server).await?.is_none() {
                return Err(AdminError::InvalidRoute(InvalidRoute {
                    field: "targets",
                    message: format!("no server has the id {server}"),
                }));
            }
        }
        Ok(())
    }

    /// Every server, active or not, oldest first.
    pub async fn list(&self) -> Result<Vec<ServerReport>, AdminError> {
        let servers = self.store.list_servers().await?;
        let records = self.store.health_records().await?;
        Ok(servers
            .into_iter()
            .map(|s| {
                let record = records.get(&s.id);
                self.report(s, record, None)
            })
            .collect())
    }

    /// The servers of this instance's pool, as it sees them now.
    pub async fn health(&self) -> Result<Vec<ServerReport>, AdminError> {
        let records = self.store.health_records().await?;
        let snapshot = self.pool.snapshot();
        Ok(snapshot
            .iter()
            .map(|s| report_of(s.server().clone(), Some(s), records.get(&s.server().id), None))
            .collect())
    }

    pub async fn get(&self, id: ServerId) -> Result<ServerReport, AdminError> {
        let server = self.store.get_server(id).await?.ok_or(AdminError::NotFound)?;
        let records = self.store.health_records().await?;
        Ok(self.report(server, records.get(&id), None))
    }

    /// Adds a server (defaults applied, names and URLs trimmed, checked before anything is
    /// written), then applies the change everywhere.
    pub async fn create(&self, new: NewServer) -> Result<ServerReport, AdminError> {
        let server = UpstreamServer {
            id: ServerId::new(),
            name: new.name.trim().to_owned(),
            base_url: new.base_url.trim().to_owned(),
            api_key: new.api_key.filter(|k| !k.is_empty()),
            priority: new.priority.unwrap_or(1),
            weight: new.weight.unwrap_or(1),
            max_concurrent_requests: new.max_concurrent_requests,
            supported_models: new.supported_models.unwrap_or_default(),
            is_active: new.is_active.unwrap_or(true),
            health: HealthStatus::Unknown,
        };
        validate_server(&server).map_err(AdminError::Invalid)?;
        self.store.insert_server(server.clone()).await?;
        self.changed().await?;
        tracing::info!(server = %server.name, base_url = %server.base_url, "upstream server added");
        Ok(self.report(server, None, None))
    }

    /// Changes a server; the result is checked before anything is written.
    pub async fn update(
        &self,
        id: ServerId,
        mut update: ServerUpdate,
    ) -> Result<ServerReport, AdminError> {
        update.name = update.name.map(|n| n.trim().to_owned());
        update.base_url = update.base_url.map(|u| u.trim().to_owned());
        update.api_key = update.api_key.map(|k| k.filter(|k| !k.is_empty()));
        let mut preview = self.store.get_server(id).await?.ok_or(AdminError::NotFound)?;
        update.apply(&mut preview);
        validate_server(&preview).map_err(AdminError::Invalid)?;
        let server = self.store.update_server(id, update).await?.ok_or(AdminError::NotFound)?;
        self.changed().await?;
        tracing::info!(server = %server.name, "upstream server changed");
        Ok(self.report(server, None, None))
    }

    pub async fn delete(&self, id: ServerId) -> Result<(), AdminError> {
        if !self.store.delete_server(id).await? {
            return Err(AdminError::NotFound);
        }
        self.changed().await?;
        tracing::info!(server = %id, "upstream server deleted");
        Ok(())
    }

    /// Checks every server now (after reloading the pool) and reports the results.
    pub async fn check_now(
        &self,
        prober: &dyn Prober,
        config: &HealthConfig,
    ) -> Result<Vec<ServerReport>, AdminError> {
        self.reload().await?;
        let checked = self.check(prober, config).await;
        Ok(checked
            .into_iter()
            .map(|CheckReport { server, record, detail }| {
                self.report(server, Some(&record), detail)
            })
            .collect())
    }

    /// One round of active health checks, results persisted (the periodic round).
    pub async fn check(&self, prober: &dyn Prober, config: &HealthConfig) -> Vec<CheckReport> {
        check_all(&self.pool, prober, self.store.as_ref(), config).await
    }

    /// Applies a change here now and on other instances through `announce`.
    async fn changed(&self) -> Result<(), AdminError> {
        self.reload().await?;
        self.announce.servers_changed();
        Ok(())
    }

    fn report(
        &self,
        server: UpstreamServer,
        record: Option<&HealthRecord>,
        detail: Option<String>,
    ) -> ServerReport {
        let snapshot = self.pool.snapshot();
        let state = snapshot.iter().find(|s| s.server().id == server.id);
        report_of(server, state.map(AsRef::as_ref), record, detail)
    }
}

fn report_of(
    server: UpstreamServer,
    state: Option<&ServerState>,
    record: Option<&HealthRecord>,
    detail: Option<String>,
) -> ServerReport {
    let last = state.and_then(ServerState::last_check).or_else(|| record.cloned());
    let (total_requests, total_errors) = state.map(ServerState::totals).unwrap_or_default();
    let health = ServerHealth {
        status: state.map_or(server.health, ServerState::health),
        last_check_at: last.as_ref().map(|r| r.checked_at),
        latency_ms: last.as_ref().and_then(|r| r.latency_ms),
        consecutive_failures: state.map_or(0, ServerState::consecutive_failures),
        in_flight: state.map_or(0, ServerState::in_flight),
        circuit_open: state.is_some_and(ServerState::circuit_open),
        total_requests,
        total_errors,
    };
    ServerReport { server, health, detail }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::store::{InMemoryServerStore, MockServerStore};
    use crate::{BreakerConfig, ServerPool};

    #[derive(Default)]
    struct Announced(AtomicUsize);

    impl PoolChanged for Announced {
        fn servers_changed(&self) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn admin(store: Arc<dyn ServerStore>) -> (ServerAdmin, Arc<ServerPool>, Arc<Announced>) {
        let pool = Arc::new(ServerPool::new(BreakerConfig::default()));
        let announced = Arc::new(Announced::default());
        (ServerAdmin::new(store, pool.clone(), announced.clone()), pool, announced)
    }

    fn new(url: &str) -> NewServer {
        NewServer { name: " primary ".into(), base_url: format!(" {url} "), ..NewServer::default() }
    }

    #[tokio::test]
    async fn a_new_server_gets_its_defaults_and_reaches_the_pool_and_the_other_instances() {
        let (admin, pool, announced) = admin(Arc::new(InMemoryServerStore::default()));
        let r = admin
            .create(NewServer { api_key: Some(String::new()), ..new("http://a:4000") })
            .await
            .unwrap();
        let s = &r.server;
        assert_eq!((s.name.as_str(), s.base_url.as_str()), ("primary", "http://a:4000"));
        assert_eq!((s.priority, s.weight, s.is_active, s.api_key.as_deref()), (1, 1, true, None));
        assert_eq!(pool.snapshot().len(), 1, "in this instance's pool at once");
        assert_eq!(announced.0.load(Ordering::Relaxed), 1, "announced to the others");
        assert_eq!(admin.get(s.id).await.unwrap().server, r.server);
        assert!(matches!(admin.create(new("http://a:4000")).await, Err(AdminError::Conflict)));
    }

    #[tokio::test]
    async fn an_invalid_server_is_refused_before_anything_is_written() {
        // No expectation on the mock: any write would fail the test.
        let (admin, _, announced) = admin(Arc::new(MockServerStore::new()));
        let e = admin.create(new("ftp://a")).await.unwrap_err();
        assert!(matches!(e, AdminError::Invalid(InvalidServer { field: "base_url", .. })));
        assert_eq!(announced.0.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn an_update_is_checked_on_the_result_before_it_is_written() {
        let store = Arc::new(InMemoryServerStore::default());
        let (admin, _, announced) = admin(store.clone());
        let id = admin.create(new("http://a:4000")).await.unwrap().server.id;
        let zero = ServerUpdate { weight: Some(0), ..ServerUpdate::default() };
        let e = admin.update(id, zero).await.unwrap_err();
        assert!(matches!(e, AdminError::Invalid(InvalidServer { field: "weight", .. })));
        assert_eq!(store.get_server(id).await.unwrap().unwrap().weight, 1, "unchanged");
        let rename = ServerUpdate { name: Some("  backup ".into()), ..ServerUpdate::default() };
        assert_eq!(admin.update(id, rename).await.unwrap().server.name, "backup");
        let missing = admin.update(ServerId::new(), ServerUpdate::default()).await;
        assert!(matches!(missing, Err(AdminError::NotFound)));
        assert_eq!(announced.0.load(Ordering::Relaxed), 2);
    }

    #[tokio::test]
    async fn deleting_removes_the_server_from_the_pool_and_twice_is_not_found() {
        let (admin, pool, _) = admin(Arc::new(InMemoryServerStore::default()));
        let id = admin.create(new("http://a:4000")).await.unwrap().server.id;
        admin.delete(id).await.unwrap();
        assert!(pool.snapshot().is_empty());
        assert!(matches!(admin.delete(id).await, Err(AdminError::NotFound)));
    }

    #[tokio::test]
    async fn a_store_that_fails_is_reported_as_such() {
        let mut store = MockServerStore::new();
        store
            .expect_list_servers()
            .returning(|| Err(ServerStoreError::Store("database down".into())));
        let (admin, _, _) = admin(Arc::new(store));
        assert!(matches!(admin.list().await, Err(AdminError::Store(_))));
    }
}
