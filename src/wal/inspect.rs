//! Read-only iteration over a log directory, for `orderly inspect`: safe to
//! run beside a live broker because it never writes, truncates or locks.
use super::open::load_sealed_index;
use super::record::{self, Check, RecordView};
use super::segment::{self, parse_segment_name, SEGMENT_HEADER_BYTES};
use super::{Offset, WalError};
use crate::storage::Storage;
use std::path::Path;

/// Calls `visit` for up to `limit` valid records at or after `from`, in
/// order. Stops early (with an error) at damage inside a sealed segment; at
/// the end of the last segment it stops quietly, since that tail may be
/// being written right now.
pub fn for_each_record(
    storage: &dyn Storage,
    dir: &Path,
    from: Offset,
    limit: u64,
    mut visit: impl FnMut(RecordView<'_>),
) -> Result<u64, WalError> {
    let names = storage.list(dir).map_err(|e| WalError::io(dir, e))?;
    let mut bases: Vec<Offset> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    bases.sort();
    let mut seen = 0u64;
    for (i, &base) in bases.iter().enumerate() {
        if bases.get(i + 1).is_some_and(|next| *next <= from) {
            continue;
        }
        let path = segment::file_path(dir, base, "log");
        let (_file, map) = super::files::open_mapped(storage, &path)?;
        let sealed = i + 1 < bases.len();
        let (mut expected, mut pos) = start_point(storage, dir, base, from, map.len() as u64);
        while seen < limit {
            let rec = match map.get(pos as usize..).map(record::check) {
                Some(Check::Valid(r)) if r.offset == expected => r,
                None | Some(Check::Incomplete) if !sealed => break,
                Some(Check::Invalid(_)) if !sealed => break,
                Some(_) if pos as usize == map.len() => break,
                other => {
                    let reason = match other {
                        Some(Check::Invalid(r)) => r,
                        Some(Check::Valid(_)) => "offset out of sequence",
                        _ => "record cut short",
                    };
                    return Err(WalError::Corrupt {
                        segment: path,
                        position: pos,
                        offset: expected,
                        reason,
                    });
                }
            };
            if rec.offset >= from {
                visit(rec);
                seen += 1;
            }
            pos += rec.encoded_len() as u64;
            expected = Offset(expected.0 + 1);
        }
    }
    Ok(seen)
}

fn start_point(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    from: Offset,
    len: u64,
) -> (Offset, u64) {
    let start = (base, SEGMENT_HEADER_BYTES as u64);
    if from <= base {
        return start;
    }
    let Some(index) = load_sealed_index(storage, dir, base, len) else {
        return start;
    };
    let rel = u32::try_from(from.0 - base.0).unwrap_or(u32::MAX);
    match index.floor_offset(rel) {
        Some(p) => (
            Offset(base.0 + u64::from(p.relative_offset)),
            u64::from(p.position),
        ),
        None => start,
    }
}
