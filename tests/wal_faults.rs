//! Injected storage faults, corruption, index damage and retention.
mod wal_common;
use orderly::storage::{SimFault, SimStorage, Storage};
use orderly::wal::verify::verify_dir;
use orderly::wal::{AppendError, AppendRequest, LogConfig, Offset, RetentionPolicy, WalError};
use std::path::{Path, PathBuf};
use wal_common::*;

fn fill(sim: &SimStorage, config: LogConfig, n: u64, len: usize) {
    let log = open_sim(sim, config);
    for i in 0..n {
        log.append(&meta(i), &payload(i, len)).expect("append");
    }
    log.close().expect("close");
}

/// Segment files (or their index files) by extension; the spare is not one.
fn segment_files(sim: &SimStorage, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = sim
        .list(Path::new(DIR))
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(ext) && n.as_bytes()[0].is_ascii_digit())
        .map(|n| Path::new(DIR).join(n))
        .collect();
    v.sort();
    v
}

#[test]
fn failed_fsync_is_latched_and_never_reported_durable() {
    let sim = SimStorage::new();
    let log = open_sim(&sim, small_config(true));
    for i in 0..5 {
        log.append(&meta(i), &payload(i, 200)).expect("append");
    }
    sim.inject(SimFault::SyncFailsOnce);
    let err = log
        .append(&meta(5), &payload(5, 200))
        .expect_err("fsync failed");
    assert!(matches!(err, AppendError::Failed(_)), "{err:?}");
    // The fault is gone, but the log must not retry the fsync and pretend.
    let err = log.append(&meta(6), &payload(6, 200)).expect_err("latched");
    assert!(matches!(err, AppendError::Failed(_)), "{err:?}");
    assert!(log.failure().is_some());
    assert_eq!(
        log.end_offset(),
        Offset(5),
        "nothing after the failure became visible"
    );
    drop(log);
    let reopened = open_sim(&sim.crash(None), small_config(true));
    let all = read_all(&reopened);
    assert_eq!(
        all.len(),
        5,
        "the five acknowledged records survive, the failed one is not invented"
    );
    assert_eq!(
        reopened.append(&meta(5), &payload(5, 200)).unwrap().offset,
        Offset(5)
    );
}

#[test]
fn disk_full_fails_the_batch_and_appends_resume_when_space_returns() {
    for prealloc in [false, true] {
        let sim = SimStorage::new();
        let log = open_sim(&sim, small_config(prealloc));
        for i in 0..3 {
            log.append(&meta(i), &payload(i, 500)).expect("append");
        }
        // Enough room for nothing more (preallocated segments fail at the next roll).
        sim.inject(SimFault::NoSpaceAfter(0));
        let mut saw_full = false;
        let mut next = 3;
        for i in 3..200u64 {
            match log.append(&meta(i), &payload(i, 500)) {
                Ok(a) => {
                    assert_eq!(a.offset, Offset(next));
                    next += 1;
                }
                Err(AppendError::StorageFull(_)) => {
                    saw_full = true;
                    break;
                }
                Err(e) => panic!("unexpected {e:?}"),
            }
        }
        assert!(saw_full, "disk full was reported");
        assert!(log.failure().is_none(), "disk full is not fatal");
        sim.clear_faults();
        let a = log
            .append(&meta(next), &payload(next, 500))
            .expect("space is back");
        assert_eq!(
            a.offset,
            Offset(next),
            "the failed append consumed no offset"
        );
        drop(log);
        let reopened = open_sim(&sim.crash(Some(0)), small_config(prealloc));
        let all = read_all(&reopened);
        assert_eq!(all.len() as u64, next + 1);
        for (k, (off, p)) in all.iter().enumerate() {
            assert_eq!((off.0, p), (k as u64, &payload(k as u64, 500)));
        }
    }
}

#[test]
fn short_writes_are_completed() {
    let sim = SimStorage::new();
    sim.inject(SimFault::ShortWrites);
    let log = open_sim(&sim, small_config(false));
    for i in 0..20 {
        log.append(&meta(i), &payload(i, 3000)).expect("append");
    }
    drop(log);
    let reopened = open_sim(&sim.crash(Some(0)), small_config(false));
    assert_eq!(read_all(&reopened).len(), 20);
}

#[test]
fn write_errors_fail_the_batch_without_leaving_garbage() {
    let sim = SimStorage::new();
    let log = open_sim(&sim, small_config(false));
    log.append(&meta(0), &payload(0, 300)).unwrap();
    sim.inject(SimFault::WriteFails);
    assert!(matches!(
        log.append(&meta(1), &payload(1, 300)),
        Err(AppendError::Io(_))
    ));
    sim.clear_faults();
    assert_eq!(
        log.append(&meta(1), &payload(1, 300)).unwrap().offset,
        Offset(1)
    );
    drop(log);
    let reopened = open_sim(&sim.crash(Some(0)), small_config(false));
    assert_eq!(read_all(&reopened).len(), 2);
}

/// Position of record `k` in a segment of equal-sized records.
fn position_of(k: u64, len: usize, meta_len: usize) -> u64 {
    64 + k * (32 + meta_len + len) as u64
}

#[test]
fn corrupt_record_in_sealed_segment_is_quarantined_never_served() {
    let sim = SimStorage::new();
    fill(&sim, small_config(true), 200, 1000);
    let first = segment_files(&sim, ".log")[0].clone();
    let meta_len = meta(3).len(); // "C3": same length for offsets 0..9
    sim.corrupt_byte(&first, position_of(3, 1000, meta_len) + 100);
    let log = open_sim(&sim, small_config(true));
    match log.read(Offset(3)) {
        Err(WalError::Corrupt { offset, .. }) => assert_eq!(offset, Offset(3)),
        other => panic!("expected corruption, got {other:?}"),
    }
    assert!(
        !log.quarantined().is_empty(),
        "quarantine records the damage"
    );
    assert_eq!(log.read(Offset(2)).unwrap().payload, payload(2, 1000));
    // Records after the damage stay reachable through the index.
    assert_eq!(log.read(Offset(150)).unwrap().payload, payload(150, 1000));
    let report = verify_dir(&sim, Path::new(DIR)).unwrap();
    assert!(!report.is_clean(), "verify reports the corruption");
    assert!(
        report.problems.iter().any(|p| p.file == first),
        "{:?}",
        report.problems
    );
}

#[test]
fn corrupt_record_found_while_rebuilding_index_is_quarantined_and_skipped_over() {
    let sim = SimStorage::new();
    fill(&sim, small_config(true), 200, 1000);
    let first = segment_files(&sim, ".log")[0].clone();
    sim.corrupt_byte(&first, position_of(4, 1000, meta(4).len()) + 50);
    for idx in segment_files(&sim, ".index") {
        sim.remove(&idx).unwrap();
    }
    let log = open_sim(&sim, small_config(true));
    assert!(matches!(log.read(Offset(4)), Err(WalError::Corrupt { .. })));
    // Older sealed segments are opened (and their index rebuilt) when first read.
    let q = log.quarantined();
    assert_eq!(q.len(), 1, "{q:?}");
    assert_eq!((q[0].offset, q[0].end_offset), (Offset(4), Some(Offset(5))));
    assert_eq!(
        log.read(Offset(5)).unwrap().payload,
        payload(5, 1000),
        "resync found the next record"
    );
    let mut r = log.reader(Offset(0));
    let mut got = Vec::new();
    loop {
        match r.next() {
            Ok(Some(rec)) => got.push(rec.offset.0),
            Ok(None) => break,
            Err(WalError::Corrupt { offset, .. }) => {
                assert_eq!(offset, Offset(4));
                r.seek(Offset(offset.0 + 1));
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got.len(), 199);
    assert!(!got.contains(&4));
}

#[test]
fn lost_or_damaged_indexes_are_rebuilt() {
    let sim = SimStorage::new();
    fill(&sim, small_config(true), 300, 700);
    let idx = segment_files(&sim, ".index");
    let tidx = segment_files(&sim, ".timeindex");
    assert!(idx.len() >= 3);
    sim.remove(&idx[0]).unwrap();
    sim.corrupt_byte(&idx[1], 50);
    sim.corrupt_byte(&tidx[2], 10);
    let last_idx = idx.last().unwrap().clone();
    sim.corrupt_byte(&last_idx, 45); // active segment's index entries
    let log = open_sim(&sim, small_config(true));
    assert!(
        log.quarantined().is_empty(),
        "index damage is not data damage"
    );
    let all = read_all(&log);
    assert_eq!(all.len(), 300);
    for i in [0u64, 17, 120, 250, 299] {
        assert_eq!(log.read(Offset(i)).unwrap().payload, payload(i, 700));
    }
    drop(log);
    let report = verify_dir(&sim, Path::new(DIR)).unwrap();
    assert!(report.is_clean() && report.notes.is_empty(), "{report:?}");
}

#[test]
fn damaged_checkpoint_means_a_full_scan_not_data_loss() {
    let sim = SimStorage::new();
    fill(&sim, small_config(true), 50, 400);
    sim.corrupt_byte(&Path::new(DIR).join("checkpoint"), 30);
    let log = open_sim(&sim, small_config(true));
    assert_eq!(read_all(&log).len(), 50);
}

#[test]
fn corrupt_active_tail_is_truncated_and_kept_in_quarantine() {
    let sim = SimStorage::new();
    let config = LogConfig {
        checkpoint_interval_bytes: 1 << 30,
        ..small_config(false)
    };
    fill(&sim, config.clone(), 10, 300);
    let active = segment_files(&sim, ".log").last().unwrap().clone();
    // Simulate a damaged last record (as a torn write would leave).
    let len = sim.contents(&active).unwrap().len() as u64;
    sim.corrupt_byte(&active, len - 5);
    // Make the checkpoint older than the damage so recovery scans it.
    sim.remove(&Path::new(DIR).join("checkpoint")).unwrap();
    let log = open_sim(&sim, config);
    assert_eq!(read_all(&log).len(), 9);
    let saved = sim.list(&Path::new(DIR).join("quarantine")).unwrap();
    assert_eq!(saved.len(), 1, "the cut bytes are kept for inspection");
}

#[test]
fn retention_never_deletes_what_a_reader_still_needs() {
    let sim = SimStorage::new();
    let log = open_sim(&sim, small_config(true));
    for i in 0..400 {
        log.append(&meta(i), &payload(i, 1000)).unwrap();
    }
    let segs_before = segment_files(&sim, ".log").len();
    assert!(segs_before >= 5);
    let reader = log.register_reader("ehr", Offset(0));
    let everything = RetentionPolicy {
        max_age_ms: Some(0),
        max_bytes: Some(0),
    };
    let now = orderly::wal::now_ms() + 10;
    assert!(
        log.enforce_retention(&everything, now).unwrap().is_empty(),
        "reader at 0 protects all"
    );
    reader.set(Offset(130));
    let deleted = log.enforce_retention(&everything, now).unwrap();
    assert!(!deleted.is_empty());
    let start = log.start_offset();
    assert!(
        start <= Offset(130),
        "the segment holding 130 survives (start {start})"
    );
    assert_eq!(log.read(Offset(130)).unwrap().payload, payload(130, 1000));
    assert!(matches!(log.read(Offset(0)), Err(WalError::Deleted { .. })));
    // A second reader further behind protects its data too.
    let _late = log.register_reader("billing", start);
    reader.set(Offset(400));
    assert!(log.enforce_retention(&everything, now).unwrap().is_empty());
    drop(_late);
    log.enforce_retention(&everything, now).unwrap();
    assert_eq!(
        segment_files(&sim, ".log").len(),
        1,
        "only the active segment remains"
    );
    assert_eq!(
        log.append(&meta(400), &payload(400, 10)).unwrap().offset,
        Offset(400)
    );
    drop(log);
    let reopened = open_sim(&sim.crash(Some(0)), small_config(true));
    assert_eq!(reopened.end_offset(), Offset(401));
    assert!(reopened.start_offset() > Offset(0));
}

#[test]
fn retention_policy_alone_keeps_young_small_logs() {
    let sim = SimStorage::new();
    let log = open_sim(&sim, small_config(true));
    for i in 0..300 {
        log.append(&meta(i), &payload(i, 1000)).unwrap();
    }
    let keep = RetentionPolicy {
        max_age_ms: Some(3_600_000),
        max_bytes: Some(1 << 30),
    };
    assert!(log
        .enforce_retention(&keep, orderly::wal::now_ms())
        .unwrap()
        .is_empty());
    let by_size = RetentionPolicy {
        max_age_ms: None,
        max_bytes: Some(150 * 1024),
    };
    assert!(!log
        .enforce_retention(&by_size, orderly::wal::now_ms())
        .unwrap()
        .is_empty());
    assert_eq!(read_all(&log).last().unwrap().0, Offset(299));
}

#[test]
fn segments_start_zero_filled_and_a_missing_spare_only_costs_speed() {
    // With preallocation off, only a zero-filled spare makes a new
    // segment full-length from the start.
    let zero_filled = LogConfig {
        preallocate: false,
        prepare_segments: true,
        ..small_config(false)
    };
    let sim = SimStorage::new();
    let log = open_sim(&sim, zero_filled.clone());
    let first = segment_files(&sim, ".log")[0].clone();
    assert_eq!(
        sim.contents(&first).unwrap().len() as u64,
        zero_filled.segment_bytes
    );
    log.append(&meta(0), &payload(0, 100)).unwrap();
    drop(log);

    // No room for a spare: the log still opens, appends and rolls.
    let full = SimStorage::new();
    full.inject(SimFault::NoSpaceAfter(zero_filled.segment_bytes / 2));
    let log = open_sim(&full, zero_filled.clone());
    full.clear_faults();
    for i in 0..200 {
        log.append(&meta(i), &payload(i, 1000)).expect("append");
    }
    assert!(segment_files(&full, ".log").len() > 1);
    drop(log);
    let reopened = open_sim(&full.crash(Some(0)), zero_filled);
    assert_eq!(read_all(&reopened).len(), 200);
}

#[test]
fn a_submitted_batch_is_written_in_order_with_one_fsync() {
    let sim = SimStorage::new();
    let log = open_sim(&sim, small_config(false));
    let (tx, rx) = crossbeam_channel::unbounded();
    let reqs: Vec<AppendRequest> = (0..20u64).map(|i| request(i, 300, i, &tx)).collect();
    let syncs_before = sim.sync_count();
    assert!(log.appender().submit_batch(reqs).is_ok());
    let mut done: Vec<(u64, Offset)> = (0..20)
        .map(|_| {
            let d = rx.recv().unwrap();
            (d.tag, d.result.expect("durable").offset)
        })
        .collect();
    assert_eq!(
        sim.sync_count() - syncs_before,
        1,
        "one fdatasync for the batch"
    );
    done.sort();
    for (tag, offset) in done {
        assert_eq!(offset, Offset(tag), "submission order is log order");
    }
    assert_eq!(read_all(&log).len(), 20);
}

#[test]
fn batches_keep_submission_order_and_never_exceed_the_batch_limit() {
    let sim = SimStorage::new();
    let config = LogConfig {
        batch_records_max: 8,
        ..small_config(false)
    };
    let log = open_sim(&sim, config);
    let (tx, rx) = crossbeam_channel::unbounded();
    let syncs_before = sim.sync_count();
    let mut tag = 0u64;
    for size in [4usize, 8, 4, 20] {
        let reqs: Vec<AppendRequest> = (0..size)
            .map(|_| {
                tag += 1;
                request(tag - 1, 200, tag - 1, &tx)
            })
            .collect();
        assert!(log.appender().submit_batch(reqs).is_ok());
    }
    for _ in 0..tag {
        let d = rx.recv().unwrap();
        assert_eq!(d.result.expect("durable").offset, Offset(d.tag));
    }
    // 36 records, at most 8 per commit: at least 5 fdatasyncs.
    assert!(sim.sync_count() - syncs_before >= 5);
    assert_eq!(read_all(&log).len() as u64, tag);
}

/// Polls `done` until it holds; the spare is filled by its own thread, which
/// reports to nothing a test can wait on.
fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Appends 20-record group commits of `len`-byte records until `segments` exist.
fn group_commits_until(
    log: &orderly::wal::Log,
    sim: &SimStorage,
    segments: usize,
    len: usize,
    i: &mut u64,
) {
    let (tx, rx) = crossbeam_channel::unbounded();
    while segment_files(sim, ".log").len() < segments {
        let reqs: Vec<AppendRequest> = (0..20).map(|k| request(*i + k, len, k, &tx)).collect();
        assert!(log.appender().submit_batch(reqs).is_ok());
        for _ in 0..20 {
            rx.recv().unwrap().result.expect("durable");
        }
        *i += 20;
    }
}

/// Appends one small record per fdatasync (a lone lockstep sender) until `segments` exist.
fn small_flushes_until(log: &orderly::wal::Log, sim: &SimStorage, segments: usize, i: &mut u64) {
    while segment_files(sim, ".log").len() < segments {
        log.append(&meta(*i), &payload(*i, 100)).expect("append");
        *i += 1;
    }
}

/// A log whose segments come only from zero-filled spares (no fallocate),
/// opened once its first spare is ready.
fn log_with_spares(segment_bytes: u64) -> (SimStorage, orderly::wal::Log, LogConfig) {
    let cfg = LogConfig {
        preallocate: false,
        prepare_segments: true,
        segment_bytes,
        ..small_config(false)
    };
    let sim = SimStorage::new();
    let log = open_sim(&sim, cfg.clone());
    wait_until("the first spare", || has_spare(&sim));
    (sim, log, cfg)
}

fn has_spare(sim: &SimStorage) -> bool {
    sim.contents(&Path::new(DIR).join("spare.log")).is_some()
}

/// Whether segment `n` was made from a spare: only those are full length.
fn zero_filled(sim: &SimStorage, cfg: &LogConfig, n: usize) -> bool {
    let seg = &segment_files(sim, ".log")[n];
    sim.contents(seg).unwrap().len() as u64 == cfg.segment_bytes
}

/// Zero-filling writes every byte twice, so it is done only where it pays:
/// after a segment written in mid-size group commits (~40 KiB per flush) no
/// spare is prepared; after one written a small flush at a time, one is.
#[test]
fn no_spare_after_mid_size_flushes_and_one_after_small_flushes() {
    let (sim, log, cfg) = log_with_spares(64 * 1024);
    let mut i = 0;
    group_commits_until(&log, &sim, 2, 2000, &mut i);
    assert!(
        zero_filled(&sim, &cfg, 1),
        "the first roll uses the spare made at open"
    );
    group_commits_until(&log, &sim, 3, 2000, &mut i);
    assert!(
        !zero_filled(&sim, &cfg, 2) && !has_spare(&sim),
        "no spare after a segment of mid-size flushes (zero-filled: {}, spare: {})",
        zero_filled(&sim, &cfg, 2),
        has_spare(&sim)
    );
    small_flushes_until(&log, &sim, 4, &mut i);
    wait_until("a spare after small flushes", || has_spare(&sim));
    small_flushes_until(&log, &sim, 5, &mut i);
    assert!(zero_filled(&sim, &cfg, 4), "the next roll uses it");
    drop(log);
    let reopened = open_sim(&sim.crash(Some(0)), cfg);
    assert_eq!(read_all(&reopened).len() as u64, i);
}

/// Very large flushes (bursts of ~200 KiB) pay for a spare again: there the
/// fallocated blocks' extent conversion grows with the flush.
#[test]
fn a_spare_follows_a_segment_of_very_large_flushes() {
    let (sim, log, cfg) = log_with_spares(1024 * 1024);
    let mut i = 0;
    group_commits_until(&log, &sim, 2, 10_000, &mut i);
    assert!(
        zero_filled(&sim, &cfg, 1),
        "the first roll uses the spare made at open"
    );
    wait_until("a spare after very large flushes", || has_spare(&sim));
    group_commits_until(&log, &sim, 3, 10_000, &mut i);
    assert!(zero_filled(&sim, &cfg, 2), "the next roll uses it");
}

/// Regression (finding 10): only the queue directory's parent was synced,
/// so after a power loss right after the first append a new log's
/// `queues/` (or data) directory, and everything in it, could be gone.
#[test]
fn a_new_log_and_its_directories_survive_power_loss_after_the_first_append() {
    let sim = SimStorage::with_root(Path::new("/r"));
    let dir = Path::new("/r/data/queues/lab");
    let log =
        orderly::wal::Log::open_with(std::sync::Arc::new(sim.clone()), dir, small_config(false))
            .unwrap();
    log.append(&meta(0), &payload(0, 300))
        .expect("acknowledged");
    let image = sim.synced_only();
    drop(log);
    let log =
        orderly::wal::Log::open_with(std::sync::Arc::new(image), dir, small_config(false)).unwrap();
    assert_eq!(read_all(&log).len(), 1, "the acknowledged record survives");
}

/// Regression (finding 10): with fsync = "never" the writer still wrote
/// checkpoints claiming their position durable; after a power loss
/// recovery trusted them and started scanning past records that were never
/// on disk.
#[test]
fn with_fsync_never_a_checkpoint_never_vouches_for_unsynced_records() {
    // Preallocated: the checkpoint's position lies inside the file even
    // when the records before it never reached the disk.
    let config = LogConfig {
        fsync: orderly::wal::FsyncMode::Never,
        checkpoint_interval_bytes: 4096,
        preallocate: true,
        prepare_segments: false,
        ..small_config(false)
    };
    let sim = SimStorage::new();
    let log = open_sim(&sim, config.clone());
    for i in 0..40 {
        log.append(&meta(i), &payload(i, 500)).unwrap();
    }
    let image = sim.synced_only();
    drop(log);
    let log = open_sim(&image, config);
    let end = log.end_offset().0;
    for o in 0..end {
        assert!(
            log.read(Offset(o)).is_ok(),
            "offset {o} below the recovered end {end} must read"
        );
    }
}
