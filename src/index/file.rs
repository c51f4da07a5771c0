//! Index file header: identifies the file, its segment and, once sealed, the
//! exact entries it vouches for.
//!
//! ```text
//! 0   [u8; 8] magic        "ORDLYIDX" (offset index) or "ORDLYTIX" (time index)
//! 8   u16     version      1
//! 10  u16     entry_bytes  8 or 12
//! 12  u32     entry_count  0xFFFF_FFFF while the segment is active
//! 16  u64     base_offset  of the segment
//! 24  u64     log_bytes    length of the sealed segment file it describes
//! 32  u32     entries_crc  crc32 of the entry bytes (sealed only)
//! 36  u32     header_crc   crc32 of bytes 0..36
//! ```
use super::{OFFSET_ENTRY_BYTES, TIME_ENTRY_BYTES};

pub const INDEX_HEADER_BYTES: usize = 40;
const VERSION: u16 = 1;
const ACTIVE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexKind {
    Offset,
    Time,
}

impl IndexKind {
    fn magic(self) -> &'static [u8; 8] {
        match self {
            IndexKind::Offset => b"ORDLYIDX",
            IndexKind::Time => b"ORDLYTIX",
        }
    }

    pub fn entry_bytes(self) -> usize {
        match self {
            IndexKind::Offset => OFFSET_ENTRY_BYTES,
            IndexKind::Time => TIME_ENTRY_BYTES,
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            IndexKind::Offset => "index",
            IndexKind::Time => "timeindex",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexHeader {
    pub kind: IndexKind,
    pub base_offset: u64,
    /// `None` while the segment is active (entries are vouched for by the checkpoint).
    pub sealed: Option<SealInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealInfo {
    pub entry_count: u32,
    pub log_bytes: u64,
    pub entries_crc: u32,
}

impl IndexHeader {
    pub fn active(kind: IndexKind, base_offset: u64) -> Self {
        Self {
            kind,
            base_offset,
            sealed: None,
        }
    }

    pub fn sealed(kind: IndexKind, base_offset: u64, entries: &[u8], log_bytes: u64) -> Self {
        assert!(entries.len().is_multiple_of(kind.entry_bytes()));
        let entry_count =
            u32::try_from(entries.len() / kind.entry_bytes()).expect("bounded by segment size");
        let seal = SealInfo {
            entry_count,
            log_bytes,
            entries_crc: crc32fast::hash(entries),
        };
        Self {
            kind,
            base_offset,
            sealed: Some(seal),
        }
    }

    pub fn encode(&self) -> [u8; INDEX_HEADER_BYTES] {
        let mut h = [0u8; INDEX_HEADER_BYTES];
        h[0..8].copy_from_slice(self.kind.magic());
        h[8..10].copy_from_slice(&VERSION.to_le_bytes());
        h[10..12].copy_from_slice(&(self.kind.entry_bytes() as u16).to_le_bytes());
        let seal = self.sealed.unwrap_or(SealInfo {
            entry_count: ACTIVE,
            log_bytes: 0,
            entries_crc: 0,
        });
        h[12..16].copy_from_slice(&seal.entry_count.to_le_bytes());
        h[16..24].copy_from_slice(&self.base_offset.to_le_bytes());
        h[24..32].copy_from_slice(&seal.log_bytes.to_le_bytes());
        h[32..36].copy_from_slice(&seal.entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[0..36]);
        h[36..40].copy_from_slice(&crc.to_le_bytes());
        h
    }

    /// Parses a header of the expected kind; `Err` says why it cannot be trusted.
    pub fn decode(kind: IndexKind, bytes: &[u8]) -> Result<Self, &'static str> {
        let h = bytes
            .get(..INDEX_HEADER_BYTES)
            .ok_or("shorter than its header")?;
        if &h[0..8] != kind.magic() {
            return Err("bad magic");
        }
        if crc32fast::hash(&h[0..36]).to_le_bytes() != h[36..40] {
            return Err("header checksum mismatch");
        }
        if u16::from_le_bytes([h[8], h[9]]) != VERSION {
            return Err("unsupported version");
        }
        if usize::from(u16::from_le_bytes([h[10], h[11]])) != kind.entry_bytes() {
            return Err("wrong entry size");
        }
        let u32_at = |a: usize| u32::from_le_bytes([h[a], h[a + 1], h[a + 2], h[a + 3]]);
        let u64_at = |a: usize| u64::from_le_bytes(h[a..a + 8].try_into().expect("8 bytes"));
        let entry_count = u32_at(12);
        let sealed = (entry_count != ACTIVE).then(|| SealInfo {
            entry_count,
            log_bytes: u64_at(24),
            entries_crc: u32_at(32),
        });
        Ok(Self {
            kind,
            base_offset: u64_at(16),
            sealed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_detects_damage() {
        let h = IndexHeader::sealed(IndexKind::Offset, 42, &[1u8; 16], 9999);
        let bytes = h.encode();
        assert_eq!(IndexHeader::decode(IndexKind::Offset, &bytes), Ok(h));
        assert!(IndexHeader::decode(IndexKind::Time, &bytes).is_err());
        for i in 0..INDEX_HEADER_BYTES {
            let mut bad = bytes;
            bad[i] ^= 0x10;
            assert!(
                IndexHeader::decode(IndexKind::Offset, &bad).is_err(),
                "byte {i}"
            );
        }
    }
}
