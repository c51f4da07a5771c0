//! Segment files: naming, the segment header, and scanning record runs.
//!
//! ```text
//! segment header, 64 bytes, little endian
//! 0   [u8; 8] magic        "ORDLYSEG"
//! 8   u16     version      1
//! 10  u16     header_bytes 64
//! 12  u32     reserved     0
//! 16  u64     base_offset  offset of the first record; also the file name
//! 24  u64     created_ms   wall clock at creation (age-based rolling)
//! 32  [u8;28] reserved     0
//! 60  u32     header_crc   crc32 of bytes 0..60
//! ```
//! Records follow back to back from byte 64 (see `record`). The scanning
//! functions here are pure: they take bytes and report what checks out.
use super::record::{self, Check, RecordView};
use super::Offset;
use crate::constants::INDEX_INTERVAL_BYTES;
use crate::index::IndexPoint;
use std::path::{Path, PathBuf};

pub const SEGMENT_HEADER_BYTES: usize = 64;
const MAGIC: &[u8; 8] = b"ORDLYSEG";
const VERSION: u16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    pub base_offset: Offset,
    pub created_ms: u64,
}

impl SegmentHeader {
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut h = [0u8; SEGMENT_HEADER_BYTES];
        h[0..8].copy_from_slice(MAGIC);
        h[8..10].copy_from_slice(&VERSION.to_le_bytes());
        h[10..12].copy_from_slice(&(SEGMENT_HEADER_BYTES as u16).to_le_bytes());
        h[16..24].copy_from_slice(&self.base_offset.0.to_le_bytes());
        h[24..32].copy_from_slice(&self.created_ms.to_le_bytes());
        let crc = crc32fast::hash(&h[0..60]);
        h[60..64].copy_from_slice(&crc.to_le_bytes());
        h
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, &'static str> {
        let h = bytes
            .get(..SEGMENT_HEADER_BYTES)
            .ok_or("file shorter than the segment header")?;
        if &h[0..8] != MAGIC {
            return Err("bad magic (not an Orderly segment)");
        }
        if crc32fast::hash(&h[0..60]).to_le_bytes() != h[60..64] {
            return Err("header checksum mismatch");
        }
        if u16::from_le_bytes([h[8], h[9]]) != VERSION {
            return Err("unsupported segment format version");
        }
        if usize::from(u16::from_le_bytes([h[10], h[11]])) != SEGMENT_HEADER_BYTES {
            return Err("unexpected header size");
        }
        Ok(Self {
            base_offset: Offset(u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"))),
            created_ms: u64::from_le_bytes(h[24..32].try_into().expect("8 bytes")),
        })
    }
}

/// `<dir>/<20-digit base>.<ext>`
pub fn file_path(dir: &Path, base: Offset, ext: &str) -> PathBuf {
    dir.join(format!("{:020}.{ext}", base.0))
}

/// The base offset encoded in a segment file name, if `name` is one.
pub fn parse_segment_name(name: &str) -> Option<Offset> {
    let stem = name.strip_suffix(".log")?;
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok().map(Offset))?
}

/// Whether a record at `position` gets an index point, given the last point.
/// Deterministic in positions alone, so a rebuilt index equals the original.
pub fn wants_index_point(last: Option<IndexPoint>, position: u64) -> bool {
    match last {
        None => true,
        Some(p) => position >= u64::from(p.position) + u64::from(INDEX_INTERVAL_BYTES),
    }
}

/// Where a scan of consecutive valid records stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The bytes ran out exactly at a record boundary.
    End,
    /// Bytes at `position` are not a valid next record.
    Invalid { position: u64, reason: &'static str },
}

/// The run of valid records a scan found.
#[derive(Debug)]
pub struct Run {
    /// Position just after the last valid record.
    pub end: u64,
    pub next_offset: Offset,
    pub last_timestamp_ms: u64,
    pub records: u64,
    /// Index points for the scanned records, continuing from the caller's last point.
    pub points: Vec<IndexPoint>,
    pub stop: Stop,
}

/// Scans valid, dense, time-ordered records of segment `base` in `bytes`
/// from `start` until the first thing that does not check out.
pub fn scan_run(
    bytes: &[u8],
    base: Offset,
    start: u64,
    next: Offset,
    last_ts: u64,
    last_point: Option<IndexPoint>,
) -> Run {
    let mut run = Run {
        end: start,
        next_offset: next,
        last_timestamp_ms: last_ts,
        records: 0,
        points: Vec::new(),
        stop: Stop::End,
    };
    let mut last_point = last_point;
    loop {
        let pos = run.end;
        let Some(rest) = bytes.get(pos as usize..) else {
            run.stop = Stop::Invalid {
                position: pos,
                reason: "position past end of file",
            };
            return run;
        };
        if rest.is_empty() {
            return run;
        }
        let rec = match record::check(rest) {
            Check::Valid(r) => r,
            Check::Incomplete => {
                run.stop = Stop::Invalid {
                    position: pos,
                    reason: "record cut short by end of file",
                };
                return run;
            }
            Check::Invalid(reason) => {
                run.stop = Stop::Invalid {
                    position: pos,
                    reason,
                };
                return run;
            }
        };
        if let Err(reason) = fits_sequence(&rec, run.next_offset, run.last_timestamp_ms) {
            run.stop = Stop::Invalid {
                position: pos,
                reason,
            };
            return run;
        }
        if wants_index_point(last_point, pos) {
            let p = point_for(base, &rec, pos);
            run.points.push(p);
            last_point = Some(p);
        }
        run.end = pos + rec.encoded_len() as u64;
        run.next_offset = Offset(rec.offset.0 + 1);
        run.last_timestamp_ms = rec.timestamp_ms;
        run.records += 1;
    }
}

fn fits_sequence(rec: &RecordView<'_>, next: Offset, last_ts: u64) -> Result<(), &'static str> {
    if rec.offset != next {
        return Err("offset out of sequence");
    }
    if rec.timestamp_ms < last_ts {
        return Err("timestamp went backwards");
    }
    Ok(())
}

pub fn point_for(base: Offset, rec: &RecordView<'_>, position: u64) -> IndexPoint {
    IndexPoint {
        relative_offset: u32::try_from(rec.offset.0 - base.0)
            .expect("segment holds < 2^32 records"),
        position: u32::try_from(position).expect("segment smaller than 4 GiB"),
        timestamp_ms: rec.timestamp_ms,
    }
}

/// Looks for the next valid record after corruption at `bad_position`: one
/// with a valid CRC whose offset lies in `(expected, limit)`. Returns its
/// position and view. Used only on damaged sealed segments, so a byte-wise
/// search is fine.
pub fn resync(
    bytes: &[u8],
    bad_position: u64,
    expected: Offset,
    limit: Option<Offset>,
) -> Option<(u64, RecordView<'_>)> {
    let limit = limit.map_or(u64::MAX, |l| l.0);
    for pos in bad_position as usize + 1..bytes.len() {
        if let Check::Valid(r) = record::check(&bytes[pos..]) {
            if r.offset.0 > expected.0 && r.offset.0 < limit {
                return Some((pos as u64, r));
            }
        }
    }
    None
}

/// Returns the record with `target` offset, scanning from the index point
/// at or before it. `Err` carries the position and reason when the bytes on
/// the way do not check out, with the offset expected there.
pub fn find_record<'a>(
    bytes: &'a [u8],
    base: Offset,
    from: (Offset, u64),
    target: Offset,
) -> Result<(u64, RecordView<'a>), Damage> {
    let (mut expected, mut pos) = from;
    loop {
        let damage = |reason| Damage {
            position: pos,
            offset: expected,
            reason,
        };
        let rest = bytes
            .get(pos as usize..)
            .ok_or(damage("position past end of segment"))?;
        let rec = match record::check(rest) {
            Check::Valid(r) => r,
            Check::Incomplete => return Err(damage("record cut short")),
            Check::Invalid(reason) => return Err(damage(reason)),
        };
        if rec.offset != expected {
            return Err(damage("offset out of sequence"));
        }
        if rec.offset == target {
            debug_assert!(target.0 >= base.0);
            return Ok((pos, rec));
        }
        pos += rec.encoded_len() as u64;
        expected = Offset(expected.0 + 1);
    }
}

/// Where a read found bytes that do not check out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    pub position: u64,
    pub offset: Offset,
    pub reason: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segment_with(n: u64, base: u64) -> Vec<u8> {
        let mut buf = SegmentHeader {
            base_offset: Offset(base),
            created_ms: 5,
        }
        .encode()
        .to_vec();
        for i in 0..n {
            record::encode(&mut buf, Offset(base + i), 100 + i, b"", &vec![b'x'; 1000]);
        }
        buf
    }

    #[test]
    fn header_round_trips() {
        let h = SegmentHeader {
            base_offset: Offset(77),
            created_ms: 123,
        };
        assert_eq!(SegmentHeader::decode(&h.encode()), Ok(h));
        let mut bad = h.encode();
        bad[20] ^= 1;
        assert!(SegmentHeader::decode(&bad).is_err());
    }

    #[test]
    fn names_parse_only_20_digit_log_files() {
        assert_eq!(
            parse_segment_name("00000000000000000042.log"),
            Some(Offset(42))
        );
        assert_eq!(parse_segment_name("42.log"), None);
        assert_eq!(parse_segment_name("00000000000000000042.index"), None);
        assert_eq!(
            file_path(Path::new("/q"), Offset(42), "log"),
            PathBuf::from("/q/00000000000000000042.log")
        );
    }

    #[test]
    fn scan_stops_at_torn_record_and_indexes_every_interval() {
        let seg = segment_with(20, 10);
        let run = scan_run(&seg, Offset(10), 64, Offset(10), 0, None);
        assert_eq!(
            (run.records, run.next_offset, run.stop.clone()),
            (20, Offset(30), Stop::End)
        );
        assert!(
            run.points.len() >= 4,
            "one point per ~4 KiB of 1 KiB records"
        );
        let torn = &seg[..seg.len() - 10];
        let run = scan_run(torn, Offset(10), 64, Offset(10), 0, None);
        assert_eq!(run.records, 19);
        assert!(matches!(run.stop, Stop::Invalid { .. }));
    }

    #[test]
    fn resync_finds_the_next_valid_record_after_damage() {
        let mut seg = segment_with(5, 0);
        let second = 64 + record::RECORD_HEADER_BYTES + 1000;
        seg[second + 40] ^= 0xff;
        let run = scan_run(&seg, Offset(0), 64, Offset(0), 0, None);
        assert_eq!(run.records, 1);
        let Stop::Invalid { position, .. } = run.stop else {
            panic!("expected damage")
        };
        let (pos, rec) = resync(&seg, position, Offset(1), None).expect("record 2 is intact");
        assert_eq!(rec.offset, Offset(2));
        assert_eq!(pos as usize, second + record::RECORD_HEADER_BYTES + 1000);
    }
}
