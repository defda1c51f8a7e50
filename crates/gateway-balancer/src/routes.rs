//! Model routes: a public model name that clients call, the upstream models that serve it
//! (each on any server serving it, or on one server, with a weight), and the public names to
//! fall back to, in order, when every target of the route fails before its first byte.
//!
//! A name without a route is served as itself by whichever servers serve it, as before routes
//! existed; a route's name hides a server model of the same name (the route decides). A
//! fallback name is followed one level: its own targets (or itself, without a route), not its
//! own fallbacks, so no chain loops.

use gateway_core::{RouteId, ServerId};
use serde::{Deserialize, Serialize};

/// Most targets of one route, and most fallbacks.
pub const MAX_TARGETS: usize = 16;
pub const MAX_FALLBACKS: usize = 4;

/// One upstream model that serves a route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTarget {
    /// The server to send it to; `None`: any server serving `model`.
    #[serde(default)]
    pub server_id: Option<ServerId>,
    /// The model name the upstream is sent.
    pub model: String,
    /// Share of the route's traffic among its targets (at least 1).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// A public model name and how it is served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModelRoute {
    pub id: RouteId,
    /// What clients send as `model` (and see in `/v1/models`).
    pub name: String,
    pub targets: Vec<RouteTarget>,
    /// Public names tried in order when every target failed before the first byte (a connect
    /// error, a timeout, a 429 or a 5xx from every server tried).
    pub fallbacks: Vec<String>,
    pub is_active: bool,
}

/// A change to a route: `None` leaves a field as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteUpdate {
    pub name: Option<String>,
    pub targets: Option<Vec<RouteTarget>>,
    pub fallbacks: Option<Vec<String>>,
    pub is_active: Option<bool>,
}

impl RouteUpdate {
    pub fn apply(&self, r: &mut ModelRoute) {
        if let Some(name) = &self.name {
            r.name.clone_from(name);
        }
        if let Some(targets) = &self.targets {
            r.targets.clone_from(targets);
        }
        if let Some(fallbacks) = &self.fallbacks {
            r.fallbacks.clone_from(fallbacks);
        }
        if let Some(active) = self.is_active {
            r.is_active = active;
        }
    }
}

/// Why a route was refused: the field at fault and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid '{field}': {message}")]
pub struct InvalidRoute {
    pub field: &'static str,
    pub message: String,
}

fn model_name_ok(name: &str) -> bool {
    let chars = name.chars().count();
    name.trim() == name && (1..=200).contains(&chars) && !name.chars().any(char::is_control)
}

/// Checks a route before it is stored.
pub fn validate_route(r: &ModelRoute) -> Result<(), InvalidRoute> {
    let bad = |field, message: &str| Err(InvalidRoute { field, message: message.to_owned() });
    if !model_name_ok(&r.name) {
        return bad("name", "must be 1 to 200 printable characters without surrounding spaces");
    }
    if r.targets.is_empty() || r.targets.len() > MAX_TARGETS {
        return bad("targets", &format!("must hold 1 to {MAX_TARGETS} targets"));
    }
    for t in &r.targets {
        if !model_name_ok(&t.model) {
            return bad("targets", "each target's model must be 1 to 200 printable characters");
        }
        if t.weight == 0 {
            return bad("targets", "each target's weight must be at least 1");
        }
    }
    if r.fallbacks.len() > MAX_FALLBACKS {
        return bad("fallbacks", &format!("must hold at most {MAX_FALLBACKS} names"));
    }
    for (i, f) in r.fallbacks.iter().enumerate() {
        if !model_name_ok(f) {
            return bad("fallbacks", "each fallback must be a model name");
        }
        if *f == r.name || r.fallbacks[..i].contains(f) {
            return bad("fallbacks", "must not name the route itself, nor a name twice");
        }
    }
    Ok(())
}

/// One way to serve a request: an upstream model, on one server or any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub server: Option<ServerId>,
    pub model: String,
    pub weight: u32,
}

impl Candidate {
    /// A name without a route: itself, on any server serving it.
    pub fn any_server(model: &str) -> Self {
        Self { server: None, model: model.to_owned(), weight: 1 }
    }
}

/// How a public name is served: the stages tried in order (the route's targets, then each
/// fallback's), each a set of candidates drawn by weight.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutePlan {
    pub stages: Vec<Vec<Candidate>>,
}
