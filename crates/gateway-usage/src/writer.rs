//! The batched usage writer: nothing dropped silently, nothing written twice.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::{UsageRecord, UsageStore};

/// Writer settings.
#[derive(Clone, Debug)]
pub struct WriterConfig {
    /// Records waiting for the writer; beyond this, records spill to the file.
    pub capacity: usize,
    /// Most records in one multi-row insert.
    pub batch_size: usize,
    /// A partial batch is written after this long.
    pub flush_every: Duration,
    /// Attempts at one batch before it is spilled to the file.
    pub attempts: u32,
    /// The append-only file of records not yet in the database (JSON lines).
    pub spill_path: PathBuf,
}

impl WriterConfig {
    pub fn new(spill_path: PathBuf) -> Self {
        Self {
            capacity: 10_000,
            batch_size: 500,
            flush_every: Duration::from_millis(100),
            attempts: 3,
            spill_path,
        }
    }
}

/// Counters of the writer, for metrics and tests.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub written: AtomicU64,
    pub spilled: AtomicU64,
    pub replayed: AtomicU64,
    /// Records that could be neither written nor spilled (the spill file failed too).
    pub dropped: AtomicU64,
    pub failed_batches: AtomicU64,
}

/// The spill file. Appends come from any thread; replay takes the file over by renaming it.
#[derive(Debug)]
struct Spill {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
}

impl Spill {
    fn replaying_path(&self) -> PathBuf {
        let mut p = self.path.clone().into_os_string();
        p.push(".replaying");
        PathBuf::from(p)
    }

    /// Appends records; `false` if the file failed too.
    fn append(&self, records: &[UsageRecord]) -> bool {
        let mut guard = self.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if guard.is_none() {
            match std::fs::OpenOptions::new().create(true).append(true).open(&self.path) {
                Ok(f) => *guard = Some(f),
                Err(e) => {
                    tracing::error!(error = %e, path = %self.path.display(), "cannot open the usage spill file");
                    return false;
                }
            }
        }
        let Some(file) = guard.as_mut() else { return false };
        let mut buf = Vec::new();
        for r in records {
            if serde_json::to_writer(&mut buf, r).is_err() {
                return false;
            }
            buf.push(b'\n');
        }
        match file.write_all(&buf).and_then(|()| file.sync_data()) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "cannot append to the usage spill file");
                *guard = None;
                false
            }
        }
    }

    /// Moves the spill file aside for replay (new spills start a fresh file). Returns the file
    /// to replay, if there is one.
    fn take(&self) -> Option<PathBuf> {
        let replaying = self.replaying_path();
        if replaying.exists() {
            return Some(replaying);
        }
        let mut guard = self.file.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !self.path.exists() {
            return None;
        }
        *guard = None;
        std::fs::rename(&self.path, &replaying).ok().map(|()| replaying)
    }
}

fn read_spill(path: &Path) -> Vec<UsageRecord> {
    let Ok(file) = std::fs::File::open(path) else { return Vec::new() };
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let Ok(line) = line else { break };
        match serde_json::from_str(&line) {
            Ok(r) => out.push(r),
            // A torn last line from a crash mid-append: nothing complete is lost.
            Err(e) => {
                tracing::warn!(error = %e, line = i + 1, "skipping an unreadable line of the usage spill file");
            }
        }
    }
    out
}

/// The handle the gateway records through.
#[derive(Debug)]
pub struct UsageWriter {
    tx: mpsc::Sender<UsageRecord>,
    stats: Arc<WriterStats>,
    spill: Arc<Spill>,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl UsageWriter {
    /// Starts the writer task (replaying any spill file left by an earlier run).
    pub fn start(store: Arc<dyn UsageStore>, config: WriterConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.capacity.max(1));
        let stats = Arc::new(WriterStats::default());
        let spill = Arc::new(Spill { path: config.spill_path.clone(), file: Mutex::default() });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(store, config, rx, stats.clone(), spill.clone(), stopped));
        Self { tx, stats, spill, stop, task: Mutex::new(Some(task)) }
    }

    /// Hands a record over without waiting. If the writer is behind (or stopping), the record
    /// goes to the spill file instead; only if that fails too is it dropped, counted and logged.
    pub fn record(&self, record: UsageRecord) {
        let record = match self.tx.try_send(record) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(r) | mpsc::error::TrySendError::Closed(r)) => r,
        };
        if self.spill.append(std::slice::from_ref(&record)) {
            self.stats.spilled.fetch_add(1, Ordering::Relaxed);
        } else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(request_id = %record.request_id, "usage record dropped: the writer is full and the spill file failed");
        }
    }

    pub fn stats(&self) -> &WriterStats {
        &self.stats
    }

    /// Records waiting in the channel.
    pub fn queue_depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// Writes everything still queued (spilling what cannot be written) and stops the task.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

async fn run(
    store: Arc<dyn UsageStore>,
    config: WriterConfig,
    mut rx: mpsc::Receiver<UsageRecord>,
    stats: Arc<WriterStats>,
    spill: Arc<Spill>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut healthy = replay(store.as_ref(), &config, &stats, &spill).await;
    let mut batch: Vec<UsageRecord> = Vec::with_capacity(config.batch_size);
    loop {
        // Wait for a first record (retrying a pending replay now and then), then gather more
        // until the batch is full or the flush interval is over.
        let first = tokio::select! {
            r = rx.recv() => r,
            _ = stopped.changed() => {
                rx.close();
                rx.recv().await
            }
            () = tokio::time::sleep(Duration::from_secs(1)), if !healthy || spill.path.exists() => {
                healthy = replay(store.as_ref(), &config, &stats, &spill).await;
                continue;
            }
        };
        let Some(first) = first else { break };
        batch.push(first);
        // One timer per batch, and whatever has queued taken at once (not a timer and a
        // wake-up per record).
        let flush = tokio::time::sleep(config.flush_every);
        tokio::pin!(flush);
        while batch.len() < config.batch_size {
            let room = config.batch_size - batch.len();
            tokio::select! {
                n = rx.recv_many(&mut batch, room) => if n == 0 { break },
                () = &mut flush => break,
            }
        }
        healthy = write_or_spill(store.as_ref(), &config, &stats, &spill, &mut batch).await;
        if healthy && spill.path.exists() {
            healthy = replay(store.as_ref(), &config, &stats, &spill).await;
        }
    }
    if !batch.is_empty() {
        write_or_spill(store.as_ref(), &config, &stats, &spill, &mut batch).await;
    }
    if healthy {
        replay(store.as_ref(), &config, &stats, &spill).await;
    }
}

/// Writes one batch with retries and backoff; if it still fails, spills it. Returns whether the
/// store accepted it.
async fn write_or_spill(
    store: &dyn UsageStore,
    config: &WriterConfig,
    stats: &WriterStats,
    spill: &Spill,
    batch: &mut Vec<UsageRecord>,
) -> bool {
    let mut backoff = Duration::from_millis(50);
    for attempt in 1..=config.attempts.max(1) {
        match store.insert_batch(batch).await {
            Ok(()) => {
                stats.written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.clear();
                return true;
            }
            Err(e) => {
                stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, attempt, records = batch.len(), "usage batch failed");
                if attempt < config.attempts {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 4).min(Duration::from_secs(2));
                }
            }
        }
    }
    if spill.append(batch) {
        stats.spilled.fetch_add(batch.len() as u64, Ordering::Relaxed);
        tracing::warn!(records = batch.len(), path = %spill.path.display(), "usage records spilled to disk; they are replayed when the database is back");
    } else {
        stats.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
        tracing::error!(
            records = batch.len(),
            "usage records dropped: the database and the spill file both failed"
        );
    }
    batch.clear();
    false
}

/// Replays the spill file into the store. Returns whether the store is healthy.
async fn replay(
    store: &dyn UsageStore,
    config: &WriterConfig,
    stats: &WriterStats,
    spill: &Spill,
) -> bool {
    let Some(path) = spill.take() else { return true };
    let records = read_spill(&path);
    for chunk in records.chunks(config.batch_size.max(1)) {
        if let Err(e) = store.insert_batch(chunk).await {
            tracing::warn!(error = %e, pending = records.len(), "replaying spilled usage failed; will retry");
            return false;
        }
    }
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::warn!(error = %e, "cannot remove the replayed spill file; its records may be replayed again (harmless)");
    }
    stats.replayed.fetch_add(records.len() as u64, Ordering::Relaxed);
    if !records.is_empty() {
        tracing::info!(records = records.len(), "spilled usage replayed into the database");
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::InMemoryUsageStore;

    fn writer(
        store: &Arc<InMemoryUsageStore>,
        dir: &tempfile::TempDir,
        capacity: usize,
    ) -> UsageWriter {
        let mut config = WriterConfig::new(dir.path().join("spill.jsonl"));
        config.capacity = capacity;
        config.flush_every = Duration::from_millis(5);
        config.attempts = 2;
        UsageWriter::start(store.clone(), config)
    }

    #[tokio::test]
    async fn every_record_is_written_once_even_when_retried() {
        let store = Arc::new(InMemoryUsageStore::default());
        let dir = tempfile::tempdir().unwrap();
        let w = writer(&store, &dir, 1000);
        let records: Vec<_> = (0..250).map(|_| UsageRecord::example()).collect();
        for r in &records {
            w.record(r.clone());
        }
        w.record(records[0].clone());
        w.shutdown().await;
        assert_eq!(store.len(), 250);
        assert_eq!(
            w.stats().written.load(Ordering::Relaxed),
            251,
            "the duplicate was written and ignored"
        );
    }

    #[tokio::test]
    async fn an_outage_spills_to_disk_and_the_spill_is_replayed_afterwards() {
        let store = Arc::new(InMemoryUsageStore::default());
        let dir = tempfile::tempdir().unwrap();
        store.set_failing(true);
        let w = writer(&store, &dir, 4);
        for _ in 0..100 {
            w.record(UsageRecord::example());
        }
        // Wait until everything is either spilled or queued behind the failing store.
        let started = std::time::Instant::now();
        while w.stats().spilled.load(Ordering::Relaxed) + (w.queue_depth() as u64) < 96 {
            assert!(started.elapsed() < Duration::from_secs(10));
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.len(), 0);
        store.set_failing(false);
        w.record(UsageRecord::example());
        w.shutdown().await;
        assert_eq!(store.len(), 101, "nothing was lost");
        assert_eq!(w.stats().dropped.load(Ordering::Relaxed), 0);
        assert!(
            !dir.path().join("spill.jsonl").exists()
                && !dir.path().join("spill.jsonl.replaying").exists()
        );
    }

    #[tokio::test]
    async fn a_spill_left_by_an_earlier_run_is_replayed_at_start() {
        let store = Arc::new(InMemoryUsageStore::default());
        let dir = tempfile::tempdir().unwrap();
        let spill = Spill { path: dir.path().join("spill.jsonl"), file: Mutex::default() };
        let old: Vec<_> = (0..3).map(|_| UsageRecord::example()).collect();
        assert!(spill.append(&old));
        // A torn line, as a crash mid-append would leave.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&spill.path)
            .unwrap()
            .write_all(b"{\"request_id\":")
            .unwrap();
        let w = writer(&store, &dir, 10);
        w.shutdown().await;
        assert_eq!(store.records().iter().map(|r| r.request_id).collect::<Vec<_>>(), {
            let mut ids: Vec<_> = old.iter().map(|r| r.request_id).collect();
            ids.sort();
            ids
        });
    }

    #[tokio::test]
    async fn shutdown_with_the_database_down_keeps_everything_on_disk() {
        let store = Arc::new(InMemoryUsageStore::default());
        let dir = tempfile::tempdir().unwrap();
        store.set_failing(true);
        let w = writer(&store, &dir, 1000);
        for _ in 0..20 {
            w.record(UsageRecord::example());
        }
        w.shutdown().await;
        assert_eq!(
            read_spill(&dir.path().join("spill.jsonl")).len()
                + read_spill(&dir.path().join("spill.jsonl.replaying")).len(),
            20
        );
        w.record(UsageRecord::example());
        assert_eq!(
            w.stats().spilled.load(Ordering::Relaxed),
            21,
            "after shutdown, records still go to disk"
        );
    }
}
