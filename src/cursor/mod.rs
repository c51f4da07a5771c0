//! The cursor store: per destination and lane, the next offset to deliver
//! and the blocked-head state, committed together in one CRC'd record.
//!
//! Lanes submit their state after each delivery without waiting; a commit
//! thread appends the latest state of every lane that changed (one write,
//! one `fdatasync`), then publishes it as durable. Commits start at least
//! the destination's `cursor_sync_interval_ms` apart, so a busy lane's
//! updates share a flush instead of adding one disk flush per few
//! messages to the WAL's. A lane may run at most
//! [`CURSOR_LEAD_MAX`] commits ahead of what is durable, which bounds how much
//! is delivered again after a crash. The file has two preallocated slots
//! (`file.rs`): when one fills, every lane's state is written to the other,
//! so compaction never allocates and a full disk never stops delivery.
//!
//! The file records what decides each message's lane (the routing: queue,
//! lane count, partition key, lane function). If the configuration changes
//! it, the lanes' cursors no longer describe the same messages: every lane
//! then restarts at the slowest old cursor (or at the start of a different
//! queue), so messages may be delivered again but none is skipped.
//!
//! A destination's delivery journal rides on the same commits: the records
//! a lane submits with a cursor update are appended (one group commit) to
//! the journal before the cursor write, so a durable cursor never passes a
//! message whose attempt is not durably journaled.
//!
//! Architecture Invariant: a cursor moves only after the downstream's
//! positive ACK (or a durable dead-letter record); it never moves backwards
//! except by a routing change (restart at the slowest lane: duplicates,
//! never gaps) or an operator's recorded `reset-cursor`.
mod file;
pub mod record;

pub use file::FILE_BYTES;
pub use record::{ErrorClass, HeadState, HeadStatus, LaneCursor};

use crate::constants::CURSOR_LEAD_MAX;
use crate::storage::{self, Storage};
use crate::wal::{Offset, ReaderPosition};
use crossbeam_channel::{bounded, Receiver, Sender};
use file::{CursorFile, Loaded};
use parking_lot::{Condvar, Mutex};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CursorError {
    #[error("cursor file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cursor file {path} is not a cursor file ({reason}); move it aside to start this destination from the beginning of its queue")]
    NotACursorFile { path: PathBuf, reason: String },
}

struct Update {
    lane: u16,
    seq: u64,
    cursor: LaneCursor,
    /// Journal records (metadata areas) to make durable before `cursor`.
    journal: Vec<Vec<u8>>,
}

#[derive(Default, Clone)]
struct LaneDurability {
    submitted: u64,
    durable: u64,
    cursor: LaneCursor,
}

struct Inner {
    path: PathBuf,
    lanes: Mutex<Vec<LaneDurability>>,
    became_durable: Condvar,
    failure: Mutex<Option<String>>,
    positions: Vec<ReaderPosition>,
    /// The delivery journal written ahead of each commit, once attached.
    journal: std::sync::OnceLock<Arc<crate::wal::Log>>,
}

/// The cursors of one destination.
pub struct CursorStore {
    inner: Arc<Inner>,
    tx: Option<Sender<Update>>,
    thread: Option<JoinHandle<()>>,
}

impl CursorStore {
    /// Opens (or creates) `<dir>/<destination>.cur` for `lanes` lanes
    /// routed as `routing` describes, and returns the committed cursor of
    /// each lane. `positions` (one per lane) are kept at each lane's durable
    /// next offset, protecting retention.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        destination: &str,
        routing: &str,
        lanes: u16,
        positions: Vec<ReaderPosition>,
        sync_interval: Duration,
    ) -> Result<(CursorStore, Vec<LaneCursor>), CursorError> {
        assert_eq!(positions.len(), usize::from(lanes));
        let path = dir.join(format!("{destination}.cur"));
        let io = |source| CursorError::Io {
            path: path.clone(),
            source,
        };
        storage::create_dir_durable(storage.as_ref(), dir).map_err(io)?;
        let loaded =
            file::load(storage.as_ref(), &path).map_err(|reason| CursorError::NotACursorFile {
                path: path.clone(),
                reason,
            })?;
        let cursors = starting_cursors(&path, loaded.as_ref(), routing, lanes);
        let mut seq = loaded.as_ref().map_or(0, |l| l.seq);
        // Every open starts from a fresh snapshot: bounded size, no torn tail.
        let cursor_file = match &loaded {
            Some(l) if l.routing.is_some() => {
                CursorFile::reopen(storage.as_ref(), &path, routing, l, &cursors, &mut seq)
            }
            _ => CursorFile::create(storage.as_ref(), &path, routing, &cursors, &mut seq),
        }
        .map_err(io)?;
        for (p, c) in positions.iter().zip(&cursors) {
            p.set(c.next_offset);
        }
        let state = cursors
            .iter()
            .map(|c| LaneDurability {
                cursor: c.clone(),
                ..Default::default()
            })
            .collect();
        let inner = Arc::new(Inner {
            path: path.clone(),
            lanes: Mutex::new(state),
            became_durable: Condvar::new(),
            failure: Mutex::new(None),
            positions,
            journal: std::sync::OnceLock::new(),
        });
        let (tx, rx) = bounded(4096);
        let committer = Committer {
            inner: inner.clone(),
            file: cursor_file,
            seq,
            buf: Vec::new(),
            sync_interval,
        };
        let thread = std::thread::Builder::new()
            .name(format!("orderly-cursor-{destination}"))
            .spawn(move || committer.run(rx))
            .map_err(io)?;
        Ok((
            CursorStore {
                inner,
                tx: Some(tx),
                thread: Some(thread),
            },
            cursors,
        ))
    }

    /// From now on, journal records submitted with cursor updates go to
    /// `journal`, durable before the update they came with.
    pub fn attach_journal(&self, journal: Arc<crate::wal::Log>) {
        let _ = self.inner.journal.set(journal);
    }

    /// Queues `cursor` as the new state of `lane`; returns at once.
    pub fn submit(&self, lane: u16, cursor: LaneCursor) {
        self.submit_with_journal(lane, cursor, Vec::new());
    }

    /// [`Self::submit`], with journal records to make durable first.
    pub fn submit_with_journal(&self, lane: u16, cursor: LaneCursor, journal: Vec<Vec<u8>>) {
        let seq = {
            let mut lanes = self.inner.lanes.lock();
            let l = &mut lanes[usize::from(lane)];
            l.submitted += 1;
            l.submitted
        };
        if let Some(tx) = &self.tx {
            // The committer only stops when the store is closed.
            let _ = tx.send(Update {
                lane,
                seq,
                cursor,
                journal,
            });
        }
    }

    /// Waits (up to `timeout`) until `lane` is at most [`CURSOR_LEAD_MAX`]
    /// commits ahead of durable; false on timeout.
    pub fn wait_lead(&self, lane: u16, timeout: Duration) -> bool {
        self.wait_until(lane, timeout, |l| {
            l.submitted - l.durable <= CURSOR_LEAD_MAX
        })
    }

    /// Waits until everything `lane` submitted is durable; false on timeout.
    pub fn wait_durable(&self, lane: u16, timeout: Duration) -> bool {
        self.wait_until(lane, timeout, |l| l.durable == l.submitted)
    }

    fn wait_until(
        &self,
        lane: u16,
        timeout: Duration,
        ok: impl Fn(&LaneDurability) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        let mut lanes = self.inner.lanes.lock();
        while !ok(&lanes[usize::from(lane)]) {
            if self.inner.failure.lock().is_some()
                || self
                    .inner
                    .became_durable
                    .wait_until(&mut lanes, deadline)
                    .timed_out()
            {
                return ok(&lanes[usize::from(lane)]);
            }
        }
        true
    }

    /// The durably committed state of `lane`.
    pub fn durable(&self, lane: u16) -> LaneCursor {
        self.inner.lanes.lock()[usize::from(lane)].cursor.clone()
    }

    /// Set when a cursor write or fsync failed: cursors no longer advance.
    pub fn failure(&self) -> Option<String> {
        self.inner.failure.lock().clone()
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Commits everything submitted and stops the commit thread.
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for CursorStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How often a full journal is tried again.
const JOURNAL_FULL_RETRY: Duration = Duration::from_millis(500);

enum JournalFailure {
    /// No space: try again later, nothing is lost.
    Full(String),
    /// Anything else: the store stops (like a failed cursor write).
    Other(String),
}

struct Committer {
    inner: Arc<Inner>,
    file: CursorFile,
    seq: u64,
    buf: Vec<u8>,
    sync_interval: Duration,
}

impl Committer {
    fn run(mut self, rx: Receiver<Update>) {
        let lanes = self.inner.positions.len();
        let mut latest: Vec<Option<(u64, LaneCursor)>> = vec![None; lanes];
        let mut last_sync: Option<Instant> = None;
        // Journal records not yet durable (a full disk holds them here, and
        // the cursor updates behind them, until there is space again).
        let mut journal: Vec<Vec<u8>> = Vec::new();
        let mut full_since: Option<Instant> = None;
        loop {
            let first = if journal.is_empty() {
                match rx.recv() {
                    Ok(u) => Some(u),
                    Err(_) => return,
                }
            } else {
                match rx.recv_timeout(JOURNAL_FULL_RETRY) {
                    Ok(u) => Some(u),
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => None,
                    // Closing: one last try below, then what is left is
                    // delivered again after the restart.
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                        if self.flush_journal(&mut journal, &mut full_since) {
                            self.commit(&mut latest);
                        }
                        return;
                    }
                }
            };
            // Pacing: a lone update after a quiet spell commits at once; a
            // busy lane's updates gather until the interval is up, so they
            // share one flush. Sleeping (not waiting on the channel) spares
            // the lanes a wake-up per submit.
            if let Some(due) = last_sync.map(|t| t + self.sync_interval) {
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            last_sync = Some(Instant::now());
            let mut next = first;
            while let Some(u) = next {
                latest[usize::from(u.lane)] = Some((u.seq, u.cursor));
                journal.extend(u.journal);
                next = rx.try_recv().ok();
            }
            if self.inner.failure.lock().is_some() {
                latest.iter_mut().for_each(|l| *l = None);
                journal.clear();
                continue;
            }
            if self.flush_journal(&mut journal, &mut full_since) {
                self.commit(&mut latest);
            }
        }
    }

    /// Makes the pending journal records durable; true when none is left.
    /// A full disk keeps them (and so the cursors behind them) for the next
    /// try: lanes stop at their lead limit and go on once there is space.
    fn flush_journal(&self, journal: &mut Vec<Vec<u8>>, full_since: &mut Option<Instant>) -> bool {
        match self.write_journal(journal) {
            Ok(()) => {
                if let Some(t) = full_since.take() {
                    tracing::warn!(path = %self.inner.path.display(), waited_s = t.elapsed().as_secs(), "delivery journal writable again; cursors move on");
                }
                journal.clear();
                true
            }
            Err((written, JournalFailure::Full(e))) => {
                journal.drain(..written);
                if full_since.is_none() {
                    tracing::error!(path = %self.inner.path.display(), error = %e, "delivery journal: storage full; deliveries wait (cursors do not move past unjournaled attempts) until there is space");
                    *full_since = Some(Instant::now());
                }
                false
            }
            Err((_, JournalFailure::Other(e))) => {
                self.fail(format!("delivery journal: {e}"));
                journal.clear();
                false
            }
        }
    }

    fn commit(&mut self, latest: &mut [Option<(u64, LaneCursor)>]) {
        self.buf.clear();
        for (lane, l) in latest.iter().enumerate() {
            if let Some((_, c)) = l {
                self.seq += 1;
                record::encode(&mut self.buf, lane as u16, self.seq, c);
            }
        }
        let written = match self.file.append(&self.buf) {
            Ok(true) => Ok(()),
            // The slot is full: every lane's state goes into the other one.
            Ok(false) => {
                let merged = self.merged(latest);
                self.file.write_snapshot(&merged, &mut self.seq)
            }
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            self.fail(format!("cursor file {}: {e}", self.inner.path.display()));
            return;
        }
        self.publish(latest);
    }

    fn fail(&self, reason: String) {
        tracing::error!(%reason, "cursor commits stopped; deliveries pause until restart");
        *self.inner.failure.lock() = Some(reason);
        self.inner.became_durable.notify_all();
    }

    /// Appends `records` to the journal as one group commit and waits
    /// until they are durable.
    /// Appends `records` to the journal as one group commit and waits
    /// until they are durable; on failure, how many leading records were.
    fn write_journal(&self, records: &[Vec<u8>]) -> Result<(), (usize, JournalFailure)> {
        let Some(journal) = self.inner.journal.get() else {
            return Ok(());
        };
        if records.is_empty() {
            return Ok(());
        }
        let (reply, done) = crossbeam_channel::unbounded();
        let reqs = records
            .iter()
            .enumerate()
            .map(|(i, meta)| crate::wal::AppendRequest {
                payload: Vec::new(),
                meta: meta.clone(),
                tag: i as u64,
                reply: reply.clone(),
                notify: None,
            })
            .collect::<Vec<_>>();
        drop(reply);
        if journal.appender().submit_batch(reqs).is_err() {
            return Err((0, JournalFailure::Other("the journal log is closed".into())));
        }
        // Completions arrive in order; the first failure decides.
        let mut written = 0;
        for _ in 0..records.len() {
            match done.recv() {
                Ok(d) => match d.result {
                    Ok(_) => written += 1,
                    Err(crate::wal::AppendError::StorageFull(e)) => {
                        return Err((written, JournalFailure::Full(e)))
                    }
                    Err(e) => return Err((written, JournalFailure::Other(e.to_string()))),
                },
                Err(_) => {
                    return Err((
                        written,
                        JournalFailure::Other("the journal writer stopped".into()),
                    ))
                }
            }
        }
        Ok(())
    }

    /// The durable state of every lane with the pending updates applied.
    fn merged(&self, latest: &[Option<(u64, LaneCursor)>]) -> Vec<LaneCursor> {
        let lanes = self.inner.lanes.lock();
        lanes
            .iter()
            .zip(latest)
            .map(|(l, new)| new.as_ref().map_or(l.cursor.clone(), |(_, c)| c.clone()))
            .collect()
    }

    fn publish(&self, latest: &mut [Option<(u64, LaneCursor)>]) {
        let mut lanes = self.inner.lanes.lock();
        for (i, l) in latest.iter_mut().enumerate() {
            if let Some((seq, c)) = l.take() {
                self.inner.positions[i].set(
                    c.head
                        .as_ref()
                        .map_or(c.next_offset, |h| h.offset.min(c.next_offset)),
                );
                lanes[i].durable = seq;
                lanes[i].cursor = c;
            }
        }
        self.inner.became_durable.notify_all();
    }
}

/// The first offset of a routing description's queue (`queue=NAME;...`).
fn queue_of(routing: &str) -> Option<&str> {
    routing.split(';').find_map(|kv| kv.strip_prefix("queue="))
}

/// Where each lane starts, given what the file holds. Cursors carry over
/// only if they were committed under the same routing; otherwise every lane
/// restarts at the slowest old cursor (messages may be delivered again,
/// none is skipped), or at the start of the queue if the queue changed.
fn starting_cursors(
    path: &Path,
    loaded: Option<&Loaded>,
    routing: &str,
    lanes: u16,
) -> Vec<LaneCursor> {
    let fresh = vec![LaneCursor::default(); usize::from(lanes)];
    let Some(l) = loaded else {
        return fresh;
    };
    if l.torn_bytes > 0 {
        tracing::warn!(path = %path.display(), bytes = l.torn_bytes, "ignoring a torn cursor commit at the end (its deliveries are repeated)");
    }
    let same = match &l.routing {
        Some(r) => r == routing,
        // A version 1 file did not record its routing: only a single lane
        // (which takes every message) is safe to carry over unchecked.
        None => l.lanes == 1 && lanes == 1,
    };
    if same && l.lanes == lanes {
        return l.cursors.clone();
    }
    let old = l
        .routing
        .as_deref()
        .unwrap_or("(not recorded: version 1 file)");
    let old_queue = l.routing.as_deref().and_then(queue_of);
    if old_queue.is_some() && old_queue != queue_of(routing) {
        tracing::warn!(path = %path.display(), old, new = routing, "destination now reads another queue: every lane starts at the beginning of it");
        return fresh;
    }
    let slowest = l
        .cursors
        .iter()
        .map(|c| c.head.as_ref().map_or(c.next_offset, |h| h.offset))
        .min()
        .unwrap_or_default();
    tracing::warn!(path = %path.display(), old, new = routing, from = slowest.0, "routing changed (lanes, partition key or lane function): every lane restarts at the slowest old lane; messages after it may be delivered again, none is skipped");
    vec![
        LaneCursor {
            next_offset: slowest,
            head: None
        };
        usize::from(lanes)
    ]
}

/// What `orderly verify` reports about a cursor file.
#[derive(Debug, Clone)]
pub struct CursorFileReport {
    pub lanes: u16,
    pub routing: Option<String>,
    pub generation: u64,
    pub cursors: Vec<LaneCursor>,
    /// Bytes of a torn last commit (recovery ignores them; their deliveries repeat).
    pub torn_bytes: usize,
}

/// Reads a cursor file without changing it; `Err` says why it is unusable.
pub fn check_file(storage: &dyn Storage, path: &Path) -> Result<CursorFileReport, String> {
    match file::load(storage, path)? {
        None => Err("no such file".into()),
        Some(l) => Ok(CursorFileReport {
            lanes: l.lanes,
            routing: l.routing,
            generation: l.generation,
            cursors: l.cursors,
            torn_bytes: l.torn_bytes,
        }),
    }
}

/// Offset a lane starts from: its cursor, or the log start if retention
/// already removed what it pointed at (logged: those messages are gone).
pub fn clamp_to_log_start(c: &LaneCursor, start: Offset) -> Offset {
    c.next_offset.max(start)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::SimStorage;

    const PACE: Duration = Duration::from_millis(2);
    const ROUTING: &str = "queue=q;lanes=2;key=PID-3.1;lane-map=fnv1a64-mod";

    fn positions(n: u16) -> Vec<ReaderPosition> {
        let log = crate::wal::Log::open_with(
            Arc::new(SimStorage::new()),
            Path::new("/q"),
            crate::wal::LogConfig::default(),
        )
        .unwrap();
        (0..n)
            .map(|i| log.register_reader(&format!("l{i}"), Offset(0)))
            .collect()
    }

    /// The journal rides ahead of the cursors: whenever power fails, a
    /// cursor that survived never passes an attempt the journal lost.
    /// Seen failing with the journal append moved after the cursor write.
    #[test]
    fn a_durable_cursor_never_passes_a_journal_record_lost_to_power_loss() {
        let sim = SimStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(sim.clone());
        let config = crate::delivery::journal::journal_log_config;
        let journal = Arc::new(
            crate::wal::Log::open_with(storage.clone(), Path::new("/j"), config()).unwrap(),
        );
        let (store, _) = CursorStore::open(
            storage.clone(),
            Path::new("/c"),
            "ehr",
            ROUTING,
            1,
            positions(1),
            Duration::ZERO,
        )
        .unwrap();
        store.attach_journal(journal.clone());
        // What a power loss would leave at the start of every sync.
        let images: Arc<Mutex<Vec<SimStorage>>> = Arc::default();
        let seen = images.clone();
        sim.set_sync_hook(Some(Arc::new(move |s: &SimStorage| {
            let mut seen = seen.lock();
            let seed = seen.len() as u64;
            seen.push(s.synced_only());
            seen.push(s.power_loss(seed));
        })));
        for i in 0..12u64 {
            let c = LaneCursor {
                next_offset: Offset(i + 1),
                head: None,
            };
            store.submit_with_journal(0, c, vec![vec![1, 1, 0, b'x']]);
            assert!(store.wait_durable(0, Duration::from_secs(10)));
        }
        sim.set_sync_hook(None);
        let images = std::mem::take(&mut *images.lock());
        assert!(images.len() > 4);
        for (n, image) in images.into_iter().enumerate() {
            let storage: Arc<dyn Storage> = Arc::new(image);
            let (_s, got) = CursorStore::open(
                storage.clone(),
                Path::new("/c"),
                "ehr",
                ROUTING,
                1,
                positions(1),
                PACE,
            )
            .unwrap();
            let end = crate::wal::Log::open_with(storage, Path::new("/j"), config())
                .unwrap()
                .end_offset();
            assert!(
                got[0].next_offset <= end,
                "image {n}: cursor {} but only {end} journal records",
                got[0].next_offset
            );
        }
    }

    #[test]
    fn committed_cursors_and_heads_survive_reopen_and_crash() {
        let sim = SimStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(sim.clone());
        let (store, start) = CursorStore::open(
            storage.clone(),
            Path::new("/c"),
            "ehr",
            ROUTING,
            2,
            positions(2),
            PACE,
        )
        .unwrap();
        assert_eq!(start, vec![LaneCursor::default(); 2]);
        for i in 1..=100u64 {
            store.submit(
                0,
                LaneCursor {
                    next_offset: Offset(i),
                    head: None,
                },
            );
        }
        let head = HeadState {
            offset: Offset(7),
            attempts: 2,
            class: ErrorClass::Timeout,
            status: HeadStatus::Retrying,
            first_failure_ms: 1,
            last_failure_ms: 2,
            next_retry_ms: 3,
            text: "no ACK".into(),
        };
        store.submit(
            1,
            LaneCursor {
                next_offset: Offset(7),
                head: Some(head.clone()),
            },
        );
        assert!(
            store.wait_durable(0, Duration::from_secs(5))
                && store.wait_durable(1, Duration::from_secs(5))
        );
        let crashed = sim.crash(Some(0));
        let (_s, got) = CursorStore::open(
            Arc::new(crashed),
            Path::new("/c"),
            "ehr",
            ROUTING,
            2,
            positions(2),
            PACE,
        )
        .unwrap();
        assert_eq!(got[0].next_offset, Offset(100));
        assert_eq!(got[1].head.as_ref(), Some(&head));
    }

    /// A busy lane's updates share flushes: cursor syncs start at least the
    /// interval apart, and the last update still becomes durable.
    #[test]
    fn commits_are_paced_by_the_sync_interval_and_the_last_one_is_durable() {
        let sim = SimStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(sim.clone());
        let interval = Duration::from_millis(5);
        let (store, _) = CursorStore::open(
            storage,
            Path::new("/c"),
            "d",
            ROUTING,
            1,
            positions(1),
            interval,
        )
        .unwrap();
        let syncs_before = sim.sync_count();
        let started = Instant::now();
        for i in 1..=2_000u64 {
            store.submit(
                0,
                LaneCursor {
                    next_offset: Offset(i),
                    head: None,
                },
            );
            if i % 100 == 0 {
                assert!(store.wait_lead(0, Duration::from_secs(5)));
            }
        }
        assert!(store.wait_durable(0, Duration::from_secs(5)));
        let elapsed = started.elapsed();
        let syncs = sim.sync_count() - syncs_before;
        let most = 1 + (elapsed.as_nanos() / interval.as_nanos()) as u64;
        assert!(
            syncs <= most,
            "{syncs} cursor syncs in {elapsed:?} at one per {interval:?}"
        );
        assert_eq!(store.durable(0).next_offset, Offset(2_000));
    }

    fn at(n: u64) -> LaneCursor {
        LaneCursor {
            next_offset: Offset(n),
            head: None,
        }
    }

    /// Commits `states` under `routing`, then reopens under `reopened` and
    /// returns where each lane starts.
    fn reopen_with(states: &[u64], routing: &str, reopened: &str, lanes: u16) -> Vec<u64> {
        let sim = SimStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(sim.clone());
        let n = states.len() as u16;
        let (store, _) = CursorStore::open(
            storage.clone(),
            Path::new("/c"),
            "d",
            routing,
            n,
            positions(n),
            PACE,
        )
        .unwrap();
        for (lane, s) in states.iter().enumerate() {
            store.submit(lane as u16, at(*s));
        }
        store.close();
        let (_s, got) = CursorStore::open(
            storage,
            Path::new("/c"),
            "d",
            reopened,
            lanes,
            positions(lanes),
            PACE,
        )
        .unwrap();
        got.iter().map(|c| c.next_offset.0).collect()
    }

    #[test]
    fn the_same_routing_keeps_every_lane_where_it_was() {
        assert_eq!(reopen_with(&[50, 30], ROUTING, ROUTING, 2), vec![50, 30]);
    }

    #[test]
    fn lane_count_change_restarts_every_lane_at_the_slowest() {
        let four = "queue=q;lanes=4;key=PID-3.1;lane-map=fnv1a64-mod";
        assert_eq!(reopen_with(&[50, 30], ROUTING, four, 4), vec![30; 4]);
    }

    /// Regression: the file used to record only the lane count, so a new
    /// partition key with the same lanes moved keys between lanes whose
    /// cursors differ, and pending messages of the slower lane were never
    /// delivered.
    #[test]
    fn partition_key_change_with_the_same_lanes_restarts_at_the_slowest() {
        let by_visit = "queue=q;lanes=2;key=PV1-19;lane-map=fnv1a64-mod";
        assert_eq!(reopen_with(&[50, 30], ROUTING, by_visit, 2), vec![30, 30]);
    }

    #[test]
    fn queue_change_starts_at_the_beginning_of_the_new_queue() {
        let other = "queue=billing;lanes=2;key=PID-3.1;lane-map=fnv1a64-mod";
        assert_eq!(reopen_with(&[50, 30], ROUTING, other, 2), vec![0, 0]);
    }

    #[test]
    fn a_version_1_file_is_read_and_rewritten_as_version_2() {
        let sim = SimStorage::new();
        let path = Path::new("/c/d.cur");
        let mut v1 = b"ORDLYCUR".to_vec();
        v1.extend_from_slice(&1u16.to_le_bytes());
        v1.extend_from_slice(&1u16.to_le_bytes());
        v1.extend_from_slice(&[0; 4]);
        record::encode(&mut v1, 0, 1, &at(77));
        storage::replace_file(&sim, path, &v1).unwrap();
        let strict = "queue=q;lanes=1;key=-;lane-map=fnv1a64-mod";
        let storage: Arc<dyn Storage> = Arc::new(sim.clone());
        let (store, got) = CursorStore::open(
            storage.clone(),
            Path::new("/c"),
            "d",
            strict,
            1,
            positions(1),
            PACE,
        )
        .unwrap();
        assert_eq!(got[0].next_offset, Offset(77), "one lane carries over");
        store.close();
        assert_eq!(sim.contents(path).unwrap().len(), file::FILE_BYTES);
        assert_eq!(reopen_v2(&sim, strict), vec![77]);
    }

    fn reopen_v2(sim: &SimStorage, routing: &str) -> Vec<u64> {
        let storage: Arc<dyn Storage> = Arc::new(sim.clone());
        let (_s, got) = CursorStore::open(
            storage,
            Path::new("/c"),
            "d",
            routing,
            1,
            positions(1),
            PACE,
        )
        .unwrap();
        got.iter().map(|c| c.next_offset.0).collect()
    }

    /// Regression: every open rewrote the file through a new temp file, so
    /// a full disk stopped the broker from starting; and every commit needs
    /// room. The file is preallocated: opening and committing allocate nothing.
    /// A full disk holds the journal, and so the cursors behind it, until
    /// there is space: no failure, no journal record lost or doubled, and
    /// never a durable cursor past the journal. Seen failing with a full
    /// journal treated like any write error (the store failed for good:
    /// `delivery journal: No space left on device`).
    #[test]
    fn a_full_journal_holds_the_cursors_until_there_is_space() {
        let sim = SimStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(sim.clone());
        let small = crate::wal::LogConfig {
            segment_bytes: 64 * 1024,
            ..crate::delivery::journal::journal_log_config()
        };
        let journal =
            Arc::new(crate::wal::Log::open_with(storage.clone(), Path::new("/j"), small).unwrap());
        let (store, _) = CursorStore::open(
            storage,
            Path::new("/c"),
            "d",
            ROUTING,
            2,
            positions(2),
            Duration::ZERO,
        )
        .unwrap();
        store.attach_journal(journal.clone());
        sim.inject(crate::storage::SimFault::NoSpaceAfter(0));
        const N: u64 = 3000;
        for i in 1..=N {
            store.submit_with_journal(0, at(i), vec![vec![1, 1, 0, b'x']]);
        }
        // The first (preallocated) segment fills; the next cannot be made.
        assert!(
            !store.wait_durable(0, Duration::from_secs(2)),
            "held while full"
        );
        assert!(store.failure().is_none(), "{:?}", store.failure());
        let held = store.durable(0).next_offset;
        assert!(
            held.0 < N && held.0 <= journal.end_offset().0,
            "{held} vs {}",
            journal.end_offset()
        );
        sim.clear_faults();
        assert!(store.wait_durable(0, Duration::from_secs(10)));
        assert_eq!(store.durable(0).next_offset, Offset(N));
        assert_eq!(journal.end_offset(), Offset(N), "each record once");
    }

    #[test]
    fn a_full_disk_neither_stops_the_store_from_opening_nor_its_commits() {
        let sim = SimStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(sim.clone());
        let (store, _) = CursorStore::open(
            storage.clone(),
            Path::new("/c"),
            "d",
            ROUTING,
            2,
            positions(2),
            PACE,
        )
        .unwrap();
        store.submit(0, at(5));
        store.close();
        sim.inject(crate::storage::SimFault::NoSpaceAfter(0));
        let (store, got) = CursorStore::open(
            storage,
            Path::new("/c"),
            "d",
            ROUTING,
            2,
            positions(2),
            Duration::ZERO,
        )
        .expect("opens on a full disk");
        assert_eq!(got[0].next_offset, Offset(5));
        // Enough commits to fill a slot several times over.
        for i in 6..40_000u64 {
            store.submit(0, at(i));
            if i % 512 == 0 {
                assert!(store.wait_lead(0, Duration::from_secs(5)));
            }
        }
        assert!(store.wait_durable(0, Duration::from_secs(10)));
        assert!(store.failure().is_none(), "{:?}", store.failure());
        assert_eq!(store.durable(0).next_offset, Offset(39_999));
    }
}
