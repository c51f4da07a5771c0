//! The pieces of an answer and a record that do not depend on the session:
//! record metadata, ACK control ids, the NAK texts for storage and framing
//! failures. No sockets here.
use crate::config::ListenerConfig;
use crate::constants::IDEMPOTENCY_KEY_BYTES_MAX;
use crate::hl7::ack::{AckError, ErrorCode, Outcome, Severity};
use crate::hl7::{parse_header, FieldPath, Message, MshHeader};
use crate::wal::meta::{MetaBuilder, MetaKey};
use crate::wal::AppendError;
use sha2::{Digest, Sha256};
use std::io::Write;

/// Unique MSH-10 values for ACKs: the broker's start time and a sequence,
/// in hex, so they never repeat across restarts (at most 20 characters).
pub struct AckIds {
    boot_ms: u64,
    seq: u64,
}

impl AckIds {
    pub fn new() -> Self {
        Self {
            boot_ms: crate::wal::now_ms(),
            seq: 0,
        }
    }

    pub(crate) fn next(&mut self, buf: &mut [u8; 24]) -> usize {
        self.seq += 1;
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        // 11 hex digits of milliseconds + up to 9 of sequence fit in 24 bytes.
        let _ = write!(cursor, "{:x}{:x}", self.boot_ms, self.seq & 0xf_ffff_ffff);
        cursor.position() as usize
    }
}

impl Default for AckIds {
    fn default() -> Self {
        Self::new()
    }
}

/// The whole message, parsed on first use only: most messages need
/// nothing beyond their MSH, which is parsed already.
pub struct LazyParse<'a> {
    msg: &'a [u8],
    parsed: Option<Option<Message<'a>>>,
}

impl<'a> LazyParse<'a> {
    pub fn new(msg: &'a [u8]) -> Self {
        Self { msg, parsed: None }
    }

    fn get(&mut self) -> Option<&Message<'a>> {
        let msg = self.msg;
        self.parsed
            .get_or_insert_with(|| Message::parse(msg).ok())
            .as_ref()
    }

    /// The raw value at `path`: from the parsed MSH when the path is a
    /// whole MSH field, else from the parsed message.
    pub fn value(&mut self, h: &MshHeader<'a>, path: &FieldPath) -> Option<&'a [u8]> {
        let whole_msh_field = &path.segment == b"MSH"
            && path.occurrence == 1
            && path.repetition.is_none()
            && path.component.is_none()
            && (3..=21).contains(&path.field);
        if whole_msh_field {
            return Some(h.field(usize::from(path.field)));
        }
        self.get()?.get(path).map(|v| v.raw())
    }
}

/// The idempotency key: the raw values of `paths` joined by 0x00, or
/// `sha256:<hex>` of that when longer than a metadata value may be.
/// `None` (the message is not deduplicated) when `paths` is empty or any
/// value is empty: a key missing a part would merge unrelated messages.
pub fn idempotency_key<'a>(
    h: &MshHeader<'a>,
    lazy: &mut LazyParse<'a>,
    paths: &[FieldPath],
) -> Option<Vec<u8>> {
    if paths.is_empty() {
        return None;
    }
    let mut key = Vec::with_capacity(64);
    for (i, path) in paths.iter().enumerate() {
        let v = lazy.value(h, path).filter(|v| !v.is_empty())?;
        if i > 0 {
            key.push(0);
        }
        key.extend_from_slice(v);
    }
    if key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
        let mut short = b"sha256:".to_vec();
        short.extend(hex(&sha256(&key)).bytes());
        return Some(short);
    }
    Some(key)
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// How a stored message relates to its key (see `server/dedupe.rs`).
pub struct Keyed<'k> {
    pub key: &'k [u8],
    /// Set for a new version of a key (`on_key_conflict = "accept"`): the
    /// original's offset when it was already stored.
    pub new_version_of: Option<Option<u64>>,
}

/// The metadata area stored with a message record.
#[allow(clippy::too_many_arguments)]
pub fn record_meta<'a>(
    h: &MshHeader<'a>,
    lazy: &mut LazyParse<'a>,
    listener: &ListenerConfig,
    peer: &str,
    received_ms: u64,
    sha256: &[u8; 32],
    keyed: Option<&Keyed<'_>>,
) -> Vec<u8> {
    let mut m = header_meta(h, listener, peer, received_ms);
    m.push(MetaKey::PayloadSha256, sha256);
    if let Some(k) = keyed {
        m.push(MetaKey::IdempotencyKey, k.key);
        if let Some(original) = k.new_version_of {
            m.push(MetaKey::NewVersion, b"");
            if let Some(o) = original {
                m.push(MetaKey::OriginalOffset, &o.to_le_bytes());
            }
        }
    }
    if !listener.partition_keys.is_empty() {
        push_partition_keys(h, lazy, &listener.partition_keys, &mut m);
    }
    m.finish()
}

/// The metadata area of an ingest-event record: what happened (`event`),
/// the header facts of the message it happened to, its key and hash, and
/// the accepted original it refers to.
#[allow(clippy::too_many_arguments)]
pub fn event_meta(
    event: &str,
    h: &MshHeader<'_>,
    listener: &ListenerConfig,
    peer: &str,
    received_ms: u64,
    key: &[u8],
    sha256: &[u8; 32],
    original: Option<u64>,
) -> Vec<u8> {
    let mut m = header_meta(h, listener, peer, received_ms);
    m.push(MetaKey::Event, event.as_bytes())
        .push(MetaKey::IdempotencyKey, key)
        .push(MetaKey::PayloadSha256, sha256);
    if let Some(o) = original {
        m.push(MetaKey::OriginalOffset, &o.to_le_bytes());
    }
    m.finish()
}

fn header_meta(
    h: &MshHeader<'_>,
    listener: &ListenerConfig,
    peer: &str,
    received_ms: u64,
) -> MetaBuilder {
    let mut m = MetaBuilder::new();
    m.push(MetaKey::Listener, listener.name.as_bytes())
        .push(MetaKey::Peer, peer.as_bytes())
        .push(MetaKey::ReceivedAtMs, &received_ms.to_le_bytes())
        .push(MetaKey::ControlId, h.control_id())
        .push(MetaKey::MessageType, h.message_type())
        .push(MetaKey::SendingApp, h.sending_application())
        .push(MetaKey::SendingFacility, h.sending_facility())
        .push(MetaKey::ReceivingApp, h.receiving_application())
        .push(MetaKey::ReceivingFacility, h.receiving_facility())
        .push(MetaKey::EventTime, h.date_time())
        .push(MetaKey::Version, h.version())
        .push(MetaKey::Delimiters, h.field_separator_and_encoding());
    m
}

/// One `PartitionKey` entry per key: the path, 0x00, the raw value.
fn push_partition_keys<'a>(
    h: &MshHeader<'a>,
    lazy: &mut LazyParse<'a>,
    keys: &[FieldPath],
    m: &mut MetaBuilder,
) {
    let mut entry = Vec::with_capacity(64);
    for key in keys {
        entry.clear();
        entry.extend_from_slice(key.to_string().as_bytes());
        entry.push(0);
        if let Some(v) = lazy.value(h, key) {
            entry.extend_from_slice(v);
        }
        m.push(MetaKey::PartitionKey, &entry);
    }
}

/// A message too large for the log is a content problem (resending it
/// unchanged fails again); every other storage failure is "resend later".
pub fn storage_outcome(e: &AppendError) -> Outcome {
    match e {
        AppendError::TooLarge { .. } => Outcome::ContentError,
        _ => Outcome::NotStored,
    }
}

/// The NAK text for a storage failure: what happened and what the sender should do.
pub fn storage_error(e: &AppendError) -> AckError<'static> {
    let text = match e {
        AppendError::StorageFull(_) => "message NOT stored: broker storage is full; resend later",
        AppendError::TooLarge { .. } => "message NOT stored: too large for the broker",
        AppendError::Closed => "message NOT stored: broker is shutting down; resend later",
        _ => "message NOT stored: broker storage failure; resend later",
    };
    AckError {
        code: ErrorCode::ApplicationInternalError,
        severity: Severity::Error,
        text,
        location: None,
    }
}

/// The NAK for a frame over the size limit.
pub fn too_large_error() -> AckError<'static> {
    AckError {
        code: ErrorCode::ApplicationInternalError,
        severity: Severity::Error,
        text: "message NOT stored: larger than this listener's max_frame_bytes",
        location: None,
    }
}

/// The NAK for a frame the peer never finished (closed, or stalled past
/// `frame_timeout_s`): nothing was stored, so the sender should resend.
pub fn incomplete_error() -> AckError<'static> {
    AckError {
        code: ErrorCode::ApplicationInternalError,
        severity: Severity::Error,
        text: "message NOT stored: the frame ended without its 0x1C end block; resend",
        location: None,
    }
}

/// Printable control id for logs (never the body).
pub fn control_id_text(msg: &[u8]) -> String {
    parse_header(msg)
        .map(|h| String::from_utf8_lossy(h.control_id()).into_owned())
        .unwrap_or_else(|_| "-".into())
}
