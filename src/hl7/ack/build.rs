//! Builds ACK and NAK messages for inbound messages.
//!
//! The ACK swaps sending and receiving application/facility, echoes the
//! processing id and version, answers `ACK^<trigger>^ACK` with its own
//! control id, and puts the inbound MSH-10 in MSA-2. Echoed fields and error
//! text are bounded (see [`super::ACK_BYTES_MAX`]) and cut only between
//! characters and escape sequences. When the inbound MSH is unreadable the
//! builder still writes a valid NAK with default delimiters.

use super::super::delimiters::Delimiters;
use super::super::escape::encode_bounded;
use super::super::header::MshHeader;
use super::{AckError, AckKind, Hl7Timestamp, ACK_ECHO_FIELD_BYTES_MAX, ACK_TEXT_BYTES_MAX};

/// Version written when the inbound message gives none.
pub const ACK_VERSION_DEFAULT: &[u8] = b"2.5";
/// Processing id written when the inbound message gives none.
pub const ACK_PROCESSING_ID_DEFAULT: &[u8] = b"P";
/// Longest trigger event echoed into MSH-9.2 (HL7 trigger codes are 3).
const TRIGGER_BYTES_MAX: usize = 8;

/// Which family of acknowledgment codes answers a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AckMode {
    /// AA/AE/AR: the sender did not fill MSH-15.
    Original,
    /// CA/CE/CR: MSH-15 holds AL, ER, SU or NE, so the sender speaks
    /// enhanced mode. (Whether to answer at all for NE/ER/SU is the caller's
    /// policy; Orderly always answers, since senders block on the reply.)
    Enhanced,
}

/// The acknowledgment mode the inbound header asks for.
pub fn ack_mode(header: Option<&MshHeader<'_>>) -> AckMode {
    let value = header.map_or(&b""[..], |h| trim(h.accept_ack_type()));
    let upper = [
        value.first().map(u8::to_ascii_uppercase),
        value.get(1).map(u8::to_ascii_uppercase),
    ];
    match (value.len(), upper) {
        (
            2,
            [Some(b'A'), Some(b'L')]
            | [Some(b'E'), Some(b'R')]
            | [Some(b'S'), Some(b'U')]
            | [Some(b'N'), Some(b'E')],
        ) => AckMode::Enhanced,
        _ => AckMode::Original,
    }
}

/// Appends an unframed ACK for `header` (or a NAK with defaults when the
/// inbound MSH was unreadable) to `out`. `ack_control_id` becomes the ACK's
/// own MSH-10; `error` adds MSA-3 text and an ERR segment.
pub fn build_ack(
    header: Option<&MshHeader<'_>>,
    kind: AckKind,
    error: Option<&AckError<'_>>,
    ack_control_id: &[u8],
    now: Hl7Timestamp,
    out: &mut Vec<u8>,
) {
    let d = Delimiters {
        truncation: None,
        ..header.map_or_else(Delimiters::default, |h| h.delimiters())
    };
    let start = out.len();
    write_msh(header, &d, ack_control_id, now, out);
    write_msa(header, kind, error, &d, out);
    if let Some(error) = error {
        write_err(error, &d, out);
    }
    assert!(
        out.len() - start <= super::ACK_BYTES_MAX,
        "every ACK field is bounded"
    );
}

fn write_msh(
    header: Option<&MshHeader<'_>>,
    d: &Delimiters,
    control_id: &[u8],
    now: Hl7Timestamp,
    out: &mut Vec<u8>,
) {
    let field = |n: usize| header.map_or(&b""[..], |h| h.field(n));
    out.extend_from_slice(b"MSH");
    out.push(d.field);
    out.extend_from_slice(&d.encoding_chars());
    for n in [5, 6, 3, 4] {
        out.push(d.field);
        echo(field(n), d, out);
    }
    out.push(d.field);
    out.extend_from_slice(now.as_bytes());
    out.extend_from_slice(&[d.field, d.field]);
    write_message_type(
        header.map_or(&b""[..], |h| h.message_type_component(2)),
        d,
        out,
    );
    out.push(d.field);
    encode_bounded(control_id, d, ACK_ECHO_FIELD_BYTES_MAX, out);
    out.push(d.field);
    echo(or_default(field(11), ACK_PROCESSING_ID_DEFAULT), d, out);
    out.push(d.field);
    echo(or_default(field(12), ACK_VERSION_DEFAULT), d, out);
    if !field(18).is_empty() {
        out.extend_from_slice(&[d.field; 6]); // MSH-13 .. MSH-17 empty.
        echo(field(18), d, out);
    }
    out.push(b'\r');
}

/// MSH-9 `ACK^<trigger>^ACK`, or plain `ACK` when the trigger is unusable.
fn write_message_type(trigger: &[u8], d: &Delimiters, out: &mut Vec<u8>) {
    let trigger = trim(trigger);
    out.extend_from_slice(b"ACK");
    let usable = !trigger.is_empty()
        && trigger.len() <= TRIGGER_BYTES_MAX
        && trigger.iter().all(u8::is_ascii_alphanumeric);
    if usable {
        out.push(d.component);
        out.extend_from_slice(trigger);
        out.push(d.component);
        out.extend_from_slice(b"ACK");
    }
}

fn write_msa(
    header: Option<&MshHeader<'_>>,
    kind: AckKind,
    error: Option<&AckError<'_>>,
    d: &Delimiters,
    out: &mut Vec<u8>,
) {
    let code: &[u8; 2] = match (super::ack_mode(header), kind) {
        (super::AckMode::Original, AckKind::Accept) => b"AA",
        (super::AckMode::Original, AckKind::Error) => b"AE",
        (super::AckMode::Original, AckKind::Reject) => b"AR",
        (super::AckMode::Enhanced, AckKind::Accept) => b"CA",
        (super::AckMode::Enhanced, AckKind::Error) => b"CE",
        (super::AckMode::Enhanced, AckKind::Reject) => b"CR",
    };
    out.extend_from_slice(b"MSA");
    out.push(d.field);
    out.extend_from_slice(code);
    out.push(d.field);
    echo(header.map_or(&b""[..], |h| h.control_id()), d, out);
    if let Some(error) = error {
        out.push(d.field);
        encode_bounded(error.text.as_bytes(), d, ACK_TEXT_BYTES_MAX, out);
    }
    out.push(b'\r');
}

/// `ERR|<ERR-1 (v2.3/2.4)>|<ERR-2 location>|<ERR-3 code>|<ERR-4>||||<ERR-8 text>`.
fn write_err(error: &AckError<'_>, d: &Delimiters, out: &mut Vec<u8>) {
    out.extend_from_slice(b"ERR");
    out.push(d.field);
    write_location(error, d, out);
    out.push(d.component);
    write_code(error, d.subcomponent, d, out);
    out.push(d.field);
    write_location(error, d, out);
    out.push(d.field);
    write_code(error, d.component, d, out);
    out.push(d.field);
    out.push(error.severity.letter());
    out.extend_from_slice(&[d.field; 4]); // ERR-5 .. ERR-7 empty.
    encode_bounded(error.text.as_bytes(), d, ACK_TEXT_BYTES_MAX, out);
    out.push(b'\r');
}

/// `<segment>^<sequence>^<field>` (components empty when unknown).
fn write_location(error: &AckError<'_>, d: &Delimiters, out: &mut Vec<u8>) {
    if let Some(location) = &error.location {
        let segment = location.segment;
        if segment.iter().all(u8::is_ascii_alphanumeric) {
            out.extend_from_slice(&segment);
        }
        out.push(d.component);
        push_number(u32::from(location.sequence), out);
        out.push(d.component);
        if let Some(field) = location.field {
            push_number(u32::from(field), out);
        }
    } else {
        out.extend_from_slice(&[d.component, d.component]);
    }
}

/// `<code><sep><description><sep>HL70357`.
fn write_code(error: &AckError<'_>, sep: u8, d: &Delimiters, out: &mut Vec<u8>) {
    push_number(u32::from(error.code.code()), out);
    out.push(sep);
    encode_bounded(
        error.code.description().as_bytes(),
        d,
        ACK_ECHO_FIELD_BYTES_MAX,
        out,
    );
    out.push(sep);
    out.extend_from_slice(b"HL70357");
}

fn push_number(n: u32, out: &mut Vec<u8>) {
    let mut digits = [0u8; 10];
    let mut len = 0;
    let mut n = n;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[..len].iter().rev());
}

/// Echoes a raw (already escaped) inbound field, cut to the echo limit
/// without splitting a UTF-8 character or an escape sequence.
fn echo(raw: &[u8], d: &Delimiters, out: &mut Vec<u8>) {
    out.extend_from_slice(&raw[..safe_cut(raw, ACK_ECHO_FIELD_BYTES_MAX, d.escape)]);
}

fn safe_cut(raw: &[u8], max: usize, escape: u8) -> usize {
    if raw.len() <= max {
        return raw.len();
    }
    let mut cut = max;
    while cut > 0 && raw[cut] & 0xC0 == 0x80 {
        cut -= 1;
    }
    let escapes = raw[..cut].iter().filter(|&&b| b == escape).count();
    if escapes % 2 == 1 {
        cut = raw[..cut].iter().rposition(|&b| b == escape).unwrap_or(0);
    }
    cut
}

fn or_default<'a>(value: &'a [u8], default: &'a [u8]) -> &'a [u8] {
    if trim(value).is_empty() {
        default
    } else {
        value
    }
}

pub(crate) fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != b' ').unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|&b| b != b' ')
        .map_or(start, |i| i + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    use super::super::{ErrorCode, ErrorLocation, Severity};
    use super::*;
    use crate::hl7::header::parse_header;

    const NOW: u64 = 1_700_000_000; // 2023-11-14T22:13:20Z

    fn ack(msg: &[u8], kind: AckKind, error: Option<&AckError<'_>>) -> String {
        let header = parse_header(msg).ok();
        let mut out = Vec::new();
        build_ack(
            header.as_ref(),
            kind,
            error,
            b"ACK1",
            Hl7Timestamp::from_unix_seconds(NOW),
            &mut out,
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn original_mode_ack_swaps_parties_and_echoes_ids() {
        let got = ack(
            b"MSH|^~\\&|SA|SF|RA|RF|2024||ADT^A01^ADT_A01|MSG7|T|2.4\rPID|1",
            AckKind::Accept,
            None,
        );
        assert_eq!(
            got,
            "MSH|^~\\&|RA|RF|SA|SF|20231114221320||ACK^A01^ACK|ACK1|T|2.4\rMSA|AA|MSG7\r"
        );
    }

    #[test]
    fn enhanced_mode_when_msh15_present() {
        let got = ack(
            b"MSH|^~\\&|SA|SF|RA|RF|2024||ORU^R01|9|P|2.5|||AL|NE",
            AckKind::Reject,
            None,
        );
        assert!(got.contains("\rMSA|CR|9\r"), "{got}");
    }

    #[test]
    fn error_text_is_escaped_in_msa_and_err() {
        let error = AckError {
            code: ErrorCode::RequiredFieldMissing,
            severity: Severity::Error,
            text: "PID-3 missing | see ^docs",
            location: Some(ErrorLocation {
                segment: *b"PID",
                sequence: 1,
                field: Some(3),
            }),
        };
        let got = ack(
            b"MSH|^~\\&|SA|SF|RA|RF|2024||ADT^A01|M1|P|2.5",
            AckKind::Error,
            Some(&error),
        );
        let expected_tail = "MSA|AE|M1|PID-3 missing \\F\\ see \\S\\docs\r\
ERR|PID^1^3^101&Required field missing&HL70357|PID^1^3|101^Required field missing^HL70357|E||||PID-3 missing \\F\\ see \\S\\docs\r";
        assert!(got.ends_with(expected_tail), "{got}");
    }

    #[test]
    fn unreadable_header_still_gets_a_nak() {
        let error = AckError {
            code: ErrorCode::SegmentSequenceError,
            severity: Severity::Error,
            text: "no MSH",
            location: None,
        };
        let got = ack(b"garbage", AckKind::Reject, Some(&error));
        assert!(
            got.starts_with(
                "MSH|^~\\&|||||20231114221320||ACK|ACK1|P|2.5\rMSA|AR||no MSH\rERR|^^^100&"
            ),
            "{got}"
        );
    }

    #[test]
    fn long_fields_are_cut_between_escape_sequences() {
        let mut raw = vec![b'a'; ACK_ECHO_FIELD_BYTES_MAX - 1];
        raw.extend_from_slice(b"\\F\\tail");
        assert_eq!(
            safe_cut(&raw, ACK_ECHO_FIELD_BYTES_MAX, b'\\'),
            ACK_ECHO_FIELD_BYTES_MAX - 1
        );
    }
}
