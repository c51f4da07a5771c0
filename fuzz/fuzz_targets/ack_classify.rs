//! Fuzz target: the downstream ACK classifier over arbitrary answers.
//! Besides never panicking, it must never call a message delivered unless
//! the answer says so for that message: an MSA naming it (or any MSA when
//! it has no control id) with a success code, a batch ACK without MSA, or
//! a commit block from a destination configured for MLLP release 2. A byte
//! copy of an ACK already consumed never confirms a repeated control id.
#![no_main]

use std::collections::VecDeque;

use libfuzzer_sys::fuzz_target;
use orderly::delivery::verdict::{classify, fingerprint, AckCodes, Context, Disposition, Outcome};
use orderly::hl7::ack::{parse_ack, AckCode};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let split = rest
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(rest.len().min(8));
    let (sent, ack) = rest.split_at(split);
    let ack = ack.get(1..).unwrap_or_default();
    let (r2, repeated, consumed_copy) = (flags & 1 != 0, flags & 2 != 0, flags & 4 != 0);
    let earlier: VecDeque<Vec<u8>> = if repeated {
        [sent.to_vec()].into_iter().collect()
    } else {
        VecDeque::new()
    };
    let consumed: VecDeque<u64> = if consumed_copy {
        [fingerprint(ack)].into_iter().collect()
    } else {
        VecDeque::new()
    };
    let codes = AckCodes::default();
    let ctx = Context {
        codes: &codes,
        mllp_r2: r2,
        earlier_ids: &earlier,
        consumed: &consumed,
    };
    let outcome = classify(ack, sent, &ctx);
    if outcome != Some(Outcome::Delivered) {
        return;
    }
    let parsed = parse_ack(ack).ok();
    let commit = parsed
        .as_ref()
        .is_some_and(|p| p.code == AckCode::MllpCommit);
    if commit {
        assert!(r2, "a commit block counted without mllp_r2");
        return;
    }
    assert!(
        !(repeated && consumed_copy),
        "a stale copy confirmed a repeated control id"
    );
    let text = String::from_utf8_lossy(ack);
    let is_batch = text
        .trim_start_matches(['\r', '\n', ' ', '\t', '\u{feff}'])
        .starts_with("BHS")
        || text
            .trim_start_matches(['\r', '\n', ' ', '\t', '\u{feff}'])
            .starts_with("FHS");
    let msas: Vec<_> = ack
        .split(|b| *b == b'\r' || *b == b'\n')
        .filter(|s| s.starts_with(b"MSA"))
        .filter_map(|s| parse_ack(s).ok())
        .collect();
    if is_batch && msas.is_empty() {
        return;
    }
    let success = |p: &orderly::hl7::ack::ParsedAck<'_>| {
        codes.disposition(p.code) == Some(Disposition::Success)
            && (sent.is_empty() || p.acknowledges(sent))
    };
    let confirmed = if is_batch {
        msas.iter().any(success)
    } else {
        parsed.as_ref().is_some_and(success)
    };
    assert!(confirmed, "delivered without an answer naming the message");
});
