//! The recovery checkpoint: how far the active segment is known to be
//! durable and valid, so recovery scans only what came after it.
//!
//! ```text
//! <queue dir>/checkpoint, 56 bytes, little endian, replaced atomically
//! 0   [u8; 8] magic           "ORDLYCKP"
//! 8   u16     version         2 (1 is read too: no flags)
//! 10  u16     flags           bit 0 CLEAN: written at close, nothing after `position` was ever written
//! 12  [u8; 4] reserved        0
//! 16  u64     segment_base    active segment it describes
//! 24  u64     position        bytes of that segment synced and valid
//! 32  u64     next_offset     offset of the record at `position`
//! 40  u64     last_timestamp  append time of the record before `position`
//! 48  u32     index_entries   index entries synced, all before `position`
//! 52  u32     crc32           of bytes 0..52
//! ```
//! Written only after the segment data up to `position` and the index
//! entries it counts were synced; so everything it claims is on disk.
//! A CLEAN checkpoint also says the writer stopped there, so recovery need
//! not look past `position` for records written later.
use super::Offset;
use crate::storage::{self, Storage};
use std::io;
use std::path::{Path, PathBuf};

pub const CHECKPOINT_BYTES: usize = 56;
const MAGIC: &[u8; 8] = b"ORDLYCKP";
const VERSION: u16 = 2;
const FLAG_CLEAN: u16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    pub segment_base: Offset,
    pub position: u64,
    pub next_offset: Offset,
    pub last_timestamp_ms: u64,
    pub index_entries: u32,
    /// Written at a clean close: nothing was written after `position`.
    pub clean: bool,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join("checkpoint")
}

impl Checkpoint {
    pub fn encode(&self) -> [u8; CHECKPOINT_BYTES] {
        let mut b = [0u8; CHECKPOINT_BYTES];
        b[0..8].copy_from_slice(MAGIC);
        b[8..10].copy_from_slice(&VERSION.to_le_bytes());
        let flags = if self.clean { FLAG_CLEAN } else { 0 };
        b[10..12].copy_from_slice(&flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment_base.0.to_le_bytes());
        b[24..32].copy_from_slice(&self.position.to_le_bytes());
        b[32..40].copy_from_slice(&self.next_offset.0.to_le_bytes());
        b[40..48].copy_from_slice(&self.last_timestamp_ms.to_le_bytes());
        b[48..52].copy_from_slice(&self.index_entries.to_le_bytes());
        let crc = crc32fast::hash(&b[0..52]);
        b[52..56].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, &'static str> {
        if b.len() != CHECKPOINT_BYTES {
            return Err("wrong size");
        }
        if &b[0..8] != MAGIC {
            return Err("bad magic");
        }
        if crc32fast::hash(&b[0..52]).to_le_bytes() != b[52..56] {
            return Err("checksum mismatch");
        }
        let version = u16::from_le_bytes([b[8], b[9]]);
        if version != 1 && version != VERSION {
            return Err("unsupported version");
        }
        let flags = if version == 1 {
            0
        } else {
            u16::from_le_bytes([b[10], b[11]])
        };
        let u64_at = |a: usize| u64::from_le_bytes(b[a..a + 8].try_into().expect("8 bytes"));
        Ok(Self {
            segment_base: Offset(u64_at(16)),
            position: u64_at(24),
            next_offset: Offset(u64_at(32)),
            last_timestamp_ms: u64_at(40),
            index_entries: u32::from_le_bytes(b[48..52].try_into().expect("4 bytes")),
            clean: flags & FLAG_CLEAN != 0,
        })
    }

    /// Reads the checkpoint; a missing or damaged one is `None` (recovery then
    /// scans the whole active segment, which is always safe).
    pub fn load(storage: &dyn Storage, dir: &Path) -> Option<Self> {
        let p = path(dir);
        let file = storage.open(&p, false).ok()?;
        let mut buf = [0u8; CHECKPOINT_BYTES];
        storage::read_exact_at(file.as_ref(), &mut buf, 0).ok()?;
        match Self::decode(&buf) {
            Ok(c) => Some(c),
            Err(reason) => {
                tracing::warn!(path = %p.display(), reason, "ignoring damaged checkpoint; recovery scans the whole active segment");
                None
            }
        }
    }

    pub fn store(&self, storage: &dyn Storage, dir: &Path) -> io::Result<()> {
        storage::replace_file(storage, &path(dir), &self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trips_and_rejects_damage() {
        let c = Checkpoint {
            segment_base: Offset(5),
            position: 999,
            next_offset: Offset(17),
            last_timestamp_ms: 3,
            index_entries: 2,
            clean: true,
        };
        assert_eq!(Checkpoint::decode(&c.encode()), Ok(c));
        for i in 0..CHECKPOINT_BYTES {
            let mut b = c.encode();
            b[i] ^= 0x01;
            assert!(Checkpoint::decode(&b).is_err(), "byte {i}");
        }
    }
}
