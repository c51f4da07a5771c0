//! The cursor file on disk: two fixed-size slots (layout in `record.rs`).
//!
//! Commits are appended to the current slot. When it is full, and at every
//! open, the state of every lane is written as a snapshot into the other
//! slot with the next generation, zero-padded to the slot's end, and synced:
//! a crash at any byte leaves either the old slot current or the new one
//! complete. The file is written in full when created, so no later write
//! allocates: a full disk never stops cursor commits (or delivery).
use super::record::{
    self, FileKind, LaneCursor, SlotHeader, SLOT_BYTES, SLOT_HEADER_BYTES, V1_HEADER_BYTES,
};
use crate::storage::{self, Storage, StorageFile};
use std::io;
use std::path::Path;

/// Bytes of a cursor file.
pub const FILE_BYTES: usize = 2 * SLOT_BYTES;

/// What a cursor file holds.
pub struct Loaded {
    pub lanes: u16,
    /// Each lane's last committed state (`lanes` entries).
    pub cursors: Vec<LaneCursor>,
    /// The routing the cursors were committed under; `None` for a version 1
    /// file, which did not record it.
    pub routing: Option<String>,
    pub generation: u64,
    /// The highest commit sequence number seen.
    pub seq: u64,
    /// Valid bytes of the current slot's records that a torn commit left
    /// behind after the last valid record (logged).
    pub torn_bytes: usize,
}

/// Reads a cursor file; `Ok(None)` if there is none.
pub fn load(storage: &dyn Storage, path: &Path) -> Result<Option<Loaded>, String> {
    if !storage.exists(path) {
        return Ok(None);
    }
    let file = storage.open(path, false).map_err(|e| e.to_string())?;
    let len = file.len().map_err(|e| e.to_string())? as usize;
    let mut bytes = vec![0u8; len];
    storage::read_exact_at(file.as_ref(), &mut bytes, 0).map_err(|e| e.to_string())?;
    match record::file_kind(&bytes).map_err(String::from)? {
        FileKind::V1 { lanes } => Ok(Some(load_v1(&bytes, lanes))),
        FileKind::V2 => load_v2(&bytes).map(Some),
    }
}

fn load_v1(bytes: &[u8], lanes: u16) -> Loaded {
    let mut cursors = vec![LaneCursor::default(); usize::from(lanes)];
    let (end, seq) = read_records(bytes, V1_HEADER_BYTES, &mut cursors, false);
    Loaded {
        lanes,
        cursors,
        routing: None,
        generation: 0,
        seq,
        torn_bytes: trailing_nonzero(&bytes[end..]),
    }
}

fn load_v2(bytes: &[u8]) -> Result<Loaded, String> {
    let valid = |slot: usize| -> Option<SlotHeader> {
        let at = slot * SLOT_BYTES;
        let h = SlotHeader::decode(bytes.get(at..)?).ok()?;
        let snap_start = at + SLOT_HEADER_BYTES;
        let snap = bytes.get(snap_start..snap_start + h.snapshot_bytes as usize)?;
        (crc32fast::hash(snap) == h.snapshot_crc).then_some(h)
    };
    let (slot, header) = [0, 1]
        .into_iter()
        .filter_map(|s| valid(s).map(|h| (s, h)))
        .max_by_key(|(_, h)| h.generation)
        .ok_or_else(|| "neither slot has a valid header and snapshot".to_string())?;
    let start = slot * SLOT_BYTES + SLOT_HEADER_BYTES;
    let slot_bytes = &bytes[..((slot + 1) * SLOT_BYTES).min(bytes.len())];
    let mut cursors = vec![LaneCursor::default(); usize::from(header.lanes)];
    let (end, seq) = read_records(slot_bytes, start, &mut cursors, true);
    Ok(Loaded {
        lanes: header.lanes,
        cursors,
        routing: Some(header.routing),
        generation: header.generation,
        seq,
        torn_bytes: trailing_nonzero(&slot_bytes[end..]),
    })
}

/// Applies the records from `pos` to `cursors`; returns where reading
/// stopped and the last sequence number. With `ordered`, a record whose
/// seq is not above the previous one (a leftover of an older generation)
/// ends the read.
fn read_records(
    bytes: &[u8],
    mut pos: usize,
    cursors: &mut [LaneCursor],
    ordered: bool,
) -> (usize, u64) {
    let mut last_seq = 0u64;
    while let Some((lane, seq, cursor, len)) = bytes.get(pos..).and_then(record::decode) {
        if ordered && seq <= last_seq {
            break;
        }
        if let Some(slot) = cursors.get_mut(usize::from(lane)) {
            *slot = cursor;
        }
        last_seq = last_seq.max(seq);
        pos += len;
    }
    (pos, last_seq)
}

fn trailing_nonzero(rest: &[u8]) -> usize {
    rest.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1)
}

/// An open version 2 cursor file.
pub struct CursorFile {
    file: Box<dyn StorageFile>,
    lanes: u16,
    routing: String,
    slot: usize,
    generation: u64,
    /// Append position within the file (inside the current slot).
    end: usize,
}

impl CursorFile {
    /// Writes a new file (replacing a version 1 one atomically) whose slot 0
    /// holds `cursors`, and opens it.
    pub fn create(
        storage: &dyn Storage,
        path: &Path,
        routing: &str,
        cursors: &[LaneCursor],
        seq: &mut u64,
    ) -> io::Result<CursorFile> {
        let lanes = cursors.len() as u16;
        let slot0 = slot_bytes(lanes, routing, 1, cursors, seq);
        let end = SLOT_HEADER_BYTES + snapshot_len(&slot0);
        let mut bytes = slot0;
        bytes.resize(FILE_BYTES, 0);
        storage::replace_file(storage, path, &bytes)?;
        let file = storage.open(path, false)?;
        Ok(CursorFile {
            file,
            lanes,
            routing: routing.to_string(),
            slot: 0,
            generation: 1,
            end,
        })
    }

    /// Opens an existing version 2 file at the slot `loaded` came from and
    /// at once writes a snapshot of `cursors` into the other slot: every
    /// open starts from a compact slot with no torn tail.
    pub fn reopen(
        storage: &dyn Storage,
        path: &Path,
        routing: &str,
        loaded: &Loaded,
        cursors: &[LaneCursor],
        seq: &mut u64,
    ) -> io::Result<CursorFile> {
        let file = storage.open(path, false)?;
        if file.len()? < FILE_BYTES as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "cursor file shorter than two slots",
            ));
        }
        let mut f = CursorFile {
            file,
            lanes: cursors.len() as u16,
            routing: routing.to_string(),
            slot: 0,
            generation: loaded.generation,
            end: 0,
        };
        // The slot not holding `generation` is the one to overwrite; with
        // both valid, the older. Which slot held it does not matter as long
        // as the new generation is higher.
        f.slot = f.current_slot_of(loaded.generation)?;
        f.write_snapshot(cursors, seq)?;
        Ok(f)
    }

    fn current_slot_of(&self, generation: u64) -> io::Result<usize> {
        for slot in [0usize, 1] {
            let mut h = [0u8; SLOT_HEADER_BYTES];
            storage::read_exact_at(self.file.as_ref(), &mut h, (slot * SLOT_BYTES) as u64)?;
            if SlotHeader::decode(&h).is_ok_and(|h| h.generation == generation) {
                return Ok(slot);
            }
        }
        Ok(1)
    }

    /// Appends encoded records to the current slot and syncs them; `false`
    /// if they do not fit (the caller writes a snapshot instead).
    pub fn append(&mut self, records: &[u8]) -> io::Result<bool> {
        let slot_end = (self.slot + 1) * SLOT_BYTES;
        if self.end + records.len() > slot_end {
            return Ok(false);
        }
        storage::write_all_at(self.file.as_ref(), records, self.end as u64)?;
        self.file.sync_data()?;
        self.end += records.len();
        Ok(true)
    }

    /// Writes every lane's state into the other slot with the next
    /// generation, padded with zeros to the slot's end, synced; then it is
    /// the current slot.
    pub fn write_snapshot(&mut self, cursors: &[LaneCursor], seq: &mut u64) -> io::Result<()> {
        assert_eq!(cursors.len(), usize::from(self.lanes), "one state per lane");
        let other = 1 - self.slot;
        let generation = self.generation + 1;
        let mut bytes = slot_bytes(self.lanes, &self.routing, generation, cursors, seq);
        let end = SLOT_HEADER_BYTES + snapshot_len(&bytes);
        bytes.resize(SLOT_BYTES, 0);
        storage::write_all_at(self.file.as_ref(), &bytes, (other * SLOT_BYTES) as u64)?;
        self.file.sync_data()?;
        self.slot = other;
        self.generation = generation;
        self.end = other * SLOT_BYTES + end;
        Ok(())
    }
}

/// A slot's header and snapshot (not yet padded).
fn slot_bytes(
    lanes: u16,
    routing: &str,
    generation: u64,
    cursors: &[LaneCursor],
    seq: &mut u64,
) -> Vec<u8> {
    let mut snapshot = Vec::new();
    for (lane, c) in cursors.iter().enumerate() {
        *seq += 1;
        record::encode(&mut snapshot, lane as u16, *seq, c);
    }
    let header = SlotHeader {
        lanes,
        generation,
        snapshot_bytes: snapshot.len() as u32,
        snapshot_crc: crc32fast::hash(&snapshot),
        routing: routing.to_string(),
    };
    let mut bytes = header.encode().to_vec();
    bytes.extend_from_slice(&snapshot);
    bytes
}

fn snapshot_len(slot: &[u8]) -> usize {
    slot.len() - SLOT_HEADER_BYTES
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::SimStorage;
    use crate::wal::Offset;

    fn at(n: u64) -> LaneCursor {
        LaneCursor {
            next_offset: Offset(n),
            head: None,
        }
    }

    fn commit(f: &mut CursorFile, seq: &mut u64, lane: u16, c: LaneCursor) {
        let mut b = Vec::new();
        *seq += 1;
        record::encode(&mut b, lane, *seq, &c);
        assert!(f.append(&b).unwrap());
    }

    #[test]
    fn a_snapshot_torn_at_any_byte_leaves_the_previous_slot_current() {
        let sim = SimStorage::new();
        let path = Path::new("/d.cur");
        let mut seq = 0;
        let mut f = CursorFile::create(&sim, path, "r", &[at(5), at(7)], &mut seq).unwrap();
        commit(&mut f, &mut seq, 0, at(9));
        let caps = std::sync::Arc::new(parking_lot::Mutex::new(Vec::new()));
        let c = caps.clone();
        sim.set_sync_hook(Some(std::sync::Arc::new(move |s: &SimStorage| {
            c.lock().push(s.fork())
        })));
        f.write_snapshot(&[at(11), at(12)], &mut seq).unwrap();
        commit(&mut f, &mut seq, 1, at(13));
        sim.set_sync_hook(None);
        let cap = caps.lock()[0].clone();
        let pending = cap.pending_bytes();
        assert!(pending >= SLOT_BYTES as u64);
        // Every byte of the header and snapshot, then points through the padding.
        let points = (0..=pending.min(1024))
            .chain((1024..=pending).step_by(4093))
            .chain([pending]);
        for kept in points {
            let got = load(&cap.crash(Some(kept)), path).unwrap().unwrap();
            let lanes: Vec<u64> = got.cursors.iter().map(|c| c.next_offset.0).collect();
            assert!(
                lanes == vec![9, 7] || lanes == vec![11, 12],
                "kept {kept}/{pending}: {lanes:?}"
            );
        }
        let now = load(&sim, path).unwrap().unwrap();
        let lanes: Vec<u64> = now.cursors.iter().map(|c| c.next_offset.0).collect();
        assert_eq!((lanes, now.generation), (vec![11, 13], 2));
    }
}
