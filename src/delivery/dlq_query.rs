//! Searching dead-letter records: the one interface `orderly ctl dlq list`
//! and `show` go through. For now a scan of each destination's dead-letter
//! log (metadata first, the payload parsed only for patient and encounter
//! filters); the search-index issue makes it indexed behind the same calls.
use super::dlq::meta_u64_view;
use crate::hl7::{FieldPath, Message};
use crate::wal::meta::{MetaKey, MetaView};
use crate::wal::{Log, Offset, OwnedRecord, WalError};
use serde::{Deserialize, Serialize};

/// Entries one `list` returns at most (the rest is counted, not sent).
pub const DLQ_LIST_MAX: usize = 10_000;

/// What `orderly ctl dlq list` filters on; `None` matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqFilter {
    pub destination: Option<String>,
    /// PID-3.1.
    pub patient: Option<String>,
    /// MSH-10.
    pub control_id: Option<String>,
    /// PV1-19.
    pub encounter: Option<String>,
    /// MSH-4 (its first component, or the whole field).
    pub facility: Option<String>,
    /// Error class name (`rejected`, `timeout`, ...).
    pub error: Option<String>,
    /// Dead-lettered at or after, ms since the epoch.
    pub since_ms: Option<u64>,
    /// Dead-lettered before, ms since the epoch.
    pub until_ms: Option<u64>,
}

/// One dead-letter record, as an operator sees it (no payload).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlqEntry {
    /// `<destination>:<offset in its dead-letter log>`: what `show` takes.
    pub id: String,
    pub destination: String,
    pub dead_lettered_ms: u64,
    pub queue: String,
    pub source_offset: Option<u64>,
    pub lane: Option<u64>,
    pub control_id: String,
    pub message_type: String,
    pub facility: String,
    pub error_class: String,
    pub error_text: String,
    pub attempts: Option<u64>,
    pub first_failure_ms: Option<u64>,
    pub last_failure_ms: Option<u64>,
    pub reason: String,
    pub bytes: usize,
}

/// A whole dead-letter record for `show`: its entry, the message, the
/// downstream's last answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DlqRecord {
    pub entry: DlqEntry,
    pub payload: String,
    pub last_ack: Option<String>,
}

impl DlqFilter {
    fn wants_payload(&self) -> bool {
        self.patient.is_some() || self.encounter.is_some()
    }

    fn matches_meta(&self, e: &DlqEntry) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        eq(&self.destination, &e.destination)
            && eq(&self.control_id, &e.control_id)
            && eq(&self.error, &e.error_class)
            && self
                .facility
                .as_deref()
                .is_none_or(|f| e.facility == f || e.facility.split('^').next() == Some(f))
            && self.since_ms.is_none_or(|t| e.dead_lettered_ms >= t)
            && self.until_ms.is_none_or(|t| e.dead_lettered_ms < t)
    }

    fn matches_payload(&self, payload: &[u8]) -> bool {
        if !self.wants_payload() {
            return true;
        }
        let Ok(msg) = Message::parse(payload) else {
            return false;
        };
        let value = |path: &str| {
            let p = FieldPath::parse(path).expect("a fixed, valid path");
            msg.get(&p)
                .map(|v| String::from_utf8_lossy(v.raw()).into_owned())
        };
        let eq = |want: &Option<String>, path: &str| {
            want.as_deref()
                .is_none_or(|w| value(path).as_deref() == Some(w))
        };
        eq(&self.patient, "PID-3.1") && eq(&self.encounter, "PV1-19")
    }
}

/// The entry of a dead-letter record of `destination`.
pub fn entry_of(destination: &str, rec: &OwnedRecord) -> DlqEntry {
    let meta = MetaView::new(&rec.meta);
    DlqEntry {
        id: format!("{destination}:{}", rec.offset.0),
        destination: destination.to_string(),
        dead_lettered_ms: rec.timestamp_ms,
        queue: meta.get_str(MetaKey::SourceQueue),
        source_offset: meta_u64_view(&meta, MetaKey::SourceOffset),
        lane: meta_u64_view(&meta, MetaKey::Lane),
        control_id: meta.get_str(MetaKey::ControlId),
        message_type: meta.get_str(MetaKey::MessageType),
        facility: meta.get_str(MetaKey::SendingFacility),
        error_class: meta.get_str(MetaKey::ErrorClass),
        error_text: meta.get_str(MetaKey::ErrorText),
        attempts: meta_u64_view(&meta, MetaKey::Attempts),
        first_failure_ms: meta_u64_view(&meta, MetaKey::FirstFailureMs),
        last_failure_ms: meta_u64_view(&meta, MetaKey::LastFailureMs),
        reason: meta.get_str(MetaKey::Reason),
        bytes: rec.payload.len(),
    }
}

/// The matching records of one destination's dead-letter log, oldest
/// first, at most `room` of them; damaged records are counted in `skipped`.
pub fn search(
    destination: &str,
    dlq: &Log,
    filter: &DlqFilter,
    room: usize,
    out: &mut Vec<DlqEntry>,
    skipped: &mut u64,
) {
    if filter
        .destination
        .as_deref()
        .is_some_and(|d| d != destination)
    {
        return;
    }
    let end = dlq.end_offset();
    let mut reader = dlq.reader(dlq.start_offset());
    while out.len() < room {
        match reader.next() {
            Ok(Some(rec)) => {
                let rec = OwnedRecord::from(rec);
                let entry = entry_of(destination, &rec);
                if filter.matches_meta(&entry) && filter.matches_payload(&rec.payload) {
                    out.push(entry);
                }
            }
            Ok(None) => return,
            Err(_) => {
                *skipped += 1;
                let next = Offset(reader.position().0 + 1);
                if next >= end {
                    return;
                }
                reader.seek(next);
            }
        }
    }
}

/// One dead-letter record by offset.
pub fn record(destination: &str, dlq: &Log, offset: Offset) -> Result<DlqRecord, WalError> {
    let rec = dlq.read(offset)?;
    let last_ack = MetaView::new(&rec.meta)
        .get(MetaKey::LastAck)
        .map(|a| String::from_utf8_lossy(a).into_owned());
    Ok(DlqRecord {
        entry: entry_of(destination, &rec),
        payload: String::from_utf8_lossy(&rec.payload).into_owned(),
        last_ack,
    })
}

/// Parses a `show` id, `<destination>:<offset>`.
pub fn parse_id(id: &str) -> Option<(&str, Offset)> {
    let (dest, offset) = id.rsplit_once(':')?;
    Some((dest, Offset(offset.parse().ok()?)))
}
