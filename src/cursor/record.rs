//! Cursor file layout (version 2): two fixed-size slots, each a header,
//! then CRC'd records; the slot with the highest valid generation is
//! current, and the last valid record of a lane in it is its state.
//!
//! ```text
//! file: slot 0 at byte 0, slot 1 at SLOT_BYTES (1 MiB); 2 MiB, written
//! in full when created, so later writes never allocate (a full disk
//! cannot stop cursor commits).
//!
//! slot header, 320 bytes
//! 0   [u8; 8] magic          "ORDLYCUR"
//! 8   u16     version        2
//! 10  u16     lanes          lanes of the destination when written
//! 12  u16     routing_len    bytes of `routing` used (<= 256)
//! 14  u16     reserved       0
//! 16  u64     generation     the valid slot with the highest one is current
//! 24  u32     snapshot_bytes records right after the header that hold every lane's state
//! 28  u32     snapshot_crc   crc32 of those bytes
//! 32  [u8;256] routing       what decides each message's lane (UTF-8, zero padded)
//! 288 [u8; 28] reserved      0
//! 316 u32     header_crc     crc32 of bytes 0..316
//!
//! record (after the header: the snapshot, then appended commits; reading
//! stops at the first record that does not check out or whose seq is not
//! above the previous one, so a previous generation's leftovers never count)
//! 0   u32 total_len     32, or 72 + text_len with a head
//! 4   u32 crc32         over bytes 0..4 and 8..total_len
//! 8   u16 lane
//! 10  u16 flags         bit 0: a head state follows
//! 12  u32 reserved      0
//! 16  u64 next_offset   every offset below it is done in this lane
//! 24  u64 seq           commit sequence number, increasing per file
//! -- head state (flag bit 0) --
//! 32  u64 head_offset
//! 40  u32 attempts
//! 44  u8  error_class   (ErrorClass as u8)
//! 45  u8  head_status   0 retrying, 1 blocked
//! 46  u16 text_len      <= 512
//! 48  u64 first_failure_ms
//! 56  u64 last_failure_ms
//! 64  u64 next_retry_ms
//! 72  text              last error, UTF-8
//! ```
//! Version 1 files (a 16-byte header: magic, version 1, lanes, reserved;
//! then records) are read once and rewritten as version 2.
use crate::constants::ERROR_TEXT_BYTES_MAX;
use crate::wal::Offset;

/// Bytes of a version 1 header.
pub const V1_HEADER_BYTES: usize = 16;
/// Bytes of a version 2 slot header.
pub const SLOT_HEADER_BYTES: usize = 320;
/// Bytes of one slot; the file holds two.
pub const SLOT_BYTES: usize = 1024 * 1024;
/// Longest routing description kept in a slot header.
pub const ROUTING_BYTES_MAX: usize = 256;
const MAGIC: &[u8; 8] = b"ORDLYCUR";
const VERSION: u16 = 2;
const BASE_BYTES: usize = 32;
const HEAD_BYTES: usize = 40;
/// Largest encoded record.
pub const RECORD_BYTES_MAX: usize = BASE_BYTES + HEAD_BYTES + ERROR_TEXT_BYTES_MAX;
// A snapshot of the most lanes a destination may have, plus one commit of
// all of them, fits in a slot.
const _: () = assert!(
    SLOT_HEADER_BYTES + 2 * (crate::constants::DESTINATION_LANES_MAX as usize) * RECORD_BYTES_MAX
        < SLOT_BYTES
);

/// Why a delivery attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorClass {
    /// A negative ACK whose code is in the destination's `ack_codes.retry`
    /// (default AR/CR), or an MLLP release 2 negative commit; retried.
    NegativeAck = 1,
    /// No ACK within `ack_timeout_ms`; retried.
    Timeout = 2,
    /// Could not connect; retried.
    ConnectFailed = 3,
    /// Reset or closed while sending or waiting; retried.
    ConnectionLost = 4,
    /// A negative ACK whose code is in `ack_codes.reject` (default AE/CE,
    /// and any code in no list); `on_reject`.
    Rejected = 5,
    /// An ACK naming a control id we never sent; `on_reject`.
    MismatchedAck = 6,
    /// Bytes that are not an ACK; `on_reject`.
    UnparseableAck = 7,
    /// The stored record could not be read (an I/O error); the lane blocks.
    Unreadable = 8,
    /// The stored record failed its checks (quarantined); the lane blocks.
    Corrupt = 9,
    /// Moved to the dead-letter queue by `orderly ctl clear` (never a
    /// delivery outcome).
    Cleared = 10,
}

impl ErrorClass {
    pub fn from_u8(v: u8) -> Option<ErrorClass> {
        use ErrorClass::*;
        [
            NegativeAck,
            Timeout,
            ConnectFailed,
            ConnectionLost,
            Rejected,
            MismatchedAck,
            UnparseableAck,
            Unreadable,
            Corrupt,
            Cleared,
        ]
        .into_iter()
        .find(|c| *c as u8 == v)
    }

    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorClass::NegativeAck
                | ErrorClass::Timeout
                | ErrorClass::ConnectFailed
                | ErrorClass::ConnectionLost
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::NegativeAck => "negative-ack",
            ErrorClass::Timeout => "timeout",
            ErrorClass::ConnectFailed => "connect-failed",
            ErrorClass::ConnectionLost => "connection-lost",
            ErrorClass::Rejected => "rejected",
            ErrorClass::MismatchedAck => "mismatched-ack",
            ErrorClass::UnparseableAck => "unparseable-ack",
            ErrorClass::Unreadable => "unreadable-record",
            ErrorClass::Corrupt => "corrupt",
            ErrorClass::Cleared => "cleared",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadStatus {
    /// Waiting for `next_retry_ms`, then tried again.
    Retrying,
    /// Held until an operator retries or skips it.
    Blocked,
}

/// The state of a lane's first undelivered message after a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadState {
    pub offset: Offset,
    pub attempts: u32,
    pub class: ErrorClass,
    pub status: HeadStatus,
    pub first_failure_ms: u64,
    pub last_failure_ms: u64,
    pub next_retry_ms: u64,
    pub text: String,
}

/// Everything committed about one lane, atomically.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LaneCursor {
    pub next_offset: Offset,
    pub head: Option<HeadState>,
}

/// The header of one slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotHeader {
    pub lanes: u16,
    pub generation: u64,
    pub snapshot_bytes: u32,
    pub snapshot_crc: u32,
    pub routing: String,
}

impl SlotHeader {
    pub fn encode(&self) -> [u8; SLOT_HEADER_BYTES] {
        let mut h = [0u8; SLOT_HEADER_BYTES];
        let routing = truncate_utf8(&self.routing, ROUTING_BYTES_MAX);
        h[0..8].copy_from_slice(MAGIC);
        h[8..10].copy_from_slice(&VERSION.to_le_bytes());
        h[10..12].copy_from_slice(&self.lanes.to_le_bytes());
        h[12..14].copy_from_slice(&(routing.len() as u16).to_le_bytes());
        h[16..24].copy_from_slice(&self.generation.to_le_bytes());
        h[24..28].copy_from_slice(&self.snapshot_bytes.to_le_bytes());
        h[28..32].copy_from_slice(&self.snapshot_crc.to_le_bytes());
        h[32..32 + routing.len()].copy_from_slice(routing.as_bytes());
        let crc = crc32fast::hash(&h[0..316]);
        h[316..320].copy_from_slice(&crc.to_le_bytes());
        h
    }

    pub fn decode(b: &[u8]) -> Result<SlotHeader, &'static str> {
        let h = b
            .get(..SLOT_HEADER_BYTES)
            .ok_or("shorter than its header")?;
        if &h[0..8] != MAGIC {
            return Err("bad magic");
        }
        if crc32fast::hash(&h[0..316]).to_le_bytes() != h[316..320] {
            return Err("header checksum mismatch");
        }
        if u16::from_le_bytes([h[8], h[9]]) != VERSION {
            return Err("unsupported version");
        }
        let routing_len = usize::from(u16::from_le_bytes([h[12], h[13]]));
        if routing_len > ROUTING_BYTES_MAX {
            return Err("routing description too long");
        }
        let u32_at = |a: usize| u32::from_le_bytes(h[a..a + 4].try_into().expect("4 bytes"));
        Ok(SlotHeader {
            lanes: u16::from_le_bytes([h[10], h[11]]),
            generation: u64::from_le_bytes(h[16..24].try_into().expect("8 bytes")),
            snapshot_bytes: u32_at(24),
            snapshot_crc: u32_at(28),
            routing: String::from_utf8_lossy(&h[32..32 + routing_len]).into_owned(),
        })
    }
}

/// What the first bytes of a cursor file say about it.
pub enum FileKind {
    /// Version 1, with the lane count it records.
    V1 {
        lanes: u16,
    },
    V2,
}

/// Identifies a cursor file from its first bytes, or says why it is not one.
pub fn file_kind(b: &[u8]) -> Result<FileKind, &'static str> {
    let h = b.get(..V1_HEADER_BYTES).ok_or("shorter than its header")?;
    if &h[0..8] != MAGIC {
        return Err("bad magic");
    }
    match u16::from_le_bytes([h[8], h[9]]) {
        1 => Ok(FileKind::V1 {
            lanes: u16::from_le_bytes([h[10], h[11]]),
        }),
        VERSION => Ok(FileKind::V2),
        _ => Err("unsupported version"),
    }
}

pub fn encode(out: &mut Vec<u8>, lane: u16, seq: u64, c: &LaneCursor) {
    let start = out.len();
    let text = c
        .head
        .as_ref()
        .map(|h| truncate_utf8(&h.text, ERROR_TEXT_BYTES_MAX))
        .unwrap_or("");
    let total = BASE_BYTES + c.head.as_ref().map_or(0, |_| HEAD_BYTES + text.len());
    out.extend_from_slice(&(total as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&lane.to_le_bytes());
    out.extend_from_slice(&u16::from(c.head.is_some()).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&c.next_offset.0.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    if let Some(h) = &c.head {
        out.extend_from_slice(&h.offset.0.to_le_bytes());
        out.extend_from_slice(&h.attempts.to_le_bytes());
        out.push(h.class as u8);
        out.push(match h.status {
            HeadStatus::Retrying => 0,
            HeadStatus::Blocked => 1,
        });
        out.extend_from_slice(&(text.len() as u16).to_le_bytes());
        out.extend_from_slice(&h.first_failure_ms.to_le_bytes());
        out.extend_from_slice(&h.last_failure_ms.to_le_bytes());
        out.extend_from_slice(&h.next_retry_ms.to_le_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    debug_assert_eq!(out.len() - start, total);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[start..start + 4]);
    crc.update(&out[start + 8..]);
    let crc = crc.finalize();
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// A decoded record and its length, or `None` if the bytes at the start of
/// `b` are not a complete valid record (torn tail, zeros, damage).
pub fn decode(b: &[u8]) -> Option<(u16, u64, LaneCursor, usize)> {
    let u16_at = |a: usize| u16::from_le_bytes([b[a], b[a + 1]]);
    let u32_at = |a: usize| u32::from_le_bytes(b[a..a + 4].try_into().expect("4 bytes"));
    let u64_at = |a: usize| u64::from_le_bytes(b[a..a + 8].try_into().expect("8 bytes"));
    if b.len() < BASE_BYTES {
        return None;
    }
    let total = u32_at(0) as usize;
    if !(BASE_BYTES..=BASE_BYTES + HEAD_BYTES + ERROR_TEXT_BYTES_MAX).contains(&total)
        || b.len() < total
    {
        return None;
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&b[0..4]);
    crc.update(&b[8..total]);
    if crc.finalize() != u32_at(4) {
        return None;
    }
    let (lane, has_head) = (u16_at(8), u16_at(10) & 1 == 1);
    let mut cursor = LaneCursor {
        next_offset: Offset(u64_at(16)),
        head: None,
    };
    if has_head {
        let text_len = u16_at(46) as usize;
        if total != BASE_BYTES + HEAD_BYTES + text_len {
            return None;
        }
        cursor.head = Some(HeadState {
            offset: Offset(u64_at(32)),
            attempts: u32_at(40),
            class: ErrorClass::from_u8(b[44])?,
            status: if b[45] == 1 {
                HeadStatus::Blocked
            } else {
                HeadStatus::Retrying
            },
            first_failure_ms: u64_at(48),
            last_failure_ms: u64_at(56),
            next_retry_ms: u64_at(64),
            text: String::from_utf8_lossy(&b[72..total]).into_owned(),
        });
    } else if total != BASE_BYTES {
        return None;
    }
    Some((lane, u64_at(24), cursor, total))
}

/// The longest prefix of `s` within `max` bytes that ends on a char boundary.
pub fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_damage_is_detected() {
        let head = HeadState {
            offset: Offset(9),
            attempts: 3,
            class: ErrorClass::Rejected,
            status: HeadStatus::Blocked,
            first_failure_ms: 1,
            last_failure_ms: 2,
            next_retry_ms: 3,
            text: "AR: unknown patient".into(),
        };
        for c in [
            LaneCursor {
                next_offset: Offset(7),
                head: None,
            },
            LaneCursor {
                next_offset: Offset(9),
                head: Some(head),
            },
        ] {
            let mut b = Vec::new();
            encode(&mut b, 3, 42, &c);
            assert_eq!(decode(&b), Some((3, 42, c.clone(), b.len())));
            for i in 0..b.len() {
                let mut bad = b.clone();
                bad[i] ^= 0x20;
                assert!(
                    decode(&bad).is_none_or(|(_, _, d, _)| d != c),
                    "flip at {i}"
                );
            }
            assert!(decode(&b[..b.len() - 1]).is_none());
        }
    }
}
