//! The upstream server pool of the BluesMinds gateway: an in-memory snapshot of the active
//! servers, swapped atomically on change and never queried per request.
//!
//! Selection (servers that support the model and are healthy, lowest priority number first,
//! then a weighted power of two choices on in-flight count and latency), active health checks
//! and circuit breaking land with the gateway-path issue; today the pool answers which servers
//! exist and which models they declare.
//!
//! ```
//! use gateway_balancer::ServerPool;
//! use gateway_core::{HealthStatus, ServerId, UpstreamServer};
//!
//! let pool = ServerPool::default();
//! pool.replace(vec![UpstreamServer {
//!     id: ServerId::new(),
//!     name: "primary".into(),
//!     base_url: "http://localhost:4000".into(),
//!     api_key: None,
//!     priority: 1,
//!     weight: 1,
//!     max_concurrent_requests: None,
//!     supported_models: vec!["gpt-4".into()],
//!     is_active: true,
//!     health: HealthStatus::Unknown,
//! }]);
//! assert_eq!(pool.models(), vec!["gpt-4".to_string()]);
//! ```

use std::collections::BTreeSet;
use std::sync::Arc;

use arc_swap::ArcSwap;
use gateway_core::UpstreamServer;

/// The servers of the pool, readable without locks.
#[derive(Debug, Default)]
pub struct ServerPool {
    servers: ArcSwap<Vec<Arc<UpstreamServer>>>,
}

impl ServerPool {
    /// Replaces the whole pool at once; readers see the old or the new list, never a mix.
    pub fn replace(&self, servers: Vec<UpstreamServer>) {
        self.servers.store(Arc::new(servers.into_iter().map(Arc::new).collect()));
    }

    /// The current servers.
    pub fn snapshot(&self) -> Arc<Vec<Arc<UpstreamServer>>> {
        self.servers.load_full()
    }

    /// Models declared by active servers, sorted and without duplicates.
    pub fn models(&self) -> Vec<String> {
        let servers = self.servers.load();
        let models: BTreeSet<&String> = servers
            .iter()
            .filter(|s| s.is_active)
            .flat_map(|s| s.supported_models.iter())
            .collect();
        models.into_iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_core::{HealthStatus, ServerId};

    fn server(models: &[&str], active: bool) -> UpstreamServer {
        UpstreamServer {
            id: ServerId::new(),
            name: "s".into(),
            base_url: "http://h".into(),
            api_key: None,
            priority: 1,
            weight: 1,
            max_concurrent_requests: None,
            supported_models: models.iter().map(|m| (*m).to_owned()).collect(),
            is_active: active,
            health: HealthStatus::Unknown,
        }
    }

    #[test]
    fn models_are_the_union_of_active_servers() {
        let pool = ServerPool::default();
        assert!(pool.models().is_empty());
        pool.replace(vec![
            server(&["b", "a"], true),
            server(&["a", "c"], true),
            server(&["z"], false),
        ]);
        assert_eq!(pool.models(), vec!["a", "b", "c"]);
        assert_eq!(pool.snapshot().len(), 3);
    }
}
