//! The idempotency index of one queue: which keys were accepted inside the
//! dedupe window, and where. It is derived state: the raw key and payload
//! hash of every keyed message are in its record's metadata, so the index
//! is rebuilt from the log at start and a hit is always verified against
//! the stored original before a message is called a duplicate.
//!
//! Memory: a durable key costs one `u64 -> u64` slot (the key's hash, a
//! random-keyed SipHash, to its offset): 16 bytes plus one control byte,
//! in a table whose bucket count is the next power of two at or above 8/7
//! of the keys. 10 M keys take 16.8 M buckets, 285 MB; `dedupe_keys_max`
//! caps the keys (the oldest are dropped early, logged and counted, when
//! it is reached). Keys still being appended sit in a small second map,
//! bounded by the appends in flight.
use crate::config::{KeyConflict, QueueConfig};
use crate::hl7::FieldPath;
use crate::wal::meta::{is_event, MetaKey, MetaView};
use crate::wal::{Log, Offset};
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Arc;

/// What the index needs to know about a stored original to verify a hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Original {
    pub timestamp_ms: u64,
    /// The key as stored (the raw field values joined by 0x00).
    pub key: Vec<u8>,
    pub sha256: [u8; 32],
}

/// Reads stored originals (the queue's log in production).
pub trait Originals {
    /// The key, payload hash and time of the message record at `offset`;
    /// `None` when it is gone (retention), unreadable or not a keyed message.
    fn original(&self, offset: Offset) -> Option<Original>;
}

/// Reads originals from the queue's log.
pub struct LogOriginals(pub Arc<Log>);

impl Originals for LogOriginals {
    fn original(&self, offset: Offset) -> Option<Original> {
        // Borrowed from the reader's window: the payload is not copied.
        let mut reader = self.0.reader(offset);
        let rec = reader.next().ok()??;
        (rec.offset == offset)
            .then(|| stored_original(rec.meta, rec.timestamp_ms))
            .flatten()
    }
}

/// The key and hash a message record was stored with (`None` for events
/// and for messages stored without a key).
pub fn stored_original(meta: &[u8], timestamp_ms: u64) -> Option<Original> {
    if is_event(meta) {
        return None;
    }
    let view = MetaView::new(meta);
    let key = view.get(MetaKey::IdempotencyKey)?.to_vec();
    let sha256 = view.get(MetaKey::PayloadSha256)?.try_into().ok()?;
    Some(Original {
        timestamp_ms,
        key,
        sha256,
    })
}

/// Everything ingest needs to deduplicate one queue's messages.
pub struct QueueDedupe {
    pub index: DedupeIndex,
    pub paths: Vec<FieldPath>,
    pub on_conflict: KeyConflict,
    pub originals: Box<dyn Originals + Send>,
    /// The queue's log, to find where the window starts.
    pub log: Option<Arc<Log>>,
}

impl QueueDedupe {
    /// The index of `config`'s queue, rebuilt from the records of `log`
    /// inside the window. `None` when the queue has no idempotency key.
    pub fn open(config: &QueueConfig, log: Arc<Log>, now_ms: u64) -> Option<QueueDedupe> {
        if config.idempotency_key.is_empty() {
            return None;
        }
        let mut index = DedupeIndex::new(config.dedupe_window_ms, config.dedupe_keys_max);
        let started = std::time::Instant::now();
        let from = window_start(&log, now_ms, config.dedupe_window_ms);
        let (mut read, mut evicted) = (0u64, 0usize);
        // A damaged record cannot be a verified original; the rest of the
        // log still counts (the scan passes over it).
        let unreadable = log
            .scan(from, u64::MAX, |rec| {
                read += 1;
                if let Some(o) = stored_original(rec.meta, rec.timestamp_ms) {
                    evicted += index.insert(index.hash(&o.key), rec.offset).0;
                }
                true
            })
            .damaged;
        if evicted > 0 {
            tracing::warn!(queue = %config.name, evicted, keys_max = config.dedupe_keys_max, "idempotency index full while rebuilding (dedupe_keys_max): the oldest keys of the window were dropped");
        }
        tracing::info!(queue = %config.name, keys = index.len(), records = read, unreadable, from = from.0, ms = started.elapsed().as_millis() as u64, "idempotency index rebuilt from the log");
        Some(QueueDedupe {
            index,
            paths: config.idempotency_key.clone(),
            on_conflict: config.on_key_conflict,
            originals: Box::new(LogOriginals(log.clone())),
            log: Some(log),
        })
    }

    /// Forgets keys older than the window; returns how many.
    pub fn expire(&mut self, now_ms: u64) -> usize {
        match &self.log {
            Some(log) => {
                let start = window_start(log, now_ms, self.index.window_ms);
                self.index.expire(start)
            }
            None => 0,
        }
    }
}

/// The first offset whose message may still be inside the window.
pub fn window_start(log: &Log, now_ms: u64, window_ms: u64) -> Offset {
    crate::wal::first_at_or_after(log, now_ms.saturating_sub(window_ms))
}

/// How a message relates to what was accepted before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No message with this key inside the window.
    New,
    /// The same key and the same payload: accepted before. `original` is
    /// `None` while that copy is still being appended.
    Duplicate { original: Option<Offset> },
    /// The same key with a different payload.
    Conflict { original: Option<Offset> },
}

/// A map keyed by hashes already mixed: no second hashing.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here (see write_u64); fold anything else.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type PrehashedMap<V> = HashMap<u64, V, BuildHasherDefault<Prehashed>>;

/// A copy of a key whose append has not completed yet.
struct InFlight {
    key: Vec<u8>,
    sha256: [u8; 32],
    copies: u32,
}

pub struct DedupeIndex {
    hasher: RandomState,
    durable: PrehashedMap<u64>,
    in_flight: PrehashedMap<Vec<InFlight>>,
    window_ms: u64,
    keys_max: usize,
    /// The newest offset inserted, to find the oldest keys when full.
    newest: u64,
}

/// What [`DedupeIndex::insert`] had to do to stay within `keys_max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Evicted(pub usize);

impl DedupeIndex {
    pub fn new(window_ms: u64, keys_max: usize) -> DedupeIndex {
        assert!(keys_max > 0, "config validation keeps dedupe_keys_max > 0");
        DedupeIndex {
            hasher: RandomState::new(),
            durable: PrehashedMap::default(),
            in_flight: PrehashedMap::default(),
            window_ms,
            keys_max,
            newest: 0,
        }
    }

    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The most keys it holds (`dedupe_keys_max`).
    pub fn keys_max(&self) -> usize {
        self.keys_max
    }

    pub fn len(&self) -> usize {
        self.durable.len()
    }

    pub fn is_empty(&self) -> bool {
        self.durable.is_empty()
    }

    /// Classifies a message with `key` and payload hash `sha256` received
    /// at `now_ms`. A durable hit counts only if the stored original has
    /// the very same key and is inside the window.
    pub fn check(
        &self,
        key: &[u8],
        sha256: &[u8; 32],
        now_ms: u64,
        originals: &dyn Originals,
    ) -> Verdict {
        let h = self.hash(key);
        if let Some(copy) = self
            .in_flight
            .get(&h)
            .and_then(|v| v.iter().rev().find(|c| c.key == key))
        {
            return if &copy.sha256 == sha256 {
                Verdict::Duplicate { original: None }
            } else {
                Verdict::Conflict { original: None }
            };
        }
        match self.stored_copy(h, key, now_ms, originals) {
            Some((offset, o)) if &o.sha256 == sha256 => Verdict::Duplicate {
                original: Some(offset),
            },
            Some((offset, _)) => Verdict::Conflict {
                original: Some(offset),
            },
            None => Verdict::New,
        }
    }

    /// The key's latest stored copy (hash `h`), if it really has this key
    /// (not a hash collision) and is inside the window at `now_ms`.
    fn stored_copy(
        &self,
        h: u64,
        key: &[u8],
        now_ms: u64,
        originals: &dyn Originals,
    ) -> Option<(Offset, Original)> {
        let offset = Offset(*self.durable.get(&h)?);
        let o = originals.original(offset)?;
        (o.key == key && now_ms.saturating_sub(o.timestamp_ms) <= self.window_ms)
            .then_some((offset, o))
    }

    /// The payload hash of the newest version of `key` still in flight.
    pub fn in_flight_version(&self, key: &[u8]) -> Option<[u8; 32]> {
        self.in_flight
            .get(&self.hash(key))
            .and_then(|v| v.iter().rev().find(|c| c.key == key))
            .map(|c| c.sha256)
    }

    /// A keyed message was handed to the log: later copies wait on it.
    pub fn begin(&mut self, key: &[u8], sha256: &[u8; 32]) {
        let h = self.hash(key);
        let copies = self.in_flight.entry(h).or_default();
        // Only the newest entry may absorb a copy: the list is in
        // submission order and its last entry is the latest version.
        match copies
            .last_mut()
            .filter(|c| c.key == key && &c.sha256 == sha256)
        {
            Some(c) => c.copies += 1,
            None => copies.push(InFlight {
                key: key.to_vec(),
                sha256: *sha256,
                copies: 1,
            }),
        }
    }

    /// Its append ended: stored at `offset`, or not stored (`None`).
    pub fn end(&mut self, key: &[u8], sha256: &[u8; 32], offset: Option<Offset>) -> Evicted {
        let h = self.hash(key);
        if let Some(copies) = self.in_flight.get_mut(&h) {
            if let Some(i) = copies
                .iter()
                .position(|c| c.key == key && &c.sha256 == sha256)
            {
                copies[i].copies -= 1;
                if copies[i].copies == 0 {
                    // `remove`, not `swap_remove`: the order is submission
                    // order, and the last copy is the key's latest version.
                    copies.remove(i);
                }
            }
            if copies.is_empty() {
                self.in_flight.remove(&h);
            }
        }
        match offset {
            Some(o) => self.insert(h, o),
            None => Evicted(0),
        }
    }

    /// Whether a key's latest stored copy, inside the window at `now_ms`,
    /// has this payload: a duplicate answered positively (or a conflict
    /// refused) only if what it repeats (or conflicts with) was stored and
    /// still counts.
    pub fn holds(
        &self,
        key: &[u8],
        sha256: &[u8; 32],
        now_ms: u64,
        originals: &dyn Originals,
    ) -> bool {
        self.stored_copy(self.hash(key), key, now_ms, originals)
            .is_some_and(|(_, o)| &o.sha256 == sha256)
    }

    /// Records a stored key (at start, from the log; then from appends).
    pub fn insert(&mut self, hash: u64, offset: Offset) -> Evicted {
        self.newest = self.newest.max(offset.0);
        self.durable.insert(hash, offset.0);
        if self.durable.len() <= self.keys_max {
            return Evicted(0);
        }
        // Full: keep the newest 7/8 of the keys, chosen by count: the
        // offsets between them (events, unkeyed messages) must not make it
        // drop more.
        let keep = (self.keys_max * 7 / 8).max(1);
        let mut offsets: Vec<u64> = self.durable.values().copied().collect();
        let drop = offsets.len() - keep;
        let (_, &mut cutoff, _) = offsets.select_nth_unstable(drop);
        let before = self.durable.len();
        self.durable.retain(|_, o| *o >= cutoff);
        Evicted(before - self.durable.len())
    }

    /// Drops keys whose messages are older than the window: every offset
    /// below `window_start` (the first offset inside it).
    pub fn expire(&mut self, window_start: Offset) -> usize {
        let before = self.durable.len();
        self.durable.retain(|_, o| *o >= window_start.0);
        before - self.durable.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    /// Seen failing with the offset-distance cutoff: with other records
    /// between the keys (events, unkeyed messages) it dropped 5 of 9 keys
    /// where the oldest eighth (2) was meant.
    #[test]
    fn a_full_index_drops_the_oldest_eighth_of_its_keys_whatever_lies_between() {
        let mut index = DedupeIndex::new(u64::MAX, 8);
        let mut evicted = 0;
        for i in 0..9u64 {
            evicted += index.insert(i, Offset(i * 2)).0;
        }
        assert_eq!((evicted, index.len()), (2, 7));
    }

    #[derive(Default)]
    struct Stored(RefCell<BTreeMap<u64, Original>>);

    impl Originals for Stored {
        fn original(&self, offset: Offset) -> Option<Original> {
            self.0.borrow().get(&offset.0).cloned()
        }
    }

    fn sha(b: u8) -> [u8; 32] {
        [b; 32]
    }

    fn store(s: &Stored, offset: u64, key: &[u8], sha256: [u8; 32], ts: u64) {
        s.0.borrow_mut().insert(
            offset,
            Original {
                timestamp_ms: ts,
                key: key.to_vec(),
                sha256,
            },
        );
    }

    #[test]
    fn a_copy_in_flight_makes_later_copies_duplicates_or_conflicts() {
        let s = Stored::default();
        let mut ix = DedupeIndex::new(1000, 10);
        assert_eq!(ix.check(b"k", &sha(1), 0, &s), Verdict::New);
        ix.begin(b"k", &sha(1));
        assert_eq!(
            ix.check(b"k", &sha(1), 0, &s),
            Verdict::Duplicate { original: None }
        );
        assert_eq!(
            ix.check(b"k", &sha(2), 0, &s),
            Verdict::Conflict { original: None }
        );
        // Not stored: the key is free again.
        ix.end(b"k", &sha(1), None);
        assert_eq!(ix.check(b"k", &sha(1), 0, &s), Verdict::New);
        assert!(!ix.holds(b"k", &sha(1), 0, &s));
    }

    /// Found by the session fuzz target: versions A, B, C of one key in
    /// flight, A not stored; a copy of B arriving then was taken for a
    /// duplicate of B (the list reordered by the removal), though C, the
    /// latest version, differs: it is a conflict with C.
    #[test]
    fn the_latest_version_in_flight_decides_after_an_earlier_one_fails() {
        let s = Stored::default();
        let mut ix = DedupeIndex::new(1000, 10);
        for v in 1..=3 {
            ix.begin(b"k", &sha(v));
        }
        ix.end(b"k", &sha(1), None);
        assert_eq!(
            ix.check(b"k", &sha(2), 0, &s),
            Verdict::Conflict { original: None }
        );
        assert_eq!(
            ix.check(b"k", &sha(3), 0, &s),
            Verdict::Duplicate { original: None }
        );
    }

    /// Also found by the fuzz target: versions A, B, then A again in
    /// flight; the second A was counted into the first A's entry, so B
    /// looked like the latest version and a copy of B like its duplicate.
    #[test]
    fn a_version_resent_after_another_is_the_latest_again() {
        let s = Stored::default();
        let mut ix = DedupeIndex::new(1000, 10);
        ix.begin(b"k", &sha(1));
        ix.begin(b"k", &sha(2));
        ix.begin(b"k", &sha(1));
        assert_eq!(
            ix.check(b"k", &sha(2), 0, &s),
            Verdict::Conflict { original: None }
        );
        // The copies complete oldest first; the latest stays last.
        ix.end(b"k", &sha(1), Some(Offset(0)));
        ix.end(b"k", &sha(2), Some(Offset(1)));
        assert_eq!(
            ix.check(b"k", &sha(1), 0, &s),
            Verdict::Duplicate { original: None }
        );
    }

    #[test]
    fn a_durable_hit_is_verified_against_the_stored_original() {
        let s = Stored::default();
        let mut ix = DedupeIndex::new(1000, 10);
        ix.begin(b"k", &sha(1));
        ix.end(b"k", &sha(1), Some(Offset(7)));
        store(&s, 7, b"k", sha(1), 100);
        assert_eq!(
            ix.check(b"k", &sha(1), 600, &s),
            Verdict::Duplicate {
                original: Some(Offset(7))
            }
        );
        assert_eq!(
            ix.check(b"k", &sha(9), 600, &s),
            Verdict::Conflict {
                original: Some(Offset(7))
            }
        );
        assert!(ix.holds(b"k", &sha(1), 600, &s));
        // Outside the window, or the original gone: new, and not held.
        assert_eq!(ix.check(b"k", &sha(1), 1101, &s), Verdict::New);
        assert!(!ix.holds(b"k", &sha(1), 1101, &s));
        s.0.borrow_mut().clear();
        assert_eq!(ix.check(b"k", &sha(1), 600, &s), Verdict::New);
    }

    #[test]
    fn a_hash_collision_is_never_taken_for_a_duplicate() {
        let s = Stored::default();
        let mut ix = DedupeIndex::new(1000, 10);
        let h = ix.hash(b"other");
        // Force the slot of "other" to point at a record stored under "k".
        ix.insert(h, Offset(3));
        store(&s, 3, b"k", sha(1), 0);
        assert_eq!(ix.check(b"other", &sha(1), 0, &s), Verdict::New);
    }

    #[test]
    fn the_key_count_is_bounded_by_dropping_the_oldest() {
        let mut ix = DedupeIndex::new(u64::MAX, 8);
        let mut evicted = 0;
        for o in 0..100u64 {
            let h = ix.hash(&o.to_le_bytes());
            evicted += ix.insert(h, Offset(o)).0;
            assert!(ix.len() <= 8);
        }
        assert!(evicted >= 92 - 8);
        // The newest key survived.
        let s = Stored::default();
        store(&s, 99, &99u64.to_le_bytes(), sha(1), 0);
        assert_eq!(
            ix.check(&99u64.to_le_bytes(), &sha(1), 0, &s),
            Verdict::Duplicate {
                original: Some(Offset(99))
            }
        );
    }

    #[test]
    fn expiry_drops_keys_below_the_window_start() {
        let mut ix = DedupeIndex::new(1000, 100);
        for o in 0..10u64 {
            let h = ix.hash(&o.to_le_bytes());
            ix.insert(h, Offset(o));
        }
        assert_eq!(ix.expire(Offset(4)), 4);
        assert_eq!(ix.len(), 6);
    }
}
