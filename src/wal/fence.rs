//! The fence: where the log's durable data ends after a failed fsync.
//!
//! ```text
//! <queue dir>/fence, 40 bytes, little endian, replaced atomically
//! 0   [u8; 8] magic          "ORDLYFNC"
//! 8   u16     version        1
//! 10  [u8; 6] reserved       0
//! 16  u64     segment_base   the active segment when the fsync failed
//! 24  u64     position       its durable end: every byte before it was synced
//! 32  u32     reserved       0
//! 36  u32     crc32          of bytes 0..36
//! ```
//!
//! After a failed `fdatasync` the kernel keeps the unwritten pages in its
//! cache (marked clean) but the disk may not hold them, so records after the
//! durable end read back as valid, after a process restart too. They were
//! never acknowledged; they must never be delivered as if durable. The writer
//! writes the fence when an fsync fails (and truncates the file there, which
//! drops the cached pages); recovery cuts everything after the fenced
//! position, syncs, and only then removes the fence.
use super::Offset;
use crate::storage::{self, Storage};
use std::io;
use std::path::{Path, PathBuf};

pub const FENCE_BYTES: usize = 40;
const MAGIC: &[u8; 8] = b"ORDLYFNC";
const VERSION: u16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub segment_base: Offset,
    pub position: u64,
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join("fence")
}

impl Fence {
    pub fn encode(&self) -> [u8; FENCE_BYTES] {
        let mut b = [0u8; FENCE_BYTES];
        b[0..8].copy_from_slice(MAGIC);
        b[8..10].copy_from_slice(&VERSION.to_le_bytes());
        b[16..24].copy_from_slice(&self.segment_base.0.to_le_bytes());
        b[24..32].copy_from_slice(&self.position.to_le_bytes());
        let crc = crc32fast::hash(&b[0..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, &'static str> {
        if b.len() != FENCE_BYTES {
            return Err("wrong size");
        }
        if &b[0..8] != MAGIC {
            return Err("bad magic");
        }
        if crc32fast::hash(&b[0..36]).to_le_bytes() != b[36..40] {
            return Err("checksum mismatch");
        }
        if u16::from_le_bytes([b[8], b[9]]) != VERSION {
            return Err("unsupported version");
        }
        let u64_at = |a: usize| u64::from_le_bytes(b[a..a + 8].try_into().expect("8 bytes"));
        Ok(Self {
            segment_base: Offset(u64_at(16)),
            position: u64_at(24),
        })
    }

    /// The fence, if one was written. A damaged fence cannot be trusted to
    /// say where durable data ends: recovery refuses to guess.
    pub fn load(storage: &dyn Storage, dir: &Path) -> Result<Option<Self>, String> {
        let p = path(dir);
        if !storage.exists(&p) {
            return Ok(None);
        }
        let mut buf = [0u8; FENCE_BYTES];
        let read = storage
            .open(&p, false)
            .and_then(|f| storage::read_exact_at(f.as_ref(), &mut buf, 0));
        match read.map_err(|e| e.to_string()).and_then(|_| Self::decode(&buf).map_err(String::from)) {
            Ok(f) => Ok(Some(f)),
            Err(reason) => Err(format!(
                "{} is damaged ({reason}): it records where durable data ended after a failed fsync; \
                 restore it or, after checking the disk, remove it to keep every record that checks out",
                p.display()
            )),
        }
    }

    pub fn store(&self, storage: &dyn Storage, dir: &Path) -> io::Result<()> {
        storage::replace_file(storage, &path(dir), &self.encode())
    }

    /// Removes the fence once what it protects against was cut durably.
    pub fn clear(storage: &dyn Storage, dir: &Path) -> io::Result<()> {
        storage.remove(&path(dir))?;
        storage.sync_dir(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_round_trips_and_rejects_damage() {
        let f = Fence {
            segment_base: Offset(9),
            position: 4242,
        };
        assert_eq!(Fence::decode(&f.encode()), Ok(f));
        for i in 0..FENCE_BYTES {
            let mut b = f.encode();
            b[i] ^= 0x02;
            assert!(Fence::decode(&b).is_err(), "byte {i}");
        }
    }
}
