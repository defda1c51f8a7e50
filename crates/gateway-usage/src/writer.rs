//! The batched usage writer: nothing dropped silently, nothing written twice.

use std::collections::HashSet;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use gateway_core::{RequestId, error_chain};

use crate::journal::{Journal, Mark};
use crate::{UsageError, UsageRecord, UsageStore};

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
    /// The append-only file of records the database refused (JSON lines, the spill file's
    /// format): kept for an operator, never retried on their own.
    pub quarantine_path: PathBuf,
    /// Journal each record before it is queued (see [`crate::journal`]); a start recovers
    /// what an earlier run journaled either way.
    pub journal: bool,
}

impl WriterConfig {
    /// Settings with the quarantine file beside the spill file (`<spill file>.quarantine`).
    pub fn new(spill_path: PathBuf) -> Self {
        let mut quarantine = spill_path.clone().into_os_string();
        quarantine.push(".quarantine");
        Self {
            capacity: 10_000,
            batch_size: 500,
            flush_every: Duration::from_millis(100),
            attempts: 3,
            spill_path,
            quarantine_path: PathBuf::from(quarantine),
            journal: true,
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
    /// Records the database refused, set aside in the quarantine file.
    pub quarantined: AtomicU64,
    /// Records an earlier run left in its journal (it did not stop cleanly), moved to the
    /// spill file at start.
    pub recovered: AtomicU64,
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

impl Spill {
    /// Appends records handed over with their journal marks: counted as spilled and the marks
    /// let go; or, if the file fails too, counted as dropped and left to the journal (the
    /// marks kept, so their segments stay for the next start to replay).
    fn append_marked(
        &self,
        records: &[UsageRecord],
        marks: impl IntoIterator<Item = Mark>,
        stats: &WriterStats,
    ) {
        let n = records.len() as u64;
        if self.append(records) {
            stats.spilled.fetch_add(n, Ordering::Relaxed);
        } else {
            stats.dropped.fetch_add(n, Ordering::Relaxed);
            tracing::error!(
                records = n,
                "usage records not persisted: the writer is full and the spill file failed; the journal keeps them for the next start"
            );
            marks.into_iter().for_each(std::mem::forget);
        }
    }
}

/// Records the database refused: appended to their own file, counted and logged once each.
#[derive(Debug)]
struct Quarantine {
    file: Spill,
    /// Ids set aside already: a spill replayed twice does not quarantine a record twice.
    seen: Mutex<HashSet<RequestId>>,
}

impl Quarantine {
    fn new(path: PathBuf) -> Self {
        Self { file: Spill { path, file: Mutex::default() }, seen: Mutex::default() }
    }

    fn add(&self, record: &UsageRecord, error: &UsageError, stats: &WriterStats) {
        let first = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(record.request_id);
        if !first {
            return;
        }
        if self.file.append(std::slice::from_ref(record)) {
            stats.quarantined.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                request_id = %record.request_id,
                error = %error_chain(error),
                path = %self.file.path.display(),
                "the database refused a usage record; it is quarantined and the others are written"
            );
        } else {
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::error!(request_id = %record.request_id, "usage record dropped: the database refused it and the quarantine file failed");
        }
    }
}

fn read_spill(path: &Path) -> Vec<UsageRecord> {
    spill_records(path).collect()
}

/// The records of a spill file (or a journal segment), read a line at a time: a replay holds
/// one batch in memory, however long the outage that filled the file.
fn spill_records(path: &Path) -> impl Iterator<Item = UsageRecord> {
    let lines = std::fs::File::open(path).ok().map(|f| std::io::BufReader::new(f).lines());
    lines.into_iter().flatten().map_while(Result::ok).enumerate().filter_map(|(i, line)| {
        match serde_json::from_str(&line) {
            Ok(r) => Some(r),
            // A torn last line from a crash mid-append: nothing complete is lost.
            Err(e) => {
                tracing::warn!(error = %e, line = i + 1, "skipping an unreadable line of the usage spill file");
                None
            }
        }
    })
}

/// A record waiting for the writer, holding its journal segment.
#[derive(Debug)]
struct Queued {
    record: UsageRecord,
    mark: Mark,
}

/// What the overflow thread is handed.
#[derive(Debug)]
enum Overflowed {
    /// Boxed: the overflow is the exception, and a flush need not be the size of a record.
    Record(Box<Queued>),
    /// Everything handed over before is on disk when this is answered (at shutdown).
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Records the writer had no room for, spilled by a thread of their own: the request that
/// overflowed returns at once, as a queued one does (its journal line holds it meanwhile),
/// and everything that overflowed while that thread synced goes to disk in its next `write`
/// and `fdatasync`. So a database that stalls for a moment never has the runtime's workers
/// waiting on the disk a record at a time (which would also starve the writer task that
/// drains the queue).
fn spill_overflow(rx: &std::sync::mpsc::Receiver<Overflowed>, spill: &Spill, stats: &WriterStats) {
    let mut records = Vec::new();
    let mut marks: Vec<Mark> = Vec::new();
    let mut flushes = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(item) = next {
            match item {
                Overflowed::Record(q) => {
                    let Queued { record, mark } = *q;
                    records.push(record);
                    hold(&mut marks, mark);
                }
                Overflowed::Flush(done) => flushes.push(done),
            }
            next = if records.len() < OVERFLOW_BATCH { rx.try_recv().ok() } else { None };
        }
        if !records.is_empty() {
            spill.append_marked(&records, marks.drain(..), stats);
            records.clear();
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Most overflowed records spilled in one append.
const OVERFLOW_BATCH: usize = 1_000;

/// The handle the gateway records through.
#[derive(Debug)]
pub struct UsageWriter {
    tx: mpsc::Sender<Queued>,
    /// To the overflow thread ([`spill_overflow`]), bounded by the queue's capacity.
    overflow: std::sync::mpsc::SyncSender<Overflowed>,
    journal: Arc<Journal>,
    /// Told when a whole batch has queued (the writer is otherwise woken once per batch, by
    /// its timer, not once per record).
    full: Arc<tokio::sync::Notify>,
    batch_size: usize,
    stats: Arc<WriterStats>,
    spill: Arc<Spill>,
    quarantine_path: PathBuf,
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
    /// `<spill file>.lock`, locked while this writer owns the spill file and the journal.
    lock: Mutex<Option<std::fs::File>>,
}

/// Locks `<spill>.lock` for this process: two gateways on one spill file would replay each
/// other's spill and take each other's live journal segments for leftovers.
fn lock_spill(spill: &Path) -> std::io::Result<std::fs::File> {
    let mut path = spill.as_os_str().to_owned();
    path.push(".lock");
    let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(std::io::Error::other(format!(
            "another running gateway uses the usage spill file {} (usage.spill_path): give each instance its own",
            spill.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

impl UsageWriter {
    /// Starts the writer task (replaying any spill file, and any journal, left by an earlier
    /// run). Fails if another process's writer holds the same spill file.
    pub fn start(store: Arc<dyn UsageStore>, config: WriterConfig) -> std::io::Result<Self> {
        let lock = lock_spill(&config.spill_path)?;
        let (tx, rx) = mpsc::channel(config.capacity.max(1));
        let stats = Arc::new(WriterStats::default());
        let spill = Arc::new(Spill { path: config.spill_path.clone(), file: Mutex::default() });
        let (journal, left) = Journal::open(&config.spill_path, config.journal);
        recover(&left, &spill, &stats);
        let journal = Arc::new(journal);
        let quarantine_path = config.quarantine_path.clone();
        let (stop, stopped) = watch::channel(false);
        let full = Arc::new(tokio::sync::Notify::new());
        let batch_size = config.batch_size.max(1);
        let (overflow, overflowed) = std::sync::mpsc::sync_channel(config.capacity.max(1));
        {
            let (spill, stats) = (spill.clone(), stats.clone());
            std::thread::Builder::new()
                .name("usage-spill".into())
                .spawn(move || spill_overflow(&overflowed, &spill, &stats))?;
        }
        let task = tokio::spawn(run(
            store,
            config,
            rx,
            stats.clone(),
            spill.clone(),
            stopped,
            full.clone(),
            journal.clone(),
            overflow.clone(),
        ));
        Ok(Self {
            tx,
            overflow,
            journal,
            full,
            batch_size,
            stats,
            spill,
            quarantine_path,
            stop,
            task: Mutex::new(Some(task)),
            lock: Mutex::new(Some(lock)),
        })
    }

    /// Where records the database refused are kept.
    pub fn quarantine_path(&self) -> &Path {
        &self.quarantine_path
    }

    /// Hands a record over without waiting: written to the journal (so a killed process
    /// loses nothing), then queued. If the writer is behind, the overflow thread spills it
    /// ([`spill_overflow`]); if that is behind too, or the writer is stopping, it is spilled
    /// here. Only if the spill file fails too is it left to the journal, counted and logged.
    pub fn record(&self, record: UsageRecord) {
        let mark = self.journal.append(&record);
        let queued = match self.tx.try_send(Queued { record, mark }) {
            Ok(()) => {
                if self.queue_depth() >= self.batch_size {
                    self.full.notify_one();
                }
                return;
            }
            // The writer is behind: the overflow thread spills it, unless it is behind too.
            Err(mpsc::error::TrySendError::Full(q)) => match self.overflow(q) {
                Some(q) => q,
                None => return,
            },
            // Stopping: spilled here and now.
            Err(mpsc::error::TrySendError::Closed(q)) => q,
        };
        self.spill.append_marked(std::slice::from_ref(&queued.record), [queued.mark], &self.stats);
    }

    /// Hands a record to the overflow thread; gives it back if that thread cannot take it.
    fn overflow(&self, q: Queued) -> Option<Queued> {
        use std::sync::mpsc::TrySendError::{Disconnected, Full};
        match self.overflow.try_send(Overflowed::Record(Box::new(q))) {
            Err(Full(Overflowed::Record(q)) | Disconnected(Overflowed::Record(q))) => Some(*q),
            // Taken, or (never: only records are sent here) not a record.
            Ok(()) | Err(_) => None,
        }
    }

    /// Appends to the journal that failed (each is a record a killed process would lose).
    pub fn journal_failures(&self) -> u64 {
        self.journal.failures.load(Ordering::Relaxed)
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
        // Everything is persisted: the next writer on this spill file may start.
        drop(self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
    }
}

/// Moves the journal segments an earlier run left into the spill file (replayed next), then
/// removes them; a segment that cannot be moved stays for the next start.
fn recover(left: &[PathBuf], spill: &Spill, stats: &WriterStats) {
    for path in left {
        let records = read_spill(path);
        if !records.is_empty() && !spill.append(&records) {
            continue;
        }
        stats.recovered.fetch_add(records.len() as u64, Ordering::Relaxed);
        if !records.is_empty() {
            tracing::warn!(records = records.len(), path = %path.display(), "usage records recovered from the journal of a run that did not stop cleanly; replaying them");
        }
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(error = %e, path = %path.display(), "cannot remove a recovered usage journal segment; its records may be replayed again (harmless)");
        }
    }
}

/// The journal marks of a batch, one per run of records in the same segment.
fn hold(marks: &mut Vec<Mark>, mark: Mark) {
    if !marks.last().is_some_and(|m| Arc::ptr_eq(m, &mark)) {
        marks.push(mark);
    }
}

#[allow(clippy::too_many_arguments)]
async fn run(
    store: Arc<dyn UsageStore>,
    config: WriterConfig,
    mut rx: mpsc::Receiver<Queued>,
    stats: Arc<WriterStats>,
    spill: Arc<Spill>,
    mut stopped: watch::Receiver<bool>,
    full: Arc<tokio::sync::Notify>,
    journal: Arc<Journal>,
    overflow: std::sync::mpsc::SyncSender<Overflowed>,
) {
    let quarantine = Quarantine::new(config.quarantine_path.clone());
    let out = Out {
        store: store.as_ref(),
        config: &config,
        stats: &stats,
        spill: &spill,
        quarantine: &quarantine,
    };
    let mut healthy = replay(&out).await;
    // While the store fails, batches go straight to the spill file, but for one attempt a
    // second (which also tells when it is back): the queue never waits behind retries.
    let mut last_try = tokio::time::Instant::now();
    let mut batch: Vec<UsageRecord> = Vec::with_capacity(config.batch_size);
    let mut marks: Vec<Mark> = Vec::new();
    loop {
        // Wait for a first record (retrying a pending replay now and then), then gather more
        // until the batch is full or the flush interval is over.
        // The rollup sums the store holds, written when due (also when no record comes).
        let fold_in = store.rollup_due_in();
        let first = tokio::select! {
            r = rx.recv() => r,
            _ = stopped.changed() => {
                rx.close();
                rx.recv().await
            }
            () = tokio::time::sleep(Duration::from_secs(1)), if !healthy || spill.path.exists() => {
                healthy = replay(&out).await;
                continue;
            }
            () = tokio::time::sleep(fold_in.unwrap_or(Duration::from_hours(1))), if fold_in.is_some() => {
                // A failure is logged by the store, which holds the sums for the next attempt.
                let _ = store.fold_rollup(false).await;
                continue;
            }
        };
        let Some(first) = first else { break };
        journal.rotate_if_due();
        batch.push(first.record);
        hold(&mut marks, first.mark);
        // Then sleep until the flush interval is over or a whole batch has queued (the
        // sender says so), and take what has queued at once: one wake-up per batch, not one
        // per record (each would wake this task, often on the other worker thread).
        if rx.len() + 1 < config.batch_size {
            tokio::select! {
                () = tokio::time::sleep(config.flush_every) => {}
                () = full.notified() => {}
            }
        }
        while batch.len() < config.batch_size {
            match rx.try_recv() {
                Ok(q) => {
                    batch.push(q.record);
                    hold(&mut marks, q.mark);
                }
                Err(_) => break,
            }
        }
        let attempts = if healthy {
            config.attempts.max(1)
        } else {
            u32::from(last_try.elapsed() >= PROBE_EVERY)
        };
        if attempts > 0 {
            last_try = tokio::time::Instant::now();
        }
        healthy = persist(&out, &mut batch, &mut marks, attempts).await;
        if healthy && spill.path.exists() {
            healthy = replay(&out).await;
        }
        if healthy && store.rollup_due_in() == Some(Duration::ZERO) {
            let _ = store.fold_rollup(false).await;
        }
    }
    // What overflowed before the queue closed is in the spill file, and replayed with it.
    let (done, flushed) = tokio::sync::oneshot::channel();
    let asked = tokio::task::spawn_blocking(move || overflow.send(Overflowed::Flush(done)).is_ok());
    if matches!(asked.await, Ok(true)) {
        let _ = flushed.await;
    }
    journal.close();
    if healthy {
        replay(&out).await;
    }
    // Everything written: what the store holds of the rollup goes too (if it cannot, the
    // batches stay pending and the next gateway to look sums them).
    let _ = store.fold_rollup(true).await;
}

/// While the store fails, how often a batch is tried against it rather than spilled at once.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// [`write_or_spill`] with `attempts` (0: spill at once), then lets go of the batch's journal
/// segments, unless a record could be neither written nor spilled: the journal then keeps it
/// for the next start.
async fn persist(
    out: &Out<'_>,
    batch: &mut Vec<UsageRecord>,
    marks: &mut Vec<Mark>,
    attempts: u32,
) -> bool {
    let dropped = out.stats.dropped.load(Ordering::Relaxed);
    let healthy = write_or_spill(out, batch, attempts).await;
    if out.stats.dropped.load(Ordering::Relaxed) == dropped {
        marks.clear();
    } else {
        marks.drain(..).for_each(std::mem::forget);
    }
    healthy
}

/// Where the writer task puts records: the store, else the spill file, else (refused records)
/// the quarantine.
struct Out<'a> {
    store: &'a dyn UsageStore,
    config: &'a WriterConfig,
    stats: &'a WriterStats,
    spill: &'a Spill,
    quarantine: &'a Quarantine,
}

/// Writes `records`, which the store refused as a whole: halves are tried in turn until each
/// refused part is a single record, which is quarantined. At most two inserts per record at
/// fault and level of halving. Returns the records left unwritten because the store became
/// unreachable meanwhile (to spill), empty when everything else was written.
async fn isolate(out: &Out<'_>, records: &[UsageRecord]) -> Vec<UsageRecord> {
    // (start, end, known to be refused); a single record is tried again for its own error.
    let mut parts = vec![(0, records.len(), records.len() > 1)];
    while let Some((start, end, refused)) = parts.pop() {
        let part = &records[start..end];
        if refused {
            let mid = start + part.len() / 2;
            parts.push((mid, end, false));
            parts.push((start, mid, false));
            continue;
        }
        match out.store.insert_batch(part).await {
            Ok(()) => {
                out.stats.written.fetch_add(part.len() as u64, Ordering::Relaxed);
            }
            Err(UsageError::Rejected(e)) if part.len() == 1 => {
                out.quarantine.add(&part[0], &UsageError::Rejected(e), out.stats);
            }
            Err(UsageError::Rejected(_)) => parts.push((start, end, true)),
            Err(e) => {
                tracing::warn!(error = %error_chain(&e), "usage store failed while isolating a refused record");
                let mut left = part.to_vec();
                for (s, e, _) in parts {
                    left.extend_from_slice(&records[s..e]);
                }
                return left;
            }
        }
    }
    Vec::new()
}

/// Writes one batch in up to `attempts` tries with backoff; if it still fails, spills it. A
/// batch the store refuses is split until the records at fault are quarantined and the rest
/// written. Returns whether the store accepted it.
async fn write_or_spill(out: &Out<'_>, batch: &mut Vec<UsageRecord>, attempts: u32) -> bool {
    let mut backoff = Duration::from_millis(50);
    for attempt in 1..=attempts {
        match out.store.insert_batch(batch).await {
            Ok(()) => {
                out.stats.written.fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.clear();
                return true;
            }
            Err(UsageError::Rejected(e)) => {
                out.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, records = batch.len(), "the database refused a usage batch; finding the record at fault");
                let left = isolate(out, batch).await;
                *batch = left;
                if batch.is_empty() {
                    return true;
                }
                break;
            }
            Err(e) => {
                out.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, attempt, records = batch.len(), "usage batch failed");
                if attempt < attempts {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 4).min(Duration::from_secs(2));
                }
            }
        }
    }
    if out.spill.append(batch) {
        out.stats.spilled.fetch_add(batch.len() as u64, Ordering::Relaxed);
        if attempts > 0 {
            // Once per attempt against the store (about a second), not once per batch.
            tracing::warn!(records = batch.len(), spilled = out.stats.spilled.load(Ordering::Relaxed), path = %out.spill.path.display(), "usage records spilled to disk; they are replayed when the database is back");
        }
    } else {
        out.stats.dropped.fetch_add(batch.len() as u64, Ordering::Relaxed);
        tracing::error!(
            records = batch.len(),
            "usage records not persisted: the database and the spill file both failed; the journal keeps them for the next start"
        );
    }
    batch.clear();
    false
}

/// Replays the spill file into the store. Returns whether the store is healthy. A record the
/// store refuses is quarantined like any other, so replay never stalls on one record.
async fn replay(out: &Out<'_>) -> bool {
    let Some(path) = out.spill.take() else { return true };
    // A batch at a time: a failure leaves the file to be replayed again from its start (the
    // records written already are not counted twice).
    let mut records = spill_records(&path);
    let mut replayed = 0u64;
    loop {
        let chunk: Vec<UsageRecord> = records.by_ref().take(out.config.batch_size.max(1)).collect();
        if chunk.is_empty() {
            break;
        }
        match out.store.insert_batch(&chunk).await {
            Ok(()) => {}
            Err(UsageError::Rejected(e)) => {
                tracing::warn!(error = %e, records = chunk.len(), "the database refused spilled usage; finding the record at fault");
                if !isolate(out, &chunk).await.is_empty() {
                    return false;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, replayed, "replaying spilled usage failed; will retry");
                return false;
            }
        }
        replayed += chunk.len() as u64;
    }
    if let Err(e) = std::fs::remove_file(&path) {
        tracing::warn!(error = %e, "cannot remove the replayed spill file; its records may be replayed again (harmless)");
    }
    out.stats.replayed.fetch_add(replayed, Ordering::Relaxed);
    if replayed > 0 {
        tracing::info!(records = replayed, "spilled usage replayed into the database");
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
        UsageWriter::start(store.clone(), config).unwrap()
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
        // The writer tries the store again within a second, finds it back and replays.
        until("never replayed", || store.len() >= 101).await;
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

    /// Waits until `done` holds (failing, named by `what`, after 30 s).
    async fn until(what: &str, done: impl Fn() -> bool) {
        let started = std::time::Instant::now();
        while !done() {
            assert!(started.elapsed() < Duration::from_secs(30), "{what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A store that fails its `fail_at`th insert (once) and records the largest batch.
    #[derive(Default)]
    struct FailsOnce {
        inner: InMemoryUsageStore,
        fail_at: u64,
        calls: AtomicU64,
        largest: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl UsageStore for FailsOnce {
        async fn insert_batch(&self, records: &[UsageRecord]) -> Result<(), UsageError> {
            self.largest.fetch_max(records.len(), Ordering::SeqCst);
            if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at {
                return Err(UsageError::Store("the database went away".into()));
            }
            self.inner.insert_batch(records).await
        }
    }

    #[tokio::test]
    async fn a_long_spill_is_replayed_a_batch_at_a_time_and_again_after_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let spill = Spill { path: dir.path().join("spill.jsonl"), file: Mutex::default() };
        let old: Vec<_> = (0..2_500).map(|_| UsageRecord::example()).collect();
        assert!(spill.append(&old));
        let store = Arc::new(FailsOnce { fail_at: 3, ..FailsOnce::default() });
        let mut config = WriterConfig::new(spill.path.clone());
        config.batch_size = 500;
        let w = UsageWriter::start(store.clone(), config).unwrap();
        // Two batches go in, the third fails; the writer tries again within a second, from
        // the file's start, and the records written already are not counted twice.
        until("never replayed", || store.inner.len() >= 2_500).await;
        w.shutdown().await;
        assert_eq!(store.inner.len(), 2_500);
        assert_eq!(store.largest.load(Ordering::SeqCst), 500, "a batch at a time");
        assert_eq!(w.stats().replayed.load(Ordering::Relaxed), 2_500);
        assert!(!spill.path.exists() && !spill.replaying_path().exists());
    }

    /// A store whose inserts never finish: a database that stalled.
    struct Stalled;

    #[async_trait::async_trait]
    impl UsageStore for Stalled {
        async fn insert_batch(&self, _: &[UsageRecord]) -> Result<(), UsageError> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_record_the_writer_has_no_room_for_does_not_wait_for_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = WriterConfig::new(dir.path().join("spill.jsonl"));
        config.capacity = 4;
        let w = Arc::new(UsageWriter::start(Arc::new(Stalled), config).unwrap());
        // The writer takes a first batch and waits on the database for ever; the queue fills.
        w.record(UsageRecord::example());
        while w.queue_depth() > 0 {
            tokio::task::yield_now().await;
        }
        let queued: Vec<_> = (0..4).map(|_| UsageRecord::example()).collect();
        for r in &queued {
            w.record(r.clone());
        }
        assert_eq!(w.queue_depth(), 4);
        // The next record, with the spill file busy: handed over without waiting for it (it
        // used to be appended and synced right here, on the request's thread).
        let overflowed = UsageRecord::example();
        let busy = w.spill.file.lock().unwrap();
        let (returned, handed) = std::sync::mpsc::channel();
        std::thread::spawn({
            let (w, r) = (w.clone(), overflowed.clone());
            move || {
                w.record(r);
                returned.send(()).unwrap();
            }
        });
        assert!(
            handed.recv_timeout(Duration::from_secs(30)).is_ok(),
            "record() waited for the spill file"
        );
        assert_eq!(w.stats().spilled.load(Ordering::Relaxed), 0, "not on disk yet");
        drop(busy);
        // Then it is on disk.
        until("never spilled", || w.stats().spilled.load(Ordering::Relaxed) >= 1).await;
        assert_eq!(read_spill(&dir.path().join("spill.jsonl")), vec![overflowed]);
        assert_eq!(w.stats().dropped.load(Ordering::Relaxed), 0);
    }

    /// What overflowed is written once the database is back. (That the last replay at
    /// shutdown waits for the overflow thread is not pinned here: without the wait, that
    /// thread has almost always spilled everything by then anyway.)
    #[tokio::test]
    async fn records_that_overflowed_reach_the_database_once_it_is_back() {
        let store = Arc::new(InMemoryUsageStore::default());
        let dir = tempfile::tempdir().unwrap();
        store.set_failing(true);
        let w = writer(&store, &dir, 2);
        for _ in 0..200 {
            w.record(UsageRecord::example());
        }
        store.set_failing(false);
        w.shutdown().await;
        assert_eq!(store.len(), 200, "every record written, overflowed or not");
        assert!(w.stats().spilled.load(Ordering::Relaxed) > 0);
        assert_eq!(w.stats().dropped.load(Ordering::Relaxed), 0);
    }

    /// The journal segments in `dir`.
    fn journal_files(dir: &tempfile::TempDir) -> Vec<PathBuf> {
        let mut files: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.to_string_lossy().contains(".journal."))
            .collect();
        files.sort();
        files
    }

    #[tokio::test]
    async fn records_held_in_memory_are_on_disk_in_the_journal_until_persisted() {
        let store = Arc::new(InMemoryUsageStore::default());
        let dir = tempfile::tempdir().unwrap();
        store.set_failing(true);
        let mut config = WriterConfig::new(dir.path().join("spill.jsonl"));
        config.flush_every = Duration::from_millis(5);
        config.attempts = u32::MAX; // retried, never spilled: held in memory only
        let w = UsageWriter::start(store.clone(), config).unwrap();
        let records: Vec<_> = (0..10).map(|_| UsageRecord::example()).collect();
        for r in &records {
            w.record(r.clone());
        }
        // What a process killed now would leave on disk: every record.
        let on_disk: Vec<_> = journal_files(&dir).iter().flat_map(|p| read_spill(p)).collect();
        assert_eq!(on_disk, records);
        assert_eq!(w.stats().spilled.load(Ordering::Relaxed), 0);
        assert_eq!(w.journal_failures(), 0);
        // Once they are written, the journal lets go of them.
        store.set_failing(false);
        let started = std::time::Instant::now();
        while store.len() < 10 {
            assert!(started.elapsed() < Duration::from_secs(20), "never written");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        w.shutdown().await;
        assert_eq!(journal_files(&dir), Vec::<PathBuf>::new(), "a clean stop leaves no journal");
    }

    #[tokio::test]
    async fn a_journal_left_by_a_killed_run_is_replayed_at_start_without_double_counting() {
        let store = Arc::new(InMemoryUsageStore::default());
        let dir = tempfile::tempdir().unwrap();
        let records: Vec<_> = (0..6).map(|_| UsageRecord::example()).collect();
        // The killed run had written the first two already.
        store.insert_batch(&records[..2]).await.unwrap();
        let left = Spill {
            path: dir.path().join("spill.jsonl.journal.1765000000000.000003"),
            file: Mutex::default(),
        };
        assert!(left.append(&records));
        let w = writer(&store, &dir, 10);
        w.shutdown().await;
        assert_eq!(store.len(), 6, "every record once");
        assert_eq!(w.stats().recovered.load(Ordering::Relaxed), 6);
        assert_eq!(journal_files(&dir), Vec::<PathBuf>::new());
        assert!(!dir.path().join("spill.jsonl").exists());
    }

    #[tokio::test]
    async fn a_spill_file_has_one_writer_at_a_time() {
        let store = Arc::new(InMemoryUsageStore::default());
        let dir = tempfile::tempdir().unwrap();
        let first = writer(&store, &dir, 10);
        let config = WriterConfig::new(dir.path().join("spill.jsonl"));
        let refused = UsageWriter::start(store.clone(), config.clone()).unwrap_err();
        assert!(refused.to_string().contains("usage.spill_path"), "{refused}");
        first.shutdown().await;
        let second = UsageWriter::start(store.clone(), config).expect("free again");
        second.shutdown().await;
    }

    fn poisoned() -> UsageRecord {
        let mut r = UsageRecord::example();
        r.model = "gpt-4\0".into();
        r
    }

    #[tokio::test]
    async fn a_refused_record_is_quarantined_and_the_rest_of_its_batch_written() {
        let store = Arc::new(InMemoryUsageStore::default());
        let dir = tempfile::tempdir().unwrap();
        let mut config = WriterConfig::new(dir.path().join("spill.jsonl"));
        config.batch_size = 256;
        config.flush_every = Duration::from_hours(1);
        let w = UsageWriter::start(store.clone(), config).unwrap();
        let bad = poisoned();
        let good: Vec<_> = (0..255).map(|_| UsageRecord::example()).collect();
        for r in &good[..100] {
            w.record(r.clone());
        }
        w.record(bad.clone());
        for r in &good[100..] {
            w.record(r.clone());
        }
        w.shutdown().await;
        assert_eq!(store.len(), 255, "every other record is written");
        assert_eq!(w.stats().quarantined.load(Ordering::Relaxed), 1);
        assert_eq!(w.stats().spilled.load(Ordering::Relaxed), 0);
        assert_eq!(read_spill(w.quarantine_path()), vec![bad]);
        // One batch of 256: the whole, then two halves per level down to the record (8 levels).
        assert!(store.inserts() <= 1 + 2 * 8, "{} inserts", store.inserts());
    }

    #[tokio::test]
    async fn a_spill_holding_a_refused_record_is_replayed_without_it_and_never_again() {
        let store = Arc::new(InMemoryUsageStore::default());
        let dir = tempfile::tempdir().unwrap();
        let spill = Spill { path: dir.path().join("spill.jsonl"), file: Mutex::default() };
        let mut old: Vec<_> = (0..20).map(|_| UsageRecord::example()).collect();
        old.insert(7, poisoned());
        assert!(spill.append(&old));
        let w = writer(&store, &dir, 10);
        w.record(UsageRecord::example());
        w.shutdown().await;
        assert_eq!(store.len(), 21, "the spilled records and the new one");
        assert_eq!(w.stats().quarantined.load(Ordering::Relaxed), 1);
        assert!(!dir.path().join("spill.jsonl").exists());
        assert!(!dir.path().join("spill.jsonl.replaying").exists());
        // A restart finds nothing left to replay: the record is only in the quarantine file.
        let w = writer(&store, &dir, 10);
        w.shutdown().await;
        assert_eq!(w.stats().quarantined.load(Ordering::Relaxed), 0);
        assert_eq!(read_spill(&dir.path().join("spill.jsonl.quarantine")).len(), 1);
    }
}
