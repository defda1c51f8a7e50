//! Persistence of the server pool and the model routes: the `litellm_servers` and
//! `model_routes` tables behind a port.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use gateway_core::{HealthStatus, RouteId, ServerId, UpstreamServer};

use crate::routes::{ModelRoute, RouteUpdate};
use time::OffsetDateTime;

/// Errors of a server store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerStoreError {
    /// Another server has this base URL.
    #[error("a server with this base_url already exists")]
    Conflict,
    /// Another route has this name.
    #[error("a model route with this name already exists")]
    RouteNameTaken,
    #[error("server store failed")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// Changes to a server; `None` leaves a field alone, `Some(None)` clears an optional one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerUpdate {
    pub name: Option<String>,
    pub base_url: Option<String>,
    pub api_key: Option<Option<String>>,
    pub priority: Option<u32>,
    pub weight: Option<u32>,
    pub max_concurrent_requests: Option<Option<u32>>,
    pub supported_models: Option<Vec<String>>,
    pub is_active: Option<bool>,
}

impl ServerUpdate {
    pub fn apply(&self, s: &mut UpstreamServer) {
        if let Some(v) = &self.name {
            v.clone_into(&mut s.name);
        }
        if let Some(v) = &self.base_url {
            v.clone_into(&mut s.base_url);
        }
        if let Some(v) = &self.api_key {
            v.clone_into(&mut s.api_key);
        }
        s.priority = self.priority.unwrap_or(s.priority);
        s.weight = self.weight.unwrap_or(s.weight);
        if let Some(v) = self.max_concurrent_requests {
            s.max_concurrent_requests = v;
        }
        if let Some(v) = &self.supported_models {
            v.clone_into(&mut s.supported_models);
        }
        s.is_active = self.is_active.unwrap_or(s.is_active);
    }
}

/// The result of a health check, as persisted for the admin API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthRecord {
    pub status: HealthStatus,
    pub checked_at: OffsetDateTime,
    pub latency_ms: Option<u32>,
    pub consecutive_failures: u32,
    pub total_requests: u64,
    pub total_errors: u64,
}

/// The servers of the pool.
#[cfg_attr(any(test, feature = "test-util"), mockall::automock)]
#[async_trait]
pub trait ServerStore: Send + Sync {
    /// Every server, active or not, oldest first.
    async fn list_servers(&self) -> Result<Vec<UpstreamServer>, ServerStoreError>;
    /// One server, active or not.
    async fn get_server(&self, id: ServerId) -> Result<Option<UpstreamServer>, ServerStoreError>;
    async fn insert_server(&self, server: UpstreamServer) -> Result<(), ServerStoreError>;
    async fn update_server(
        &self,
        id: ServerId,
        update: ServerUpdate,
    ) -> Result<Option<UpstreamServer>, ServerStoreError>;
    async fn delete_server(&self, id: ServerId) -> Result<bool, ServerStoreError>;
    async fn record_health(
        &self,
        id: ServerId,
        health: HealthRecord,
    ) -> Result<(), ServerStoreError>;
    /// The last persisted health of every server.
    async fn health_records(&self) -> Result<HashMap<ServerId, HealthRecord>, ServerStoreError>;

    /// Every model route, active or not, in name order.
    async fn list_routes(&self) -> Result<Vec<ModelRoute>, ServerStoreError>;
    /// [`ServerStoreError::RouteNameTaken`] when another route has its name.
    async fn insert_route(&self, route: ModelRoute) -> Result<(), ServerStoreError>;
    async fn update_route(
        &self,
        id: RouteId,
        update: RouteUpdate,
    ) -> Result<Option<ModelRoute>, ServerStoreError>;
    async fn delete_route(&self, id: RouteId) -> Result<bool, ServerStoreError>;
}

/// Servers in process memory.
#[derive(Debug, Default)]
pub struct InMemoryServerStore {
    inner: Mutex<(Vec<UpstreamServer>, HashMap<ServerId, HealthRecord>)>,
    routes: Mutex<Vec<ModelRoute>>,
}

impl InMemoryServerStore {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, (Vec<UpstreamServer>, HashMap<ServerId, HealthRecord>)> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait]
impl ServerStore for InMemoryServerStore {
    async fn list_servers(&self) -> Result<Vec<UpstreamServer>, ServerStoreError> {
        Ok(self.lock().0.clone())
    }

    async fn get_server(&self, id: ServerId) -> Result<Option<UpstreamServer>, ServerStoreError> {
        Ok(self.lock().0.iter().find(|s| s.id == id).cloned())
    }

    async fn insert_server(&self, server: UpstreamServer) -> Result<(), ServerStoreError> {
        let mut inner = self.lock();
        if inner.0.iter().any(|s| s.base_url == server.base_url) {
            return Err(ServerStoreError::Conflict);
        }
        inner.0.push(server);
        Ok(())
    }

    async fn update_server(
        &self,
        id: ServerId,
        update: ServerUpdate,
    ) -> Result<Option<UpstreamServer>, ServerStoreError> {
        let mut inner = self.lock();
        let taken = |url: &String| inner.0.iter().any(|s| &s.base_url == url && s.id != id);
        if update.base_url.as_ref().is_some_and(taken) {
            return Err(ServerStoreError::Conflict);
        }
        Ok(inner.0.iter_mut().find(|s| s.id == id).map(|s| {
            update.apply(s);
            s.clone()
        }))
    }

    async fn delete_server(&self, id: ServerId) -> Result<bool, ServerStoreError> {
        let mut inner = self.lock();
        let before = inner.0.len();
        inner.0.retain(|s| s.id != id);
        inner.1.remove(&id);
        Ok(inner.0.len() < before)
    }

    async fn record_health(
        &self,
        id: ServerId,
        health: HealthRecord,
    ) -> Result<(), ServerStoreError> {
        let mut inner = self.lock();
        if let Some(s) = inner.0.iter_mut().find(|s| s.id == id) {
            s.health = health.status;
            inner.1.insert(id, health);
        }
        Ok(())
    }

    async fn health_records(&self) -> Result<HashMap<ServerId, HealthRecord>, ServerStoreError> {
        Ok(self.lock().1.clone())
    }

    async fn list_routes(&self) -> Result<Vec<ModelRoute>, ServerStoreError> {
        let mut routes = self.routes().clone();
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(routes)
    }

    async fn insert_route(&self, route: ModelRoute) -> Result<(), ServerStoreError> {
        let mut routes = self.routes();
        if routes.iter().any(|r| r.name == route.name) {
            return Err(ServerStoreError::RouteNameTaken);
        }
        routes.push(route);
        Ok(())
    }

    async fn update_route(
        &self,
        id: RouteId,
        update: RouteUpdate,
    ) -> Result<Option<ModelRoute>, ServerStoreError> {
        let mut routes = self.routes();
        if update.name.as_ref().is_some_and(|n| routes.iter().any(|r| &r.name == n && r.id != id)) {
            return Err(ServerStoreError::RouteNameTaken);
        }
        Ok(routes.iter_mut().find(|r| r.id == id).map(|r| {
            update.apply(r);
            r.clone()
        }))
    }

    async fn delete_route(&self, id: RouteId) -> Result<bool, ServerStoreError> {
        let mut routes = self.routes();
        let before = routes.len();
        routes.retain(|r| r.id != id);
        Ok(routes.len() < before)
    }
}

impl InMemoryServerStore {
    fn routes(&self) -> std::sync::MutexGuard<'_, Vec<ModelRoute>> {
        self.routes.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The contract of every [`ServerStore`] adapter.
#[cfg(any(test, feature = "test-util"))]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod conformance {
    use super::{
        HealthRecord, HealthStatus, OffsetDateTime, ServerId, ServerStore, ServerStoreError,
        ServerUpdate, UpstreamServer,
    };

    fn server(url: &str) -> UpstreamServer {
        UpstreamServer {
            id: ServerId::new(),
            name: format!("s {url}"),
            base_url: url.to_owned(),
            api_key: Some("sk-upstream".into()),
            priority: 2,
            weight: 3,
            max_concurrent_requests: Some(10),
            supported_models: vec!["gpt-4".into()],
            is_active: true,
            health: HealthStatus::Unknown,
        }
    }

    pub async fn server_store_contract(store: &dyn ServerStore) {
        let a = server("http://a:4000");
        let b = server("http://b:4000");
        store.insert_server(a.clone()).await.unwrap();
        store.insert_server(b.clone()).await.unwrap();
        let mut dup = server("http://a:4000");
        dup.name = "dup".into();
        assert!(matches!(store.insert_server(dup).await, Err(ServerStoreError::Conflict)));
        assert_eq!(store.list_servers().await.unwrap(), vec![a.clone(), b.clone()]);
        assert_eq!(store.get_server(b.id).await.unwrap(), Some(b.clone()));
        assert_eq!(store.get_server(ServerId::new()).await.unwrap(), None);

        let update = ServerUpdate {
            name: Some("renamed".into()),
            api_key: Some(None),
            max_concurrent_requests: Some(None),
            supported_models: Some(vec![]),
            is_active: Some(false),
            ..ServerUpdate::default()
        };
        let updated = store.update_server(a.id, update).await.unwrap().unwrap();
        assert_eq!(
            (updated.name.as_str(), updated.api_key.as_deref(), updated.max_concurrent_requests),
            ("renamed", None, None)
        );
        assert!(updated.supported_models.is_empty() && !updated.is_active);
        assert_eq!((updated.priority, updated.weight), (2, 3), "untouched");
        let taken =
            ServerUpdate { base_url: Some("http://b:4000".into()), ..ServerUpdate::default() };
        assert!(matches!(store.update_server(a.id, taken).await, Err(ServerStoreError::Conflict)));
        assert_eq!(
            store.update_server(ServerId::new(), ServerUpdate::default()).await.unwrap(),
            None
        );

        let checked_at = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let record = HealthRecord {
            status: HealthStatus::Unhealthy,
            checked_at,
            latency_ms: Some(12),
            consecutive_failures: 2,
            total_requests: 9,
            total_errors: 3,
        };
        store.record_health(b.id, record.clone()).await.unwrap();
        assert_eq!(store.health_records().await.unwrap().get(&b.id), Some(&record));
        let listed = store.list_servers().await.unwrap();
        assert_eq!(listed.iter().find(|s| s.id == b.id).unwrap().health, HealthStatus::Unhealthy);

        assert!(store.delete_server(a.id).await.unwrap());
        assert!(!store.delete_server(a.id).await.unwrap());
        assert_eq!(store.list_servers().await.unwrap().len(), 1);

        route_contract(store, b.id).await;
    }

    async fn route_contract(store: &dyn ServerStore, server: ServerId) {
        use crate::routes::{ModelRoute, RouteTarget, RouteUpdate};
        use gateway_core::RouteId;
        let smart = ModelRoute {
            id: RouteId::new(),
            name: "smart".into(),
            targets: vec![
                RouteTarget { server_id: Some(server), model: "gpt-4o".into(), weight: 3 },
                RouteTarget { server_id: None, model: "gpt-4o-2024".into(), weight: 1 },
            ],
            fallbacks: vec!["cheap".into()],
            is_active: true,
        };
        let cheap = ModelRoute {
            id: RouteId::new(),
            name: "cheap".into(),
            targets: vec![RouteTarget { server_id: None, model: "gpt-4o-mini".into(), weight: 1 }],
            fallbacks: vec![],
            is_active: false,
        };
        store.insert_route(smart.clone()).await.unwrap();
        store.insert_route(cheap.clone()).await.unwrap();
        let again = ModelRoute { id: RouteId::new(), ..cheap.clone() };
        assert!(matches!(store.insert_route(again).await, Err(ServerStoreError::RouteNameTaken)));
        assert_eq!(store.list_routes().await.unwrap(), vec![cheap.clone(), smart.clone()]);
        let rename = RouteUpdate { name: Some("smart".into()), ..RouteUpdate::default() };
        assert!(matches!(
            store.update_route(cheap.id, rename).await,
            Err(ServerStoreError::RouteNameTaken)
        ));
        let update = RouteUpdate {
            fallbacks: Some(vec![]),
            is_active: Some(false),
            ..RouteUpdate::default()
        };
        let updated = store.update_route(smart.id, update).await.unwrap().unwrap();
        assert_eq!((updated.fallbacks.len(), updated.is_active), (0, false));
        assert_eq!(updated.targets, smart.targets, "untouched");
        assert_eq!(store.list_routes().await.unwrap()[1], updated);
        assert_eq!(store.update_route(RouteId::new(), RouteUpdate::default()).await.unwrap(), None);
        assert!(store.delete_route(cheap.id).await.unwrap());
        assert!(!store.delete_route(cheap.id).await.unwrap());
        assert_eq!(store.list_routes().await.unwrap(), vec![updated]);
    }

    #[cfg(test)]
    #[tokio::test]
    async fn in_memory_store_meets_the_contract() {
        server_store_contract(&super::InMemoryServerStore::default()).await;
    }
}

/// A server setting that breaks a rule; the message is safe to show.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidServer {
    pub field: &'static str,
    pub message: &'static str,
}

/// Checks a server's settings: an http(s) base URL with a host and nothing the gateway would
/// leak or misread (credentials, query, fragment), a name, priority and weight of at least 1.
pub fn validate_server(s: &UpstreamServer) -> Result<(), InvalidServer> {
    let bad = |field, message| Err(InvalidServer { field, message });
    let rest = s.base_url.strip_prefix("https://").or_else(|| s.base_url.strip_prefix("http://"));
    let Some(rest) = rest else {
        return bad("base_url", "must start with http:// or https://");
    };
    let host = rest.split('/').next().unwrap_or("");
    let hostname = host
        .rsplit_once(':')
        .map_or(host, |(h, port)| if port.chars().all(|c| c.is_ascii_digit()) { h } else { host });
    if hostname.is_empty() || hostname.starts_with('.') {
        return bad("base_url", "must name a host");
    }
    if s.base_url.contains(['@', '?', '#']) || s.base_url.chars().any(char::is_whitespace) {
        return bad("base_url", "must not contain credentials, a query, a fragment or spaces");
    }
    if s.name.trim().is_empty() || s.name.chars().count() > 100 {
        return bad("name", "must be 1 to 100 characters");
    }
    if s.priority < 1 {
        return bad("priority", "must be at least 1");
    }
    if s.weight < 1 {
        return bad("weight", "must be at least 1");
    }
    if s.max_concurrent_requests == Some(0) {
        return bad("max_concurrent_requests", "must be at least 1");
    }
    if s.supported_models.iter().any(|m| m.trim().is_empty() || m.len() > 200) {
        return bad("supported_models", "must list non-empty model names");
    }
    Ok(())
}

#[cfg(test)]
mod validate_tests {
    use super::*;

    #[test]
    fn base_urls_must_be_plain_http_with_a_host() {
        let mut s = conformance_server("http://localhost:4000");
        assert!(validate_server(&s).is_ok());
        for (url, ok) in [
            ("https://llm.example.com/v1", true),
            ("http://10.0.0.5:4000/", true),
            ("ftp://x", false),
            ("http://", false),
            ("http://:4000", false),
            ("http://user:pw@host", false),
            ("http://host/?x=1", false),
            ("localhost:4000", false),
        ] {
            s.base_url = url.into();
            assert_eq!(validate_server(&s).is_ok(), ok, "{url}");
        }
        s.base_url = "http://h".into();
        s.priority = 0;
        assert_eq!(validate_server(&s).unwrap_err().field, "priority");
    }

    fn conformance_server(url: &str) -> UpstreamServer {
        UpstreamServer {
            id: ServerId::new(),
            name: "s".into(),
            base_url: url.into(),
            api_key: None,
            priority: 1,
            weight: 1,
            max_concurrent_requests: None,
            supported_models: vec![],
            is_active: true,
            health: HealthStatus::Unknown,
        }
    }
}
