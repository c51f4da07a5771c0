//! Parses acknowledgments from downstream systems, tolerating what real
//! peers send: a BOM, LF or CRLF segment ends, lower-case or padded MSA-1,
//! no MSH at all, MSA not in second place, v2.3-style ERR-1 instead of ERR-3,
//! MLLP framing left on, and MLLP release 2 commit blocks.
//!
//! Matching an ACK to the message it answers is the caller's job
//! ([`ParsedAck::acknowledges`]): some peers send stale duplicates.

use super::super::delimiters::Delimiters;
use super::super::header::{nth_piece, parse_header, MshHeader};
use super::super::message::Value;
use super::super::segments::Lines;
use super::super::UTF8_BOM;
use super::build::trim;
use super::{AckCode, Severity};
use crate::mllp::{commit_block, CommitBlock, END_BLOCK, START_BLOCK, TRAILER};

/// An acknowledgment as read from a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedAck<'a> {
    /// MSA-1.
    pub code: AckCode,
    /// MSA-2 raw (the control id of the acknowledged message); empty for
    /// MLLP commit blocks.
    pub control_id: &'a [u8],
    /// MSA-3 text, if present and non-empty.
    pub text: Option<Value<'a>>,
    /// The first ERR segment, if any.
    pub error: Option<AckErrorInfo<'a>>,
    /// The ACK's own MSH, when it has a readable one.
    pub header: Option<MshHeader<'a>>,
}

/// What the first ERR segment says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckErrorInfo<'a> {
    /// HL7 table 0357 code from ERR-3.1 (or ERR-1.4.1 in v2.2-2.4 style, or
    /// ERR-1 itself in v2.1).
    pub code: Option<u16>,
    /// ERR-4 severity.
    pub severity: Option<Severity>,
    /// ERR-8, else ERR-7, else the code's text from ERR-3.2 or ERR-1.4.2.
    pub text: Option<Value<'a>>,
}

/// Why bytes are not an acknowledgment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AckParseError {
    /// Nothing to parse.
    #[error("acknowledgment is empty; the peer closed or answered with an empty frame")]
    Empty,
    /// No MSA segment.
    #[error("acknowledgment has no MSA segment; the peer's answer is not an HL7 ACK")]
    NoMsa,
    /// MSA-1 is empty.
    #[error("MSA-1 (acknowledgment code) is empty; treat the message as not acknowledged")]
    MissingCode,
    /// MSA-1 is not AA/AE/AR/CA/CE/CR.
    #[error("MSA-1 acknowledgment code '{code}' is not one of AA, AE, AR, CA, CE, CR")]
    UnknownCode {
        /// The code as sent (lossy UTF-8, at most 16 bytes).
        code: String,
    },
}

impl ParsedAck<'_> {
    /// True when MSA-2 names `control_id` (spaces around either ignored).
    pub fn acknowledges(&self, control_id: &[u8]) -> bool {
        trim(self.control_id) == trim(control_id)
    }
}

/// Parses a peer's acknowledgment (unframed, or with MLLP framing left on).
pub fn parse_ack(msg: &[u8]) -> Result<ParsedAck<'_>, AckParseError> {
    let msg = strip_framing(msg);
    if let Some(block) = commit_block(msg) {
        let code = match block {
            CommitBlock::Commit => AckCode::MllpCommit,
            _ => AckCode::MllpNegativeCommit,
        };
        return Ok(ParsedAck {
            code,
            control_id: b"",
            text: None,
            error: None,
            header: None,
        });
    }
    let body = msg.strip_prefix(UTF8_BOM).unwrap_or(msg);
    if trim_blank(body).is_empty() {
        return Err(AckParseError::Empty);
    }
    let header = parse_header(body).ok();
    let mut d = header.map_or_else(Delimiters::default, |h| h.delimiters());
    let msa = find_segment(body, b"MSA", &mut d, header.is_none()).ok_or(AckParseError::NoMsa)?;
    let code_field = trim(piece(msa, d.field, 2));
    let code_bytes = trim(nth_piece(code_field, d.component, 1).unwrap_or(b""));
    if code_bytes.is_empty() {
        return Err(AckParseError::MissingCode);
    }
    let code = AckCode::from_code(code_bytes).ok_or_else(|| AckParseError::UnknownCode {
        code: String::from_utf8_lossy(&code_bytes[..code_bytes.len().min(16)]).into_owned(),
    })?;
    let text = non_empty(piece(msa, d.field, 4), d);
    let error = find_segment(body, b"ERR", &mut d, false).map(|err| error_info(err, d));
    Ok(ParsedAck {
        code,
        control_id: piece(msa, d.field, 3),
        text,
        error,
        header,
    })
}

fn strip_framing(msg: &[u8]) -> &[u8] {
    let Some(inner) = msg.strip_prefix(&[START_BLOCK]) else {
        return msg;
    };
    let inner = inner.strip_suffix(&[TRAILER]).unwrap_or(inner);
    inner.strip_suffix(&[END_BLOCK]).unwrap_or(inner)
}

fn trim_blank(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// The first segment named `name` (leading blanks ignored). With
/// `learn_separator`, the byte after the name becomes the field separator
/// (for ACKs without MSH).
fn find_segment<'a>(
    body: &'a [u8],
    name: &[u8; 3],
    d: &mut Delimiters,
    learn_separator: bool,
) -> Option<&'a [u8]> {
    Lines::new(body, 0)
        .map(|l| trim_blank(&body[l.start..l.end]))
        .find(|line| {
            if !line.starts_with(name) {
                return false;
            }
            match line.get(3) {
                Some(&sep) if learn_separator && sep.is_ascii_punctuation() => {
                    d.field = sep;
                    true
                }
                Some(&sep) => sep == d.field,
                None => true,
            }
        })
}

/// Piece `n` (1-based) of `bytes` split on `sep`; empty when absent.
fn piece(bytes: &[u8], sep: u8, n: usize) -> &[u8] {
    nth_piece(bytes, sep, n).unwrap_or(b"")
}

fn non_empty(raw: &[u8], d: Delimiters) -> Option<Value<'_>> {
    (!trim(raw).is_empty()).then(|| Value::new(raw, d))
}

fn error_info(err: &[u8], d: Delimiters) -> AckErrorInfo<'_> {
    let err1 = piece(err, d.field, 2);
    let err1_code = piece(err1, d.component, 4);
    let err3 = piece(err, d.field, 4);
    let code = parse_code(piece(err3, d.component, 1))
        .or_else(|| parse_code(piece(err1_code, d.subcomponent, 1)))
        .or_else(|| parse_code(err1)); // v2.1: ERR-1 is the bare code.
    let severity = trim(piece(err, d.field, 5))
        .first()
        .and_then(|&b| Severity::from_letter(b));
    let text = non_empty(piece(err, d.field, 9), d)
        .or_else(|| non_empty(piece(err, d.field, 8), d))
        .or_else(|| non_empty(piece(err3, d.component, 2), d))
        .or_else(|| non_empty(piece(err1_code, d.subcomponent, 2), d));
    AckErrorInfo {
        code,
        severity,
        text,
    }
}

fn parse_code(bytes: &[u8]) -> Option<u16> {
    let digits = trim(bytes);
    if digits.is_empty() || digits.len() > 4 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u16, |n, &c| n * 10 + u16::from(c - b'0')),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_ack_is_read() {
        let ack =
            parse_ack(b"MSH|^~\\&|R|RF|S|SF|2024||ACK^A01^ACK|A1|P|2.5\rMSA|AA|MSG1\r").unwrap();
        assert_eq!(
            (ack.code, ack.control_id),
            (AckCode::ApplicationAccept, &b"MSG1"[..])
        );
        assert!(ack.acknowledges(b"MSG1 ") && !ack.acknowledges(b"MSG2"));
        assert!(ack.header.is_some() && ack.error.is_none() && ack.text.is_none());
    }

    #[test]
    fn sloppy_ack_without_msh_with_lf_and_lowercase_code() {
        let ack =
            parse_ack(b"\xEF\xBB\xBF\n MSA|ae |X9|bad\\F\\thing\nERR|^^^207&Internal&HL70357\n")
                .unwrap();
        assert_eq!(
            (ack.code, ack.control_id),
            (AckCode::ApplicationError, &b"X9"[..])
        );
        assert_eq!(ack.text.unwrap().decoded().as_ref(), b"bad|thing");
        let err = ack.error.unwrap();
        assert_eq!(
            (err.code, err.text.unwrap().raw()),
            (Some(207), &b"Internal"[..])
        );
    }

    #[test]
    fn err3_and_err8_are_preferred() {
        let ack = parse_ack(b"MSH|^~\\&\rMSA|AR|1\rERR||PID^1^3|101^Required field missing^HL70357|E||||PID-3 missing\r").unwrap();
        let err = ack.error.unwrap();
        assert_eq!((err.code, err.severity), (Some(101), Some(Severity::Error)));
        assert_eq!(err.text.unwrap().raw(), b"PID-3 missing");
    }

    #[test]
    fn commit_blocks_and_framed_acks_are_recognised() {
        assert_eq!(
            parse_ack(b"\x0b\x15\x1c\r").unwrap().code,
            AckCode::MllpNegativeCommit
        );
        assert_eq!(
            parse_ack(b"\x0bMSA|CA|7\x1c\r").unwrap().code,
            AckCode::CommitAccept
        );
    }

    #[test]
    fn non_acks_are_typed_errors() {
        assert_eq!(parse_ack(b" \r\n"), Err(AckParseError::Empty));
        assert_eq!(parse_ack(b"MSH|^~\\&|A\rPID|1"), Err(AckParseError::NoMsa));
        assert_eq!(parse_ack(b"MSA||1"), Err(AckParseError::MissingCode));
        assert_eq!(
            parse_ack(b"MSA|OK|1"),
            Err(AckParseError::UnknownCode { code: "OK".into() })
        );
    }
}
