//! Fuzz target: the ingest session with no sockets or threads. Arbitrary
//! bytes arrive in arbitrary chunks; appends complete in order, each Ok or
//! failed as the input says, interleaved with more bytes. Checked:
//! - every payload handed to storage is a contiguous slice of the input
//!   (a message is stored whole or not at all);
//! - the answers' positive MSAs (AA/CA), read in the order they leave,
//!   name exactly the messages whose appends completed Ok, in that order
//!   (with `ack_mode = "strict"`, a subsequence: table 0155 may ask for no
//!   answer) — so ACKs keep frame order and no positive ACK ever answers a
//!   message that was not stored.
#![no_main]

use std::collections::VecDeque;

use libfuzzer_sys::fuzz_target;
use orderly::config::Config;
use orderly::hl7::ack::{parse_ack, AckCode};
use orderly::hl7::parse_header;
use orderly::metrics::Metrics;
use orderly::mllp::{Decoded, FrameDecoder};
use orderly::server::ingest::AckIds;
use orderly::server::session::{Ingest, Session, Step};
use orderly::wal::AppendError;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn control_id(payload: &[u8]) -> Vec<u8> {
    parse_header(payload).map(|h| h.control_id().to_vec()).unwrap_or_default()
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let (seed, input) = data.split_at(8);
    let mut rng = Rng(u64::from_le_bytes(seed.try_into().unwrap()) | 1);
    let mode = ["auto", "original", "strict"][(rng.next() % 3) as usize];
    let text = format!("[[listener]]\nname='f'\nlisten='127.0.0.1:1'\nqueue='q'\nmax_frame_bytes = 1024\nack_mode = '{mode}'\n");
    let config = Config::parse(&text, "fuzz").expect("valid config");
    let listener = &config.listeners[0];
    let metrics = Metrics::default();
    let mut ids = AckIds::new();
    let mut session = Session::new(listener.max_frame_bytes);
    // (payload, completed Ok?) in the order appends were asked for.
    let mut asked: VecDeque<Vec<u8>> = VecDeque::new();
    let mut stored_ok: Vec<Vec<u8>> = Vec::new();
    let mut rest = input;
    let mut closed = false;
    while !rest.is_empty() && !closed {
        let take = 1 + (rng.next() % 97) as usize;
        let (chunk, tail) = rest.split_at(take.min(rest.len()));
        rest = tail;
        session.rbuf.extend_from_slice(chunk);
        loop {
            let mut ing = Ingest { listener, peer: "fuzz", ids: &mut ids, metrics: &metrics, now_ms: 0, refused: None };
            let mut append = |payload: &[u8], _meta: Vec<u8>| asked.push_back(payload.to_vec());
            match session.step(&mut ing, &mut append) {
                Step::Frame | Step::Junk => {}
                Step::NeedMore => break,
                Step::Close(_) => {
                    closed = true;
                    break;
                }
            }
        }
        session.compact();
        // Complete some of the waiting appends, oldest first.
        let finish = (rng.next() % 3) as usize;
        for _ in 0..finish.min(asked.len()) {
            complete_one(&mut session, &mut asked, &mut stored_ok, &mut rng, listener, &mut ids, &metrics);
        }
    }
    if !closed {
        let mut ing = Ingest { listener, peer: "fuzz", ids: &mut ids, metrics: &metrics, now_ms: 0, refused: None };
        let mut append = |payload: &[u8], _meta: Vec<u8>| asked.push_back(payload.to_vec());
        session.end_of_input("fuzz: end of input", &mut ing, &mut append);
    }
    while !asked.is_empty() {
        complete_one(&mut session, &mut asked, &mut stored_ok, &mut rng, listener, &mut ids, &metrics);
    }
    assert_eq!(session.inflight(), 0);
    assert!(session.is_quiet() || session.pending_write() > 0);

    for payload in &stored_ok {
        assert!(
            input.windows(payload.len().max(1)).any(|w| w == &payload[..]) || payload.is_empty(),
            "a stored payload is a slice of the input"
        );
    }
    let positives = positive_ids(&session.out[session.written..]);
    let expected: Vec<Vec<u8>> = stored_ok.iter().map(|p| control_id(p)).collect();
    if mode == "strict" {
        let mut it = expected.iter();
        for p in &positives {
            assert!(it.any(|e| same_id(p, e)), "positive answers follow stored messages in order");
        }
    } else {
        assert_eq!(positives.len(), expected.len(), "one positive answer per stored message");
        for (p, e) in positives.iter().zip(&expected) {
            assert!(same_id(p, e), "positive answers in storage order");
        }
    }
});

fn complete_one(
    session: &mut Session,
    asked: &mut VecDeque<Vec<u8>>,
    stored_ok: &mut Vec<Vec<u8>>,
    rng: &mut Rng,
    listener: &orderly::config::ListenerConfig,
    ids: &mut AckIds,
    metrics: &Metrics,
) {
    let Some(payload) = asked.pop_front() else { return };
    let mut ing = Ingest { listener, peer: "fuzz", ids, metrics, now_ms: 0, refused: None };
    if rng.next() % 5 == 0 {
        let e = AppendError::StorageFull("fuzz".into());
        session.complete(Err(&e), &payload, &mut ing);
    } else {
        session.complete(Ok(()), &payload, &mut ing);
        stored_ok.push(payload);
    }
}

/// MSA-2 echoes the control id, cut at a bound and without MLLP block
/// bytes (0x0B, 0x1C), which an answer must never carry.
fn same_id(msa2: &[u8], id: &[u8]) -> bool {
    let id: Vec<u8> = id.iter().copied().filter(|b| *b != 0x0b && *b != 0x1c).collect();
    msa2 == id || (msa2.len() >= 256 && id.starts_with(msa2))
}

/// The MSA-2 of every positive MSA in the answer stream, in order.
fn positive_ids(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut decoder = FrameDecoder::for_acks(1 << 24);
    let mut out = Vec::new();
    while let Decoded::Frame(r) = decoder.decode(stream) {
        let frame = &stream[r];
        for message in ack_messages(frame) {
            let ack = parse_ack(message).unwrap_or_else(|e| {
                panic!("an answer that does not parse ({e}): {:?}", String::from_utf8_lossy(frame))
            });
            if matches!(ack.code, AckCode::ApplicationAccept | AckCode::CommitAccept) {
                out.push(ack.control_id.to_vec());
            }
        }
    }
    out
}

/// The ACK messages of a frame: one, or each `MSH`…of a batch ACK.
fn ack_messages(frame: &[u8]) -> Vec<&[u8]> {
    if !(frame.starts_with(b"BHS") || frame.starts_with(b"FHS")) {
        return vec![frame];
    }
    let starts: Vec<usize> = (0..frame.len())
        .filter(|&i| (i == 0 || frame[i - 1] == b'\r') && frame[i..].starts_with(b"MSH"))
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(k, &s)| &frame[s..starts.get(k + 1).copied().unwrap_or(frame.len())])
        .collect()
}
