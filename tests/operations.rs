//! What an operator sees and does when the log is damaged, through the real
//! binary: a cursor past the log's end halts delivery until `reset-cursor`
//! (recorded in the audit journal); `inspect` and `verify` report every
//! unreadable record and keep going; `verify` checks dead-letter logs and
//! cursor files; the broker starts with few file descriptors however many
//! segments it has; `verify` and `inspect` run safely beside a broker that
//! rolls segments.
mod delivery_common;
mod server_common;
use delivery_common::*;
use orderly::wal::record::{self, Check};
use orderly::wal::{Log, LogConfig};
use server_common::{oru, Broker, Client, BIN};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn send(broker: &Broker, ids: &[&str]) {
    let mut c = Client::connect(broker.addr());
    for id in ids {
        let (code, msa2) = c.roundtrip(&oru(id, 300));
        assert!(code.is_positive() && msa2 == *id);
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// Regression (finding 4): a restored queue backup (or damage) left the log
/// end below a durable cursor; new messages got offsets below it and were
/// skipped without a trace, with lag 0.
#[test]
fn a_cursor_past_the_log_end_halts_delivery_until_an_operator_resets_it() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(accept_all());
    let config = config_with(dir.path(), &destination("ehr", sink.addr, ""));
    let data = dir.path().join("data");
    let (first, second) = (ids("a", 5), ids("b", 5));
    let mut broker = Broker::start(&config);
    send(&broker, &refs(&first));
    sink.wait_accepted(&first, WAIT);
    assert!(broker.terminate().success());
    let backup = dir.path().join("backup");
    copy_dir(&data.join("queues/lab"), &backup);
    let mut broker = Broker::start(&config);
    send(&broker, &refs(&second));
    sink.wait_accepted(&second, WAIT);
    // The sink holding the message is not the broker having read its ACK:
    // wait for the cursor itself, or it may say 9.
    let status = ctl_status_until(&config, WAIT, |s| s.contains("durable=10"));
    assert!(status.contains("durable=10"), "{status}");
    assert!(broker.terminate().success());
    // The queue is restored from the older backup; the cursor says 10.
    std::fs::remove_dir_all(data.join("queues/lab")).unwrap();
    copy_dir(&backup, &data.join("queues/lab"));
    let mut broker = Broker::start(&config);
    let status = ctl_status_until(&config, WAIT, |s| s.contains("HALTED"));
    assert!(
        status.contains("HALTED") && status.contains("cursor past the end"),
        "{status}"
    );
    let after = ids("c", 3);
    send(&broker, &refs(&after));
    assert!(
        sink.accepted_ids().iter().all(|id| !after.contains(id)),
        "nothing is delivered while halted"
    );
    let out = ctl(
        &config,
        &[
            "reset-cursor",
            "ehr",
            "--to-log-end",
            "--reason",
            "queue restored from backup",
        ],
    );
    assert!(out.contains("10 -> 5"), "{out}");
    sink.wait_accepted(&after, WAIT);
    let status = ctl(&config, &["status"]);
    assert!(!status.contains("HALTED"), "{status}");
    assert!(broker.terminate().success());
    let audit = std::fs::read_to_string(data.join("audit.log")).unwrap();
    let lines: Vec<serde_json::Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let reset: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["action"] == "reset-cursor")
        .collect();
    assert_eq!(reset.len(), 2, "requested, then done: {audit}");
    assert_eq!(reset[0]["phase"], "requested");
    assert_eq!(reset[1]["phase"], "done");
    assert_eq!(reset[0]["reason"], "queue restored from backup");
    assert!(
        reset[0]["actor"].as_str().unwrap().starts_with("uid="),
        "{}",
        reset[0]
    );
}

/// A log with many small segments written directly, closed cleanly.
fn write_log(dir: &Path, n: u64, len: usize) -> LogConfig {
    let config = LogConfig {
        segment_bytes: 64 * 1024,
        prepare_segments: false,
        ..LogConfig::default()
    };
    let log = Log::open(dir, config.clone()).unwrap();
    for i in 0..n {
        let mut m = orderly::wal::meta::MetaBuilder::new();
        m.push(
            orderly::wal::meta::MetaKey::ControlId,
            format!("C{i}").as_bytes(),
        );
        log.append(&m.finish(), &oru(&format!("C{i}"), len))
            .unwrap();
    }
    log.close().unwrap();
    config
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "log")
                && p.file_name().unwrap().as_encoded_bytes()[0].is_ascii_digit()
        })
        .collect();
    v.sort();
    v
}

/// Flips a byte inside each of the records `offsets` of a segment file
/// (found by walking intact records before any is damaged).
fn damage_records(seg: &Path, offsets: &[u64]) {
    let mut bytes = std::fs::read(seg).unwrap();
    let mut pos = 64;
    let mut targets = Vec::new();
    while let Check::Valid(r) = record::check(&bytes[pos..]) {
        if offsets.contains(&r.offset.0) {
            targets.push(pos + r.encoded_len() - 20);
        }
        pos += r.encoded_len();
    }
    assert_eq!(
        targets.len(),
        offsets.len(),
        "records {offsets:?} in {}",
        seg.display()
    );
    for at in targets {
        bytes[at] ^= 0x40;
    }
    std::fs::write(seg, &bytes).unwrap();
}

fn run(args: &[&str], data: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap()
}

/// The contract for black-box checks: `inspect` prints a CORRUPT line for
/// each unreadable record (starting with its offset), keeps going, exits
/// non-zero; `verify` reports the exact number of unreadable records.
#[test]
fn inspect_and_verify_report_each_unreadable_record_and_keep_going() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let queue = data.join("queues/lab");
    write_log(&queue, 400, 700);
    let segs = segments(&queue);
    assert!(segs.len() >= 4);
    let in_segment = |seg: &Path, o: u64| {
        let base: u64 = seg.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        base <= o
    };
    let (a, b) = (
        segs.iter().rposition(|s| in_segment(s, 100)).unwrap(),
        segs.iter().rposition(|s| in_segment(s, 250)).unwrap(),
    );
    assert!(
        in_segment(&segs[a], 101) && a != b && b + 1 < segs.len(),
        "damage in two sealed segments"
    );
    damage_records(&segs[a], &[100, 101]);
    damage_records(&segs[b], &[250]);
    let out = run(&["inspect", "lab"], &data);
    assert!(!out.status.success(), "inspect exits non-zero after damage");
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        400,
        "one line per offset, damaged ones included"
    );
    for (o, line) in lines.iter().enumerate() {
        let first = line.split(' ').next().unwrap();
        assert_eq!(first, o.to_string(), "{line}");
        let corrupt = [100, 101, 250].contains(&o);
        assert_eq!(line.contains("CORRUPT"), corrupt, "{line}");
    }
    let out = run(&["verify"], &data);
    assert!(!out.status.success());
    let report = String::from_utf8(out.stdout).unwrap();
    let summary = report
        .lines()
        .find(|l| l.starts_with("queue lab:"))
        .unwrap();
    assert!(
        summary.contains("CORRUPT") && summary.contains("3 unreadable record(s)"),
        "{report}"
    );
}

#[test]
fn verify_checks_dead_letter_logs_and_cursor_files() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(reject_only("P1"));
    let config = config_with(dir.path(), &destination("ehr", sink.addr, ""));
    let data = dir.path().join("data");
    let mut broker = Broker::start(&config);
    send(&broker, &["P0", "P1", "P2"]);
    sink.wait_accepted(&["P0".to_string(), "P2".to_string()], WAIT);
    assert!(broker.terminate().success());
    let out = run(&["verify"], &data);
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{report}");
    assert!(
        report.contains("dlq ehr: OK") && report.contains("1 record(s)"),
        "{report}"
    );
    assert!(
        report.contains("cursors ehr: OK: 1 lane(s) at [3]"),
        "{report}"
    );
    let dlq = segments(&data.join("dlq/ehr"));
    damage_records(&dlq[0], &[0]);
    std::fs::write(data.join("cursors/ehr.cur"), b"not a cursor file").unwrap();
    let out = run(&["verify"], &data);
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(!out.status.success());
    assert!(
        report.contains("dlq ehr: CORRUPT") && report.contains("1 unreadable record(s)"),
        "{report}"
    );
    assert!(report.contains("cursors ehr: CORRUPT"), "{report}");
}

/// Regression (finding 8): every sealed segment kept a descriptor (and
/// mappings) open, so a busy feed hit EMFILE and the broker could not
/// restart. With the soft and hard limit at 64 it must start and serve.
#[test]
fn the_broker_starts_and_serves_with_64_file_descriptors_and_300_segments() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    write_log(&data.join("queues/lab"), 20_000, 1000);
    assert!(segments(&data.join("queues/lab")).len() >= 300);
    let config = server_common::write_config(dir.path(), &[("lab", "lab", "")]);
    let broker = Broker::start_customized(&config, |c| {
        use std::os::unix::process::CommandExt;
        // SAFETY: setrlimit is async-signal-safe; it only lowers this child's limit.
        unsafe {
            c.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 64,
                    rlim_max: 64,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
    });
    let mut c = Client::connect(broker.addr());
    let (code, _) = c.roundtrip(&oru("after-restart", 300));
    assert!(code.is_positive(), "the broker accepts with 64 descriptors");
    let out = run(
        &["inspect", "lab", "--from", "0", "--limit", "20001"],
        &data,
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().lines().count(),
        20_001
    );
}

/// Regression (finding 7): `verify` and `inspect` mapped segment files, and
/// a roll truncates the active segment when sealing it: touching the
/// mapping past the new end was a SIGBUS. Through pread they read short.
#[test]
fn verify_and_inspect_beside_a_broker_that_rolls_segments_never_fault() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let config = server_common::write_config(dir.path(), &[("lab", "lab", "")]);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("[[listener]]", "[wal]\nsegment_bytes = 65536\n[[listener]]"),
    )
    .unwrap();
    let broker = Broker::start(&config);
    let data = broker.data_dir.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let senders: Vec<_> = (0..3)
        .map(|k| {
            let (addr, stop) = (broker.addr(), stop.clone());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 20_000 {
                    assert!(c
                        .roundtrip(&oru(&format!("s{k}-{i}"), 1500))
                        .0
                        .is_positive());
                    i += 1;
                }
            })
        })
        .collect();
    for round in 0..40 {
        for args in [&["verify"][..], &["inspect", "lab"][..]] {
            let out = run(args, &data);
            assert_eq!(
                out.status.signal(),
                None,
                "round {round}: `{args:?}` killed by a signal"
            );
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    senders.into_iter().for_each(|s| s.join().unwrap());
    assert!(
        segments(&data.join("queues/lab")).len() > 3,
        "segments rolled meanwhile"
    );
}

/// Finding 3: `skip` of a damaged record dead-letters what bytes remain,
/// classed `corrupt`, and delivery continues with its intact neighbours.
#[test]
fn skipping_a_damaged_record_dead_letters_its_remains_classed_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(accept_all());
    let config = config_with(dir.path(), &destination("ehr", sink.addr, ""));
    let data = dir.path().join("data");
    let queue = data.join("queues/lab");
    write_log(&queue, 30, 700);
    damage_records(&segments(&queue)[0], &[12]);
    let broker = Broker::start(&config);
    let status = ctl_status_until(&config, WAIT, |s| s.contains("BLOCKED"));
    assert!(
        status.contains("offset=12") && status.contains("class=corrupt"),
        "{status}"
    );
    let before: Vec<String> = (0..12).map(|i| format!("C{i}")).collect();
    sink.wait_accepted(&before, WAIT);
    ctl(
        &config,
        &[
            "skip",
            "ehr",
            "--lane",
            "0",
            "--reason",
            "checksum mismatch; lab resends",
        ],
    );
    let after: Vec<String> = (13..30).map(|i| format!("C{i}")).collect();
    sink.wait_accepted(&after, WAIT);
    assert!(
        !sink.accepted_ids().contains(&"C12".to_string()),
        "the damaged record is never sent"
    );
    let mut dead = Vec::new();
    orderly::wal::inspect::for_each_record(
        &orderly::storage::FsStorage,
        &data.join("dlq/ehr"),
        orderly::wal::Offset(0),
        u64::MAX,
        orderly::wal::Writer::Running,
        |item| {
            if let orderly::wal::inspect::Item::Record(r) = item {
                dead.push((r.meta.to_vec(), r.payload.to_vec()));
            }
        },
    )
    .unwrap();
    drop(broker);
    assert_eq!(dead.len(), 1);
    let meta = orderly::wal::meta::MetaView::new(&dead[0].0);
    assert_eq!(
        meta.get(orderly::wal::meta::MetaKey::ErrorClass),
        Some(&b"corrupt"[..])
    );
    let original = oru("C12", 700);
    let differing = dead[0]
        .1
        .iter()
        .zip(&original)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        (dead[0].1.len(), differing),
        (original.len(), 1),
        "the payload, one byte flipped"
    );
}

/// Beside a running broker, damage in the newest records (past the active
/// segment's checkpoint, where a write may be in progress) is reported
/// once it reads back the same after a pause: a flipped byte in a recent
/// record is CORRUPT, not taken for a write in progress.
#[test]
fn inspect_and_verify_report_damage_in_recent_records_beside_a_running_broker() {
    let dir = tempfile::tempdir().unwrap();
    let config = server_common::write_config(dir.path(), &[("lab", "lab", "")]);
    let broker = Broker::start(&config);
    let ids: Vec<String> = (0..40).map(|i| format!("R{i}")).collect();
    send(&broker, &refs(&ids));
    let queue = broker.data_dir.join("queues/lab");
    let active = segments(&queue).pop().unwrap();
    damage_records(&active, &[25]);
    let out = run(&["inspect", "lab"], &broker.data_dir);
    let text = String::from_utf8(out.stdout).unwrap();
    let corrupt: Vec<&str> = text.lines().filter(|l| l.contains("CORRUPT")).collect();
    assert_eq!(corrupt.len(), 1, "{text}");
    assert!(corrupt[0].starts_with("25 "), "{text}");
    assert_eq!(
        text.lines().count(),
        40,
        "the records after the damage are listed too"
    );
    assert!(!out.status.success());
    let out = run(&["verify"], &broker.data_dir);
    let report = String::from_utf8(out.stdout).unwrap();
    assert!(
        !out.status.success() && report.contains("1 unreadable record(s)"),
        "{report}"
    );
}
