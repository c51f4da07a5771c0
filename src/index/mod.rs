//! Sparse per-segment indexes: offset → file position and timestamp → offset.
//!
//! One entry per [`INDEX_INTERVAL_BYTES`](crate::constants::INDEX_INTERVAL_BYTES)
//! of log, so a lookup scans at most that much after the hit. Entries are
//! held in memory: the active segment's are appended as records are written
//! (and to their files, made durable at each recovery checkpoint); a sealed
//! segment's are read from its index files with `pread` when the segment is
//! opened, never memory-mapped, so a media error is an error, not a SIGBUS.
//! Indexes are derived data: anything that does not check out is rebuilt from
//! the log, never trusted. This module never reads the log itself.
mod file;

pub use file::{IndexHeader, IndexKind, INDEX_HEADER_BYTES};

/// Bytes of one offset-index entry: relative offset u32, position u32.
pub const OFFSET_ENTRY_BYTES: usize = 8;
/// Bytes of one time-index entry: timestamp u64, relative offset u32.
pub const TIME_ENTRY_BYTES: usize = 12;

/// Both indexes of one segment. Entries are added in pairs, so both hold the
/// same number of entries, describing the same records.
pub struct SegmentIndex {
    offsets: Vec<u8>,
    times: Vec<u8>,
    count: usize,
}

/// One index point: a record's offset (relative to the segment base), its
/// byte position in the segment and its timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexPoint {
    pub relative_offset: u32,
    pub position: u32,
    pub timestamp_ms: u64,
}

impl SegmentIndex {
    pub fn empty() -> Self {
        Self {
            offsets: Vec::new(),
            times: Vec::new(),
            count: 0,
        }
    }

    /// An index holding `points` (which must be strictly increasing).
    pub fn from_points(points: &[IndexPoint]) -> Self {
        let mut idx = Self::empty();
        points.iter().for_each(|p| idx.push(*p));
        idx
    }

    /// Wraps entry bytes read from sealed index files whose headers and
    /// CRCs were verified for `count` entries.
    pub fn from_entries(offsets: Vec<u8>, times: Vec<u8>, count: usize) -> Self {
        assert_eq!(
            offsets.len(),
            count * OFFSET_ENTRY_BYTES,
            "verified by caller"
        );
        assert_eq!(times.len(), count * TIME_ENTRY_BYTES, "verified by caller");
        Self {
            offsets,
            times,
            count,
        }
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends a point (the active segment's index grows as records are written).
    pub fn push(&mut self, p: IndexPoint) {
        if let Some(last) = self.last() {
            assert!(p.relative_offset > last.relative_offset && p.position > last.position);
            debug_assert!(p.timestamp_ms >= last.timestamp_ms);
        }
        self.offsets.extend_from_slice(&encode_offset_entry(p));
        self.times.extend_from_slice(&encode_time_entry(p));
        self.count += 1;
    }

    pub fn point(&self, i: usize) -> IndexPoint {
        assert!(i < self.count);
        let o = &self.offsets[i * OFFSET_ENTRY_BYTES..(i + 1) * OFFSET_ENTRY_BYTES];
        let t = &self.times[i * TIME_ENTRY_BYTES..(i + 1) * TIME_ENTRY_BYTES];
        IndexPoint {
            relative_offset: le_u32(&o[0..4]),
            position: le_u32(&o[4..8]),
            timestamp_ms: u64::from_le_bytes(t[0..8].try_into().expect("8 bytes")),
        }
    }

    pub fn last(&self) -> Option<IndexPoint> {
        self.count.checked_sub(1).map(|i| self.point(i))
    }

    /// The last point at or before `relative_offset`, if any.
    pub fn floor_offset(&self, relative_offset: u32) -> Option<IndexPoint> {
        let n = partition_point(self.count, |i| {
            self.point(i).relative_offset <= relative_offset
        });
        n.checked_sub(1).map(|i| self.point(i))
    }

    /// The last point whose timestamp is strictly before `timestamp_ms`: every
    /// record before it is older than the target, so a search may start there.
    pub fn floor_time(&self, timestamp_ms: u64) -> Option<IndexPoint> {
        let n = partition_point(self.count, |i| self.point(i).timestamp_ms < timestamp_ms);
        n.checked_sub(1).map(|i| self.point(i))
    }

    /// Entry bytes of the first `count` points, for writing index files.
    pub fn offset_entry_bytes(&self, count: usize) -> &[u8] {
        &self.offsets[..count * OFFSET_ENTRY_BYTES]
    }

    pub fn time_entry_bytes(&self, count: usize) -> &[u8] {
        &self.times[..count * TIME_ENTRY_BYTES]
    }
}

pub fn encode_offset_entry(p: IndexPoint) -> [u8; OFFSET_ENTRY_BYTES] {
    let mut e = [0u8; OFFSET_ENTRY_BYTES];
    e[0..4].copy_from_slice(&p.relative_offset.to_le_bytes());
    e[4..8].copy_from_slice(&p.position.to_le_bytes());
    e
}

pub fn encode_time_entry(p: IndexPoint) -> [u8; TIME_ENTRY_BYTES] {
    let mut e = [0u8; TIME_ENTRY_BYTES];
    e[0..8].copy_from_slice(&p.timestamp_ms.to_le_bytes());
    e[8..12].copy_from_slice(&p.relative_offset.to_le_bytes());
    e
}

/// Decodes `count` entries from raw index files and checks they describe a
/// strictly increasing sequence inside `[header_end, log_end)`; used to
/// accept an index (or a checkpointed prefix of one) without reading the log.
pub fn decode_points(
    offsets: &[u8],
    times: &[u8],
    count: usize,
    log_end: u64,
) -> Option<Vec<IndexPoint>> {
    if offsets.len() < count * OFFSET_ENTRY_BYTES || times.len() < count * TIME_ENTRY_BYTES {
        return None;
    }
    let mut out: Vec<IndexPoint> = Vec::with_capacity(count);
    for i in 0..count {
        let o = &offsets[i * OFFSET_ENTRY_BYTES..];
        let t = &times[i * TIME_ENTRY_BYTES..];
        let p = IndexPoint {
            relative_offset: le_u32(&o[0..4]),
            position: le_u32(&o[4..8]),
            timestamp_ms: u64::from_le_bytes(t[0..8].try_into().ok()?),
        };
        if le_u32(&t[8..12]) != p.relative_offset || u64::from(p.position) >= log_end {
            return None;
        }
        if let Some(prev) = out.last() {
            let increasing = p.relative_offset > prev.relative_offset && p.position > prev.position;
            if !increasing || p.timestamp_ms < prev.timestamp_ms {
                return None;
            }
        }
        out.push(p);
    }
    Some(out)
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Number of leading indices in `0..n` for which `pred` holds (pred must be monotone).
fn partition_point(n: usize, pred: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, n);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SegmentIndex {
        let mut idx = SegmentIndex::empty();
        for i in 0..10u32 {
            idx.push(IndexPoint {
                relative_offset: i * 10,
                position: 64 + i * 4096,
                timestamp_ms: 1000 + u64::from(i) * 5,
            });
        }
        idx
    }

    #[test]
    fn floor_offset_finds_last_point_not_after_target() {
        let idx = sample();
        assert_eq!(idx.floor_offset(0).map(|p| p.relative_offset), Some(0));
        assert_eq!(idx.floor_offset(35).map(|p| p.relative_offset), Some(30));
        assert_eq!(idx.floor_offset(90).map(|p| p.relative_offset), Some(90));
        assert_eq!(
            idx.floor_offset(1_000_000).map(|p| p.relative_offset),
            Some(90)
        );
    }

    #[test]
    fn floor_time_is_strictly_before_target() {
        let idx = sample();
        assert_eq!(idx.floor_time(1000), None);
        assert_eq!(idx.floor_time(1001).map(|p| p.relative_offset), Some(0));
        assert_eq!(idx.floor_time(1010).map(|p| p.relative_offset), Some(10));
    }

    #[test]
    fn decode_points_rejects_non_monotone_entries() {
        let idx = sample();
        let (o, t) = (
            idx.offset_entry_bytes(10).to_vec(),
            idx.time_entry_bytes(10).to_vec(),
        );
        assert_eq!(
            decode_points(&o, &t, 10, 1 << 20).map(|v| v.len()),
            Some(10)
        );
        let mut bad = o.clone();
        bad[8 * 3..8 * 3 + 4].copy_from_slice(&0u32.to_le_bytes());
        assert!(decode_points(&bad, &t, 10, 1 << 20).is_none());
        assert!(
            decode_points(&o, &t, 10, 100).is_none(),
            "positions past the log end are rejected"
        );
    }
}
