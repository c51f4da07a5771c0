//! HL7 acknowledgments: building ACK/NAK messages for the inbound side and
//! parsing the ACKs downstream systems send back.
//!
//! [`decide`] picks the answer (original AA/AE/AR or enhanced CA/CE/CR, or
//! none) from a listener's policy and the inbound MSH-15/16; the builder
//! spells it the way the inbound version expects and keeps every ACK under
//! [`ACK_BYTES_MAX`] so peers that read the answer with one small `recv` get
//! all of it. The parser tolerates the deviations real systems produce. No
//! I/O here.

mod batch;
mod build;
mod dialect;
mod parse;
mod policy;
mod time;

pub use batch::{write_batch_ack, BatchEcho, Envelope};
pub use build::build_ack;
pub(crate) use build::trim as trim_spaces;
pub use dialect::{Dialect, ErrLayout};
pub use parse::{parse_ack, AckErrorInfo, AckParseError, ParsedAck};
pub use policy::{decide, AckMode, AckPolicy, Outcome};
pub use time::Hl7Timestamp;

/// Bytes of an inbound field echoed into the ACK (MSH-3..6, MSH-11, ...).
pub const ACK_ECHO_FIELD_BYTES_MAX: usize = 128;
/// Bytes of the inbound MSH-10 echoed into MSA-2. HL7 2.7 lets MSH-10 hold
/// 199 characters; a sender can only match its ACK if MSA-2 is whole, so
/// the limit is well above that.
pub const CONTROL_ID_ECHO_BYTES_MAX: usize = 512;
/// Bytes of escaped error text written into MSA-3 and ERR-8 each.
pub const ACK_TEXT_BYTES_MAX: usize = 256;
/// Upper bound of one built ACK: fixed parts plus every bounded field.
/// python-hl7's `mllp_send` reads the answer with a single 4 KB `recv`.
pub const ACK_BYTES_MAX: usize =
    512 + 9 * ACK_ECHO_FIELD_BYTES_MAX + CONTROL_ID_ECHO_BYTES_MAX + 2 * ACK_TEXT_BYTES_MAX;

const _: () = assert!(
    ACK_BYTES_MAX + 5 <= 4096,
    "an ACK plus MLLP framing must fit one 4 KB read"
);

/// What the receiver decided about a message (HL7 table 0008); the
/// [`AckMode`] turns it into a two-letter code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AckKind {
    /// Accepted (AA, or CA in enhanced mode).
    Accept,
    /// Accepted for processing but in error (AE / CE).
    Error,
    /// Rejected (AR / CR).
    Reject,
}

/// MSA-1 acknowledgment code as read from a peer's ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AckCode {
    /// AA
    ApplicationAccept,
    /// AE
    ApplicationError,
    /// AR
    ApplicationReject,
    /// CA
    CommitAccept,
    /// CE
    CommitError,
    /// CR
    CommitReject,
    /// MLLP release 2 commit block (0x06).
    MllpCommit,
    /// MLLP release 2 negative commit block (0x15).
    MllpNegativeCommit,
}

impl AckCode {
    /// The two-letter code (`MLLP-ACK`/`MLLP-NAK` for release 2 blocks).
    pub fn as_str(&self) -> &'static str {
        match self {
            AckCode::ApplicationAccept => "AA",
            AckCode::ApplicationError => "AE",
            AckCode::ApplicationReject => "AR",
            AckCode::CommitAccept => "CA",
            AckCode::CommitError => "CE",
            AckCode::CommitReject => "CR",
            AckCode::MllpCommit => "MLLP-ACK",
            AckCode::MllpNegativeCommit => "MLLP-NAK",
        }
    }

    /// True when the peer took responsibility for the message.
    pub fn is_positive(&self) -> bool {
        matches!(
            self,
            AckCode::ApplicationAccept | AckCode::CommitAccept | AckCode::MllpCommit
        )
    }

    pub(crate) fn from_code(code: &[u8]) -> Option<AckCode> {
        let upper = [
            code.first()?.to_ascii_uppercase(),
            code.get(1)?.to_ascii_uppercase(),
        ];
        if code.len() != 2 {
            return None;
        }
        Some(match &upper {
            b"AA" => AckCode::ApplicationAccept,
            b"AE" => AckCode::ApplicationError,
            b"AR" => AckCode::ApplicationReject,
            b"CA" => AckCode::CommitAccept,
            b"CE" => AckCode::CommitError,
            b"CR" => AckCode::CommitReject,
            _ => return None,
        })
    }
}

/// HL7 table 0357, message error condition codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 0 Message accepted.
    MessageAccepted,
    /// 100 Segment sequence error.
    SegmentSequenceError,
    /// 101 Required field missing.
    RequiredFieldMissing,
    /// 102 Data type error.
    DataTypeError,
    /// 103 Table value not found.
    TableValueNotFound,
    /// 200 Unsupported message type.
    UnsupportedMessageType,
    /// 201 Unsupported event code.
    UnsupportedEventCode,
    /// 202 Unsupported processing id.
    UnsupportedProcessingId,
    /// 203 Unsupported version id.
    UnsupportedVersionId,
    /// 204 Unknown key identifier.
    UnknownKeyIdentifier,
    /// 205 Duplicate key identifier.
    DuplicateKeyIdentifier,
    /// 206 Application record locked.
    ApplicationRecordLocked,
    /// 207 Application internal error.
    ApplicationInternalError,
}

impl ErrorCode {
    /// The numeric code.
    pub fn code(&self) -> u16 {
        self.entry().0
    }

    /// The table's text for the code.
    pub fn description(&self) -> &'static str {
        self.entry().1
    }

    fn entry(&self) -> (u16, &'static str) {
        match self {
            ErrorCode::MessageAccepted => (0, "Message accepted"),
            ErrorCode::SegmentSequenceError => (100, "Segment sequence error"),
            ErrorCode::RequiredFieldMissing => (101, "Required field missing"),
            ErrorCode::DataTypeError => (102, "Data type error"),
            ErrorCode::TableValueNotFound => (103, "Table value not found"),
            ErrorCode::UnsupportedMessageType => (200, "Unsupported message type"),
            ErrorCode::UnsupportedEventCode => (201, "Unsupported event code"),
            ErrorCode::UnsupportedProcessingId => (202, "Unsupported processing id"),
            ErrorCode::UnsupportedVersionId => (203, "Unsupported version id"),
            ErrorCode::UnknownKeyIdentifier => (204, "Unknown key identifier"),
            ErrorCode::DuplicateKeyIdentifier => (205, "Duplicate key identifier"),
            ErrorCode::ApplicationRecordLocked => (206, "Application record locked"),
            ErrorCode::ApplicationInternalError => (207, "Application internal error"),
        }
    }
}

/// ERR-4 severity (HL7 table 0516).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Severity {
    /// W
    Warning,
    /// I
    Information,
    /// E
    Error,
    /// F
    Fatal,
}

impl Severity {
    /// The one-letter code.
    pub fn letter(&self) -> u8 {
        match self {
            Severity::Warning => b'W',
            Severity::Information => b'I',
            Severity::Error => b'E',
            Severity::Fatal => b'F',
        }
    }

    pub(crate) fn from_letter(letter: u8) -> Option<Severity> {
        match letter.to_ascii_uppercase() {
            b'W' => Some(Severity::Warning),
            b'I' => Some(Severity::Information),
            b'E' => Some(Severity::Error),
            b'F' => Some(Severity::Fatal),
            _ => None,
        }
    }
}

/// Where in the inbound message an error was found (ERR-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorLocation {
    /// Segment id, e.g. `MSH`.
    pub segment: [u8; 3],
    /// Which occurrence of the segment (1-based).
    pub sequence: u16,
    /// Field number, when the error is about one field.
    pub field: Option<u16>,
}

/// What to report in the ERR segment of a NAK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckError<'a> {
    /// HL7 table 0357 code (ERR-3).
    pub code: ErrorCode,
    /// ERR-4 severity.
    pub severity: Severity,
    /// Human-readable text (MSA-3 and ERR-8); escaped by the builder.
    pub text: &'a str,
    /// ERR-2 location, if known.
    pub location: Option<ErrorLocation>,
}
