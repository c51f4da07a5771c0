//! Builds ACK and NAK messages for inbound messages.
//!
//! The ACK swaps sending and receiving application/facility, echoes MSH-2
//! as received, the processing id and version, answers `ACK^<trigger>^ACK`
//! (or `ACK^<trigger>` before 2.4) with its own control id, and puts the
//! inbound MSH-10 whole in MSA-2. The ERR segment and MSA-3 follow the
//! inbound version's rules ([`Dialect`]). Echoed fields and error text are
//! bounded (see [`super::ACK_BYTES_MAX`]) and cut only between characters
//! and escape sequences. When the inbound MSH is unreadable the builder
//! still writes a valid NAK with default delimiters.

use super::super::delimiters::Delimiters;
use super::super::escape::encode_bounded;
use super::super::header::MshHeader;
use super::dialect::{Dialect, ErrLayout};
use super::{
    AckError, AckKind, AckMode, Hl7Timestamp, ACK_ECHO_FIELD_BYTES_MAX, ACK_TEXT_BYTES_MAX,
    CONTROL_ID_ECHO_BYTES_MAX,
};
use crate::mllp::{END_BLOCK, START_BLOCK};

/// Version written when the inbound message gives none.
pub const ACK_VERSION_DEFAULT: &[u8] = b"2.5";
/// Processing id written when the inbound message gives none.
pub const ACK_PROCESSING_ID_DEFAULT: &[u8] = b"P";
/// Longest trigger event echoed into MSH-9.2 (HL7 trigger codes are 3).
const TRIGGER_BYTES_MAX: usize = 8;
/// The broker writes MSH-7 in UTC and says so.
pub(super) const UTC_OFFSET: &[u8] = b"+0000";

/// Appends an unframed ACK for `header` (or a NAK with defaults when the
/// inbound MSH was unreadable) to `out`. `mode` and `kind` pick MSA-1 (see
/// [`super::decide`]); `ack_control_id` becomes the ACK's own MSH-10;
/// `error` adds the ERR segment (and MSA-3 text where the version has it).
pub fn build_ack(
    header: Option<&MshHeader<'_>>,
    mode: AckMode,
    kind: AckKind,
    error: Option<&AckError<'_>>,
    ack_control_id: &[u8],
    now: Hl7Timestamp,
    out: &mut Vec<u8>,
) {
    let d = header.map_or_else(Delimiters::default, |h| h.delimiters());
    let dialect = Dialect::for_version(header.map_or(&b""[..], |h| h.version()), d.component);
    let start = out.len();
    write_msh(header, &d, &dialect, ack_control_id, now, out);
    write_msa(header, mode.code(kind), error, &d, &dialect, out);
    if let Some(error) = error {
        write_err(error, &d, &dialect, out);
    }
    assert!(
        out.len() - start <= super::ACK_BYTES_MAX,
        "every ACK field is bounded"
    );
}

fn write_msh(
    header: Option<&MshHeader<'_>>,
    d: &Delimiters,
    dialect: &Dialect,
    control_id: &[u8],
    now: Hl7Timestamp,
    out: &mut Vec<u8>,
) {
    let field = |n: usize| header.map_or(&b""[..], |h| h.field(n));
    out.extend_from_slice(b"MSH");
    out.push(d.field);
    match header {
        // MSH-2 as received: a 3-character set, or one with the v2.7
        // truncation character, is answered in kind.
        Some(h) => out.extend_from_slice(h.field(2)),
        None => out.extend_from_slice(&d.encoding_chars()),
    }
    for n in [5, 6, 3, 4] {
        out.push(d.field);
        echo(field(n), d, ACK_ECHO_FIELD_BYTES_MAX, out);
    }
    out.push(d.field);
    out.extend_from_slice(now.as_bytes());
    out.extend_from_slice(UTC_OFFSET);
    if dialect.ts_precision {
        out.extend_from_slice(&[d.component, b'S']);
    }
    out.extend_from_slice(&[d.field, d.field]);
    write_message_type(
        header.map_or(&b""[..], |h| h.message_type_component(2)),
        dialect.structure_in_type,
        d,
        out,
    );
    out.push(d.field);
    encode_bounded(control_id, d, ACK_ECHO_FIELD_BYTES_MAX, out);
    out.push(d.field);
    echo(
        or_default(field(11), ACK_PROCESSING_ID_DEFAULT),
        d,
        ACK_ECHO_FIELD_BYTES_MAX,
        out,
    );
    out.push(d.field);
    echo(
        or_default(field(12), ACK_VERSION_DEFAULT),
        d,
        ACK_ECHO_FIELD_BYTES_MAX,
        out,
    );
    if !field(18).is_empty() {
        out.extend_from_slice(&[d.field; 6]); // MSH-13 .. MSH-17 empty.
        echo(field(18), d, ACK_ECHO_FIELD_BYTES_MAX, out);
    }
    out.push(b'\r');
}

/// MSH-9 `ACK^<trigger>^ACK` (or `ACK^<trigger>`), or plain `ACK` when the
/// trigger is unusable.
fn write_message_type(trigger: &[u8], structure: bool, d: &Delimiters, out: &mut Vec<u8>) {
    let trigger = trim(trigger);
    out.extend_from_slice(b"ACK");
    let usable = !trigger.is_empty()
        && trigger.len() <= TRIGGER_BYTES_MAX
        && trigger.iter().all(u8::is_ascii_alphanumeric);
    if usable {
        out.push(d.component);
        out.extend_from_slice(trigger);
        if structure {
            out.push(d.component);
            out.extend_from_slice(b"ACK");
        }
    }
}

fn write_msa(
    header: Option<&MshHeader<'_>>,
    code: &[u8; 2],
    error: Option<&AckError<'_>>,
    d: &Delimiters,
    dialect: &Dialect,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"MSA");
    out.push(d.field);
    out.extend_from_slice(code);
    out.push(d.field);
    let control_id = header.map_or(&b""[..], |h| h.control_id());
    echo(control_id, d, CONTROL_ID_ECHO_BYTES_MAX, out);
    if let (Some(error), true) = (error, dialect.msa_text) {
        out.push(d.field);
        encode_bounded(error.text.as_bytes(), d, ACK_TEXT_BYTES_MAX, out);
    }
    out.push(b'\r');
}

/// The ERR segment in the version's layout (see [`ErrLayout`]).
fn write_err(error: &AckError<'_>, d: &Delimiters, dialect: &Dialect, out: &mut Vec<u8>) {
    out.extend_from_slice(b"ERR");
    out.push(d.field);
    match dialect.err {
        ErrLayout::CodeOnly => push_number(u32::from(error.code.code()), out),
        ErrLayout::Eld => {
            write_location(error, d, out);
            out.push(d.component);
            write_code(error, d.subcomponent, d, out);
        }
        ErrLayout::Erl => {
            out.push(d.field);
            if error.location.is_some() {
                write_location(error, d, out);
            }
            out.push(d.field);
            write_code(error, d.component, d, out);
            out.push(d.field);
            out.push(error.severity.letter());
            out.extend_from_slice(&[d.field; 4]); // ERR-5 .. ERR-7 empty.
            encode_bounded(error.text.as_bytes(), d, ACK_TEXT_BYTES_MAX, out);
        }
    }
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

/// Echoes a raw inbound field into an ACK, cut at the echo bound.
pub(super) fn echo_field(raw: &[u8], d: &Delimiters, out: &mut Vec<u8>) {
    echo(raw, d, ACK_ECHO_FIELD_BYTES_MAX, out);
}

/// Echoes a raw (already escaped) inbound field, cut to `max` bytes
/// without splitting a UTF-8 character or an escape sequence.
/// MLLP's block bytes (0x0B, 0x1C) are left out: a sender's field may hold
/// them as data, but in an answer a 0x1C before the segment's CR would end
/// the frame early (found by the `session` fuzz target).
fn echo(raw: &[u8], d: &Delimiters, max: usize, out: &mut Vec<u8>) {
    let kept = &raw[..safe_cut(raw, max, d.escape)];
    let is_block_byte = |b: &u8| *b == START_BLOCK || *b == END_BLOCK;
    if kept.iter().any(is_block_byte) {
        out.extend(kept.iter().filter(|b| !is_block_byte(b)));
    } else {
        out.extend_from_slice(kept);
    }
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

    fn ack(msg: &[u8], mode: AckMode, kind: AckKind, error: Option<&AckError<'_>>) -> String {
        let header = parse_header(msg).ok();
        let mut out = Vec::new();
        build_ack(
            header.as_ref(),
            mode,
            kind,
            error,
            b"ACK1",
            Hl7Timestamp::from_unix_seconds(NOW),
            &mut out,
        );
        String::from_utf8(out).unwrap()
    }

    fn missing_pid3() -> AckError<'static> {
        AckError {
            code: ErrorCode::RequiredFieldMissing,
            severity: Severity::Error,
            text: "PID-3 missing | see ^docs",
            location: Some(ErrorLocation {
                segment: *b"PID",
                sequence: 1,
                field: Some(3),
            }),
        }
    }

    #[test]
    fn original_mode_ack_swaps_parties_and_echoes_ids() {
        let got = ack(
            b"MSH|^~\\&|SA|SF|RA|RF|2024||ADT^A01^ADT_A01|MSG7|T|2.4\rPID|1",
            AckMode::Original,
            AckKind::Accept,
            None,
        );
        assert_eq!(
            got,
            "MSH|^~\\&|RA|RF|SA|SF|20231114221320+0000||ACK^A01^ACK|ACK1|T|2.4\rMSA|AA|MSG7\r"
        );
    }

    #[test]
    fn before_2_4_the_type_has_no_structure_and_2_1_time_has_a_precision() {
        let got = ack(
            b"MSH|^~\\&|SA|SF|RA|RF|2024||ADT^A01|9|P|2.1",
            AckMode::Original,
            AckKind::Accept,
            None,
        );
        assert!(
            got.contains("|20231114221320+0000^S||ACK^A01|ACK1|P|2.1\r"),
            "{got}"
        );
    }

    #[test]
    fn error_text_is_escaped_and_err_follows_the_version() {
        let error = missing_pid3();
        let v25 = ack(
            b"MSH|^~\\&|SA|SF|RA|RF|2024||ADT^A01|M1|P|2.5",
            AckMode::Original,
            AckKind::Error,
            Some(&error),
        );
        assert!(
            v25.ends_with(
                "MSA|AE|M1|PID-3 missing \\F\\ see \\S\\docs\r\
ERR||PID^1^3|101^Required field missing^HL70357|E||||PID-3 missing \\F\\ see \\S\\docs\r"
            ),
            "{v25}"
        );
        let v23 = ack(
            b"MSH|^~\\&|SA|SF|RA|RF|2024||ADT^A01|M1|P|2.3",
            AckMode::Original,
            AckKind::Error,
            Some(&error),
        );
        assert!(
            v23.ends_with("MSA|AE|M1|PID-3 missing \\F\\ see \\S\\docs\rERR|PID^1^3^101&Required field missing&HL70357\r"),
            "{v23}"
        );
        let v28 = ack(
            b"MSH|^~\\&#|SA|SF|RA|RF|2024||ADT^A01|M1|P|2.8",
            AckMode::Enhanced,
            AckKind::Error,
            Some(&error),
        );
        assert!(v28.starts_with("MSH|^~\\&#|RA|"), "{v28}");
        assert!(v28.contains("\rMSA|CE|M1\rERR||PID^1^3|"), "{v28}");
    }

    /// Found by the `session` fuzz target: a 0x1C inside an inbound field
    /// (data, by the framing rules) was echoed before the ACK's segment CR,
    /// and `0x1C 0x0D` ended the answer's frame in the middle.
    #[test]
    fn block_bytes_in_echoed_fields_never_reach_the_answer() {
        let msg = b"MSH|^~\\&|A\x1cB|F|R|G|2024||ORU^R01|C\x0b1|P|2.5\x1c\rPID|1\r";
        let header = parse_header(msg).unwrap();
        let mut out = Vec::new();
        let now = Hl7Timestamp::from_unix_seconds(0);
        build_ack(
            Some(&header),
            AckMode::Original,
            AckKind::Accept,
            None,
            b"X",
            now,
            &mut out,
        );
        assert!(
            !out.contains(&0x1c) && !out.contains(&0x0b),
            "{}",
            String::from_utf8_lossy(&out)
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("MSH|^~\\&|R|G|AB|F|"), "{text}");
        assert!(text.contains("\rMSA|AA|C1\r"), "{text}");
    }

    #[test]
    fn unreadable_header_still_gets_a_nak() {
        let error = AckError {
            code: ErrorCode::SegmentSequenceError,
            severity: Severity::Error,
            text: "no MSH",
            location: None,
        };
        let got = ack(b"garbage", AckMode::Original, AckKind::Error, Some(&error));
        assert_eq!(
            got,
            "MSH|^~\\&|||||20231114221320+0000||ACK|ACK1|P|2.5\rMSA|AE||no MSH\r\
ERR|||100^Segment sequence error^HL70357|E||||no MSH\r"
        );
    }

    #[test]
    fn a_199_character_control_id_is_echoed_whole() {
        let id = "C".repeat(199);
        let msg = format!("MSH|^~\\&|A|B|C|D|2024||ADT^A01|{id}|P|2.7");
        let got = ack(msg.as_bytes(), AckMode::Original, AckKind::Accept, None);
        assert!(got.ends_with(&format!("\rMSA|AA|{id}\r")), "{got}");
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
