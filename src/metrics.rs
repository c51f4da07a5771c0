//! Process-wide counters. Cheap atomics now; the metrics endpoint later
//! renders the same counters in Prometheus text format.
use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! counters {
    ($($name:ident: $help:literal),* $(,)?) => {
        /// Counters of the ingest path. Each field's doc says what it counts.
        #[derive(Debug, Default)]
        pub struct Metrics {
            $(#[doc = $help] pub $name: AtomicU64,)*
        }

        impl Metrics {
            /// `(name, help, value)` for every counter.
            pub fn snapshot(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), $help, self.$name.load(Ordering::Relaxed)),)*]
            }
        }
    };
}

counters! {
    connections_accepted: "TCP connections accepted",
    connections_refused: "connections refused because a listener was at max_connections",
    connections_closed_idle: "connections closed after idle_timeout_s without data",
    connections_closed_slow: "connections closed because a frame took longer than frame_timeout_s",
    connections_closed_protocol: "connections closed for protocol violations (junk flood, unreadable oversized frame)",
    frames_received: "complete MLLP frames received",
    bytes_received: "bytes read from MLLP connections",
    messages_accepted: "messages stored durably and answered AA/CA",
    messages_rejected: "messages refused as unreadable, invalid (AE/CE) or not accepted by the listener (AR/CR)",
    messages_storage_failed: "messages refused because storage failed or was full (AR/CE)",
    messages_refused_shutdown: "messages read but not yet taken when shutdown began, answered not stored, resend later (AR/CE)",
    frames_too_large: "frames over max_frame_bytes",
    frames_incomplete: "frames cut off by the peer's close or frame_timeout_s (answered AR/CE when MSH was readable)",
    frames_ended_by_pause: "frames whose 0x1C had no trailer and ended after frame_end_pause_ms",
    read_budget_waits: "times a connection waited to read because read_buffer_budget_bytes was spent",
    read_budget_overdrafts: "times one connection was let past the spent read budget (one at a time) so its frame could complete",
    idempotency_new: "messages stored under an idempotency key not seen inside the dedupe window",
    idempotency_duplicates: "copies of accepted messages (same key, same payload) answered positively and not stored again",
    idempotency_conflicts_rejected: "messages refused because their key was accepted with a different payload (on_key_conflict = reject)",
    idempotency_conflicts_deferred: "conflicting messages answered not stored, resend later (AR/CE) because the version they conflicted with was then not stored",
    idempotency_conflicts_accepted: "messages stored as a new version of a key accepted with a different payload (on_key_conflict = accept)",
    idempotency_keys_evicted: "idempotency keys dropped before their window ended because dedupe_keys_max was reached",
    junk_events: "runs of bytes outside MLLP frames that were discarded",
    junk_bytes: "bytes outside MLLP frames that were discarded",
}

impl Metrics {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// One line, `name=value ...`, for logs.
    pub fn summary(&self) -> String {
        self.snapshot()
            .iter()
            .map(|(n, _, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}
