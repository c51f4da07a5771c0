//! Reading: by offset, in order from an offset, and by time.
//!
//! Readers see only durable records (below the published tail). Every record
//! is CRC-checked on every read; a record that fails is quarantined and
//! reported as [`WalError::Corrupt`] (or [`WalError::Unreadable`] for a read
//! error), never returned as data, and it hides only itself: reads of its
//! neighbours resync past it. Segments are read through `pread` windows
//! (`source.rs`), never memory-mapped.
use super::record::{self, Check, RecordView, RECORD_HEADER_BYTES};
use super::segment::{self, Damage, SegmentBytes, SEGMENT_HEADER_BYTES};
use super::shared::{QuarantinedRange, Segment, SegmentFile, Shared, Tail};
use super::source::{Window, WindowedFile};
use super::{Offset, WalError};
use std::sync::Arc;

/// A record copied out of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    pub offset: Offset,
    pub timestamp_ms: u64,
    pub meta: Vec<u8>,
    pub payload: Vec<u8>,
}

impl From<RecordView<'_>> for OwnedRecord {
    fn from(r: RecordView<'_>) -> Self {
        Self {
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            meta: r.meta.to_vec(),
            payload: r.payload.to_vec(),
        }
    }
}

struct Cursor {
    seg: Arc<Segment>,
    file: Arc<SegmentFile>,
    /// Base of the next segment, once known.
    limit: Option<Offset>,
    /// A record position known from the last read: `(offset, position)`.
    known: Option<(Offset, u64)>,
}

/// Reads durable records in offset order. A lending iterator: each record
/// borrows from the reader until the next call.
pub struct LogReader {
    shared: Arc<Shared>,
    next: Offset,
    cur: Option<Cursor>,
    window: Window,
    /// After an error for damage: the first offset past the damaged run,
    /// and whether bytes in the run could not be read.
    damage_end: Option<(Offset, bool)>,
}

impl LogReader {
    pub(crate) fn new(shared: Arc<Shared>, from: Offset) -> Self {
        Self {
            shared,
            next: from,
            cur: None,
            window: Window::new(),
            damage_end: None,
        }
    }

    /// After [`next`](Self::next) failed on damage: the first offset past
    /// the damaged run it belongs to (every offset from the failed one up
    /// to it is unreadable), so scans step over a hole in one move instead
    /// of one offset at a time. `None` after any other outcome.
    pub fn damage_end(&self) -> Option<Offset> {
        self.damage_end.map(|(o, _)| o)
    }

    /// After [`next`](Self::next) failed on damage: whether some bytes of
    /// the damaged run could not be read (a read error, perhaps transient),
    /// even when its first record failed its checks.
    pub fn damage_had_read_error(&self) -> bool {
        self.damage_end.is_some_and(|(_, io)| io)
    }

    /// Offset of the record the next call returns.
    pub fn position(&self) -> Offset {
        self.next
    }

    /// Moves to `offset` (e.g. past a quarantined record).
    pub fn seek(&mut self, offset: Offset) {
        self.next = offset;
    }

    /// The next durable record, `Ok(None)` at the durable end.
    #[allow(clippy::should_implement_trait)] // lending: the item borrows the reader
    pub fn next(&mut self) -> Result<Option<RecordView<'_>>, WalError> {
        self.damage_end = None;
        let tail = self.shared.tail();
        if self.next < tail.start_offset {
            return Err(WalError::Deleted {
                offset: self.next,
                start: tail.start_offset,
            });
        }
        if self.next >= tail.next_offset {
            return Ok(None);
        }
        self.position_cursor(&tail)?;
        let target = self.next;
        let LogReader {
            shared,
            next,
            cur,
            window,
            damage_end,
        } = self;
        let cur = cur.as_mut().expect("positioned above");
        let end = readable_end(&cur.seg, &tail);
        let from = match cur.known {
            Some((o, p)) if o <= target => (o, p),
            _ => index_floor(&cur.file, cur.seg.base, target),
        };
        let limit = Some(cur.limit.unwrap_or(tail.next_offset));
        let mut src = WindowedFile {
            file: cur.file.file.as_ref(),
            window,
            end,
        };
        match segment::find_record(&mut src, from, target, limit) {
            Ok((pos, len)) => {
                cur.known = Some((Offset(target.0 + 1), pos + len as u64));
                *next = Offset(target.0 + 1);
                let bytes = window.buffered(pos, len).expect("find_record just read it");
                match record::check(bytes) {
                    Check::Valid(r) => Ok(Some(r)),
                    _ => unreachable!("find_record checked this record"),
                }
            }
            Err(d) => {
                cur.known = d.resume.filter(|(o, _)| *o > target);
                // Without an intact record after it, the damage runs to the
                // segment's limit (as of this read's tail).
                let past = d.resume.map_or(limit, |(o, _)| Some(o));
                *damage_end = past
                    .filter(|o| *o > target)
                    .map(|o| (o, d.read_error_in_run));
                Err(report_damage(shared, &cur.seg, &d, target))
            }
        }
    }

    /// Makes `cur` the segment holding `next`, open.
    fn position_cursor(&mut self, tail: &Tail) -> Result<(), WalError> {
        let next = self.next;
        let fresh = match &self.cur {
            None => true,
            Some(c) => {
                next < c.seg.base
                    || c.limit.is_some_and(|l| next >= l)
                    || (c.limit.is_none() && c.seg.is_sealed())
            }
        };
        if !fresh {
            return Ok(());
        }
        let (seg, limit) = self.shared.locate(next).ok_or(WalError::Deleted {
            offset: next,
            start: tail.start_offset,
        })?;
        if let Some(c) = self.cur.as_mut().filter(|c| Arc::ptr_eq(&c.seg, &seg)) {
            c.limit = limit;
            return Ok(());
        }
        let file = self.shared.open_segment(&seg, limit)?;
        self.window.clear();
        self.cur = Some(Cursor {
            seg,
            file,
            limit,
            known: None,
        });
        Ok(())
    }
}

/// Where reads of a segment must stop: its sealed end, or the durable end.
fn readable_end(seg: &Segment, tail: &Tail) -> u64 {
    seg.sealed.get().map_or(tail.active_end, |s| s.end)
}

/// Records the damage in the quarantine list and turns it into the error
/// a reader of `target` gets.
fn report_damage(shared: &Shared, seg: &Segment, d: &Damage, target: Offset) -> WalError {
    shared.quarantine(QuarantinedRange {
        segment: seg.path.clone(),
        position: d.position,
        offset: d.offset,
        end_offset: d.resume.map(|(o, _)| o),
        reason: d.reason,
    });
    if d.io {
        WalError::Unreadable {
            segment: seg.path.clone(),
            position: d.position,
            offset: target,
        }
    } else {
        WalError::Corrupt {
            segment: seg.path.clone(),
            position: d.position,
            offset: target,
            reason: d.reason,
        }
    }
}

/// Where to start scanning for `target`: the index point at or before it.
fn index_floor(file: &SegmentFile, base: Offset, target: Offset) -> (Offset, u64) {
    let rel = u32::try_from(target.0 - base.0).unwrap_or(u32::MAX);
    match file.index.read().floor_offset(rel) {
        Some(p) => (
            Offset(base.0 + u64::from(p.relative_offset)),
            u64::from(p.position),
        ),
        None => (base, SEGMENT_HEADER_BYTES as u64),
    }
}

/// The bytes left of a damaged record, for a dead-letter copy: its payload
/// if its header still parses, else the raw damaged bytes (for the first
/// offset of a damaged run whose lengths are lost). Empty when nothing can
/// be attributed to `target` or the bytes cannot be read. `Ok(None)` if the
/// record is not damaged.
pub fn damaged_bytes(shared: &Arc<Shared>, target: Offset) -> Result<Option<Vec<u8>>, WalError> {
    let tail = shared.tail();
    let (seg, limit) = shared.locate(target).ok_or(WalError::Deleted {
        offset: target,
        start: tail.start_offset,
    })?;
    let file = shared.open_segment(&seg, limit)?;
    let mut window = Window::new();
    let mut src = WindowedFile {
        file: file.file.as_ref(),
        window: &mut window,
        end: readable_end(&seg, &tail),
    };
    let from = index_floor(&file, seg.base, target);
    let limit = Some(limit.unwrap_or(tail.next_offset));
    let d = match segment::find_record(&mut src, from, target, limit) {
        Ok(_) => return Ok(None),
        Err(d) => d,
    };
    let range_end = d.resume.map_or(src.end(), |(_, p)| p);
    let (mut pos, mut offset) = (d.position, d.offset);
    while pos < range_end {
        let plausible = src.get(pos, RECORD_HEADER_BYTES).ok().and_then(|h| {
            let len = record::claimed_len(h)?;
            let claims = u64::from_le_bytes(h[8..16].try_into().ok()?);
            (claims == offset.0 && pos + len as u64 <= range_end).then_some(len)
        });
        let Some(len) = plausible else {
            if offset != target {
                return Ok(Some(Vec::new()));
            }
            let n = (range_end - pos).min(record::RECORD_BYTES_MAX as u64) as usize;
            return Ok(Some(
                src.get(pos, n).map(<[u8]>::to_vec).unwrap_or_default(),
            ));
        };
        if offset == target {
            let raw = src.get(pos, len).map(<[u8]>::to_vec).unwrap_or_default();
            return Ok(Some(
                record::payload_of(&raw).map_or(raw.clone(), <[u8]>::to_vec),
            ));
        }
        pos += len as u64;
        offset = Offset(offset.0 + 1);
    }
    Ok(Some(Vec::new()))
}

/// First offset appended at or after `timestamp_ms`.
pub fn offset_for_time(
    shared: &Arc<Shared>,
    timestamp_ms: u64,
) -> Result<Option<Offset>, WalError> {
    let segs: Vec<Arc<Segment>> = shared.segments.read().clone();
    let tail = shared.tail();
    // Segments are in time order: find the first whose newest record is
    // recent enough (binary search, opening only the segments it probes).
    let newest = |i: usize| -> Result<u64, WalError> {
        match segs[i].sealed.get() {
            None => Ok(tail.last_timestamp_ms),
            Some(_) => shared.max_timestamp(&segs[i], segs.get(i + 1).map(|s| s.base)),
        }
    };
    let (mut lo, mut hi) = (0, segs.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if newest(mid)? < timestamp_ms {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let Some(seg) = segs.get(lo) else {
        return Ok(None);
    };
    let file = shared.open_segment(seg, segs.get(lo + 1).map(|s| s.base))?;
    let start = match file.index.read().floor_time(timestamp_ms) {
        Some(p) => Offset(seg.base.0 + u64::from(p.relative_offset)),
        None => seg.base.max(tail.start_offset),
    };
    let mut reader = LogReader::new(shared.clone(), start);
    loop {
        match reader.next() {
            Ok(Some(rec)) if rec.timestamp_ms >= timestamp_ms => return Ok(Some(rec.offset)),
            Ok(Some(_)) => {}
            Ok(None) => return Ok(None),
            // A damaged record has no trustworthy time: look past it.
            Err(WalError::Corrupt { offset, .. } | WalError::Unreadable { offset, .. }) => {
                let past = reader.damage_end().unwrap_or(Offset(offset.0 + 1));
                reader.seek(past)
            }
            Err(e) => return Err(e),
        }
    }
}
