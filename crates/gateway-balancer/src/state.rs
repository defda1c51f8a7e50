//! Runtime state of one upstream server, shared by every request that uses it.

use std::collections::HashMap;
use std::sync::atomic::{
    AtomicBool, AtomicI64, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gateway_core::{HealthStatus, ServerId, UpstreamServer};

/// Passive failure detection.
#[derive(Clone, Debug)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failure_threshold: u32,
    /// How long an open circuit refuses requests before letting one trial through.
    pub cooldown: Duration,
    /// Most servers of the pool whose circuits may be open at once, in percent of the active
    /// servers (at least one): failures beyond it leave the server in service, as Envoy's
    /// outlier detection does, so no burst of failures can empty the pool.
    pub max_ejected_percent: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self { failure_threshold: 3, cooldown: Duration::from_secs(30), max_ejected_percent: 50 }
    }
}

/// The open circuits of one pool, for the cap on how many servers are out at once. Only
/// touched when a circuit opens or closes, never per request.
#[derive(Debug, Default)]
pub(crate) struct Ejections {
    /// Active servers of the pool (set on every reload).
    pub(crate) servers: AtomicUsize,
    /// Servers whose circuit is open, with when their cooldown ends (ms).
    open: Mutex<HashMap<ServerId, i64>>,
}

impl Ejections {
    /// Opens `id`'s circuit until `until` unless the cap is reached; `Err(open, cap)` then.
    fn try_open(
        &self,
        id: ServerId,
        until: i64,
        now: i64,
        percent: u32,
    ) -> Result<(), (usize, usize)> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.retain(|_, t| *t > now);
        let servers = self.servers.load(Ordering::Relaxed);
        let cap = (servers * percent as usize / 100).max(1);
        if !open.contains_key(&id) && open.len() >= cap {
            return Err((open.len(), cap));
        }
        open.insert(id, until);
        Ok(())
    }

    fn close(&self, id: ServerId) {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn health_from(v: u8) -> HealthStatus {
    match v {
        1 => HealthStatus::Healthy,
        2 => HealthStatus::Degraded,
        3 => HealthStatus::Unhealthy,
        _ => HealthStatus::Unknown,
    }
}

fn health_to(h: HealthStatus) -> u8 {
    match h {
        HealthStatus::Unknown => 0,
        HealthStatus::Healthy => 1,
        HealthStatus::Degraded => 2,
        HealthStatus::Unhealthy => 3,
    }
}

/// Counters and state that survive a reload of the pool.
#[derive(Debug, Default)]
struct Shared {
    in_flight: AtomicU32,
    /// Latency moving average, in microseconds (0: none yet).
    ewma_latency_us: AtomicU64,
    health: AtomicU8,
    consecutive_failures: AtomicU32,
    /// While set and in the future, the circuit is open.
    open_until_ms: AtomicI64,
    /// A trial request is under way on a half-open circuit.
    trial_in_flight: AtomicBool,
    /// The ejection cap kept this server in service (logged once until it recovers).
    cap_warned: AtomicBool,
    total_requests: AtomicU64,
    total_errors: AtomicU64,
    /// Models learned from the server's `/v1/models` (for servers that declare none).
    discovered_models: Mutex<Vec<String>>,
    last_check: Mutex<Option<crate::store::HealthRecord>>,
}

/// One server of the pool with its runtime state.
#[derive(Debug)]
pub struct ServerState {
    server: UpstreamServer,
    breaker: BreakerConfig,
    shared: Arc<Shared>,
    ejections: Arc<Ejections>,
}

/// How a request to a server ended, as far as its health is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Success {
        latency_ms: u64,
    },
    /// The server's fault (connect error, timeout, broken response, 429, a 5xx that another
    /// server did not repeat): counts toward opening the circuit.
    Failure,
    /// The request ended for reasons that say nothing about the server (client gone, 4xx).
    Neutral,
}

impl ServerState {
    /// A server on its own (a pool of one, as far as the ejection cap goes).
    pub fn new(server: UpstreamServer, breaker: BreakerConfig) -> Self {
        let ejections = Ejections { servers: AtomicUsize::new(1), ..Ejections::default() };
        Self::in_pool(server, breaker, Arc::new(ejections))
    }

    pub(crate) fn in_pool(
        server: UpstreamServer,
        breaker: BreakerConfig,
        ejections: Arc<Ejections>,
    ) -> Self {
        let shared =
            Shared { health: AtomicU8::new(health_to(server.health)), ..Shared::default() };
        Self { server, breaker, shared: Arc::new(shared), ejections }
    }

    /// The same runtime state under updated settings.
    pub(crate) fn with_server(&self, server: UpstreamServer) -> Self {
        Self {
            server,
            breaker: self.breaker.clone(),
            shared: self.shared.clone(),
            ejections: self.ejections.clone(),
        }
    }

    pub fn server(&self) -> &UpstreamServer {
        &self.server
    }

    pub fn health(&self) -> HealthStatus {
        health_from(self.shared.health.load(Ordering::Relaxed))
    }

    /// Sets the health (from an active check); returns the previous one.
    pub fn set_health(&self, health: HealthStatus) -> HealthStatus {
        let prev = health_from(self.shared.health.swap(health_to(health), Ordering::Relaxed));
        if health == HealthStatus::Healthy {
            // A passing check closes the circuit.
            self.shared.consecutive_failures.store(0, Ordering::Relaxed);
            self.shared.open_until_ms.store(0, Ordering::Relaxed);
            self.ejections.close(self.server.id);
        }
        prev
    }

    pub fn in_flight(&self) -> u32 {
        self.shared.in_flight.load(Ordering::Relaxed)
    }

    pub fn latency_ms(&self) -> Option<u64> {
        match self.shared.ewma_latency_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(us.div_ceil(1000)),
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.shared.consecutive_failures.load(Ordering::Relaxed)
    }

    pub fn totals(&self) -> (u64, u64) {
        (
            self.shared.total_requests.load(Ordering::Relaxed),
            self.shared.total_errors.load(Ordering::Relaxed),
        )
    }

    pub fn circuit_open(&self) -> bool {
        self.shared.open_until_ms.load(Ordering::Relaxed) > now_ms()
    }

    pub fn set_last_check(&self, record: crate::store::HealthRecord) {
        *self.shared.last_check.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(record);
    }

    /// The last active check of this server, if any ran since start.
    pub fn last_check(&self) -> Option<crate::store::HealthRecord> {
        self.shared.last_check.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    pub fn set_discovered_models(&self, models: Vec<String>) {
        *self.shared.discovered_models.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            models;
    }

    /// Declared models, or those discovered when it declares none.
    pub fn models(&self) -> Vec<String> {
        if self.server.supported_models.is_empty() {
            self.shared
                .discovered_models
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone()
        } else {
            self.server.supported_models.clone()
        }
    }

    /// Whether this server takes `model`: it declares it, or it declares nothing and either
    /// listed it or has not been asked yet.
    pub fn supports(&self, model: &str) -> bool {
        if !self.server.supported_models.is_empty() {
            return self.server.supported_models.iter().any(|m| m == model);
        }
        let discovered =
            self.shared.discovered_models.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        discovered.is_empty() || discovered.iter().any(|m| m == model)
    }

    pub(crate) fn is_eligible(&self, model: &str, now: i64) -> bool {
        let open_until = self.shared.open_until_ms.load(Ordering::Relaxed);
        // Closed, or open with the cooldown over and no trial under way.
        let circuit_lets_through = open_until == 0
            || (open_until <= now && !self.shared.trial_in_flight.load(Ordering::Relaxed));
        self.server.is_active
            && self.health() != HealthStatus::Unhealthy
            && self.supports(model)
            && circuit_lets_through
    }

    pub(crate) fn has_capacity(&self) -> bool {
        self.server.max_concurrent_requests.is_none_or(|max| self.in_flight() < max)
    }

    /// Load relative to weight: lower is better.
    pub(crate) fn score(&self) -> f64 {
        let latency = self.shared.ewma_latency_us.load(Ordering::Relaxed).max(1000) as f64;
        f64::from(self.in_flight() + 1) * latency / f64::from(self.server.weight.max(1))
    }

    /// Counts a request in; on an open circuit whose cooldown is over, only one trial passes.
    pub(crate) fn try_acquire(self: &Arc<Self>, now: i64) -> Option<Selected> {
        let open_until = self.shared.open_until_ms.load(Ordering::Relaxed);
        let trial = open_until > 0;
        if trial {
            if open_until > now {
                return None;
            }
            if self.shared.trial_in_flight.swap(true, Ordering::AcqRel) {
                return None;
            }
        }
        let count = self.shared.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        if self.server.max_concurrent_requests.is_some_and(|max| count > max) {
            self.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            if trial {
                self.shared.trial_in_flight.store(false, Ordering::Release);
            }
            return None;
        }
        self.shared.total_requests.fetch_add(1, Ordering::Relaxed);
        Some(Selected { state: self.clone(), trial, finished: false })
    }

    fn record(&self, outcome: Outcome, trial: bool) {
        match outcome {
            Outcome::Success { latency_ms } => {
                let sample = latency_ms.max(1) * 1000;
                let prev = self.shared.ewma_latency_us.load(Ordering::Relaxed);
                let next = if prev == 0 { sample } else { (prev * 7 + sample) / 8 };
                self.shared.ewma_latency_us.store(next, Ordering::Relaxed);
                self.shared.consecutive_failures.store(0, Ordering::Relaxed);
                self.shared.cap_warned.store(false, Ordering::Relaxed);
                if self.shared.open_until_ms.swap(0, Ordering::Relaxed) > 0 {
                    self.ejections.close(self.server.id);
                    tracing::info!(server = %self.server.name, "circuit closed: trial request succeeded");
                }
            }
            Outcome::Failure => {
                self.shared.total_errors.fetch_add(1, Ordering::Relaxed);
                let failures = self.shared.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if trial || failures >= self.breaker.failure_threshold {
                    self.open_circuit(failures);
                }
            }
            Outcome::Neutral => {}
        }
        if trial {
            self.shared.trial_in_flight.store(false, Ordering::Release);
        }
    }
}

impl ServerState {
    /// Opens the circuit for the cooldown, unless as many servers as the cap allows are out
    /// already: then the server stays in service (said once until it recovers).
    fn open_circuit(&self, failures: u32) {
        let now = now_ms();
        let until = now + self.breaker.cooldown.as_millis() as i64;
        let id = self.server.id;
        match self.ejections.try_open(id, until, now, self.breaker.max_ejected_percent) {
            Ok(()) => {
                if self.shared.open_until_ms.swap(until, Ordering::Relaxed) <= now {
                    tracing::warn!(
                        server = %self.server.name,
                        failures,
                        cooldown_ms = self.breaker.cooldown.as_millis() as u64,
                        "circuit opened"
                    );
                }
            }
            Err((open, cap)) => {
                self.shared.open_until_ms.store(0, Ordering::Relaxed);
                if !self.shared.cap_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        server = %self.server.name,
                        failures,
                        open,
                        cap,
                        "circuit left closed: the most servers allowed out at once are out"
                    );
                }
            }
        }
    }
}

/// A server picked for one request. Counts the request in flight until finished or dropped
/// (a dropped pick is neutral: the client went away).
#[derive(Debug)]
pub struct Selected {
    state: Arc<ServerState>,
    trial: bool,
    finished: bool,
}

impl Selected {
    pub fn server(&self) -> &UpstreamServer {
        &self.state.server
    }

    pub fn state(&self) -> &Arc<ServerState> {
        &self.state
    }

    /// Records how the request went and releases the slot.
    pub fn finish(mut self, outcome: Outcome) {
        self.finished = true;
        self.state.record(outcome, self.trial);
        self.state.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Drop for Selected {
    fn drop(&mut self) {
        if !self.finished {
            self.state.record(Outcome::Neutral, self.trial);
            self.state.shared.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
    }
}
