//! Storage faults under the real server (in process, on simulated storage):
//! disk full and fsync failure answer AR ("not stored, resend later", HL7
//! table 0008) or CE in enhanced mode, never AA, and the broker stays up.
mod delivery_common;
mod server_common;
use orderly::config::Config;
use orderly::hl7::ack::AckCode;
use orderly::server::Server;
use orderly::storage::{SimFault, SimStorage, Storage};
use server_common::*;
use std::sync::Arc;

fn start(
    sim: &SimStorage,
    dir: &std::path::Path,
    extra: &str,
) -> (
    std::net::SocketAddr,
    orderly::server::ShutdownHandle,
    std::thread::JoinHandle<()>,
) {
    // Files that grow with every write (no preallocation, no zero-filled
    // spare), so a full disk fails the append itself, not only a roll.
    let text = format!("data_dir = {:?}\n[wal]\npreallocate = false\nzero_fill_segments = false\nsegment_bytes = 65536\n{extra}\n[[listener]]\nname = \"lab\"\nlisten = \"127.0.0.1:0\"\nqueue = \"lab\"\n", dir.display().to_string());
    let config = Config::parse(&text, "test.toml").expect("config");
    let server = Server::start_with(&config, Arc::new(sim.clone())).expect("start");
    let addr = server.bound()[0].1;
    let handle = server.shutdown_handle();
    let join = std::thread::spawn(move || server.run().expect("run"));
    (addr, handle, join)
}

/// A config with listener and queue `lab` (no deduplication) delivering to
/// destination `ehr` at `sink`; `wal` and `dest_extra` add keys.
fn ehr_config(
    dir: &std::path::Path,
    sink: std::net::SocketAddr,
    wal: &str,
    dest_extra: &str,
) -> Config {
    let text = format!("data_dir = {:?}\n{wal}\n[[listener]]\nname = \"lab\"\nlisten = \"127.0.0.1:0\"\nqueue = \"lab\"\n[[destination]]\nname = \"ehr\"\nqueue = \"lab\"\nconnect = \"{sink}\"\nack_timeout_ms = 2000\n{dest_extra}\n[[queue]]\nname = \"lab\"\nidempotency_key = []\n", dir.display().to_string());
    Config::parse(&text, "test.toml").expect("config")
}

/// Runs a broker with `config` over `sim` on its own thread.
fn serve(
    config: &Config,
    sim: &SimStorage,
) -> (
    std::net::SocketAddr,
    Arc<orderly::delivery::Engine>,
    orderly::server::ShutdownHandle,
    std::thread::JoinHandle<()>,
) {
    let server = Server::start_with(config, Arc::new(sim.clone())).expect("start");
    let (addr, engine, stop) = (
        server.bound()[0].1,
        server.engine(),
        server.shutdown_handle(),
    );
    let join = std::thread::spawn(move || server.run().expect("run"));
    (addr, engine, stop, join)
}

#[test]
fn disk_full_answers_ar_resend_later_and_service_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new();
    let (addr, stop, join) = start(&sim, dir.path(), "");
    let mut c = Client::connect(addr);
    assert_eq!(
        c.roundtrip(&oru("before", 500)).0,
        AckCode::ApplicationAccept
    );
    sim.inject(SimFault::NoSpaceAfter(0));
    c.send(&oru("full", 500));
    let ack = c.recv().expect("an answer");
    let (code, msa2) = ack_of(&ack);
    // Table 0008: AR is "rejected for a reason unrelated to content", the
    // code a sender may resend; AE would say "do not resend unchanged".
    assert_eq!(
        (code, msa2.as_str()),
        (AckCode::ApplicationReject, "full"),
        "disk full is AR, not AA and not AE"
    );
    let text = String::from_utf8_lossy(&ack);
    assert!(
        text.contains("NOT stored") && text.contains("resend later"),
        "{text}"
    );
    let mut other = Client::connect(addr);
    assert_eq!(
        other.roundtrip(&oru("full2", 500)).0,
        AckCode::ApplicationReject,
        "broker stays up, refuses work"
    );
    sim.clear_faults();
    assert_eq!(
        c.roundtrip(&oru("after", 500)).0,
        AckCode::ApplicationAccept,
        "healthy again"
    );
    stop.shutdown();
    join.join().unwrap();
    let log = orderly::wal::Log::open_with(
        Arc::new(sim.crash(Some(0))),
        &dir.path().join("queues/lab"),
        orderly::wal::LogConfig {
            preallocate: false,
            prepare_segments: false,
            segment_bytes: 65536,
            ..Default::default()
        },
    )
    .unwrap();
    let ids: Vec<Vec<u8>> = (0..log.end_offset().0)
        .map(|i| log.read(orderly::wal::Offset(i)).unwrap().payload)
        .collect();
    assert_eq!(
        ids,
        vec![oru("before", 500), oru("after", 500)],
        "only acknowledged messages were stored"
    );
}

#[test]
fn fsync_failure_answers_ar_for_that_and_every_later_message() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new();
    let (addr, stop, join) = start(&sim, dir.path(), "");
    let mut c = Client::connect(addr);
    assert_eq!(c.roundtrip(&oru("ok", 200)).0, AckCode::ApplicationAccept);
    sim.inject(SimFault::SyncFailsOnce);
    assert_eq!(c.roundtrip(&oru("lost", 200)).0, AckCode::ApplicationReject);
    for i in 0..3 {
        let (code, _) = Client::connect(addr).roundtrip(&oru(&format!("later{i}"), 200));
        assert_eq!(
            code,
            AckCode::ApplicationReject,
            "no positive ACK after a failed fsync until restart"
        );
    }
    stop.shutdown();
    join.join().unwrap();
}

#[test]
fn enhanced_mode_senders_get_ce_on_storage_failure() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new();
    let (addr, stop, join) = start(&sim, dir.path(), "");
    let msg = b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261123||ORU^R01|E1|P|2.5|||AL|NE\rPID|1\r";
    let mut c = Client::connect(addr);
    assert_eq!(c.roundtrip(msg).0, AckCode::CommitAccept);
    sim.inject(SimFault::WriteFails);
    assert_eq!(c.roundtrip(msg).0, AckCode::CommitError);
    stop.shutdown();
    join.join().unwrap();
}

/// Regression (finding 7): a read error on a mapped page was a SIGBUS that
/// killed the broker, and recovery touched the page again at every start.
/// Now: the lane that needs the record blocks with a clear status, ingest
/// keeps running, the broker restarts (also with the bad block in the active
/// segment), and a skip moves past it.
#[test]
fn a_read_error_blocks_its_lane_visibly_while_ingest_and_restarts_continue() {
    use delivery_common::{accept_all, Sink};
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new();
    let sink = Sink::start(accept_all());
    let config = ehr_config(dir.path(), sink.addr, "[wal]\nsegment_bytes = 65536", "");
    let (addr, engine, stop, join) = serve(&config, &sim);
    engine.pause("ehr", true).unwrap();
    let mut c = Client::connect(addr);
    for i in 0..200 {
        assert!(c.roundtrip(&oru(&format!("m{i}"), 800)).0.is_positive());
    }
    // A latent sector error under offset 30, in the first (sealed) segment.
    let first = dir.path().join("queues/lab/00000000000000000000.log");
    let bytes = sim.contents(&first).unwrap();
    let pos = (0..30).fold(64usize, |p, _| {
        p + u32::from_le_bytes(bytes[p..p + 4].try_into().unwrap()) as usize
    });
    sim.fail_reads(&first, pos as u64 + 100, 1);
    engine.pause("ehr", false).unwrap();
    // Reads fail per 4 KiB block: the records sharing it with offset 30 are
    // unreadable too, and the lane blocks at the first of them.
    let status = wait_status(&engine, |s| s.contains("BLOCKED"));
    let blocked = blocked_at(&status);
    assert!(
        status.contains("class=unreadable-record") && (24..=30).contains(&blocked),
        "{status}"
    );
    assert!(
        c.roundtrip(&oru("during", 800)).0.is_positive(),
        "ingest keeps running"
    );
    stop.shutdown();
    join.join().unwrap();
    // A bad block inside the active segment as well: recovery reads it.
    let active = dir.path().join("queues/lab");
    let mut segs: Vec<String> = sim
        .list(&active)
        .unwrap()
        .into_iter()
        .filter(|n| n.ends_with(".log") && n.starts_with('0'))
        .collect();
    segs.sort();
    let last = active.join(segs.last().unwrap());
    sim.fail_reads(&last, 64 + 900, 1);
    // Restarts over the bad blocks.
    let (addr, engine, stop, join) = serve(&config, &sim);
    let mut c = Client::connect(addr);
    assert!(c.roundtrip(&oru("after", 800)).0.is_positive());
    let status = wait_status(&engine, |s| s.contains("BLOCKED"));
    assert_eq!(blocked_at(&status), blocked, "{status}");
    engine
        .skip("ehr", 0, "bad sector; message resent by the lab")
        .unwrap();
    let status = wait_status(&engine, |s| s.contains("BLOCKED") && blocked_at(s) > 31);
    assert!(
        status.contains("class=unreadable-record"),
        "then the bad block of the active segment: {status}"
    );
    engine
        .skip("ehr", 0, "bad sector; message resent by the lab")
        .unwrap();
    sink.wait_accepted(&["after".to_string()], std::time::Duration::from_secs(30));
    stop.shutdown();
    join.join().unwrap();
}

/// A read error that goes away (a flaky cable, a retried controller) must
/// not cost the messages of the other lanes: lane 0 blocks on the record it
/// cannot read, the other lanes wait for lane 0 to pass it, and once it
/// reads again every message reaches its own lane. Seen failing before: the
/// other lanes passed over the unreadable records, lane 0 later found them
/// theirs, and nobody delivered them.
#[test]
fn a_transient_read_error_costs_no_message_on_a_partitioned_destination() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new();
    let sink = delivery_common::Sink::start(delivery_common::accept_all());
    let (engine, stop, join, ids) = partitioned_holding_40(dir.path(), &sim, &sink);
    let first = dir.path().join("queues/lab/00000000000000000000.log");
    let pos = record_start(&sim.contents(&first).unwrap(), 10);
    sim.fail_reads(&first, pos as u64 + 100, 1);
    engine.pause("ehr", false).unwrap();
    let status = wait_status(&engine, |s| s.contains("BLOCKED"));
    assert!(status.contains("class=unreadable-record"), "{status}");
    // The error was transient: the block reads again.
    sim.heal_reads(&first);
    engine.retry("ehr", Some(0)).unwrap();
    sink.wait_accepted(&ids, std::time::Duration::from_secs(30));
    stop.shutdown();
    join.join().unwrap();
}

/// A broker over `sim` with a 4-lane partitioned destination to `sink`,
/// paused, holding m0..m39 (800 bytes each, distinct patients) in the
/// first segment of queue `lab`.
fn partitioned_holding_40(
    dir: &std::path::Path,
    sim: &SimStorage,
    sink: &delivery_common::Sink,
) -> (
    Arc<orderly::delivery::Engine>,
    orderly::server::ShutdownHandle,
    std::thread::JoinHandle<()>,
    Vec<String>,
) {
    let partitioned = "ordering = \"partitioned\"\npartition_key = \"PID-3.1\"\nlanes = 4";
    let config = ehr_config(dir, sink.addr, "", partitioned);
    let (addr, engine, stop, join) = serve(&config, sim);
    engine.pause("ehr", true).unwrap();
    let mut c = Client::connect(addr);
    let ids: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    for id in &ids {
        assert!(c.roundtrip(&oru(id, 800)).0.is_positive());
    }
    (engine, stop, join, ids)
}

/// Where record `n` of a segment starts, walking the records' lengths.
fn record_start(segment: &[u8], n: usize) -> usize {
    (0..n).fold(64usize, |p, _| {
        p + u32::from_le_bytes(segment[p..p + 4].try_into().unwrap()) as usize
    })
}

/// The offset of the blocked head in a status text.
fn blocked_at(status: &str) -> u64 {
    let at = status.find("BLOCKED offset=").expect("a blocked head") + "BLOCKED offset=".len();
    status[at..].split(' ').next().unwrap().parse().unwrap()
}

/// The status text once it satisfies `done` (polled: the lane reports
/// through it; bounded).
fn wait_status(engine: &orderly::delivery::Engine, done: impl Fn(&str) -> bool) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let s = orderly::delivery::render_status(&engine.status());
        if done(&s) || std::time::Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A long damaged run on a partitioned destination: lane 0 blocks on its
/// first record (a damaged record's key cannot be read), the other lanes
/// pass over the whole run in one move and deliver their messages after
/// it; one `skip` dead-letters the run (one letter per offset) and lane 0
/// delivers the rest. Every intact message arrives.
#[test]
fn a_long_damaged_run_costs_only_its_own_records_on_a_partitioned_destination() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new();
    let sink = delivery_common::Sink::start(delivery_common::accept_all());
    let (engine, stop, join, ids) = partitioned_holding_40(dir.path(), &sim, &sink);
    // Records 10..30 overwritten as one stretch (found by their lengths).
    let first = dir.path().join("queues/lab/00000000000000000000.log");
    let bytes = sim.contents(&first).unwrap();
    let (from, to) = (record_start(&bytes, 10), record_start(&bytes, 30));
    sim.overwrite(&first, from as u64, &vec![0x5A; to - from]);
    engine.pause("ehr", false).unwrap();
    let status = wait_status(&engine, |s| s.contains("BLOCKED"));
    assert_eq!(blocked_at(&status), 10, "{status}");
    let intact: Vec<String> = ids[..10].iter().chain(&ids[30..]).cloned().collect();
    // Lanes 1..3 deliver theirs from after the run while lane 0 waits.
    let after_run = |sink: &delivery_common::Sink| {
        sink.received()
            .iter()
            .filter(|r| ids[30..].contains(&r.control_id))
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while after_run(&sink) == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(after_run(&sink) > 0, "the other lanes passed the run");
    engine.skip("ehr", 0, "test: bad stretch").unwrap();
    sink.wait_accepted(&intact, std::time::Duration::from_secs(30));
    let mut got: Vec<String> = sink.received().into_iter().map(|r| r.control_id).collect();
    got.sort();
    got.dedup();
    let mut want = intact.clone();
    want.sort();
    assert_eq!(got, want, "every intact message, no damaged one");
    let (letters, _) = engine
        .dlq_list(&orderly::delivery::dlq_query::DlqFilter::default())
        .unwrap();
    assert_eq!(letters.len(), 20, "one dead letter per damaged offset");
    stop.shutdown();
    join.join().unwrap();
}

/// `dlq list` returns at most its bound over all destinations together,
/// not per destination: with 3 letters in each of two destinations and a
/// bound of 4, the first destination's 3 and the second's first one.
#[test]
fn the_dead_letter_list_bound_holds_over_all_destinations() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new();
    let sink = delivery_common::Sink::start(delivery_common::accept_all());
    let dest = |name: &str| {
        format!(
            "[[destination]]\nname = \"{name}\"\nqueue = \"lab\"\nconnect = \"{}\"\n",
            sink.addr
        )
    };
    let text = format!(
        "data_dir = {:?}\n[[listener]]\nname = \"lab\"\nlisten = \"127.0.0.1:0\"\nqueue = \"lab\"\n{}{}",
        dir.path().display().to_string(),
        dest("ehr"),
        dest("lis")
    );
    let config = Config::parse(&text, "test.toml").expect("config");
    let (addr, engine, stop, join) = serve(&config, &sim);
    engine.pause("ehr", true).unwrap();
    engine.pause("lis", true).unwrap();
    let mut c = Client::connect(addr);
    for id in ["m0", "m1", "m2"] {
        assert!(c.roundtrip(&oru(id, 300)).0.is_positive());
    }
    engine.clear("ehr", None, "test").unwrap();
    engine.clear("lis", None, "test").unwrap();
    let all = orderly::delivery::dlq_query::DlqFilter::default();
    let (letters, _) = engine.dlq_list(&all).unwrap();
    assert_eq!(letters.len(), 6, "3 cleared from each destination");
    let (letters, _) = engine.dlq_list_at_most(&all, 4).unwrap();
    let ids: Vec<String> = letters.iter().map(|l| l.id.clone()).collect();
    assert_eq!(ids, vec!["ehr:0", "ehr:1", "ehr:2", "lis:0"], "{ids:?}");
    stop.shutdown();
    join.join().unwrap();
}

/// A damaged run that starts with records failing their checks and goes on
/// into a block that cannot be read (for now): the other lanes must treat
/// the run like a read error and wait for lane 0, since the unreadable
/// records may be theirs. Lane 0 blocks on the first corrupt record; the
/// reads heal; once it is skipped (with the corrupt run after it) every
/// other message arrives.
#[test]
fn a_corrupt_run_reaching_a_transient_read_error_costs_only_the_corrupt_records() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new();
    let sink = delivery_common::Sink::start(delivery_common::accept_all());
    let (engine, stop, join, ids) = partitioned_holding_40(dir.path(), &sim, &sink);
    let first = dir.path().join("queues/lab/00000000000000000000.log");
    let bytes = sim.contents(&first).unwrap();
    // Read errors are located to 4 KiB blocks: the bad block starts at the
    // first boundary after record 10; records 10 up to the one crossing it
    // are corrupted (readable, failing their checks).
    let block = record_start(&bytes, 11).div_ceil(4096) * 4096;
    let crossing = (11..40)
        .find(|&n| record_start(&bytes, n + 1) > block)
        .unwrap();
    for n in 10..crossing {
        let (a, b) = (record_start(&bytes, n), record_start(&bytes, n + 1));
        sim.corrupt_byte(&first, ((a + b) / 2) as u64);
    }
    sim.fail_reads(&first, block as u64, 4096);
    engine.pause("ehr", false).unwrap();
    let status = wait_status(&engine, |s| s.contains("BLOCKED"));
    assert_eq!(blocked_at(&status), 10, "{status}");
    assert!(status.contains("class=corrupt"), "{status}");
    sim.heal_reads(&first);
    engine.skip("ehr", 0, "test: corrupt records").unwrap();
    let corrupt: Vec<String> = (10..crossing).map(|n| format!("m{n}")).collect();
    let intact: Vec<String> = ids
        .iter()
        .filter(|id| !corrupt.contains(id))
        .cloned()
        .collect();
    sink.wait_accepted(&intact, std::time::Duration::from_secs(30));
    stop.shutdown();
    join.join().unwrap();
}

/// A broker on simulated storage whose WAL writer thread waits in fsync
/// while the gate is shut, so what it was handed stays in flight.
struct GatedBroker {
    addr: std::net::SocketAddr,
    stop: orderly::server::ShutdownHandle,
    metrics: Arc<orderly::metrics::Metrics>,
    join: std::thread::JoinHandle<()>,
    sim: SimStorage,
    gate: Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
    entered: crossbeam_channel::Receiver<()>,
}

impl GatedBroker {
    /// Original-mode answers, `max_inflight` appends per connection.
    /// Commits the event loop makes itself pass the gate: the loop must
    /// stay free to drain.
    fn start(dir: &std::path::Path, max_inflight: usize) -> GatedBroker {
        let text = format!("data_dir = {:?}\n[wal]\nzero_fill_segments = false\n[[listener]]\nname = \"lab\"\nlisten = \"127.0.0.1:0\"\nqueue = \"lab\"\nmax_inflight = {max_inflight}\nack_mode = \"original\"\n", dir.display().to_string());
        let config = Config::parse(&text, "test.toml").expect("config");
        let sim = SimStorage::new();
        let server = Server::start_with(&config, Arc::new(sim.clone())).expect("start");
        let (addr, stop, metrics) = (
            server.bound()[0].1,
            server.shutdown_handle(),
            server.metrics(),
        );
        let join = std::thread::spawn(move || server.run().expect("run"));
        let gate = Arc::new((std::sync::Mutex::new(true), std::sync::Condvar::new()));
        let (entered_tx, entered) = crossbeam_channel::unbounded();
        let g = gate.clone();
        sim.set_sync_hook(Some(Arc::new(move |_: &SimStorage| {
            if std::thread::current().name() != Some("orderly-wal") {
                return;
            }
            let _ = entered_tx.send(());
            let (shut, opened) = &*g;
            let mut shut = shut.lock().unwrap();
            while *shut {
                shut = opened.wait(shut).unwrap();
            }
        })));
        GatedBroker {
            addr,
            stop,
            metrics,
            join,
            sim,
            gate,
            entered,
        }
    }

    fn wait_writer_in_fsync(&self) {
        self.entered
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("an append reached the writer's fsync");
    }

    /// Waits (bounded) until `done` holds of the metrics.
    fn wait_metric(&self, what: &str, done: impl Fn(&orderly::metrics::Metrics) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !done(&self.metrics) {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    /// Shutdown begun: the listener is closed at the start of the drain,
    /// so a connect is refused from then on.
    fn shut_down_and_wait_for_the_drain(&self) {
        self.stop.shutdown();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(self.addr).is_ok() {
            assert!(
                std::time::Instant::now() < deadline,
                "the drain never began"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    fn open_gate(&self) {
        *self.gate.0.lock().unwrap() = false;
        self.gate.1.notify_all();
        self.sim.set_sync_hook(None);
    }

    /// Every answer on `c` until the broker closes it, as (code, MSA-2, text).
    fn answers_then_stop(self, c: &mut Client) -> Vec<(AckCode, String, String)> {
        let mut answers = Vec::new();
        while let Some(ack) = c.recv() {
            let (code, id) = ack_of(&ack);
            answers.push((code, id, String::from_utf8_lossy(&ack).into_owned()));
        }
        self.join.join().unwrap();
        answers
    }
}

fn frames(ids: &[&str], then_half_of: Option<&str>) -> Vec<u8> {
    let mut bytes = Vec::new();
    for id in ids {
        orderly::mllp::encode_frame(&oru(id, 300), &mut bytes);
    }
    if let Some(id) = then_half_of {
        let mut last = Vec::new();
        orderly::mllp::encode_frame(&oru(id, 300), &mut last);
        bytes.extend_from_slice(&last[..last.len() / 2]);
    }
    bytes
}

/// Frames the broker has read but not yet taken when shutdown begins (held
/// back by `max_inflight` behind a message still being stored), and a frame
/// cut off because reading stopped, are answered "not stored, resend
/// later" (AR, HL7 table 0008) in frame order, not dropped with the
/// connection: issue 12 requires that a frame with a readable MSH never
/// ends in a closed connection without an answer.
#[test]
fn shutdown_answers_frames_already_read_instead_of_closing_in_silence() {
    let dir = tempfile::tempdir().unwrap();
    let b = GatedBroker::start(dir.path(), 1);
    let mut c = Client::connect(b.addr);
    c.send_raw(&frames(&["F1", "F2"], Some("F3")));
    b.wait_writer_in_fsync();
    b.stop.shutdown();
    // The drain's answers are counted when they are made (F3's at least).
    b.wait_metric("the cut-off F3 was never answered", |m| {
        m.frames_incomplete
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    });
    b.open_gate();
    let answers = b.answers_then_stop(&mut c);
    let ids: Vec<&str> = answers.iter().map(|a| a.1.as_str()).collect();
    assert_eq!(
        ids,
        ["F1", "F2", "F3"],
        "one answer per frame, in frame order"
    );
    assert_eq!(
        answers[0].0,
        AckCode::ApplicationAccept,
        "F1 was being stored"
    );
    // F2 was either stored before the drain (if the loop committed F1
    // itself) or held back by max_inflight: then AR, resend later.
    for (code, id, ack) in &answers[1..] {
        if *code != AckCode::ApplicationAccept {
            assert_eq!(*code, AckCode::ApplicationReject, "{id}: {ack}");
            assert!(ack.contains("shutting down; resend later"), "{id}: {ack}");
        }
    }
    assert_eq!(answers[2].0, AckCode::ApplicationReject, "F3 was cut off");
}

/// A frame cut off by the peer's close is answered once. Found in review
/// of the drain above: the cut-off frame stayed in the buffer after its
/// NAK, so a shutdown while an earlier append was in flight answered it a
/// second time.
#[test]
fn a_frame_cut_off_by_the_peer_is_answered_once_even_when_shutdown_follows() {
    let dir = tempfile::tempdir().unwrap();
    // Room for more appends, so the loop goes on reading and sees the close.
    let b = GatedBroker::start(dir.path(), 64);
    let mut c = Client::connect(b.addr);
    c.send_raw(&frames(&["P1"], Some("P2")));
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    b.wait_writer_in_fsync();
    b.wait_metric("the peer's close was never seen", |m| {
        m.frames_incomplete
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    });
    b.shut_down_and_wait_for_the_drain();
    b.open_gate();
    let answers = b.answers_then_stop(&mut c);
    let got: Vec<(AckCode, &str)> = answers.iter().map(|a| (a.0, a.1.as_str())).collect();
    assert_eq!(
        got,
        [
            (AckCode::ApplicationAccept, "P1"),
            (AckCode::ApplicationReject, "P2")
        ],
        "one answer per frame"
    );
}
