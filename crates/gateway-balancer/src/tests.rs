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
