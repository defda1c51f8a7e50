//! docs/ARCHITECTURE.md tells the truth about the crate graph: its dependency block is what
//! `cargo metadata` says, and the domain crates depend on no I/O crate.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

/// Crates that hold rules and ports only.
const DOMAIN: &[&str] = &[
    "gateway-core",
    "gateway-auth",
    "gateway-balancer",
    "gateway-ratelimit",
    "gateway-usage",
    "gateway-billing",
    // Not domain, but pure as well: the dashboard's pages.
    "gateway-web",
];

/// Crates that talk to a network or a database.
const IO: &[&str] = &[
    "redis",
    "sea-orm",
    "sea-orm-migration",
    "sqlx",
    "hyper",
    "hyper-util",
    "hyper-rustls",
    "reqwest",
    "deadpool-redis",
];

/// Each workspace crate's normal dependencies, from `cargo metadata`.
fn metadata() -> BTreeMap<String, Vec<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let packages = meta["packages"].as_array().unwrap();
    packages
        .iter()
        .map(|p| {
            let mut deps: Vec<String> = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().unwrap().to_owned())
                .collect();
            deps.sort();
            deps.dedup();
            (p["name"].as_str().unwrap().to_owned(), deps)
        })
        .collect()
}

#[test]
fn the_documented_crate_graph_is_the_real_one() {
    let meta = metadata();
    let ours: Vec<&String> = meta.keys().collect();
    let mut want = String::new();
    for (name, deps) in &meta {
        let internal: Vec<&str> =
            deps.iter().filter(|d| ours.contains(d)).map(String::as_str).collect();
        let listed = if internal.is_empty() { "(none)".to_owned() } else { internal.join(", ") };
        writeln!(want, "{name} -> {listed}").unwrap();
    }
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/ARCHITECTURE.md"),
    )
    .unwrap();
    let marker = "```text crate-graph\n";
    let start = doc.find(marker).expect("the crate-graph block") + marker.len();
    let got = &doc[start..start + doc[start..].find("```").unwrap()];
    assert_eq!(
        got, want,
        "docs/ARCHITECTURE.md's crate graph; `python3 scripts/crate-graph.py` prints the real one"
    );
}

#[test]
fn domain_crates_depend_on_no_io_crate() {
    let meta = metadata();
    for crate_name in DOMAIN {
        let deps = &meta[*crate_name];
        let io: Vec<&String> = deps.iter().filter(|d| IO.contains(&d.as_str())).collect();
        assert!(io.is_empty(), "{crate_name} depends on {io:?}");
    }
}
