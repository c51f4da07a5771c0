//! State shared between the writer thread, readers and retention: the
//! segment list, the durable tail, the latched failure, the quarantine list,
//! reader positions, and the bounded cache of open sealed segments.
//!
//! Sealed segments are opened on demand: a log of thousands of segments
//! keeps at most `open_segments_max` of them open (plus the one each reader
//! is positioned on), so file descriptors stay bounded however old the log.
use super::segment::file_path;
use super::{LogConfig, Offset, ReaderPosition, WalError};
use crate::index::SegmentIndex;
use crate::storage::{Storage, StorageFile};
use parking_lot::{Condvar, Mutex, RwLock};
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

/// One segment of the log. The last segment is active (written by the
/// writer thread, always open); all others are sealed and immutable.
pub struct Segment {
    pub base: Offset,
    pub path: PathBuf,
    /// Wall clock at creation (age-based rolling of the active segment);
    /// 0 for a sealed segment found on disk (not needed).
    pub created_ms: u64,
    /// Set once the segment is sealed.
    pub sealed: OnceLock<SealedInfo>,
    handle: Mutex<Handle>,
}

enum Handle {
    /// The active segment's file, kept open.
    Active(Arc<SegmentFile>),
    /// A sealed segment's file while some reader or the cache holds it.
    Sealed(Weak<SegmentFile>),
}

/// An open segment: its file and its index.
pub struct SegmentFile {
    pub file: Box<dyn StorageFile>,
    /// Grows while the segment is active; fixed once sealed.
    pub index: RwLock<SegmentIndex>,
}

#[derive(Debug)]
pub struct SealedInfo {
    /// Length of the segment file (its records end exactly there).
    pub end: u64,
    /// Newest append time of any record; found when first needed.
    pub max_timestamp_ms: OnceLock<u64>,
}

impl SealedInfo {
    pub fn new(end: u64, max_timestamp_ms: Option<u64>) -> SealedInfo {
        let max = OnceLock::new();
        if let Some(ts) = max_timestamp_ms {
            let _ = max.set(ts);
        }
        SealedInfo {
            end,
            max_timestamp_ms: max,
        }
    }
}

impl Segment {
    /// The active segment, open.
    pub fn active(base: Offset, path: PathBuf, created_ms: u64, file: Arc<SegmentFile>) -> Self {
        Segment {
            base,
            path,
            created_ms,
            sealed: OnceLock::new(),
            handle: Mutex::new(Handle::Active(file)),
        }
    }

    /// A sealed segment, opened when first read.
    pub fn sealed(base: Offset, path: PathBuf, info: SealedInfo) -> Self {
        let seg = Segment {
            base,
            path,
            created_ms: 0,
            sealed: OnceLock::new(),
            handle: Mutex::new(Handle::Sealed(Weak::new())),
        };
        let _ = seg.sealed.set(info);
        seg
    }

    pub fn is_sealed(&self) -> bool {
        self.sealed.get().is_some()
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
    /// First intact offset after it, when known (`None`: up to the end of the segment).
    pub end_offset: Option<Offset>,
    pub reason: &'static str,
}

/// The least recently used open sealed segments, held open.
struct OpenCache {
    entries: VecDeque<(Offset, Arc<SegmentFile>)>,
    capacity: usize,
}

impl OpenCache {
    fn touch(&mut self, base: Offset) {
        if let Some(i) = self.entries.iter().position(|(b, _)| *b == base) {
            let e = self.entries.remove(i).expect("index from position");
            self.entries.push_back(e);
        }
    }

    fn insert(&mut self, base: Offset, file: Arc<SegmentFile>) {
        self.entries.retain(|(b, _)| *b != base);
        self.entries.push_back((base, file));
        while self.entries.len() > self.capacity {
            self.entries.pop_front();
        }
    }

    fn remove(&mut self, base: Offset) {
        self.entries.retain(|(b, _)| *b != base);
    }
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
    cache: Mutex<OpenCache>,
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
        let capacity = config.open_segments_max;
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
            cache: Mutex::new(OpenCache {
                entries: VecDeque::new(),
                capacity,
            }),
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
            tracing::error!(segment = %q.segment.display(), position = q.position, offset = q.offset.0, end_offset = q.end_offset.map(|o| o.0), reason = q.reason, "corrupt record quarantined");
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

    /// The open file of `seg`, opening a sealed one (and loading or
    /// rebuilding its index) if needed. `next_base` bounds its offsets.
    pub fn open_segment(
        &self,
        seg: &Segment,
        next_base: Option<Offset>,
    ) -> Result<Arc<SegmentFile>, WalError> {
        // Held while opening: one open per segment; other segments proceed.
        let mut h = seg.handle.lock();
        match &*h {
            Handle::Active(f) => return Ok(f.clone()),
            Handle::Sealed(w) => {
                if let Some(f) = w.upgrade() {
                    self.cache.lock().touch(seg.base);
                    return Ok(f);
                }
            }
        }
        let info = seg.sealed.get().expect("only sealed segments close");
        let file = Arc::new(super::open::open_sealed_file(
            self, seg, info.end, next_base,
        )?);
        *h = Handle::Sealed(Arc::downgrade(&file));
        self.cache.lock().insert(seg.base, file.clone());
        Ok(file)
    }

    /// Turns the active segment's handle into a sealed one, kept in the cache.
    pub fn seal_handle(&self, seg: &Segment) {
        let mut h = seg.handle.lock();
        if let Handle::Active(f) = &*h {
            let f = f.clone();
            *h = Handle::Sealed(Arc::downgrade(&f));
            self.cache.lock().insert(seg.base, f);
        }
    }

    /// Drops a deleted segment from the cache so its file closes.
    pub fn forget(&self, base: Offset) {
        self.cache.lock().remove(base);
    }

    /// Sealed segments held open by the cache (tests, status).
    pub fn open_sealed_count(&self) -> usize {
        self.cache.lock().entries.len()
    }

    /// The newest append time in a sealed segment, opening it if needed.
    pub fn max_timestamp(&self, seg: &Segment, next_base: Option<Offset>) -> Result<u64, WalError> {
        let info = seg.sealed.get().expect("sealed");
        if let Some(ts) = info.max_timestamp_ms.get() {
            return Ok(*ts);
        }
        let file = self.open_segment(seg, next_base)?;
        let ts = super::open::newest_timestamp(self, seg, &file, info.end);
        let _ = info.max_timestamp_ms.set(ts);
        Ok(ts)
    }
}
