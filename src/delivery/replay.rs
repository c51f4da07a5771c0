//! Replays and resubmissions: choosing what to send again, and queueing it
//! on the destination's replay lane.
//!
//! Each destination has a replay log (`replay/<destination>/`) read by its
//! replay lane, a lane like the live ones but rate limited
//! (`replay_rate_limit_per_s`) and with its own connection, so live
//! traffic keeps priority. A replay-log record is a full copy of the
//! message to send (the original bytes, or an operator's corrected ones)
//! with where it came from: kind, source queue and offset, dead-letter id,
//! who asked and why, the field diff of an edit. Queueing is durable before
//! the command answers; the lane's cursor and journal make each send
//! at-least-once across crashes, like live delivery.
use super::dlq::meta_u64_view;
use super::journal;
use super::Destination;
use crate::hl7::{FieldPath, Message};
use crate::wal::meta::{is_event, MetaBuilder, MetaKey, MetaView};
use crate::wal::{AppendRequest, Log, Offset};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// Messages one replay (or one reconciliation's `--replay-missing`)
/// queues at most: bounds the command's time and the replay log's growth.
pub const REPLAY_MAX: u64 = 100_000;
/// Queue records one replay examines at most.
pub const REPLAY_SCAN_MAX: u64 = 10_000_000;

/// `orderly ctl replay` as the broker receives it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReplayRequest {
    pub destination: String,
    /// Received at or after, ms since the epoch.
    pub since_ms: u64,
    /// Received before, ms since the epoch (`None`: up to now).
    pub until_ms: Option<u64>,
    /// MSH-9 (`ORU`, `ORU^R01`, ...).
    pub message_type: Option<String>,
    /// MSH-4 (its first component, or the whole field).
    pub facility: Option<String>,
    /// PID-3.1.
    pub patient: Option<String>,
    pub dry_run: bool,
    /// Send also what the destination already acknowledged.
    pub force: bool,
}

/// What a replay found and did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReplayOutcome {
    pub destination: String,
    /// Messages in the window that the destination's filter and the
    /// request's filters select.
    pub matched: u64,
    /// Sent (or, in a dry run, that would be sent).
    pub to_send: u64,
    /// Acknowledged by the destination already: skipped unless `--force`
    /// (then counted here and in `to_send`).
    pub already_acknowledged: u64,
    /// Not yet passed by the live lanes, which will deliver them: never
    /// replayed.
    pub pending: u64,
    /// Already queued on the replay lane by an earlier replay or
    /// reconciliation and not yet sent: not queued twice.
    pub already_queued: u64,
    /// Records of the window that could not be read (damaged), and
    /// damaged journal records.
    pub unreadable: u64,
    pub dry_run: bool,
    pub force: bool,
    /// Queued on the replay lane (0 in a dry run).
    pub queued: u64,
    /// The window held more than [`REPLAY_MAX`] to send, or more records
    /// than one scan reads: only the first were taken; run again from the
    /// last one's time.
    pub truncated: bool,
}

impl ReplayRequest {
    fn selects(&self, meta: &MetaView<'_>, payload: &[u8]) -> bool {
        let field_eq = |want: &Option<String>, have: &str| {
            want.as_deref().is_none_or(|w| {
                have == w || have.split('^').next() == Some(w) || have.starts_with(&format!("{w}^"))
            })
        };
        field_eq(&self.message_type, &meta.get_str(MetaKey::MessageType))
            && field_eq(&self.facility, &meta.get_str(MetaKey::SendingFacility))
            && self
                .patient
                .as_deref()
                .is_none_or(|p| patient_of(payload).as_deref() == Some(p))
    }
}

/// PID-3.1 of a message, if it parses and has one.
pub fn patient_of(payload: &[u8]) -> Option<String> {
    let msg = Message::parse(payload).ok()?;
    let path = FieldPath::parse("PID-3.1").expect("a fixed, valid path");
    msg.get(&path)
        .map(|v| String::from_utf8_lossy(v.raw()).into_owned())
}

/// What the journal says the destination acknowledged.
pub struct Acknowledged {
    /// Queue offset → the control ids it was acknowledged under (an
    /// edited resubmission may carry another than the original's).
    pub by_offset: HashMap<u64, Vec<String>>,
    /// Damaged journal records passed over.
    pub unreadable: u64,
    /// False when the journal scan stopped at its limit.
    pub complete: bool,
}

impl Acknowledged {
    pub fn contains(&self, offset: u64) -> bool {
        self.by_offset.contains_key(&offset)
    }
}

/// Queue offsets of `d`'s queue the destination acknowledged (any lane,
/// live or replay), from the journal entries written at or after `since_ms`.
pub fn acknowledged(d: &Destination, since_ms: u64) -> Acknowledged {
    let mut by_offset: HashMap<u64, Vec<String>> = HashMap::new();
    let scanned = journal::scan(&d.journal, since_ms, |e| {
        if e.delivered() && e.queue == d.config.queue {
            by_offset
                .entry(e.source_offset)
                .or_default()
                .push(e.control_id);
        }
    });
    Acknowledged {
        by_offset,
        unreadable: scanned.damaged,
        complete: scanned.complete,
    }
}

/// Source offsets of this queue already queued on the replay lane and not
/// yet sent: queueing them again would send them twice.
pub fn queued_for_replay(d: &Destination) -> HashSet<u64> {
    let log = &d.replay.log;
    let from = d
        .replay
        .cursors
        .durable(0)
        .next_offset
        .max(log.start_offset());
    let mut out = HashSet::new();
    log.scan(from, u64::MAX, |r| {
        let v = MetaView::new(r.meta);
        if v.get(MetaKey::SourceQueue) == Some(d.config.queue.as_bytes()) {
            if let Some(o) = meta_u64_view(&v, MetaKey::SourceOffset) {
                out.insert(o);
            }
        }
        true
    });
    out
}

/// Where each live lane stands, durably: below it, every message of the
/// lane was acknowledged or dead-lettered, and its journal entry (or dead
/// letter) is durable. Take it before reading the journal. While the
/// destination is halted (a cursor past its queue's end), the queue's end
/// when the halt began: what arrived since is still to be delivered.
pub fn live_cursors(d: &Destination) -> Vec<Offset> {
    let halted_at = d.halt.lock().as_ref().map(|h| h.log_end);
    (0..d.lanes.len() as u16)
        .map(|l| {
            let c = d.cursors.durable(l);
            let at = c
                .head
                .as_ref()
                .map_or(c.next_offset, |h| h.offset.min(c.next_offset));
            halted_at.map_or(at, |end| at.min(end))
        })
        .collect()
}

/// Selects the messages of `req`'s window and, unless a dry run, queues
/// them on the replay lane.
pub fn replay(
    d: &Destination,
    req: &ReplayRequest,
    actor: &str,
    reason: &str,
) -> Result<ReplayOutcome, String> {
    let mut out = ReplayOutcome {
        destination: d.config.name.clone(),
        dry_run: req.dry_run,
        force: req.force,
        ..Default::default()
    };
    // Cursors before the journal: anything a durable cursor passed has its
    // attempt in the journal already (see journal.rs).
    let cursors = live_cursors(d);
    let acked = acknowledged(d, req.since_ms);
    let queued = queued_for_replay(d);
    let mut chosen: Vec<Offset> = Vec::new();
    let complete = scan_window(
        &d.log,
        req.since_ms,
        req.until_ms,
        &mut out.unreadable,
        |offset, meta, payload| {
            if is_event(meta) {
                return true;
            }
            let Some(lane) = d.router.lane_of(offset, meta, payload) else {
                return true;
            };
            if !req.selects(&MetaView::new(meta), payload) {
                return true;
            }
            out.matched += 1;
            // Not yet passed by the live lanes: they send it (even if an
            // earlier attempt was acknowledged, e.g. after a reset-cursor).
            if cursors[usize::from(lane)] <= offset {
                out.pending += 1;
                return true;
            }
            if queued.contains(&offset.0) {
                out.already_queued += 1;
                return true;
            }
            if acked.contains(offset.0) {
                out.already_acknowledged += 1;
                if !req.force {
                    return true;
                }
            }
            if out.to_send >= REPLAY_MAX {
                out.truncated = true;
                return false;
            }
            out.to_send += 1;
            chosen.push(offset);
            true
        },
    );
    out.unreadable += acked.unreadable;
    out.truncated |= !complete || !acked.complete;
    if !req.dry_run {
        out.queued = queue_offsets(d, &chosen, "replay", actor, reason)?;
    }
    Ok(out)
}

/// Calls `f(offset, meta, payload)` for each readable record received in
/// `[since_ms, until_ms)`, in log order, until it returns false; damaged
/// records are counted in `unreadable`. False if it stopped at
/// [`REPLAY_SCAN_MAX`] records with more in the window.
pub fn scan_window(
    log: &Log,
    since_ms: u64,
    until_ms: Option<u64>,
    unreadable: &mut u64,
    mut f: impl FnMut(Offset, &[u8], &[u8]) -> bool,
) -> bool {
    let from = crate::wal::first_at_or_after(log, since_ms);
    let scanned = log.scan(from, REPLAY_SCAN_MAX, |r| {
        if r.timestamp_ms < since_ms {
            return true;
        }
        if until_ms.is_some_and(|u| r.timestamp_ms >= u) {
            return false;
        }
        f(r.offset, r.meta, r.payload)
    });
    *unreadable += scanned.damaged;
    scanned.complete
}

/// Copies the queue records at `offsets` into the replay log (one group
/// commit), durable before this returns; how many were queued.
pub fn queue_offsets(
    d: &Destination,
    offsets: &[Offset],
    kind: &str,
    actor: &str,
    reason: &str,
) -> Result<u64, String> {
    let mut records = Vec::with_capacity(offsets.len());
    for &offset in offsets {
        let rec = d
            .log
            .read(offset)
            .map_err(|e| format!("offset {offset}: {e}; nothing was queued"))?;
        let meta = replay_meta(
            &d.config.queue,
            offset,
            kind,
            actor,
            reason,
            None,
            "",
            &rec.meta,
        );
        records.push((meta, rec.payload));
    }
    let queued = append_all(&d.replay.log, records)?;
    mark_letters_replayed(d, offsets, kind, actor, reason);
    Ok(queued)
}

/// Marks the open dead letters of the messages just queued `replayed`, so
/// a later resubmit of the same letter cannot send it a second time. A
/// failed mark leaves the letter open (logged): the resend is queued.
fn mark_letters_replayed(
    d: &Destination,
    offsets: &[Offset],
    kind: &str,
    actor: &str,
    reason: &str,
) {
    let wanted: HashSet<u64> = offsets.iter().map(|o| o.0).collect();
    let filter = super::dlq_query::DlqFilter {
        status: Some("open".into()),
        ..Default::default()
    };
    let (mut open, mut skipped) = (Vec::new(), 0);
    super::dlq_query::search(
        &d.config.name,
        &d.dlq,
        &filter,
        usize::MAX,
        &mut open,
        &mut skipped,
    );
    let why = format!("{kind}: {reason}");
    for e in open {
        let Some(source) = e
            .source_offset
            .filter(|o| e.queue == d.config.queue && wanted.contains(o))
        else {
            continue;
        };
        let Some((_, at)) = super::dlq_query::parse_id(&e.id) else {
            continue;
        };
        let meta = super::dlq_query::status_meta(at, "replayed", actor, &why);
        if let Err(err) = d.dlq.append(&meta, &[]) {
            tracing::error!(destination = %d.config.name, dlq_offset = at.0, source_offset = source, error = %err, "a replayed message's dead letter could not be marked replayed; it still shows as open");
        }
    }
}

/// The metadata of a replay-log record: where it came from first (so the
/// size cap can only cut copied fields), then the message's own fields.
#[allow(clippy::too_many_arguments)]
pub fn replay_meta(
    queue: &str,
    source_offset: Offset,
    kind: &str,
    actor: &str,
    reason: &str,
    dlq_id: Option<&str>,
    diff: &str,
    original_meta: &[u8],
) -> Vec<u8> {
    let mut m = MetaBuilder::new();
    m.push(MetaKey::ReplayKind, kind.as_bytes())
        .push(MetaKey::SourceQueue, queue.as_bytes())
        .push(MetaKey::SourceOffset, &source_offset.0.to_le_bytes())
        .push(MetaKey::Actor, actor.as_bytes())
        .push(MetaKey::Reason, reason.as_bytes());
    if let Some(id) = dlq_id {
        m.push(MetaKey::DlqId, id.as_bytes());
    }
    if !diff.is_empty() {
        // A field holds 1 KiB; the whole diff is kept with the dead letter.
        const NOTE: &str = "\n... (the whole diff: `orderly ctl dlq show`)";
        let room = crate::constants::META_FIELD_BYTES_MAX - NOTE.len();
        let cut = crate::cursor::record::truncate_utf8(diff, room);
        let text = if cut.len() < diff.len() {
            format!("{cut}{NOTE}")
        } else {
            diff.to_string()
        };
        m.push(MetaKey::EditDiff, text.as_bytes());
    }
    for (key, value) in MetaView::new(original_meta).iter() {
        if let Some(k) = super::dlq::message_key(key) {
            m.push(k, value);
        }
    }
    m.finish()
}

/// Appends every record as one group commit (split by the writer's batch
/// limit) and waits until all are durable; how many were appended.
pub fn append_all(log: &Log, records: Vec<(Vec<u8>, Vec<u8>)>) -> Result<u64, String> {
    if records.is_empty() {
        return Ok(0);
    }
    let (reply, done) = crossbeam_channel::unbounded();
    let n = records.len();
    let reqs = records
        .into_iter()
        .map(|(meta, payload)| AppendRequest {
            payload,
            meta,
            tag: 0,
            reply: reply.clone(),
            notify: None,
        })
        .collect();
    drop(reply);
    if log.appender().submit_batch(reqs).is_err() {
        return Err("the replay log is closed; nothing was queued".into());
    }
    let mut appended = 0u64;
    let mut first_error = None;
    for _ in 0..n {
        match done.recv() {
            Ok(d) => match d.result {
                Ok(_) => appended += 1,
                Err(e) => {
                    first_error.get_or_insert(e.to_string());
                }
            },
            Err(_) => break,
        }
    }
    match first_error {
        None => Ok(appended),
        Some(e) => Err(format!(
            "the replay log refused records ({e}); {appended} of {n} were queued and will be sent"
        )),
    }
}

/// The replay-log offset of an earlier resubmission of dead letter `id`.
pub fn resubmission_of(d: &Destination, id: &str) -> Option<u64> {
    let log = &d.replay.log;
    let mut found = None;
    log.scan(log.start_offset(), u64::MAX, |r| {
        if MetaView::new(r.meta).get(MetaKey::DlqId) == Some(id.as_bytes()) {
            found = Some(r.offset.0);
        }
        found.is_none()
    });
    found
}

/// What a replay-log record says about itself, for trace.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReplayEntry {
    pub replay_offset: u64,
    pub queued_ms: u64,
    pub kind: String,
    pub source_offset: Option<u64>,
    pub dlq_id: String,
    pub actor: String,
    pub reason: String,
    pub edit_diff: String,
    pub control_id: String,
}

pub fn entry_of(offset: Offset, timestamp_ms: u64, meta: &[u8]) -> ReplayEntry {
    let v = MetaView::new(meta);
    ReplayEntry {
        replay_offset: offset.0,
        queued_ms: timestamp_ms,
        kind: v.get_str(MetaKey::ReplayKind),
        source_offset: meta_u64_view(&v, MetaKey::SourceOffset),
        dlq_id: v.get_str(MetaKey::DlqId),
        actor: v.get_str(MetaKey::Actor),
        reason: v.get_str(MetaKey::Reason),
        edit_diff: v.get_str(MetaKey::EditDiff),
        control_id: v.get_str(MetaKey::ControlId),
    }
}
