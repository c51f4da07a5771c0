//! The audit journal: every operator action, who asked for it, why, and
//! what came of it, as one JSON line each in `<data_dir>/audit.log`,
//! appended and fsync'd before the broker answers.
//!
//! An action is recorded twice: `requested` before it runs (if that record
//! cannot be made durable the action is refused, so nothing happens
//! unrecorded) and `done` or `failed` after. The admin API of a later issue
//! chains the lines with hashes; this module owns the file either way.
//!
//! Architecture Invariant: no operator action changes delivery state
//! unless its `requested` line is durable in the journal first.
use crate::storage::{self, Storage, StorageFile};
use parking_lot::Mutex;
use serde::Serialize;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Longest free text (reason, outcome) kept per line.
const AUDIT_TEXT_BYTES_MAX: usize = 2048;

/// One line of the journal.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry<'a> {
    pub actor: &'a str,
    pub action: &'a str,
    pub destination: &'a str,
    /// The action's arguments, as the operator gave them.
    pub detail: &'a str,
    pub reason: &'a str,
}

#[derive(Serialize)]
struct Line<'a> {
    seq: u64,
    time: String,
    time_ms: u64,
    phase: &'a str,
    #[serde(flatten)]
    entry: &'a AuditEntry<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'a str>,
}

pub struct AuditLog {
    path: PathBuf,
    state: Mutex<(Box<dyn StorageFile>, u64, u64)>,
}

impl AuditLog {
    /// Opens (or creates, durably) the journal at `path`.
    pub fn open(storage: Arc<dyn Storage>, path: &Path) -> io::Result<AuditLog> {
        storage::create_dir_durable(storage.as_ref(), storage::parent_of(path))?;
        let existed = storage.exists(path);
        let file = storage.open(path, true)?;
        if !existed {
            file.sync_data()?;
            storage.sync_dir(storage::parent_of(path))?;
        }
        let end = file.len()?;
        let seq = last_seq(file.as_ref(), end);
        Ok(AuditLog {
            path: path.to_path_buf(),
            state: Mutex::new((file, end, seq)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records that `entry` is about to run; the action must not run if this fails.
    pub fn requested(&self, entry: &AuditEntry<'_>) -> io::Result<()> {
        self.append("requested", entry, None)
    }

    /// Records how `entry` ended.
    pub fn finished(
        &self,
        entry: &AuditEntry<'_>,
        result: &Result<String, String>,
    ) -> io::Result<()> {
        match result {
            Ok(text) => self.append("done", entry, Some(text)),
            Err(text) => self.append("failed", entry, Some(text)),
        }
    }

    fn append(&self, phase: &str, entry: &AuditEntry<'_>, outcome: Option<&str>) -> io::Result<()> {
        let mut st = self.state.lock();
        let now = crate::wal::now_ms();
        let reason = clip(entry.reason);
        let entry = AuditEntry {
            reason,
            ..entry.clone()
        };
        let line = Line {
            seq: st.2 + 1,
            time: rfc3339(now),
            time_ms: now,
            phase,
            entry: &entry,
            outcome: outcome.map(clip),
        };
        let mut bytes = serde_json::to_vec(&line).map_err(io::Error::other)?;
        bytes.push(b'\n');
        let (file, end, _) = &mut *st;
        storage::write_all_at(file.as_ref(), &bytes, *end)?;
        file.sync_data()?;
        st.1 += bytes.len() as u64;
        st.2 += 1;
        Ok(())
    }
}

fn clip(s: &str) -> &str {
    crate::cursor::record::truncate_utf8(s, AUDIT_TEXT_BYTES_MAX)
}

/// The `seq` of the last complete line (0 for an empty journal): numbering
/// continues across restarts. A torn last line (a crash mid-append) is
/// simply followed by the next one.
fn last_seq(file: &dyn StorageFile, end: u64) -> u64 {
    let from = end.saturating_sub(64 * 1024);
    let mut tail = vec![0u8; (end - from) as usize];
    if storage::read_exact_at(file, &mut tail, from).is_err() {
        return 0;
    }
    tail.split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("seq").and_then(|s| s.as_u64()))
        .max()
        .unwrap_or(0)
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the Unix epoch.
pub fn rfc3339(ms: u64) -> String {
    let t = crate::hl7::ack::Hl7Timestamp::from_unix_seconds(ms / 1000);
    let d = t.as_bytes();
    let s = |r: std::ops::Range<usize>| std::str::from_utf8(&d[r]).unwrap_or("00");
    format!(
        "{}-{}-{}T{}:{}:{}.{:03}Z",
        s(0..4),
        s(4..6),
        s(6..8),
        s(8..10),
        s(10..12),
        s(12..14),
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::SimStorage;

    #[test]
    fn lines_are_numbered_across_reopens_and_durable_when_recorded() {
        let sim = SimStorage::new();
        let path = Path::new("/d/audit.log");
        let entry = AuditEntry {
            actor: "uid=1000(ana)",
            action: "skip",
            destination: "ehr",
            detail: "lane=0",
            reason: "patient merged",
        };
        let log = AuditLog::open(Arc::new(sim.clone()), path).unwrap();
        log.requested(&entry).unwrap();
        log.finished(&entry, &Ok("moved".into())).unwrap();
        drop(log);
        let after_crash = sim.synced_only();
        let log = AuditLog::open(Arc::new(after_crash.clone()), path).unwrap();
        log.requested(&entry).unwrap();
        let text = String::from_utf8(after_crash.contents(path).unwrap()).unwrap();
        let seqs: Vec<u64> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert!(
            text.contains("\"phase\":\"done\"") && text.contains("\"reason\":\"patient merged\"")
        );
    }

    #[test]
    fn rfc3339_formats_utc_with_milliseconds() {
        // Expected values from Python: datetime.fromtimestamp(s, timezone.utc).
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
    }
}
