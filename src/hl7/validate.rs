//! Validation levels applied before a message is accepted.
//!
//! `none` only requires a readable header (the broker must know the
//! delimiters to store, route and ACK); `minimal` also requires MSH-9 and
//! MSH-10. Each failure names the segment and field. Never allocates.

use std::str::FromStr;

use super::ack::{AckError, AckKind, ErrorCode, ErrorLocation, Severity};
use super::header::{parse_header, HeaderError, MshHeader};

/// How much checking a listener does before it accepts a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ValidationLevel {
    /// Only a readable MSH (segment 1 is MSH with legal delimiters).
    None,
    /// Also MSH-9 message code and MSH-10 control id present.
    #[default]
    Minimal,
}

impl FromStr for ValidationLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(ValidationLevel::None),
            "minimal" => Ok(ValidationLevel::Minimal),
            other => Err(format!(
                "unknown validation level `{other}`; use `none` or `minimal`"
            )),
        }
    }
}

/// Why a message failed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValidationError {
    /// Segment 1 is not a readable MSH.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// A required MSH field is empty.
    #[error(
        "segment 1 (MSH), field MSH-{field} ({name}) is empty; the sending system must fill it"
    )]
    MissingField {
        /// MSH field number.
        field: u16,
        /// What the field holds, in words.
        name: &'static str,
    },
}

/// Checks `msg` at `level` and returns its header.
pub fn validate(msg: &[u8], level: ValidationLevel) -> Result<MshHeader<'_>, ValidationError> {
    let header = parse_header(msg)?;
    if level == ValidationLevel::None {
        return Ok(header);
    }
    if is_blank(header.message_type_component(1)) {
        return Err(ValidationError::MissingField {
            field: 9,
            name: "message type",
        });
    }
    if is_blank(header.control_id()) {
        return Err(ValidationError::MissingField {
            field: 10,
            name: "message control id",
        });
    }
    Ok(header)
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == b' ')
}

impl ValidationError {
    /// The acknowledgment this failure deserves: reject when the header is
    /// unreadable, error when a required field is missing.
    pub fn ack_kind(&self) -> AckKind {
        match self {
            ValidationError::Header(_) => AckKind::Reject,
            _ => AckKind::Error,
        }
    }

    /// An ERR description (HL7 table 0357 code, severity, location, text) for
    /// the NAK. The text is static so building it never allocates.
    pub fn ack_error(&self) -> AckError<'static> {
        let (code, text) = match self {
            ValidationError::Header(HeaderError::Empty) => {
                (ErrorCode::SegmentSequenceError, "message is empty")
            }
            ValidationError::Header(HeaderError::NotMsh { .. }) => {
                (ErrorCode::SegmentSequenceError, "first segment is not MSH")
            }
            ValidationError::Header(_) => (
                ErrorCode::DataTypeError,
                "MSH-1/MSH-2 delimiters are not legal",
            ),
            ValidationError::MissingField { field: 9, .. } => (
                ErrorCode::RequiredFieldMissing,
                "MSH-9 message type is empty",
            ),
            ValidationError::MissingField { .. } => (
                ErrorCode::RequiredFieldMissing,
                "MSH-10 message control id is empty",
            ),
        };
        let field = match self {
            ValidationError::Header(h) => h.field(),
            ValidationError::MissingField { field, .. } => Some(*field),
        };
        let location = Some(ErrorLocation {
            segment: *b"MSH",
            sequence: 1,
            field,
        });
        AckError {
            code,
            severity: Severity::Error,
            text,
            location,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_requires_type_and_control_id() {
        let no_type = b"MSH|^~\\&|A|B|C|D|2024||^A01|1|P|2.5";
        let err = validate(no_type, ValidationLevel::Minimal).unwrap_err();
        assert_eq!(
            err,
            ValidationError::MissingField {
                field: 9,
                name: "message type"
            }
        );
        let no_id = b"MSH|^~\\&|A|B|C|D|2024||ADT^A01| |P|2.5";
        let err = validate(no_id, ValidationLevel::Minimal).unwrap_err();
        assert_eq!(err.to_string(), "segment 1 (MSH), field MSH-10 (message control id) is empty; the sending system must fill it");
        assert!(validate(no_id, ValidationLevel::None).is_ok());
    }

    #[test]
    fn level_names_parse_from_config_words() {
        assert_eq!(
            "minimal".parse::<ValidationLevel>(),
            Ok(ValidationLevel::Minimal)
        );
        assert!("strict".parse::<ValidationLevel>().is_err());
    }
}
