//! How many usage rows per second the writer stores: 100,000 records handed to a
//! `UsageWriter` over `SqlUsageStore` (batches of 500), timed until the last row is written,
//! its daily rollup included: once with every record of another user and key (the rollup's
//! worst case, a rollup row per record) and once all of one user, key and model (a rollup row
//! per batch, as under load from one client). SQLite always; Postgres when
//! `TEST_DATABASE_URL` is set.
//!
//! `cargo bench -p gateway-store --bench usage_writer`

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, missing_docs)]

use std::sync::Arc;
use std::time::Instant;

use gateway_store::testing::{TestDb, backends};
use gateway_usage::{UsageRecord, UsageWriter, WriterConfig};

const N: usize = 100_000;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        println!("| Backend | Records | Rollup rows | Batch | Seconds | Rows/s |");
        println!("|---|---|---|---|---|---|");
        for (backend, one_group) in backends().into_iter().flat_map(|b| [(b, false), (b, true)]) {
            let db = TestDb::migrated(backend).await;
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(gateway_store::SqlUsageStore::new(db.store.clone()));
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
            let writer = UsageWriter::start(store, config);
            let started = Instant::now();
            for r in records {
                writer.record(r);
            }
            writer.shutdown().await;
            let secs = started.elapsed().as_secs_f64();
            let stats = writer.stats();
            assert_eq!(stats.written.load(std::sync::atomic::Ordering::Relaxed), N as u64);
            assert_eq!(stats.spilled.load(std::sync::atomic::Ordering::Relaxed), 0);
            let groups = if one_group { "one per batch" } else { "one per record" };
            println!(
                "| {backend:?} | {N} | {groups} | {batch} | {secs:.2} | {:.0} |",
                N as f64 / secs
            );
        }
    });
}
