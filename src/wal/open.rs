//! Recovery: opening a log and deciding what on disk can be trusted.
//!
//! The recovery table lives once, in docs/FORMAT.md; each of its rows names
//! the function here that implements it, and `tests/wal_recovery.rs` builds
//! each row's on-disk state and checks the documented outcome.
//!
//! Principles: a record that checks out is never discarded; damage costs
//! only the damaged records (they become quarantined holes, reported, never
//! served, their offsets never reused); only bytes that cannot have been
//! acknowledged are cut (a torn last batch with nothing valid after it, or
//! what follows a failed fsync); nothing is deleted without a copy; and
//! recovered bytes are synced before anything is published or checkpointed.
use super::checkpoint::Checkpoint;
use super::fence::Fence;
use super::files::{self, IndexFiles};
use super::segment::{
    self, file_path, parse_segment_name, SegmentBytes, SegmentHeader, Stop, SEGMENT_HEADER_BYTES,
};
use super::shared::{QuarantinedRange, SealedInfo, Segment, SegmentFile, Shared, Tail};
use super::source::{Window, WindowedFile};
use super::{now_ms, LogConfig, Offset, WalError};
use crate::constants::QUARANTINE_TAIL_BYTES_MAX;
use crate::index::{decode_points, IndexKind, IndexPoint, SegmentIndex, INDEX_HEADER_BYTES};
use crate::storage::{self, Storage, StorageFile};
use parking_lot::RwLock;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The writer's starting state.
pub struct ActiveState {
    pub segment: Arc<Segment>,
    pub file: Arc<SegmentFile>,
    /// `None` when the index files could not be rewritten (disk full):
    /// appends go on, checkpoints stop, recovery scans further.
    pub index_files: Option<IndexFiles>,
    pub pos: u64,
    pub next: Offset,
    pub last_timestamp_ms: u64,
}

pub struct Recovered {
    pub shared: Arc<Shared>,
    pub active: ActiveState,
}

pub fn recover(
    storage: Arc<dyn Storage>,
    dir: &Path,
    config: LogConfig,
) -> Result<Recovered, WalError> {
    let s = storage.as_ref();
    storage::create_dir_durable(s, dir).map_err(|e| WalError::io(dir, e))?;
    let bases = tidy_and_list(s, dir)?;
    let fence = Fence::load(s, dir).map_err(|reason| WalError::Damaged {
        path: super::fence::path(dir),
        reason,
    })?;
    let mut quarantine = Vec::new();
    let mut segments = Vec::new();
    let n = bases.len();
    for &base in bases.iter().take(n.saturating_sub(2)) {
        segments.push(lazy_sealed(s, dir, base)?);
    }
    if n >= 2 {
        let (base, next) = (bases[n - 2], bases[n - 1]);
        segments.push(open_last_sealed(s, dir, base, next, &mut quarantine)?);
    }
    let active = match bases.last() {
        None => {
            zero_fill_first_segment(s, dir, &config);
            new_active(s, dir, Offset(0), &config)?
        }
        Some(&last) => match try_open_sealed_last(s, dir, last)? {
            Some((seg, next)) => {
                segments.push(seg);
                new_active(s, dir, next, &config)?
            }
            None => open_active(s, dir, last, &config, fence, &mut quarantine)?,
        },
    };
    if let Some(f) = fence {
        // Everything the fence protected against was cut and synced above.
        if f.segment_base != active.segment.base {
            tracing::warn!(dir = %dir.display(), segment = f.segment_base.0, "fence names a segment that is no longer active; removing it");
        }
        Fence::clear(s, dir).map_err(|e| WalError::io(dir, e))?;
    }
    segments.push(active.segment.clone());
    let tail = Tail {
        start_offset: segments[0].base,
        next_offset: active.next,
        active_end: active.pos,
        last_timestamp_ms: active.last_timestamp_ms,
    };
    let shared = Arc::new(Shared::new(
        dir.to_path_buf(),
        storage,
        config,
        segments,
        tail,
    ));
    for q in quarantine {
        shared.quarantine(q);
    }
    tracing::info!(dir = %dir.display(), start = tail.start_offset.0, next = tail.next_offset.0, "log recovered");
    Ok(Recovered { shared, active })
}

/// Removes leftovers and returns the segment bases, sorted.
fn tidy_and_list(storage: &dyn Storage, dir: &Path) -> Result<Vec<Offset>, WalError> {
    let names = storage.list(dir).map_err(|e| WalError::io(dir, e))?;
    let mut bases: Vec<Offset> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    bases.sort();
    let mut removed = false;
    for name in &names {
        let orphan_index = ["index", "timeindex"].iter().any(|ext| {
            name.strip_suffix(&format!(".{ext}"))
                .and_then(|stem| parse_segment_name(&format!("{stem}.log")))
                .is_some_and(|b| bases.binary_search(&b).is_err())
        });
        if name.ends_with(".tmp") || orphan_index {
            tracing::info!(file = %name, "removing leftover file");
            storage
                .remove(&dir.join(name))
                .map_err(|e| WalError::io(&dir.join(name), e))?;
            removed = true;
        }
    }
    if removed {
        storage.sync_dir(dir).map_err(|e| WalError::io(dir, e))?;
    }
    Ok(bases)
}

/// A new log starts on a zero-filled segment too (see `spare.rs`): one
/// segment's worth of writing, once per queue. Failure only costs speed.
fn zero_fill_first_segment(storage: &dyn Storage, dir: &Path, config: &LogConfig) {
    if !config.prepare_segments {
        return;
    }
    let mut pace = super::spare::unpaced;
    if let Err(e) = super::spare::prepare(storage, dir, config.segment_bytes, &mut pace) {
        tracing::warn!(dir = %dir.display(), error = %e, "could not zero-fill the first segment; using a fresh one");
    }
}

fn new_active(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    config: &LogConfig,
) -> Result<ActiveState, WalError> {
    let (segment, file, index_files) = files::create_segment(storage, dir, base, now_ms(), config)?;
    let pos = SEGMENT_HEADER_BYTES as u64;
    store_checkpoint(storage, dir, &checkpoint_at(base, pos, base, 0, 0));
    Ok(ActiveState {
        segment,
        file,
        index_files: Some(index_files),
        pos,
        next: base,
        last_timestamp_ms: 0,
    })
}

fn checkpoint_at(base: Offset, pos: u64, next: Offset, ts: u64, entries: u32) -> Checkpoint {
    Checkpoint {
        segment_base: base,
        position: pos,
        next_offset: next,
        last_timestamp_ms: ts,
        index_entries: entries,
        clean: false,
    }
}

/// A checkpoint only bounds the next recovery's scan: failing to write one
/// (a full disk) must not stop the log from opening.
fn store_checkpoint(storage: &dyn Storage, dir: &Path, ckpt: &Checkpoint) {
    if let Err(e) = ckpt.store(storage, dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "checkpoint not written; the next recovery scans further");
    }
}

/// An older sealed segment: named and measured now, opened when first read.
fn lazy_sealed(storage: &dyn Storage, dir: &Path, base: Offset) -> Result<Arc<Segment>, WalError> {
    let path = file_path(dir, base, "log");
    let end = storage
        .file_len(&path)
        .map_err(|e| WalError::io(&path, e))?;
    Ok(Arc::new(Segment::sealed(
        base,
        path,
        SealedInfo::new(end, None),
    )))
}

/// Opens a sealed segment for reading (called when it is first read):
/// its index if it checks out, else one rebuilt by scanning the segment.
pub(super) fn open_sealed_file(
    shared: &Shared,
    seg: &Segment,
    end: u64,
    next_base: Option<Offset>,
) -> Result<SegmentFile, WalError> {
    let s = shared.storage.as_ref();
    let file = s
        .open(&seg.path, false)
        .map_err(|e| WalError::io(&seg.path, e))?;
    let index = match files::read_sealed_index(s, &shared.dir, seg.base, end) {
        Some(index) => index,
        None => {
            tracing::warn!(segment = %seg.path.display(), "index missing or damaged; rebuilding it from the log");
            let scan = scan_sealed(file.as_ref(), seg.base, end, next_base);
            for q in hole_ranges(&seg.path, &scan.holes) {
                shared.quarantine(q);
            }
            if let Some((at, _)) = scan.tail {
                shared.quarantine(QuarantinedRange {
                    segment: seg.path.clone(),
                    position: at,
                    offset: scan.next_offset,
                    end_offset: next_base,
                    reason: "bytes after the last record of a sealed segment",
                });
            }
            let index = SegmentIndex::from_points(&scan.points);
            if let Err(e) = files::write_sealed_indexes(s, &shared.dir, seg.base, &index, end) {
                tracing::warn!(segment = %seg.path.display(), error = %e, "rebuilt index not saved; it is rebuilt again next time");
            }
            index
        }
    };
    Ok(SegmentFile {
        file,
        index: RwLock::new(index),
    })
}

/// The newest append time in a sealed segment: the records after its last
/// index point (at most one index interval) are read.
pub(super) fn newest_timestamp(
    shared: &Shared,
    seg: &Segment,
    file: &SegmentFile,
    end: u64,
) -> u64 {
    let _ = shared;
    let mut window = Window::new();
    let mut src = WindowedFile {
        file: file.file.as_ref(),
        window: &mut window,
        end,
    };
    scan_after_last_point(&mut src, seg.base, &file.index.read()).last_timestamp_ms
}

/// Quarantine entries for the holes a scan found.
fn hole_ranges(path: &Path, holes: &[segment::Hole]) -> Vec<QuarantinedRange> {
    holes
        .iter()
        .map(|h| QuarantinedRange {
            segment: path.to_path_buf(),
            position: h.position,
            offset: h.offset,
            end_offset: Some(h.end_offset),
            reason: h.reason,
        })
        .collect()
}

/// Scans a whole sealed segment, resyncing past damage.
fn scan_sealed(
    file: &dyn StorageFile,
    base: Offset,
    end: u64,
    next_base: Option<Offset>,
) -> segment::Scan {
    let mut window = Window::new();
    let mut src = WindowedFile {
        file,
        window: &mut window,
        end,
    };
    let start = (SEGMENT_HEADER_BYTES as u64, base, 0);
    segment::scan_resyncing(&mut src, base, start, Vec::new(), next_base)
}

/// The segment before the active one, which an interrupted roll may have
/// left unsealed: verified now, trimmed and indexed if the roll was cut short.
fn open_last_sealed(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    next_base: Offset,
    quarantine: &mut Vec<QuarantinedRange>,
) -> Result<Arc<Segment>, WalError> {
    let path = file_path(dir, base, "log");
    let file = storage
        .open(&path, false)
        .map_err(|e| WalError::io(&path, e))?;
    let len = file.len().map_err(|e| WalError::io(&path, e))?;
    if let Err(reason) = read_header(file.as_ref(), base) {
        quarantine.push(header_damage(&path, base, reason));
    }
    if let Some(index) = files::read_sealed_index(storage, dir, base, len) {
        let mut window = Window::new();
        let mut src = WindowedFile {
            file: file.as_ref(),
            window: &mut window,
            end: len,
        };
        let ts = scan_after_last_point(&mut src, base, &index).last_timestamp_ms;
        return Ok(Arc::new(Segment::sealed(
            base,
            path,
            SealedInfo::new(len, Some(ts)),
        )));
    }
    tracing::warn!(segment = %path.display(), "index missing or damaged; rebuilding from the log");
    let scan = scan_sealed(file.as_ref(), base, len, Some(next_base));
    quarantine.extend(hole_ranges(&path, &scan.holes));
    let mut end = len;
    if let Some((at, _)) = scan.tail {
        if scan.next_offset == next_base {
            // An interrupted roll: the next segment continues the offsets,
            // so what follows the last record is unused space or a torn
            // write that was never acknowledged.
            tracing::warn!(segment = %path.display(), end = at, bytes = len - at, "trimming the tail left by an interrupted roll");
            save_copy(storage, dir, &path, base, at, len, "tail");
            file.set_len(at)
                .and_then(|_| file.sync_data())
                .map_err(|e| WalError::io(&path, e))?;
            end = at;
        } else {
            quarantine.push(QuarantinedRange {
                segment: path.clone(),
                position: at,
                offset: scan.next_offset,
                end_offset: Some(next_base),
                reason: "damaged records at the end of a sealed segment",
            });
        }
    }
    let index = SegmentIndex::from_points(&scan.points);
    files::write_sealed_indexes(storage, dir, base, &index, end)
        .map_err(|e| WalError::io(&path, e))?;
    Ok(Arc::new(Segment::sealed(
        base,
        path,
        SealedInfo::new(end, Some(scan.last_timestamp_ms)),
    )))
}

/// Scans the short stretch of a segment after its last index point (all of
/// it when there is none).
fn scan_after_last_point<S: SegmentBytes + ?Sized>(
    src: &mut S,
    base: Offset,
    index: &SegmentIndex,
) -> segment::Run {
    let (start, next, ts) = match index.last() {
        Some(p) => (
            u64::from(p.position),
            Offset(base.0 + u64::from(p.relative_offset)),
            p.timestamp_ms,
        ),
        None => (SEGMENT_HEADER_BYTES as u64, base, 0),
    };
    segment::scan_run(src, base, start, next, ts, None)
}

/// The last segment is sealed if a roll crashed after sealing it but before
/// its successor existed. Returns it with the next offset.
fn try_open_sealed_last(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
) -> Result<Option<(Arc<Segment>, Offset)>, WalError> {
    let path = file_path(dir, base, "log");
    let file = storage
        .open(&path, false)
        .map_err(|e| WalError::io(&path, e))?;
    let len = file.len().map_err(|e| WalError::io(&path, e))?;
    let Some(index) = files::read_sealed_index(storage, dir, base, len) else {
        return Ok(None);
    };
    if read_header(file.as_ref(), base).is_err() {
        return Ok(None);
    }
    let mut window = Window::new();
    let mut src = WindowedFile {
        file: file.as_ref(),
        window: &mut window,
        end: len,
    };
    let run = scan_after_last_point(&mut src, base, &index);
    if run.stop != Stop::End {
        return Ok(None);
    }
    tracing::info!(segment = %path.display(), "last segment was sealed by an interrupted roll; starting a new one");
    let seg = Segment::sealed(
        base,
        path,
        SealedInfo::new(len, Some(run.last_timestamp_ms)),
    );
    Ok(Some((Arc::new(seg), run.next_offset)))
}

/// Reads and checks a segment header: its `created_ms`, or why not.
fn read_header(file: &dyn StorageFile, base: Offset) -> Result<u64, &'static str> {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    storage::read_exact_at(file, &mut h, 0).map_err(|_| "segment header unreadable")?;
    match SegmentHeader::decode(&h) {
        Ok(h) if h.base_offset == base => Ok(h.created_ms),
        Ok(_) => Err("header base offset differs from the file name"),
        Err(reason) => Err(reason),
    }
}

fn header_damage(path: &Path, base: Offset, reason: &'static str) -> QuarantinedRange {
    tracing::error!(segment = %path.display(), reason, "segment header damaged");
    QuarantinedRange {
        segment: path.to_path_buf(),
        position: 0,
        offset: base,
        end_offset: Some(base),
        reason,
    }
}

/// The active segment's header: a damaged one is copied to `quarantine/`
/// and rewritten from the file name, never a reason to discard the segment
/// (its first sector also holds the first records). A header that is
/// intact but names another base is a misplaced file: refuse to guess.
fn repair_header(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    path: &Path,
    file: &dyn StorageFile,
    quarantine: &mut Vec<QuarantinedRange>,
) -> Result<u64, WalError> {
    match read_header(file, base) {
        Ok(created_ms) => Ok(created_ms),
        Err("header base offset differs from the file name") => Err(WalError::Damaged {
            path: path.to_path_buf(),
            reason: format!("its header names another base offset than its file name ({base}); it was renamed or copied here: move it aside or restore the right file"),
        }),
        Err(reason) => {
            quarantine.push(header_damage(path, base, reason));
            save_copy(storage, dir, path, base, 0, SEGMENT_HEADER_BYTES as u64, "header");
            let now = now_ms();
            let header = SegmentHeader {
                base_offset: base,
                created_ms: now,
            };
            storage::write_all_at(file, &header.encode(), 0).map_err(|e| WalError::io(path, e))?;
            tracing::warn!(segment = %path.display(), "segment header rebuilt from the file name; the records carry their own offsets and checksums");
            Ok(now)
        }
    }
}

fn open_active(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    config: &LogConfig,
    fence: Option<Fence>,
    quarantine: &mut Vec<QuarantinedRange>,
) -> Result<ActiveState, WalError> {
    let path = file_path(dir, base, "log");
    let io = |e| WalError::io(&path, e);
    let file = storage.open(&path, false).map_err(io)?;
    let created_ms = repair_header(storage, dir, base, &path, file.as_ref(), quarantine)?;
    let len = file.len().map_err(io)?;
    let fenced_at = fence.filter(|f| f.segment_base == base).map(|f| {
        f.position.clamp(
            SEGMENT_HEADER_BYTES as u64,
            len.max(SEGMENT_HEADER_BYTES as u64),
        )
    });
    let readable = fenced_at.map_or(len, |p| p.min(len));
    let ckpt =
        Checkpoint::load(storage, dir).filter(|c| c.segment_base == base && c.position <= readable);
    let (mut scan, clean) = scan_active(storage, dir, base, file.as_ref(), readable, ckpt);
    keep_unreadable_tail(&mut scan, file.as_ref(), readable);
    quarantine.extend(hole_ranges(&path, &scan.holes));
    for h in &scan.holes {
        error_hole(&path, h);
        let (from, to) = (h.position, h.resume_position);
        save_copy(storage, dir, &path, base, from, to, "damaged");
    }
    if let Some(at) = fenced_at {
        tracing::error!(segment = %path.display(), position = at, "an fsync failed before the last restart: discarding every byte written after the last durable position (none of it was acknowledged)");
    }
    cut_tail(
        storage,
        dir,
        &path,
        base,
        file.as_ref(),
        scan.end,
        clean,
        config,
    )
    .map_err(io)?;
    // Whatever recovery keeps may so far live only in the page cache (the
    // process was killed, not the machine): make it durable before anyone
    // reads it or a checkpoint vouches for it.
    file.sync_data().map_err(io)?;
    let points = scan.points;
    let index_files = match reopen_active_index(storage, dir, base, &points) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(segment = %path.display(), error = %e, "active index files not rewritten (disk full?); checkpoints stop until the next roll");
            None
        }
    };
    if index_files.is_some() {
        let entries = points.len() as u32;
        store_checkpoint(
            storage,
            dir,
            &checkpoint_at(
                base,
                scan.end,
                scan.next_offset,
                scan.last_timestamp_ms,
                entries,
            ),
        );
    }
    let open = Arc::new(SegmentFile {
        file,
        index: RwLock::new(SegmentIndex::from_points(&points)),
    });
    let segment = Arc::new(Segment::active(base, path, created_ms, open.clone()));
    Ok(ActiveState {
        segment,
        file: open,
        index_files,
        pos: scan.end,
        next: scan.next_offset,
        last_timestamp_ms: scan.last_timestamp_ms,
    })
}

/// A read error at the end of the active segment is a bad sector, not a
/// torn write: the bytes it covers were written, synced and may have been
/// acknowledged. They are kept as a hole, never cut. How many records they
/// held cannot be read, so the hole spans as many offsets as could fit
/// (one per `RECORD_HEADER_BYTES`): offsets are never reused, reads in the
/// hole fail as unreadable, and appends continue after it.
fn keep_unreadable_tail(scan: &mut segment::Scan, file: &dyn StorageFile, readable: u64) {
    let Some((from, reason)) = scan.tail.filter(|_| scan.tail_unreadable) else {
        return;
    };
    let mut window = Window::new();
    let mut src = WindowedFile {
        file,
        window: &mut window,
        end: readable,
    };
    let (to, most) = segment::unreadable_tail_span(&mut src, from);
    let end_offset = Offset(scan.next_offset.0 + most);
    tracing::error!(position = from, bytes = to - from, first = scan.next_offset.0, end = end_offset.0, "unreadable bytes at the end of the active segment: kept as a quarantined hole of up to {most} offset(s), never cut (they may hold acknowledged records); appends continue after it");
    scan.holes.push(segment::Hole {
        position: from,
        offset: scan.next_offset,
        end_offset,
        resume_position: to,
        reason,
    });
    scan.end = to;
    scan.next_offset = end_offset;
    scan.tail = None;
    scan.tail_unreadable = false;
}

fn error_hole(path: &Path, h: &segment::Hole) {
    tracing::error!(segment = %path.display(), position = h.position, first = h.offset.0, end = h.end_offset.0, reason = h.reason, "damaged record(s) followed by valid ones in the active segment: kept as quarantined holes (never served, offsets never reused); the records after them are kept");
}

/// Scans the active segment from its checkpoint (or first record) to the
/// last intact record before `readable`. Damage followed by intact records
/// becomes a hole; damage with nothing intact after it is the end. After a
/// clean close nothing is scanned: nothing was written after the checkpoint.
/// Returns the scan and whether the checkpoint was clean.
fn scan_active(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    file: &dyn StorageFile,
    readable: u64,
    ckpt: Option<Checkpoint>,
) -> (segment::Scan, bool) {
    let (start, next, ts, points) = resume_point(storage, dir, base, ckpt, readable);
    let clean = ckpt.is_some_and(|c| c.clean && c.position == start);
    if clean {
        let scan = segment::Scan {
            end: start,
            next_offset: next,
            last_timestamp_ms: ts,
            records: 0,
            points,
            holes: Vec::new(),
            tail: None,
            tail_unreadable: false,
        };
        return (scan, true);
    }
    let mut window = Window::new();
    let mut src = WindowedFile {
        file,
        window: &mut window,
        end: readable,
    };
    (
        segment::scan_resyncing(&mut src, base, (start, next, ts), points, None),
        false,
    )
}

/// Where to start scanning the active segment: the checkpoint if it and the
/// index prefix it vouches for check out, else the first record.
fn resume_point(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    ckpt: Option<Checkpoint>,
    len: u64,
) -> (u64, Offset, u64, Vec<IndexPoint>) {
    let from_start = (SEGMENT_HEADER_BYTES as u64, base, 0, Vec::new());
    let Some(c) = ckpt.filter(|c| {
        (SEGMENT_HEADER_BYTES as u64..=len).contains(&c.position) && c.next_offset >= base
    }) else {
        return from_start;
    };
    let read_entries =
        |kind: IndexKind| files::read_all(storage, &file_path(dir, base, kind.extension()));
    let (Some(o), Some(t)) = (
        read_entries(IndexKind::Offset),
        read_entries(IndexKind::Time),
    ) else {
        return from_start;
    };
    let n = c.index_entries as usize;
    let entries = |m: &[u8]| m.get(INDEX_HEADER_BYTES..).unwrap_or(&[]).to_vec();
    match decode_points(&entries(&o), &entries(&t), n, c.position) {
        Some(points) => (c.position, c.next_offset, c.last_timestamp_ms, points),
        None => {
            tracing::warn!(dir = %dir.display(), "checkpointed index prefix does not verify; scanning the whole active segment");
            from_start
        }
    }
}

/// Bytes that are not records after the recovered end (a torn last batch,
/// or what followed a failed fsync) were never acknowledged: copied to
/// `quarantine/`, then zeroed, so stale bytes can never look valid later.
/// Zeros past the end are kept where space ahead is wanted (preallocated
/// or zero-filled segments) and trimmed otherwise.
#[allow(clippy::too_many_arguments)]
fn cut_tail(
    storage: &dyn Storage,
    dir: &Path,
    path: &Path,
    base: Offset,
    file: &dyn StorageFile,
    end: u64,
    clean: bool,
    config: &LogConfig,
) -> std::io::Result<()> {
    let len = file.len()?;
    let garbage_end = if clean {
        end
    } else {
        let mut window = Window::new();
        let mut src = WindowedFile {
            file,
            window: &mut window,
            end: len,
        };
        segment::nonzero_end(&mut src, end)
    };
    let space_ahead = config.preallocate || config.prepare_segments;
    if garbage_end > end {
        tracing::warn!(segment = %path.display(), end, bytes = garbage_end - end, "torn or unacknowledged tail cut (a copy is kept in quarantine/)");
        save_copy(storage, dir, path, base, end, garbage_end, "tail");
        if space_ahead {
            write_zeros(file, end, garbage_end)?;
        } else {
            file.set_len(end)?;
        }
    }
    if !space_ahead && file.len()? > end {
        file.set_len(end)?;
    }
    if config.preallocate && file.len()? < config.segment_bytes {
        if let Err(e) = file.allocate(config.segment_bytes) {
            // Preallocation is an optimisation; appends allocate as they go.
            tracing::warn!(segment = %path.display(), error = %e, "could not preallocate the active segment");
        }
    }
    Ok(())
}

fn write_zeros(file: &dyn StorageFile, from: u64, to: u64) -> std::io::Result<()> {
    let zeros = vec![0u8; (to - from).min(1 << 20) as usize];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(zeros.len());
        storage::write_all_at(file, &zeros[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Keeps a copy of `[from, to)` of a segment in `quarantine/` for
/// inspection (unreadable blocks are left out). Best effort: a full disk
/// must not stop recovery.
fn save_copy(
    storage: &dyn Storage,
    dir: &Path,
    path: &Path,
    base: Offset,
    from: u64,
    to: u64,
    kind: &str,
) {
    let qdir = dir.join("quarantine");
    let to = to.min(from + QUARANTINE_TAIL_BYTES_MAX);
    let copied = storage.open(path, false).and_then(|f| {
        let mut window = Window::new();
        let mut src = WindowedFile {
            file: f.as_ref(),
            window: &mut window,
            end: to,
        };
        let mut bytes = Vec::new();
        let mut at = from;
        while at < to {
            match src.get(at, super::source::WINDOW_READ_BYTES) {
                Ok([]) => break,
                Ok(b) => {
                    bytes.extend_from_slice(b);
                    at += b.len() as u64;
                }
                Err(u) => at = u.resume,
            }
        }
        storage::create_dir_durable(storage, &qdir)?;
        let name: PathBuf = qdir.join(format!("{:020}-{from}.{kind}", base.0));
        storage::replace_file(storage, &name, &bytes)
    });
    if let Err(e) = copied {
        tracing::warn!(segment = %path.display(), error = %e, "could not keep a copy of the quarantined bytes");
    }
}

fn reopen_active_index(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    points: &[IndexPoint],
) -> std::io::Result<IndexFiles> {
    let idx = SegmentIndex::from_points(points);
    let open = |kind: IndexKind, entries: &[u8]| -> std::io::Result<_> {
        let f = storage.open(&file_path(dir, base, kind.extension()), true)?;
        files::rewrite_active_index(f.as_ref(), kind, base, entries)?;
        Ok(f)
    };
    let files = IndexFiles {
        offsets: open(IndexKind::Offset, idx.offset_entry_bytes(idx.len()))?,
        times: open(IndexKind::Time, idx.time_entry_bytes(idx.len()))?,
    };
    storage.sync_dir(dir)?;
    Ok(files)
}
