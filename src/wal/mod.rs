//! The write-ahead log: one append-only, segmented log per queue.
//!
//! A [`Log`] lives in `<data_dir>/queues/<queue>/`. One writer thread per log
//! takes [`AppendRequest`]s from a bounded channel, writes every waiting
//! request (group commit), issues one `fdatasync`, and only then completes
//! each request with its [`Offset`]. Readers see only records whose flush
//! returned. Recovery on open trusts only what checks out (see `open`).
//!
//! Architecture Invariant: an append is reported durable only after the
//! `sync_data` covering its bytes returned `Ok`; after a failed `sync_data`
//! the log refuses every later append until reopened.
mod checkpoint;
mod fence;
mod files;
pub mod inspect;
pub mod meta;
mod open;
mod reader;
pub mod record;
mod retention;
pub mod segment;
mod shared;
mod source;
mod spare;
pub mod verify;
mod writer;

pub use reader::{LogReader, OwnedRecord};
pub use retention::{ReaderPosition, RetentionPolicy};
pub use shared::QuarantinedRange;
pub use writer::{Appender, Notify, TrySubmitError};

use crate::constants::*;
use crate::storage::{FsStorage, Storage};
use crossbeam_channel::Sender;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Whether a broker may be appending to a log an offline tool reads. With
/// `Running`, the active segment past its checkpoint may hold a batch in the
/// middle of being written (a reader can see a later page of it before an
/// earlier one): damage there is reported as possibly in flight, not as
/// corruption. `orderly verify` and `inspect` tell from the data
/// directory's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    Stopped,
    Running,
}

/// Position of a record in its queue's log: dense, starting at 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub u64);

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// When the writer calls `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncMode {
    /// Before completing every batch. The only mode that keeps the ACK promise.
    #[default]
    Always,
    /// Never. UNSAFE: acknowledged records can vanish on power loss. Benchmarks only.
    Never,
}

/// Tunables of one log. `Default` is the production configuration.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub segment_bytes: u64,
    pub segment_age_ms: u64,
    pub preallocate: bool,
    /// Keep a zero-filled spare segment ready (see `spare.rs`): fsyncs into
    /// written blocks skip the journal. Costs one segment of disk space.
    pub prepare_segments: bool,
    pub fsync: FsyncMode,
    pub batch_records_max: usize,
    pub batch_bytes_max: usize,
    pub queue_depth_max: usize,
    pub checkpoint_interval_bytes: u64,
    /// Sealed segments kept open (file descriptors) for readers; more are
    /// opened on demand and the least recently used closed.
    pub open_segments_max: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            segment_bytes: SEGMENT_BYTES_DEFAULT,
            segment_age_ms: SEGMENT_AGE_MS_DEFAULT,
            preallocate: true,
            prepare_segments: true,
            fsync: FsyncMode::Always,
            batch_records_max: COMMIT_BATCH_RECORDS_MAX,
            batch_bytes_max: COMMIT_BATCH_BYTES_MAX,
            queue_depth_max: APPEND_QUEUE_DEPTH_MAX,
            checkpoint_interval_bytes: CHECKPOINT_INTERVAL_BYTES,
            open_segments_max: OPEN_SEGMENTS_MAX_DEFAULT,
        }
    }
}

impl LogConfig {
    /// Checks ranges; the message names the setting.
    pub fn validate(&self) -> Result<(), String> {
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return Err(format!(
                "segment_bytes must be between {SEGMENT_BYTES_MIN} and {SEGMENT_BYTES_MAX}"
            ));
        }
        if self.batch_records_max == 0 || self.batch_records_max > COMMIT_BATCH_RECORDS_MAX {
            return Err(format!(
                "batch_records_max must be between 1 and {COMMIT_BATCH_RECORDS_MAX}"
            ));
        }
        if self.queue_depth_max == 0 || self.queue_depth_max > APPEND_QUEUE_DEPTH_MAX {
            return Err(format!(
                "queue_depth_max must be between 1 and {APPEND_QUEUE_DEPTH_MAX}"
            ));
        }
        if !(1..=OPEN_SEGMENTS_MAX).contains(&self.open_segments_max) {
            return Err(format!(
                "open_segments_max must be between 1 and {OPEN_SEGMENTS_MAX}"
            ));
        }
        if self.segment_age_ms == 0
            || self.batch_bytes_max == 0
            || self.checkpoint_interval_bytes == 0
        {
            return Err(
                "segment_age_ms, batch_bytes_max and checkpoint_interval_bytes must be positive"
                    .into(),
            );
        }
        Ok(())
    }
}

/// Errors of opening, reading and maintaining a log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("invalid log configuration: {0}")]
    Config(String),
    #[error("offset {offset} is not yet written (log ends before {end})")]
    NotYetWritten { offset: Offset, end: Offset },
    #[error("offset {offset} was deleted by retention (log now starts at {start})")]
    Deleted { offset: Offset, start: Offset },
    #[error("corrupt data in segment {segment} at byte {position} while looking for offset {offset}: {reason}; the record is quarantined and will not be served")]
    Corrupt {
        segment: PathBuf,
        position: u64,
        offset: Offset,
        reason: &'static str,
    },
    #[error("read error in segment {segment} at byte {position} while reading offset {offset}: the disk could not return these bytes (check `dmesg`); the record is quarantined and will not be served")]
    Unreadable {
        segment: PathBuf,
        position: u64,
        offset: Offset,
    },
    #[error("{path}: {reason}")]
    Damaged { path: PathBuf, reason: String },
    #[error("the log at {0} is closed")]
    Closed(PathBuf),
}

impl WalError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        WalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Why an append was not made durable. Cloneable: one failure completes a whole batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AppendError {
    #[error("storage full: {0}; free disk space and appends resume")]
    StorageFull(String),
    #[error(
        "log refuses writes after a failed fsync: {0}; restart so recovery re-validates the log"
    )]
    Failed(String),
    #[error("write failed: {0}")]
    Io(String),
    #[error("record too large: {bytes} bytes, limit {limit}")]
    TooLarge { bytes: usize, limit: usize },
    #[error("log is closed")]
    Closed,
}

/// Where a scan of records appended at or after `timestamp_ms` starts:
/// the first such offset (the log's end if every record is older; its
/// start if the time index cannot be read).
pub fn first_at_or_after(log: &Log, timestamp_ms: u64) -> Offset {
    match log.offset_for_time(timestamp_ms) {
        Ok(Some(o)) => o.max(log.start_offset()),
        Ok(None) => log.end_offset(),
        Err(_) => log.start_offset(),
    }
}

/// How a [`Log::scan`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanEnd {
    /// Damaged records passed over.
    pub damaged: u64,
    /// False when it stopped at its limit with records left.
    pub complete: bool,
}

/// Where an appended record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub offset: Offset,
    pub timestamp_ms: u64,
}

/// One record to append. `tag` is echoed in the completion so a producer
/// can match completions to its own requests.
pub struct AppendRequest {
    pub payload: Vec<u8>,
    /// A metadata area built with [`meta::MetaBuilder`].
    pub meta: Vec<u8>,
    pub tag: u64,
    pub reply: Sender<AppendDone>,
    /// Woken once per batch after its completions were sent (e.g. a mio waker).
    pub notify: Option<Arc<dyn Notify>>,
}

/// The completion of one [`AppendRequest`]. The payload buffer is handed
/// back so producers can reuse it.
pub struct AppendDone {
    pub tag: u64,
    pub result: Result<Appended, AppendError>,
    pub payload: Vec<u8>,
}

/// An open log with its writer thread.
pub struct Log {
    shared: Arc<shared::Shared>,
    appender: Appender,
    writer: Option<JoinHandle<()>>,
}

impl Log {
    /// Opens (recovering) or creates the log in `dir` on the real file system.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Log, WalError> {
        Self::open_with(Arc::new(FsStorage), dir.as_ref(), config)
    }

    /// Opens the log on any [`Storage`] (tests inject faults this way).
    pub fn open_with(
        storage: Arc<dyn Storage>,
        dir: &Path,
        config: LogConfig,
    ) -> Result<Log, WalError> {
        config.validate().map_err(WalError::Config)?;
        let recovered = open::recover(storage, dir, config)?;
        let (appender, writer) = writer::spawn(recovered)?;
        let shared = appender.shared().clone();
        Ok(Log {
            shared,
            appender,
            writer: Some(writer),
        })
    }

    /// A cloneable handle producers use to submit appends.
    pub fn appender(&self) -> Appender {
        self.appender.clone()
    }

    /// Appends one record and waits until it is durable.
    pub fn append(&self, meta: &[u8], payload: &[u8]) -> Result<Appended, AppendError> {
        self.appender.append(meta.to_vec(), payload.to_vec())
    }

    /// First offset still stored (everything before it was deleted by retention).
    pub fn start_offset(&self) -> Offset {
        self.shared.tail().start_offset
    }

    /// One past the last durable offset.
    pub fn end_offset(&self) -> Offset {
        self.shared.tail().next_offset
    }

    /// Waits until `offset` is durable or `timeout` passes; true if durable.
    /// Tailing readers use this instead of polling.
    pub fn wait_for(&self, offset: Offset, timeout: std::time::Duration) -> bool {
        self.shared.wait_for(offset, timeout)
    }

    /// The error that made the log refuse writes, if any.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure()
    }

    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Ranges found corrupt so far (on open, on read, or by verify).
    pub fn quarantined(&self) -> Vec<QuarantinedRange> {
        self.shared.quarantined()
    }

    /// What is left of a damaged record (its payload if its header still
    /// parses, else its raw bytes; empty if nothing can be attributed to it)
    /// for a dead-letter copy; `Ok(None)` if the record is intact.
    pub fn damaged_bytes(&self, offset: Offset) -> Result<Option<Vec<u8>>, WalError> {
        reader::damaged_bytes(&self.shared, offset)
    }

    /// Sealed segments currently held open by the segment cache.
    pub fn open_sealed_segments(&self) -> usize {
        self.shared.open_sealed_count()
    }

    /// Reads one durable record (a copy).
    pub fn read(&self, offset: Offset) -> Result<OwnedRecord, WalError> {
        let mut r = self.reader(offset);
        match r.next()? {
            Some(rec) => Ok(OwnedRecord::from(rec)),
            None => Err(WalError::NotYetWritten {
                offset,
                end: self.end_offset(),
            }),
        }
    }

    /// A reader positioned at `from`, yielding durable records in order.
    pub fn reader(&self, from: Offset) -> LogReader {
        LogReader::new(self.shared.clone(), from)
    }

    /// Calls `f` with each readable record from `from` on, in log order,
    /// until `f` returns false, the end is reached, or `limit` records were
    /// visited. Damaged records are passed over (the reader resyncs after
    /// them) and counted: one scan interface for every search over a log.
    pub fn scan(
        &self,
        from: Offset,
        limit: u64,
        mut f: impl FnMut(record::RecordView<'_>) -> bool,
    ) -> ScanEnd {
        let end = self.end_offset();
        let mut reader = self.reader(from.max(self.start_offset()));
        let mut out = ScanEnd {
            damaged: 0,
            complete: true,
        };
        for _ in 0..limit {
            match reader.next() {
                Ok(Some(r)) => {
                    if !f(r) {
                        return out;
                    }
                }
                Ok(None) => return out,
                // Retention removed the segment under the scan: what is
                // gone is not damage; go on from the new start.
                Err(WalError::Deleted { offset, start }) if start > offset => {
                    reader.seek(start);
                }
                Err(_) => {
                    // The failed offset (position() has not moved past it).
                    let at = reader.position();
                    let next = reader
                        .damage_end()
                        .unwrap_or(Offset(at.0 + 1))
                        .min(end.max(Offset(at.0 + 1)));
                    out.damaged += next.0 - at.0;
                    if next >= end {
                        return out;
                    }
                    reader.seek(next);
                }
            }
        }
        out.complete = reader.position() >= end;
        out
    }

    /// The first offset whose append time is at or after `timestamp_ms`,
    /// found through the time indexes; `None` if every record is older.
    pub fn offset_for_time(&self, timestamp_ms: u64) -> Result<Option<Offset>, WalError> {
        reader::offset_for_time(&self.shared, timestamp_ms)
    }

    /// Registers a reader whose position protects segments from retention.
    pub fn register_reader(&self, name: &str, position: Offset) -> ReaderPosition {
        self.shared.register_reader(name, position)
    }

    /// Deletes whole sealed segments that every registered reader has passed
    /// and that `policy` allows to go. Returns the deleted segments' bases.
    pub fn enforce_retention(
        &self,
        policy: &RetentionPolicy,
        now_ms: u64,
    ) -> Result<Vec<Offset>, WalError> {
        retention::enforce(&self.shared, policy, now_ms)
    }

    /// Stops the writer after it completed every request sent before this
    /// call, and writes a final checkpoint so the next open scans nothing.
    pub fn close(mut self) -> Result<(), WalError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), WalError> {
        let Some(handle) = self.writer.take() else {
            return Ok(());
        };
        self.appender.request_shutdown();
        handle
            .join()
            .map_err(|_| WalError::Closed(self.shared.dir.clone()))
    }
}

impl Drop for Log {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
