//! Creating segment files and writing their index files, durably; opening
//! existing segment files mapped.
use super::segment::{SegmentHeader, SEGMENT_HEADER_BYTES};
use super::shared::{SealedInfo, Segment};
use super::{LogConfig, Offset, WalError};
use crate::index::{IndexHeader, IndexKind, SegmentIndex, INDEX_HEADER_BYTES};
use crate::storage::{self, Storage, StorageFile};
use parking_lot::RwLock;
use std::path::Path;
use std::sync::{Arc, OnceLock};

/// Opens an existing file (a segment) and maps all of it, read-only.
pub fn open_mapped(
    storage: &dyn Storage,
    path: &Path,
) -> Result<(Box<dyn StorageFile>, crate::storage::Mapping), WalError> {
    let file = storage
        .open(path, false)
        .map_err(|e| WalError::io(path, e))?;
    let len = file.len().map_err(|e| WalError::io(path, e))?;
    let map = file.map(len).map_err(|e| WalError::io(path, e))?;
    Ok((file, map))
}

/// The open index files of the active segment.
pub struct IndexFiles {
    pub offsets: Box<dyn StorageFile>,
    pub times: Box<dyn StorageFile>,
}

/// Creates an empty active segment `base` with its index files, all synced
/// and their directory entries durable. On failure, removes what it made.
pub fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    now_ms: u64,
    config: &LogConfig,
) -> Result<(Arc<Segment>, IndexFiles), WalError> {
    let path = super::segment::file_path(dir, base, "log");
    let made = try_create(storage, dir, base, now_ms, config, &path);
    if made.is_err() {
        for ext in ["log", "index", "timeindex"] {
            let _ = storage.remove(&super::segment::file_path(dir, base, ext));
        }
        let _ = storage.sync_dir(dir);
    }
    made.map_err(|e| WalError::io(&path, e))
}

fn try_create(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    now_ms: u64,
    config: &LogConfig,
    path: &Path,
) -> std::io::Result<(Arc<Segment>, IndexFiles)> {
    let file = match take_spare(storage, dir, path, config) {
        Some(zeroed) => zeroed,
        None => {
            let file = storage.open(path, true)?;
            file.set_len(0)?;
            if config.preallocate {
                file.allocate(config.segment_bytes)?;
            }
            file
        }
    };
    let header = SegmentHeader {
        base_offset: base,
        created_ms: now_ms,
    };
    storage::write_all_at(file.as_ref(), &header.encode(), 0)?;
    file.sync_data()?;
    let index = IndexFiles {
        offsets: create_active_index(storage, dir, base, IndexKind::Offset)?,
        times: create_active_index(storage, dir, base, IndexKind::Time)?,
    };
    storage.sync_dir(dir)?;
    let map = file.map(file.len()?)?;
    let segment = Segment {
        base,
        created_ms: now_ms,
        path: path.to_path_buf(),
        file,
        map: Segment::map_state(map, SEGMENT_HEADER_BYTES as u64),
        index: RwLock::new(SegmentIndex::empty()),
        sealed: OnceLock::new(),
    };
    Ok((Arc::new(segment), index))
}

/// The ready spare renamed to `path`, if enabled and there is one. Any
/// trouble with it only means the segment is created the ordinary way.
fn take_spare(
    storage: &dyn Storage,
    dir: &Path,
    path: &Path,
    config: &LogConfig,
) -> Option<Box<dyn StorageFile>> {
    if !config.prepare_segments {
        return None;
    }
    match super::spare::take(storage, dir, path, config.segment_bytes) {
        Ok(file) => file,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "spare segment unusable; creating the segment afresh");
            None
        }
    }
}

fn create_active_index(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    kind: IndexKind,
) -> std::io::Result<Box<dyn StorageFile>> {
    let f = storage.open(
        &super::segment::file_path(dir, base, kind.extension()),
        true,
    )?;
    f.set_len(0)?;
    storage::write_all_at(f.as_ref(), &IndexHeader::active(kind, base.0).encode(), 0)?;
    f.sync_data()?;
    Ok(f)
}

/// Rewrites an active index file to hold exactly `entries`, synced.
pub fn rewrite_active_index(
    file: &dyn StorageFile,
    kind: IndexKind,
    base: Offset,
    entries: &[u8],
) -> std::io::Result<()> {
    storage::write_all_at(file, &IndexHeader::active(kind, base.0).encode(), 0)?;
    storage::write_all_at(file, entries, INDEX_HEADER_BYTES as u64)?;
    file.set_len((INDEX_HEADER_BYTES + entries.len()) as u64)?;
    file.sync_data()
}

/// Writes a sealed index file (header vouching for `entries` and `log_bytes`).
pub fn write_sealed_index(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    kind: IndexKind,
    entries: &[u8],
    log_bytes: u64,
) -> std::io::Result<()> {
    let mut bytes = IndexHeader::sealed(kind, base.0, entries, log_bytes)
        .encode()
        .to_vec();
    bytes.extend_from_slice(entries);
    storage::replace_file(
        storage,
        &super::segment::file_path(dir, base, kind.extension()),
        &bytes,
    )
}

/// Seals `seg` at `end`: trims the file to its records, syncs it, writes both
/// sealed indexes, and swaps in read-only mappings of segment and indexes.
pub fn seal(
    storage: &dyn Storage,
    dir: &Path,
    seg: &Segment,
    end: u64,
    max_timestamp_ms: u64,
) -> std::io::Result<()> {
    assert!(end >= SEGMENT_HEADER_BYTES as u64);
    seg.file.set_len(end)?;
    seg.file.sync_data()?;
    let count = {
        let idx = seg.index.read();
        write_sealed_index(
            storage,
            dir,
            seg.base,
            IndexKind::Offset,
            idx.offset_entry_bytes(idx.len()),
            end,
        )?;
        write_sealed_index(
            storage,
            dir,
            seg.base,
            IndexKind::Time,
            idx.time_entry_bytes(idx.len()),
            end,
        )?;
        idx.len()
    };
    let mapped = map_sealed_index(storage, dir, seg.base, count)?;
    *seg.index.write() = mapped;
    *seg.map.write() = (Arc::new(seg.file.map(end)?), end);
    let sealed = seg.sealed.set(SealedInfo {
        end,
        max_timestamp_ms,
    });
    assert!(sealed.is_ok(), "a segment is sealed once");
    Ok(())
}

/// Maps both index files of a sealed segment whose headers were verified.
pub fn map_sealed_index(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    count: usize,
) -> std::io::Result<SegmentIndex> {
    let map_of = |kind: IndexKind| -> std::io::Result<_> {
        let f = storage.open(
            &super::segment::file_path(dir, base, kind.extension()),
            false,
        )?;
        let len = (INDEX_HEADER_BYTES + count * kind.entry_bytes()) as u64;
        if f.len()? < len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "index shorter than its header says",
            ));
        }
        f.map(len)
    };
    Ok(SegmentIndex::mapped(
        map_of(IndexKind::Offset)?,
        map_of(IndexKind::Time)?,
        count,
    ))
}
