//! The writer thread: group commit.
//!
//! It takes every waiting [`AppendRequest`] (up to the batch limits), encodes
//! them into one buffer, writes it with one positional write, issues one
//! `fdatasync`, publishes the new durable end, and only then completes each
//! request. A failed fsync is latched: every later append fails with
//! [`AppendError::Failed`], because after a failed fsync the kernel may have
//! dropped the dirty pages and a retried fsync would lie.
use super::checkpoint::Checkpoint;
use super::fence::Fence;
use super::files::{self, IndexFiles};
use super::open::Recovered;
use super::record::{self, RECORD_HEADER_BYTES};
use super::segment::{self, SEGMENT_HEADER_BYTES};
use super::shared::{Segment, SegmentFile, Shared};
use super::spare::Preparer;
use super::{
    now_ms, AppendDone, AppendError, AppendRequest, Appended, FsyncMode, Offset, WalError,
};
use crate::constants::{
    RECORD_META_BYTES_MAX, RECORD_PAYLOAD_BYTES_MAX, SPARE_BYTES_PER_FLUSH_LARGE,
    SPARE_BYTES_PER_FLUSH_MAX,
};
use crate::index::{IndexPoint, INDEX_HEADER_BYTES, OFFSET_ENTRY_BYTES, TIME_ENTRY_BYTES};
use crate::storage;
use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use parking_lot::Mutex;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Called by the writer after it sent a batch's completions (once per batch
/// per distinct notifier), e.g. to wake an event loop.
pub trait Notify: Send + Sync {
    fn notify(&self);
}

enum Msg {
    Append(AppendRequest),
    /// Requests a producer already has together: they go into one batch
    /// (one write, one fsync) unless the batch limits split them.
    Batch(Vec<AppendRequest>),
    Shutdown,
}

/// A cloneable producer handle. Submitting blocks when the writer's queue is
/// full: that is the backpressure that keeps memory bounded.
#[derive(Clone)]
pub struct Appender {
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    /// The writer's state, locked by the writer thread for each batch and
    /// by [`Appender::try_commit_inline`].
    core: Arc<Mutex<Writer>>,
    /// Requests submitted and not yet completed (replied to).
    pending: Arc<AtomicUsize>,
}

/// Why [`Appender::try_submit`] did not take a request; the request is handed back.
pub enum TrySubmitError {
    Full(AppendRequest),
    Closed(AppendRequest),
}

impl Appender {
    /// Queues a request, waiting while the queue is full. On a closed log
    /// the request is handed back.
    pub fn submit(&self, req: AppendRequest) -> Result<(), AppendRequest> {
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.tx.send(Msg::Append(req)).map_err(|e| {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            match e.0 {
                Msg::Append(r) => r,
                _ => unreachable!("only Append was sent"),
            }
        })
    }

    /// Queues several requests as one unit, so the writer commits them
    /// together; waits while the queue is full. Units hold at most
    /// `batch_records_max` requests (larger sets are split, in order), so a
    /// commit never exceeds its limit and memory stays bounded. On a closed
    /// log the requests not yet queued are handed back.
    pub fn submit_batch(&self, mut reqs: Vec<AppendRequest>) -> Result<(), Vec<AppendRequest>> {
        let max = self.shared.config.batch_records_max;
        while !reqs.is_empty() {
            let rest = if reqs.len() > max {
                reqs.split_off(max)
            } else {
                Vec::new()
            };
            let n = reqs.len();
            self.pending.fetch_add(n, Ordering::AcqRel);
            if let Err(e) = self.tx.send(Msg::Batch(reqs)) {
                self.pending.fetch_sub(n, Ordering::AcqRel);
                let Msg::Batch(mut back) = e.0 else {
                    unreachable!("only Batch was sent")
                };
                back.extend(rest);
                return Err(back);
            }
            reqs = rest;
        }
        Ok(())
    }

    /// Queues a request if there is room now.
    pub fn try_submit(&self, req: AppendRequest) -> Result<(), TrySubmitError> {
        self.pending.fetch_add(1, Ordering::AcqRel);
        self.tx.try_send(Msg::Append(req)).map_err(|e| {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            match e {
                TrySendError::Full(Msg::Append(r)) => TrySubmitError::Full(r),
                TrySendError::Disconnected(Msg::Append(r)) => TrySubmitError::Closed(r),
                _ => unreachable!("only Append was sent"),
            }
        })
    }

    /// Commits `req` on the calling thread (write, fdatasync, reply) when
    /// the writer is idle: nothing submitted is still pending and its state
    /// is not locked. A lone lockstep sender then costs no hand-off to the
    /// writer thread and back (two context switches). The reply goes to
    /// `req.reply` as usual, after every earlier request's reply, so
    /// completions keep submission order. Hands `req` back otherwise.
    pub fn try_commit_inline(&self, req: AppendRequest) -> Result<(), AppendRequest> {
        if self.pending.load(Ordering::Acquire) != 0 {
            return Err(req);
        }
        let Some(mut core) = self.core.try_lock() else {
            return Err(req);
        };
        // Re-checked under the lock: a request queued meanwhile by another
        // producer goes first, through the writer thread.
        if core.closed || self.pending.load(Ordering::Acquire) != 0 {
            return Err(req);
        }
        let mut batch = vec![req];
        core.commit(&mut batch);
        Ok(())
    }

    /// Finishes what inline commits left (index files, a due checkpoint);
    /// the caller runs it once its answers are on their way. Skipped when
    /// the writer thread holds the state: its own commit tidies up.
    pub fn tidy_after_inline(&self) {
        if let Some(mut core) = self.core.try_lock() {
            if !core.closed {
                core.tidy();
            }
        }
    }

    /// Appends one record and waits until it is durable (or failed).
    pub fn append(&self, meta: Vec<u8>, payload: Vec<u8>) -> Result<Appended, AppendError> {
        let (reply, done) = bounded(1);
        let req = AppendRequest {
            payload,
            meta,
            tag: 0,
            reply,
            notify: None,
        };
        self.submit(req).map_err(|_| AppendError::Closed)?;
        done.recv().map_err(|_| AppendError::Closed)?.result
    }

    /// The latched failure, if the log refuses writes.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure()
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub(crate) fn request_shutdown(&self) {
        let _ = self.tx.send(Msg::Shutdown);
    }
}

pub fn spawn(rec: Recovered) -> Result<(Appender, JoinHandle<()>), WalError> {
    // Nothing (not recovery, not tests) relies on appends from any thread
    // other than the log's producers and its writer thread; the core's
    // mutex is what lets a producer commit inline.
    let (tx, rx) = bounded(rec.shared.config.queue_depth_max);
    let shared = rec.shared.clone();
    let last_point = rec.active.file.index.read().last();
    let index_written = rec.active.file.index.read().len();
    let spare = if shared.config.prepare_segments {
        let p = Preparer::spawn(
            shared.storage.clone(),
            shared.dir.clone(),
            shared.config.segment_bytes,
        )
        .map_err(|e| WalError::io(&shared.dir, e))?;
        Some(p)
    } else {
        None
    };
    let writer = Writer {
        spare,
        closed: false,
        shared: rec.shared,
        seg: rec.active.segment,
        file: rec.active.file,
        index_files: rec.active.index_files,
        index_written,
        last_point,
        pos: rec.active.pos,
        next: rec.active.next,
        last_ts: rec.active.last_timestamp_ms,
        since_checkpoint: 0,
        segment_flushes: 0,
        buf: Vec::with_capacity(1 << 20),
        staged: Vec::new(),
        points: Vec::new(),
    };
    let core = Arc::new(Mutex::new(writer));
    let pending = Arc::new(AtomicUsize::new(0));
    let intake = Intake {
        rx,
        carried: None,
        shared: shared.clone(),
        core: core.clone(),
        pending: pending.clone(),
    };
    let dir = shared.dir.clone();
    let handle = std::thread::Builder::new()
        .name("orderly-wal".into())
        .spawn(move || intake.run())
        .map_err(|e| WalError::io(&dir, e))?;
    Ok((
        Appender {
            tx,
            shared,
            core,
            pending,
        },
        handle,
    ))
}

struct Staged {
    req: AppendRequest,
    appended: Appended,
}

/// The writer thread's side: the queue and how batches are gathered.
struct Intake {
    rx: Receiver<Msg>,
    /// A unit taken from the queue that did not fit the batch being built.
    carried: Option<Msg>,
    shared: Arc<Shared>,
    core: Arc<Mutex<Writer>>,
    pending: Arc<AtomicUsize>,
}

struct Writer {
    /// Keeps the next segment zero-filled; stopped when the writer ends.
    spare: Option<Preparer>,
    /// The writer thread has stopped: no more commits, inline or not.
    closed: bool,
    shared: Arc<Shared>,
    seg: Arc<Segment>,
    /// The active segment's open file and index.
    file: Arc<SegmentFile>,
    /// `None` once an index write failed (or recovery could not rewrite
    /// them): checkpoints stop until the next roll, appends go on.
    index_files: Option<IndexFiles>,
    /// Index entries already written to the index files.
    index_written: usize,
    last_point: Option<IndexPoint>,
    /// Durable end of the active segment.
    pos: u64,
    /// Offset of the next record to become durable.
    next: Offset,
    last_ts: u64,
    since_checkpoint: u64,
    /// fdatasyncs of the active segment, to judge whether a spare pays.
    segment_flushes: u64,
    buf: Vec<u8>,
    staged: Vec<Staged>,
    points: Vec<IndexPoint>,
}

impl Intake {
    fn run(mut self) {
        let mut batch = Vec::with_capacity(self.shared.config.batch_records_max);
        let mut open = true;
        while open {
            let first = match self.carried.take() {
                Some(m) => m,
                None => match self.rx.recv() {
                    Ok(m) => m,
                    Err(_) => break,
                },
            };
            open = self.gather(first, &mut batch);
            let n = batch.len();
            let mut core = self.core.lock();
            core.commit(&mut batch);
            self.pending.fetch_sub(n, Ordering::AcqRel);
            core.tidy();
        }
        let mut core = self.core.lock();
        core.write_index_entries();
        core.closed = true;
        while let Ok(msg) = self.rx.try_recv() {
            let reqs = match msg {
                Msg::Append(req) => vec![req],
                Msg::Batch(reqs) => reqs,
                Msg::Shutdown => Vec::new(),
            };
            let n = reqs.len();
            reqs.into_iter()
                .for_each(|r| reply(r, Err(AppendError::Closed)));
            self.pending.fetch_sub(n, Ordering::AcqRel);
        }
        if core.shared.failure().is_none() {
            core.checkpoint(true);
        }
        // Stops the spare preparer now, not when the last Appender goes.
        core.spare = None;
        tracing::debug!(dir = %self.shared.dir.display(), "writer stopped");
    }

    /// Collects a batch starting with `first`; false once shutdown was asked.
    fn gather(&mut self, first: Msg, batch: &mut Vec<AppendRequest>) -> bool {
        let (max_records, max_bytes) = (
            self.shared.config.batch_records_max,
            self.shared.config.batch_bytes_max,
        );
        let mut bytes = 0;
        let mut msg = first;
        loop {
            match msg {
                Msg::Append(req) => {
                    bytes += req.payload.len() + req.meta.len();
                    batch.push(req);
                }
                Msg::Batch(reqs) => {
                    bytes += reqs
                        .iter()
                        .map(|r| r.payload.len() + r.meta.len())
                        .sum::<usize>();
                    batch.extend(reqs);
                }
                Msg::Shutdown => return false,
            }
            if batch.len() >= max_records || bytes >= max_bytes {
                return true;
            }
            match self.rx.try_recv() {
                Ok(Msg::Batch(reqs)) if batch.len() + reqs.len() > max_records => {
                    // Kept whole for the next batch rather than split.
                    self.carried = Some(Msg::Batch(reqs));
                    return true;
                }
                Ok(m) => msg = m,
                Err(_) => return true,
            }
        }
    }
}

impl Writer {
    /// Appends a batch; every request in it is completed (durable or failed)
    /// before its notifiers are woken.
    fn commit(&mut self, batch: &mut Vec<AppendRequest>) {
        let notifiers = distinct_notifiers(batch);
        let now = now_ms();
        let mut failed: Option<AppendError> = self.shared.failure().map(AppendError::Failed);
        for req in batch.drain(..) {
            if let Some(e) = &failed {
                reply(req, Err(e.clone()));
                continue;
            }
            if let Err(e) = check_size(&req) {
                reply(req, Err(e));
                continue;
            }
            let len = (RECORD_HEADER_BYTES + req.meta.len() + req.payload.len()) as u64;
            if self.must_roll(len, now) {
                if let Err(e) = self.flush().and_then(|_| self.roll(now)) {
                    reply(req, Err(e.clone()));
                    failed = Some(e);
                    continue;
                }
            }
            self.stage(req, now);
        }
        let _ = self.flush();
        notifiers.iter().for_each(|n| n.notify());
    }

    fn must_roll(&self, len: u64, now: u64) -> bool {
        let end = self.pos + self.buf.len() as u64;
        let has_records = end > SEGMENT_HEADER_BYTES as u64;
        let full = end + len > self.shared.config.segment_bytes;
        let old = now.saturating_sub(self.seg.created_ms) >= self.shared.config.segment_age_ms;
        has_records && (full || old)
    }

    fn stage(&mut self, req: AppendRequest, now: u64) {
        let ts = now.max(
            self.staged
                .last()
                .map_or(self.last_ts, |s| s.appended.timestamp_ms),
        );
        let offset = Offset(self.next.0 + self.staged.len() as u64);
        let position = self.pos + self.buf.len() as u64;
        let last_point = self.points.last().copied().or(self.last_point);
        if segment::wants_index_point(last_point, position) {
            let p = IndexPoint {
                relative_offset: u32::try_from(offset.0 - self.seg.base.0)
                    .expect("segment holds < 2^32 records"),
                position: u32::try_from(position).expect("segment smaller than 4 GiB"),
                timestamp_ms: ts,
            };
            self.points.push(p);
        }
        record::encode(&mut self.buf, offset, ts, &req.meta, &req.payload);
        self.staged.push(Staged {
            req,
            appended: Appended {
                offset,
                timestamp_ms: ts,
            },
        });
    }

    /// Writes and syncs the staged records, then completes them.
    fn flush(&mut self) -> Result<(), AppendError> {
        if self.staged.is_empty() {
            return Ok(());
        }
        let written =
            storage::write_all_at(self.file.file.as_ref(), &self.buf, self.pos).map_err(classify);
        let result = written.and_then(|_| self.sync());
        self.segment_flushes += 1;
        if let Err(e) = result {
            self.undo_failed_write(&e);
            for s in self.staged.drain(..) {
                reply(s.req, Err(e.clone()));
            }
            self.buf.clear();
            self.points.clear();
            return Err(e);
        }
        self.publish();
        Ok(())
    }

    fn sync(&self) -> Result<(), AppendError> {
        if self.shared.config.fsync == FsyncMode::Never {
            return Ok(());
        }
        self.file.file.sync_data().map_err(|e| {
            let reason = format!("fdatasync of {} failed: {e}", self.seg.path.display());
            self.shared.latch_failure(reason.clone());
            self.fence();
            AppendError::Failed(reason)
        })
    }

    /// After a failed fsync the written batch stays readable in the page
    /// cache but may never reach the disk. Cut it from the file (which drops
    /// the cached pages) and record the durable end in a fence, so that no
    /// restart (the cache survives a process restart) and no power loss
    /// recovery ever serves it.
    fn fence(&self) {
        let fence = Fence {
            segment_base: self.seg.base,
            position: self.pos,
        };
        let stored = fence.store(self.shared.storage.as_ref(), &self.shared.dir);
        let cut = self.file.file.set_len(self.pos);
        if let Err(e) = stored.and(cut) {
            tracing::error!(dir = %self.shared.dir.display(), error = %e, position = self.pos, "could not record the durable end after the failed fsync; recovery will keep whatever reads back valid after it");
        }
    }

    /// After a failed write (not fsync), cut the file back to the durable end
    /// so no partial batch can be mistaken for records after a crash.
    fn undo_failed_write(&mut self, e: &AppendError) {
        if matches!(e, AppendError::Failed(_)) {
            return;
        }
        tracing::warn!(segment = %self.seg.path.display(), error = %e, "append batch failed; truncating to the durable end");
        if let Err(te) = self.file.file.set_len(self.pos) {
            self.shared.latch_failure(format!(
                "could not truncate {} after a failed write: {te}",
                self.seg.path.display()
            ));
        }
    }

    /// Makes the synced batch visible: index, tail, completions, notifications.
    fn publish(&mut self) {
        let last = self
            .staged
            .last()
            .expect("flush checked non-empty")
            .appended;
        self.pos += self.buf.len() as u64;
        self.next = Offset(last.offset.0 + 1);
        self.last_ts = last.timestamp_ms;
        self.since_checkpoint += self.buf.len() as u64;
        self.buf.clear();
        if !self.points.is_empty() {
            let mut idx = self.file.index.write();
            self.points.drain(..).for_each(|p| idx.push(p));
            self.last_point = idx.last();
        }
        let (next, pos, ts) = (self.next, self.pos, self.last_ts);
        self.shared.publish(|t| {
            t.next_offset = next;
            t.active_end = pos;
            t.last_timestamp_ms = ts;
        });
        for s in self.staged.drain(..) {
            reply(s.req, Ok(s.appended));
        }
    }

    /// The bookkeeping a commit leaves for after its replies and wake-ups:
    /// new index entries written to the index files, and a checkpoint when
    /// one is due. Readers use the in-memory index, and the files are only
    /// a recovery shortcut made durable by the checkpoint, so the
    /// acknowledgements need not wait for these writes.
    fn tidy(&mut self) {
        self.write_index_entries();
        if self.since_checkpoint >= self.shared.config.checkpoint_interval_bytes {
            self.checkpoint(false);
        }
    }

    /// Appends new index entries to the active index files. They are made
    /// durable by the next checkpoint; a failure only means recovery will
    /// rescan more, so it disables checkpoints instead of failing appends.
    fn write_index_entries(&mut self) {
        let idx = self.file.index.read();
        let Some(files) = &self.index_files else {
            return;
        };
        if idx.len() == self.index_written {
            return;
        }
        let from = self.index_written;
        let o = &idx.offset_entry_bytes(idx.len())[from * OFFSET_ENTRY_BYTES..];
        let t = &idx.time_entry_bytes(idx.len())[from * TIME_ENTRY_BYTES..];
        let at = |n: usize| (INDEX_HEADER_BYTES + from * n) as u64;
        let res = storage::write_all_at(files.offsets.as_ref(), o, at(OFFSET_ENTRY_BYTES))
            .and_then(|_| storage::write_all_at(files.times.as_ref(), t, at(TIME_ENTRY_BYTES)));
        let written = idx.len();
        drop(idx);
        match res {
            Ok(()) => self.index_written = written,
            Err(e) => {
                tracing::warn!(error = %e, segment = %self.seg.path.display(), "index write failed; recovery will rebuild from the log");
                self.index_files = None;
            }
        }
    }

    /// Records how far the active segment is durable and indexed; `clean`
    /// at close, when nothing more will be written.
    fn checkpoint(&mut self, clean: bool) {
        let Some(files) = &self.index_files else {
            return;
        };
        let storage = self.shared.storage.as_ref();
        // With fsync = "never" the data itself was not synced: a checkpoint
        // must not claim it durable without syncing it first.
        let data_synced = match self.shared.config.fsync {
            FsyncMode::Always => Ok(()),
            FsyncMode::Never => self.file.file.sync_data(),
        };
        let synced = data_synced
            .and_then(|_| files.offsets.sync_data())
            .and_then(|_| files.times.sync_data());
        let ckpt = Checkpoint {
            segment_base: self.seg.base,
            position: self.pos,
            next_offset: self.next,
            last_timestamp_ms: self.last_ts,
            index_entries: self.index_written as u32,
            clean,
        };
        match synced.and_then(|_| ckpt.store(storage, &self.shared.dir)) {
            Ok(()) => self.since_checkpoint = 0,
            Err(e) => {
                tracing::warn!(error = %e, dir = %self.shared.dir.display(), "checkpoint not written; recovery will scan further")
            }
        }
    }

    /// Seals the active segment and starts a new one at the next offset.
    /// The new segment is created first: if that fails (disk full) nothing
    /// changed and the append fails cleanly.
    fn roll(&mut self, now: u64) -> Result<(), AppendError> {
        debug_assert!(self.staged.is_empty() && self.buf.is_empty());
        let storage = self.shared.storage.as_ref();
        let dir = self.shared.dir.clone();
        let (seg, file, index_files) =
            files::create_segment(storage, &dir, self.next, now, &self.shared.config).map_err(
                |e| match e {
                    WalError::Io { source, .. } => classify(source),
                    other => AppendError::Io(other.to_string()),
                },
            )?;
        let sealed = files::seal(storage, &dir, &self.seg, &self.file, self.pos, self.last_ts);
        if let Err(e) = sealed {
            let reason = format!("sealing {} failed: {e}", self.seg.path.display());
            self.shared.latch_failure(reason.clone());
            return Err(AppendError::Failed(reason));
        }
        self.shared.seal_handle(&self.seg);
        self.shared.segments.write().push(seg.clone());
        tracing::info!(sealed = %self.seg.path.display(), next = %seg.path.display(), "segment rolled");
        if let Some(p) = &self.spare {
            let bytes = self.pos - SEGMENT_HEADER_BYTES as u64;
            if spare_pays(bytes, self.segment_flushes) {
                p.kick();
            } else {
                tracing::debug!(
                    bytes,
                    flushes = self.segment_flushes,
                    "mid-size flushes: no spare segment prepared for the next roll"
                );
            }
        }
        self.segment_flushes = 0;
        self.seg = seg;
        self.file = file;
        self.index_files = Some(index_files);
        self.index_written = 0;
        self.last_point = None;
        self.pos = SEGMENT_HEADER_BYTES as u64;
        let pos = self.pos;
        self.shared.publish(|t| t.active_end = pos);
        self.checkpoint(false);
        Ok(())
    }
}

/// Whether zero-filling the next segment is worth its second write of every
/// byte: only for small or very large flushes (see
/// [`SPARE_BYTES_PER_FLUSH_MAX`]). After a restart the segment's earlier
/// flushes are not counted; at worst one roll goes without a spare.
fn spare_pays(segment_bytes_written: u64, flushes: u64) -> bool {
    let per_flush = segment_bytes_written / flushes.max(1);
    !(SPARE_BYTES_PER_FLUSH_MAX..SPARE_BYTES_PER_FLUSH_LARGE).contains(&per_flush)
}

fn distinct_notifiers(batch: &[AppendRequest]) -> Vec<Arc<dyn Notify>> {
    let mut out: Vec<Arc<dyn Notify>> = Vec::new();
    for n in batch.iter().filter_map(|r| r.notify.as_ref()) {
        if !out
            .iter()
            .any(|m| std::ptr::addr_eq(Arc::as_ptr(m), Arc::as_ptr(n)))
        {
            out.push(n.clone());
        }
    }
    out
}

fn check_size(req: &AppendRequest) -> Result<(), AppendError> {
    if req.payload.len() > RECORD_PAYLOAD_BYTES_MAX {
        return Err(AppendError::TooLarge {
            bytes: req.payload.len(),
            limit: RECORD_PAYLOAD_BYTES_MAX,
        });
    }
    if req.meta.len() > RECORD_META_BYTES_MAX {
        return Err(AppendError::TooLarge {
            bytes: req.meta.len(),
            limit: RECORD_META_BYTES_MAX,
        });
    }
    Ok(())
}

fn classify(e: io::Error) -> AppendError {
    if e.raw_os_error() == Some(libc::ENOSPC) || e.kind() == io::ErrorKind::StorageFull {
        AppendError::StorageFull(e.to_string())
    } else {
        AppendError::Io(e.to_string())
    }
}

fn reply(req: AppendRequest, result: Result<Appended, AppendError>) {
    let AppendRequest {
        payload,
        tag,
        reply,
        ..
    } = req;
    // A producer that went away no longer needs its answer.
    let _ = reply.send(AppendDone {
        tag,
        result,
        payload,
    });
}
