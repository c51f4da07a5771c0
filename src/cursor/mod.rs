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
//! is delivered again after a crash. The file is compacted to one record per
//! lane (temp file, fsync, rename, fsync directory) when it grows.
//!
//! Architecture Invariant: a cursor moves only after the downstream's
//! positive ACK (or a durable dead-letter record); it never moves backwards
//! except by an explicit lane-count change, which restarts every lane at the
//! slowest one (duplicates, never gaps).
pub mod record;

pub use record::{ErrorClass, HeadState, HeadStatus, LaneCursor};

use crate::constants::{CURSOR_LEAD_MAX, CURSOR_RECORDS_BEFORE_COMPACTION};
use crate::storage::{self, Storage, StorageFile};
use crate::wal::{Offset, ReaderPosition};
use crossbeam_channel::{bounded, Receiver, Sender};
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
    NotACursorFile { path: PathBuf, reason: &'static str },
}

struct Update {
    lane: u16,
    seq: u64,
    cursor: LaneCursor,
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
}

/// The cursors of one destination.
pub struct CursorStore {
    inner: Arc<Inner>,
    tx: Option<Sender<Update>>,
    thread: Option<JoinHandle<()>>,
}

impl CursorStore {
    /// Opens (or creates) `<dir>/<destination>.cur` for `lanes` lanes and
    /// returns the committed cursor of each lane. `positions` (one per lane)
    /// are kept at each lane's durable next offset, protecting retention.
    pub fn open(
        storage: Arc<dyn Storage>,
        dir: &Path,
        destination: &str,
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
        storage.create_dir_all(dir).map_err(io)?;
        let cursors = load(storage.as_ref(), &path, lanes)?;
        // Start every open from a compacted file: bounded size, no torn tail.
        write_snapshot(storage.as_ref(), &path, &cursors, 0).map_err(io)?;
        let file = storage.open(&path, false).map_err(io)?;
        let end = file.len().map_err(io)?;
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
        });
        let (tx, rx) = bounded(4096);
        let committer = Committer {
            inner: inner.clone(),
            storage,
            file,
            end,
            records: u64::from(lanes),
            seq: 1,
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

    /// Queues `cursor` as the new state of `lane`; returns at once.
    pub fn submit(&self, lane: u16, cursor: LaneCursor) {
        let seq = {
            let mut lanes = self.inner.lanes.lock();
            let l = &mut lanes[usize::from(lane)];
            l.submitted += 1;
            l.submitted
        };
        if let Some(tx) = &self.tx {
            // The committer only stops when the store is closed.
            let _ = tx.send(Update { lane, seq, cursor });
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

struct Committer {
    inner: Arc<Inner>,
    storage: Arc<dyn Storage>,
    file: Box<dyn StorageFile>,
    end: u64,
    records: u64,
    seq: u64,
    buf: Vec<u8>,
    sync_interval: Duration,
}

impl Committer {
    fn run(mut self, rx: Receiver<Update>) {
        let lanes = self.inner.positions.len();
        let mut latest: Vec<Option<(u64, LaneCursor)>> = vec![None; lanes];
        let mut last_sync: Option<Instant> = None;
        while let Ok(first) = rx.recv() {
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
            let mut next = Some(first);
            while let Some(u) = next {
                latest[usize::from(u.lane)] = Some((u.seq, u.cursor));
                next = rx.try_recv().ok();
            }
            if self.inner.failure.lock().is_some() {
                latest.iter_mut().for_each(|l| *l = None);
                continue;
            }
            self.commit(&mut latest);
        }
    }

    fn commit(&mut self, latest: &mut [Option<(u64, LaneCursor)>]) {
        self.buf.clear();
        let mut n = 0;
        for (lane, l) in latest.iter().enumerate() {
            if let Some((_, c)) = l {
                record::encode(&mut self.buf, lane as u16, self.seq, c);
                self.seq += 1;
                n += 1;
            }
        }
        let written = storage::write_all_at(self.file.as_ref(), &self.buf, self.end)
            .and_then(|_| self.file.sync_data());
        if let Err(e) = written {
            let reason = format!("cursor file {}: {e}", self.inner.path.display());
            tracing::error!(%reason, "cursor commits stopped; deliveries pause until restart");
            *self.inner.failure.lock() = Some(reason);
            self.inner.became_durable.notify_all();
            return;
        }
        self.end += self.buf.len() as u64;
        self.records += n;
        self.publish(latest);
        if self.records >= CURSOR_RECORDS_BEFORE_COMPACTION {
            self.compact();
        }
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

    fn compact(&mut self) {
        let cursors: Vec<LaneCursor> = self
            .inner
            .lanes
            .lock()
            .iter()
            .map(|l| l.cursor.clone())
            .collect();
        let done = write_snapshot(self.storage.as_ref(), &self.inner.path, &cursors, self.seq)
            .and_then(|_| self.storage.open(&self.inner.path, false))
            .and_then(|f| Ok((f.len()?, f)));
        match done {
            Ok((len, file)) => {
                self.file = file;
                self.end = len;
                self.records = cursors.len() as u64;
            }
            Err(e) => {
                tracing::warn!(path = %self.inner.path.display(), error = %e, "cursor compaction failed; will retry")
            }
        }
    }
}

/// Reads the committed state of every lane; a torn tail ends the read.
fn load(storage: &dyn Storage, path: &Path, lanes: u16) -> Result<Vec<LaneCursor>, CursorError> {
    let fresh = vec![LaneCursor::default(); usize::from(lanes)];
    let Ok(file) = storage.open(path, false) else {
        return Ok(fresh);
    };
    let io = |source| CursorError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut map = vec![0u8; file.len().map_err(io)? as usize];
    storage::read_exact_at(file.as_ref(), &mut map, 0).map_err(io)?;
    let old_lanes = record::decode_header(&map).map_err(|reason| CursorError::NotACursorFile {
        path: path.to_path_buf(),
        reason,
    })?;
    let mut old = vec![LaneCursor::default(); usize::from(old_lanes)];
    let mut pos = record::HEADER_BYTES;
    while let Some((lane, _seq, cursor, len)) = record::decode(&map[pos..]) {
        if let Some(slot) = old.get_mut(usize::from(lane)) {
            *slot = cursor;
        }
        pos += len;
    }
    if pos < map.len() {
        tracing::warn!(path = %path.display(), bytes = map.len() - pos, "ignoring a torn cursor record at the end (its delivery is repeated)");
    }
    if old_lanes == lanes {
        return Ok(old);
    }
    let slowest = old
        .iter()
        .map(|c| c.head.as_ref().map_or(c.next_offset, |h| h.offset))
        .min()
        .unwrap_or_default();
    tracing::warn!(path = %path.display(), old_lanes, lanes, from = slowest.0, "lane count changed: every lane restarts at the slowest old lane (messages after it are delivered again)");
    Ok(vec![
        LaneCursor {
            next_offset: slowest,
            head: None
        };
        usize::from(lanes)
    ])
}

fn write_snapshot(
    storage: &dyn Storage,
    path: &Path,
    cursors: &[LaneCursor],
    seq: u64,
) -> std::io::Result<()> {
    let mut bytes = record::encode_header(cursors.len() as u16).to_vec();
    for (lane, c) in cursors.iter().enumerate() {
        record::encode(&mut bytes, lane as u16, seq, c);
    }
    storage::replace_file(storage, path, &bytes)
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

    #[test]
    fn committed_cursors_and_heads_survive_reopen_and_crash() {
        let sim = SimStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(sim.clone());
        let (store, start) = CursorStore::open(
            storage.clone(),
            Path::new("/c"),
            "ehr",
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
        let (store, _) =
            CursorStore::open(storage, Path::new("/c"), "d", 1, positions(1), interval).unwrap();
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

    #[test]
    fn lane_count_change_restarts_every_lane_at_the_slowest() {
        let sim = SimStorage::new();
        let storage: Arc<dyn Storage> = Arc::new(sim.clone());
        let (store, _) =
            CursorStore::open(storage.clone(), Path::new("/c"), "d", 2, positions(2), PACE)
                .unwrap();
        store.submit(
            0,
            LaneCursor {
                next_offset: Offset(50),
                head: None,
            },
        );
        store.submit(
            1,
            LaneCursor {
                next_offset: Offset(30),
                head: None,
            },
        );
        store.close();
        let (_s, got) =
            CursorStore::open(storage, Path::new("/c"), "d", 4, positions(4), PACE).unwrap();
        assert!(got.iter().all(|c| c.next_offset == Offset(30)));
    }
}
