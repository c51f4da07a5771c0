//! Appending, reading, rolling, reopening, indexes and tailing on real files.
mod wal_common;
use orderly::storage::{FsStorage, Storage};
use orderly::wal::meta::{MetaKey, MetaView};
use orderly::wal::verify::verify_dir;
use orderly::wal::{Log, LogConfig, Offset};
use std::time::Duration;
use wal_common::*;

fn tmp_log(preallocate: bool) -> (tempfile::TempDir, Log) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path().join("q"), small_config(preallocate)).expect("open");
    (dir, log)
}

#[test]
fn appended_records_read_back_exactly_in_order() {
    let (_d, log) = tmp_log(true);
    for i in 0..50u64 {
        let a = log
            .append(&meta(i), &payload(i, 100 + i as usize * 37))
            .expect("append");
        assert_eq!(a.offset, Offset(i));
    }
    let all = read_all(&log);
    assert_eq!(all.len(), 50);
    for (i, (off, p)) in all.iter().enumerate() {
        assert_eq!(*off, Offset(i as u64));
        assert_eq!(p, &payload(i as u64, 100 + i * 37));
    }
    let rec = log.read(Offset(7)).expect("read 7");
    assert_eq!(
        MetaView::new(&rec.meta).get(MetaKey::ControlId),
        Some(&b"C7"[..])
    );
}

#[test]
fn records_survive_close_and_reopen_across_many_segments() {
    for prealloc in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("q");
        let n = 400u64;
        {
            let log = Log::open(&path, small_config(prealloc)).expect("open");
            let items: Vec<(u64, usize)> =
                (0..n).map(|i| (i, 900 + (i as usize % 7) * 100)).collect();
            for chunk in items.chunks(17) {
                for d in append_burst(&log, chunk) {
                    d.result.expect("append ok");
                }
            }
            log.close().expect("close");
        }
        let segments = std::fs::read_dir(&path)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".log")
            })
            .count();
        assert!(segments > 3, "small segments roll: found {segments}");
        let log = Log::open(&path, small_config(prealloc)).expect("reopen");
        assert_eq!(log.end_offset(), Offset(n));
        let all = read_all(&log);
        assert_eq!(all.len() as u64, n);
        for (off, p) in &all {
            assert_eq!(p, &payload(off.0, 900 + (off.0 as usize % 7) * 100));
        }
        let a = log
            .append(&meta(n), &payload(n, 10))
            .expect("append after reopen");
        assert_eq!(a.offset, Offset(n));
        let report = verify_dir(&FsStorage, &path).expect("verify");
        assert!(report.is_clean(), "{:?}", report.problems);
        assert_eq!(report.records, n + 1);
    }
}

#[test]
fn random_reads_by_offset_use_the_index() {
    let (_d, log) = tmp_log(true);
    let items: Vec<(u64, usize)> = (0..300).map(|i| (i, 500)).collect();
    for chunk in items.chunks(50) {
        append_burst(&log, chunk);
    }
    for i in [0u64, 1, 99, 150, 151, 299, 42, 7] {
        assert_eq!(log.read(Offset(i)).expect("read").payload, payload(i, 500));
    }
    assert!(log.read(Offset(300)).is_err(), "beyond the end");
}

#[test]
fn offset_for_time_finds_first_record_at_or_after() {
    let (_d, log) = tmp_log(true);
    let mut stamps = Vec::new();
    for i in 0..120u64 {
        stamps.push(
            log.append(&meta(i), &payload(i, 1500))
                .expect("append")
                .timestamp_ms,
        );
        if i % 40 == 39 {
            // Let the clock move so the log spans distinct timestamps.
            let t = stamps[i as usize];
            while orderly::wal::now_ms() == t {
                std::hint::spin_loop();
            }
        }
    }
    for (i, &ts) in stamps.iter().enumerate() {
        let first = stamps.iter().position(|&s| s >= ts).unwrap() as u64;
        assert_eq!(
            log.offset_for_time(ts).expect("lookup"),
            Some(Offset(first)),
            "record {i}"
        );
    }
    assert_eq!(log.offset_for_time(stamps[119] + 1).expect("lookup"), None);
    assert_eq!(log.offset_for_time(0).expect("lookup"), Some(Offset(0)));
}

#[test]
fn tailing_reader_wakes_when_a_record_becomes_durable() {
    let (_d, log) = tmp_log(true);
    assert!(
        !log.wait_for(Offset(0), Duration::from_millis(10)),
        "nothing written yet"
    );
    let appender = log.appender();
    let writer =
        std::thread::spawn(move || appender.append(meta(0), payload(0, 64)).expect("append"));
    assert!(
        log.wait_for(Offset(0), Duration::from_secs(10)),
        "woken by the append"
    );
    writer.join().unwrap();
    assert_eq!(log.read(Offset(0)).unwrap().payload, payload(0, 64));
}

#[test]
fn oversized_record_is_refused_and_log_continues() {
    let (_d, log) = tmp_log(false);
    let big = vec![b'x'; orderly::constants::RECORD_PAYLOAD_BYTES_MAX + 1];
    let err = log.append(&[], &big).expect_err("too large");
    assert!(matches!(err, orderly::wal::AppendError::TooLarge { .. }));
    assert_eq!(
        log.append(&meta(0), &payload(0, 10)).unwrap().offset,
        Offset(0)
    );
}

#[test]
fn group_commit_shares_one_fsync_among_a_burst() {
    let sim = orderly::storage::SimStorage::new();
    let log = open_sim(&sim, LogConfig::default());
    let before = sim.sync_count();
    let items: Vec<(u64, usize)> = (0..256).map(|i| (i, 1500)).collect();
    for d in append_burst(&log, &items) {
        d.result.expect("ok");
    }
    let syncs = sim.sync_count() - before;
    assert!(
        syncs < 128,
        "256 records took {syncs} data syncs: group commit is not batching"
    );
}

/// The segment files in `dir`, in offset order (`spare.log` is not one).
fn segment_logs(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "log")
                && p.file_name().unwrap().to_string_lossy().as_bytes()[0].is_ascii_digit()
        })
        .collect();
    logs.sort();
    logs
}

#[test]
fn zero_filled_segments_on_real_files_roll_reopen_and_verify() {
    // Larger than one fill step (2 MiB) and not a whole number of 1 MiB
    // chunks, so the fill's writeback steps and its short last chunk run.
    let segment_bytes = 3 * 1024 * 1024 + 4096 + 100;
    let config = LogConfig {
        segment_bytes,
        preallocate: false,
        prepare_segments: true,
        ..LogConfig::default()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let free = FsStorage
        .available_bytes(dir.path())
        .expect("statvfs")
        .expect("known on a real file system");
    assert!(
        free >= segment_bytes + orderly::constants::SPARE_FREE_SPACE_RESERVE_BYTES,
        "this test needs {} free bytes in the temp dir for a zero-filled segment; {free} are free",
        segment_bytes + orderly::constants::SPARE_FREE_SPACE_RESERVE_BYTES
    );
    let path = dir.path().join("q");
    let log = Log::open(&path, config.clone()).expect("open");
    let first = path.join(format!("{:020}.log", 0));
    assert_eq!(
        std::fs::metadata(&first).unwrap().len(),
        segment_bytes,
        "the first segment is zero-filled to full length before any append"
    );
    let n = 5_000u64;
    for i in 0..n {
        log.append(&meta(i), &payload(i, 1500)).expect("append");
    }
    log.close().expect("close");
    let segments = segment_logs(&path).len();
    assert!(
        segments >= 3,
        "rolled at least twice ({segments} .log files)"
    );
    let report = verify_dir(&FsStorage, &path).expect("verify");
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let log = Log::open(&path, config).expect("reopen");
    let logs = segment_logs(&path);
    assert_eq!(
        std::fs::metadata(logs.last().unwrap()).unwrap().len(),
        segment_bytes,
        "recovery keeps the zero-filled space ahead of the active segment's end"
    );
    let all = read_all(&log);
    assert_eq!(all.len() as u64, n);
    for (i, (off, p)) in all.iter().enumerate() {
        assert_eq!((*off, p), (Offset(i as u64), &payload(i as u64, 1500)));
    }
}

/// `Log::scan`, the one loop every search uses: a damaged record in the
/// middle is passed over and counted, the records after it are read, and
/// a limit says the scan is incomplete.
#[test]
fn a_scan_passes_over_damage_and_says_when_it_stopped_at_its_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("q");
    let log = Log::open(&path, small_config(false)).expect("open");
    for i in 0..10u64 {
        log.append(&meta(i), &payload(i, 200)).expect("append");
    }
    log.close().expect("close");
    // Flip a byte inside record 4's payload, found by its bytes.
    let seg = path.join("00000000000000000000.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    let needle = payload(4, 200);
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle.as_slice())
        .expect("record 4's payload");
    bytes[at + 50] ^= 0xFF;
    std::fs::write(&seg, bytes).unwrap();
    let log = Log::open(&path, small_config(false)).expect("reopen");
    let mut seen = Vec::new();
    let end = log.scan(Offset(0), u64::MAX, |r| {
        seen.push(r.offset.0);
        true
    });
    assert_eq!(seen, vec![0, 1, 2, 3, 5, 6, 7, 8, 9]);
    assert_eq!((end.damaged, end.complete), (1, true));
    let mut first = Vec::new();
    let end = log.scan(Offset(0), 3, |r| {
        first.push(r.offset.0);
        true
    });
    assert_eq!((first, end.complete), (vec![0, 1, 2], false));
}

/// A damaged run of many records (a bad stretch of disk) is one hole: a
/// scan counts every offset in it but steps over it in one move, where it
/// used to re-read the segment from its index point once per offset
/// (quadratic in the hole's size).
#[test]
fn a_scan_steps_over_a_long_damaged_run_in_one_move() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("q");
    let log = Log::open(&path, small_config(false)).expect("open");
    for i in 0..250u64 {
        log.append(&meta(i), &payload(i, 200)).expect("append");
    }
    log.close().expect("close");
    let seg = path.join("00000000000000000000.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    // Record i starts 32 header bytes and its metadata before its payload.
    let start = |bytes: &[u8], i: u64| {
        let needle = payload(i, 200);
        let at = bytes
            .windows(needle.len())
            .position(|w| w == needle.as_slice())
            .unwrap_or_else(|| panic!("record {i} in the first segment"));
        at - meta(i).len() - 32
    };
    let (from, to) = (start(&bytes, 20), start(&bytes, 200));
    bytes[from..to].fill(0x5A);
    std::fs::write(&seg, bytes).unwrap();
    let log = Log::open(&path, small_config(false)).expect("reopen");

    let mut reader = log.reader(Offset(20));
    assert!(reader.next().is_err());
    assert_eq!(reader.damage_end(), Some(Offset(200)));

    let mut seen = Vec::new();
    let end = log.scan(Offset(0), u64::MAX, |r| {
        seen.push(r.offset.0);
        true
    });
    let expected: Vec<u64> = (0..20).chain(200..250).collect();
    assert_eq!(seen, expected);
    assert_eq!((end.damaged, end.complete), (180, true));
    // The hole costs one step of a scan's budget, not 180.
    let mut first = Vec::new();
    let end = log.scan(Offset(0), 22, |r| {
        first.push(r.offset.0);
        true
    });
    assert_eq!(first.last(), Some(&200), "{first:?}");
    assert_eq!((end.damaged, end.complete), (180, false));
}

/// Retention removing segments under a running scan is not damage: the scan
/// goes on from the log's new start and counts nothing as damaged (it used
/// to count every deleted offset, one failed read each).
#[test]
fn a_scan_overtaken_by_retention_goes_on_from_the_new_start() {
    let (_dir, log) = tmp_log(true);
    for i in 0..400u64 {
        log.append(&meta(i), &payload(i, 1000)).expect("append");
    }
    let keep = log.register_reader("keeps-250-on", Offset(250));
    let everything = orderly::wal::RetentionPolicy {
        max_age_ms: Some(0),
        max_bytes: Some(0),
    };
    let mut seen = Vec::new();
    let end = log.scan(Offset(0), u64::MAX, |r| {
        if r.offset == Offset(0) {
            let deleted = log
                .enforce_retention(&everything, orderly::wal::now_ms() + 10)
                .expect("retention");
            assert!(!deleted.is_empty(), "older segments deleted");
        }
        seen.push(r.offset.0);
        true
    });
    let start = log.start_offset().0;
    assert!(start > 1 && start <= 250, "start {start}");
    let expected: Vec<u64> = std::iter::once(0).chain(start..400).collect();
    assert_eq!(seen, expected);
    assert_eq!((end.damaged, end.complete), (0, true));
    drop(keep);
}
