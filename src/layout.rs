//! The data directory's layout: every path Orderly keeps under `data_dir`,
//! and listing what is there. The one place paths are built, so the CLI,
//! the server and the tools agree.
//!
//! ```text
//! <data_dir>/
//!   orderly.lock              exclusive lock of the running broker
//!   orderly.ctl               control socket of the running broker
//!   audit.log                 operator actions, one JSON line each
//!   queues/<queue>/           a queue's log (docs/FORMAT.md)
//!   dlq/<destination>/        a destination's dead-letter log
//!   cursors/<destination>.cur a destination's cursors
//!   cursors/<destination>.filters  which filter judged which offsets
//!   journal/<destination>/    a destination's delivery journal (one record per attempt)
//!   replay/<destination>/     a destination's replay log (replays, resubmissions)
//!   replay-cursors/<destination>.cur  the replay lane's cursor
//! ```
use crate::storage::Storage;
use std::path::{Path, PathBuf};

/// The paths of one data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn lock_file(&self) -> PathBuf {
        self.root.join("orderly.lock")
    }

    pub fn control_socket(&self) -> PathBuf {
        self.root.join("orderly.ctl")
    }

    pub fn audit_log(&self) -> PathBuf {
        self.root.join("audit.log")
    }

    pub fn queues(&self) -> PathBuf {
        self.root.join("queues")
    }

    pub fn queue(&self, queue: &str) -> PathBuf {
        self.queues().join(queue)
    }

    pub fn dlqs(&self) -> PathBuf {
        self.root.join("dlq")
    }

    pub fn dlq(&self, destination: &str) -> PathBuf {
        self.dlqs().join(destination)
    }

    pub fn journals(&self) -> PathBuf {
        self.root.join("journal")
    }

    pub fn journal(&self, destination: &str) -> PathBuf {
        self.journals().join(destination)
    }

    pub fn replay_logs(&self) -> PathBuf {
        self.root.join("replay")
    }

    pub fn replay_log(&self, destination: &str) -> PathBuf {
        self.replay_logs().join(destination)
    }

    pub fn replay_cursors(&self) -> PathBuf {
        self.root.join("replay-cursors")
    }

    pub fn cursors(&self) -> PathBuf {
        self.root.join("cursors")
    }

    /// Which filter judged which offsets (`delivery/filter_history.rs`).
    pub fn filter_history(&self, destination: &str) -> PathBuf {
        self.cursors().join(format!("{destination}.filters"))
    }

    pub fn cursor_file(&self, destination: &str) -> PathBuf {
        self.cursors().join(format!("{destination}.cur"))
    }

    /// Names of the queues that have a log, sorted.
    pub fn list_queues(&self, storage: &dyn Storage) -> std::io::Result<Vec<String>> {
        subdirs(storage, &self.queues())
    }

    /// Names of the destinations that have a dead-letter log, sorted.
    pub fn list_dlqs(&self, storage: &dyn Storage) -> std::io::Result<Vec<String>> {
        subdirs(storage, &self.dlqs())
    }

    /// Names of the destinations that have a delivery journal, sorted.
    pub fn list_journals(&self, storage: &dyn Storage) -> std::io::Result<Vec<String>> {
        subdirs(storage, &self.journals())
    }

    /// Names of the destinations that have a replay log, sorted.
    pub fn list_replay_logs(&self, storage: &dyn Storage) -> std::io::Result<Vec<String>> {
        subdirs(storage, &self.replay_logs())
    }

    /// Names of the destinations that have a cursor file, sorted.
    pub fn list_cursor_files(&self, storage: &dyn Storage) -> std::io::Result<Vec<String>> {
        cur_files(storage, &self.cursors())
    }

    /// Names of the destinations that have a filter history, sorted.
    pub fn list_filter_histories(&self, storage: &dyn Storage) -> std::io::Result<Vec<String>> {
        files_ending(storage, &self.cursors(), ".filters")
    }

    /// Names of the destinations whose replay lane has a cursor file, sorted.
    pub fn list_replay_cursor_files(&self, storage: &dyn Storage) -> std::io::Result<Vec<String>> {
        cur_files(storage, &self.replay_cursors())
    }
}

fn cur_files(storage: &dyn Storage, dir: &Path) -> std::io::Result<Vec<String>> {
    files_ending(storage, dir, ".cur")
}

/// Names (without `suffix`) of the files in `dir` ending in `suffix`, sorted.
fn files_ending(storage: &dyn Storage, dir: &Path, suffix: &str) -> std::io::Result<Vec<String>> {
    if !storage.exists(dir) {
        return Ok(Vec::new());
    }
    let mut names: Vec<String> = storage
        .list(dir)?
        .into_iter()
        .filter_map(|n| n.strip_suffix(suffix).map(str::to_string))
        .collect();
    names.sort();
    Ok(names)
}

fn subdirs(storage: &dyn Storage, dir: &Path) -> std::io::Result<Vec<String>> {
    if !storage.exists(dir) && !storage.is_dir(dir) {
        return Ok(Vec::new());
    }
    let mut names: Vec<String> = storage
        .list(dir)?
        .into_iter()
        .filter(|n| storage.is_dir(&dir.join(n)))
        .collect();
    names.sort();
    Ok(names)
}
