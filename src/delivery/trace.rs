//! `orderly ctl trace <control-id>`: what happened to each message with
//! that MSH-10, from what the logs already hold: its record (received,
//! durable, size, SHA-256), the duplicates and conflicts seen for it, and
//! per destination where it stands (delivered, pending, blocked, filtered
//! out, dead-lettered with the dead letter's status). A scan of each queue's
//! metadata for now (the search-index issue indexes it); individual
//! delivery attempts join when the delivery journal exists.
use super::dlq::meta_u64_view;
use super::dlq_query::{self, DlqFilter};
use super::Destination;
use crate::cursor::HeadStatus;
use crate::wal::meta::{MetaKey, MetaView};
use crate::wal::{Log, Offset};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Messages one trace reports at most (a control id reused that often is
/// a sender problem, not something to print in full).
pub const TRACE_MESSAGES_MAX: usize = 100;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Trace {
    pub control_id: String,
    pub messages: Vec<TracedMessage>,
    /// Duplicates and refused conflicts with this control id.
    pub events: Vec<TracedEvent>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TracedMessage {
    pub queue: String,
    pub offset: u64,
    pub listener: String,
    pub peer: String,
    pub received_ms: Option<u64>,
    /// When its append became durable (and its ACK was released).
    pub durable_ms: u64,
    pub bytes: usize,
    pub sha256: String,
    pub message_type: String,
    /// Set when stored as a new version of the message at this offset.
    pub new_version_of: Option<u64>,
    pub destinations: Vec<TracedDelivery>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TracedEvent {
    pub queue: String,
    pub offset: u64,
    pub event: String,
    pub at_ms: u64,
    pub listener: String,
    pub peer: String,
    pub original: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TracedDelivery {
    pub destination: String,
    pub lane: Option<u16>,
    /// `delivered`, `pending`, `blocked`, `retrying`, `dead-lettered`,
    /// or `not-for-this-destination` (its filter leaves it out).
    pub state: String,
    pub detail: String,
    /// Every journaled attempt, live and replay lanes, oldest first.
    #[serde(default)]
    pub attempts: Vec<super::journal::JournalEntry>,
    /// Replays and resubmissions queued for it, with who and why.
    #[serde(default)]
    pub replays: Vec<super::replay::ReplayEntry>,
}

/// Traces `control_id` through every queue in `queues` and the
/// destinations reading them.
pub fn trace(
    control_id: &str,
    queues: &[(String, Arc<Log>)],
    destinations: &[Arc<Destination>],
) -> Trace {
    let mut out = Trace {
        control_id: control_id.to_string(),
        messages: Vec::new(),
        events: Vec::new(),
    };
    for (queue, log) in queues {
        scan_queue(control_id, queue, log, destinations, &mut out);
    }
    for m in &mut out.messages {
        for t in &mut m.destinations {
            let Some(d) = destinations.iter().find(|d| d.config.name == t.destination) else {
                continue;
            };
            add_history(d, m.offset, m.durable_ms, t);
        }
    }
    out
}

/// The journal's attempts and the replay log's entries for the message.
fn add_history(d: &Destination, offset: u64, since_ms: u64, t: &mut TracedDelivery) {
    super::journal::scan(&d.journal, since_ms, |e| {
        if e.source_offset == offset && e.queue == d.config.queue {
            t.attempts.push(e);
        }
    });
    let replay = &d.replay.log;
    replay.scan(replay.start_offset(), u64::MAX, |r| {
        let e = super::replay::entry_of(r.offset, r.timestamp_ms, r.meta);
        if e.source_offset == Some(offset)
            && MetaView::new(r.meta).get(MetaKey::SourceQueue) == Some(d.config.queue.as_bytes())
        {
            t.replays.push(e);
        }
        true
    });
    if t.attempts.iter().any(|a| a.delivered()) && t.state != "delivered" {
        t.detail = format!(
            "acknowledged (journal); before that {}: {}",
            t.state, t.detail
        );
        t.state = "delivered".into();
    }
}

fn scan_queue(
    control_id: &str,
    queue: &str,
    log: &Log,
    destinations: &[Arc<Destination>],
    out: &mut Trace,
) {
    log.scan(log.start_offset(), u64::MAX, |rec| {
        let meta = MetaView::new(rec.meta);
        if meta.get(MetaKey::ControlId) != Some(control_id.as_bytes()) {
            return true;
        }
        if let Some(event) = meta.get(MetaKey::Event) {
            out.events.push(TracedEvent {
                queue: queue.to_string(),
                offset: rec.offset.0,
                event: String::from_utf8_lossy(event).into_owned(),
                at_ms: rec.timestamp_ms,
                listener: meta.get_str(MetaKey::Listener),
                peer: meta.get_str(MetaKey::Peer),
                original: meta_u64_view(&meta, MetaKey::OriginalOffset),
            });
            return true;
        }
        if out.messages.len() >= TRACE_MESSAGES_MAX {
            return true;
        }
        let deliveries = destinations
            .iter()
            .filter(|d| d.config.queue == queue)
            .map(|d| where_it_stands(d, rec.offset, rec.meta, rec.payload, control_id))
            .collect();
        out.messages.push(TracedMessage {
            queue: queue.to_string(),
            offset: rec.offset.0,
            listener: meta.get_str(MetaKey::Listener),
            peer: meta.get_str(MetaKey::Peer),
            received_ms: meta_u64_view(&meta, MetaKey::ReceivedAtMs),
            durable_ms: rec.timestamp_ms,
            bytes: rec.payload.len(),
            sha256: meta
                .get(MetaKey::PayloadSha256)
                .map(crate::server::ingest::hex)
                .unwrap_or_default(),
            message_type: meta.get_str(MetaKey::MessageType),
            new_version_of: meta
                .get(MetaKey::NewVersion)
                .and_then(|_| meta_u64_view(&meta, MetaKey::OriginalOffset)),
            destinations: deliveries,
        });
        true
    });
}

/// Where the message at `offset` stands for destination `d`.
fn where_it_stands(
    d: &Destination,
    offset: Offset,
    meta: &[u8],
    payload: &[u8],
    control_id: &str,
) -> TracedDelivery {
    let name = d.config.name.clone();
    let Some(lane) = d.router.lane_of(offset, meta, payload) else {
        return TracedDelivery {
            destination: name,
            lane: None,
            state: "not-for-this-destination".into(),
            detail: "its filter leaves this message out".into(),
            attempts: Vec::new(),
            replays: Vec::new(),
        };
    };
    let filter = DlqFilter {
        control_id: Some(control_id.to_string()),
        ..DlqFilter::default()
    };
    let (mut letters, mut skipped) = (Vec::new(), 0);
    dlq_query::search(
        &name,
        &d.dlq,
        &filter,
        usize::MAX,
        &mut letters,
        &mut skipped,
    );
    let letter = letters
        .into_iter()
        .find(|e| e.queue == d.config.queue && e.source_offset == Some(offset.0));
    let (state, detail) = if let Some(e) = letter {
        let status = if e.status == "open" {
            e.status.clone()
        } else {
            format!("{} by {}: {}", e.status, e.status_by, e.status_reason)
        };
        (
            "dead-lettered".to_string(),
            format!("{} ({}, {status}): {}", e.id, e.error_class, e.reason),
        )
    } else {
        let status = d.lanes[usize::from(lane)].status.lock().clone();
        let durable = d.cursors.durable(lane).next_offset;
        match status.head.filter(|h| h.offset == offset) {
            Some(h) => (
                match h.status {
                    HeadStatus::Blocked => "blocked",
                    HeadStatus::Retrying => "retrying",
                }
                .to_string(),
                format!("{} attempts, {}: {}", h.attempts, h.class.name(), h.text),
            ),
            None if durable > offset => (
                "delivered".to_string(),
                "positively acknowledged (the lane's durable cursor is past it)".to_string(),
            ),
            None if status.next_offset > offset => (
                "delivered".to_string(),
                "positively acknowledged (cursor not yet synced)".to_string(),
            ),
            None => (
                "pending".to_string(),
                format!("lane cursor at {}", status.next_offset),
            ),
        }
    };
    TracedDelivery {
        destination: name,
        lane: Some(lane),
        state,
        detail,
        attempts: Vec::new(),
        replays: Vec::new(),
    }
}
