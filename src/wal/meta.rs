//! The typed metadata area of a record: listener, peer and extracted MSH
//! fields, stored so routing and search never reparse the payload.
//!
//! Encoding: a sequence of `key u8, len u16 LE, value[len]`. Readers skip keys
//! they do not know, so later versions can add keys without a format bump.
use crate::constants::{META_FIELD_BYTES_MAX, RECORD_META_BYTES_MAX};

/// Keys of the metadata area. Values are raw bytes as received (no escape
/// decoding) unless noted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
#[non_exhaustive]
pub enum MetaKey {
    Listener = 1,
    /// Peer socket address as text.
    Peer = 2,
    /// MSH-10.
    ControlId = 3,
    /// MSH-9.
    MessageType = 4,
    /// MSH-3.
    SendingApp = 5,
    /// MSH-4.
    SendingFacility = 6,
    /// MSH-5.
    ReceivingApp = 7,
    /// MSH-6.
    ReceivingFacility = 8,
    /// MSH-7.
    EventTime = 9,
    /// MSH-12.
    Version = 10,
    /// Receive time at the listener, u64 LE milliseconds since the epoch.
    ReceivedAtMs = 11,
    /// BHS-11 of the batch the message came in (empty for back-to-back
    /// messages without a BHS).
    BatchControlId = 12,
    /// FHS-11 of the file the batch came in, when it had one.
    FileControlId = 13,
    /// The message's position in its batch, u32 LE, from 0.
    BatchIndex = 14,
    /// Messages in that batch, u32 LE.
    BatchCount = 15,
    /// MSH-1 and MSH-2 as received: the delimiters, so readers of the
    /// metadata need not parse the payload.
    Delimiters = 16,
    /// A destination's partition key, read at ingest: the field path as
    /// text, 0x00, then the raw value (empty when the message has none).
    /// One entry per distinct key of the destinations on the queue.
    PartitionKey = 17,
    // Dead-letter context (records in `dlq/<destination>/`).
    /// Destination that gave up on the message.
    Destination = 20,
    /// Lane, u16 LE.
    Lane = 21,
    /// Queue the message came from.
    SourceQueue = 22,
    /// Offset in that queue, u64 LE.
    SourceOffset = 23,
    /// Error class name (`rejected`, `timeout`, ...).
    ErrorClass = 24,
    /// Delivery attempts, u32 LE.
    Attempts = 25,
    /// First failure, u64 LE ms since the epoch.
    FirstFailureMs = 26,
    /// Last failure, u64 LE ms since the epoch.
    LastFailureMs = 27,
    /// The downstream's last ACK, raw (at most 1 KiB).
    LastAck = 28,
    /// Last error text.
    ErrorText = 29,
    /// Why it was dead-lettered: policy, or the operator's reason for a skip.
    Reason = 30,
    // Idempotency (see server/dedupe.rs).
    /// Present on an ingest-event record (not a message: delivery passes
    /// over it): what happened, as text: `duplicate` (a copy of an accepted
    /// message, answered positively and not stored again) or
    /// `conflict-rejected` (same key, different payload; refused, its
    /// payload kept in the event record).
    Event = 40,
    /// The message's idempotency key: the raw values of the queue's
    /// `idempotency_key` fields joined by 0x00 (`sha256:` and the hex
    /// digest when longer than 1 KiB).
    IdempotencyKey = 41,
    /// SHA-256 of the payload as received, 32 bytes.
    PayloadSha256 = 42,
    /// The offset of the accepted message an event (or a new version)
    /// refers to, u64 LE; absent when that message was still in flight.
    OriginalOffset = 43,
    /// Present (empty) on a message accepted with a key already used for a
    /// different payload (`on_key_conflict = "accept"`): a new version.
    NewVersion = 44,
    /// Who did an operator action recorded in a log (a dead-letter
    /// `discarded` record): the identity `orderly ctl` ran as.
    Actor = 45,
    // Delivery journal, replay and resubmission (see delivery/journal.rs,
    // delivery/replay.rs).
    /// A delivery attempt's outcome, as text: `delivered`, `retrying`,
    /// `dead-lettered` or `blocked`.
    Outcome = 46,
    /// MSA-1 of the downstream's answer (absent without an answer).
    AckCode = 47,
    /// When a delivery attempt ended, ms since the epoch, u64 LE.
    AttemptAtMs = 48,
    /// Which lane of a destination sent: `live` or `replay`.
    Channel = 49,
    /// The offset of a replay-log record an attempt sent, u64 LE.
    ReplayOffset = 50,
    /// Why a replay-log record exists: `replay`, `resubmit` or `reconcile`.
    ReplayKind = 51,
    /// The field-level diff of an edited resubmission against the
    /// original, as text (one `FIELD: old -> new` a line).
    EditDiff = 52,
    /// The dead-letter id (`<destination>:<offset>`) a record refers to.
    DlqId = 53,
}

/// Whether a record is an ingest event rather than a message.
pub fn is_event(meta: &[u8]) -> bool {
    MetaView::new(meta).get(MetaKey::Event).is_some()
}

/// Builds a metadata area. Values longer than [`META_FIELD_BYTES_MAX`] are
/// truncated (they are routing hints; the payload keeps the full value), and
/// fields that would push the area past [`RECORD_META_BYTES_MAX`] are dropped.
#[derive(Debug, Default, Clone)]
pub struct MetaBuilder {
    bytes: Vec<u8>,
}

impl MetaBuilder {
    pub fn new() -> Self {
        Self {
            bytes: Vec::with_capacity(256),
        }
    }

    pub fn push(&mut self, key: MetaKey, value: &[u8]) -> &mut Self {
        let value = &value[..value.len().min(META_FIELD_BYTES_MAX)];
        if self.bytes.len() + 3 + value.len() <= RECORD_META_BYTES_MAX {
            self.bytes.push(key as u8);
            self.bytes
                .extend_from_slice(&(value.len() as u16).to_le_bytes());
            self.bytes.extend_from_slice(value);
        }
        self
    }

    /// Continues an area built earlier.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        debug_assert!(bytes.len() <= RECORD_META_BYTES_MAX);
        Self { bytes }
    }

    pub fn finish(self) -> Vec<u8> {
        debug_assert!(self.bytes.len() <= RECORD_META_BYTES_MAX);
        self.bytes
    }
}

/// Reads a metadata area. Malformed trailing bytes end the iteration.
#[derive(Debug, Clone, Copy)]
pub struct MetaView<'a> {
    bytes: &'a [u8],
}

impl<'a> MetaView<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Self { bytes }
    }

    /// The first value stored under `key`.
    pub fn get(&self, key: MetaKey) -> Option<&'a [u8]> {
        self.iter().find(|(k, _)| *k == key as u8).map(|(_, v)| v)
    }

    /// Like [`Self::get`], as text (lossy: the payload is the source of truth).
    pub fn get_str(&self, key: MetaKey) -> String {
        self.get(key)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    }

    /// `(key, value)` pairs in stored order.
    pub fn iter(&self) -> impl Iterator<Item = (u8, &'a [u8])> + 'a {
        let mut rest = self.bytes;
        std::iter::from_fn(move || {
            if rest.len() < 3 {
                return None;
            }
            let key = rest[0];
            let len = u16::from_le_bytes([rest[1], rest[2]]) as usize;
            let value = rest.get(3..3 + len)?;
            rest = &rest[3 + len..];
            Some((key, value))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_unknown_keys_are_skipped() {
        let mut b = MetaBuilder::new();
        b.push(MetaKey::ControlId, b"CTRL1")
            .push(MetaKey::MessageType, b"ORU^R01");
        let mut bytes = b.finish();
        bytes.extend_from_slice(&[200, 2, 0, b'x', b'y']);
        bytes.extend_from_slice(&[MetaKey::Version as u8, 3, 0, b'2', b'.', b'5']);
        let v = MetaView::new(&bytes);
        assert_eq!(v.get(MetaKey::ControlId), Some(&b"CTRL1"[..]));
        assert_eq!(v.get(MetaKey::MessageType), Some(&b"ORU^R01"[..]));
        assert_eq!(v.get(MetaKey::Version), Some(&b"2.5"[..]));
        assert_eq!(v.get(MetaKey::Peer), None);
    }

    #[test]
    fn truncated_area_never_panics() {
        let mut b = MetaBuilder::new();
        b.push(MetaKey::Listener, b"lab");
        let bytes = b.finish();
        for cut in 0..bytes.len() {
            let _ = MetaView::new(&bytes[..cut]).iter().count();
        }
        assert_eq!(
            MetaView::new(&bytes[..bytes.len() - 1]).get(MetaKey::Listener),
            None
        );
    }

    #[test]
    fn long_values_are_truncated_and_area_is_bounded() {
        let mut b = MetaBuilder::new();
        let long = vec![b'a'; META_FIELD_BYTES_MAX * 2];
        for _ in 0..20 {
            b.push(MetaKey::Peer, &long);
        }
        let bytes = b.finish();
        assert!(bytes.len() <= RECORD_META_BYTES_MAX);
        assert_eq!(
            MetaView::new(&bytes).get(MetaKey::Peer).map(|v| v.len()),
            Some(META_FIELD_BYTES_MAX)
        );
    }
}
