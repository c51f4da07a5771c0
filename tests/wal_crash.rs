//! Simulated power loss at every byte of the unsynced tail.
//!
//! A sync hook captures the storage at the start of every `fdatasync` and
//! directory sync (the moment unsynced bytes exist), together with how many
//! appends the test had already seen complete. Each capture is then crashed
//! at every byte of its pending writes and recovered: the log must hold
//! exactly a prefix of what was appended, including every completed append,
//! and recovery must be idempotent and leave a writable log.
mod wal_common;
use orderly::storage::SimStorage;
use orderly::wal::{LogConfig, Offset};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use wal_common::*;

/// Threads checking crash points at once (see `crash_at_every_byte`).
const CRASH_CHECK_THREADS: usize = 4;

fn record_len(i: u64) -> usize {
    40 + ((i * 7919) % 260) as usize
}

/// Runs a workload of bursts, capturing storage at every sync.
fn capture_workload(config: LogConfig, bursts: usize) -> (Vec<Capture>, u64) {
    let sim = SimStorage::new();
    let acked = Arc::new(AtomicU64::new(0));
    let log = open_sim(&sim, config);
    let captures = capture_every_sync(&sim, &acked);
    let mut next = 0u64;
    for b in 0..bursts {
        let n = 1 + (b * 5 % 4) as u64;
        let items: Vec<(u64, usize)> = (next..next + n).map(|i| (i, record_len(i))).collect();
        for d in append_burst(&log, &items) {
            let got = d.result.expect("append ok");
            assert_eq!(got.offset, Offset(next + d.tag));
        }
        next += n;
        acked.store(next, Ordering::SeqCst);
    }
    sim.set_sync_hook(None);
    drop(log);
    let caps = std::mem::take(&mut *captures.lock());
    (caps, next)
}

fn check_recovery(image: &SimStorage, acked: u64, total: u64, config: &LogConfig, what: &str) {
    let log = open_sim(image, config.clone());
    let all = read_all(&log);
    let n = all.len() as u64;
    assert!(
        n >= acked,
        "{what}: {acked} appends completed but only {n} recovered"
    );
    assert!(
        n <= total,
        "{what}: recovered {n} records, only {total} were appended"
    );
    for (k, (off, p)) in all.iter().enumerate() {
        assert_eq!(*off, Offset(k as u64), "{what}: offsets are dense from 0");
        assert_eq!(
            p,
            &payload(k as u64, record_len(k as u64)),
            "{what}: record {k} intact"
        );
    }
    assert_eq!(log.end_offset(), Offset(n));
    let appended = log
        .append(&meta(n), &payload(n, record_len(n)))
        .expect("recovered log accepts appends");
    assert_eq!(
        appended.offset,
        Offset(n),
        "{what}: next offset continues the prefix"
    );
    drop(log);
    let again = open_sim(image, config.clone());
    assert_eq!(
        again.end_offset(),
        Offset(n + 1),
        "{what}: recovery is idempotent"
    );
    assert_eq!(read_all(&again).len() as u64, n + 1);
}

fn crash_at_every_byte(config: LogConfig, bursts: usize) {
    let (captures, total) = capture_workload(config.clone(), bursts);
    assert!(captures.len() > bursts, "every burst syncs at least once");
    // Captures are independent: check them on a few threads. Each crash
    // point opens a log twice, and every open and drop hands work between
    // threads; on a busy host each hand-off waits for a CPU, so overlapping
    // them keeps this test from being the suite's long pole (it took 20 of
    // 29 minutes of a CI run beside two busy loops, one capture at a time).
    let points: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..CRASH_CHECK_THREADS)
            .map(|w| {
                let (captures, config) = (&captures, &config);
                scope.spawn(move || {
                    captures
                        .iter()
                        .enumerate()
                        .skip(w)
                        .step_by(CRASH_CHECK_THREADS)
                        .map(|(ci, cap)| crash_capture_at_every_byte(ci, cap, total, config))
                        .sum::<u64>()
                })
            })
            .collect();
        workers
            .into_iter()
            // A worker's panic is a failed check: pass it on.
            .map(|w| w.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .sum()
    });
    assert!(
        points > captures.len() as u64,
        "some captures had unsynced bytes to tear"
    );
}

/// Crashes one capture at every byte of its pending writes and checks each
/// recovery; returns how many crash points it checked.
fn crash_capture_at_every_byte(ci: usize, cap: &Capture, total: u64, config: &LogConfig) -> u64 {
    let pending = cap.storage.pending_bytes();
    for kept in 0..=pending {
        let image = cap.storage.crash(Some(kept));
        check_recovery(
            &image,
            cap.acked,
            total,
            config,
            &format!("capture {ci}, {kept}/{pending} pending bytes kept"),
        );
    }
    pending + 1
}

#[test]
fn crash_at_every_byte_recovers_a_prefix_with_every_acked_record_zero_filled() {
    // The production layout: segments made from zero-filled spares.
    crash_at_every_byte(
        LogConfig {
            segment_bytes: 64 * 1024,
            checkpoint_interval_bytes: 2048,
            ..LogConfig::default()
        },
        60,
    );
}

#[test]
fn crash_at_every_byte_recovers_a_prefix_with_every_acked_record_fallocated() {
    crash_at_every_byte(
        LogConfig {
            segment_bytes: 64 * 1024,
            prepare_segments: false,
            checkpoint_interval_bytes: 2048,
            ..LogConfig::default()
        },
        60,
    );
}

#[test]
fn crash_at_every_byte_recovers_a_prefix_with_every_acked_record_appending() {
    crash_at_every_byte(
        LogConfig {
            segment_bytes: 64 * 1024,
            preallocate: false,
            checkpoint_interval_bytes: 2048,
            ..LogConfig::default()
        },
        60,
    );
}

#[test]
fn crash_during_segment_rolls_loses_nothing_acked() {
    crash_during_segment_rolls(LogConfig {
        segment_bytes: 64 * 1024,
        preallocate: false,
        prepare_segments: false,
        ..LogConfig::default()
    });
}

#[test]
fn crash_during_segment_rolls_onto_spares_loses_nothing_acked() {
    // Captures also land inside the background zero-fill and the rename of
    // the spare into place.
    crash_during_segment_rolls(LogConfig {
        segment_bytes: 64 * 1024,
        ..LogConfig::default()
    });
}

/// Segments of 64 KiB with ~10 KiB records: a roll every few bursts, so
/// captures land inside create/seal/checkpoint sequences.
fn crash_during_segment_rolls(config: LogConfig) {
    let sim = SimStorage::new();
    let acked = Arc::new(AtomicU64::new(0));
    let log = open_sim(&sim, config.clone());
    let captures = capture_every_sync(&sim, &acked);
    let len = |_i: u64| 10_000usize;
    for i in 0..40u64 {
        log.append(&meta(i), &payload(i, len(i))).expect("append");
        acked.store(i + 1, Ordering::SeqCst);
    }
    sim.set_sync_hook(None);
    drop(log);
    let captures = std::mem::take(&mut *captures.lock());
    for (ci, cap) in captures.iter().enumerate() {
        for kept in [None, Some(0)] {
            let image = cap.storage.crash(kept);
            let log = open_sim(&image, config.clone());
            let all = read_all(&log);
            assert!(
                all.len() as u64 >= cap.acked,
                "capture {ci}: lost acked records"
            );
            for (k, (off, p)) in all.iter().enumerate() {
                assert_eq!(
                    (*off, p),
                    (Offset(k as u64), &payload(k as u64, len(k as u64))),
                    "capture {ci}"
                );
            }
        }
    }
}
