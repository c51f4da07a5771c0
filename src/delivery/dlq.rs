//! The dead-letter queue: one log per destination under `dlq/<destination>/`,
//! each record the original payload with its original metadata plus the
//! delivery context (destination, lane, source offset, error class and text,
//! attempts, first/last failure, last ACK, reason). Later work searches,
//! edits and resubmits these records; this module only writes them, durably.
use crate::cursor::HeadState;
use crate::wal::meta::{MetaBuilder, MetaKey, MetaView};
use crate::wal::{AppendError, Appended, Log, LogConfig, Offset, OwnedRecord};

/// Dead-letter logs are small and rarely written: no preallocation, no
/// zero-filled spare, modest segments.
pub fn dlq_log_config() -> LogConfig {
    LogConfig {
        segment_bytes: 16 * 1024 * 1024,
        preallocate: false,
        prepare_segments: false,
        ..LogConfig::default()
    }
}

/// What is known about the failure that sends a message to the DLQ.
pub struct Context<'a> {
    pub destination: &'a str,
    pub lane: u16,
    pub channel: super::journal::Channel,
    pub queue: &'a str,
    /// The message's offset in `queue`.
    pub source_offset: Offset,
    /// The replay-log record that carried it (replay lane only).
    pub replay_offset: Option<Offset>,
    pub head: &'a HeadState,
    pub last_ack: Option<&'a [u8]>,
    pub reason: &'a str,
}

/// Appends the dead-letter record and returns once it is durable.
pub fn dead_letter(
    dlq: &Log,
    record: &OwnedRecord,
    ctx: &Context<'_>,
) -> Result<Appended, AppendError> {
    // Context first: the area is capped, and only copied fields may be cut.
    let mut m = MetaBuilder::new();
    m.push(MetaKey::Destination, ctx.destination.as_bytes())
        .push(MetaKey::Lane, &ctx.lane.to_le_bytes())
        .push(MetaKey::SourceQueue, ctx.queue.as_bytes())
        .push(MetaKey::SourceOffset, &ctx.source_offset.0.to_le_bytes())
        .push(MetaKey::Channel, ctx.channel.name().as_bytes())
        .push(MetaKey::ErrorClass, ctx.head.class.name().as_bytes())
        .push(MetaKey::Attempts, &ctx.head.attempts.to_le_bytes())
        .push(
            MetaKey::FirstFailureMs,
            &ctx.head.first_failure_ms.to_le_bytes(),
        )
        .push(
            MetaKey::LastFailureMs,
            &ctx.head.last_failure_ms.to_le_bytes(),
        )
        .push(MetaKey::ErrorText, ctx.head.text.as_bytes())
        .push(MetaKey::Reason, ctx.reason.as_bytes());
    if let Some(r) = ctx.replay_offset {
        m.push(MetaKey::ReplayOffset, &r.0.to_le_bytes());
    }
    if let Some(ack) = ctx.last_ack {
        m.push(MetaKey::LastAck, ack);
    }
    for (key, value) in MetaView::new(&record.meta).iter() {
        push_raw(&mut m, key, value);
    }
    dlq.append(&m.finish(), &record.payload)
}

fn push_raw(m: &mut MetaBuilder, key: u8, value: &[u8]) {
    if let Some(k) = message_key(key) {
        m.push(k, value);
    }
}

/// The keys that describe a message (not delivery context): what a copy
/// of it (a dead letter, a replay-log record) keeps.
pub fn message_key(key: u8) -> Option<MetaKey> {
    [
        MetaKey::Listener,
        MetaKey::Peer,
        MetaKey::ControlId,
        MetaKey::MessageType,
        MetaKey::SendingApp,
        MetaKey::SendingFacility,
        MetaKey::ReceivingApp,
        MetaKey::ReceivingFacility,
        MetaKey::EventTime,
        MetaKey::Version,
        MetaKey::ReceivedAtMs,
        MetaKey::PayloadSha256,
    ]
    .into_iter()
    .find(|k| *k as u8 == key)
}

/// Reads a little-endian integer stored under `key`.
pub fn meta_u64(meta: &[u8], key: MetaKey) -> Option<u64> {
    meta_u64_view(&MetaView::new(meta), key)
}

/// [`meta_u64`] on a view.
pub fn meta_u64_view(meta: &MetaView<'_>, key: MetaKey) -> Option<u64> {
    let v = meta.get(key)?;
    let mut b = [0u8; 8];
    b[..v.len().min(8)].copy_from_slice(&v[..v.len().min(8)]);
    Some(u64::from_le_bytes(b))
}

/// The source offset a dead-letter record came from.
pub fn source_offset(meta: &[u8]) -> Option<Offset> {
    meta_u64(meta, MetaKey::SourceOffset).map(Offset)
}
