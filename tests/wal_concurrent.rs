//! Offline readers beside a live log, in one process: `verify_dir` and
//! `inspect::for_each_record` in a tight loop while the writer rolls 64 KiB
//! segments of 15 KB records (a roll truncates the active segment by whole
//! pages when it seals it) and retention keeps the log small, so each loop
//! is quick and thousands run.
//!
//! Regression (finding 7): they memory-mapped segment files, so a roll
//! during a read was a SIGBUS, which kills this whole test binary (hence a
//! file of its own). Through pread a truncated file only reads short.
mod wal_common;
use orderly::storage::FsStorage;
use orderly::wal::verify::verify_dir_with;
use orderly::wal::{inspect, Log, LogConfig, Offset, RetentionPolicy, Writer};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use wal_common::*;

#[test]
fn verify_and_inspect_read_safely_while_segments_are_sealed_under_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("q");
    let config = LogConfig {
        segment_bytes: 64 * 1024,
        prepare_segments: false,
        ..LogConfig::default()
    };
    let log = Arc::new(Log::open(&path, config).unwrap());
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (log, stop) = (log.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut i = 0u64;
            let small = RetentionPolicy {
                max_age_ms: None,
                max_bytes: Some(2 * 1024 * 1024),
            };
            while !stop.load(Ordering::Relaxed) && i < 2_000_000 {
                let items: Vec<(u64, usize)> = (i..i + 4).map(|k| (k, 15_000)).collect();
                for d in append_burst(&log, &items) {
                    d.result.expect("append");
                }
                i += 4;
                if i.is_multiple_of(200) {
                    log.enforce_retention(&small, orderly::wal::now_ms())
                        .expect("retention");
                }
            }
            i
        })
    };
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut rounds = 0;
    while Instant::now() < deadline {
        // Retention may delete a segment between listing and opening it:
        // that read fails cleanly; what is read must check out.
        if let Ok(report) = verify_dir_with(&FsStorage, &path, Writer::Running) {
            assert!(report.problems.is_empty(), "{:?}", report.problems);
        }
        let _ = inspect::for_each_record(
            &FsStorage,
            &path,
            Offset(0),
            u64::MAX,
            Writer::Running,
            |item| {
                assert!(
                    matches!(item, inspect::Item::Record(_)),
                    "a damaged record beside a live log"
                );
            },
        );
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let appended = writer.join().unwrap();
    assert!(
        rounds > 10 && appended > 1000,
        "{rounds} rounds beside {appended} appends"
    );
}
