//! Creating segment files and their index files durably, sealing, and
//! reading sealed index files back (with `pread`, verified).
use super::segment::{SegmentHeader, SEGMENT_HEADER_BYTES};
use super::shared::{SealedInfo, Segment, SegmentFile};
use super::{LogConfig, Offset, WalError};
use crate::index::{IndexHeader, IndexKind, SegmentIndex, INDEX_HEADER_BYTES};
use crate::storage::{self, Storage, StorageFile};
use parking_lot::RwLock;
use std::path::Path;
use std::sync::Arc;

/// The open index files of the active segment.
pub struct IndexFiles {
    pub offsets: Box<dyn StorageFile>,
    pub times: Box<dyn StorageFile>,
}

/// A new active segment: its shared handle, its open file, its index files.
pub type NewSegment = (Arc<Segment>, Arc<SegmentFile>, IndexFiles);

/// Creates an empty active segment `base` with its index files, all synced
/// and their directory entries durable. On failure, removes what it made.
pub fn create_segment(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    now_ms: u64,
    config: &LogConfig,
) -> Result<NewSegment, WalError> {
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
) -> std::io::Result<NewSegment> {
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
    let open = Arc::new(SegmentFile {
        file,
        index: RwLock::new(SegmentIndex::empty()),
    });
    let segment = Segment::active(base, path.to_path_buf(), now_ms, open.clone());
    Ok((Arc::new(segment), open, index))
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

/// Writes both sealed index files of `index`.
pub fn write_sealed_indexes(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    index: &SegmentIndex,
    log_bytes: u64,
) -> std::io::Result<()> {
    let n = index.len();
    write_sealed_index(
        storage,
        dir,
        base,
        IndexKind::Offset,
        index.offset_entry_bytes(n),
        log_bytes,
    )?;
    write_sealed_index(
        storage,
        dir,
        base,
        IndexKind::Time,
        index.time_entry_bytes(n),
        log_bytes,
    )
}

/// Seals the active segment at `end`: trims the file to its records, syncs
/// it, writes both sealed indexes. The in-memory index stays as it is.
pub fn seal(
    storage: &dyn Storage,
    dir: &Path,
    seg: &Segment,
    file: &SegmentFile,
    end: u64,
    max_timestamp_ms: u64,
) -> std::io::Result<()> {
    assert!(end >= SEGMENT_HEADER_BYTES as u64);
    file.file.set_len(end)?;
    file.file.sync_data()?;
    write_sealed_indexes(storage, dir, seg.base, &file.index.read(), end)?;
    let sealed = seg.sealed.set(SealedInfo::new(end, Some(max_timestamp_ms)));
    assert!(sealed.is_ok(), "a segment is sealed once");
    Ok(())
}

/// Reads a sealed segment's index files; `None` unless both headers,
/// lengths and CRCs check out and they describe a segment of `log_len` bytes.
pub fn read_sealed_index(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    log_len: u64,
) -> Option<SegmentIndex> {
    let mut parts = Vec::with_capacity(2);
    for kind in [IndexKind::Offset, IndexKind::Time] {
        let path = super::segment::file_path(dir, base, kind.extension());
        let f = storage.open(&path, false).ok()?;
        let len = usize::try_from(f.len().ok()?).ok()?;
        let mut bytes = vec![0u8; len];
        storage::read_exact_at(f.as_ref(), &mut bytes, 0).ok()?;
        let h = IndexHeader::decode(kind, &bytes).ok()?;
        let seal = h.sealed?;
        let entries = bytes.split_off(INDEX_HEADER_BYTES);
        let ok = h.base_offset == base.0
            && seal.log_bytes == log_len
            && entries.len() == seal.entry_count as usize * kind.entry_bytes()
            && crc32fast::hash(&entries) == seal.entries_crc;
        if !ok {
            return None;
        }
        parts.push((seal.entry_count as usize, entries));
    }
    let (count, times) = parts.pop()?;
    let (count_o, offsets) = parts.pop()?;
    (count == count_o).then(|| SegmentIndex::from_entries(offsets, times, count))
}

/// Reads the whole of a small file (an index of the active segment).
pub fn read_all(storage: &dyn Storage, path: &Path) -> Option<Vec<u8>> {
    let f = storage.open(path, false).ok()?;
    let mut bytes = vec![0u8; usize::try_from(f.len().ok()?).ok()?];
    storage::read_exact_at(f.as_ref(), &mut bytes, 0).ok()?;
    Some(bytes)
}
