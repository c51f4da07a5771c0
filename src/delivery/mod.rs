//! The delivery engine: for every destination, one worker thread per lane,
//! each with its own downstream connection, sharing the destination's
//! router, circuit breaker, rate limiter, cursor store and dead-letter log.
//!
//! Architecture Invariant: a lane's cursor moves past a message only after
//! the downstream's positive ACK naming that message's control id, or after
//! the message's dead-letter record is durable. Nothing behind a blocked head
//! in its lane is delivered; other lanes and destinations are unaffected.
pub mod dlq;
pub mod dlq_query;
pub mod filter_history;
pub mod journal;
mod lane;
pub mod link;
pub mod policy;
pub mod reconcile;
pub mod replay;
pub mod route;
pub mod trace;
pub mod verdict;

use crate::config::{Config, DestinationConfig, Ordering as OrderingConfig};
use crate::cursor::{CursorError, CursorStore, HeadState};
use crate::storage::Storage;
use crate::wal::{Log, Offset, WalError};
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};
use parking_lot::Mutex;
use policy::{Breaker, BreakerState, RateLimiter};
use route::Router;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    #[error("destination `{destination}`: queue `{queue}` is not open")]
    NoQueue { destination: String, queue: String },
    #[error("destination `{destination}`: dead-letter log: {source}")]
    Dlq {
        destination: String,
        source: WalError,
    },
    #[error("destination `{destination}`: {what}: {source}")]
    Log {
        destination: String,
        what: &'static str,
        source: WalError,
    },
    #[error("destination `{destination}`: {source}")]
    Cursor {
        destination: String,
        source: CursorError,
    },
    #[error("cannot start a delivery thread: {0}")]
    Thread(std::io::Error),
}

/// An operator command for one lane; the reply says whether it applied.
pub enum LaneCommand {
    /// No action: ends a lane's wait at once (after resume).
    Wake,
    Retry(Sender<Result<(), String>>),
    Skip(String, Sender<Result<(), String>>),
    /// Move the lane's cursor down to the offset (never up); the reply says what moved.
    ResetCursor(Offset, Sender<Result<String, String>>),
    /// Dead-letter every message still pending for the lane (class
    /// `cleared`), up to the log's end when asked; the reply counts them.
    Clear(String, Sender<Result<String, String>>),
}

/// Margin kept beyond the queue's oldest message, against wall-clock steps
/// between a message's timestamp and its attempts'.
const JOURNAL_RETENTION_MARGIN_MS: u64 = 3600 * 1000;

/// The age policy that keeps every journal record written after the
/// queue's oldest message (less a margin); `None` when that cannot be read.
fn journal_retention(queue: &Log, now_ms: u64) -> Option<crate::wal::RetentionPolicy> {
    let oldest_ms = if queue.start_offset() >= queue.end_offset() {
        now_ms
    } else {
        queue.read(queue.start_offset()).ok()?.timestamp_ms
    };
    Some(crate::wal::RetentionPolicy {
        max_age_ms: Some(now_ms.saturating_sub(oldest_ms) + JOURNAL_RETENTION_MARGIN_MS),
        max_bytes: None,
    })
}

/// The lane number that names a destination's replay lane in operator
/// commands (`retry`, `skip`): never a live lane (those are 0..256).
pub const REPLAY_LANE: u16 = u16::MAX;

/// A destination stopped at start because a cursor was past the log's end.
#[derive(Debug, Clone)]
pub struct Halt {
    pub why: String,
    /// The log's end when the halt began: messages from here on arrived
    /// after it and must be delivered.
    pub log_end: Offset,
}

/// Where `reset-cursor` moves a destination's cursors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTarget {
    /// The queue's end: for a halted destination, its end when the halt
    /// began (so nothing appended meanwhile is skipped); otherwise its end now.
    LogEnd,
    /// A given offset at or below the end: deliver again from there.
    Offset(Offset),
}

#[derive(Debug, Clone, Default)]
pub struct LaneStatus {
    /// Everything below this is delivered (or dead-lettered) or not for this lane.
    pub next_offset: Offset,
    pub head: Option<HeadState>,
}

pub struct LaneShared {
    commands: (Sender<LaneCommand>, Receiver<LaneCommand>),
    status: Mutex<LaneStatus>,
    delivered: AtomicU64,
    dead_lettered: AtomicU64,
}

impl LaneShared {
    fn new() -> LaneShared {
        LaneShared {
            commands: unbounded(),
            status: Mutex::new(LaneStatus::default()),
            delivered: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
        }
    }
}

/// A destination's replay lane: its own log of messages to send again
/// (replays, resubmissions), cursor and rate limit, beside the live lanes.
pub struct ReplayFeed {
    pub log: Arc<Log>,
    pub cursors: CursorStore,
    lane: LaneShared,
    limiter: RateLimiter,
}

/// One configured destination and everything its lanes share.
pub struct Destination {
    pub config: DestinationConfig,
    pub log: Arc<Log>,
    pub dlq: Log,
    /// Every delivery attempt of every lane (see `journal.rs`).
    pub journal: Arc<Log>,
    pub replay: ReplayFeed,
    /// The last scheduled reconciliation (`reconcile_every_s`).
    last_reconcile: Mutex<Option<reconcile::ReconcileReport>>,
    pub cursors: CursorStore,
    pub router: Router,
    /// Earlier filters and where they judged (for reconciliation).
    pub filter_history: filter_history::FilterHistory,
    pub breaker: Breaker,
    pub limiter: RateLimiter,
    pub paused: AtomicBool,
    /// Why delivery is stopped until an operator decides (a cursor past
    /// the log's end at start); `None` when running.
    halt: Mutex<Option<Halt>>,
    lanes: Vec<LaneShared>,
}

impl Destination {
    pub fn halted(&self) -> bool {
        self.halt.lock().is_some()
    }
}

/// A snapshot of one lane for `orderly ctl status`.
#[derive(Debug, Clone)]
pub struct LaneReport {
    pub lane: u16,
    pub committed: Offset,
    pub durable: Offset,
    pub log_end: Offset,
    pub lag_records: u64,
    pub lag_seconds: f64,
    pub head: Option<HeadState>,
    pub delivered: u64,
    pub dead_lettered: u64,
}

#[derive(Debug, Clone)]
pub struct DestinationReport {
    pub name: String,
    pub queue: String,
    pub ordering: String,
    pub circuit: String,
    pub paused: bool,
    pub halt: Option<String>,
    pub cursor_failure: Option<String>,
    pub lanes: Vec<LaneReport>,
    /// The replay lane (replays and resubmissions).
    pub replay: LaneReport,
    /// One line about the last scheduled reconciliation, if any ran.
    pub last_reconcile: Option<String>,
}

pub struct Engine {
    destinations: Vec<Arc<Destination>>,
    /// Every queue's log (for trace), not only those destinations read.
    queues: Vec<(String, Arc<Log>)>,
    stop: Arc<AtomicBool>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Engine {
    /// Opens cursors and dead-letter logs and starts every lane.
    pub fn start(
        config: &Config,
        logs: &BTreeMap<String, Arc<Log>>,
        storage: Arc<dyn Storage>,
    ) -> Result<Engine, DeliveryError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut destinations = Vec::new();
        let mut threads = Vec::new();
        for d in &config.destinations {
            let (dest, starts, replay_start) = open_destination(config, d, logs, storage.clone())?;
            let mut workers: Vec<(String, lane::Lane)> = starts
                .into_iter()
                .enumerate()
                .map(|(lane, start)| {
                    let w = lane::Lane::new(
                        dest.clone(),
                        journal::Channel::Live,
                        lane as u16,
                        stop.clone(),
                        start,
                    );
                    (format!("orderly-{}-{lane}", d.name), w)
                })
                .collect();
            let replay = lane::Lane::new(
                dest.clone(),
                journal::Channel::Replay,
                0,
                stop.clone(),
                replay_start,
            );
            workers.push((format!("orderly-{}-replay", d.name), replay));
            for (name, worker) in workers {
                threads.push(
                    std::thread::Builder::new()
                        .name(name)
                        .spawn(move || worker.run())
                        .map_err(DeliveryError::Thread)?,
                );
            }
            tracing::info!(destination = %d.name, queue = %d.queue, connect = %d.connect, lanes = d.lanes(), "delivery started");
            destinations.push(dest);
        }
        Ok(Engine {
            destinations,
            queues: logs.iter().map(|(q, l)| (q.clone(), l.clone())).collect(),
            stop,
            threads: Mutex::new(threads),
        })
    }

    fn find(&self, name: &str) -> Result<&Arc<Destination>, String> {
        self.destinations
            .iter()
            .find(|d| d.config.name == name)
            .ok_or_else(|| format!("no destination named `{name}`"))
    }

    pub fn pause(&self, name: &str, paused: bool) -> Result<(), String> {
        let d = self.find(name)?;
        let was_paused = d.paused.swap(paused, Ordering::Relaxed);
        if was_paused && !paused {
            // A paused lane polls its commands; wake it so delivery resumes now,
            // not at the end of its current wait. Any queued command wakes it
            // as well, so at most one Wake waits per lane (the channel is
            // unbounded, and a lane may sit in a long ACK wait).
            let all = d.lanes.iter().chain([&d.replay.lane]);
            for l in all.filter(|l| l.commands.0.is_empty()) {
                let _ = l.commands.0.send(LaneCommand::Wake);
            }
        }
        tracing::info!(destination = name, paused, "operator pause/resume");
        Ok(())
    }

    /// Retries the failed head of one lane, or of every lane that has one.
    pub fn retry(&self, name: &str, lane: Option<u16>) -> Result<String, String> {
        let d = self.find(name)?;
        let lanes: Vec<u16> = match lane {
            Some(l) => vec![l],
            None => (0..d.lanes.len() as u16)
                .chain([REPLAY_LANE])
                .filter(|&l| lane_shared(d, l).is_some_and(|s| s.status.lock().head.is_some()))
                .collect(),
        };
        if lanes.is_empty() {
            return Err(format!(
                "destination `{name}` has no lane with a failed head"
            ));
        }
        for l in &lanes {
            ask(d, *l, LaneCommand::Retry)?;
        }
        let names: Vec<String> = lanes.iter().map(|&l| lane_name(l)).collect();
        Ok(format!("retrying lane(s) {}", names.join(", ")))
    }

    /// Dead-letters the failed head of `lane` with the operator's reason.
    pub fn skip(&self, name: &str, lane: u16, reason: &str) -> Result<String, String> {
        let d = self.find(name)?;
        let r = reason.to_string();
        ask(d, lane, move |reply| LaneCommand::Skip(r, reply))?;
        Ok(format!(
            "lane {}: head moved to the dead-letter queue",
            lane_name(lane)
        ))
    }

    /// Moves every message still pending for `name` (all lanes, or one) to
    /// its dead-letter queue with class `cleared` and the operator's
    /// reason: nothing vanishes, each can still be seen and resubmitted.
    pub fn clear(&self, name: &str, lane: Option<u16>, reason: &str) -> Result<String, String> {
        let d = self.find(name)?;
        let lanes: Vec<u16> = match lane {
            Some(l) if usize::from(l) < d.lanes.len() || l == REPLAY_LANE => vec![l],
            Some(l) => {
                return Err(format!(
                    "destination `{name}` has lanes 0..{}; no lane {l}",
                    d.lanes.len()
                ))
            }
            // Resends waiting on the replay lane are pending for it too.
            None => (0..d.lanes.len() as u16).chain([REPLAY_LANE]).collect(),
        };
        let mut lines = Vec::new();
        for l in lanes {
            let r = reason.to_string();
            lines.push(ask_text(d, l, move |reply| LaneCommand::Clear(r, reply))?);
        }
        Ok(lines.join("\n"))
    }

    /// Moves every lane's cursor of `name` down to `to` (lanes already at
    /// or below it stay), makes that durable, and lifts a halt. Never moves
    /// a cursor up: that would skip messages.
    pub fn reset_cursor(&self, name: &str, to: ResetTarget) -> Result<String, String> {
        let d = self.find(name)?;
        let (start, end) = (d.log.start_offset(), d.log.end_offset());
        let halted_at = d.halt.lock().as_ref().map(|h| h.log_end);
        let target = match to {
            ResetTarget::LogEnd => halted_at.unwrap_or(end),
            ResetTarget::Offset(o) if o > end => {
                return Err(format!(
                    "offset {o} is past the end of queue `{}` ({end}); nothing was changed",
                    d.config.queue
                ))
            }
            ResetTarget::Offset(o) => o.max(start),
        };
        let mut lines = Vec::new();
        for lane in 0..d.lanes.len() as u16 {
            lines.push(ask_text(d, lane, move |reply| {
                LaneCommand::ResetCursor(target, reply)
            })?);
            if !d.cursors.wait_durable(lane, Duration::from_secs(30)) {
                return Err(format!(
                    "lane {lane}: the new cursor did not become durable within 30 s ({:?})",
                    d.cursors.failure()
                ));
            }
        }
        if let Some(h) = d.halt.lock().take() {
            tracing::warn!(destination = name, was = %h.why, "halt lifted by reset-cursor");
        }
        lines.push(format!(
            "destination {name}: delivering from offset {target}"
        ));
        Ok(lines.join("\n"))
    }

    /// Dead-letter records matching `filter`, oldest first per destination,
    /// at most [`dlq_query::DLQ_LIST_MAX`] over all destinations; with how
    /// many damaged records were passed over.
    pub fn dlq_list(
        &self,
        filter: &dlq_query::DlqFilter,
    ) -> Result<(Vec<dlq_query::DlqEntry>, u64), String> {
        self.dlq_list_at_most(filter, dlq_query::DLQ_LIST_MAX)
    }

    /// [`dlq_list`](Self::dlq_list) with the bound given (for tests of it).
    pub fn dlq_list_at_most(
        &self,
        filter: &dlq_query::DlqFilter,
        most: usize,
    ) -> Result<(Vec<dlq_query::DlqEntry>, u64), String> {
        if let Some(d) = &filter.destination {
            self.find(d)?;
        }
        let (mut out, mut skipped) = (Vec::new(), 0);
        for d in &self.destinations {
            dlq_query::search(
                &d.config.name,
                &d.dlq,
                filter,
                most.saturating_sub(out.len()),
                &mut out,
                &mut skipped,
            );
        }
        debug_assert!(out.len() <= most);
        Ok((out, skipped))
    }

    /// One dead-letter record, by its id (`<destination>:<offset>`).
    pub fn dlq_show(&self, id: &str) -> Result<dlq_query::DlqRecord, String> {
        let (dest, offset) = dlq_query::parse_id(id)
            .ok_or_else(|| format!("`{id}` is not a dead-letter id (<destination>:<offset>)"))?;
        let d = self.find(dest)?;
        dlq_query::record(dest, &d.dlq, offset).map_err(|e| format!("{id}: {e}"))
    }

    /// Queues the messages `req` selects on the destination's replay lane
    /// (or, in a dry run, only counts them).
    pub fn replay(
        &self,
        req: &replay::ReplayRequest,
        actor: &str,
        reason: &str,
    ) -> Result<replay::ReplayOutcome, String> {
        let d = self.find(&req.destination)?;
        let out = replay::replay(d, req, actor, reason)?;
        tracing::warn!(destination = %req.destination, matched = out.matched, queued = out.queued, skipped_acknowledged = out.already_acknowledged, dry_run = req.dry_run, force = req.force, actor, reason, "operator replay");
        Ok(out)
    }

    /// Classifies a window of the destination's messages (see `reconcile.rs`).
    pub fn reconcile(
        &self,
        req: &reconcile::ReconcileRequest,
        actor: &str,
        reason: &str,
    ) -> Result<reconcile::ReconcileReport, String> {
        let d = self.find(&req.destination)?;
        reconcile::reconcile(d, req, actor, reason)
    }

    /// The last scheduled reconciliation of `name`, if one ran.
    pub fn last_reconcile(&self, name: &str) -> Result<Option<reconcile::ReconcileReport>, String> {
        Ok(self.find(name)?.last_reconcile.lock().clone())
    }

    /// Runs the scheduled reconciliations that are due (`reconcile_every_s`);
    /// called by the maintenance thread.
    pub fn scheduled_reconciliations(&self, now_ms: u64) {
        for d in &self.destinations {
            let every_ms = d.config.reconcile_every_s * 1000;
            if every_ms == 0 {
                continue;
            }
            let due = d
                .last_reconcile
                .lock()
                .as_ref()
                .is_none_or(|r| now_ms >= r.at_ms + every_ms);
            if !due {
                continue;
            }
            let req = reconcile::ReconcileRequest {
                destination: d.config.name.clone(),
                ..Default::default()
            };
            match reconcile::reconcile(d, &req, "orderly (schedule)", "reconcile_every_s") {
                Ok(r) => {
                    tracing::info!(destination = %d.config.name, selected = r.counts.selected, delivered = r.counts.delivered, pending = r.counts.pending, dead_lettered = r.counts.dead_lettered, blocked = r.counts.blocked, missing = r.counts.missing, "scheduled reconciliation");
                    *d.last_reconcile.lock() = Some(r);
                }
                Err(e) => {
                    tracing::error!(destination = %d.config.name, error = %e, "scheduled reconciliation failed")
                }
            }
        }
    }

    /// Replay logs, which retention trims with their queue's policy (their
    /// lane's cursor protects what it has not sent).
    pub fn replay_logs(&self) -> Vec<(String, Arc<Log>)> {
        self.destinations
            .iter()
            .map(|d| (d.config.queue.clone(), d.replay.log.clone()))
            .collect()
    }

    /// Applies retention to every delivery journal: a journal segment goes
    /// only when all its records are older than the oldest message its
    /// queue still holds (an attempt is never older than its message), so
    /// reconcile and replay always find the attempts of what the queue
    /// keeps, however long a slow destination keeps it.
    pub fn trim_journals(&self, now_ms: u64) {
        for d in &self.destinations {
            let Some(policy) = journal_retention(&d.log, now_ms) else {
                continue;
            };
            match d.journal.enforce_retention(&policy, now_ms) {
                Ok(deleted) if !deleted.is_empty() => {
                    tracing::info!(destination = %d.config.name, segments = deleted.len(), "retention deleted delivery-journal segments older than anything the queue holds")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(destination = %d.config.name, error = %e, "journal retention failed")
                }
            }
        }
    }

    /// Resends a dead letter through the replay lane, as it is or as the
    /// operator corrected it (its field diff against the original is kept
    /// with the resend and the dead letter). Durable before this returns.
    pub fn dlq_resubmit(
        &self,
        id: &str,
        edited: Option<Vec<u8>>,
        actor: &str,
        reason: &str,
    ) -> Result<String, String> {
        let shown = self.dlq_show(id)?;
        let (dest, offset) = dlq_query::parse_id(id).expect("dlq_show parsed it");
        let d = self.find(dest)?;
        if let Some(at) = replay::resubmission_of(d, id) {
            return Err(format!(
                "{id} was already resubmitted (replay-log record {at}); nothing was changed"
            ));
        }
        if shown.entry.status != "open" {
            return Err(format!(
                "{id} is already {} (by {}: {}); nothing was changed",
                shown.entry.status, shown.entry.status_by, shown.entry.status_reason
            ));
        }
        let letter = d.dlq.read(offset).map_err(|e| format!("{id}: {e}"))?;
        let source = dlq::source_offset(&letter.meta).unwrap_or(Offset(u64::MAX));
        let (payload, diff, meta_from) = match edited {
            None => (letter.payload.clone(), String::new(), letter.meta.clone()),
            Some(new) => {
                check_edited(&new)?;
                let header = crate::hl7::parse_header(&new).map_err(|e| {
                    format!("the edited message is not HL7 v2 ({e}); nothing was changed")
                })?;
                let diff = crate::hl7::diff::field_diff(&letter.payload, &new).join("\n");
                if diff.is_empty() {
                    return Err("the edited message is the same as the dead letter; resubmit without --edited to resend it as is".into());
                }
                let meta = edited_meta(&letter.meta, &header);
                (new, diff, meta)
            }
        };
        let meta = replay::replay_meta(
            &shown.entry.queue,
            source,
            "resubmit",
            actor,
            reason,
            Some(id),
            &diff,
            &meta_from,
        );
        replay::append_all(&d.replay.log, vec![(meta, payload)])?;
        let status = dlq_query::status_meta(offset, "resubmitted", actor, reason);
        d.dlq.append(&status, diff.as_bytes()).map_err(|e| {
            format!("{id}: queued for resending, but its status could not be recorded ({e}): it still shows as open")
        })?;
        tracing::warn!(destination = dest, dlq_offset = offset.0, control_id = %shown.entry.control_id, edited = !diff.is_empty(), actor, reason, "dead letter resubmitted");
        Ok(if diff.is_empty() {
            format!("{id} resubmitted as it was; the replay lane sends it")
        } else {
            format!(
                "{id} resubmitted with {} changed field(s); the replay lane sends it",
                diff.split("\n").count()
            )
        })
    }

    /// The lifecycle of every message with this control id.
    pub fn trace(&self, control_id: &str) -> trace::Trace {
        trace::trace(control_id, &self.queues, &self.destinations)
    }

    /// Marks a dead letter discarded (a status record in the same log,
    /// durable before this returns): it stays readable, with who and why.
    pub fn dlq_discard(&self, id: &str, actor: &str, reason: &str) -> Result<String, String> {
        let record = self.dlq_show(id)?;
        if record.entry.status != "open" {
            return Err(format!(
                "{id} is already {} (by {}: {}); nothing was changed",
                record.entry.status, record.entry.status_by, record.entry.status_reason
            ));
        }
        let (dest, offset) = dlq_query::parse_id(id).expect("dlq_show parsed it");
        let d = self.find(dest)?;
        let meta = dlq_query::status_meta(offset, "discarded", actor, reason);
        d.dlq.append(&meta, &[]).map_err(|e| {
            format!("{id}: the discard could not be recorded ({e}); nothing was changed")
        })?;
        tracing::warn!(destination = dest, dlq_offset = offset.0, control_id = %record.entry.control_id, actor, reason, "dead letter discarded");
        Ok(format!("{id} discarded"))
    }

    pub fn status(&self) -> Vec<DestinationReport> {
        self.destinations.iter().map(|d| report(d)).collect()
    }

    /// Stops every lane (abandoning ACK waits) and commits their cursors.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        for d in &self.destinations {
            for lane in 0..d.lanes.len() as u16 {
                d.cursors.wait_durable(lane, Duration::from_secs(5));
            }
            d.replay.cursors.wait_durable(0, Duration::from_secs(5));
        }
    }
}

/// An edited message must be one HL7 v2 message that MLLP can carry
/// unchanged: no framing bytes inside, and it must parse.
fn check_edited(new: &[u8]) -> Result<(), String> {
    if let Some(at) = new.iter().position(|&b| b == 0x0B || b == 0x1C) {
        return Err(format!(
            "the edited message holds an MLLP framing byte (0x{:02X}) at byte {at}; nothing was changed",
            new[at]
        ));
    }
    crate::hl7::Message::parse(new).map(|_| ()).map_err(|e| {
        format!("the edited message does not parse as HL7 v2 ({e}); nothing was changed")
    })
}

/// The dead letter's metadata with the header fields the edit changed
/// (control id, type, sender) taken from the edited message.
fn edited_meta(original: &[u8], header: &crate::hl7::MshHeader<'_>) -> Vec<u8> {
    use crate::wal::meta::{MetaBuilder, MetaKey, MetaView};
    let replaced = [
        (MetaKey::ControlId, header.control_id()),
        (MetaKey::MessageType, header.message_type()),
        (MetaKey::SendingApp, header.sending_application()),
        (MetaKey::SendingFacility, header.sending_facility()),
    ];
    let mut m = MetaBuilder::new();
    for (k, v) in &replaced {
        m.push(*k, v);
    }
    for (key, value) in MetaView::new(original).iter() {
        if replaced.iter().all(|(k, _)| *k as u8 != key) {
            if let Some(k) = dlq::message_key(key) {
                m.push(k, value);
            }
        }
    }
    m.finish()
}

fn ask(
    d: &Destination,
    lane: u16,
    make: impl FnOnce(Sender<Result<(), String>>) -> LaneCommand,
) -> Result<(), String> {
    let shared = lane_shared(d, lane).ok_or_else(|| {
        format!(
            "destination `{}` has lanes 0..{} (and `replay`)",
            d.config.name,
            d.lanes.len()
        )
    })?;
    let (tx, rx) = bounded(1);
    shared
        .commands
        .0
        .send(make(tx))
        .map_err(|_| "lane is not running".to_string())?;
    rx.recv_timeout(Duration::from_secs(60))
        .map_err(|_| "lane did not answer within 60 s (it may be waiting for an ACK)".to_string())?
}

/// A live lane by number, or the replay lane for [`REPLAY_LANE`].
fn lane_shared(d: &Destination, lane: u16) -> Option<&LaneShared> {
    if lane == REPLAY_LANE {
        Some(&d.replay.lane)
    } else {
        d.lanes.get(usize::from(lane))
    }
}

fn lane_name(lane: u16) -> String {
    if lane == REPLAY_LANE {
        "replay".into()
    } else {
        lane.to_string()
    }
}

fn ask_text(
    d: &Destination,
    lane: u16,
    make: impl FnOnce(Sender<Result<String, String>>) -> LaneCommand,
) -> Result<String, String> {
    let shared = lane_shared(d, lane).ok_or_else(|| format!("no lane {lane}"))?;
    let (tx, rx) = bounded(1);
    shared
        .commands
        .0
        .send(make(tx))
        .map_err(|_| "lane is not running".to_string())?;
    rx.recv_timeout(Duration::from_secs(60)).map_err(|_| {
        format!("lane {lane} did not answer within 60 s (it may be waiting for an ACK)")
    })?
}

type Opened = (
    Arc<Destination>,
    Vec<crate::cursor::LaneCursor>,
    crate::cursor::LaneCursor,
);

fn open_destination(
    config: &Config,
    d: &DestinationConfig,
    logs: &BTreeMap<String, Arc<Log>>,
    storage: Arc<dyn Storage>,
) -> Result<Opened, DeliveryError> {
    let log = logs
        .get(&d.queue)
        .cloned()
        .ok_or_else(|| DeliveryError::NoQueue {
            destination: d.name.clone(),
            queue: d.queue.clone(),
        })?;
    let dlq = Log::open_with(
        storage.clone(),
        &config.layout().dlq(&d.name),
        dlq::dlq_log_config(),
    )
    .map_err(|source| DeliveryError::Dlq {
        destination: d.name.clone(),
        source,
    })?;
    let layout = config.layout();
    let open_log = |path: std::path::PathBuf, what: &'static str| {
        Log::open_with(storage.clone(), &path, journal::journal_log_config())
            .map(Arc::new)
            .map_err(|source| DeliveryError::Log {
                destination: d.name.clone(),
                what,
                source,
            })
    };
    let journal = open_log(layout.journal(&d.name), "delivery journal")?;
    let replay_log = open_log(layout.replay_log(&d.name), "replay log")?;
    let positions = (0..d.lanes())
        .map(|l| log.register_reader(&format!("{}/{l}", d.name), log.start_offset()))
        .collect();
    let (cursors, starts) = CursorStore::open(
        storage.clone(),
        &config.layout().cursors(),
        &d.name,
        &route::routing_description(&d.queue, &d.ordering),
        d.lanes(),
        positions,
        Duration::from_millis(d.cursor_sync_interval_ms),
    )
    .map_err(|source| DeliveryError::Cursor {
        destination: d.name.clone(),
        source,
    })?;
    cursors.attach_journal(journal.clone());
    let filter_history = filter_history::record(
        storage.as_ref(),
        &layout.filter_history(&d.name),
        &d.name,
        &route::routing_description(&d.queue, &d.ordering),
        &d.filter,
        &starts.iter().map(|c| c.next_offset.0).collect::<Vec<_>>(),
    );
    let replay_position =
        replay_log.register_reader(&format!("{}/replay", d.name), replay_log.start_offset());
    let (replay_cursors, replay_starts) = CursorStore::open(
        storage,
        &layout.replay_cursors(),
        &d.name,
        "replay-log",
        1,
        vec![replay_position],
        Duration::from_millis(d.cursor_sync_interval_ms),
    )
    .map_err(|source| DeliveryError::Cursor {
        destination: d.name.clone(),
        source,
    })?;
    replay_cursors.attach_journal(journal.clone());
    let replay_start = replay_starts.into_iter().next().unwrap_or_default();
    let lanes = (0..d.lanes()).map(|_| LaneShared::new()).collect();
    let halt = cursors_past_the_end(d, &log, &starts);
    let dest = Destination {
        config: d.clone(),
        log,
        dlq,
        journal,
        replay: ReplayFeed {
            log: replay_log,
            cursors: replay_cursors,
            lane: LaneShared::new(),
            limiter: RateLimiter::new(d.replay_rate_limit_per_s),
        },
        cursors,
        router: Router::new(d.filter.clone(), d.ordering.clone()),
        filter_history,
        breaker: Breaker::new(d.circuit_breaker.clone()),
        limiter: RateLimiter::new(d.rate_limit_per_s),
        paused: AtomicBool::new(false),
        halt: Mutex::new(halt),
        lanes,
        last_reconcile: Mutex::new(None),
    };
    Ok((Arc::new(dest), starts, replay_start))
}

/// A cursor past the log's end means the log lost records this destination
/// had already passed (damage, a restored backup). New messages would get
/// offsets below the cursor and be skipped without a trace, so delivery
/// stops until an operator decides with `reset-cursor`.
fn cursors_past_the_end(
    d: &DestinationConfig,
    log: &Log,
    starts: &[crate::cursor::LaneCursor],
) -> Option<Halt> {
    let end = log.end_offset();
    let ahead: Vec<String> = starts
        .iter()
        .enumerate()
        .filter(|(_, c)| c.next_offset > end)
        .map(|(lane, c)| format!("lane {lane} at {}", c.next_offset))
        .collect();
    if ahead.is_empty() {
        return None;
    }
    let why = format!(
        "cursor past the end of queue `{}` (end {end} at start; {}): the log lost records this destination had already passed (damage or a restored backup), and new messages there would be skipped. Run `orderly ctl reset-cursor {} --to-log-end --reason TEXT` to deliver every message from offset {end} on (or `--to-offset N` to deliver again from N)",
        d.queue,
        ahead.join(", "),
        d.name
    );
    tracing::error!(destination = %d.name, queue = %d.queue, end = end.0, lanes = %ahead.join(", "), "delivery halted: cursor past the end of the queue; waiting for `orderly ctl reset-cursor`");
    Some(Halt { why, log_end: end })
}

fn lane_report(lane: u16, l: &LaneShared, log: &Log, cursors: &CursorStore) -> LaneReport {
    let end = log.end_offset();
    let s = l.status.lock().clone();
    let lag_records = end.0.saturating_sub(s.next_offset.0);
    let lag_seconds = if lag_records == 0 {
        0.0
    } else {
        log.read(s.next_offset)
            .map(|r| crate::wal::now_ms().saturating_sub(r.timestamp_ms) as f64 / 1000.0)
            .unwrap_or(0.0)
    };
    LaneReport {
        lane,
        committed: s.next_offset,
        durable: cursors.durable(lane).next_offset,
        log_end: end,
        lag_records,
        lag_seconds,
        head: s.head,
        delivered: l.delivered.load(Ordering::Relaxed),
        dead_lettered: l.dead_lettered.load(Ordering::Relaxed),
    }
}

fn report(d: &Destination) -> DestinationReport {
    let lanes = d
        .lanes
        .iter()
        .enumerate()
        .map(|(i, l)| lane_report(i as u16, l, &d.log, &d.cursors))
        .collect();
    let replay = lane_report(0, &d.replay.lane, &d.replay.log, &d.replay.cursors);
    let last_reconcile = d.last_reconcile.lock().as_ref().map(|r| {
        let c = &r.counts;
        format!(
            "at {}: {} selected, {} delivered, {} pending, {} dead-lettered, {} blocked, {} missing{}",
            r.at_ms, c.selected, c.delivered, c.pending, c.dead_lettered, c.blocked, c.missing,
            if c.filtered_then > 0 {
                format!(", {} filtered out then", c.filtered_then)
            } else {
                String::new()
            }
        )
    });
    let circuit = match d.breaker.state() {
        BreakerState::Closed { .. } => "closed",
        BreakerState::Open { .. } => "open",
        BreakerState::HalfOpen { .. } => "half-open",
    };
    let ordering = match &d.config.ordering {
        OrderingConfig::Strict => "strict".to_string(),
        OrderingConfig::Partitioned { key, lanes } => format!("partitioned({key}, {lanes} lanes)"),
    };
    DestinationReport {
        name: d.config.name.clone(),
        queue: d.config.queue.clone(),
        ordering,
        circuit: circuit.into(),
        paused: d.paused.load(Ordering::Relaxed),
        halt: d.halt.lock().as_ref().map(|h| h.why.clone()),
        cursor_failure: d.cursors.failure().or(d.replay.cursors.failure()),
        lanes,
        replay,
        last_reconcile,
    }
}

/// The end of a lane's status line: its head.
fn head_text(head: &Option<HeadState>) -> String {
    match head {
        None => " head=ok\n".into(),
        Some(h) => format!(
            " head={} offset={} attempts={} class={} error={:?}\n",
            match h.status {
                crate::cursor::HeadStatus::Blocked => "BLOCKED",
                crate::cursor::HeadStatus::Retrying => "retrying",
            },
            h.offset,
            h.attempts,
            h.class.name(),
            h.text
        ),
    }
}

/// `orderly ctl status` text.
pub fn render_status(reports: &[DestinationReport]) -> String {
    let mut out = String::new();
    if reports.is_empty() {
        out.push_str("no destinations configured\n");
    }
    for d in reports {
        out.push_str(&format!(
            "destination {} queue={} ordering={} circuit={} paused={}\n",
            d.name,
            d.queue,
            d.ordering,
            d.circuit,
            if d.paused { "yes" } else { "no" }
        ));
        if let Some(h) = &d.halt {
            out.push_str(&format!("  HALTED: {h}\n"));
        }
        if let Some(f) = &d.cursor_failure {
            out.push_str(&format!("  CURSOR STORE FAILED: {f}\n"));
        }
        for l in &d.lanes {
            out.push_str(&format!("  lane {} committed={} durable={} end={} lag={} lag_s={:.1} delivered={} dead_lettered={}", l.lane, l.committed, l.durable, l.log_end, l.lag_records, l.lag_seconds, l.delivered, l.dead_lettered));
            out.push_str(&head_text(&l.head));
        }
        let r = &d.replay;
        out.push_str(&format!(
            "  replay committed={} end={} lag={} delivered={} dead_lettered={}",
            r.committed, r.log_end, r.lag_records, r.delivered, r.dead_lettered
        ));
        out.push_str(&head_text(&r.head));
        if let Some(line) = &d.last_reconcile {
            out.push_str(&format!("  last reconciliation {line}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::SimStorage;

    /// The journal keeps the attempts of everything its queue still holds,
    /// however old (a slow destination keeps the queue's segments); the
    /// queue's own age limit, applied to the journal as before, deleted
    /// them two hours on.
    #[test]
    fn journal_retention_follows_what_the_queue_still_holds() {
        let sim: Arc<dyn Storage> = Arc::new(SimStorage::new());
        let small = crate::wal::LogConfig {
            segment_bytes: 64 * 1024,
            ..journal::journal_log_config()
        };
        let journal =
            Log::open_with(sim.clone(), std::path::Path::new("/j"), small.clone()).unwrap();
        let queue = Log::open_with(sim, std::path::Path::new("/q"), small).unwrap();
        queue.append(b"", b"MSH|^~\\&|A").unwrap();
        for _ in 0..3000 {
            journal.append(&[1, 1, 0, b'x'], &[]).unwrap();
        }
        let segments_before = journal.start_offset();
        let later = crate::wal::now_ms() + 2 * 3600 * 1000;
        let policy = journal_retention(&queue, later).expect("the queue's first record reads");
        let deleted = journal.enforce_retention(&policy, later).unwrap();
        assert!(
            deleted.is_empty(),
            "kept while the queue holds its message: {deleted:?}"
        );
        assert_eq!(journal.start_offset(), segments_before);
        // Once the queue's message is gone too (an empty queue), they may go.
        let empty = Log::open_with(
            Arc::new(SimStorage::new()),
            std::path::Path::new("/e"),
            journal::journal_log_config(),
        )
        .unwrap();
        let policy = journal_retention(&empty, later).unwrap();
        assert!(!journal
            .enforce_retention(&policy, later)
            .unwrap()
            .is_empty());
    }
}
