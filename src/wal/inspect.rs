//! Read-only iteration over a log directory, for `orderly inspect`: safe to
//! run beside a live broker because it never writes, truncates or locks,
//! and reads through `pread` (a segment sealed under it only reads short).
//! It keeps going past damage: each unreadable record is reported in order,
//! then the walk resumes at the next intact one.
use super::checkpoint::Checkpoint;
use super::files;
use super::record::{self, Check, RecordView};
use super::segment::{self, file_path, parse_segment_name, At, SegmentBytes, SEGMENT_HEADER_BYTES};
use super::source::{self, Window, WindowedFile};

/// Pauses for bytes that look damaged beside a running broker before they
/// are taken for a write in progress.
const SETTLE_TRIES_MAX: u32 = 5;
/// Bytes compared to tell settled damage from a write in progress.
const SETTLE_PROBE_BYTES: u64 = 64 * 1024;
use super::{Offset, WalError, Writer};
use crate::storage::Storage;
use std::path::{Path, PathBuf};

/// What the walk finds at one offset.
pub enum Item<'a> {
    Record(RecordView<'a>),
    /// A record that cannot be read; never served.
    Corrupt {
        offset: Offset,
        segment: &'a Path,
        position: u64,
        reason: &'static str,
    },
}

/// Calls `visit` for up to `limit` offsets at or after `from`, in order:
/// intact records and damaged ones alike. In the last segment, past what its
/// checkpoint vouches for, it stops quietly at damage with nothing intact
/// after it (a torn write recovery will cut); with `Writer::Running` damage
/// there counts only once it reads back the same after a pause (a write in
/// progress settles within it).
pub fn for_each_record(
    storage: &dyn Storage,
    dir: &Path,
    from: Offset,
    limit: u64,
    writer: Writer,
    mut visit: impl FnMut(Item<'_>),
) -> Result<u64, WalError> {
    let names = storage.list(dir).map_err(|e| WalError::io(dir, e))?;
    let mut bases: Vec<Offset> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    bases.sort();
    let mut seen = 0u64;
    for (i, &base) in bases.iter().enumerate() {
        let next_base = bases.get(i + 1).copied();
        if next_base.is_some_and(|next| next <= from) {
            continue;
        }
        let path = file_path(dir, base, "log");
        let file = storage
            .open(&path, false)
            .map_err(|e| WalError::io(&path, e))?;
        let len = file.len().map_err(|e| WalError::io(&path, e))?;
        let mut window = Window::new();
        let proven = if next_base.is_none() {
            Checkpoint::load(storage, dir)
                .filter(|c| c.segment_base == base && c.position <= len)
                .map(|c| (c.position, c.next_offset))
        } else {
            None
        };
        let mut walk = Walk {
            src: WindowedFile {
                file: file.as_ref(),
                window: &mut window,
                end: len,
            },
            path,
            next_base,
            from,
            proven,
            writer,
        };
        let start = start_point(storage, dir, base, from, len);
        walk.run(start, limit, &mut seen, &mut visit);
        if seen >= limit {
            break;
        }
    }
    Ok(seen)
}

struct Walk<'a> {
    src: WindowedFile<'a>,
    path: PathBuf,
    next_base: Option<Offset>,
    from: Offset,
    /// The last segment's checkpoint: (position, next offset) vouched synced.
    proven: Option<(u64, Offset)>,
    writer: Writer,
}

impl Walk<'_> {
    fn run(
        &mut self,
        (mut expected, mut pos): (Offset, u64),
        limit: u64,
        seen: &mut u64,
        visit: &mut impl FnMut(Item<'_>),
    ) {
        // Beside a running broker: the position whose damage read back the
        // same after a pause (so it is not a write in progress), and how
        // often bytes were still changing.
        let mut confirmed = None;
        let mut unsettled = 0;
        while *seen < limit {
            let reason = match segment::record_at(&mut self.src, pos) {
                At::Valid { offset, len, .. } if offset == expected => {
                    if offset >= self.from {
                        let bytes = self.src.get(pos, len).unwrap_or_default();
                        if let Check::Valid(r) = record::check(bytes) {
                            visit(Item::Record(r));
                            *seen += 1;
                        }
                    }
                    pos += len as u64;
                    expected = Offset(expected.0 + 1);
                    continue;
                }
                At::End if self.next_base.is_none_or(|n| n <= expected) => return,
                At::End => "records missing before the end of the segment",
                At::Valid { .. } => "offset out of sequence",
                At::Invalid(reason) => reason,
                At::Unreadable(_) => "unreadable (I/O error)",
            };
            let in_proven = self.proven.is_some_and(|(end, _)| pos < end);
            let suspect = self.next_base.is_none() && !in_proven && self.writer == Writer::Running;
            if suspect && confirmed != Some(pos) {
                if unsettled == SETTLE_TRIES_MAX {
                    return; // still being written
                }
                let probe = (self.src.end() - pos).min(SETTLE_PROBE_BYTES) as usize;
                if source::settled(self.src.file, pos, probe) {
                    confirmed = Some(pos);
                } else {
                    unsettled += 1;
                }
                self.src.refresh();
                continue; // look again at what is there now
            }
            let end = self.src.end();
            let resume = segment::resync(&mut self.src, pos, expected, self.next_base, end);
            let bad_end = match (resume, self.next_base, self.proven) {
                (Some((_, offset)), _, _) => offset,
                (None, Some(next), _) => next,
                // Synced (the checkpoint vouches for it), so not a torn tail.
                (None, None, Some((_, proven_next))) if in_proven => proven_next,
                // The last segment: a torn tail recovery will cut.
                (None, None, _) => return,
            };
            self.report(expected, bad_end, pos, reason, limit, seen, visit);
            let Some((p, offset)) = resume else { return };
            (expected, pos) = (offset, p);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        first: Offset,
        end: Offset,
        position: u64,
        reason: &'static str,
        limit: u64,
        seen: &mut u64,
        visit: &mut impl FnMut(Item<'_>),
    ) {
        for o in first.0.max(self.from.0)..end.0 {
            if *seen >= limit {
                return;
            }
            visit(Item::Corrupt {
                offset: Offset(o),
                segment: &self.path,
                position,
                reason,
            });
            *seen += 1;
        }
    }
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
    let Some(index) = files::read_sealed_index(storage, dir, base, len) else {
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
