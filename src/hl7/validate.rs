//! Validation levels applied before a message is accepted.
//!
//! `none` only requires a readable header (the broker must know the
//! delimiters to store, route and ACK); `minimal` also requires MSH-9 and
//! MSH-10. A listener may also restrict the message types, processing ids
//! and versions it takes ([`Acceptance`]). Each failure names the segment
//! and field. Never allocates.

use std::str::FromStr;

use super::ack::{AckError, ErrorCode, ErrorLocation, Outcome, Severity};
use super::header::{nth_piece, parse_header, HeaderError, MshHeader};

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
    /// MSH-9, MSH-11 or MSH-12 holds a value this listener does not take.
    #[error("segment 1 (MSH), field MSH-{field}: {} not accepted by this listener; see its accept_{} setting", unsupported_what(*.code), unsupported_key(*.field))]
    Unsupported {
        /// MSH field number (9, 11 or 12).
        field: u16,
        /// Table 0357 code (200 to 203).
        code: ErrorCode,
    },
}

fn unsupported_what(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::UnsupportedMessageType => "message type",
        ErrorCode::UnsupportedEventCode => "trigger event",
        ErrorCode::UnsupportedProcessingId => "processing id",
        _ => "version",
    }
}

fn unsupported_key(field: u16) -> &'static str {
    match field {
        9 => "message_types",
        11 => "processing_ids",
        _ => "versions",
    }
}

/// What a listener takes; an empty list takes everything. Compared with
/// the first component of each field, ignoring ASCII case and spaces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acceptance {
    /// `(message code, trigger)` pairs from entries like `ADT` (any
    /// trigger) or `ADT^A01`.
    pub message_types: Vec<(String, Option<String>)>,
    /// MSH-11.1 values, e.g. `P`.
    pub processing_ids: Vec<String>,
    /// MSH-12.1 values, e.g. `2.5.1`.
    pub versions: Vec<String>,
}

impl Acceptance {
    /// Parses a `accept_message_types` entry (`ADT` or `ADT^A01`).
    pub fn message_type_entry(entry: &str) -> Result<(String, Option<String>), String> {
        let mut parts = entry.split('^');
        let code = parts.next().unwrap_or("").trim();
        let trigger = parts.next().map(str::trim).filter(|t| !t.is_empty());
        let well_formed = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric());
        if !well_formed(code) || parts.next().is_some() || !trigger.is_none_or(well_formed) {
            return Err(format!(
                "`{entry}` is not a message type; write `ADT` or `ADT^A01`"
            ));
        }
        Ok((code.to_owned(), trigger.map(str::to_owned)))
    }

    /// Checks MSH-9, MSH-11 and MSH-12 of a readable header.
    pub fn check(&self, header: &MshHeader<'_>) -> Result<(), ValidationError> {
        let unsupported = |field, code| Err(ValidationError::Unsupported { field, code });
        if !self.message_types.is_empty() {
            let code = trim(header.message_type_component(1));
            let trigger = trim(header.message_type_component(2));
            let same_code = |c: &String| c.as_bytes().eq_ignore_ascii_case(code);
            if !self.message_types.iter().any(|(c, _)| same_code(c)) {
                return unsupported(9, ErrorCode::UnsupportedMessageType);
            }
            let taken = self.message_types.iter().any(|(c, t)| {
                same_code(c)
                    && t.as_ref()
                        .is_none_or(|t| t.as_bytes().eq_ignore_ascii_case(trigger))
            });
            if !taken {
                return unsupported(9, ErrorCode::UnsupportedEventCode);
            }
        }
        let component = header.delimiters().component;
        if !listed(
            &self.processing_ids,
            first(header.processing_id(), component),
        ) {
            return unsupported(11, ErrorCode::UnsupportedProcessingId);
        }
        if !listed(&self.versions, first(header.version(), component)) {
            return unsupported(12, ErrorCode::UnsupportedVersionId);
        }
        Ok(())
    }
}

fn first(raw: &[u8], component: u8) -> &[u8] {
    trim(nth_piece(raw, component, 1).unwrap_or(b""))
}

fn listed(list: &[String], value: &[u8]) -> bool {
    list.is_empty()
        || list
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(value))
}

fn trim(bytes: &[u8]) -> &[u8] {
    super::ack::trim_spaces(bytes)
}

/// [`validate`], then the listener's [`Acceptance`].
pub fn validate_for<'a>(
    msg: &'a [u8],
    level: ValidationLevel,
    acceptance: &Acceptance,
) -> Result<MshHeader<'a>, ValidationError> {
    let header = parse_header(msg)?;
    check_header(&header, level, acceptance)?;
    Ok(header)
}

/// Checks `msg` at `level` and returns its header.
pub fn validate(msg: &[u8], level: ValidationLevel) -> Result<MshHeader<'_>, ValidationError> {
    validate_for(msg, level, &Acceptance::default())
}

/// The checks of [`validate_for`] on a header already parsed, so a caller
/// that needs the header for its answer either way parses it once.
pub fn check_header(
    header: &MshHeader<'_>,
    level: ValidationLevel,
    acceptance: &Acceptance,
) -> Result<(), ValidationError> {
    if level == ValidationLevel::None {
        return acceptance.check(header);
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
    acceptance.check(header)
}

fn is_blank(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == b' ')
}

impl ValidationError {
    /// What this failure means for the ACK: an unsupported MSH-9/11/12 is
    /// a reject (AR/CR), anything else an error in content or format (AE/CE).
    pub fn outcome(&self) -> Outcome {
        match self {
            ValidationError::Unsupported { .. } => Outcome::Unsupported,
            _ => Outcome::ContentError,
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
            ValidationError::Unsupported { code, .. } => (
                *code,
                match code {
                    ErrorCode::UnsupportedMessageType => {
                        "MSH-9 message type not accepted by this listener"
                    }
                    ErrorCode::UnsupportedEventCode => {
                        "MSH-9 trigger event not accepted by this listener"
                    }
                    ErrorCode::UnsupportedProcessingId => {
                        "MSH-11 processing id not accepted by this listener"
                    }
                    _ => "MSH-12 version not accepted by this listener",
                },
            ),
        };
        let field = match self {
            ValidationError::Header(h) => h.field(),
            ValidationError::MissingField { field, .. }
            | ValidationError::Unsupported { field, .. } => Some(*field),
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
    fn acceptance_rejects_unlisted_type_trigger_processing_id_and_version() {
        let acceptance = Acceptance {
            message_types: vec![
                Acceptance::message_type_entry("ORU").unwrap(),
                Acceptance::message_type_entry("ADT^A01").unwrap(),
            ],
            processing_ids: vec!["P".into()],
            versions: vec!["2.5.1".into()],
        };
        let check = |msg: &str| {
            let h = parse_header(msg.as_bytes()).unwrap();
            acceptance
                .check(&h)
                .err()
                .map(|e| (e.outcome(), e.ack_error().code))
        };
        assert_eq!(check("MSH|^~\\&|A|B|C|D|1||ORU^R01|1|P|2.5.1^X"), None);
        assert_eq!(check("MSH|^~\\&|A|B|C|D|1||adt^a01|1|P|2.5.1"), None);
        let unsupported = |code| Some((Outcome::Unsupported, code));
        assert_eq!(
            check("MSH|^~\\&|A|B|C|D|1||SIU^S12|1|P|2.5.1"),
            unsupported(ErrorCode::UnsupportedMessageType)
        );
        assert_eq!(
            check("MSH|^~\\&|A|B|C|D|1||ADT^A08|1|P|2.5.1"),
            unsupported(ErrorCode::UnsupportedEventCode)
        );
        assert_eq!(
            check("MSH|^~\\&|A|B|C|D|1||ORU^R01|1|T|2.5.1"),
            unsupported(ErrorCode::UnsupportedProcessingId)
        );
        assert_eq!(
            check("MSH|^~\\&|A|B|C|D|1||ORU^R01|1|P|2.3"),
            unsupported(ErrorCode::UnsupportedVersionId)
        );
        assert!(Acceptance::message_type_entry("ADT^A01^ADT_A01").is_err());
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
