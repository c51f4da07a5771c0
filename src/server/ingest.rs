//! What the server does with one decoded frame, and with one completed
//! append: validation, record metadata, ACK and NAK bytes. No sockets here.
use crate::config::ListenerConfig;
use crate::hl7::ack::{
    build_ack, decide, AckError, AckPolicy, ErrorCode, Hl7Timestamp, Outcome, Severity,
};
use crate::hl7::batch::is_batch;
use crate::hl7::{parse_header, split_batch, validate_for, Acceptance, MshHeader, ValidationLevel};
use crate::mllp::{END_BLOCK, START_BLOCK, TRAILER};
use crate::wal::meta::{MetaBuilder, MetaKey};
use crate::wal::AppendError;
use std::io::Write;

/// Appends an MLLP-framed ACK (or NAK) for `outcome` to `out`, or nothing
/// when the listener's policy says the sender asked for no answer.
pub fn write_framed_ack(
    header: Option<&MshHeader<'_>>,
    policy: AckPolicy,
    outcome: Outcome,
    error: Option<&AckError<'_>>,
    ids: &mut AckIds,
    out: &mut Vec<u8>,
) {
    let Some((mode, kind)) = decide(policy, header, outcome) else {
        return;
    };
    out.push(START_BLOCK);
    let mut id = [0u8; 24];
    let id_len = ids.next(&mut id);
    build_ack(
        header,
        mode,
        kind,
        error,
        &id[..id_len],
        Hl7Timestamp::from_system_time(std::time::SystemTime::now()),
        out,
    );
    out.push(END_BLOCK);
    out.push(TRAILER);
}

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

    fn next(&mut self, buf: &mut [u8; 24]) -> usize {
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
        .push(MetaKey::Version, h.version());
    m.finish()
}

/// Decides what to do with a frame: `Ok(header)` to store it, or the NAK
/// details and a reason for the log.
pub fn check_frame<'a>(
    msg: &'a [u8],
    listener: &ListenerConfig,
) -> Result<MshHeader<'a>, Rejection> {
    frame_header(msg, listener.validation, &listener.acceptance)
}

/// The header that speaks for a frame: its MSH, or for a batch envelope
/// (FHS/BHS ...) the MSH of its first message. A batch is stored whole, as
/// one record, exactly as received; its ACK answers that first MSH.
pub fn frame_header<'a>(
    msg: &'a [u8],
    level: ValidationLevel,
    acceptance: &Acceptance,
) -> Result<MshHeader<'a>, Rejection> {
    if is_batch(msg) {
        let batch = split_batch(msg).map_err(|e| Rejection {
            outcome: Outcome::ContentError,
            error: AckError {
                code: ErrorCode::SegmentSequenceError,
                severity: Severity::Error,
                text: "batch holds no readable message",
                location: None,
            },
            reason: e.to_string(),
        })?;
        let first = batch.messages.first().copied().unwrap_or_default();
        return validate_for(first, level, acceptance).map_err(|e| Rejection {
            outcome: e.outcome(),
            error: e.ack_error(),
            reason: format!("first message of batch: {e}"),
        });
    }
    validate_for(msg, level, acceptance).map_err(|e| Rejection {
        outcome: e.outcome(),
        error: e.ack_error(),
        reason: e.to_string(),
    })
}

/// Why a frame was refused.
pub struct Rejection {
    pub outcome: Outcome,
    pub error: AckError<'static>,
    pub reason: String,
}

/// The ACK for a completed append, written from the stored payload (which
/// was validated before it was appended, so its header parses).
pub fn write_completion_ack(
    payload: &[u8],
    result: &Result<crate::wal::Appended, AppendError>,
    policy: AckPolicy,
    ids: &mut AckIds,
    out: &mut Vec<u8>,
) {
    let header = readable_header(payload);
    debug_assert!(header.is_some(), "only validated payloads are appended");
    match result {
        Ok(_) => write_framed_ack(header.as_ref(), policy, Outcome::Stored, None, ids, out),
        Err(e) => write_framed_ack(
            header.as_ref(),
            policy,
            storage_outcome(e),
            Some(&storage_error(e)),
            ids,
            out,
        ),
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
    frame_header(msg, ValidationLevel::None, &Acceptance::default())
        .map(|h| String::from_utf8_lossy(h.control_id()).into_owned())
        .unwrap_or_else(|_| "-".into())
}

/// The readable header of a frame, if any, for building its NAK.
pub fn readable_header(msg: &[u8]) -> Option<MshHeader<'_>> {
    frame_header(msg, ValidationLevel::None, &Acceptance::default())
        .ok()
        .or_else(|| parse_header(msg).ok())
}
