//! How many usage rows per second the writer stores: 100,000 records handed to a
//! `UsageWriter` over `SqlUsageStore` (batches of 500), timed until the last row is written,
//! its daily rollup included: once with every record of another user and key (the rollup's
//! worst case, a rollup row per record) and once all of one user, key and model (a rollup row
//! per batch, as under load from one client). SQLite always; Postgres when
//! `TEST_DATABASE_URL` is set, with each insert method (`INSERT ... SELECT FROM UNNEST` and
//! `COPY ... FROM STDIN (FORMAT binary)`), and the Postgres server's CPU time for each run
//! (the `postgres` processes' `/proc` times, when the server runs on this machine).
//!
//! `cargo bench -p gateway-store --bench usage_writer`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use gateway_store::InsertMethod;
use gateway_store::testing::{Backend, TestDb, backends};
use gateway_usage::{UsageRecord, UsageWriter, WriterConfig};

const N: usize = 100_000;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        println!("| Backend | Insert | Records | Rollup rows | Batch | Seconds | Rows/s | Postgres CPU µs/row |");
        println!("|---|---|---|---|---|---|---|---|");
        let runs = backends().into_iter().flat_map(|b| {
            let methods = match b {
                Backend::Postgres => vec![InsertMethod::Unnest, InsertMethod::CopyBinary],
                Backend::Sqlite => vec![InsertMethod::Unnest],
            };
            methods.into_iter().flat_map(move |m| [(b, m, false), (b, m, true)])
        });
        for (backend, method, one_group) in runs {
            let db = TestDb::migrated(backend).await;
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(
                gateway_store::SqlUsageStore::new(db.store.clone()).with_insert_method(method),
            );
            let mut config = WriterConfig::new(dir.path().join("spill.jsonl"));
            config.capacity = N;
            let batch = config.batch_size;
            let first = UsageRecord::example();
            let records: Vec<_> = (0..N)
                .map(|_| {
                    let r = UsageRecord::example();
                    if one_group {
                        UsageRecord { user_id: first.user_id, api_key_id: first.api_key_id, ..r }
                    } else {
                        r
                    }
                })
                .collect();
            let writer = UsageWriter::start(store, config).expect("the spill file is free");
            let cpu_before = postgres_cpu_ticks();
            let started = Instant::now();
            for r in records {
                writer.record(r);
            }
            writer.shutdown().await;
            let secs = started.elapsed().as_secs_f64();
            let cpu = match (backend, cpu_before, postgres_cpu_ticks()) {
                // clock ticks (100 a second) of every postgres process over the run
                (Backend::Postgres, Some(a), Some(b)) => {
                    format!("{:.1}", (b - a) as f64 * 10_000.0 / N as f64)
                }
                _ => "-".into(),
            };
            let stats = writer.stats();
            assert_eq!(stats.written.load(std::sync::atomic::Ordering::Relaxed), N as u64);
            assert_eq!(stats.spilled.load(std::sync::atomic::Ordering::Relaxed), 0);
            let groups = if one_group { "one per batch" } else { "one per record" };
            println!(
                "| {backend:?} | {method:?} | {N} | {groups} | {batch} | {secs:.2} | {:.0} | {cpu} |",
                N as f64 / secs
            );
        }
    });
}

/// User and system clock ticks of every `postgres` process on this machine (Linux `/proc`);
/// `None` elsewhere.
fn postgres_cpu_ticks() -> Option<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc").ok()? {
        let path = entry.ok()?.path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else { continue };
        if comm.trim() != "postgres" {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(path.join("stat")) else { continue };
        // Fields after the command's closing parenthesis: utime and stime are the 12th and
        // 13th.
        let rest = stat.rsplit_once(')')?.1;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        total += fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    }
    Some(total)
}
