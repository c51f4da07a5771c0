//! Recovery: opening a log and deciding what on disk can be trusted.
//!
//! | state found | action |
//! |---|---|
//! | no segments | create segment 0 |
//! | `*.tmp` files | leftovers of an interrupted atomic replace: removed |
//! | index files without a segment | leftovers of retention: removed |
//! | sealed segment, index header + CRC + length check out | mapped as is, nothing scanned |
//! | sealed segment, index missing or damaged | rebuilt by scanning the segment |
//! | sealed segment, bad record inside | quarantined (logged, never served); scan resyncs at the next valid record |
//! | sealed segment, zeros or garbage after its last record and the next segment continues the offsets | an interrupted roll: trimmed |
//! | last segment with a sealed, valid index | crash during a roll: kept sealed, a new active segment is created |
//! | active segment, valid checkpoint | index prefix loaded, scan starts at the checkpoint |
//! | active segment, no/damaged checkpoint | scan from the first record |
//! | active segment, zeroed tail | preallocated space: nothing to do |
//! | active segment, torn or garbage tail | copied to `quarantine/`, truncated, re-zeroed, logged with byte counts |
//!
//! Recovery is idempotent: it ends by writing a checkpoint at the recovered
//! end, so opening again scans nothing.
use super::checkpoint::Checkpoint;
use super::files::{self, IndexFiles};
use super::segment::{self, parse_segment_name, SegmentHeader, Stop, SEGMENT_HEADER_BYTES};
use super::shared::{QuarantinedRange, SealedInfo, Segment, Shared, Tail};
use super::{now_ms, LogConfig, Offset, WalError};
use crate::constants::{COMMIT_BATCH_BYTES_MAX, QUARANTINE_TAIL_BYTES_MAX};
use crate::index::{
    decode_points, IndexHeader, IndexKind, IndexPoint, SegmentIndex, INDEX_HEADER_BYTES,
};
use crate::storage::{self, Mapping, Storage};
use parking_lot::RwLock;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// Bytes after the recovered end that may hold unsynced data of the last
/// batch; beyond it the writer never wrote, so nothing is read there.
const TAIL_WINDOW_BYTES: u64 = (COMMIT_BATCH_BYTES_MAX + super::record::RECORD_BYTES_MAX) as u64;

/// The writer's starting state.
pub struct ActiveState {
    pub segment: Arc<Segment>,
    pub index_files: IndexFiles,
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
    storage
        .create_dir_all(dir)
        .map_err(|e| WalError::io(dir, e))?;
    storage
        .sync_dir(storage::parent_of(dir))
        .map_err(|e| WalError::io(dir, e))?;
    let bases = tidy_and_list(storage.as_ref(), dir)?;
    let mut quarantine = Vec::new();
    let mut segments = Vec::new();
    let s = storage.as_ref();
    for (i, &base) in bases.iter().enumerate().take(bases.len().saturating_sub(1)) {
        segments.push(open_sealed(
            s,
            dir,
            base,
            Some(bases[i + 1]),
            &mut quarantine,
        )?);
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
            None => open_active(s, dir, last, &config, &mut quarantine)?,
        },
    };
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
    let (segment, index_files) = files::create_segment(storage, dir, base, now_ms(), config)?;
    let pos = SEGMENT_HEADER_BYTES as u64;
    let ckpt = Checkpoint {
        segment_base: base,
        position: pos,
        next_offset: base,
        last_timestamp_ms: 0,
        index_entries: 0,
    };
    ckpt.store(storage, dir).map_err(|e| WalError::io(dir, e))?;
    Ok(ActiveState {
        segment,
        index_files,
        pos,
        next: base,
        last_timestamp_ms: 0,
    })
}

/// Checks a segment header; damage is logged and reported, and the base from
/// the file name is used (records carry their own offsets and CRCs).
fn check_header(map: &[u8], base: Offset, path: &Path) -> Result<u64, &'static str> {
    match SegmentHeader::decode(map) {
        Ok(h) if h.base_offset == base => Ok(h.created_ms),
        Ok(_) => Err("header base offset differs from the file name"),
        Err(reason) => {
            tracing::error!(segment = %path.display(), reason, "segment header damaged");
            Err(reason)
        }
    }
}

fn open_sealed(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    next_base: Option<Offset>,
    quarantine: &mut Vec<QuarantinedRange>,
) -> Result<Arc<Segment>, WalError> {
    let path = segment::file_path(dir, base, "log");
    let (file, map) = files::open_mapped(storage, &path)?;
    let created_ms = check_header(&map, base, &path).unwrap_or_else(|reason| {
        quarantine.push(QuarantinedRange {
            segment: path.clone(),
            position: 0,
            offset: base,
            reason,
        });
        0
    });
    let (index, end, map, file) = match load_sealed_index(storage, dir, base, map.len() as u64) {
        Some(index) => (index, map.len() as u64, map, file),
        None => {
            let end = rebuild_sealed(storage, dir, base, next_base, &map, &path, quarantine)?;
            drop(map);
            let count = count_points(storage, dir, base, end)?;
            let index = files::map_sealed_index(storage, dir, base, count)
                .map_err(|e| WalError::io(&path, e))?;
            let map = file.map(end).map_err(|e| WalError::io(&path, e))?;
            (index, end, map, file)
        }
    };
    let max_ts = scan_after_last_point(&map, base, &index).last_timestamp_ms;
    Ok(Segment::sealed(
        base,
        created_ms,
        path,
        file,
        map,
        index,
        SealedInfo {
            end,
            max_timestamp_ms: max_ts,
        },
    ))
}

fn count_points(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    end: u64,
) -> Result<usize, WalError> {
    load_sealed_index(storage, dir, base, end)
        .map(|i| i.len())
        .ok_or_else(|| {
            WalError::io(
                dir,
                std::io::Error::other("index just rebuilt does not verify"),
            )
        })
}

/// Accepts a sealed index only if both files' headers, lengths and CRCs check out.
pub(super) fn load_sealed_index(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    log_len: u64,
) -> Option<SegmentIndex> {
    let mut count = None;
    for kind in [IndexKind::Offset, IndexKind::Time] {
        let f = storage
            .open(&segment::file_path(dir, base, kind.extension()), false)
            .ok()?;
        let map = f.map(f.len().ok()?).ok()?;
        let h = IndexHeader::decode(kind, &map).ok()?;
        let seal = h.sealed?;
        let entries = &map[INDEX_HEADER_BYTES..];
        let ok = h.base_offset == base.0
            && seal.log_bytes == log_len
            && entries.len() == seal.entry_count as usize * kind.entry_bytes()
            && crc32fast::hash(entries) == seal.entries_crc
            && count.is_none_or(|c| c == seal.entry_count);
        if !ok {
            return None;
        }
        count = Some(seal.entry_count);
    }
    files::map_sealed_index(storage, dir, base, count? as usize).ok()
}

/// Scans a whole sealed segment, quarantining damage, trims an interrupted
/// roll's tail, writes fresh sealed indexes, and returns the segment's end.
fn rebuild_sealed(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    next_base: Option<Offset>,
    map: &[u8],
    path: &Path,
    quarantine: &mut Vec<QuarantinedRange>,
) -> Result<u64, WalError> {
    tracing::warn!(segment = %path.display(), "index missing or damaged; rebuilding from the log");
    let (mut start, mut next, mut ts) = (SEGMENT_HEADER_BYTES as u64, base, 0);
    let mut points: Vec<IndexPoint> = Vec::new();
    let end = loop {
        let run = segment::scan_run(map, base, start, next, ts, None);
        points.extend(&run.points);
        (next, ts) = (run.next_offset, run.last_timestamp_ms);
        let Stop::Invalid { position, reason } = run.stop else {
            break run.end;
        };
        match segment::resync(map, position, next, next_base) {
            Some((pos, rec)) => {
                quarantine.push(QuarantinedRange {
                    segment: path.to_path_buf(),
                    position,
                    offset: next,
                    reason,
                });
                (start, next) = (pos, rec.offset);
            }
            None if next_base == Some(next) => break position,
            None => {
                quarantine.push(QuarantinedRange {
                    segment: path.to_path_buf(),
                    position,
                    offset: next,
                    reason,
                });
                break map.len() as u64;
            }
        }
    };
    if end < map.len() as u64 {
        tracing::warn!(segment = %path.display(), end, bytes = map.len() as u64 - end, "trimming tail left by an interrupted roll");
        save_tail(storage, dir, base, end, &map[end as usize..]);
        let f = storage
            .open(path, false)
            .map_err(|e| WalError::io(path, e))?;
        f.set_len(end)
            .and_then(|_| f.sync_data())
            .map_err(|e| WalError::io(path, e))?;
    }
    let idx = SegmentIndex::from_points(&points);
    for kind in [IndexKind::Offset, IndexKind::Time] {
        let entries = match kind {
            IndexKind::Offset => idx.offset_entry_bytes(idx.len()),
            IndexKind::Time => idx.time_entry_bytes(idx.len()),
        };
        files::write_sealed_index(storage, dir, base, kind, entries, end)
            .map_err(|e| WalError::io(path, e))?;
    }
    Ok(end)
}

/// Scans the short stretch of a segment after its last index point (all of
/// it when there is none): the newest timestamp and where the records end,
/// without reading the rest.
fn scan_after_last_point(map: &[u8], base: Offset, index: &SegmentIndex) -> segment::Run {
    let (start, next, ts) = match index.last() {
        Some(p) => (
            u64::from(p.position),
            Offset(base.0 + u64::from(p.relative_offset)),
            p.timestamp_ms,
        ),
        None => (SEGMENT_HEADER_BYTES as u64, base, 0),
    };
    segment::scan_run(map, base, start, next, ts, None)
}

/// The last segment is sealed if a roll crashed after sealing it but before
/// its successor existed. Returns it with the next offset.
fn try_open_sealed_last(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
) -> Result<Option<(Arc<Segment>, Offset)>, WalError> {
    let path = segment::file_path(dir, base, "log");
    let (file, map) = files::open_mapped(storage, &path)?;
    let Some(index) = load_sealed_index(storage, dir, base, map.len() as u64) else {
        return Ok(None);
    };
    let created_ms = match check_header(&map, base, &path) {
        Ok(c) => c,
        Err(_) => return Ok(None),
    };
    let run = scan_after_last_point(&map, base, &index);
    if run.stop != Stop::End {
        return Ok(None);
    }
    let end = map.len() as u64;
    let seg = Segment::sealed(
        base,
        created_ms,
        path,
        file,
        map,
        index,
        SealedInfo {
            end,
            max_timestamp_ms: run.last_timestamp_ms,
        },
    );
    tracing::info!(segment = %seg.path.display(), "last segment was sealed by an interrupted roll; starting a new one");
    Ok(Some((seg, run.next_offset)))
}

fn open_active(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    config: &LogConfig,
    quarantine: &mut Vec<QuarantinedRange>,
) -> Result<ActiveState, WalError> {
    let path = segment::file_path(dir, base, "log");
    let (file, map) = files::open_mapped(storage, &path)?;
    let header = check_header(&map, base, &path);
    let ckpt = Checkpoint::load(storage, dir).filter(|c| c.segment_base == base);
    let (start, next, ts, mut points) = resume_point(storage, dir, base, ckpt, map.len() as u64);
    let run = segment::scan_run(&map, base, start, next, ts, points.last().copied());
    points.extend(&run.points);
    if header.is_err() && run.records == 0 && points.is_empty() {
        tracing::warn!(segment = %path.display(), "active segment has a damaged header and no records; recreating it");
        drop((file, map));
        storage.remove(&path).map_err(|e| WalError::io(&path, e))?;
        return new_active(storage, dir, base, config);
    }
    if let Err(reason) = header {
        quarantine.push(QuarantinedRange {
            segment: path.clone(),
            position: 0,
            offset: base,
            reason,
        });
    }
    let created_ms = header.unwrap_or(0);
    let end = run.end;
    let garbage = inspect_tail(storage, dir, base, &map, end, run.next_offset, &path);
    drop(map);
    restore_tail(file.as_ref(), end, garbage, config).map_err(|e| WalError::io(&path, e))?;
    let index_files =
        reopen_active_index(storage, dir, base, &points).map_err(|e| WalError::io(&path, e))?;
    let index = SegmentIndex::from_points(&points);
    let map = file
        .map(file.len().map_err(|e| WalError::io(&path, e))?)
        .map_err(|e| WalError::io(&path, e))?;
    let ckpt = Checkpoint {
        segment_base: base,
        position: end,
        next_offset: run.next_offset,
        last_timestamp_ms: run.last_timestamp_ms,
        index_entries: points.len() as u32,
    };
    ckpt.store(storage, dir).map_err(|e| WalError::io(dir, e))?;
    let segment = Arc::new(Segment {
        base,
        created_ms,
        path,
        file,
        map: Segment::map_state(map, end),
        index: RwLock::new(index),
        sealed: OnceLock::new(),
    });
    Ok(ActiveState {
        segment,
        index_files,
        pos: end,
        next: run.next_offset,
        last_timestamp_ms: run.last_timestamp_ms,
    })
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
    let read_entries = |kind: IndexKind| -> Option<Mapping> {
        let f = storage
            .open(&segment::file_path(dir, base, kind.extension()), false)
            .ok()?;
        f.map(f.len().ok()?).ok()
    };
    let (Some(o), Some(t)) = (
        read_entries(IndexKind::Offset),
        read_entries(IndexKind::Time),
    ) else {
        return from_start;
    };
    let n = c.index_entries as usize;
    let entries = |m: &Mapping| m.get(INDEX_HEADER_BYTES..).unwrap_or(&[]).to_vec();
    match decode_points(&entries(&o), &entries(&t), n, c.position) {
        Some(points) => (c.position, c.next_offset, c.last_timestamp_ms, points),
        None => {
            tracing::warn!(dir = %dir.display(), "checkpointed index prefix does not verify; scanning the whole active segment");
            from_start
        }
    }
}

/// Non-zero bytes after the recovered end are a torn or damaged tail: they
/// are logged with byte counts and copied to `quarantine/`. Returns whether
/// any were found.
fn inspect_tail(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    map: &[u8],
    end: u64,
    next: Offset,
    path: &Path,
) -> bool {
    let window_end = (end + TAIL_WINDOW_BYTES).min(map.len() as u64) as usize;
    let window = &map[end as usize..window_end];
    let Some(last_nonzero) = window.iter().rposition(|&b| b != 0) else {
        return false;
    };
    let tail = &window[..=last_nonzero];
    let valid_after = segment::resync(&map[..window_end], end, next, None).is_some();
    if valid_after {
        tracing::error!(segment = %path.display(), end, bytes = tail.len(), "damaged record followed by valid ones in the active segment; truncating at the damage, tail kept in quarantine/ for inspection");
    } else {
        tracing::warn!(segment = %path.display(), end, bytes = tail.len(), "torn tail from an interrupted write truncated");
    }
    save_tail(storage, dir, base, end, tail);
    true
}

fn save_tail(storage: &dyn Storage, dir: &Path, base: Offset, end: u64, tail: &[u8]) {
    let Some(last_nonzero) = tail.iter().rposition(|&b| b != 0) else {
        return;
    };
    let qdir = dir.join("quarantine");
    let keep = &tail[..(last_nonzero + 1).min(QUARANTINE_TAIL_BYTES_MAX as usize)];
    let saved = storage
        .create_dir_all(&qdir)
        .and_then(|_| storage.sync_dir(dir))
        .and_then(|_| {
            storage::replace_file(
                storage,
                &qdir.join(format!("{:020}-{end}.tail", base.0)),
                keep,
            )
        });
    if let Err(e) = saved {
        tracing::warn!(error = %e, "could not keep a copy of the truncated tail");
    }
}

/// Cuts the file back to `end` when garbage or an unneeded extension follows,
/// then restores preallocation, so no stale bytes survive past the end.
fn restore_tail(
    file: &dyn storage::StorageFile,
    end: u64,
    garbage: bool,
    config: &LogConfig,
) -> std::io::Result<()> {
    let len = file.len()?;
    let mut changed = false;
    // Zeros past the end are space kept ahead on purpose when the segment
    // was fallocated or made from a zero-filled spare.
    let space_ahead = config.preallocate || config.prepare_segments;
    if garbage || (!space_ahead && len > end) {
        file.set_len(end)?;
        changed = true;
    }
    if config.preallocate && file.len()? < config.segment_bytes {
        file.allocate(config.segment_bytes)?;
        changed = true;
    }
    if changed {
        file.sync_data()?;
    }
    Ok(())
}

fn reopen_active_index(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    points: &[IndexPoint],
) -> std::io::Result<IndexFiles> {
    let idx = SegmentIndex::from_points(points);
    let open = |kind: IndexKind, entries: &[u8]| -> std::io::Result<_> {
        let f = storage.open(&segment::file_path(dir, base, kind.extension()), true)?;
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
