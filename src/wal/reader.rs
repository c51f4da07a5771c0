//! Reading: by offset, in order from an offset, and by time.
//!
//! Readers see only durable records (below the published tail). Every record
//! is CRC-checked on every read; a record that fails is quarantined and
//! reported as [`WalError::Corrupt`], never returned as data. Sealed
//! segments are read zero-copy from their memory maps.
use super::record::RecordView;
use super::segment::{self, SEGMENT_HEADER_BYTES};
use super::shared::{QuarantinedRange, Segment, Shared, Tail};
use super::{Offset, WalError};
use crate::storage::Mapping;
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
    /// Base of the next segment, once known.
    limit: Option<Offset>,
    map: Arc<Mapping>,
    /// Leading bytes of `map` that are valid.
    valid: u64,
    /// Position of the record at the reader's `next` offset, if known.
    pos: Option<u64>,
}

/// Reads durable records in offset order. A lending iterator: each record
/// borrows from the reader until the next call.
pub struct LogReader {
    shared: Arc<Shared>,
    next: Offset,
    cur: Option<Cursor>,
}

impl LogReader {
    pub(crate) fn new(shared: Arc<Shared>, from: Offset) -> Self {
        Self {
            shared,
            next: from,
            cur: None,
        }
    }

    /// Offset of the record the next call returns.
    pub fn position(&self) -> Offset {
        self.next
    }

    /// Moves to `offset` (e.g. past a quarantined record).
    pub fn seek(&mut self, offset: Offset) {
        self.next = offset;
        if let Some(c) = &mut self.cur {
            c.pos = None;
        }
    }

    /// The next durable record, `Ok(None)` at the durable end.
    #[allow(clippy::should_implement_trait)] // lending: the item borrows the reader
    pub fn next(&mut self) -> Result<Option<RecordView<'_>>, WalError> {
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
        let cur = self.cur.as_mut().expect("positioned above");
        let from = match cur.pos {
            Some(p) => (target, p),
            None => index_floor(&cur.seg, target),
        };
        match segment::find_record(&cur.map, cur.seg.base, from, target) {
            Ok((pos, rec)) => {
                cur.pos = Some(pos + rec.encoded_len() as u64);
                self.next = Offset(target.0 + 1);
                Ok(Some(rec))
            }
            Err(d) => {
                let segment = cur.seg.path.clone();
                self.shared.quarantine(QuarantinedRange {
                    segment: segment.clone(),
                    position: d.position,
                    offset: d.offset,
                    reason: d.reason,
                });
                cur.pos = None;
                Err(WalError::Corrupt {
                    segment,
                    position: d.position,
                    offset: target,
                    reason: d.reason,
                })
            }
        }
    }

    /// Makes `cur` the segment holding `next`, mapped far enough.
    fn position_cursor(&mut self, tail: &Tail) -> Result<(), WalError> {
        let next = self.next;
        let stale = match &self.cur {
            None => true,
            Some(c) => {
                next < c.seg.base
                    || c.limit.is_some_and(|l| next >= l)
                    || (c.limit.is_none() && c.seg.sealed.get().is_some())
            }
        };
        if stale {
            let (seg, limit) = self.shared.locate(next).ok_or(WalError::Deleted {
                offset: next,
                start: tail.start_offset,
            })?;
            let same = self.cur.as_ref().is_some_and(|c| Arc::ptr_eq(&c.seg, &seg));
            let pos = if same {
                self.cur.as_ref().and_then(|c| c.pos)
            } else {
                None
            };
            let (map, valid) = seg.map.read().clone();
            self.cur = Some(Cursor {
                seg,
                limit,
                map,
                valid,
                pos,
            });
        }
        let cur = self.cur.as_mut().expect("set above");
        let need = cur.seg.sealed.get().map_or(tail.active_end, |s| s.end);
        if cur.valid < need {
            (cur.map, cur.valid) = cur
                .seg
                .map_covering(need)
                .map_err(|e| WalError::io(&cur.seg.path, e))?;
        }
        Ok(())
    }
}

/// Where to start scanning for `target`: the index point at or before it.
fn index_floor(seg: &Segment, target: Offset) -> (Offset, u64) {
    let rel = u32::try_from(target.0 - seg.base.0).unwrap_or(u32::MAX);
    match seg.index.read().floor_offset(rel) {
        Some(p) => (
            Offset(seg.base.0 + u64::from(p.relative_offset)),
            u64::from(p.position),
        ),
        None => (seg.base, SEGMENT_HEADER_BYTES as u64),
    }
}

/// First offset appended at or after `timestamp_ms`.
pub fn offset_for_time(
    shared: &Arc<Shared>,
    timestamp_ms: u64,
) -> Result<Option<Offset>, WalError> {
    let segs: Vec<Arc<Segment>> = shared.segments.read().clone();
    let tail = shared.tail();
    for seg in segs {
        let max_ts = seg
            .sealed
            .get()
            .map_or(tail.last_timestamp_ms, |s| s.max_timestamp_ms);
        if max_ts < timestamp_ms {
            continue;
        }
        let start = match seg.index.read().floor_time(timestamp_ms) {
            Some(p) => Offset(seg.base.0 + u64::from(p.relative_offset)),
            None => seg.base.max(tail.start_offset),
        };
        let mut reader = LogReader::new(shared.clone(), start);
        while let Some(rec) = reader.next()? {
            if rec.timestamp_ms >= timestamp_ms {
                return Ok(Some(rec.offset));
            }
        }
        return Ok(None);
    }
    Ok(None)
}
