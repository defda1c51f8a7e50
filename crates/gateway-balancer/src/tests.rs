use std::collections::HashMap;

use std::time::Duration;

use gateway_core::{HealthStatus, ServerId, UpstreamServer};

use super::*;

fn server(name: &str, priority: u32, weight: u32, models: &[&str]) -> UpstreamServer {
    UpstreamServer {
        id: ServerId::new(),
        name: name.into(),
        base_url: format!("http://{name}"),
        api_key: None,
        priority,
        weight,
        max_concurrent_requests: None,
        supported_models: models.iter().map(|m| (*m).to_owned()).collect(),
        is_active: true,
        health: HealthStatus::Unknown,
    }
}

fn pool(servers: Vec<UpstreamServer>) -> ServerPool {
    let p = ServerPool::new(BreakerConfig {
        failure_threshold: 2,
        cooldown: Duration::from_hours(1),
        max_ejected_percent: 100,
    });
    p.replace(servers);
    p
}

#[test]
fn lower_priority_numbers_win_and_models_must_match() {
    let p = pool(vec![server("backup", 2, 1, &[]), server("primary", 1, 1, &["gpt-4"])]);
    assert_eq!(p.select("gpt-4", &[]).unwrap().server().name, "primary");
    assert_eq!(
        p.select("claude", &[]).unwrap().server().name,
        "backup",
        "an any-model server takes the rest"
    );
    let primary = p.snapshot().iter().find(|s| s.server().name == "primary").unwrap().server().id;
    assert_eq!(
        p.select("gpt-4", &[primary]).unwrap().server().name,
        "backup",
        "failover skips tried servers"
    );
    assert_eq!(p.models(), vec!["gpt-4"]);
}

#[test]
fn weights_shape_the_share_within_a_priority() {
    let p = pool(vec![server("heavy", 1, 3, &[]), server("light", 1, 1, &[])]);
    let mut counts: HashMap<String, u32> = HashMap::new();
    for _ in 0..4000 {
        let s = p.select("m", &[]).unwrap();
        *counts.entry(s.server().name.clone()).or_default() += 1;
        s.finish(Outcome::Success { latency_ms: 10 });
    }
    let (heavy, light) = (counts["heavy"], counts["light"]);
    assert!(heavy > 2 * light, "heavy {heavy} vs light {light}");
}

#[test]
fn the_less_loaded_server_is_preferred_and_caps_hold() {
    let mut a = server("a", 1, 1, &[]);
    a.max_concurrent_requests = Some(2);
    let p = pool(vec![a, server("b", 1, 1, &[])]);
    // Hold three requests: "a" may carry at most two.
    let held: Vec<_> = (0..3).map(|_| p.select("m", &[]).unwrap()).collect();
    let on_a = held.iter().filter(|s| s.server().name == "a").count();
    assert!(on_a <= 2);
    let busy_a = p.snapshot().iter().find(|s| s.server().name == "a").unwrap().in_flight();
    assert_eq!(busy_a as usize, on_a);
    drop(held);
    assert!(p.snapshot().iter().all(|s| s.in_flight() == 0), "dropped picks release their slots");

    let mut only = server("only", 1, 1, &[]);
    only.max_concurrent_requests = Some(1);
    let p = pool(vec![only]);
    let first = p.select("m", &[]).unwrap();
    assert!(p.select("m", &[]).is_none(), "at its cap, a server takes nothing more");
    first.finish(Outcome::Neutral);
    assert!(p.select("m", &[]).is_some());
}

#[test]
fn failures_open_the_circuit_and_a_trial_closes_it() {
    let p = ServerPool::new(BreakerConfig {
        failure_threshold: 2,
        cooldown: Duration::ZERO,
        max_ejected_percent: 100,
    });
    p.replace(vec![server("flaky", 1, 1, &[])]);
    p.select("m", &[]).unwrap().finish(Outcome::Failure);
    p.select("m", &[]).unwrap().finish(Outcome::Failure);
    // Cooldown zero: the next pick is the trial; a second pick must wait for it.
    let trial = p.select("m", &[]).unwrap();
    assert!(p.select("m", &[]).is_none(), "one trial at a time");
    trial.finish(Outcome::Success { latency_ms: 5 });
    let s = p.snapshot();
    assert!(!s[0].circuit_open() && s[0].consecutive_failures() == 0);
    assert!(p.select("m", &[]).is_some());

    let p = pool(vec![server("down", 1, 1, &[])]);
    p.select("m", &[]).unwrap().finish(Outcome::Failure);
    p.select("m", &[]).unwrap().finish(Outcome::Failure);
    assert!(p.snapshot()[0].circuit_open());
    assert!(p.select("m", &[]).is_none(), "open for the cooldown");
    p.snapshot()[0].set_health(HealthStatus::Healthy);
    assert!(p.select("m", &[]).is_some(), "a passing health check closes it");
}

#[test]
fn unhealthy_and_inactive_servers_are_skipped_and_state_survives_reloads() {
    let a = server("a", 1, 1, &[]);
    let mut b = server("b", 1, 1, &[]);
    b.is_active = false;
    let p = pool(vec![a.clone(), b]);
    p.snapshot()[0].set_health(HealthStatus::Unhealthy);
    assert!(p.select("m", &[]).is_none());
    let mut a2 = a.clone();
    a2.name = "a-renamed".into();
    p.replace(vec![a2]);
    assert_eq!(p.snapshot()[0].health(), HealthStatus::Unhealthy, "same id keeps its state");
    p.snapshot()[0].set_health(HealthStatus::Healthy);
    assert_eq!(p.select("m", &[]).unwrap().server().name, "a-renamed");
}

#[test]
fn servers_without_declared_models_use_what_they_list() {
    let p = pool(vec![server("any", 1, 1, &[])]);
    assert!(p.knows_model("whatever"), "not asked yet: assume it serves everything");
    p.snapshot()[0].set_discovered_models(vec!["gpt-4".into()]);
    assert!(p.knows_model("gpt-4") && !p.knows_model("whatever"));
    assert_eq!(p.models(), vec!["gpt-4"]);
}

#[test]
fn an_open_circuit_never_hides_the_healthy_servers_beside_it() {
    let p = pool(vec![server("dead", 1, 1, &[]), server("alive", 1, 1, &[])]);
    let dead = p.snapshot().iter().find(|s| s.server().name == "dead").unwrap().clone();
    for _ in 0..2 {
        let pick = p
            .select(
                "m",
                &[p.snapshot().iter().find(|s| s.server().name == "alive").unwrap().server().id],
            )
            .unwrap();
        assert_eq!(pick.server().name, "dead");
        pick.finish(Outcome::Failure);
    }
    assert!(dead.circuit_open());
    for _ in 0..200 {
        let pick = p.select("m", &[]).expect("the live server is always available");
        assert_eq!(pick.server().name, "alive");
        pick.finish(Outcome::Success { latency_ms: 1 });
    }
}

struct ScriptedProber;

#[async_trait::async_trait]
impl Prober for ScriptedProber {
    async fn probe(&self, server: &UpstreamServer, list_models: bool) -> ProbeResult {
        let (ok, ms) = match server.name.as_str() {
            "fast" => (true, 5),
            "slow" => (true, 5_000),
            _ => (false, 0),
        };
        ProbeResult {
            ok,
            latency: Duration::from_millis(ms),
            models: list_models.then(|| vec!["discovered-model".to_owned()]),
            detail: (!ok).then(|| "connection refused".to_owned()),
        }
    }
}

#[tokio::test]
async fn health_checks_set_status_discover_models_and_persist() {
    let store = InMemoryServerStore::default();
    let servers = vec![
        server("fast", 1, 1, &[]),
        server("slow", 1, 1, &["gpt-4"]),
        server("down", 1, 1, &["gpt-4"]),
    ];
    for s in &servers {
        store.insert_server(s.clone()).await.unwrap();
    }
    let p = pool(store.list_servers().await.unwrap());
    let config = HealthConfig { degraded_latency: Duration::from_secs(2) };
    let reports = check_all(&p, &ScriptedProber, &store, &config).await;
    let status: HashMap<_, _> =
        reports.iter().map(|r| (r.server.name.clone(), r.record.status)).collect();
    assert_eq!(status["fast"], HealthStatus::Healthy);
    assert_eq!(status["slow"], HealthStatus::Degraded);
    assert_eq!(status["down"], HealthStatus::Unhealthy);
    assert_eq!(
        p.models(),
        vec!["discovered-model", "gpt-4"],
        "the any-model server listed its models"
    );
    let persisted = store.health_records().await.unwrap();
    assert_eq!(persisted.len(), 3);
    assert!(
        persisted.values().any(|r| r.status == HealthStatus::Unhealthy && r.latency_ms.is_none())
    );
    // The unhealthy server is skipped until a check passes again.
    for _ in 0..50 {
        let pick = p.select("gpt-4", &[]).unwrap();
        assert_eq!(pick.server().name, "slow");
    }
}

#[test]
fn no_more_servers_than_the_cap_are_ejected_at_once() {
    let p = ServerPool::new(BreakerConfig {
        failure_threshold: 1,
        cooldown: Duration::from_hours(1),
        max_ejected_percent: 50,
    });
    p.replace((0..4).map(|i| server(&format!("s{i}"), 1, 1, &[])).collect());
    let fail = |name: &str| {
        let id = p.snapshot().iter().find(|s| s.server().name == name).unwrap().server().id;
        let others: Vec<ServerId> =
            p.snapshot().iter().map(|s| s.server().id).filter(|i| *i != id).collect();
        p.select("m", &others).unwrap().finish(Outcome::Failure);
    };
    let open = || p.snapshot().iter().filter(|s| s.circuit_open()).count();
    fail("s0");
    fail("s1");
    assert_eq!(open(), 2, "half of four may be out");
    fail("s2");
    fail("s2");
    assert_eq!(open(), 2, "the third failing server stays in service");
    assert_eq!(p.snapshot().iter().filter(|s| s.server().name == "s2").count(), 1);
    let s2 = p.snapshot().iter().find(|s| s.server().name == "s2").unwrap().server().id;
    let others: Vec<ServerId> =
        p.snapshot().iter().map(|s| s.server().id).filter(|i| *i != s2).collect();
    assert!(p.select("m", &others).is_some(), "and can still be picked");
    // One comes back: room for another.
    p.snapshot()
        .iter()
        .find(|s| s.server().name == "s0")
        .unwrap()
        .set_health(HealthStatus::Healthy);
    fail("s2");
    assert_eq!(open(), 2);
    assert!(p.snapshot().iter().find(|s| s.server().name == "s2").unwrap().circuit_open());

    // A pool of one may still lose its only server (at least one is always allowed).
    let p = pool(vec![server("only", 1, 1, &[])]);
    p.select("m", &[]).unwrap().finish(Outcome::Failure);
    p.select("m", &[]).unwrap().finish(Outcome::Failure);
    assert!(p.snapshot()[0].circuit_open());
}

fn route(name: &str, targets: Vec<RouteTarget>, fallbacks: &[&str]) -> ModelRoute {
    ModelRoute {
        id: gateway_core::RouteId::new(),
        name: name.into(),
        targets,
        fallbacks: fallbacks.iter().map(|f| (*f).to_owned()).collect(),
        is_active: true,
    }
}

fn target(server: Option<ServerId>, model: &str, weight: u32) -> RouteTarget {
    RouteTarget { server_id: server, model: model.into(), weight }
}

#[test]
fn a_route_plans_its_targets_then_each_fallback_one_level_deep() {
    let a = server("a", 1, 1, &["gpt-4o", "gpt-4o-mini"]);
    let a_id = a.id;
    let p = pool(vec![a]);
    assert_eq!(p.plan("gpt-4o"), None, "no routes: every name is served as itself");
    p.replace_routes(vec![
        route("smart", vec![target(Some(a_id), "gpt-4o", 3)], &["cheap", "gpt-4o-mini"]),
        route("cheap", vec![target(None, "gpt-4o-mini", 1)], &["smart"]),
        ModelRoute { is_active: false, ..route("off", vec![target(None, "x", 1)], &[]) },
    ]);
    let plan = p.plan("smart").unwrap();
    let stages: Vec<Vec<(Option<ServerId>, &str)>> = plan
        .stages
        .iter()
        .map(|s| s.iter().map(|c| (c.server, c.model.as_str())).collect())
        .collect();
    // `cheap`'s own fallback (back to `smart`) is not followed: no chain loops.
    assert_eq!(
        stages,
        vec![
            vec![(Some(a_id), "gpt-4o")],
            vec![(None, "gpt-4o-mini")],
            vec![(None, "gpt-4o-mini")]
        ]
    );
    assert!(p.plan("off").is_none() && !p.knows_model("off"), "inactive routes are dropped");
    assert!(p.knows_model("smart") && p.knows_model("gpt-4o"));
    assert_eq!(p.models(), ["cheap", "gpt-4o", "gpt-4o-mini", "smart"]);
}

#[test]
fn candidates_are_drawn_by_weight_among_those_a_server_can_take() {
    let a = server("a", 1, 1, &["big"]);
    let b = server("b", 1, 1, &["small"]);
    let (a_id, b_id) = (a.id, b.id);
    let p = pool(vec![a, b]);
    let stage = vec![
        Candidate { server: Some(a_id), model: "big".into(), weight: 3 },
        Candidate { server: None, model: "small".into(), weight: 1 },
        // Pinned to a server that does not serve it: never drawn.
        Candidate { server: Some(b_id), model: "big".into(), weight: 100 },
    ];
    let mut drawn = HashMap::new();
    for _ in 0..4000 {
        let (pick, i) = p.select_candidate(&stage, &[]).unwrap();
        *drawn.entry(i).or_insert(0u32) += 1;
        pick.finish(Outcome::Neutral);
    }
    assert_eq!(drawn.get(&2), None);
    let big = f64::from(drawn[&0]) / 4000.0;
    assert!((0.70..0.80).contains(&big), "weight 3 of 4: {big}");
    // With `a` tried already, only the candidate another server takes is left.
    let (pick, i) = p.select_candidate(&stage, &[a_id]).unwrap();
    assert_eq!((i, pick.server().id), (1, b_id));
    assert!(p.select_candidate(&stage, &[a_id, b_id]).is_none());
}

#[test]
fn routes_are_checked_before_they_are_stored() {
    use crate::routes::validate_route;
    let ok = route("smart", vec![target(None, "gpt-4o", 1)], &["cheap"]);
    assert_eq!(validate_route(&ok), Ok(()));
    let field = |r: &ModelRoute| validate_route(r).unwrap_err().field;
    assert_eq!(field(&route(" smart", vec![target(None, "m", 1)], &[])), "name");
    assert_eq!(field(&route("smart", vec![], &[])), "targets");
    assert_eq!(field(&route("smart", vec![target(None, "", 1)], &[])), "targets");
    assert_eq!(field(&route("smart", vec![target(None, "m", 0)], &[])), "targets");
    assert_eq!(field(&route("smart", vec![target(None, "m", 1)], &["smart"])), "fallbacks");
    assert_eq!(field(&route("smart", vec![target(None, "m", 1)], &["a", "a"])), "fallbacks");
    assert_eq!(
        field(&route("s", vec![target(None, "m", 1)], &["a", "b", "c", "d", "e"])),
        "fallbacks"
    );
}
