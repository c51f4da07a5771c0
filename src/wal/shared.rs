//! State shared between the writer thread, readers and retention: the
//! segment list, the durable tail, the latched failure and reader positions.
use super::segment::file_path;
use super::{LogConfig, Offset, ReaderPosition};
use crate::index::SegmentIndex;
use crate::storage::{Mapping, Storage, StorageFile};
use parking_lot::{Condvar, Mutex, RwLock};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

/// One segment file with its index. The last segment of a log is active
/// (written by the writer thread); all others are sealed and immutable.
pub struct Segment {
    pub base: Offset,
    pub created_ms: u64,
    pub path: PathBuf,
    pub file: Box<dyn StorageFile>,
    /// A read-only view of the file and how many of its leading bytes are
    /// valid (all of them for a coherent mmap; for a copy, the durable end
    /// when it was taken). Remapped by the reader that needs more.
    pub map: RwLock<(Arc<Mapping>, u64)>,
    pub index: RwLock<SegmentIndex>,
    pub sealed: OnceLock<SealedInfo>,
}

#[derive(Debug, Clone, Copy)]
pub struct SealedInfo {
    /// Length of the segment file.
    pub end: u64,
    /// Newest append time of any record in the segment.
    pub max_timestamp_ms: u64,
}

impl Segment {
    /// A mapping whose first `len` bytes are valid, remapping if needed.
    /// Returns the mapping and how many bytes of it are valid.
    pub fn map_covering(&self, len: u64) -> std::io::Result<(Arc<Mapping>, u64)> {
        let current = self.map.read().clone();
        if current.1 >= len {
            return Ok(current);
        }
        let file_len = self.file.len()?.max(len);
        let fresh = self.file.map(file_len)?;
        let valid = if fresh.is_coherent() {
            fresh.len() as u64
        } else {
            len
        };
        let state = (Arc::new(fresh), valid);
        *self.map.write() = state.clone();
        Ok(state)
    }

    /// A sealed (immutable) segment, opened from disk.
    #[allow(clippy::too_many_arguments)]
    pub fn sealed(
        base: Offset,
        created_ms: u64,
        path: PathBuf,
        file: Box<dyn StorageFile>,
        map: Mapping,
        index: SegmentIndex,
        info: SealedInfo,
    ) -> Arc<Segment> {
        let seg = Segment {
            base,
            created_ms,
            path,
            file,
            map: Self::map_state(map, info.end),
            index: RwLock::new(index),
            sealed: OnceLock::new(),
        };
        let _ = seg.sealed.set(info);
        Arc::new(seg)
    }

    /// Initial map state for a mapping of which `valid` leading bytes are durable.
    pub fn map_state(map: Mapping, valid: u64) -> RwLock<(Arc<Mapping>, u64)> {
        let valid = if map.is_coherent() {
            map.len() as u64
        } else {
            valid.min(map.len() as u64)
        };
        RwLock::new((Arc::new(map), valid))
    }
}

/// What readers may see: everything before `next_offset`.
#[derive(Debug, Clone, Copy)]
pub struct Tail {
    pub start_offset: Offset,
    pub next_offset: Offset,
    /// Durable end position within the active segment.
    pub active_end: u64,
    pub last_timestamp_ms: u64,
}

/// A range of offsets that failed validation and is never served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedRange {
    pub segment: PathBuf,
    pub position: u64,
    /// First offset affected.
    pub offset: Offset,
    pub reason: &'static str,
}

pub struct Shared {
    pub dir: PathBuf,
    pub storage: Arc<dyn Storage>,
    pub config: LogConfig,
    /// Sorted by base offset; the last one is active. Never empty.
    pub segments: RwLock<Vec<Arc<Segment>>>,
    tail: Mutex<Tail>,
    tail_grew: Condvar,
    failure: Mutex<Option<String>>,
    quarantine: Mutex<Vec<QuarantinedRange>>,
    readers: Mutex<Vec<Weak<(String, AtomicU64)>>>,
}

impl Shared {
    pub fn new(
        dir: PathBuf,
        storage: Arc<dyn Storage>,
        config: LogConfig,
        segments: Vec<Arc<Segment>>,
        tail: Tail,
    ) -> Self {
        assert!(!segments.is_empty(), "a log always has an active segment");
        Self {
            dir,
            storage,
            config,
            segments: RwLock::new(segments),
            tail: Mutex::new(tail),
            tail_grew: Condvar::new(),
            failure: Mutex::new(None),
            quarantine: Mutex::new(Vec::new()),
            readers: Mutex::new(Vec::new()),
        }
    }

    pub fn tail(&self) -> Tail {
        *self.tail.lock()
    }

    /// Publishes a durable tail and wakes waiting readers.
    pub fn publish(&self, f: impl FnOnce(&mut Tail)) {
        let mut t = self.tail.lock();
        let before = t.next_offset;
        f(&mut t);
        assert!(
            t.next_offset >= before,
            "the durable end never moves backwards"
        );
        self.tail_grew.notify_all();
    }

    pub fn wait_for(&self, offset: Offset, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut t = self.tail.lock();
        while t.next_offset <= offset {
            if self.tail_grew.wait_until(&mut t, deadline).timed_out() {
                return t.next_offset > offset;
            }
        }
        true
    }

    pub fn latch_failure(&self, reason: String) {
        let mut f = self.failure.lock();
        if f.is_none() {
            tracing::error!(dir = %self.dir.display(), %reason, "log refuses further appends");
            *f = Some(reason);
        }
    }

    pub fn failure(&self) -> Option<String> {
        self.failure.lock().clone()
    }

    pub fn quarantine(&self, q: QuarantinedRange) {
        let mut list = self.quarantine.lock();
        if !list.contains(&q) {
            tracing::error!(segment = %q.segment.display(), position = q.position, offset = q.offset.0, reason = q.reason, "corrupt record quarantined");
            list.push(q);
        }
    }

    pub fn quarantined(&self) -> Vec<QuarantinedRange> {
        self.quarantine.lock().clone()
    }

    pub fn register_reader(&self, name: &str, position: Offset) -> ReaderPosition {
        let slot = Arc::new((name.to_string(), AtomicU64::new(position.0)));
        let mut readers = self.readers.lock();
        readers.retain(|w| w.strong_count() > 0);
        readers.push(Arc::downgrade(&slot));
        ReaderPosition::new(slot)
    }

    /// The smallest position of any live registered reader.
    pub fn min_reader_position(&self) -> Option<Offset> {
        let readers = self.readers.lock();
        readers
            .iter()
            .filter_map(|w| w.upgrade())
            .map(|s| Offset(s.1.load(std::sync::atomic::Ordering::Acquire)))
            .min()
    }

    pub fn segment_path(&self, base: Offset, ext: &str) -> PathBuf {
        file_path(&self.dir, base, ext)
    }

    /// The segment holding `offset` and the base of the one after it.
    pub fn locate(&self, offset: Offset) -> Option<(Arc<Segment>, Option<Offset>)> {
        let segs = self.segments.read();
        let i = segs.partition_point(|s| s.base <= offset).checked_sub(1)?;
        Some((segs[i].clone(), segs.get(i + 1).map(|s| s.base)))
    }
}
