//! Cursor file layout: a header, then CRC'd records; the last valid record
//! of a lane is its state.
//!
//! ```text
//! header, 16 bytes
//! 0   [u8; 8] magic     "ORDLYCUR"
//! 8   u16     version   1
//! 10  u16     lanes     lanes of the destination when written
//! 12  u32     reserved  0
//!
//! record
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
use crate::constants::ERROR_TEXT_BYTES_MAX;
use crate::wal::Offset;

pub const HEADER_BYTES: usize = 16;
const MAGIC: &[u8; 8] = b"ORDLYCUR";
const VERSION: u16 = 1;
const BASE_BYTES: usize = 32;
const HEAD_BYTES: usize = 40;

/// Why a delivery attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ErrorClass {
    /// AE/CE: the downstream accepted the message in error; retried.
    ApplicationError = 1,
    /// No ACK within `ack_timeout_ms`; retried.
    Timeout = 2,
    /// Could not connect; retried.
    ConnectFailed = 3,
    /// Reset or closed while sending or waiting; retried.
    ConnectionLost = 4,
    /// AR/CR: the downstream refused it; `on_reject`.
    Rejected = 5,
    /// An ACK naming a control id we never sent; `on_reject`.
    MismatchedAck = 6,
    /// Bytes that are not an ACK; `on_reject`.
    UnparseableAck = 7,
    /// The stored record failed its checks (quarantined); the lane blocks.
    Unreadable = 8,
}

impl ErrorClass {
    pub fn from_u8(v: u8) -> Option<ErrorClass> {
        use ErrorClass::*;
        [
            ApplicationError,
            Timeout,
            ConnectFailed,
            ConnectionLost,
            Rejected,
            MismatchedAck,
            UnparseableAck,
            Unreadable,
        ]
        .into_iter()
        .find(|c| *c as u8 == v)
    }

    pub fn is_transient(self) -> bool {
        matches!(
            self,
            ErrorClass::ApplicationError
                | ErrorClass::Timeout
                | ErrorClass::ConnectFailed
                | ErrorClass::ConnectionLost
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorClass::ApplicationError => "application-error",
            ErrorClass::Timeout => "timeout",
            ErrorClass::ConnectFailed => "connect-failed",
            ErrorClass::ConnectionLost => "connection-lost",
            ErrorClass::Rejected => "rejected",
            ErrorClass::MismatchedAck => "mismatched-ack",
            ErrorClass::UnparseableAck => "unparseable-ack",
            ErrorClass::Unreadable => "unreadable-record",
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

pub fn encode_header(lanes: u16) -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[0..8].copy_from_slice(MAGIC);
    h[8..10].copy_from_slice(&VERSION.to_le_bytes());
    h[10..12].copy_from_slice(&lanes.to_le_bytes());
    h
}

/// The lane count a header records, or why it is not a cursor file.
pub fn decode_header(b: &[u8]) -> Result<u16, &'static str> {
    let h = b.get(..HEADER_BYTES).ok_or("shorter than its header")?;
    if &h[0..8] != MAGIC {
        return Err("bad magic");
    }
    if u16::from_le_bytes([h[8], h[9]]) != VERSION {
        return Err("unsupported version");
    }
    Ok(u16::from_le_bytes([h[10], h[11]]))
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
