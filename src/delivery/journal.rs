//! The delivery journal: one log per destination under
//! `journal/<destination>/`, one record per delivery attempt (lane, source
//! offset, attempt number, time, outcome, error class, ACK code and text).
//! Trace, reconciliation and replay read it to know, rather than assume,
//! what a destination acknowledged.
//!
//! Records travel with the cursor update that follows the attempt, and the
//! cursor store makes them durable before that update (see
//! `cursor::CursorStore`): a durable cursor never passes a message whose
//! attempt is not in the journal. A crash loses at most attempts whose
//! cursor update was lost too, and those messages are delivered again (and
//! journaled again).
use crate::cursor::ErrorClass;
use crate::wal::meta::{MetaBuilder, MetaKey, MetaView};
use crate::wal::{Log, LogConfig, Offset};
use serde::{Deserialize, Serialize};

use super::dlq::meta_u64_view;

/// Journal logs: small records, written in batches by the cursor
/// committer. Segments are preallocated, so a disk that fills up stops the
/// journal (and with it the cursors: see `cursor::CursorStore`) only when a
/// segment of about 100,000 attempts is used up.
pub fn journal_log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024 * 1024,
        preallocate: true,
        prepare_segments: false,
        ..LogConfig::default()
    }
}

/// Which lane of a destination made an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// A partition lane reading the queue (its number in `lane`).
    Live,
    /// The destination's replay lane (replays and resubmissions).
    Replay,
}

impl Channel {
    pub fn name(self) -> &'static str {
        match self {
            Channel::Live => "live",
            Channel::Replay => "replay",
        }
    }
}

/// How an attempt ended, as the journal records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Failed; the lane retries after a backoff.
    Retrying,
    /// Failed; the message went to the dead-letter queue.
    DeadLettered,
    /// Failed; the lane holds it until an operator decides.
    Blocked,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Delivered => "delivered",
            Verdict::Retrying => "retrying",
            Verdict::DeadLettered => "dead-lettered",
            Verdict::Blocked => "blocked",
        }
    }
}

/// One attempt, as a lane knows it.
pub struct Attempt<'a> {
    pub channel: Channel,
    pub lane: u16,
    /// The queue the message came from.
    pub queue: &'a str,
    /// The queue offset of the message sent (for a replay, of the original).
    pub source_offset: Offset,
    /// The replay-log record sent, for the replay lane.
    pub replay_offset: Option<Offset>,
    pub control_id: &'a [u8],
    pub attempt: u32,
    pub verdict: Verdict,
    pub class: Option<ErrorClass>,
    pub ack_code: &'a str,
    pub text: &'a str,
}

/// The metadata of an attempt's journal record (the payload is empty).
pub fn encode(a: &Attempt<'_>, at_ms: u64) -> Vec<u8> {
    let mut m = MetaBuilder::new();
    m.push(MetaKey::Channel, a.channel.name().as_bytes())
        .push(MetaKey::Lane, &a.lane.to_le_bytes())
        .push(MetaKey::SourceQueue, a.queue.as_bytes())
        .push(MetaKey::SourceOffset, &a.source_offset.0.to_le_bytes())
        .push(MetaKey::ControlId, a.control_id)
        .push(MetaKey::Attempts, &a.attempt.to_le_bytes())
        .push(MetaKey::AttemptAtMs, &at_ms.to_le_bytes())
        .push(MetaKey::Outcome, a.verdict.name().as_bytes());
    if let Some(r) = a.replay_offset {
        m.push(MetaKey::ReplayOffset, &r.0.to_le_bytes());
    }
    if let Some(c) = a.class {
        m.push(MetaKey::ErrorClass, c.name().as_bytes());
    }
    if !a.ack_code.is_empty() {
        m.push(MetaKey::AckCode, a.ack_code.as_bytes());
    }
    if !a.text.is_empty() {
        m.push(MetaKey::ErrorText, a.text.as_bytes());
    }
    m.finish()
}

/// One journal record, decoded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalEntry {
    pub journal_offset: u64,
    pub channel: String,
    pub lane: u16,
    pub queue: String,
    pub source_offset: u64,
    pub replay_offset: Option<u64>,
    pub control_id: String,
    pub attempt: u32,
    pub at_ms: u64,
    pub outcome: String,
    pub error_class: String,
    pub ack_code: String,
    pub text: String,
}

impl JournalEntry {
    pub fn delivered(&self) -> bool {
        self.outcome == Verdict::Delivered.name()
    }
}

pub fn decode(journal_offset: Offset, meta: &[u8]) -> Option<JournalEntry> {
    let v = MetaView::new(meta);
    Some(JournalEntry {
        journal_offset: journal_offset.0,
        channel: v.get_str(MetaKey::Channel),
        lane: meta_u64_view(&v, MetaKey::Lane)? as u16,
        queue: v.get_str(MetaKey::SourceQueue),
        source_offset: meta_u64_view(&v, MetaKey::SourceOffset)?,
        replay_offset: meta_u64_view(&v, MetaKey::ReplayOffset),
        control_id: v.get_str(MetaKey::ControlId),
        attempt: meta_u64_view(&v, MetaKey::Attempts).unwrap_or(0) as u32,
        at_ms: meta_u64_view(&v, MetaKey::AttemptAtMs).unwrap_or(0),
        outcome: v.get_str(MetaKey::Outcome),
        error_class: v.get_str(MetaKey::ErrorClass),
        ack_code: v.get_str(MetaKey::AckCode),
        text: v.get_str(MetaKey::ErrorText),
    })
}

/// Journal records at most one scan visits (bounds a trace or a
/// reconciliation's time; the search-index issue indexes the journal).
pub const JOURNAL_SCAN_MAX: u64 = 50_000_000;

/// Margin a scan starts before the window, against wall-clock steps between
/// a message's timestamp and its attempts'.
const SCAN_MARGIN_MS: u64 = 3600 * 1000;

/// Calls `f` with every readable journal entry written at or after
/// `since_ms` less a margin (attempts never precede the message they send,
/// so a window of messages starting at `since_ms` needs nothing older).
/// Damaged records are passed over and counted; the end says whether it
/// stopped at [`JOURNAL_SCAN_MAX`].
pub fn scan(journal: &Log, since_ms: u64, mut f: impl FnMut(JournalEntry)) -> crate::wal::ScanEnd {
    let from = crate::wal::first_at_or_after(journal, since_ms.saturating_sub(SCAN_MARGIN_MS));
    let scanned = journal.scan(from, JOURNAL_SCAN_MAX, |r| {
        if let Some(e) = decode(r.offset, r.meta) {
            f(e);
        }
        true
    });
    if !scanned.complete {
        tracing::warn!(journal = %journal.dir().display(), "journal scan stopped at its limit; later attempts were not read");
    }
    scanned
}

/// MSA-1 of an acknowledgment frame (`""` if it has none).
pub fn ack_code(ack: &[u8]) -> String {
    let Some(at) = ack.windows(3).position(|w| w == b"MSA") else {
        return String::new();
    };
    let rest = &ack[at + 3..];
    let Some((&sep, rest)) = rest.split_first() else {
        return String::new();
    };
    let code = rest
        .split(|&b| b == sep || b == b'\r')
        .next()
        .unwrap_or_default();
    String::from_utf8_lossy(&code[..code.len().min(8)]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_code_is_msa_1() {
        let ack = b"MSH|^~\\&|A|B|C|D|20260101||ACK|1|P|2.5\rMSA|AE|MSG1|bad\r";
        assert_eq!(ack_code(ack), "AE");
        assert_eq!(ack_code(b"MSH|^~\\&|A\r"), "");
    }

    #[test]
    fn an_entry_reads_back_as_written() {
        let a = Attempt {
            channel: Channel::Replay,
            lane: 0,
            queue: "lab",
            source_offset: Offset(42),
            replay_offset: Some(Offset(7)),
            control_id: b"CTRL1",
            attempt: 3,
            verdict: Verdict::Retrying,
            class: Some(ErrorClass::Timeout),
            ack_code: "",
            text: "no ACK within 1000 ms",
        };
        let e = decode(Offset(9), &encode(&a, 1234)).expect("decodes");
        assert_eq!(
            (e.channel.as_str(), e.lane, e.source_offset, e.replay_offset),
            ("replay", 0, 42, Some(7))
        );
        assert_eq!(
            (e.attempt, e.at_ms, e.outcome.as_str()),
            (3, 1234, "retrying")
        );
        assert_eq!(
            (e.error_class.as_str(), e.control_id.as_str()),
            ("timeout", "CTRL1")
        );
        assert!(!e.delivered());
    }
}
