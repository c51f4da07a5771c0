//! Retention: deleting whole sealed segments, oldest first, only when every
//! registered reader has passed them and the policy allows.
//!
//! Architecture Invariant: a segment holding an offset at or after some
//! registered reader's position is never deleted.
use super::shared::{Segment, Shared};
use super::{Offset, WalError};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What may be deleted. `None` limits keep data forever (the default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    /// Segments whose newest record is older than this may go.
    pub max_age_ms: Option<u64>,
    /// While the log is larger than this, the oldest segment may go.
    pub max_bytes: Option<u64>,
}

/// A registered reader's position: the next offset it still needs. Dropping
/// it unregisters the reader.
pub struct ReaderPosition {
    slot: Arc<(String, AtomicU64)>,
}

impl ReaderPosition {
    pub(crate) fn new(slot: Arc<(String, AtomicU64)>) -> Self {
        Self { slot }
    }

    pub fn name(&self) -> &str {
        &self.slot.0
    }

    pub fn get(&self) -> Offset {
        Offset(self.slot.1.load(Ordering::Acquire))
    }

    /// Records that the reader no longer needs anything before `offset`.
    pub fn set(&self, offset: Offset) {
        self.slot.1.store(offset.0, Ordering::Release);
    }
}

pub fn enforce(
    shared: &Arc<Shared>,
    policy: &RetentionPolicy,
    now_ms: u64,
) -> Result<Vec<Offset>, WalError> {
    let mut deleted = Vec::new();
    while let Some(seg) = detach_oldest_if_allowed(shared, policy, now_ms)? {
        shared.forget(seg.base);
        let storage = shared.storage.as_ref();
        for ext in ["log", "index", "timeindex"] {
            let path = shared.segment_path(seg.base, ext);
            if storage.exists(&path) {
                storage.remove(&path).map_err(|e| WalError::io(&path, e))?;
            }
        }
        storage
            .sync_dir(&shared.dir)
            .map_err(|e| WalError::io(&shared.dir, e))?;
        tracing::info!(segment = %seg.path.display(), "retention deleted segment");
        deleted.push(seg.base);
    }
    Ok(deleted)
}

/// Removes the oldest segment from the list if it may be deleted. Decided
/// under the segment-list lock so no reader can locate it afterwards; its
/// newest timestamp (which may need a read) is found before taking it.
fn detach_oldest_if_allowed(
    shared: &Arc<Shared>,
    policy: &RetentionPolicy,
    now_ms: u64,
) -> Result<Option<Arc<Segment>>, WalError> {
    let (first, next_base) = {
        let segs = shared.segments.read();
        match (segs.first(), segs.get(1)) {
            (Some(f), Some(n)) if f.is_sealed() => (f.clone(), n.base),
            _ => return Ok(None),
        }
    };
    let too_old = match policy.max_age_ms {
        Some(a) => now_ms.saturating_sub(shared.max_timestamp(&first, Some(next_base))?) > a,
        None => false,
    };
    let mut segs = shared.segments.write();
    if !segs.first().is_some_and(|f| Arc::ptr_eq(f, &first)) {
        return Ok(None);
    }
    let tail = shared.tail();
    let total: u64 = segs
        .iter()
        .map(|s| s.sealed.get().map_or(tail.active_end, |i| i.end))
        .sum();
    let needed = shared.min_reader_position().is_some_and(|p| p < next_base);
    let too_big = policy.max_bytes.is_some_and(|b| total > b);
    if needed || !(too_old || too_big) {
        return Ok(None);
    }
    let seg = segs.remove(0);
    shared.publish(|t| t.start_offset = next_base);
    Ok(Some(seg))
}
