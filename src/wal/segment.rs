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
use super::record::{self, Check};
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

/// Random access to the bytes of one segment file up to a readable end (the
/// file's length, or the durable end of the active segment). Implemented for
/// slices (pure tests) and for `pread` windows over files (`source.rs`).
pub trait SegmentBytes {
    /// The readable end: nothing at or after it is ever returned.
    fn end(&self) -> u64;
    /// The bytes at `[pos, pos + len)`, shorter only where `end` (or the file)
    /// stops first; `Err` when some of them cannot be read (a media error).
    fn get(&mut self, pos: u64, len: usize) -> Result<&[u8], Unreadable>;
}

/// Bytes a read failed on: the block holding `position`, up to `resume`,
/// where reading may be tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreadable {
    pub position: u64,
    pub resume: u64,
}

impl SegmentBytes for &[u8] {
    fn end(&self) -> u64 {
        self.len() as u64
    }

    fn get(&mut self, pos: u64, len: usize) -> Result<&[u8], Unreadable> {
        let start = (pos as usize).min(self.len());
        let stop = start.saturating_add(len).min(self.len());
        Ok(&self[start..stop])
    }
}

/// What a reader finds at a position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum At {
    /// A record whose lengths agree and whose CRC matches.
    Valid {
        offset: Offset,
        timestamp_ms: u64,
        len: usize,
    },
    /// Exactly at the readable end.
    End,
    /// Bytes that are not a record: zeros, torn or damaged data.
    Invalid(&'static str),
    /// Bytes that cannot be read.
    Unreadable(Unreadable),
}

/// Checks the record starting at `pos`, reading only its own bytes.
pub fn record_at<S: SegmentBytes + ?Sized>(src: &mut S, pos: u64) -> At {
    let end = src.end();
    if pos >= end {
        return if pos == end {
            At::End
        } else {
            At::Invalid("position past end of file")
        };
    }
    let total = match src.get(pos, record::RECORD_HEADER_BYTES) {
        Err(u) => return At::Unreadable(u),
        Ok(head) => match record::check(head) {
            Check::Incomplete if head.len() == record::RECORD_HEADER_BYTES => {
                let total = record::claimed_len(head).expect("Incomplete means a plausible length");
                // Lengths up to 1 GiB are plausible; one that runs past the
                // readable end cannot be a whole record, and reading it to
                // find out would make a resync over damage quadratic.
                if pos.saturating_add(total as u64) > end {
                    return At::Invalid("record cut short by end of file");
                }
                total
            }
            Check::Incomplete => return At::Invalid("record cut short by end of file"),
            Check::Invalid(reason) => return At::Invalid(reason),
            Check::Valid(r) => r.encoded_len(),
        },
    };
    match src.get(pos, total).map(record::check) {
        Err(u) => At::Unreadable(u),
        Ok(Check::Valid(r)) => At::Valid {
            offset: r.offset,
            timestamp_ms: r.timestamp_ms,
            len: total,
        },
        Ok(Check::Incomplete) => At::Invalid("record cut short by end of file"),
        Ok(Check::Invalid(reason)) => At::Invalid(reason),
    }
}

/// Where a scan of consecutive valid records stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The bytes ran out exactly at a record boundary.
    End,
    /// Bytes at `position` are not a valid next record.
    Invalid { position: u64, reason: &'static str },
    /// Bytes at `position` cannot be read (a media error).
    Unreadable { position: u64, resume: u64 },
}

impl Stop {
    /// Where the damage starts and why, if the scan stopped at damage.
    pub fn damage(&self) -> Option<(u64, &'static str)> {
        match *self {
            Stop::End => None,
            Stop::Invalid { position, reason } => Some((position, reason)),
            Stop::Unreadable { position, .. } => Some((position, "unreadable (I/O error)")),
        }
    }
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

/// Scans valid, dense, time-ordered records of segment `base` from `start`
/// until the first thing that does not check out.
pub fn scan_run<S: SegmentBytes + ?Sized>(
    src: &mut S,
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
        let (offset, ts, len) = match record_at(src, pos) {
            At::End => return run,
            At::Valid {
                offset,
                timestamp_ms,
                len,
            } => (offset, timestamp_ms, len),
            At::Invalid(reason) => {
                run.stop = Stop::Invalid {
                    position: pos,
                    reason,
                };
                return run;
            }
            At::Unreadable(u) => {
                run.stop = Stop::Unreadable {
                    position: pos,
                    resume: u.resume,
                };
                return run;
            }
        };
        if let Err(reason) = fits_sequence(offset, ts, run.next_offset, run.last_timestamp_ms) {
            run.stop = Stop::Invalid {
                position: pos,
                reason,
            };
            return run;
        }
        if wants_index_point(last_point, pos) {
            let p = point_for(base, offset, ts, pos);
            run.points.push(p);
            last_point = Some(p);
        }
        run.end = pos + len as u64;
        run.next_offset = Offset(offset.0 + 1);
        run.last_timestamp_ms = ts;
        run.records += 1;
    }
}

fn fits_sequence(offset: Offset, ts: u64, next: Offset, last_ts: u64) -> Result<(), &'static str> {
    if offset != next {
        return Err("offset out of sequence");
    }
    if ts < last_ts {
        return Err("timestamp went backwards");
    }
    Ok(())
}

pub fn point_for(base: Offset, offset: Offset, timestamp_ms: u64, position: u64) -> IndexPoint {
    IndexPoint {
        relative_offset: u32::try_from(offset.0 - base.0).expect("segment holds < 2^32 records"),
        position: u32::try_from(position).expect("segment smaller than 4 GiB"),
        timestamp_ms,
    }
}

/// A damaged run followed by an intact record: a hole in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hole {
    /// Where the damage starts.
    pub position: u64,
    /// First damaged offset.
    pub offset: Offset,
    /// The intact record after the damage: its offset and position.
    pub end_offset: Offset,
    pub resume_position: u64,
    pub reason: &'static str,
}

/// What a scan that resyncs past damage found.
#[derive(Debug)]
pub struct Scan {
    /// Position just after the last intact record.
    pub end: u64,
    pub next_offset: Offset,
    pub last_timestamp_ms: u64,
    pub records: u64,
    pub points: Vec<IndexPoint>,
    pub holes: Vec<Hole>,
    /// Damage with no intact record after it: where it starts and why.
    pub tail: Option<(u64, &'static str)>,
    /// That damage is a read error (a bad sector), not bytes that fail
    /// their checks (which a torn write leaves).
    pub tail_unreadable: bool,
}

/// Scans from `start` to the readable end, resyncing past damage (offsets
/// below `limit`): every damaged run followed by an intact record is a
/// hole; damage with nothing intact after it ends the scan as `tail`.
pub fn scan_resyncing<S: SegmentBytes + ?Sized>(
    src: &mut S,
    base: Offset,
    (start, next, last_ts): (u64, Offset, u64),
    points: Vec<IndexPoint>,
    limit: Option<Offset>,
) -> Scan {
    let mut scan = Scan {
        end: start,
        next_offset: next,
        last_timestamp_ms: last_ts,
        records: 0,
        points,
        holes: Vec::new(),
        tail: None,
        tail_unreadable: false,
    };
    let mut start = start;
    loop {
        let last_point = scan.points.last().copied();
        let run = scan_run(
            src,
            base,
            start,
            scan.next_offset,
            scan.last_timestamp_ms,
            last_point,
        );
        scan.points.extend(&run.points);
        scan.records += run.records;
        (scan.end, scan.next_offset, scan.last_timestamp_ms) =
            (run.end, run.next_offset, run.last_timestamp_ms);
        let Some((position, reason)) = run.stop.damage() else {
            return scan;
        };
        let until = src.end();
        // A segment holds fewer than 2^32 records (index points store the
        // offset relative to the base in a u32): a "record" further away
        // is foreign bytes, not a place to resume (found by the
        // segment_scan fuzz target, which made the index point panic).
        let most = Offset(base.0.saturating_add(u64::from(u32::MAX)));
        let limit = Some(limit.map_or(most, |l| l.min(most)));
        match resync(src, position, scan.next_offset, limit, until) {
            Some((pos, offset)) => {
                scan.holes.push(Hole {
                    position,
                    offset: scan.next_offset,
                    end_offset: offset,
                    resume_position: pos,
                    reason,
                });
                (start, scan.next_offset) = (pos, offset);
            }
            None => {
                scan.tail = Some((position, reason));
                scan.tail_unreadable = matches!(run.stop, Stop::Unreadable { .. });
                return scan;
            }
        }
    }
}

/// Bytes looked at per step of a resync's search for non-zero bytes.
const RESYNC_PROBE_BYTES: usize = 4096;

/// Looks for the next valid record after damage at `bad_position`: one with
/// a valid CRC whose offset lies in `(expected, limit)`, starting before
/// `until`. Returns its position and offset. Runs of zeros (unwritten space)
/// are skipped a word at a time and unreadable blocks as a whole, so a
/// search over a mostly empty segment costs a read of it, not a check at
/// every byte.
pub fn resync<S: SegmentBytes + ?Sized>(
    src: &mut S,
    bad_position: u64,
    expected: Offset,
    limit: Option<Offset>,
    until: u64,
) -> Option<(u64, Offset)> {
    resync_noting_read_errors(src, bad_position, expected, limit, until, &mut false)
}

/// [`resync`], setting `read_error` when it stepped over bytes that could
/// not be read (the damaged run then holds a read error somewhere, which
/// may be transient, whatever its first record's damage was).
fn resync_noting_read_errors<S: SegmentBytes + ?Sized>(
    src: &mut S,
    bad_position: u64,
    expected: Offset,
    limit: Option<Offset>,
    until: u64,
    read_error: &mut bool,
) -> Option<(u64, Offset)> {
    let limit = limit.map_or(u64::MAX, |l| l.0);
    let until = until.min(src.end());
    let mut pos = bad_position + 1;
    while pos < until {
        let probe = match src.get(pos, RESYNC_PROBE_BYTES) {
            Err(u) => {
                *read_error = true;
                pos = u.resume.max(pos + 1);
                continue;
            }
            Ok(b) if b.len() < record::RECORD_HEADER_BYTES => return None,
            Ok(b) => b,
        };
        // A record's first four bytes (its length) are never all zero, so
        // no record starts where four zero bytes follow.
        let zeros = leading_zeros(probe);
        if zeros >= 4 {
            pos += (zeros - 3) as u64;
            continue;
        }
        if let At::Valid { offset, .. } = record_at(src, pos) {
            if offset.0 > expected.0 && offset.0 < limit {
                return Some((pos, offset));
            }
        }
        pos += 1;
    }
    None
}

/// The hole recovery keeps for unreadable bytes at `from` with nothing
/// intact after them (FORMAT.md r22): they end at the last nonzero (or
/// unreadable) byte, and may hold one record per record header that fits.
/// Returns `(end position, offsets it spans)`.
pub fn unreadable_tail_span<S: SegmentBytes + ?Sized>(src: &mut S, from: u64) -> (u64, u64) {
    let to = nonzero_end(src, from).max(from);
    let most = (to - from)
        .div_ceil(super::record::RECORD_HEADER_BYTES as u64)
        .max(1);
    (to, most)
}

/// One past the last byte in `[from, end)` that is not zero (unreadable
/// bytes count as not zero); `from` if there is none.
pub fn nonzero_end<S: SegmentBytes + ?Sized>(src: &mut S, from: u64) -> u64 {
    const STEP: usize = 256 * 1024;
    let end = src.end();
    let (mut last, mut pos) = (from, from);
    while pos < end {
        match src.get(pos, STEP) {
            Ok([]) => break,
            Ok(b) => {
                if let Some(i) = b.iter().rposition(|&x| x != 0) {
                    last = pos + i as u64 + 1;
                }
                pos += b.len() as u64;
            }
            Err(u) => {
                last = u.resume.min(end);
                pos = u.resume;
            }
        }
    }
    last
}

fn leading_zeros(bytes: &[u8]) -> usize {
    let words = bytes.chunks_exact(8);
    let mut n = 0;
    for w in words {
        if w != [0u8; 8] {
            return n + w.iter().take_while(|&&b| b == 0).count();
        }
        n += 8;
    }
    n + bytes[n..].iter().take_while(|&&b| b == 0).count()
}

/// Where a read found bytes that do not check out, and where the log
/// continues after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Damage {
    pub position: u64,
    /// First offset whose record is damaged.
    pub offset: Offset,
    /// The next intact record after the damage (offset, position), if the
    /// segment has one: every offset in `offset..resume.0` is unreadable.
    pub resume: Option<(Offset, u64)>,
    pub reason: &'static str,
    /// The damage is a read error, not bytes that fail their checks.
    pub io: bool,
    /// Somewhere in the damaged run (up to `resume`) bytes could not be
    /// read: offsets there may read again later.
    pub read_error_in_run: bool,
}

/// Finds the record with `target` offset, scanning from `from` (an index
/// point at or before it, or a known record position). Damage on the way is
/// skipped by resyncing at the next intact record, so one bad record hides
/// only itself; `Err` when `target` itself is damaged. Returns the record's
/// position and length (read it again with [`SegmentBytes::get`]).
pub fn find_record<S: SegmentBytes + ?Sized>(
    src: &mut S,
    from: (Offset, u64),
    target: Offset,
    limit: Option<Offset>,
) -> Result<(u64, usize), Damage> {
    let (mut expected, mut pos) = from;
    debug_assert!(expected <= target);
    loop {
        let (reason, io) = match record_at(src, pos) {
            At::Valid { offset, len, .. } if offset == expected => {
                if offset == target {
                    return Ok((pos, len));
                }
                pos += len as u64;
                expected = Offset(expected.0 + 1);
                continue;
            }
            At::Valid { .. } => ("offset out of sequence", false),
            At::End => ("record missing before the end of the segment", false),
            At::Invalid(reason) => (reason, false),
            At::Unreadable(_) => ("unreadable (I/O error)", true),
        };
        let end = src.end();
        let mut read_error_in_run = io;
        let resume =
            resync_noting_read_errors(src, pos, expected, limit, end, &mut read_error_in_run)
                .map(|(p, o)| (o, p));
        match resume {
            Some((o, p)) if o <= target => (expected, pos) = (o, p),
            _ => {
                return Err(Damage {
                    position: pos,
                    offset: expected,
                    resume,
                    reason,
                    io,
                    read_error_in_run,
                })
            }
        }
    }
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

    /// Found by the segment_scan fuzz target: a valid record 2^33 offsets
    /// past the damage was taken as the place to resume, and building its
    /// index point (a u32 offset relative to the base) panicked.
    #[test]
    fn a_record_2_32_offsets_away_is_not_a_place_to_resume() {
        let base = Offset(0);
        let mut bytes = vec![0u8; SEGMENT_HEADER_BYTES];
        record::encode(&mut bytes, Offset(0), 1, b"", b"first");
        bytes.extend_from_slice(&[0xab; 40]);
        record::encode(&mut bytes, Offset(1 << 33), 2, b"", b"foreign");
        let start = (SEGMENT_HEADER_BYTES as u64, base, 0);
        let scan = scan_resyncing(&mut &bytes[..], base, start, Vec::new(), None);
        assert_eq!(scan.next_offset, Offset(1));
        assert!(scan.holes.is_empty(), "{:?}", scan.holes);
        assert!(scan.tail.is_some());
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
        let run = scan_run(&mut &seg[..], Offset(10), 64, Offset(10), 0, None);
        assert_eq!(
            (run.records, run.next_offset, run.stop.clone()),
            (20, Offset(30), Stop::End)
        );
        assert!(
            run.points.len() >= 4,
            "one point per ~4 KiB of 1 KiB records"
        );
        let torn = &seg[..seg.len() - 10];
        let run = scan_run(&mut &torn[..], Offset(10), 64, Offset(10), 0, None);
        assert_eq!(run.records, 19);
        assert!(matches!(run.stop, Stop::Invalid { .. }));
    }

    const REC: usize = record::RECORD_HEADER_BYTES + 1000;

    #[test]
    fn resync_finds_the_next_valid_record_after_damage() {
        let mut seg = segment_with(5, 0);
        let second = 64 + REC;
        seg[second + 40] ^= 0xff;
        let run = scan_run(&mut &seg[..], Offset(0), 64, Offset(0), 0, None);
        assert_eq!(run.records, 1);
        let (position, _) = run.stop.damage().expect("expected damage");
        let end = seg.len() as u64;
        let (pos, offset) =
            resync(&mut &seg[..], position, Offset(1), None, end).expect("record 2 is intact");
        assert_eq!(offset, Offset(2));
        assert_eq!(pos as usize, second + REC);
    }

    #[test]
    fn resync_skips_long_runs_of_zeros() {
        let mut seg = segment_with(2, 0);
        let bad = seg.len();
        seg.resize(bad + 1_000_000, 0);
        record::encode(&mut seg, Offset(5), 200, b"", b"after the gap");
        let end = seg.len() as u64;
        assert_eq!(
            resync(&mut &seg[..], bad as u64, Offset(2), None, end),
            Some(((bad + 1_000_000) as u64, Offset(5)))
        );
    }

    #[test]
    fn one_bad_record_hides_only_itself() {
        let mut seg = segment_with(8, 0);
        seg[64 + 2 * REC + 100] ^= 0x01;
        let from = (Offset(0), 64u64);
        for target in 0..8u64 {
            let found = find_record(&mut &seg[..], from, Offset(target), None);
            if target == 2 {
                let d = found.expect_err("record 2 is damaged");
                assert_eq!(
                    (d.offset, d.resume),
                    (Offset(2), Some((Offset(3), (64 + 3 * REC) as u64)))
                );
            } else {
                let (pos, len) = found.expect("intact records read past the damage");
                assert_eq!((pos, len), ((64 + target as usize * REC) as u64, REC));
            }
        }
    }
}
