//! Reconciliation: proving, from the logs, what a destination holds.
//!
//! For every accepted message in a window that the destination's filter
//! wants, the journal, the dead-letter log and the lanes' durable cursors
//! say where it stands: `delivered` (an attempt was acknowledged),
//! `dead-lettered`, `blocked` (a lane holds it), `pending` (no lane has
//! passed it yet), `filtered-then` (passed under an earlier filter that
//! left it out: `filter_history.rs`), or `missing`: passed by its lane's
//! durable cursor with neither an acknowledged attempt nor a dead letter. The cursor store
//! makes journal entries durable before the cursor that passes them, so
//! `missing` is a bug or tampering and must be zero.
//!
//! With a list of control ids the downstream reports holding, it also
//! lists the selected messages the downstream lacks and the ids Orderly
//! never accepted in the window.
use super::replay::{self, live_cursors};
use super::Destination;
use crate::cursor::HeadStatus;
use crate::wal::meta::{is_event, MetaKey, MetaView};
use crate::wal::Offset;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

/// Messages listed per class at most (all are counted).
pub const RECONCILE_LIST_MAX: usize = 10_000;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReconcileRequest {
    pub destination: String,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    /// Control ids the downstream reports holding (`--against FILE`).
    pub against: Option<Vec<String>>,
    /// Queue what is missing on the replay lane.
    pub replay_missing: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counts {
    pub selected: u64,
    pub delivered: u64,
    pub pending: u64,
    pub dead_lettered: u64,
    pub blocked: u64,
    pub missing: u64,
    /// Wanted by today's filter, passed by its lane under an earlier one
    /// that left it out (never sent; `ctl replay` sends such messages).
    #[serde(default)]
    pub filtered_then: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Item {
    pub offset: u64,
    pub control_id: String,
    pub state: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Against {
    /// Distinct control ids in the file.
    pub listed: u64,
    /// Selected messages whose control id the downstream does not list.
    pub missing_downstream: Vec<Item>,
    pub missing_downstream_count: u64,
    /// Listed ids that match no selected message of the window.
    pub unknown_to_orderly: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReconcileReport {
    pub destination: String,
    pub queue: String,
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub at_ms: u64,
    pub counts: Counts,
    /// Passed but never acknowledged nor dead-lettered: must be empty.
    pub missing: Vec<Item>,
    pub blocked: Vec<Item>,
    pub dead_lettered: Vec<Item>,
    pub against: Option<Against>,
    /// Queued on the replay lane by `--replay-missing`.
    pub replayed: u64,
    /// Damaged records passed over (queue, journal, dead letters).
    pub unreadable: u64,
    /// The window held more records than one scan reads: narrow it.
    pub truncated: bool,
}

impl ReconcileReport {
    /// Whether the destination provably holds everything it should have
    /// by now (nothing missing, nothing the downstream lacks that was
    /// acknowledged).
    pub fn clean(&self) -> bool {
        self.counts.missing == 0
            && self.against.as_ref().is_none_or(|a| {
                a.missing_downstream
                    .iter()
                    .all(|i| matches!(i.state.as_str(), "pending" | "blocked" | "filtered-then"))
            })
    }
}

/// Classifies the window and (with `replay_missing`) queues the missing
/// messages on the replay lane.
pub fn reconcile(
    d: &Destination,
    req: &ReconcileRequest,
    actor: &str,
    reason: &str,
) -> Result<ReconcileReport, String> {
    let since_ms = req.since_ms.unwrap_or(0);
    let mut report = ReconcileReport {
        destination: d.config.name.clone(),
        queue: d.config.queue.clone(),
        since_ms: req.since_ms,
        until_ms: req.until_ms,
        at_ms: crate::wal::now_ms(),
        ..Default::default()
    };
    // Order matters: cursors, then dead letters and journal (see module doc).
    let cursors = live_cursors(d);
    let heads: Vec<Option<(Offset, HeadStatus)>> = d
        .lanes
        .iter()
        .map(|l| l.status.lock().head.as_ref().map(|h| (h.offset, h.status)))
        .collect();
    let (dead, dead_unreadable) = dead_lettered_offsets(d);
    let acked = replay::acknowledged(d, since_ms);
    let queued = replay::queued_for_replay(d);
    let listed: Option<HashSet<&str>> = req.against.as_ref().map(|ids| {
        ids.iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .collect()
    });
    let mut seen_ids: HashSet<String> = HashSet::new();
    let mut missing_downstream: Vec<Item> = Vec::new();
    let mut to_replay: Vec<Offset> = Vec::new();
    let mut unreadable = dead_unreadable + acked.unreadable;
    let complete = replay::scan_window(
        &d.log,
        since_ms,
        req.until_ms,
        &mut unreadable,
        |offset, meta, payload| {
            if is_event(meta) {
                return true;
            }
            let Some(lane) = d.router.lane_of(offset, meta, payload) else {
                return true;
            };
            let control_id = MetaView::new(meta).get_str(MetaKey::ControlId);
            let state = if acked.contains(offset.0) {
                "delivered"
            } else if dead.contains_key(&offset.0) {
                "dead-lettered"
            } else if heads[usize::from(lane)]
                .is_some_and(|(o, s)| o == offset && s == HeadStatus::Blocked)
            {
                "blocked"
            } else if cursors[usize::from(lane)] <= offset {
                "pending"
            } else if d.filter_history.filtered_then(lane, offset, meta, payload) {
                // Passed under an earlier filter that left it out.
                "filtered-then"
            } else {
                "missing"
            };
            report.counts.selected += 1;
            let item = || Item {
                offset: offset.0,
                control_id: control_id.clone(),
                state: state.to_string(),
            };
            let (count, list) = match state {
                "delivered" => (&mut report.counts.delivered, None),
                "pending" => (&mut report.counts.pending, None),
                "dead-lettered" => (
                    &mut report.counts.dead_lettered,
                    Some(&mut report.dead_lettered),
                ),
                "blocked" => (&mut report.counts.blocked, Some(&mut report.blocked)),
                "filtered-then" => (&mut report.counts.filtered_then, None),
                _ => (&mut report.counts.missing, Some(&mut report.missing)),
            };
            *count += 1;
            if let Some(list) = list.filter(|l| l.len() < RECONCILE_LIST_MAX) {
                list.push(item());
            }
            // Held downstream under its own control id, or under the one an
            // edited resubmission of it was acknowledged with.
            let sent_as = acked.by_offset.get(&offset.0);
            let lacking = match &listed {
                Some(ids) => {
                    seen_ids.insert(control_id.clone());
                    seen_ids.extend(sent_as.into_iter().flatten().cloned());
                    !ids.contains(control_id.as_str())
                        && !sent_as
                            .into_iter()
                            .flatten()
                            .any(|id| ids.contains(id.as_str()))
                }
                None => false,
            };
            if lacking {
                if missing_downstream.len() < RECONCILE_LIST_MAX {
                    missing_downstream.push(item());
                }
                report
                    .against
                    .get_or_insert_with(Against::default)
                    .missing_downstream_count += 1;
            }
            // What the live lanes have yet to pass (pending, blocked, or
            // below a reset cursor) they send; what is queued on the replay
            // lane it sends: queueing either again would send it twice.
            let live_sends = cursors[usize::from(lane)] <= offset;
            let replayable = !live_sends
                && state != "filtered-then"
                && !queued.contains(&offset.0)
                && match &listed {
                    Some(_) => lacking,
                    None => state == "missing",
                };
            if req.replay_missing && replayable && (to_replay.len() as u64) < replay::REPLAY_MAX {
                to_replay.push(offset);
            }
            true
        },
    );
    report.unreadable = unreadable;
    report.truncated = !complete || !acked.complete;
    if let Some(ids) = &listed {
        let a = report.against.get_or_insert_with(Against::default);
        a.listed = ids.len() as u64;
        a.missing_downstream = missing_downstream;
        let mut unknown: Vec<String> = ids
            .iter()
            .filter(|id| !seen_ids.contains(**id))
            .map(|s| s.to_string())
            .collect();
        unknown.sort();
        unknown.truncate(RECONCILE_LIST_MAX);
        a.unknown_to_orderly = unknown;
    }
    if req.replay_missing {
        report.replayed = replay::queue_offsets(d, &to_replay, "reconcile", actor, reason)?;
    }
    if report.counts.missing > 0 {
        tracing::error!(destination = %d.config.name, missing = report.counts.missing, "reconciliation: messages passed by a lane with neither an acknowledged attempt nor a dead letter");
    }
    Ok(report)
}

/// Queue offsets this destination dead-lettered (any status), from its
/// dead-letter log; with the damaged records passed over.
fn dead_lettered_offsets(d: &Destination) -> (HashMap<u64, u64>, u64) {
    let mut out = HashMap::new();
    let filter = super::dlq_query::DlqFilter::default();
    let (mut entries, mut skipped) = (Vec::new(), 0);
    super::dlq_query::search(
        &d.config.name,
        &d.dlq,
        &filter,
        usize::MAX,
        &mut entries,
        &mut skipped,
    );
    for e in entries {
        if e.queue == d.config.queue {
            if let (Some(o), Some((_, dlq))) = (e.source_offset, super::dlq_query::parse_id(&e.id))
            {
                out.insert(o, dlq.0);
            }
        }
    }
    (out, skipped)
}
