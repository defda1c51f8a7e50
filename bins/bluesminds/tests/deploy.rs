//! What `deploy/` promises about the binary: every metric an alert rule or the Grafana
//! dashboard names is one the gateway exports (rules that name nothing never fire). The rules
//! themselves are checked by promtool in scripts/check-deploy.sh.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::Gateway;

/// The `bluesminds_*` metric names an expression text mentions.
fn metric_names(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .match_indices("bluesminds_")
        .map(|(at, _)| {
            text[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test]
async fn every_metric_the_alert_rules_and_the_dashboard_name_is_exported() {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/prometheus/alerts.yaml"
    ))
    .unwrap();
    let exprs: String = rules
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("groups:"))
        .filter(|l| {
            !l.trim_start().starts_with("summary:") && !l.trim_start().starts_with("description:")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut named = metric_names(&exprs);
    assert!(named.len() >= 8, "the rules name the gateway's metrics: {named:?}");
    // And every query of the Grafana dashboard (a histogram's series by its family's name).
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../deploy/grafana/bluesminds.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let queries: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    assert!(queries.len() >= 12, "{queries:?}");
    let in_dashboard: Vec<String> = metric_names(&queries.join("\n"))
        .into_iter()
        .map(|n| n.trim_end_matches("_bucket").to_owned())
        .collect();
    assert!(in_dashboard.len() >= 15, "{in_dashboard:?}");
    named.extend(in_dashboard);
    named.sort();
    named.dedup();

    // With Postgres and Redis, as deployed: every series the rules use is there.
    let mock = support::Mock::start().await;
    let url = mock.url();
    let (_db, env) = support::shared_backends(&[
        ("LITELLM_SERVER_1_URL", url.as_str()),
        ("LITELLM_SERVER_1_MODELS", "gpt-4"),
    ])
    .await;
    let gw = Gateway::start(&[], &support::env_refs(&env)).await;
    let metrics = support::request(gw.addr, "GET", "/metrics", b"").await;
    let exported = String::from_utf8(metrics.body.to_vec()).unwrap();
    let missing: Vec<&String> = named
        .iter()
        .filter(|name| !exported.lines().any(|l| l.starts_with(&format!("# TYPE {name} "))))
        .collect();
    assert!(
        missing.is_empty(),
        "named by deploy/prometheus/alerts.yaml or deploy/grafana/bluesminds.json, not exported: {missing:?}"
    );
}
