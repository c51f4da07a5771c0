//! The spare segment: a zero-filled, synced file of `segment_bytes` that a
//! background thread keeps ready, so a roll starts the new segment on blocks
//! that are already written.
//!
//! Why: on ext4 (and most journaling file systems) the first write into a
//! fresh or `fallocate`d extent must convert it to "written" in the journal,
//! so every `fdatasync` of a fresh segment pays a journal commit. Overwriting
//! blocks that already hold zeros is a pure data write. Measured on the
//! project's disk: 384 KiB + fdatasync reaches 318 MB/s into a fallocated
//! file and 1,141 MB/s into a pre-zeroed one (docs/BENCHMARKS.md).
//!
//! Safety: the spare is renamed to `spare.log` only after all its zeros are
//! synced, so a spare that exists is complete; a crash mid-fill leaves
//! `spare.log.tmp`, which recovery removes like every `.tmp`. A segment made
//! from a spare reads exactly like a preallocated one: a header, then zeros.
//! The writer never waits for the preparer; without a spare it creates the
//! segment the ordinary way.
use crate::constants::SPARE_FREE_SPACE_RESERVE_BYTES;
use crate::storage::{self, Storage, StorageFile};
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// File name of the ready spare in a log directory (never a segment name).
pub const SPARE_FILE: &str = "spare.log";
const SPARE_TMP_FILE: &str = "spare.log.tmp";
/// Zeros written per call.
const FILL_CHUNK_BYTES: usize = 1024 * 1024;
/// Zeros written back between pauses. Small, so one step never holds the
/// disk long enough to stall the writer's fdatasync. Steps use writeback
/// without a cache flush; the one flush comes at the end.
const FILL_STEP_BYTES: u64 = 2 * 1024 * 1024;
const _: () = assert!(FILL_STEP_BYTES.is_multiple_of(FILL_CHUNK_BYTES as u64));

pub fn spare_path(dir: &Path) -> PathBuf {
    dir.join(SPARE_FILE)
}

/// Renames the ready spare to `path` and opens it, if there is a spare of
/// exactly `segment_bytes`. A spare of another size (the setting changed) is
/// removed. `Ok(None)`: no usable spare, create the segment the usual way.
pub fn take(
    storage: &dyn Storage,
    dir: &Path,
    path: &Path,
    segment_bytes: u64,
) -> io::Result<Option<Box<dyn StorageFile>>> {
    let spare = spare_path(dir);
    if !storage.exists(&spare) {
        return Ok(None);
    }
    let file = storage.open(&spare, false)?;
    if file.len()? != segment_bytes {
        drop(file);
        tracing::info!(dir = %dir.display(), "removing spare segment of a different size");
        storage.remove(&spare)?;
        return Ok(None);
    }
    drop(file);
    storage.rename(&spare, path)?;
    storage.open(path, false).map(Some)
}

/// Called after each synced step of a fill with how long the step took; it
/// may pause (to leave the disk to the writer) and returns false to abandon
/// the fill.
pub type Pace<'a> = &'a mut dyn FnMut(Duration) -> bool;

/// Zero-fills and publishes a spare unless one exists. Returns whether it
/// made one; `Ok(false)` also when `pace` abandoned the fill.
pub fn prepare(
    storage: &dyn Storage,
    dir: &Path,
    segment_bytes: u64,
    pace: Pace<'_>,
) -> io::Result<bool> {
    if storage.exists(&spare_path(dir)) {
        return Ok(false);
    }
    if let Some(free) = storage.available_bytes(dir)? {
        if free < segment_bytes.saturating_add(SPARE_FREE_SPACE_RESERVE_BYTES) {
            tracing::info!(dir = %dir.display(), free_bytes = free, "not preparing a spare segment: disk space is low");
            return Ok(false);
        }
    }
    let tmp = dir.join(SPARE_TMP_FILE);
    let filled = fill_zeros(storage, &tmp, segment_bytes, pace);
    match filled {
        Ok(true) => {
            storage.rename(&tmp, &spare_path(dir))?;
            storage.sync_dir(dir)?;
            Ok(true)
        }
        other => {
            let _ = storage.remove(&tmp);
            other
        }
    }
}

fn fill_zeros(storage: &dyn Storage, tmp: &Path, bytes: u64, pace: Pace<'_>) -> io::Result<bool> {
    let file = storage.open(tmp, true)?;
    file.set_len(0)?;
    let zeros = vec![0u8; FILL_CHUNK_BYTES];
    let mut pos = 0u64;
    let mut step_started = Instant::now();
    while pos < bytes {
        let n = (bytes - pos).min(FILL_CHUNK_BYTES as u64) as usize;
        storage::write_all_at(file.as_ref(), &zeros[..n], pos)?;
        pos += n as u64;
        if pos.is_multiple_of(FILL_STEP_BYTES) && pos < bytes {
            file.write_back(pos - FILL_STEP_BYTES, FILL_STEP_BYTES)?;
            if !pace(step_started.elapsed()) {
                return Ok(false);
            }
            step_started = Instant::now();
        }
    }
    file.sync_data()?;
    Ok(true)
}

/// A fill that never pauses (a new log's first segment).
pub fn unpaced(_: Duration) -> bool {
    true
}

/// The background thread that keeps one spare ready. Kick it after a roll
/// consumed the spare; it stops (abandoning a half-made spare) on drop,
/// when its kick channel disconnects.
pub struct Preparer {
    kick: Option<Sender<()>>,
    handle: Option<JoinHandle<()>>,
    /// The thread's kernel id, once it reported it: its priority was
    /// lowered, and is restored before anyone waits for it.
    tid: Option<crate::sched::ThreadId>,
}

const WHO: &str = "WAL spare";

impl Preparer {
    /// Starts the thread and asks it for a spare right away.
    pub fn spawn(
        storage: Arc<dyn Storage>,
        dir: PathBuf,
        segment_bytes: u64,
    ) -> io::Result<Preparer> {
        let (kick, kicked) = bounded(1);
        let (report_tid, reported_tid) = bounded(1);
        let handle = std::thread::Builder::new()
            .name("orderly-wal-spare".into())
            .spawn(move || {
                // Cannot fail: spawn waits on the receiver below.
                let _ = report_tid.send(crate::sched::current_thread_id());
                run(storage.as_ref(), &dir, segment_bytes, &kicked)
            })?;
        // The spawner lowers the thread, so it always knows whom to lift
        // back at drop (a thread lowering itself could race the drop).
        // Err only if the thread died first; then there is no one to lower.
        let tid = reported_tid.recv().ok();
        if let Some(tid) = tid {
            // Background work: CPU and disk only when the writer, the event
            // loop and delivery leave some. Before the first kick, so every
            // fill runs lowered.
            crate::sched::lower_priority(tid, WHO);
        }
        let p = Preparer {
            kick: Some(kick),
            handle: Some(handle),
            tid,
        };
        p.kick();
        Ok(p)
    }

    /// Asks for a spare; a kick already pending covers this one.
    pub fn kick(&self) {
        if let Some(k) = &self.kick {
            // Full: a kick is already pending, which covers this one.
            let _ = k.try_send(());
        }
    }
}

impl Drop for Preparer {
    fn drop(&mut self) {
        if let (Some(tid), Some(h)) = (self.tid, &self.handle) {
            // Lowered, the thread gets little CPU while ordinary threads
            // keep every CPU busy, even to see the stop below and exit; the
            // join would wait at its priority. Lift it first. A finished
            // thread's id may be reused: skip it.
            if !h.is_finished() {
                crate::sched::restore_priority(tid, WHO);
            }
        }
        // The thread's only sender: dropping it ends waits and pauses at once.
        drop(self.kick.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn run(storage: &dyn Storage, dir: &Path, segment_bytes: u64, kicked: &Receiver<()>) {
    while kicked.recv().is_ok() {
        // Pause as long as each step took: the fill uses at most half the
        // disk's time; the Preparer's drop ends the pause (and the fill).
        let mut pace = |took: Duration| {
            !matches!(
                kicked.recv_timeout(took),
                Err(RecvTimeoutError::Disconnected)
            )
        };
        match prepare(storage, dir, segment_bytes, &mut pace) {
            Ok(true) => tracing::debug!(dir = %dir.display(), "spare segment ready"),
            Ok(false) => {}
            // Only a missed optimisation: the next roll creates its segment
            // the ordinary way. Disk full is the usual cause.
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "could not prepare a spare segment")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{SimFault, SimStorage};

    const DIR: &str = "/sim/q";
    const BYTES: u64 = 3 * 1024 * 1024 + 100;

    fn sim() -> SimStorage {
        let s = SimStorage::new();
        s.create_dir_all(Path::new(DIR)).unwrap();
        s
    }

    #[test]
    fn prepared_spare_is_all_zeros_of_the_segment_size_and_survives_a_crash() {
        let s = sim();
        assert!(prepare(&s, Path::new(DIR), BYTES, &mut unpaced).unwrap());
        let after_crash = s.crash(Some(0));
        let bytes = after_crash.contents(&spare_path(Path::new(DIR))).unwrap();
        assert_eq!(bytes.len() as u64, BYTES);
        assert!(bytes.iter().all(|&b| b == 0));
        assert!(!after_crash.exists(&Path::new(DIR).join(SPARE_TMP_FILE)));
        // A second call finds the spare and does nothing.
        assert!(!prepare(&s, Path::new(DIR), BYTES, &mut unpaced).unwrap());
    }

    #[test]
    fn take_renames_the_spare_into_place_once() {
        let s = sim();
        prepare(&s, Path::new(DIR), BYTES, &mut unpaced).unwrap();
        let seg = Path::new(DIR).join("00000000000000000007.log");
        let f = take(&s, Path::new(DIR), &seg, BYTES)
            .unwrap()
            .expect("a spare");
        assert_eq!(f.len().unwrap(), BYTES);
        assert!(!s.exists(&spare_path(Path::new(DIR))));
        assert!(take(&s, Path::new(DIR), &seg, BYTES).unwrap().is_none());
    }

    #[test]
    fn a_spare_of_another_size_is_removed_not_used() {
        let s = sim();
        prepare(&s, Path::new(DIR), BYTES, &mut unpaced).unwrap();
        let seg = Path::new(DIR).join("00000000000000000000.log");
        assert!(take(&s, Path::new(DIR), &seg, BYTES * 2).unwrap().is_none());
        assert!(!s.exists(&spare_path(Path::new(DIR))));
        assert!(!s.exists(&seg));
    }

    #[test]
    fn no_spare_when_it_would_eat_into_the_free_space_reserve() {
        let s = sim();
        s.inject(SimFault::NoSpaceAfter(
            BYTES + SPARE_FREE_SPACE_RESERVE_BYTES - 1,
        ));
        assert!(!prepare(&s, Path::new(DIR), BYTES, &mut unpaced).unwrap());
        assert!(s.list(Path::new(DIR)).unwrap().is_empty());
        s.inject(SimFault::NoSpaceAfter(
            BYTES + SPARE_FREE_SPACE_RESERVE_BYTES,
        ));
        assert!(prepare(&s, Path::new(DIR), BYTES, &mut unpaced).unwrap());
    }

    /// Ordinary threads that keep every CPU busy until dropped, four per
    /// CPU (the more runnable ordinary threads, the longer an idle-class
    /// thread waits).
    struct CpuHogs {
        stop: Arc<std::sync::atomic::AtomicBool>,
        threads: Vec<JoinHandle<()>>,
    }

    impl CpuHogs {
        fn start() -> CpuHogs {
            let count = 4 * std::thread::available_parallelism().map_or(2, |n| n.get());
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let threads = (0..count)
                .map(|_| {
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            std::hint::spin_loop();
                        }
                    })
                })
                .collect();
            CpuHogs { stop, threads }
        }
    }

    impl Drop for CpuHogs {
        fn drop(&mut self) {
            self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }

    #[test]
    fn the_fill_thread_runs_at_nice_19_yet_a_drop_never_waits_on_a_starved_thread() {
        let s = sim();
        let storage: Arc<dyn Storage> = Arc::new(s.clone());
        let p = Preparer::spawn(storage.clone(), PathBuf::from(DIR), 64 * 1024).unwrap();
        let tid = p.tid.expect("the thread reported its id");
        // SAFETY: plain integers; a live thread of this process.
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
        assert_eq!(nice, 19, "the fill runs at the lowest fair priority");
        drop(p);

        // With every CPU held by ordinary threads, a low-priority thread
        // gets almost no CPU. Seen with the old code (SCHED_IDLE, joined at
        // that priority): these 100 drops took 111 s on a 2-core machine,
        // and a CI run's crash test (thousands of drops) hung the same way.
        // With the fix they take about 1.5 s.
        let hogs = CpuHogs::start();
        let (done, finished) = crossbeam_channel::bounded(1);
        let dropper = std::thread::spawn(move || {
            for _ in 0..100 {
                drop(Preparer::spawn(storage.clone(), PathBuf::from(DIR), 64 * 1024).unwrap());
            }
            let _ = done.send(());
        });
        // A liveness bound, not a speed claim: 20 times what the fixed
        // drops need.
        let outcome = finished.recv_timeout(Duration::from_secs(30));
        drop(hogs);
        assert!(
            outcome.is_ok(),
            "dropping 100 preparers under CPU load did not finish within 30 s"
        );
        dropper.join().unwrap();
    }

    #[test]
    fn a_stopped_or_failed_fill_leaves_nothing_behind() {
        let s = sim();
        assert!(!prepare(&s, Path::new(DIR), BYTES, &mut |_| false).unwrap());
        // Room by the free-space check, then the disk fills up mid-fill.
        s.inject(SimFault::NoSpaceAfter(u64::MAX));
        let sim_full_mid_fill = s.clone();
        let mut steps = 0;
        let mut pace = |_: Duration| {
            steps += 1;
            sim_full_mid_fill.inject(SimFault::NoSpaceAfter(0));
            true
        };
        assert!(prepare(&s, Path::new(DIR), BYTES, &mut pace).is_err());
        assert_eq!(steps, 1, "failed in the step after the disk filled");
        s.clear_faults();
        let names = s.list(Path::new(DIR)).unwrap();
        assert!(names.is_empty(), "left behind: {names:?}");
    }
}
