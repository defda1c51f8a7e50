//! The upstream server pool of the BluesMinds gateway: an in-memory snapshot of the servers,
//! swapped atomically on change and never queried per request, with the runtime state each
//! server needs for selection (in-flight count, latency average, health, circuit).
//!
//! Selection: active servers that support the model, are not unhealthy and whose circuit lets
//! a request through; the lowest priority number first; within a priority, the power of two
//! choices: two servers drawn by weight, the less loaded one wins (in-flight requests and
//! latency, relative to weight), never beyond `max_concurrent_requests`. Passive detection:
//! consecutive failures that are the server's (see [`Outcome::Failure`]) open its circuit for a
//! cooldown; then one trial request closes or reopens it. At most
//! [`BreakerConfig::max_ejected_percent`] of the servers (at least one) are out at once.
//!
//! ```
//! use gateway_balancer::{Outcome, ServerPool};
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
//! let pick = pool.select("gpt-4", &[]).expect("a server");
//! assert_eq!(pick.server().name, "primary");
//! pick.finish(Outcome::Success { latency_ms: 12 });
//! assert!(pool.select("claude-3", &[]).is_none());
//! ```

pub mod admin;
pub mod health;
pub mod routes;
mod state;
pub mod store;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use gateway_core::{ServerId, UpstreamServer};
use smallvec::SmallVec;

pub use admin::{
    AdminError, NewRoute, NewServer, PoolChanged, ServerAdmin, ServerHealth, ServerReport,
};
pub use health::{CheckReport, HealthConfig, ProbeResult, Prober, check_all};
pub use routes::{Candidate, InvalidRoute, ModelRoute, RoutePlan, RouteTarget, RouteUpdate};
pub use state::{BreakerConfig, Outcome, Selected, ServerState};
pub use store::{
    HealthRecord, InMemoryServerStore, InvalidServer, ServerStore, ServerStoreError, ServerUpdate,
    validate_server,
};

/// Candidate servers while one is chosen: on the stack for up to eight (every request picks
/// one).
type Servers<'a> = SmallVec<[&'a Arc<ServerState>; 8]>;

/// The servers of the pool and the model routes, readable without locks.
#[derive(Debug, Default)]
pub struct ServerPool {
    servers: ArcSwap<Vec<Arc<ServerState>>>,
    /// Active routes by public name.
    routes: ArcSwap<HashMap<String, Arc<ModelRoute>>>,
    breaker: BreakerConfig,
    ejections: Arc<state::Ejections>,
}

impl ServerPool {
    pub fn new(breaker: BreakerConfig) -> Self {
        Self {
            servers: ArcSwap::default(),
            routes: ArcSwap::default(),
            breaker,
            ejections: Arc::default(),
        }
    }

    /// Replaces the model routes (inactive ones are dropped).
    pub fn replace_routes(&self, routes: Vec<ModelRoute>) {
        let active =
            routes.into_iter().filter(|r| r.is_active).map(|r| (r.name.clone(), Arc::new(r)));
        self.routes.store(Arc::new(active.collect()));
    }

    /// How `name` is served, when a route defines it (`None`: served as itself). One map
    /// lookup, skipped while there are no routes.
    pub fn plan(&self, name: &str) -> Option<RoutePlan> {
        let routes = self.routes.load();
        if routes.is_empty() {
            return None;
        }
        let route = routes.get(name)?;
        let stage_of = |name: &str| match routes.get(name) {
            Some(r) => r
                .targets
                .iter()
                .map(|t| Candidate {
                    server: t.server_id,
                    model: t.model.clone(),
                    weight: t.weight,
                })
                .collect(),
            None => vec![Candidate::any_server(name)],
        };
        let mut stages = vec![stage_of(&route.name)];
        stages.extend(route.fallbacks.iter().map(|f| stage_of(f)));
        Some(RoutePlan { stages })
    }

    /// Picks a candidate of `stage` (by weight, among those a healthy server can take) and a
    /// server for it, skipping `exclude`. Returns the server and the candidate's index.
    pub fn select_candidate(
        &self,
        stage: &[Candidate],
        exclude: &[ServerId],
    ) -> Option<(Selected, usize)> {
        let now = state::now_ms();
        let servers = self.servers.load();
        let viable = |c: &Candidate| {
            servers.iter().any(|s| {
                c.server.is_none_or(|id| s.server().id == id)
                    && !exclude.contains(&s.server().id)
                    && s.is_eligible(&c.model, now)
            })
        };
        let mut open: Vec<usize> = (0..stage.len()).filter(|&i| viable(&stage[i])).collect();
        while !open.is_empty() {
            let total: u64 = open.iter().map(|&i| u64::from(stage[i].weight.max(1))).sum();
            let mut ticket = fastrand::u64(0..total.max(1));
            let mut drawn = open[open.len() - 1];
            for &i in &open {
                let w = u64::from(stage[i].weight.max(1));
                if ticket < w {
                    drawn = i;
                    break;
                }
                ticket -= w;
            }
            let c = &stage[drawn];
            if let Some(picked) = self.select_where(&c.model, exclude, c.server) {
                return Some((picked, drawn));
            }
            // Full since the check: the others.
            open.retain(|&i| i != drawn);
        }
        None
    }

    /// Replaces the pool. Servers that stay (same id) keep their runtime state (in-flight
    /// count, latency, health, circuit); readers see the old or the new list, never a mix.
    pub fn replace(&self, servers: Vec<UpstreamServer>) {
        let old: HashMap<ServerId, Arc<ServerState>> =
            self.servers.load().iter().map(|s| (s.server().id, s.clone())).collect();
        let active = servers.iter().filter(|s| s.is_active).count();
        self.ejections.servers.store(active, std::sync::atomic::Ordering::Relaxed);
        let next = servers
            .into_iter()
            .map(|server| match old.get(&server.id) {
                Some(prev) => Arc::new(prev.with_server(server)),
                None => Arc::new(ServerState::in_pool(
                    server,
                    self.breaker.clone(),
                    self.ejections.clone(),
                )),
            })
            .collect();
        self.servers.store(Arc::new(next));
    }

    /// The current servers with their state.
    pub fn snapshot(&self) -> Arc<Vec<Arc<ServerState>>> {
        self.servers.load_full()
    }

    /// Whether a route defines `model`, or some active server could ever serve it (ignoring
    /// health).
    pub fn knows_model(&self, model: &str) -> bool {
        self.routes.load().contains_key(model)
            || self.servers.load().iter().any(|s| s.server().is_active && s.supports(model))
    }

    /// The names clients may call, sorted: the routes', and the models of active servers
    /// (declared, or discovered by health checks).
    pub fn models(&self) -> Vec<String> {
        let servers = self.servers.load();
        let mut models: BTreeSet<String> = self.routes.load().keys().cloned().collect();
        for s in servers.iter().filter(|s| s.server().is_active) {
            models.extend(s.models());
        }
        models.into_iter().collect()
    }

    /// Picks a server for `model`, skipping `exclude` (servers already tried for this
    /// request). `None`: no healthy server can take it.
    pub fn select(&self, model: &str, exclude: &[ServerId]) -> Option<Selected> {
        self.select_where(model, exclude, None)
    }

    /// [`Self::select`] among `only` when it is given.
    fn select_where(
        &self,
        model: &str,
        exclude: &[ServerId],
        only: Option<ServerId>,
    ) -> Option<Selected> {
        let servers = self.servers.load();
        let now = state::now_ms();
        let mut eligible: Servers<'_> = servers
            .iter()
            .filter(|s| {
                only.is_none_or(|id| s.server().id == id)
                    && !exclude.contains(&s.server().id)
                    && s.is_eligible(model, now)
            })
            .collect();
        while let Some(best_priority) = eligible.iter().map(|s| s.server().priority).min() {
            let mut tier: Servers<'_> =
                eligible.iter().copied().filter(|s| s.server().priority == best_priority).collect();
            eligible.retain(|s| s.server().priority != best_priority);
            while let Some(candidate) = Self::two_choices(&tier) {
                if let Some(picked) = candidate.try_acquire(now) {
                    return Some(picked);
                }
                // Full since the check, or its circuit's trial is taken: try the others.
                tier.retain(|s| !Arc::ptr_eq(s, candidate));
            }
        }
        None
    }

    /// Two weighted draws; the one with the lower load score wins.
    fn two_choices<'a>(tier: &[&'a Arc<ServerState>]) -> Option<&'a Arc<ServerState>> {
        let open: Servers<'a> = tier.iter().copied().filter(|s| s.has_capacity()).collect();
        match open.len() {
            0 => None,
            1 => Some(open[0]),
            _ => {
                let a = Self::weighted(&open);
                let b = Self::weighted(&open);
                Some(if a.score() <= b.score() { a } else { b })
            }
        }
    }

    fn weighted<'a>(servers: &[&'a Arc<ServerState>]) -> &'a Arc<ServerState> {
        let total: u64 = servers.iter().map(|s| u64::from(s.server().weight.max(1))).sum();
        let mut ticket = fastrand::u64(0..total.max(1));
        for s in servers {
            let w = u64::from(s.server().weight.max(1));
            if ticket < w {
                return s;
            }
            ticket -= w;
        }
        servers[servers.len() - 1]
    }
}

#[cfg(test)]
mod tests;
