//! The journal: each record reaches the kernel (one `write`, no `fsync`) when it is handed to
//! the writer, before the answer it describes is complete, so a gateway killed with SIGKILL
//! loses none of the records it held in memory: the next start finds them on disk.
//!
//! Records go to segment files beside the spill file (`<spill>.journal.<run>.<n>`, JSON lines,
//! the spill file's format). Every queued record holds its segment ([`Mark`]); the writer
//! starts a new segment every [`ROTATE_EVERY`], and a segment's file is removed when the last
//! record it holds has been written or spilled, so the journal holds about one second of
//! records. A start moves the segments an earlier run left into the spill file, whose replay
//! writes them (idempotent on `request_id`: records that had been written are not counted
//! twice). What the journal does not cover: the machine losing power (no `fsync`; the spill
//! file is synced).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::UsageRecord;

thread_local! {
    /// Each thread's journal line, kept between records: a record is formatted without
    /// allocating (a line is about 600 bytes; serialising into a fresh `Vec` reallocated it
    /// three times, and every request writes one).
    static LINE: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A line buffer grown past this (an unusually long record) is not kept.
const LINE_KEPT: usize = 16 * 1024;

/// How long one segment takes new records.
pub(crate) const ROTATE_EVERY: Duration = Duration::from_secs(1);

/// One segment file; removed when the last record it holds is persisted (its last [`Mark`]
/// dropped) and a newer segment has taken over.
#[derive(Debug)]
pub(crate) struct Segment {
    path: PathBuf,
    file: Option<std::fs::File>,
    opened: Instant,
}

impl Drop for Segment {
    fn drop(&mut self) {
        if self.file.is_some()
            && let Err(e) = std::fs::remove_file(&self.path)
        {
            tracing::warn!(error = %e, path = %self.path.display(), "cannot remove a usage journal segment; its records will be replayed at the next start (harmless)");
        }
    }
}

/// A queued record's hold on its segment.
pub(crate) type Mark = Arc<Segment>;

#[derive(Debug)]
pub(crate) struct Journal {
    /// `<spill file name>.journal.<run>.`: the segments' common prefix.
    prefix: PathBuf,
    current: ArcSwap<Segment>,
    next: AtomicU64,
    /// Appends failing now (logged once per streak).
    failing: AtomicBool,
    pub(crate) failures: AtomicU64,
    on: bool,
}

/// The segments' name prefix for the spill file `spill` (without the run).
fn family(spill: &Path) -> std::ffi::OsString {
    let mut name = spill.file_name().map(std::ffi::OsStr::to_os_string).unwrap_or_default();
    name.push(".journal.");
    name
}

impl Journal {
    /// Opens a journal beside `spill` (`on`: false, one that writes nothing); returns it with
    /// the segment files an earlier run left (to recover, then remove).
    pub(crate) fn open(spill: &Path, on: bool) -> (Journal, Vec<PathBuf>) {
        let dir = match spill.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let family = family(spill);
        let mut left = Vec::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name();
                if name.as_encoded_bytes().starts_with(family.as_encoded_bytes()) {
                    left.push(entry.path());
                }
            }
        }
        left.sort();
        let run = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or_default();
        let mut prefix = family;
        prefix.push(format!("{run}."));
        let prefix = dir.join(prefix);
        let journal = Journal {
            current: ArcSwap::from_pointee(Segment {
                path: PathBuf::new(),
                file: None,
                opened: Instant::now(),
            }),
            prefix,
            next: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            failures: AtomicU64::new(0),
            on,
        };
        journal.rotate();
        (journal, left)
    }

    fn segment(&self) -> Segment {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut path = self.prefix.clone().into_os_string();
        path.push(format!("{n:06}"));
        let path = PathBuf::from(path);
        let file = std::fs::OpenOptions::new().create_new(true).append(true).open(&path);
        let file = match file {
            Ok(f) => Some(f),
            Err(e) => {
                self.failed(&e);
                None
            }
        };
        Segment { path, file, opened: Instant::now() }
    }

    fn failed(&self, e: &std::io::Error) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if !self.failing.swap(true, Ordering::Relaxed) {
            tracing::error!(error = %e, path = %self.prefix.display(), "cannot write the usage journal: records held in memory would be lost if the process were killed");
        }
    }

    /// A new segment takes new records; the old one goes once its records are persisted.
    pub(crate) fn rotate(&self) {
        if self.on {
            self.current.store(Arc::new(self.segment()));
        }
    }

    /// Rotates when the current segment is older than [`ROTATE_EVERY`].
    pub(crate) fn rotate_if_due(&self) {
        if self.current.load().opened.elapsed() >= ROTATE_EVERY {
            self.rotate();
        }
    }

    /// No segment any more (at shutdown, when everything queued is persisted).
    pub(crate) fn close(&self) {
        self.current.store(Arc::new(Segment {
            path: PathBuf::new(),
            file: None,
            opened: Instant::now(),
        }));
    }

    /// Writes `record` to the current segment; the mark keeps the segment until the record is
    /// persisted.
    pub(crate) fn append(&self, record: &UsageRecord) -> Mark {
        let segment = self.current.load_full();
        if let Some(mut file) = segment.file.as_ref() {
            let written = LINE.with_borrow_mut(|line| {
                line.clear();
                if serde_json::to_writer(&mut *line, record).is_err() {
                    return Ok(());
                }
                line.push(b'\n');
                // One `write` with O_APPEND: lines of concurrent appends never interleave.
                let written = file.write_all(line);
                if line.capacity() > LINE_KEPT {
                    *line = Vec::new();
                }
                written
            });
            match written {
                Ok(()) if self.failing.load(Ordering::Relaxed) => {
                    self.failing.store(false, Ordering::Relaxed);
                }
                Ok(()) => {}
                Err(e) => self.failed(&e),
            }
        }
        segment
    }
}
