//! Fuzz target: build an ACK for arbitrary inbound bytes and error text, then
//! parse it back. The ACK must always parse, validate at `minimal`, stay
//! under the size bound, and carry back the code, control id and text (MSA-3
//! where the inbound version has it, ERR-8 from 2.5 on).
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderly::hl7::ack::{
    self, AckCode, AckError, AckKind, AckMode, ErrorCode, Hl7Timestamp, Severity,
};
use orderly::hl7::{parse_header, validate, Message, ValidationLevel};

fn expected_code(mode: AckMode, kind: AckKind) -> AckCode {
    match (mode, kind) {
        (AckMode::Original, AckKind::Accept) => AckCode::ApplicationAccept,
        (AckMode::Original, AckKind::Error) => AckCode::ApplicationError,
        (AckMode::Original, _) => AckCode::ApplicationReject,
        (_, AckKind::Accept) => AckCode::CommitAccept,
        (_, AckKind::Error) => AckCode::CommitError,
        _ => AckCode::CommitReject,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let split = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
    let (text_bytes, inbound) = rest.split_at(split);
    let text = String::from_utf8_lossy(text_bytes);
    let kind = [AckKind::Accept, AckKind::Error, AckKind::Reject][usize::from(selector % 3)];
    let mode = if selector & 0x40 != 0 {
        AckMode::Enhanced
    } else {
        AckMode::Original
    };
    let error = AckError {
        code: ErrorCode::ApplicationInternalError,
        severity: Severity::Error,
        text: &text,
        location: None,
    };
    let header = parse_header(inbound).ok();
    let mut out = Vec::new();
    let with_error = selector & 0x80 != 0;
    ack::build_ack(
        header.as_ref(),
        mode,
        kind,
        with_error.then_some(&error),
        b"ACK-1",
        Hl7Timestamp::from_unix_seconds(u64::from(selector) << 24),
        &mut out,
    );
    assert!(out.len() <= ack::ACK_BYTES_MAX);

    let parsed = ack::parse_ack(&out).expect("our own ACK parses");
    assert_eq!(parsed.code, expected_code(mode, kind));
    let sent_id = header.map_or(&b""[..], |h| h.control_id());
    if sent_id.len() <= ack::CONTROL_ID_ECHO_BYTES_MAX {
        assert_eq!(parsed.control_id, sent_id);
    }
    validate(&out, ValidationLevel::Minimal).expect("our own ACK validates");
    let message = Message::parse(&out).expect("our own ACK parses as a message");
    let mut again = Vec::new();
    message.write_to(&mut again);
    assert_eq!(again, out);
    if with_error {
        let info = parsed.error.expect("ERR segment present");
        assert_eq!(info.code, Some(207));
        let sent = text.as_bytes();
        let dialect = ack::Dialect::for_version(
            header.map_or(&b""[..], |h| h.version()),
            header.map_or(b'^', |h| h.delimiters().component),
        );
        let text = if dialect.msa_text {
            parsed.text
        } else {
            info.text
        };
        if let Some(got) = text.map(|t| t.decoded().into_owned()) {
            assert!(
                sent.starts_with(&got),
                "text decodes to a prefix of the text"
            );
        }
        if sent.len() <= ack::ACK_TEXT_BYTES_MAX / 5 && sent.iter().any(|&b| b != b' ') {
            assert_eq!(
                text.map(|t| t.decoded().into_owned()).as_deref(),
                Some(sent)
            );
        }
    }
});
