//! Offline checks of a whole data directory for `orderly verify`: every
//! queue's log, every dead-letter log, delivery journal and replay log, and
//! every cursor file (live and replay lanes) and filter history. Read-only and
//! safe beside a running broker.
use crate::cursor;
use crate::layout::DataDir;
use crate::storage::Storage;
use crate::wal::verify::{verify_dir_with, VerifyReport};
use crate::wal::Writer;
use std::path::PathBuf;

/// What kind of thing a checked item is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Queue,
    DeadLetters,
    Journal,
    Replay,
    Cursors,
    ReplayCursors,
    FilterHistory,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Queue => "queue",
            Kind::DeadLetters => "dlq",
            Kind::Journal => "journal",
            Kind::Replay => "replay",
            Kind::Cursors => "cursors",
            Kind::ReplayCursors => "replay-cursors",
            Kind::FilterHistory => "filters",
        }
    }
}

/// The verdict on one log or cursor file.
pub struct Checked {
    pub kind: Kind,
    pub name: String,
    pub path: PathBuf,
    pub outcome: Outcome,
}

pub enum Outcome {
    Log(VerifyReport),
    Cursors(cursor::CursorFileReport),
    /// A filter history holding this many filters.
    Filters(usize),
    /// The item could not be read at all.
    Unusable(String),
}

impl Checked {
    pub fn is_clean(&self) -> bool {
        match &self.outcome {
            Outcome::Log(r) => r.is_clean(),
            Outcome::Cursors(_) | Outcome::Filters(_) => true,
            Outcome::Unusable(_) => false,
        }
    }
}

/// Whether a broker holds the data directory's lock right now.
pub fn broker_running(dir: &DataDir) -> bool {
    let Ok(file) = std::fs::File::open(dir.lock_file()) else {
        return false;
    };
    match file.try_lock() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(_) => true,
    }
}

/// Checks everything under `dir`, in a stable order (queues, dead-letter
/// logs, cursor files; each sorted by name).
pub fn data_dir(
    storage: &dyn Storage,
    dir: &DataDir,
    writer: Writer,
) -> std::io::Result<Vec<Checked>> {
    let mut out = Vec::new();
    for q in dir.list_queues(storage)? {
        let path = dir.queue(&q);
        out.push(check_log(storage, Kind::Queue, q, path, writer));
    }
    for d in dir.list_dlqs(storage)? {
        let path = dir.dlq(&d);
        out.push(check_log(storage, Kind::DeadLetters, d, path, writer));
    }
    for d in dir.list_journals(storage)? {
        let path = dir.journal(&d);
        out.push(check_log(storage, Kind::Journal, d, path, writer));
    }
    for d in dir.list_replay_logs(storage)? {
        let path = dir.replay_log(&d);
        out.push(check_log(storage, Kind::Replay, d, path, writer));
    }
    for d in dir.list_cursor_files(storage)? {
        let path = dir.cursor_file(&d);
        out.push(check_cursors(storage, Kind::Cursors, d, path));
    }
    for d in dir.list_replay_cursor_files(storage)? {
        let path = dir.replay_cursors().join(format!("{d}.cur"));
        out.push(check_cursors(storage, Kind::ReplayCursors, d, path));
    }
    for d in dir.list_filter_histories(storage)? {
        let path = dir.filter_history(&d);
        let outcome = match crate::delivery::filter_history::check_file(storage, &path) {
            Ok(n) => Outcome::Filters(n),
            Err(reason) => Outcome::Unusable(reason),
        };
        out.push(Checked {
            kind: Kind::FilterHistory,
            name: d,
            path,
            outcome,
        });
    }
    Ok(out)
}

fn check_cursors(storage: &dyn Storage, kind: Kind, name: String, path: PathBuf) -> Checked {
    let outcome = match cursor::check_file(storage, &path) {
        Ok(r) => Outcome::Cursors(r),
        Err(reason) => Outcome::Unusable(reason),
    };
    Checked {
        kind,
        name,
        path,
        outcome,
    }
}

fn check_log(
    storage: &dyn Storage,
    kind: Kind,
    name: String,
    path: PathBuf,
    writer: Writer,
) -> Checked {
    let outcome = match verify_dir_with(storage, &path, writer) {
        Ok(r) => Outcome::Log(r),
        Err(e) => Outcome::Unusable(e.to_string()),
    };
    Checked {
        kind,
        name,
        path,
        outcome,
    }
}
