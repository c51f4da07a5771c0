//! Which acknowledgment a listener sends, if any: the MSA-1 family (original
//! AA/AE/AR or enhanced CA/CE/CR) and the code within it, per HL7 table 0008
//! (codes) and table 0155 (when to answer in enhanced mode).
//!
//! A listener's `ack_mode` picks the policy. `auto` answers every message,
//! because many senders fill MSH-15/16 from templates and still block on a
//! reply, and older receivers treat CA as invalid; `strict` follows table
//! 0155 to the letter; `original` never uses enhanced codes.

use std::str::FromStr;

use super::super::header::MshHeader;
use super::AckKind;

/// A listener's `ack_mode` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum AckPolicy {
    /// Always answer; enhanced codes when MSH-15 is AL, ER or SU, original
    /// codes when it is empty, NE or anything else.
    #[default]
    Auto,
    /// Table 0155: enhanced mode when MSH-15 or MSH-16 is valued; then NE
    /// gets no accept ACK, ER only an error, SU only a success. Original mode
    /// (both empty) is always answered.
    Strict,
    /// Always answer with AA/AE/AR.
    Original,
}

impl FromStr for AckPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(AckPolicy::Auto),
            "strict" => Ok(AckPolicy::Strict),
            "original" => Ok(AckPolicy::Original),
            other => Err(format!(
                "unknown ack_mode `{other}`; use `auto`, `strict` or `original`"
            )),
        }
    }
}

/// Which family of acknowledgment codes answers a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AckMode {
    /// AA/AE/AR.
    Original,
    /// CA/CE/CR (accept acknowledgments).
    Enhanced,
}

/// What became of a message, in the terms table 0008 distinguishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Stored durably.
    Stored,
    /// Error in content or format (unreadable header, missing required
    /// field, too large): resending it unchanged will fail again.
    ContentError,
    /// MSH-9, MSH-11 or MSH-12 names something this listener does not take.
    Unsupported,
    /// Not stored for a reason unrelated to the message (disk full, fsync
    /// failure, shutdown): the sender should resend it later.
    NotStored,
}

impl AckMode {
    /// The table 0008 kind for an outcome in this mode. Original mode
    /// answers AR for "not stored, resend later"; enhanced mode keeps CR for
    /// MSH-9/11/12 and answers CE for every other failure.
    pub fn kind(self, outcome: Outcome) -> AckKind {
        match (self, outcome) {
            (_, Outcome::Stored) => AckKind::Accept,
            (_, Outcome::ContentError) => AckKind::Error,
            (_, Outcome::Unsupported) => AckKind::Reject,
            (AckMode::Original, Outcome::NotStored) => AckKind::Reject,
            (AckMode::Enhanced, Outcome::NotStored) => AckKind::Error,
        }
    }

    /// The MSA-1 code for `kind` in this mode.
    pub fn code(self, kind: AckKind) -> &'static [u8; 2] {
        match (self, kind) {
            (AckMode::Original, AckKind::Accept) => b"AA",
            (AckMode::Original, AckKind::Error) => b"AE",
            (AckMode::Original, AckKind::Reject) => b"AR",
            (AckMode::Enhanced, AckKind::Accept) => b"CA",
            (AckMode::Enhanced, AckKind::Error) => b"CE",
            (AckMode::Enhanced, AckKind::Reject) => b"CR",
        }
    }
}

/// Table 0155 values as read from MSH-15 or MSH-16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    Empty,
    Always,
    Never,
    ErrorOnly,
    SuccessOnly,
    /// Valued, but not a table 0155 code.
    Other,
}

fn condition(raw: &[u8]) -> Condition {
    let value = super::build::trim(raw);
    if value.is_empty() {
        return Condition::Empty;
    }
    let is = |code: &[u8]| value.eq_ignore_ascii_case(code);
    if is(b"AL") {
        Condition::Always
    } else if is(b"NE") {
        Condition::Never
    } else if is(b"ER") {
        Condition::ErrorOnly
    } else if is(b"SU") {
        Condition::SuccessOnly
    } else {
        Condition::Other
    }
}

/// The acknowledgment to send for `outcome`, or `None` when the policy
/// says the sender asked for none. `header` is `None` when the message had
/// no readable MSH (always answered, in original mode).
pub fn decide(
    policy: AckPolicy,
    header: Option<&MshHeader<'_>>,
    outcome: Outcome,
) -> Option<(AckMode, AckKind)> {
    let (accept, application) = header.map_or((Condition::Empty, Condition::Empty), |h| {
        (
            condition(h.accept_ack_type()),
            condition(h.application_ack_type()),
        )
    });
    let answer = |mode: AckMode| Some((mode, mode.kind(outcome)));
    match policy {
        AckPolicy::Original => answer(AckMode::Original),
        AckPolicy::Auto => match accept {
            Condition::Always | Condition::ErrorOnly | Condition::SuccessOnly => {
                answer(AckMode::Enhanced)
            }
            _ => answer(AckMode::Original),
        },
        AckPolicy::Strict => {
            if accept == Condition::Empty && application == Condition::Empty {
                return answer(AckMode::Original);
            }
            let success = outcome == Outcome::Stored;
            let wanted = match accept {
                Condition::Never => false,
                Condition::ErrorOnly => !success,
                Condition::SuccessOnly => success,
                // Empty MSH-15 beside a valued MSH-16, AL, or a value
                // outside the table: answer, so no sender waits forever.
                Condition::Empty | Condition::Always | Condition::Other => true,
            };
            if wanted {
                answer(AckMode::Enhanced)
            } else {
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hl7::parse_header;

    fn code(policy: AckPolicy, msh15_16: &str, outcome: Outcome) -> Option<&'static str> {
        let msg = format!("MSH|^~\\&|A|B|C|D|2024||ADT^A01|1|P|2.5|||{msh15_16}");
        let header = parse_header(msg.as_bytes()).unwrap();
        decide(policy, Some(&header), outcome)
            .map(|(mode, kind)| std::str::from_utf8(mode.code(kind)).unwrap())
    }

    // Expected codes are table 0008 and table 0155 read off the spec: each
    // row is (MSH-15|MSH-16, outcome, auto, strict, original).
    #[test]
    fn policies_follow_tables_0008_and_0155() {
        use Outcome::*;
        type Row = (
            &'static str,
            Outcome,
            Option<&'static str>,
            Option<&'static str>,
            Option<&'static str>,
        );
        let rows: &[Row] = &[
            ("", Stored, Some("AA"), Some("AA"), Some("AA")),
            ("", ContentError, Some("AE"), Some("AE"), Some("AE")),
            ("", Unsupported, Some("AR"), Some("AR"), Some("AR")),
            ("", NotStored, Some("AR"), Some("AR"), Some("AR")),
            ("AL|NE", Stored, Some("CA"), Some("CA"), Some("AA")),
            ("AL|NE", NotStored, Some("CE"), Some("CE"), Some("AR")),
            ("AL|NE", Unsupported, Some("CR"), Some("CR"), Some("AR")),
            ("NE|AL", Stored, Some("AA"), None, Some("AA")),
            ("NE|AL", ContentError, Some("AE"), None, Some("AE")),
            ("ER|", Stored, Some("CA"), None, Some("AA")),
            ("ER|", ContentError, Some("CE"), Some("CE"), Some("AE")),
            ("SU|", Stored, Some("CA"), Some("CA"), Some("AA")),
            ("SU|", NotStored, Some("CE"), None, Some("AR")),
            ("|AL", Stored, Some("AA"), Some("CA"), Some("AA")),
        ];
        for &(fields, outcome, auto, strict, original) in rows {
            assert_eq!(
                code(AckPolicy::Auto, fields, outcome),
                auto,
                "auto {fields} {outcome:?}"
            );
            assert_eq!(
                code(AckPolicy::Strict, fields, outcome),
                strict,
                "strict {fields} {outcome:?}"
            );
            assert_eq!(
                code(AckPolicy::Original, fields, outcome),
                original,
                "original {fields} {outcome:?}"
            );
        }
    }

    #[test]
    fn unreadable_header_is_answered_in_original_mode() {
        assert_eq!(
            decide(AckPolicy::Strict, None, Outcome::ContentError),
            Some((AckMode::Original, AckKind::Error))
        );
    }
}
