//! The pieces of an answer and a record that do not depend on the session:
//! record metadata, ACK control ids, the NAK texts for storage and framing
//! failures. No sockets here.
use crate::config::ListenerConfig;
use crate::hl7::ack::{AckError, ErrorCode, Outcome, Severity};
use crate::hl7::{parse_header, FieldPath, Message, MshHeader};
use crate::wal::meta::{MetaBuilder, MetaKey};
use crate::wal::AppendError;
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

/// The metadata area stored with a record.
pub fn record_meta(
    msg: &[u8],
    h: &MshHeader<'_>,
    listener: &ListenerConfig,
    peer: &str,
    received_ms: u64,
) -> Vec<u8> {
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
    if !listener.partition_keys.is_empty() {
        push_partition_keys(msg, &listener.partition_keys, &mut m);
    }
    m.finish()
}

/// One `PartitionKey` entry per key: the path, 0x00, the raw value. The
/// message is indexed once for all of them.
fn push_partition_keys(msg: &[u8], keys: &[FieldPath], m: &mut MetaBuilder) {
    let parsed = Message::parse(msg).ok();
    let mut entry = Vec::with_capacity(64);
    for key in keys {
        entry.clear();
        entry.extend_from_slice(key.to_string().as_bytes());
        entry.push(0);
        if let Some(v) = parsed.as_ref().and_then(|p| p.get(key)) {
            entry.extend_from_slice(v.raw());
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
