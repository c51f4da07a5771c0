//! Fuzz target: the ingest session with no sockets or threads. Arbitrary
//! bytes arrive in arbitrary chunks; appends complete in order, each Ok or
//! failed as the input says, interleaved with more bytes. Checked:
//! - every payload handed to storage is a contiguous slice of the input
//!   ending where a frame may end (0x1C before 0x0D, 0x0B or the end of
//!   input) or where the next message of a batch begins: a message is
//!   stored whole or not at all, never cut at a lone 0x1C;
//! - the answers' positive MSAs (AA/CA), read in the order they leave,
//!   name exactly the messages whose appends completed Ok, in that order
//!   (with `ack_mode = "strict"`, a subsequence: table 0155 may ask for no
//!   answer) — so ACKs keep frame order and no positive ACK ever answers a
//!   message that was not stored.
//! - frames taken while the queue refuses appends (a latched failure or a
//!   shutdown, in some chunks) get no positive answer: never stored;
//! - with an idempotency index (half the runs; keys on MSH-10 alone so
//!   copies are frequent): a positive answer for a duplicate event only if
//!   an earlier stored message had the same key and payload hash, none for
//!   a refused conflict, and every stored hash is the payload's.
#![no_main]

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use orderly::config::Config;
use orderly::config::KeyConflict;
use orderly::hl7::ack::{parse_ack, AckCode};
use orderly::hl7::parse_header;
use orderly::metrics::Metrics;
use orderly::mllp::{Decoded, FrameDecoder};
use orderly::server::dedupe::{stored_original, DedupeIndex, Original, Originals, QueueDedupe};
use orderly::server::ingest::{sha256, AckIds};
use orderly::server::session::{Ingest, Refused, Session, Step};
use orderly::wal::meta::{MetaKey, MetaView};
use orderly::wal::{AppendError, Offset};

/// What the harness stored, by offset (shared with the index's reader).
type Store = Arc<Mutex<BTreeMap<u64, Original>>>;

struct Stored(Store);
impl Originals for Stored {
    fn original(&self, offset: Offset) -> Option<Original> {
        self.0.lock().unwrap().get(&offset.0).cloned()
    }
}

/// One append asked for: payload and metadata.
struct Asked {
    payload: Vec<u8>,
    meta: Vec<u8>,
}

/// An append that completed Ok, in completion order.
struct Done {
    payload: Vec<u8>,
    meta: Vec<u8>,
}

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
    parse_header(payload)
        .map(|h| h.control_id().to_vec())
        .unwrap_or_default()
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
    let store: Store = Arc::default();
    let mut dedupe = (rng.next() % 2 == 0).then(|| QueueDedupe {
        index: DedupeIndex::new(u64::MAX, 1 << 20),
        paths: vec![orderly::hl7::FieldPath::parse("MSH-10").unwrap()],
        on_conflict: if rng.next() % 2 == 0 {
            KeyConflict::Reject
        } else {
            KeyConflict::Accept
        },
        originals: Box::new(Stored(store.clone())),
        log: None,
    });
    let mut session = Session::new(listener.max_frame_bytes);
    let mut asked: VecDeque<Asked> = VecDeque::new();
    let mut done: Vec<Done> = Vec::new();
    let mut rest = input;
    let mut closed = false;
    while !rest.is_empty() && !closed {
        let take = 1 + (rng.next() % 97) as usize;
        let (chunk, tail) = rest.split_at(take.min(rest.len()));
        rest = tail;
        session.rbuf.extend_from_slice(chunk);
        // Now and then the queue refuses (a latched fsync failure): those
        // frames are answered without an append, so never positively.
        let refuse = match rng.next() % 16 {
            0 => Some(Refused::StorageFailed("fuzz: latched failure")),
            1 => Some(Refused::ShuttingDown),
            _ => None,
        };
        loop {
            let mut ing = ingest(listener, &mut ids, &metrics, dedupe.as_mut());
            ing.refused = refuse;
            let mut append = |payload: &[u8], meta: Vec<u8>| {
                asked.push_back(Asked {
                    payload: payload.to_vec(),
                    meta,
                })
            };
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
            let mut ing = ingest(listener, &mut ids, &metrics, dedupe.as_mut());
            complete_one(
                &mut session,
                &mut asked,
                &mut done,
                &store,
                &mut rng,
                &mut ing,
            );
        }
    }
    if !closed {
        let mut ing = ingest(listener, &mut ids, &metrics, dedupe.as_mut());
        let mut append = |payload: &[u8], meta: Vec<u8>| {
            asked.push_back(Asked {
                payload: payload.to_vec(),
                meta,
            })
        };
        session.end_of_input("fuzz: end of input", &mut ing, &mut append);
    }
    while !asked.is_empty() {
        let mut ing = ingest(listener, &mut ids, &metrics, dedupe.as_mut());
        complete_one(
            &mut session,
            &mut asked,
            &mut done,
            &store,
            &mut rng,
            &mut ing,
        );
    }
    assert_eq!(session.inflight(), 0);
    assert!(session.is_quiet() || session.pending_write() > 0);

    let expected = expected_positives(&done, input);
    let positives = positive_ids(&session.out[session.written..]);
    if mode == "strict" {
        let mut it = expected.iter();
        for p in &positives {
            assert!(
                it.any(|(e, _)| same_id(p, e)),
                "positive answers follow stored messages in order"
            );
        }
    } else {
        match_in_order(&positives, &expected);
    }
});

/// Every required positive answer appears, in order; an optional one (a
/// duplicate whose original was stored) may appear in its place or not,
/// and nothing else does. Decided by dynamic programming over (expected,
/// answers), since the same control id may be optional here and required
/// there.
fn match_in_order(positives: &[Vec<u8>], expected: &[(Vec<u8>, bool)]) {
    let (n, m) = (expected.len(), positives.len());
    // ok[i][j]: expected[i..] can account for positives[j..] exactly.
    let mut ok = vec![vec![false; m + 1]; n + 1];
    ok[n][m] = true;
    for i in (0..n).rev() {
        for j in (0..=m).rev() {
            let (id, required) = (&expected[i].0, expected[i].1);
            let take = j < m && same_id(&positives[j], id) && ok[i + 1][j + 1];
            let skip = !required && ok[i + 1][j];
            ok[i][j] = take || skip;
        }
    }
    assert!(
        ok[0][0],
        "positive answers must be every stored message, in order, plus only duplicates of stored messages"
    );
}

/// Whether `payload` occurs in `input` followed by a legal end: by the
/// framing rules of issue 12 (as HAPI and NextGen Connect frame), 0x1C ends
/// a frame only before 0x0D or 0x0B, or as the last byte (this harness
/// never pauses mid-input); a message of a batch may also end where the
/// next batch segment (MSH, BHS, BTS, FHS, FTS) begins.
fn ends_at_a_frame_boundary(input: &[u8], payload: &[u8]) -> bool {
    if payload.is_empty() {
        return false;
    }
    let legal_end = |b: usize| match input.get(b) {
        Some(0x1c) => matches!(input.get(b + 1), None | Some(0x0d) | Some(0x0b)),
        Some(_) => [&b"MSH"[..], b"BHS", b"BTS", b"FHS", b"FTS"]
            .iter()
            .any(|seg| input[b..].starts_with(seg)),
        None => false,
    };
    input
        .windows(payload.len())
        .enumerate()
        .any(|(a, w)| w == payload && legal_end(a + payload.len()))
}

/// The session's context, as the event loop builds it.
fn ingest<'a>(
    listener: &'a orderly::config::ListenerConfig,
    ids: &'a mut AckIds,
    metrics: &'a Metrics,
    dedupe: Option<&'a mut QueueDedupe>,
) -> Ingest<'a> {
    Ingest {
        listener,
        peer: "fuzz",
        ids,
        metrics,
        now_ms: 0,
        refused: None,
        dedupe,
    }
}

/// The control ids that may get a positive answer, in completion order,
/// worked out from what was stored (not from the session's decisions),
/// each with whether it must: every stored message must; a duplicate event
/// may, only when an earlier stored message has its key and payload hash
/// (a copy of a version whose append failed is refused even then: a later
/// version was stored meanwhile, and the resend is judged against that);
/// a refused conflict never.
fn expected_positives(done: &[Done], input: &[u8]) -> Vec<(Vec<u8>, bool)> {
    let mut expected = Vec::new();
    let mut stored: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for d in done {
        let meta = MetaView::new(&d.meta);
        let key = meta.get(MetaKey::IdempotencyKey).map(<[u8]>::to_vec);
        let hash = meta
            .get(MetaKey::PayloadSha256)
            .expect("every record has its hash")
            .to_vec();
        match meta.get(MetaKey::Event) {
            None => {
                assert!(
                    ends_at_a_frame_boundary(input, &d.payload),
                    "a stored payload is a slice of the input ending where a frame may \
                     end (0x1C then 0x0D, 0x0B or the end of input) or where the next \
                     message of a batch begins: never cut at a lone 0x1C"
                );
                assert_eq!(hash, sha256(&d.payload), "the stored hash is the payload's");
                if let Some(k) = key {
                    stored.push((k, hash));
                }
                expected.push((control_id(&d.payload), true));
            }
            Some(b"duplicate") => {
                assert!(d.payload.is_empty(), "a duplicate is not stored again");
                let k = key.expect("a duplicate has a key");
                if stored.iter().any(|(sk, sh)| *sk == k && *sh == hash) {
                    expected.push((
                        meta.get(MetaKey::ControlId).unwrap_or_default().to_vec(),
                        false,
                    ));
                }
            }
            Some(b"conflict-rejected") => {
                assert_eq!(hash, sha256(&d.payload));
            }
            Some(other) => panic!("unknown event {other:?}"),
        }
    }
    expected
}

fn complete_one(
    session: &mut Session,
    asked: &mut VecDeque<Asked>,
    done: &mut Vec<Done>,
    store: &Store,
    rng: &mut Rng,
    ing: &mut Ingest<'_>,
) {
    let Some(a) = asked.pop_front() else { return };
    if rng.next() % 5 == 0 {
        let e = AppendError::StorageFull("fuzz".into());
        session.complete(Err(&e), &a.payload, ing);
    } else {
        let offset = done.len() as u64;
        if let Some(o) = stored_original(&a.meta, 0) {
            store.lock().unwrap().insert(offset, o);
        }
        session.complete(Ok(Offset(offset)), &a.payload, ing);
        done.push(Done {
            payload: a.payload,
            meta: a.meta,
        });
    }
}

/// MSA-2 echoes the control id without MLLP block bytes (0x0B, 0x1C),
/// which an answer must never carry; an id longer than the echo bound is
/// cut there, further back so as not to split a UTF-8 character or an
/// escape sequence (with bytes that are not UTF-8, well before it).
fn same_id(msa2: &[u8], id: &[u8]) -> bool {
    let long = id.len() > orderly::hl7::ack::CONTROL_ID_ECHO_BYTES_MAX;
    let id: Vec<u8> = id
        .iter()
        .copied()
        .filter(|b| *b != 0x0b && *b != 0x1c)
        .collect();
    msa2 == id || (long && id.starts_with(msa2))
}

/// The MSA-2 of every positive MSA in the answer stream, in order.
fn positive_ids(stream: &[u8]) -> Vec<Vec<u8>> {
    let mut decoder = FrameDecoder::for_acks(1 << 24);
    let mut out = Vec::new();
    while let Decoded::Frame(r) = decoder.decode(stream) {
        let frame = &stream[r];
        for message in ack_messages(frame) {
            let ack = parse_ack(message).unwrap_or_else(|e| {
                panic!(
                    "an answer that does not parse ({e}): {:?}",
                    String::from_utf8_lossy(frame)
                )
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
