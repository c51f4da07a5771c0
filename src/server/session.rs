//! One connection's ingest session, without sockets or threads: bytes in;
//! appends to make and answer bytes out, in frame order.
//!
//! Each frame is parsed once: its MSH (or each message's, for a batch) is
//! read, checked, turned into the record metadata and into the positive
//! answer the sender gets if the append succeeds, all before the append is
//! asked for. Completions come back in submission order (`complete`); an
//! answer leaves only when every frame before it has its answer, so ACKs
//! keep frame order whatever the disk does.
//!
//! Architecture Invariant: a positive ACK (AA/CA) is written only for a
//! message whose append completed `Ok`, or for a duplicate (same
//! idempotency key, same payload) of a message whose append completed
//! `Ok`, once the duplicate's event record is durable too; a batch answer
//! lists each message with its own outcome.

use std::collections::VecDeque;
use std::ops::Range;

use super::dedupe::{QueueDedupe, Verdict};
use super::ingest::{self, AckIds, Keyed, LazyParse};
use crate::config::{KeyConflict, ListenerConfig};
use crate::constants::{BUFFER_SHRINK_ABOVE_BYTES, READ_CHUNK_BYTES};
use crate::hl7::ack::{
    build_ack, decide, write_batch_ack, AckError, BatchEcho, ErrorCode, Hl7Timestamp, Outcome,
    Severity,
};
use crate::hl7::batch::{is_batch, split_batch};
use crate::hl7::{check_header, parse_header, Delimiters, MshHeader};
use crate::metrics::Metrics;
use crate::mllp::scan::find2;
use crate::mllp::{Decoded, FrameDecoder, FrameError, END_BLOCK, START_BLOCK, TRAILER};
use crate::wal::{AppendError, Offset};

/// Spare answer buffers kept per connection, and the largest kept.
const SPARE_BUFFERS_MAX: usize = 64;
const SPARE_BUFFER_BYTES_MAX: usize = 4096;

/// What the session needs from its listener while handling bytes.
pub struct Ingest<'a> {
    pub listener: &'a ListenerConfig,
    /// The peer's address as text (stored with each record).
    pub peer: &'a str,
    pub ids: &'a mut AckIds,
    pub metrics: &'a Metrics,
    pub now_ms: u64,
    /// Why the queue takes no appends right now: answered "not stored,
    /// resend later" without touching the log.
    pub refused: Option<Refused<'a>>,
    /// The queue's idempotency index (`None`: no deduplication).
    pub dedupe: Option<&'a mut QueueDedupe>,
}

/// Why a session answers every message "not stored, resend later".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused<'a> {
    /// The queue's log latched a failed fsync or write (the reason).
    StorageFailed(&'a str),
    /// The broker is shutting down: frames it had already read but not
    /// yet taken are answered rather than dropped in silence.
    ShuttingDown,
}

impl Refused<'_> {
    fn error(&self) -> AppendError {
        match self {
            Refused::StorageFailed(reason) => AppendError::Failed(reason.to_string()),
            Refused::ShuttingDown => AppendError::Closed,
        }
    }
}

impl Ingest<'_> {
    fn timestamp(&self) -> Hl7Timestamp {
        Hl7Timestamp::from_unix_seconds(self.now_ms / 1000)
    }
}

/// Receives the appends a session asks for: the payload (borrowed from the
/// session's buffer; copy it) and its metadata.
pub trait Appender {
    fn append(&mut self, payload: &[u8], meta: Vec<u8>);
}

impl<F: FnMut(&[u8], Vec<u8>)> Appender for F {
    fn append(&mut self, payload: &[u8], meta: Vec<u8>) {
        self(payload, meta)
    }
}

/// What one [`Session::step`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// A frame was handled (stored, refused or answered).
    Frame,
    /// Bytes outside frames were skipped.
    Junk,
    /// Nothing more in the buffer.
    NeedMore,
    /// The stream broke a limit: answer what is pending, then close.
    Close(FrameError),
}

/// One position in the answer order.
enum Slot {
    /// Framed answer bytes (empty: no answer is due, e.g. `strict` + NE).
    Ready(Vec<u8>),
    /// One message waiting for its append; on `Ok` its framed answer
    /// (possibly empty) is sent.
    Single(Vec<u8>, Ticket),
    /// A batch (or back-to-back messages) waiting for some appends.
    Batch(Box<BatchSlot>),
}

struct BatchSlot {
    echo: BatchEcho,
    delimiters: Delimiters,
    entries: Vec<Entry>,
    waiting: usize,
}

/// One message of a batch.
enum Entry {
    /// Its unframed ACK message (empty: none due).
    Answered(Vec<u8>),
    /// Waiting for its append; holds the ACK message due on `Ok`.
    Waiting(Vec<u8>, Ticket),
}

/// What an append settles besides the answer.
#[derive(Debug)]
pub enum Ticket {
    /// A message without an idempotency key.
    Plain,
    /// A message stored under a key: the index learns where, or that it
    /// was not stored.
    Keyed {
        key: Vec<u8>,
        sha256: [u8; 32],
        new_version: bool,
    },
    /// The event record of a duplicate. `waited`: its original was still in
    /// flight, so the positive answer stands only if that was stored.
    /// `msh`: the duplicate's MSH, for a NAK's header (the event record
    /// does not hold the payload).
    Duplicate {
        key: Vec<u8>,
        sha256: [u8; 32],
        waited: bool,
        msh: Vec<u8>,
    },
    /// The event record of a refused conflict: its answer is negative
    /// whatever the append's outcome. `waited`: the version it conflicts
    /// with was still in flight (key, payload hash); if that is then not
    /// stored, the key was never accepted, so the answer becomes "not
    /// stored, resend later" instead of a content error the sender would
    /// not retry.
    Refused { waited: Option<(Vec<u8>, [u8; 32])> },
}

/// A connection's decoder, read buffer, answer queue and write buffer.
pub struct Session {
    pub rbuf: Vec<u8>,
    pub decoder: FrameDecoder,
    slots: VecDeque<Slot>,
    /// Answer bytes to write; `written` of them are gone.
    pub out: Vec<u8>,
    pub written: usize,
    /// Appends asked for and not yet completed.
    inflight: usize,
    spare: Vec<Vec<u8>>,
}

impl Session {
    pub fn new(max_frame_bytes: usize) -> Session {
        Session {
            rbuf: Vec::new(),
            decoder: FrameDecoder::new(max_frame_bytes),
            slots: VecDeque::new(),
            out: Vec::new(),
            written: 0,
            inflight: 0,
            spare: Vec::new(),
        }
    }

    /// Frames taken and not yet answered (each holds a place in the order).
    pub fn unanswered(&self) -> usize {
        self.slots.len()
    }

    pub fn inflight(&self) -> usize {
        self.inflight
    }

    pub fn pending_write(&self) -> usize {
        self.out.len() - self.written
    }

    /// Nothing left to answer or send.
    pub fn is_quiet(&self) -> bool {
        self.slots.is_empty() && self.pending_write() == 0
    }

    /// Bytes were written to the peer.
    pub fn wrote(&mut self, n: usize) {
        self.written += n;
        debug_assert!(self.written <= self.out.len());
        if self.written == self.out.len() {
            self.out.clear();
            self.written = 0;
            shrink(&mut self.out);
        }
    }

    /// Decodes the next event in the buffer and handles it.
    pub fn step(&mut self, ing: &mut Ingest<'_>, appender: &mut dyn Appender) -> Step {
        match self.decoder.decode(&self.rbuf) {
            Decoded::Frame(range) => {
                self.handle_frame(range, ing, appender);
                Step::Frame
            }
            Decoded::Junk { bytes } => {
                Metrics::inc(&ing.metrics.junk_events);
                Metrics::add(&ing.metrics.junk_bytes, bytes as u64);
                tracing::info!(peer = %ing.peer, bytes, "discarded bytes outside MLLP frames");
                Step::Junk
            }
            Decoded::Invalid(FrameError::TooLarge {
                limit_bytes,
                prefix,
            }) => match self.handle_too_large(prefix, limit_bytes, ing) {
                Ok(()) => Step::Frame,
                Err(e) => Step::Close(e),
            },
            Decoded::Invalid(e) => {
                Metrics::inc(&ing.metrics.connections_closed_protocol);
                tracing::warn!(peer = %ing.peer, error = %e, "closing connection");
                Step::Close(e)
            }
            _ => Step::NeedMore,
        }
    }

    /// Ends a frame whose trailing `0x1C` saw no more bytes for the pause.
    pub fn finish_pending(&mut self, ing: &mut Ingest<'_>, appender: &mut dyn Appender) -> bool {
        match self.decoder.finish_pending(&self.rbuf) {
            Some(range) => {
                Metrics::inc(&ing.metrics.frames_ended_by_pause);
                self.handle_frame(range, ing, appender);
                true
            }
            None => false,
        }
    }

    /// The peer sent its last byte, or stalled past `frame_timeout_s`:
    /// frames still buffered are taken, a trailing `0x1C` ends its frame,
    /// and a partial frame whose MSH is readable gets a NAK, never silence.
    pub fn end_of_input(&mut self, why: &str, ing: &mut Ingest<'_>, appender: &mut dyn Appender) {
        while let Step::Frame | Step::Junk = self.step(ing, appender) {}
        if let Some(range) = self.decoder.finish_pending(&self.rbuf) {
            self.handle_frame(range, ing, appender);
        } else if let Some(range) = self.decoder.partial_frame(&self.rbuf) {
            self.handle_incomplete(range, why, ing);
            // Answered (or discarded) once: a later end of input, such as a
            // shutdown after the peer's close, must not answer it again.
            self.decoder.abandon(&self.rbuf);
        }
        self.compact();
    }

    /// Drops consumed input; gives back the memory of a large frame once
    /// it is gone.
    pub fn compact(&mut self) {
        self.decoder.compact(&mut self.rbuf);
        shrink(&mut self.rbuf);
    }

    fn handle_frame(
        &mut self,
        range: Range<usize>,
        ing: &mut Ingest<'_>,
        appender: &mut dyn Appender,
    ) {
        Metrics::inc(&ing.metrics.frames_received);
        let msg = &self.rbuf[range.clone()];
        if is_batch(msg) || holds_second_msh(msg) {
            self.handle_batch(range, ing, appender);
            return;
        }
        let mut framed = self.spare.pop().unwrap_or_default();
        framed.push(START_BLOCK);
        match plan_message(msg, ing, &mut framed) {
            Plan::Store {
                meta,
                ticket,
                payload,
            } => {
                close_frame(&mut framed);
                appender.append(if payload { msg } else { &[] }, meta);
                self.inflight += 1;
                self.slots.push_back(Slot::Single(framed, ticket));
            }
            Plan::Answer(unframed) => {
                framed.clear();
                frame_into(&unframed, &mut framed);
                self.push_ready(framed);
            }
        }
    }

    fn handle_batch(
        &mut self,
        range: Range<usize>,
        ing: &mut Ingest<'_>,
        appender: &mut dyn Appender,
    ) {
        let bytes = &self.rbuf[range];
        let batch = match split_batch(bytes) {
            Ok(b) => b,
            Err(e) => {
                Metrics::inc(&ing.metrics.messages_rejected);
                tracing::warn!(peer = %ing.peer, reason = %e, "batch rejected");
                let error = AckError {
                    code: ErrorCode::SegmentSequenceError,
                    severity: Severity::Error,
                    text: "batch holds no readable message",
                    location: None,
                };
                let header = parse_header(first_msh(bytes)).ok();
                let framed =
                    framed_answer(header.as_ref(), Outcome::ContentError, Some(&error), ing);
                self.push_ready(framed);
                return;
            }
        };
        let echo = BatchEcho::of(&batch);
        let delimiters = parse_header(batch.messages[0])
            .map(|h| h.delimiters())
            .unwrap_or_default();
        let (count, batch_id, file_id) = (
            batch.messages.len(),
            echo.batch.as_ref().map_or(&[][..], |e| &e.control_id[..]),
            echo.file.as_ref().map_or(&[][..], |e| &e.control_id[..]),
        );
        let mut entries = Vec::with_capacity(count);
        let mut waiting = 0;
        for (i, msg) in batch.messages.iter().enumerate() {
            let mut positive = Vec::new();
            match plan_message(msg, ing, &mut positive) {
                Plan::Store {
                    meta,
                    ticket,
                    payload,
                } => {
                    let meta = with_batch_position(meta, batch_id, file_id, i, count);
                    appender.append(if payload { msg } else { &[] }, meta);
                    self.inflight += 1;
                    waiting += 1;
                    entries.push(Entry::Waiting(positive, ticket));
                }
                Plan::Answer(answer) => entries.push(Entry::Answered(answer)),
            }
        }
        let slot = BatchSlot {
            echo,
            delimiters,
            entries,
            waiting,
        };
        if waiting == 0 {
            let framed = slot.finish(ing);
            self.push_ready(framed);
        } else {
            self.slots.push_back(Slot::Batch(Box::new(slot)));
        }
    }

    fn handle_too_large(
        &mut self,
        prefix: Range<usize>,
        limit_bytes: usize,
        ing: &mut Ingest<'_>,
    ) -> Result<(), FrameError> {
        Metrics::inc(&ing.metrics.frames_too_large);
        let head = &self.rbuf[prefix.clone()];
        let Ok(h) = parse_header(head) else {
            Metrics::inc(&ing.metrics.connections_closed_protocol);
            tracing::warn!(peer = %ing.peer, limit_bytes, "frame over max_frame_bytes with unreadable header; closing connection");
            return Err(FrameError::TooLarge {
                limit_bytes,
                prefix,
            });
        };
        tracing::warn!(peer = %ing.peer, control_id = %String::from_utf8_lossy(h.control_id()), limit_bytes, "frame over max_frame_bytes refused");
        let framed = framed_answer(
            Some(&h),
            Outcome::ContentError,
            Some(&ingest::too_large_error()),
            ing,
        );
        self.push_ready(framed);
        Ok(())
    }

    fn handle_incomplete(&mut self, range: Range<usize>, why: &str, ing: &mut Ingest<'_>) {
        Metrics::inc(&ing.metrics.frames_incomplete);
        let head = &self.rbuf[range];
        let Ok(h) = parse_header(head) else {
            tracing::info!(peer = %ing.peer, reason = why, bytes = head.len(), "partial frame without a readable MSH discarded");
            return;
        };
        tracing::warn!(peer = %ing.peer, control_id = %String::from_utf8_lossy(h.control_id()), reason = why, "frame incomplete (no 0x1C end block); not stored");
        // Cut off by our own shutdown, the sender did nothing wrong: say so.
        let error = match ing.refused {
            Some(Refused::ShuttingDown) => ingest::storage_error(&AppendError::Closed),
            _ => ingest::incomplete_error(),
        };
        let framed = framed_answer(Some(&h), Outcome::NotStored, Some(&error), ing);
        self.push_ready(framed);
    }

    /// An append finished. Completions arrive in the order appends were
    /// asked for, so this one belongs to the oldest waiting message.
    /// `payload` is the stored (or refused) message, for a NAK's header.
    pub fn complete(
        &mut self,
        result: Result<Offset, &AppendError>,
        payload: &[u8],
        ing: &mut Ingest<'_>,
    ) {
        debug_assert!(
            self.inflight > 0,
            "a completion for an append never asked for"
        );
        self.inflight = self.inflight.saturating_sub(1);
        let Some(i) = self.slots.iter().position(|s| !matches!(s, Slot::Ready(_))) else {
            debug_assert!(false, "a completion always has a waiting slot");
            return;
        };
        let refusal = |ing: &mut Ingest<'_>, e: &AppendError, msh: &[u8], out: &mut Vec<u8>| {
            let header = parse_header(if payload.is_empty() { msh } else { payload }).ok();
            let error = ingest::storage_error(e);
            write_answer(
                header.as_ref(),
                ingest::storage_outcome(e),
                Some(&error),
                ing,
                out,
            );
        };
        match &mut self.slots[i] {
            Slot::Single(positive, ticket) => {
                let settled = settle(ticket, result, ing);
                let framed = match &settled {
                    Ok(()) => std::mem::take(positive),
                    Err(e) => {
                        let mut unframed = Vec::new();
                        refusal(ing, e, ticket.msh(), &mut unframed);
                        let mut framed = std::mem::take(positive);
                        framed.clear();
                        frame_into(&unframed, &mut framed);
                        framed
                    }
                };
                self.slots[i] = Slot::Ready(framed);
            }
            Slot::Batch(batch) => {
                let entry = batch
                    .entries
                    .iter_mut()
                    .find(|e| matches!(e, Entry::Waiting(..)));
                if let Some(entry) = entry {
                    let answer = match std::mem::replace(entry, Entry::Answered(Vec::new())) {
                        Entry::Waiting(positive, ticket) => match settle(&ticket, result, ing) {
                            Ok(()) => positive,
                            Err(e) => {
                                let mut unframed = Vec::new();
                                refusal(ing, &e, ticket.msh(), &mut unframed);
                                unframed
                            }
                        },
                        Entry::Answered(a) => a,
                    };
                    *entry = Entry::Answered(answer);
                    batch.waiting -= 1;
                }
                if batch.waiting == 0 {
                    let framed = batch.finish(ing);
                    self.slots[i] = Slot::Ready(framed);
                }
            }
            Slot::Ready(_) => unreachable!("position() skipped ready slots"),
        }
        self.release_ready();
    }

    /// The tickets of appends still in flight, in submission order: what a
    /// closing connection leaves for the completions that will still come.
    pub fn orphan_tickets(&mut self) -> VecDeque<Ticket> {
        let mut out = VecDeque::new();
        for slot in self.slots.drain(..) {
            match slot {
                Slot::Ready(_) => {}
                Slot::Single(_, t) => out.push_back(t),
                Slot::Batch(b) => out.extend(b.entries.into_iter().filter_map(|e| match e {
                    Entry::Waiting(_, t) => Some(t),
                    Entry::Answered(_) => None,
                })),
            }
        }
        out
    }

    fn push_ready(&mut self, framed: Vec<u8>) {
        self.slots.push_back(Slot::Ready(framed));
        self.release_ready();
    }

    /// Moves answers at the front of the order into the write buffer.
    fn release_ready(&mut self) {
        while let Some(Slot::Ready(_)) = self.slots.front() {
            if let Some(Slot::Ready(mut bytes)) = self.slots.pop_front() {
                self.out.extend_from_slice(&bytes);
                if bytes.capacity() <= SPARE_BUFFER_BYTES_MAX
                    && self.spare.len() < SPARE_BUFFERS_MAX
                {
                    bytes.clear();
                    self.spare.push(bytes);
                }
            }
        }
    }
}

impl BatchSlot {
    /// The framed batch acknowledgment, once every message has its answer.
    fn finish(&self, ing: &mut Ingest<'_>) -> Vec<u8> {
        let mut acks = Vec::new();
        let mut count = 0;
        for entry in &self.entries {
            if let Entry::Answered(a) = entry {
                if !a.is_empty() {
                    acks.extend_from_slice(a);
                    count += 1;
                }
            }
        }
        let mut id = [0u8; 24];
        let id_len = ing.ids.next(&mut id);
        let mut unframed = Vec::with_capacity(acks.len() + 512);
        write_batch_ack(
            &self.echo,
            &self.delimiters,
            &acks,
            count,
            &id[..id_len],
            ing.timestamp(),
            &mut unframed,
        );
        let mut framed = Vec::with_capacity(unframed.len() + 3);
        frame_into(&unframed, &mut framed);
        framed
    }
}

/// What to do with one message.
enum Plan {
    /// Append a record with this metadata (and the message as its payload
    /// when `payload`; an event record of a duplicate has none); the
    /// answer due when it is stored was written.
    Store {
        meta: Vec<u8>,
        ticket: Ticket,
        payload: bool,
    },
    /// Answer this now (an unframed ACK message, empty when none is due).
    Answer(Vec<u8>),
}

/// Reads one message's MSH once and decides: store it (its metadata
/// returned, the unframed answer it gets if the append succeeds appended
/// to `positive`, nothing when none is due), or answer it now.
fn plan_message(msg: &[u8], ing: &mut Ingest<'_>, positive: &mut Vec<u8>) -> Plan {
    let config = ing.listener;
    let header = match parse_header(msg) {
        Ok(h) => h,
        Err(e) => {
            let e = crate::hl7::ValidationError::from(e);
            return refuse(msg, None, e.outcome(), &e.ack_error(), &e.to_string(), ing);
        }
    };
    if let Err(e) = check_header(&header, config.validation, &config.acceptance) {
        return refuse(
            msg,
            Some(&header),
            e.outcome(),
            &e.ack_error(),
            &e.to_string(),
            ing,
        );
    }
    if let Some(refused) = ing.refused {
        let control_id = String::from_utf8_lossy(header.control_id());
        match refused {
            Refused::StorageFailed(reason) => {
                Metrics::inc(&ing.metrics.messages_storage_failed);
                tracing::warn!(listener = %config.name, peer = %ing.peer, %control_id, %reason, "message refused: storage failed");
            }
            Refused::ShuttingDown => {
                Metrics::inc(&ing.metrics.messages_refused_shutdown);
                tracing::info!(listener = %config.name, peer = %ing.peer, %control_id, "message refused: shutting down (resend later)");
            }
        }
        let error = ingest::storage_error(&refused.error());
        let mut unframed = Vec::new();
        write_answer(
            Some(&header),
            Outcome::NotStored,
            Some(&error),
            ing,
            &mut unframed,
        );
        return Plan::Answer(unframed);
    }
    let sha256 = ingest::sha256(msg);
    let mut lazy = LazyParse::new(msg);
    let key = match ing.dedupe.as_deref() {
        Some(d) => ingest::idempotency_key(&header, &mut lazy, &d.paths),
        None => None,
    };
    let Some(key) = key else {
        let meta = ingest::record_meta(
            &header, &mut lazy, config, ing.peer, ing.now_ms, &sha256, None,
        );
        write_answer(Some(&header), Outcome::Stored, None, ing, positive);
        return Plan::Store {
            meta,
            ticket: Ticket::Plain,
            payload: true,
        };
    };
    plan_keyed(&header, &mut lazy, key, sha256, ing, positive)
}

/// A message with an idempotency key: new, a duplicate, or a conflict.
fn plan_keyed<'a>(
    header: &MshHeader<'a>,
    lazy: &mut LazyParse<'a>,
    key: Vec<u8>,
    sha256: [u8; 32],
    ing: &mut Ingest<'_>,
    positive: &mut Vec<u8>,
) -> Plan {
    let config = ing.listener;
    let Some(d) = ing.dedupe.as_deref_mut() else {
        unreachable!("a key is only read when the queue has an index")
    };
    let verdict = d
        .index
        .check(&key, &sha256, ing.now_ms, d.originals.as_ref());
    let on_conflict = d.on_conflict;
    // Only for the log lines of duplicates and conflicts (the common new
    // key logs nothing): built there, not for every message.
    let control_id = || String::from_utf8_lossy(header.control_id());
    let digest = || ingest::hex(&sha256[..8]);
    let (peer, now_ms) = (ing.peer, ing.now_ms);
    let event_meta = |event: &str, original: Option<Offset>| {
        ingest::event_meta(
            event,
            header,
            config,
            peer,
            now_ms,
            &key,
            &sha256,
            original.map(|o| o.0),
        )
    };
    let new_version_of = match verdict {
        Verdict::New => None,
        Verdict::Duplicate { original } => {
            Metrics::inc(&ing.metrics.idempotency_duplicates);
            tracing::info!(listener = %config.name, peer = %ing.peer, control_id = %control_id(), sha256 = %digest(), original = ?original.map(|o| o.0), "duplicate: answered positively, not stored again");
            let meta = event_meta("duplicate", original);
            write_answer(Some(header), Outcome::Stored, None, ing, positive);
            let mut msh = header.segment().to_vec();
            msh.push(b'\r');
            return Plan::Store {
                meta,
                ticket: Ticket::Duplicate {
                    key,
                    sha256,
                    waited: original.is_none(),
                    msh,
                },
                payload: false,
            };
        }
        Verdict::Conflict { original } if on_conflict == KeyConflict::Reject => {
            // Counted in `settle`, once the answer is final: the version it
            // conflicts with may still fail to store.
            tracing::warn!(listener = %config.name, peer = %ing.peer, control_id = %control_id(), sha256 = %digest(), original = ?original.map(|o| o.0), "key conflict: same idempotency key, different payload; refused (on_key_conflict = reject)");
            let meta = event_meta("conflict-rejected", original);
            let waited = if original.is_none() {
                d.index
                    .in_flight_version(&key)
                    .map(|sha| (key.clone(), sha))
            } else {
                None
            };
            let error = AckError {
                code: ErrorCode::DuplicateKeyIdentifier,
                severity: Severity::Error,
                text: "message NOT stored: its idempotency key was accepted before with a different payload",
                location: None,
            };
            write_answer(
                Some(header),
                Outcome::ContentError,
                Some(&error),
                ing,
                positive,
            );
            return Plan::Store {
                meta,
                ticket: Ticket::Refused { waited },
                payload: true,
            };
        }
        Verdict::Conflict { original } => {
            Metrics::inc(&ing.metrics.idempotency_conflicts_accepted);
            tracing::warn!(listener = %config.name, peer = %ing.peer, control_id = %control_id(), sha256 = %digest(), original = ?original.map(|o| o.0), "key conflict: stored as a new version (on_key_conflict = accept)");
            Some(original.map(|o| o.0))
        }
    };
    d.index.begin(&key, &sha256);
    let keyed = Keyed {
        key: &key,
        new_version_of,
    };
    let meta = ingest::record_meta(
        header,
        lazy,
        config,
        ing.peer,
        ing.now_ms,
        &sha256,
        Some(&keyed),
    );
    write_answer(Some(header), Outcome::Stored, None, ing, positive);
    Plan::Store {
        meta,
        ticket: Ticket::Keyed {
            key,
            sha256,
            new_version: new_version_of.is_some(),
        },
        payload: true,
    }
}

impl Ticket {
    /// The MSH a NAK echoes when the record holds no payload.
    fn msh(&self) -> &[u8] {
        match self {
            Ticket::Duplicate { msh, .. } => msh,
            _ => &[],
        }
    }
}

/// Settles what an append's completion means beyond its answer: the
/// idempotency index learns where a keyed message went, and a duplicate of
/// a message that was not stored after all is refused instead of answered
/// positively. Counts accepted messages.
pub(super) fn settle(
    ticket: &Ticket,
    result: Result<Offset, &AppendError>,
    ing: &mut Ingest<'_>,
) -> Result<(), AppendError> {
    let stored = result.as_ref().ok().copied();
    let now_ms = ing.now_ms;
    match ticket {
        Ticket::Plain => {}
        Ticket::Keyed {
            key,
            sha256,
            new_version,
        } => {
            if stored.is_some() && !new_version {
                Metrics::inc(&ing.metrics.idempotency_new);
            }
            if let Some(d) = ing.dedupe.as_deref_mut() {
                let evicted = d.index.end(key, sha256, stored);
                if evicted.0 > 0 {
                    Metrics::add(&ing.metrics.idempotency_keys_evicted, evicted.0 as u64);
                    tracing::warn!(listener = %ing.listener.name, evicted = evicted.0, keys_max = d.index.keys_max(), "idempotency index full (dedupe_keys_max): the oldest keys were dropped before their window ended");
                }
            }
        }
        Ticket::Duplicate {
            key,
            sha256,
            waited,
            ..
        } => {
            let original_stored = !waited
                || ing
                    .dedupe
                    .as_deref()
                    .is_some_and(|d| d.index.holds(key, sha256, now_ms, d.originals.as_ref()));
            if stored.is_some() && !original_stored {
                return Err(AppendError::Failed(
                    "the message it repeats was not stored".into(),
                ));
            }
        }
        Ticket::Refused { waited } => {
            let conflicted_unstored = waited.as_ref().is_some_and(|(key, sha256)| {
                !ing.dedupe
                    .as_deref()
                    .is_some_and(|d| d.index.holds(key, sha256, now_ms, d.originals.as_ref()))
            });
            if stored.is_some() && conflicted_unstored {
                Metrics::inc(&ing.metrics.idempotency_conflicts_deferred);
                tracing::warn!(listener = %ing.listener.name, peer = %ing.peer, "key conflict with a version that was then not stored: answered 'not stored, resend later' instead of a conflict");
                return Err(AppendError::Failed(
                    "the version its key conflicts with was not stored".into(),
                ));
            }
            if stored.is_some() {
                Metrics::inc(&ing.metrics.idempotency_conflicts_rejected);
                Metrics::inc(&ing.metrics.messages_rejected);
            }
            return result.map(|_| ()).map_err(Clone::clone);
        }
    }
    match result {
        Ok(_) => {
            if !matches!(ticket, Ticket::Duplicate { .. }) {
                Metrics::inc(&ing.metrics.messages_accepted);
            }
            Ok(())
        }
        Err(e) => Err(e.clone()),
    }
}

fn refuse(
    msg: &[u8],
    header: Option<&MshHeader<'_>>,
    outcome: Outcome,
    error: &AckError<'_>,
    reason: &str,
    ing: &mut Ingest<'_>,
) -> Plan {
    Metrics::inc(&ing.metrics.messages_rejected);
    let control_id = header.map_or_else(
        || "-".into(),
        |h| String::from_utf8_lossy(h.control_id()).into_owned(),
    );
    tracing::warn!(listener = %ing.listener.name, peer = %ing.peer, %control_id, bytes = msg.len(), %reason, "message rejected");
    let mut unframed = Vec::new();
    write_answer(header, outcome, Some(error), ing, &mut unframed);
    Plan::Answer(unframed)
}

/// Appends the unframed ACK message the listener's policy chooses for
/// `outcome` (nothing when none is due).
fn write_answer(
    header: Option<&MshHeader<'_>>,
    outcome: Outcome,
    error: Option<&AckError<'_>>,
    ing: &mut Ingest<'_>,
    out: &mut Vec<u8>,
) {
    let Some((mode, kind)) = decide(ing.listener.ack_policy, header, outcome) else {
        return;
    };
    let mut id = [0u8; 24];
    let id_len = ing.ids.next(&mut id);
    build_ack(
        header,
        mode,
        kind,
        error,
        &id[..id_len],
        ing.timestamp(),
        out,
    );
}

fn shrink(buf: &mut Vec<u8>) {
    if buf.capacity() > BUFFER_SHRINK_ABOVE_BYTES && buf.len() < buf.capacity() / 4 {
        buf.shrink_to((2 * buf.len()).max(READ_CHUNK_BYTES));
    }
}

/// Ends a frame begun with `START_BLOCK`; a frame with nothing in it (no
/// answer due) becomes empty.
fn close_frame(framed: &mut Vec<u8>) {
    if framed.len() == 1 {
        framed.clear();
    } else {
        framed.push(END_BLOCK);
        framed.push(TRAILER);
    }
}

/// The framed answer the listener's policy gives `outcome` now (empty
/// when none is due).
fn framed_answer(
    header: Option<&MshHeader<'_>>,
    outcome: Outcome,
    error: Option<&AckError<'_>>,
    ing: &mut Ingest<'_>,
) -> Vec<u8> {
    let mut unframed = Vec::new();
    write_answer(header, outcome, error, ing, &mut unframed);
    let mut framed = Vec::new();
    frame_into(&unframed, &mut framed);
    framed
}

/// MLLP-frames `unframed` into `out`; an empty answer stays empty.
fn frame_into(unframed: &[u8], out: &mut Vec<u8>) {
    if unframed.is_empty() {
        return;
    }
    out.reserve(unframed.len() + 3);
    out.push(START_BLOCK);
    out.extend_from_slice(unframed);
    out.push(END_BLOCK);
    out.push(TRAILER);
}

/// Another `MSH` segment after the first: back-to-back messages in one
/// frame, each stored on its own. Jumps from line end to line end (eight
/// bytes at a time), so a message costs a few probes, not a byte loop.
fn holds_second_msh(msg: &[u8]) -> bool {
    let mut at = 0;
    while let Some(i) = find2(&msg[at..], b'\r', b'\n') {
        let next = at + i + 1;
        if msg[next..].starts_with(b"MSH")
            && msg.get(next + 3).is_some_and(u8::is_ascii_punctuation)
        {
            return true;
        }
        at = next;
    }
    false
}

/// The first MSH line of a batch that could not be split, for its NAK.
fn first_msh(bytes: &[u8]) -> &[u8] {
    (0..bytes.len())
        .find(|&i| {
            bytes[i..].starts_with(b"MSH") && (i == 0 || matches!(bytes[i - 1], b'\r' | b'\n'))
        })
        .map_or(&[][..], |i| &bytes[i..])
}

fn with_batch_position(
    meta: Vec<u8>,
    batch_id: &[u8],
    file_id: &[u8],
    i: usize,
    count: usize,
) -> Vec<u8> {
    use crate::wal::meta::{MetaBuilder, MetaKey};
    let mut m = MetaBuilder::from_bytes(meta);
    m.push(MetaKey::BatchControlId, batch_id)
        .push(MetaKey::FileControlId, file_id)
        .push(MetaKey::BatchIndex, &(i as u32).to_le_bytes())
        .push(MetaKey::BatchCount, &(count as u32).to_le_bytes());
    m.finish()
}

#[cfg(test)]
mod tests {
    use super::{holds_second_msh, Session};
    use crate::mllp::{Decoded, END_BLOCK, START_BLOCK, TRAILER};

    /// Issue 12: a connection must not keep the capacity of its largest
    /// frame (1,024 connections x 16 MiB).
    #[test]
    fn a_large_frame_s_buffer_is_given_back_once_the_frame_is_gone() {
        let mut s = Session::new(64 << 20);
        let mut frame = vec![START_BLOCK];
        frame.extend_from_slice(b"MSH|^~\\&|A|B|C|D|2026||ORU^R01|1|P|2.5\r");
        frame.resize(8 << 20, b'x');
        frame.extend_from_slice(&[END_BLOCK, TRAILER]);
        s.rbuf.extend_from_slice(&frame);
        let next = b"\x0bMSH|^~\\&|A|B|C|D|2026||ORU^R01|2|P|2.5\r";
        s.rbuf.extend_from_slice(next);
        assert!(s.rbuf.capacity() >= 8 << 20);
        assert!(matches!(s.decoder.decode(&s.rbuf), Decoded::Frame(_)));
        s.compact();
        assert_eq!(s.rbuf, next, "the next frame's start is kept");
        assert!(
            s.rbuf.capacity() <= 1 << 20,
            "capacity {} kept after an 8 MiB frame",
            s.rbuf.capacity()
        );
    }

    #[test]
    fn a_second_msh_is_found_after_any_line_end() {
        assert!(!holds_second_msh(b"MSH|^~\\&|A\rPID|1\r"));
        assert!(holds_second_msh(b"MSH|^~\\&|A\rMSH|^~\\&|B\r"));
        assert!(holds_second_msh(b"MSH|^~\\&|A\r\nMSH|^~\\&|B"));
        assert!(!holds_second_msh(b"MSH|^~\\&|A\rMSHX\rOBX|MSH|\r"));
        assert!(!holds_second_msh(b"MSH|^~\\&|A\rMSH"));
    }
}
