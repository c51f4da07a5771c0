//! One test per row of the recovery table in docs/FORMAT.md. Each builds that
//! row's on-disk state on simulated storage and checks the outcome the table
//! gives; the last test fails if a row has no test or a test names no row.
//! Rows r07, r14, r16, r18, r20 and r21 are also the regression tests of
//! the recovery findings of issue 11 (each failed on d3891bd).
mod wal_common;
use orderly::storage::{SimFault, SimStorage, Storage};
use orderly::wal::record::{self, Check};
use orderly::wal::verify::verify_dir;
use orderly::wal::{AppendError, FsyncMode, Log, LogConfig, Offset, WalError};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wal_common::*;

/// Small segments; checkpoints only at rolls and close, so after a crash
/// recovery scans the whole active segment.
fn cfg() -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        preallocate: true,
        prepare_segments: false,
        checkpoint_interval_bytes: 1 << 30,
        ..LogConfig::default()
    }
}

const LEN: usize = 1000;

fn append_n(log: &Log, from: u64, n: u64) {
    for i in from..from + n {
        log.append(&meta(i), &payload(i, LEN)).expect("append");
    }
}

/// `n` records, then a crash (kill -9): everything is on disk, but there
/// is no clean-close checkpoint.
fn crashed_log(n: u64, config: LogConfig) -> SimStorage {
    let sim = SimStorage::new();
    let log = open_sim(&sim, config);
    append_n(&log, 0, n);
    let image = sim.crash(None);
    drop(log);
    image
}

/// `n` records, then a clean close.
fn closed_log(n: u64, config: LogConfig) -> SimStorage {
    let sim = SimStorage::new();
    let log = open_sim(&sim, config);
    append_n(&log, 0, n);
    log.close().expect("close");
    sim
}

fn dir() -> &'static Path {
    Path::new(DIR)
}

/// Segment (or index) files of the log, sorted; the spare is not one.
fn files(sim: &SimStorage, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = sim
        .list(dir())
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(ext) && n.as_bytes()[0].is_ascii_digit())
        .map(|n| dir().join(n))
        .collect();
    v.sort();
    v
}

fn active(sim: &SimStorage) -> PathBuf {
    files(sim, ".log").pop().expect("a segment")
}

/// `(offset, position, length)` of every record of a segment file, walked
/// with the record format's own check from the first record.
fn records_of(sim: &SimStorage, seg: &Path) -> Vec<(u64, u64, usize)> {
    let bytes = sim.contents(seg).unwrap();
    let mut out = Vec::new();
    let mut pos = 64usize;
    while let Some(Check::Valid(r)) = bytes.get(pos..).map(record::check) {
        out.push((r.offset.0, pos as u64, r.encoded_len()));
        pos += r.encoded_len();
    }
    out
}

/// Flips a byte in the middle of record `offset`'s payload (it lies in `seg`).
fn corrupt_record(sim: &SimStorage, seg: &Path, offset: u64) {
    let (_, pos, len) = *records_of(sim, seg)
        .iter()
        .find(|r| r.0 == offset)
        .expect("record in segment");
    sim.corrupt_byte(seg, pos + len as u64 - 100);
}

/// Reads every offset from the start: (intact offsets, damaged offsets).
fn read_each(log: &Log) -> (Vec<u64>, Vec<u64>) {
    let (mut ok, mut bad) = (Vec::new(), Vec::new());
    for o in log.start_offset().0..log.end_offset().0 {
        match log.read(Offset(o)) {
            Ok(r) => {
                assert_eq!(r.payload, payload(o, LEN), "record {o} intact");
                ok.push(o);
            }
            Err(WalError::Corrupt { .. } | WalError::Unreadable { .. }) => bad.push(o),
            Err(e) => panic!("offset {o}: {e}"),
        }
    }
    (ok, bad)
}

fn quarantine_files(sim: &SimStorage) -> Vec<String> {
    sim.list(&dir().join("quarantine")).unwrap_or_default()
}

fn open_err(sim: &SimStorage, config: LogConfig) -> WalError {
    match Log::open_with(Arc::new(sim.clone()), dir(), config) {
        Ok(_) => panic!("expected recovery to refuse"),
        Err(e) => e,
    }
}

fn all(n: u64) -> Vec<u64> {
    (0..n).collect()
}

#[test]
fn row_r01_no_segment_creates_segment_zero() {
    let sim = SimStorage::new();
    let log = open_sim(&sim, cfg());
    assert_eq!(
        (log.start_offset(), log.end_offset()),
        (Offset(0), Offset(0))
    );
    assert_eq!(
        files(&sim, ".log"),
        vec![dir().join("00000000000000000000.log")]
    );
    assert_eq!(
        log.append(&meta(0), &payload(0, LEN)).unwrap().offset,
        Offset(0)
    );
}

#[test]
fn row_r02_tmp_files_are_removed() {
    let sim = closed_log(5, cfg());
    for name in ["checkpoint.tmp", "00000000000000000000.index.tmp"] {
        let f = sim.open(&dir().join(name), true).unwrap();
        orderly::storage::write_all_at(f.as_ref(), b"half-written", 0).unwrap();
    }
    let log = open_sim(&sim, cfg());
    assert!(!sim.exists(&dir().join("checkpoint.tmp")));
    assert!(!sim.exists(&dir().join("00000000000000000000.index.tmp")));
    assert_eq!(read_each(&log), (all(5), vec![]));
}

#[test]
fn row_r03_index_files_without_a_segment_are_removed() {
    let sim = closed_log(5, cfg());
    for ext in ["index", "timeindex"] {
        sim.open(&dir().join(format!("00000000000000000999.{ext}")), true)
            .unwrap();
    }
    let _log = open_sim(&sim, cfg());
    assert!(!sim.exists(&dir().join("00000000000000000999.index")));
    assert!(!sim.exists(&dir().join("00000000000000000999.timeindex")));
}

#[test]
fn row_r04_older_sealed_segments_are_opened_only_when_read_and_stay_bounded() {
    let config = LogConfig {
        open_segments_max: 2,
        ..cfg()
    };
    let sim = closed_log(400, config.clone());
    assert!(files(&sim, ".log").len() >= 6, "many segments");
    let log = open_sim(&sim, config);
    assert_eq!(log.open_sealed_segments(), 0, "nothing opened at start");
    log.read(Offset(0)).unwrap();
    assert_eq!(log.open_sealed_segments(), 1);
    assert_eq!(read_each(&log), (all(400), vec![]));
    assert!(
        log.open_sealed_segments() <= 2,
        "at most open_segments_max stay open"
    );
}

#[test]
fn row_r05_a_sealed_index_that_checks_out_is_used_as_is() {
    let sim = closed_log(300, cfg());
    let index = files(&sim, ".index")[0].clone();
    let before = sim.contents(&index).unwrap();
    let log = open_sim(&sim, cfg());
    assert_eq!(read_each(&log), (all(300), vec![]));
    assert_eq!(sim.contents(&index).unwrap(), before, "not rewritten");
    drop(log);
    let report = verify_dir(&sim, dir()).unwrap();
    assert!(report.is_clean() && report.notes.is_empty(), "{report:?}");
}

#[test]
fn row_r06_a_missing_or_damaged_sealed_index_is_rebuilt() {
    let sim = closed_log(300, cfg());
    let (idx, tidx) = (files(&sim, ".index"), files(&sim, ".timeindex"));
    let originals: Vec<Vec<u8>> = [&idx[0], &tidx[1], &idx[2]]
        .iter()
        .map(|p| sim.contents(p).unwrap())
        .collect();
    sim.remove(&idx[0]).unwrap();
    sim.corrupt_byte(&tidx[1], 50);
    sim.corrupt_byte(&idx[2], 10);
    let log = open_sim(&sim, cfg());
    assert!(
        log.quarantined().is_empty(),
        "index damage is not data damage"
    );
    assert_eq!(read_each(&log), (all(300), vec![]));
    let rebuilt: Vec<Vec<u8>> = [&idx[0], &tidx[1], &idx[2]]
        .iter()
        .map(|p| sim.contents(p).expect("index written back"))
        .collect();
    assert_eq!(rebuilt, originals, "a rebuilt index equals the original");
}

/// Regression (finding 3): reads started at the index point before the
/// target and stopped at the first bad record, so every record up to the
/// next index point read as corrupt.
#[test]
fn row_r07_a_bad_record_in_a_sealed_segment_hides_only_itself() {
    let sim = closed_log(300, cfg());
    let first = files(&sim, ".log")[0].clone();
    corrupt_record(&sim, &first, 5);
    let log = open_sim(&sim, cfg());
    assert!(matches!(
        log.read(Offset(5)),
        Err(WalError::Corrupt {
            offset: Offset(5),
            ..
        })
    ));
    let (ok, bad) = read_each(&log);
    assert_eq!(bad, vec![5], "only the damaged record is unreadable");
    assert_eq!(ok.len(), 299);
    let q = log.quarantined();
    assert_eq!(
        q.iter()
            .map(|q| (q.offset, q.end_offset))
            .collect::<Vec<_>>(),
        vec![(Offset(5), Some(Offset(6)))]
    );
    let mut r = log.reader(Offset(0));
    let mut seen = Vec::new();
    loop {
        match r.next() {
            Ok(Some(rec)) => seen.push(rec.offset.0),
            Ok(None) => break,
            Err(WalError::Corrupt { offset, .. }) => r.seek(Offset(offset.0 + 1)),
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(
        seen.len(),
        299,
        "a sequential reader skips only the bad record"
    );
    drop(log);
    let report = verify_dir(&sim, dir()).unwrap();
    assert_eq!(report.unreadable, 1, "{report:?}");
}

#[test]
fn row_r07_an_unreadable_record_in_a_sealed_segment_hides_only_itself() {
    let sim = closed_log(300, cfg());
    let first = files(&sim, ".log")[0].clone();
    let (_, pos, len) = records_of(&sim, &first)[20];
    // A latent sector error inside record 20 (its 4 KiB block may hold
    // the records next to it too: those become unreadable, nothing else).
    sim.fail_reads(&first, pos + len as u64 / 2, 1);
    let log = open_sim(&sim, cfg());
    assert!(matches!(
        log.read(Offset(20)),
        Err(WalError::Unreadable { .. })
    ));
    let (ok, bad) = read_each(&log);
    assert!(bad.contains(&20) && bad.len() <= 6, "{bad:?}");
    assert_eq!(ok.len() + bad.len(), 300);
    drop(log);
    let report = verify_dir(&sim, dir()).unwrap();
    assert_eq!(
        report.unreadable,
        bad.len() as u64,
        "verify counts exactly the unreadable records"
    );
}

#[test]
fn row_r08_an_interrupted_roll_is_trimmed_and_the_cut_bytes_kept() {
    let sim = closed_log(300, cfg());
    let logs = files(&sim, ".log");
    let last_sealed = logs[logs.len() - 2].clone();
    let base = last_sealed
        .file_stem()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    for ext in ["index", "timeindex"] {
        sim.remove(&dir().join(format!("{base}.{ext}"))).unwrap();
    }
    let end = sim.contents(&last_sealed).unwrap().len() as u64;
    sim.overwrite(&last_sealed, end, &[0xab; 700]);
    let log = open_sim(&sim, cfg());
    assert_eq!(
        sim.contents(&last_sealed).unwrap().len() as u64,
        end,
        "trimmed"
    );
    assert_eq!(quarantine_files(&sim), vec![format!("{base}-{end}.tail")]);
    assert_eq!(read_each(&log), (all(300), vec![]));
    assert!(
        sim.exists(&dir().join(format!("{base}.index"))),
        "index rebuilt"
    );
}

#[test]
fn row_r09_a_last_segment_sealed_by_an_interrupted_roll_is_kept_and_followed() {
    let sim = closed_log(300, cfg());
    let logs = files(&sim, ".log");
    let (sealed, newest) = (logs[logs.len() - 2].clone(), logs[logs.len() - 1].clone());
    let sealed_end = records_of(&sim, &sealed).last().unwrap().0 + 1;
    // The state after sealing, before the next segment existed.
    let stem = newest.file_stem().unwrap().to_string_lossy().into_owned();
    for ext in ["log", "index", "timeindex"] {
        sim.remove(&dir().join(format!("{stem}.{ext}"))).unwrap();
    }
    sim.remove(&dir().join("checkpoint")).unwrap();
    let log = open_sim(&sim, cfg());
    assert_eq!(log.end_offset(), Offset(sealed_end));
    assert_eq!(read_each(&log), (all(sealed_end), vec![]));
    assert_eq!(
        log.append(&meta(sealed_end), &payload(sealed_end, LEN))
            .unwrap()
            .offset,
        Offset(sealed_end)
    );
    assert_eq!(
        files(&sim, ".log").last().unwrap(),
        &newest,
        "a new active segment follows"
    );
}

/// A checkpoint mid-segment: damage before it is not seen by recovery
/// (nothing before the checkpoint is scanned), only by a read.
fn checkpointed_crash(n: u64) -> SimStorage {
    crashed_log(
        n,
        LogConfig {
            checkpoint_interval_bytes: 16 * 1024,
            ..cfg()
        },
    )
}

#[test]
fn row_r10_a_valid_checkpoint_is_where_the_scan_starts() {
    let sim = checkpointed_crash(40);
    corrupt_record(&sim, &active(&sim), 3);
    let log = open_sim(&sim, cfg());
    assert!(
        log.quarantined().is_empty(),
        "recovery did not scan before the checkpoint"
    );
    assert_eq!(log.end_offset(), Offset(40));
    assert_eq!(
        read_each(&log),
        ((0..40).filter(|&o| o != 3).collect(), vec![3])
    );
}

#[test]
fn row_r11_without_a_checkpoint_the_whole_active_segment_is_scanned() {
    let sim = checkpointed_crash(40);
    corrupt_record(&sim, &active(&sim), 3);
    sim.remove(&dir().join("checkpoint")).unwrap();
    let log = open_sim(&sim, cfg());
    let q: Vec<_> = log.quarantined().iter().map(|q| q.offset).collect();
    assert_eq!(q, vec![Offset(3)], "found by the scan");
    assert_eq!(log.end_offset(), Offset(40));
}

#[test]
fn row_r12_a_clean_checkpoint_means_nothing_is_scanned() {
    let sim = closed_log(10, cfg());
    let seg = active(&sim);
    let (_, pos, len) = *records_of(&sim, &seg).last().unwrap();
    // A record that would check out, where nothing can have been written
    // after a clean close: recovery must not even look.
    let mut phantom = Vec::new();
    record::encode(
        &mut phantom,
        Offset(10),
        u64::MAX / 2,
        &meta(10),
        &payload(10, LEN),
    );
    sim.overwrite(&seg, pos + len as u64, &phantom);
    let log = open_sim(&sim, cfg());
    assert_eq!(log.end_offset(), Offset(10));
}

#[test]
fn row_r13_zeros_after_a_clean_end_are_kept_as_space_ahead_or_trimmed() {
    let sim = crashed_log(10, cfg());
    let log = open_sim(&sim, cfg());
    assert_eq!(log.end_offset(), Offset(10));
    assert_eq!(
        sim.contents(&active(&sim)).unwrap().len() as u64,
        cfg().segment_bytes
    );
    assert!(quarantine_files(&sim).is_empty());
    drop(log);
    let growing = LogConfig {
        preallocate: false,
        ..cfg()
    };
    let sim = crashed_log(10, cfg());
    let _log = open_sim(&sim, growing);
    let (_, pos, len) = *records_of(&sim, &active(&sim)).last().unwrap();
    assert_eq!(
        sim.contents(&active(&sim)).unwrap().len() as u64,
        pos + len as u64,
        "trimmed"
    );
}

/// Regression (finding 1): damage in the active segment truncated every
/// acknowledged record after it, and their offsets were then reused.
#[test]
fn row_r14_damage_followed_by_intact_records_in_the_active_segment_is_a_hole() {
    let sim = crashed_log(40, cfg());
    corrupt_record(&sim, &active(&sim), 20);
    let log = open_sim(&sim, cfg());
    assert_eq!(
        log.end_offset(),
        Offset(40),
        "records after the damage are kept"
    );
    assert_eq!(
        read_each(&log),
        ((0..40).filter(|&o| o != 20).collect(), vec![20])
    );
    assert_eq!(
        log.append(&meta(40), &payload(40, LEN)).unwrap().offset,
        Offset(40),
        "no offset is reused"
    );
    assert!(quarantine_files(&sim)
        .iter()
        .any(|f| f.ends_with(".damaged")));
    drop(log);
    let again = open_sim(&sim, cfg());
    assert_eq!(again.end_offset(), Offset(41), "idempotent");
}

#[test]
fn row_r15_a_torn_last_record_is_cut_copied_and_zeroed() {
    let sim = crashed_log(40, cfg());
    let seg = active(&sim);
    let (_, pos, len) = *records_of(&sim, &seg).last().unwrap();
    corrupt_record(&sim, &seg, 39);
    let log = open_sim(&sim, cfg());
    assert_eq!(log.end_offset(), Offset(39));
    let q = quarantine_files(&sim);
    assert_eq!(q, vec![format!("00000000000000000000-{pos}.tail")]);
    let bytes = sim.contents(&seg).unwrap();
    assert!(
        bytes[pos as usize..pos as usize + len]
            .iter()
            .all(|&b| b == 0),
        "zeroed"
    );
    assert_eq!(
        log.append(&meta(39), &payload(39, LEN)).unwrap().offset,
        Offset(39)
    );
}

/// Regression (finding 2): header and first record share sector 0; a bad
/// first sector made recovery unlink the whole segment.
#[test]
fn row_r16_a_damaged_header_is_rebuilt_and_the_segment_kept() {
    let sim = crashed_log(40, cfg());
    let seg = active(&sim);
    sim.corrupt_byte(&seg, 20);
    sim.corrupt_byte(&seg, 64 + 40);
    let log = open_sim(&sim, cfg());
    assert_eq!(log.end_offset(), Offset(40));
    assert_eq!(read_each(&log), ((1..40).collect(), vec![0]));
    assert!(quarantine_files(&sim).contains(&"00000000000000000000-0.header".to_string()));
    drop(log);
    assert_eq!(open_sim(&sim, cfg()).end_offset(), Offset(40));
}

#[test]
fn row_r17_a_header_naming_another_base_refuses_to_start() {
    let sim = crashed_log(5, cfg());
    let seg = active(&sim);
    let mut other = sim.contents(&seg).unwrap()[..64].to_vec();
    other[16..24].copy_from_slice(&7u64.to_le_bytes());
    let crc = crc32fast::hash(&other[0..60]);
    other[60..64].copy_from_slice(&crc.to_le_bytes());
    sim.overwrite(&seg, 0, &other);
    match open_err(&sim, cfg()) {
        WalError::Damaged { path, .. } => assert_eq!(path, seg),
        e => panic!("{e}"),
    }
}

/// The fence file of docs/FORMAT.md, built from the spec.
fn fence_bytes(base: u64, position: u64) -> Vec<u8> {
    let mut b = b"ORDLYFNC".to_vec();
    b.extend_from_slice(&1u16.to_le_bytes());
    b.extend_from_slice(&[0; 6]);
    b.extend_from_slice(&base.to_le_bytes());
    b.extend_from_slice(&position.to_le_bytes());
    b.extend_from_slice(&[0; 4]);
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

#[test]
fn row_r18_a_fence_cuts_what_followed_a_failed_fsync() {
    let sim = crashed_log(10, cfg());
    let (_, pos, _) = records_of(&sim, &active(&sim))[6];
    orderly::storage::replace_file(&sim, &dir().join("fence"), &fence_bytes(0, pos)).unwrap();
    let log = open_sim(&sim, cfg());
    assert_eq!(
        log.end_offset(),
        Offset(6),
        "records after the durable end are not served"
    );
    assert!(
        !sim.exists(&dir().join("fence")),
        "removed once the cut is durable"
    );
    assert!(quarantine_files(&sim).iter().any(|f| f.ends_with(".tail")));
    assert_eq!(
        log.append(&meta(6), &payload(6, LEN)).unwrap().offset,
        Offset(6)
    );
}

/// Regression (finding 6): after a failed fsync the page cache keeps the
/// batch the disk may not hold; a restart (same cache) recovered it and
/// lanes delivered it.
#[test]
fn row_r18_records_after_a_failed_fsync_are_never_served_after_a_restart() {
    let sim = SimStorage::new();
    let log = open_sim(&sim, cfg());
    append_n(&log, 0, 5);
    sim.inject(SimFault::SyncFailsOnce);
    assert!(matches!(
        log.append(&meta(5), &payload(5, LEN)),
        Err(AppendError::Failed(_))
    ));
    drop(log);
    // The process restarts; the machine did not: the cache is as it was.
    let log = open_sim(&sim, cfg());
    assert_eq!(log.end_offset(), Offset(5));
    assert_eq!(read_each(&log), (all(5), vec![]));
    drop(log);
    for seed in 0..20 {
        let after_power_loss = open_sim(&sim.power_loss(seed), cfg());
        assert_eq!(after_power_loss.end_offset(), Offset(5), "seed {seed}");
    }
}

#[test]
fn row_r19_a_damaged_fence_refuses_to_start() {
    let sim = crashed_log(10, cfg());
    let mut f = fence_bytes(0, 2000);
    f[20] ^= 1;
    orderly::storage::replace_file(&sim, &dir().join("fence"), &f).unwrap();
    match open_err(&sim, cfg()) {
        WalError::Damaged { path, .. } => assert_eq!(path, dir().join("fence")),
        e => panic!("{e}"),
    }
}

/// Regression (finding 6): recovery checkpointed (and published) records
/// that existed only in the page cache after kill -9; a power loss then
/// left holes below the checkpoint.
#[test]
fn row_r20_recovered_bytes_are_synced_before_they_are_checkpointed_or_published() {
    let unsynced = LogConfig {
        fsync: FsyncMode::Never,
        ..cfg()
    };
    let sim = SimStorage::new();
    let log = open_sim(&sim, unsynced);
    append_n(&log, 0, 10);
    let killed = sim.fork(); // kill -9: the page cache survives, nothing was synced
    drop(log);
    let recovered = open_sim(&killed, cfg());
    assert_eq!(
        recovered.end_offset(),
        Offset(10),
        "the cached records are recovered"
    );
    // Power fails right after recovery: what it published must be durable.
    let after = open_sim(&killed.synced_only(), cfg());
    assert_eq!(after.end_offset(), Offset(10));
    assert_eq!(read_each(&after), (all(10), vec![]));
}

/// Regression (finding 9): recovery had to write a checkpoint, so a full
/// disk stopped the broker from starting.
#[test]
fn row_r21_a_full_disk_still_opens_and_appends_resume_when_space_returns() {
    let sim = closed_log(10, cfg());
    sim.inject(SimFault::NoSpaceAfter(0));
    let log = open_sim(&sim, cfg());
    assert_eq!(read_each(&log), (all(10), vec![]));
    let mut next = 10;
    let full = loop {
        match log.append(&meta(next), &payload(next, LEN)) {
            Ok(a) => {
                assert_eq!(
                    a.offset,
                    Offset(next),
                    "the preallocated segment still takes appends"
                );
                next += 1;
            }
            Err(e) => break e,
        }
        assert!(next < 200, "the segment fills");
    };
    assert!(matches!(full, AppendError::StorageFull(_)), "{full:?}");
    sim.clear_faults();
    assert_eq!(
        log.append(&meta(next), &payload(next, LEN)).unwrap().offset,
        Offset(next)
    );
}

#[test]
fn every_row_of_the_recovery_table_has_a_test() {
    let table = include_str!("../docs/FORMAT.md");
    let table = &table[table.find("## Recovery table").expect("the recovery table")..];
    let rows: Vec<String> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| r"))
        .map(|l| format!("r{}", &l[..2]))
        .collect();
    assert!(rows.len() >= 20, "{rows:?}");
    let source = include_str!("wal_recovery.rs");
    for id in &rows {
        assert!(
            source.contains(&format!("fn row_{id}_")),
            "recovery table row {id} has no test"
        );
    }
    for (i, _) in source.match_indices("\nfn row_r") {
        let id = &source[i + 8..i + 11];
        assert!(
            rows.iter().any(|r| r == id),
            "test for row {id}, which the table lacks"
        );
    }
}

/// A bad block over the whole (short) active segment of a cleanly closed
/// log: its records were acknowledged, so recovery keeps their offsets
/// (reads of them fail visibly) and the next append continues after them.
#[test]
fn row_r12_a_bad_block_over_a_cleanly_closed_short_active_segment_loses_no_offset() {
    // 64 KiB segments of ~1 KB records: 66 records roll the first segment,
    // the active one then holds records 6x.. in its first 4 KiB block.
    let sim = closed_log(66, cfg());
    let sealed_and_active = files(&sim, ".log");
    let last = sealed_and_active.last().unwrap().clone();
    let in_active = records_of(&sim, &last);
    assert!(
        !in_active.is_empty() && in_active.last().unwrap().1 < 4096,
        "the active segment's records sit in its first block: {in_active:?}"
    );
    sim.fail_reads(&last, 64 + 900, 1);
    let log = open_sim(&sim, cfg());
    assert_eq!(
        log.end_offset(),
        Offset(66),
        "no acknowledged offset is lost"
    );
    let (ok, bad) = read_each(&log);
    assert_eq!(ok.len() + bad.len(), 66);
    assert!(!bad.is_empty());
    let next = log.append(&meta(66), &payload(66, LEN)).expect("append");
    assert_eq!(next.offset, Offset(66));
}

/// The same bad block after a crash (no clean checkpoint past the roll):
/// an I/O error is a bad sector, not a torn write, and what it covers was
/// acknowledged, so recovery must not cut it as a torn tail.
#[test]
fn row_r22_a_bad_block_at_the_tail_after_a_crash_is_a_hole_not_a_cut() {
    let sim = SimStorage::new();
    let log = open_sim(&sim, cfg());
    append_n(&log, 0, 66);
    // Power cut with every acknowledged append durable (the log is left
    // open: no clean checkpoint).
    let image = sim.crash(None);
    drop(log);
    let last = files(&image, ".log").last().unwrap().clone();
    let in_active = records_of(&image, &last);
    assert!(!in_active.is_empty() && in_active.last().unwrap().1 < 4096);
    image.fail_reads(&last, 64 + 900, 1);
    // `verify` before recovery: the same verdict recovery reaches, not "a
    // torn tail recovery cuts".
    let report = verify_dir(&image, dir()).unwrap();
    assert!(!report.is_clean(), "{report:?}");
    assert!(
        report.notes.iter().all(|n| !n.contains("cuts")),
        "{report:?}"
    );
    let log = open_sim(&image, cfg());
    let end = log.end_offset();
    assert!(end >= Offset(66), "acknowledged offsets kept: end {end}");
    let (ok, bad) = read_each(&log);
    assert_eq!(ok.len() as u64 + bad.len() as u64, end.0);
    assert_eq!(
        (report.unreadable, report.next_offset),
        (bad.len() as u64, Some(end)),
        "verify counts the offsets recovery keeps unreadable: {report:?}"
    );
    assert!(
        ok.len() >= 66 - in_active.len(),
        "every readable record served"
    );
    let next = log
        .append(&meta(end.0), &payload(end.0, LEN))
        .expect("append");
    assert_eq!(next.offset, end);
    // Reopened (recovery now starts from its checkpoint past the hole):
    // the same offsets, the new record served, the hole still unreadable.
    drop(log);
    let log = open_sim(&image, cfg());
    assert_eq!(log.end_offset(), Offset(end.0 + 1));
    assert_eq!(
        log.read(end).expect("the record after the hole").payload,
        payload(end.0, LEN)
    );
    assert!(matches!(
        log.read(Offset(bad[0])),
        Err(WalError::Unreadable { .. })
    ));
}

/// r22 with the bad stretch starting before the last checkpoint and running
/// past it to the end of the records: `verify` (which scans the segment from
/// its start) and recovery (which resumes at the checkpoint) must agree on
/// the hole: the same offsets unreadable, the same end, nothing "cut".
#[test]
fn row_r22_a_bad_stretch_across_the_checkpoint_is_the_same_hole_for_verify_and_recovery() {
    let config = || LogConfig {
        checkpoint_interval_bytes: 8 * 1024,
        ..cfg()
    };
    let sim = SimStorage::new();
    let log = open_sim(&sim, config());
    append_n(&log, 0, 43);
    let image = sim.crash(None);
    drop(log);
    let checkpoint = image.contents(&dir().join("checkpoint")).unwrap();
    let position = u64::from_le_bytes(checkpoint[24..32].try_into().unwrap());
    let last = files(&image, ".log").last().unwrap().clone();
    let in_active = records_of(&image, &last);
    let (_, pos, len) = *in_active.last().unwrap();
    let data_end = pos + len as u64;
    assert!(
        position > 64 + 2 * LEN as u64 && position < data_end,
        "a checkpoint inside the active segment's records: {position} < {data_end}"
    );
    image.fail_reads(&last, position - 100, data_end - (position - 100));
    let report = verify_dir(&image, dir()).unwrap();
    let log = open_sim(&image, config());
    let end = log.end_offset();
    assert!(end >= Offset(43), "acknowledged offsets kept: end {end}");
    let (_, bad) = read_each(&log);
    assert_eq!(
        (report.unreadable, report.next_offset),
        (bad.len() as u64, Some(end)),
        "verify counts the offsets recovery keeps unreadable: {report:?}"
    );
    assert!(
        report.notes.iter().all(|n| !n.contains("cuts")),
        "{report:?}"
    );
}
