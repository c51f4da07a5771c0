//! Record framing: the byte layout of one log record and its validation.
//!
//! ```text
//! 0   u32 total_len    header + meta + payload, bytes
//! 4   u32 crc32        over bytes 0..4 and 8..total_len (everything but itself)
//! 8   u64 offset       dense, one more than the previous record's
//! 16  u64 timestamp_ms append time, never decreasing within a log
//! 24  u16 flags        reserved, 0 in version 1
//! 26  u16 meta_len
//! 28  u32 payload_len  total_len == 32 + meta_len + payload_len
//! 32  meta             typed header area (see `meta`)
//! ..  payload          the message bytes exactly as given
//! ```
//! All integers little endian. This module never does I/O.
use super::Offset;
use crate::constants::{RECORD_META_BYTES_MAX, RECORD_PAYLOAD_BYTES_MAX};

pub const RECORD_HEADER_BYTES: usize = 32;
/// Largest encoded record.
pub const RECORD_BYTES_MAX: usize =
    RECORD_HEADER_BYTES + RECORD_META_BYTES_MAX + RECORD_PAYLOAD_BYTES_MAX;

/// A validated record borrowed from a buffer (an mmap or a read buffer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordView<'a> {
    pub offset: Offset,
    pub timestamp_ms: u64,
    pub flags: u16,
    pub meta: &'a [u8],
    pub payload: &'a [u8],
}

impl RecordView<'_> {
    /// Bytes this record occupies in the segment.
    pub fn encoded_len(&self) -> usize {
        RECORD_HEADER_BYTES + self.meta.len() + self.payload.len()
    }
}

/// What a reader finds at a position in a segment.
#[derive(Debug, PartialEq, Eq)]
pub enum Check<'a> {
    /// A record whose lengths agree and whose CRC matches.
    Valid(RecordView<'a>),
    /// The buffer ends before the record does (only meaningful at a tail).
    Incomplete,
    /// Bytes that are not a record: zeros, torn or corrupt data.
    Invalid(&'static str),
}

/// Appends the encoding of one record to `out`.
pub fn encode(out: &mut Vec<u8>, offset: Offset, timestamp_ms: u64, meta: &[u8], payload: &[u8]) {
    assert!(
        meta.len() <= RECORD_META_BYTES_MAX,
        "meta checked by the caller"
    );
    assert!(
        payload.len() <= RECORD_PAYLOAD_BYTES_MAX,
        "payload checked by the caller"
    );
    let total = RECORD_HEADER_BYTES + meta.len() + payload.len();
    let start = out.len();
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&offset.0.to_le_bytes());
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&(meta.len() as u16).to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(meta);
    out.extend_from_slice(payload);
    let crc = crc_of(&out[start..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(out.len() - start, total);
}

fn crc_of(record: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&record[0..4]);
    h.update(&record[8..]);
    h.finalize()
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Reads the total length a record at the start of `buf` claims, if the
/// header is there and the claim is plausible.
pub fn claimed_len(buf: &[u8]) -> Option<usize> {
    if buf.len() < RECORD_HEADER_BYTES {
        return None;
    }
    let total = u32_at(buf, 0) as usize;
    (RECORD_HEADER_BYTES..=RECORD_BYTES_MAX)
        .contains(&total)
        .then_some(total)
}

/// The payload of a record whose header lengths agree with its size, even
/// if its CRC does not match (what is left of a damaged record).
pub fn payload_of(raw: &[u8]) -> Option<&[u8]> {
    let total = claimed_len(raw)?;
    let meta_len = u16_at(raw, 26) as usize;
    let payload_len = u32_at(raw, 28) as usize;
    (total == raw.len() && RECORD_HEADER_BYTES + meta_len + payload_len == total)
        .then(|| &raw[RECORD_HEADER_BYTES + meta_len..])
}

/// Validates the record at the start of `buf`. Never panics on any input.
pub fn check(buf: &[u8]) -> Check<'_> {
    if buf.len() < RECORD_HEADER_BYTES {
        return Check::Incomplete;
    }
    let total = u32_at(buf, 0) as usize;
    if total == 0 {
        return Check::Invalid("zero length (unwritten space)");
    }
    if !(RECORD_HEADER_BYTES..=RECORD_BYTES_MAX).contains(&total) {
        return Check::Invalid("length out of range");
    }
    let meta_len = u16_at(buf, 26) as usize;
    let payload_len = u32_at(buf, 28) as usize;
    if RECORD_HEADER_BYTES + meta_len + payload_len != total {
        return Check::Invalid("lengths disagree");
    }
    if buf.len() < total {
        return Check::Incomplete;
    }
    let rec = &buf[..total];
    if crc_of(rec) != u32_at(rec, 4) {
        return Check::Invalid("checksum mismatch");
    }
    let meta_end = RECORD_HEADER_BYTES + meta_len;
    Check::Valid(RecordView {
        offset: Offset(u64_at(rec, 8)),
        timestamp_ms: u64_at(rec, 16),
        flags: u16_at(rec, 24),
        meta: &rec[RECORD_HEADER_BYTES..meta_end],
        payload: &rec[meta_end..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_check_round_trips() {
        let mut buf = Vec::new();
        encode(&mut buf, Offset(7), 1234, b"m", b"MSH|^~\\&|");
        match check(&buf) {
            Check::Valid(r) => {
                assert_eq!(r.offset, Offset(7));
                assert_eq!(r.timestamp_ms, 1234);
                assert_eq!(r.meta, b"m");
                assert_eq!(r.payload, b"MSH|^~\\&|");
                assert_eq!(r.encoded_len(), buf.len());
            }
            other => panic!("expected valid, got {other:?}"),
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode(&mut buf, Offset(1), 99, b"meta", b"payload bytes");
        for i in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[i] ^= 1 << bit;
                assert!(
                    !matches!(check(&bad), Check::Valid(_)),
                    "flip at byte {i} bit {bit} undetected"
                );
            }
        }
    }

    #[test]
    fn truncated_record_is_incomplete_and_zeros_are_invalid() {
        let mut buf = Vec::new();
        encode(&mut buf, Offset(1), 1, b"", b"abc");
        assert_eq!(check(&buf[..buf.len() - 1]), Check::Incomplete);
        assert!(matches!(check(&[0u8; 64]), Check::Invalid(_)));
    }
}
