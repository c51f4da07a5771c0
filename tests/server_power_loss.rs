//! Power loss under the whole server: event loop, WAL writer, cursor store
//! and delivery run in process over simulated storage while pipelining
//! clients send and a downstream accepts. The storage is captured at every
//! fsync (every flush point); for each capture power is cut (each unsynced
//! sector survives or not, in any order) and a new broker recovers it.
//!
//! Checked after every recovery:
//! - every message that got AA is in the queue, in its connection's order;
//! - every message that was acknowledged or delivered keeps its offset (no
//!   offset is ever reused for another message);
//! - nothing delivered downstream was lost (delivered means durable);
//! - no cursor is past the log's end.
//!
//! Some recoveries are themselves crashed at every flush point while they
//! redeliver, and the same holds for what they delivered.
//!
//! The harness is shown to fail when acknowledgements do not wait for
//! fsync (`fsync = "never"`): see the last test.
mod delivery_common;
mod server_common;
use delivery_common::{accept_all, Sink};
use orderly::config::Config;
use orderly::server::Server;
use orderly::storage::{SimStorage, SyncHook};
use orderly::wal::{Log, Offset, WalError};
use parking_lot::Mutex;
use server_common::{ack_of, Client};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How the clients send: connections, messages each, frames in flight.
#[derive(Clone, Copy)]
struct Shape {
    connections: usize,
    per_connection: u64,
    window: u64,
}

/// Pipelining clients: the writer thread commits their group batches.
const PIPELINED: Shape = Shape {
    connections: 3,
    per_connection: 48,
    window: 6,
};

/// One lockstep sender: the event loop commits each append itself
/// (`Appender::try_commit_inline`), with no writer-thread hand-off.
const LONE: Shape = Shape {
    connections: 1,
    per_connection: 40,
    window: 1,
};

/// The test names the broker's event-loop thread, so a sync hook can tell
/// an inline commit from the writer thread's.
const EVENT_LOOP_THREAD: &str = "test-event-loop";

fn config_text(root: &Path, sink: std::net::SocketAddr, fsync: &str) -> String {
    format!(
        "data_dir = {:?}\n\
         [wal]\nsegment_bytes = 65536\nfsync = \"{fsync}\"\n\
         [[listener]]\nname = \"lab\"\nlisten = \"127.0.0.1:0\"\nqueue = \"lab\"\n\
         [[destination]]\nname = \"ehr\"\nqueue = \"lab\"\nconnect = \"{sink}\"\nack_timeout_ms = 2000\n\
         [destination.retry]\nmax_attempts = 1000\ninitial_backoff_ms = 10\nmax_backoff_ms = 50\njitter = 0.0\n",
        root.join("data").display().to_string()
    )
}

fn message(id: &str) -> Vec<u8> {
    let mut m = format!("MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261127||ORU^R01|{id}|P|2.5\rPID|1||MRN-{id}^^^HOSP^MR\rOBX|1|TX|NOTE||").into_bytes();
    m.resize(m.len() + 500, b'x');
    m.push(b'\r');
    m
}

/// A broker running in this process over `storage`.
struct Running {
    addr: std::net::SocketAddr,
    stop: orderly::server::ShutdownHandle,
    thread: std::thread::JoinHandle<()>,
    engine: Arc<orderly::delivery::Engine>,
}

fn start(storage: &SimStorage, config: &Config) -> Running {
    let server = Server::start_with(config, Arc::new(storage.clone())).expect("broker starts");
    let addr = server.bound()[0].1;
    let stop = server.shutdown_handle();
    let engine = server.engine();
    let thread = std::thread::Builder::new()
        .name(EVENT_LOOP_THREAD.into())
        .spawn(move || server.run().expect("run"))
        .unwrap();
    Running {
        addr,
        stop,
        thread,
        engine,
    }
}

impl Running {
    fn stop(self) {
        self.stop.shutdown();
        self.thread.join().expect("broker thread");
    }
}

/// What the outside world saw before a capture: per connection the ids
/// acknowledged AA, and how many frames the downstream had accepted.
#[derive(Clone, Default)]
struct Seen {
    acked: Vec<Vec<String>>,
    delivered: usize,
}

struct Capture {
    storage: SimStorage,
    seen: Seen,
    /// The sync ran on the event-loop thread (an inline commit).
    inline: bool,
}

/// Installs a hook capturing the storage (and, first, what was seen: it
/// only grows, so it is a lower bound for the state forked after it).
fn capture_every_sync(
    sim: &SimStorage,
    acked: &Arc<Mutex<Vec<Vec<String>>>>,
    sink: &Arc<Sink>,
) -> Arc<Mutex<Vec<Capture>>> {
    let caps = Arc::new(Mutex::new(Vec::new()));
    let (c, a, s) = (caps.clone(), acked.clone(), sink.clone());
    let hook: SyncHook = Arc::new(move |storage: &SimStorage| {
        let seen = Seen {
            acked: a.lock().clone(),
            delivered: s.accepted_ids().len(),
        };
        let inline = std::thread::current().name() == Some(EVENT_LOOP_THREAD);
        c.lock().push(Capture {
            storage: storage.fork(),
            seen,
            inline,
        });
    });
    sim.set_sync_hook(Some(hook));
    caps
}

/// Pipelining clients: each sends a window of frames, then reads their ACKs.
fn send_all(addr: std::net::SocketAddr, acked: &Arc<Mutex<Vec<Vec<String>>>>, shape: Shape) {
    let Shape {
        connections,
        per_connection,
        window,
    } = shape;
    let threads: Vec<_> = (0..connections)
        .map(|c| {
            let acked = acked.clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                let mut seq = 0;
                while seq < per_connection {
                    let ids: Vec<String> =
                        (seq..seq + window).map(|s| format!("c{c}-{s}")).collect();
                    for id in &ids {
                        client.send(&message(id));
                    }
                    for id in &ids {
                        let (code, msa2) = ack_of(&client.recv().expect("an ACK"));
                        assert_eq!(&msa2, id, "ACKs in frame order");
                        if code.is_positive() {
                            acked.lock()[c].push(id.clone());
                        }
                    }
                    seq += window;
                }
            })
        })
        .collect();
    threads.into_iter().for_each(|t| t.join().expect("client"));
}

/// The queue as a reader sees it: control id of each intact offset.
fn queue_of(storage: &SimStorage, data: &Path) -> Vec<Option<String>> {
    let log = Log::open_with(
        Arc::new(storage.clone()),
        &data.join("queues/lab"),
        orderly::wal::LogConfig {
            segment_bytes: 65536,
            ..Default::default()
        },
    )
    .expect("queue opens");
    (0..log.end_offset().0)
        .map(|o| match log.read(Offset(o)) {
            Ok(r) => Some(id_of(&r.payload)),
            Err(WalError::Corrupt { .. } | WalError::Unreadable { .. }) => None,
            Err(e) => panic!("offset {o}: {e}"),
        })
        .collect()
}

fn id_of(payload: &[u8]) -> String {
    let h = orderly::hl7::parse_header(payload).expect("stored message has an MSH");
    String::from_utf8_lossy(h.control_id()).into_owned()
}

fn offsets(queue: &[Option<String>]) -> HashMap<String, u64> {
    queue
        .iter()
        .enumerate()
        .filter_map(|(o, id)| id.clone().map(|id| (id, o as u64)))
        .collect()
}

/// Checks a recovered queue against what was seen before the power loss
/// and against the queue as the running broker had it (`before`).
fn check(
    recovered: &[Option<String>],
    before: &[Option<String>],
    seen: &Seen,
    delivered: &[String],
    what: &str,
) -> Result<(), String> {
    let (now, then) = (offsets(recovered), offsets(before));
    for (c, ids) in seen.acked.iter().enumerate() {
        let mut last = None;
        for id in ids {
            let Some(&o) = now.get(id) else {
                return Err(format!("{what}: {id} got AA but is not in the queue"));
            };
            if last.is_some_and(|l| l >= o) {
                return Err(format!("{what}: connection {c}: {id} stored out of order"));
            }
            last = Some(o);
        }
    }
    let published = seen
        .acked
        .iter()
        .flatten()
        .chain(&delivered[..seen.delivered]);
    for id in published {
        match (then.get(id), now.get(id)) {
            (Some(a), Some(b)) if a == b => {}
            (a, b) => {
                return Err(format!(
                    "{what}: {id} was at offset {a:?} and is now at {b:?}"
                ))
            }
        }
    }
    let mut per_conn: HashMap<&str, u64> = HashMap::new();
    for id in recovered.iter().flatten() {
        let (c, s) = id.split_once('-').expect("c<conn>-<seq>");
        let s: u64 = s.parse().expect("seq");
        if per_conn.insert(c, s).is_some_and(|prev| prev >= s) {
            return Err(format!(
                "{what}: {id} stored after a later message of its connection"
            ));
        }
    }
    Ok(())
}

fn no_halt(engine: &orderly::delivery::Engine, what: &str) -> Result<(), String> {
    match engine.status().iter().find_map(|d| d.halt.clone()) {
        Some(h) => Err(format!(
            "{what}: a cursor is past the log end after recovery: {h}"
        )),
        None => Ok(()),
    }
}

struct Run {
    root: tempfile::TempDir,
    captures: Vec<Capture>,
    delivered: Vec<String>,
    config: Config,
}

/// The first broker: all messages sent, all delivered, captured at every sync.
fn first_incarnation(fsync: &str, shape: Shape) -> Run {
    let root = tempfile::tempdir().unwrap();
    let sim = SimStorage::with_root(root.path());
    let sink = Arc::new(Sink::start(accept_all()));
    let config = Config::parse(&config_text(root.path(), sink.addr, fsync), "test.toml").unwrap();
    let acked = Arc::new(Mutex::new(vec![Vec::new(); shape.connections]));
    let caps = capture_every_sync(&sim, &acked, &sink);
    let broker = start(&sim, &config);
    send_all(broker.addr, &acked, shape);
    let all: Vec<String> = acked.lock().iter().flatten().cloned().collect();
    sink.wait_accepted(&all, Duration::from_secs(60));
    broker.stop();
    sim.set_sync_hook(None);
    let captures = std::mem::take(&mut *caps.lock());
    Run {
        root,
        captures,
        delivered: sink.accepted_ids(),
        config,
    }
}

/// Recovers one power-loss image with a fresh broker (delivering to a new
/// downstream), checks it, and returns the recovered queue.
fn recover(
    run: &Run,
    image: &SimStorage,
    cap: &Capture,
    what: &str,
) -> Result<Vec<Option<String>>, String> {
    let broker = start(
        image,
        &with_sink(&run.config, Sink::start(accept_all()).addr),
    );
    let halted = no_halt(&broker.engine, what);
    broker.stop();
    halted?;
    let data = run.root.path().join("data");
    let recovered = queue_of(image, &data);
    let before = queue_of(&cap.storage.crash(None), &data);
    check(&recovered, &before, &cap.seen, &run.delivered, what)?;
    Ok(recovered)
}

fn with_sink(config: &Config, sink: std::net::SocketAddr) -> Config {
    let mut c = config.clone();
    c.destinations[0].connect = sink.to_string();
    c
}

/// A broker on a recovered image redelivers everything downstream; an
/// operator skips each damaged run it blocks on (a batch torn by the power
/// loss leaves holes that may hold acknowledged data: never skipped
/// silently). Its own flush points are captured, cut and checked too.
fn second_incarnation(run: &Run, image: &SimStorage, cap: &Capture, ci: usize) -> Vec<String> {
    let data = run.root.path().join("data");
    // Delivery resumes at the durable cursor: what is before it was delivered.
    let cursor = orderly::cursor::check_file(image, &data.join("cursors/ehr.cur"))
        .map_or(0, |c| c.cursors[0].next_offset.0) as usize;
    let queue = queue_of(image, &data);
    let pending = queue.get(cursor..).unwrap_or_default();
    let holes = pending.iter().filter(|q| q.is_none()).count();
    let expected: Vec<String> = pending.iter().flatten().cloned().collect();
    let second = image.fork();
    let sink = Arc::new(Sink::start(accept_all()));
    let acked = Arc::new(Mutex::new(cap.seen.acked.clone()));
    let caps = capture_every_sync(&second, &acked, &sink);
    let broker = start(&second, &with_sink(&run.config, sink.addr));
    let mut skips = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let delivered = sink.accepted_ids();
        if expected.iter().all(|id| delivered.contains(id)) {
            break;
        }
        let status = broker.engine.status();
        let head = status[0].lanes[0].head.clone();
        if let Some(h) =
            head.filter(|h| h.class.name() == "corrupt" || h.class.name() == "unreadable-record")
        {
            assert_eq!(
                h.status,
                orderly::cursor::HeadStatus::Blocked,
                "a damaged head blocks"
            );
            broker
                .engine
                .skip("ehr", 0, "power loss tore this batch")
                .expect("skip");
            skips += 1;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "capture {ci}: redelivery stalled: {}",
            orderly::delivery::render_status(&status)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    broker.stop();
    second.set_sync_hook(None);
    let mut failures = Vec::new();
    let dead = Log::open_with(
        Arc::new(second.clone()),
        &data.join("dlq/ehr"),
        orderly::delivery::dlq::dlq_log_config(),
    )
    .expect("dead letters open")
    .end_offset();
    if dead.0 != holes as u64 {
        failures.push(format!(
            "capture {ci}: {holes} damaged record(s), {} dead-lettered after {skips} skip(s)",
            dead.0
        ));
    }
    let delivered = sink.accepted_ids();
    for (k, cap2) in caps.lock().iter().enumerate() {
        let image2 = cap2.storage.power_loss((ci * 1000 + k) as u64);
        let what = format!("capture {ci}, then its recovery's sync {k}");
        let seen = Seen {
            acked: cap.seen.acked.clone(),
            delivered: cap2.seen.delivered,
        };
        let recovered = queue_of(&image2, &data);
        let before = queue_of(&cap2.storage.crash(None), &data);
        if let Err(e) = check(&recovered, &before, &seen, &delivered, &what) {
            failures.push(e);
        }
    }
    failures
}

/// Every capture is cut and recovered; every fifth recovery is itself
/// captured while it redelivers, cut again, and recovered.
fn power_loss_everywhere(run: &Run) -> Vec<String> {
    let mut failures = Vec::new();
    for (ci, cap) in run.captures.iter().enumerate() {
        let image = cap.storage.power_loss(ci as u64);
        let what = format!("capture {ci}/{}", run.captures.len());
        if let Err(e) = recover(run, &image, cap, &what) {
            failures.push(e);
            continue;
        }
        if ci % 5 != 0 {
            continue;
        }
        failures.extend(second_incarnation(run, &image, cap, ci));
    }
    failures
}

#[test]
fn acknowledged_and_delivered_messages_survive_power_loss_at_every_flush_point() {
    let run = first_incarnation("always", PIPELINED);
    assert!(
        run.captures.len() > 50,
        "{} flush points",
        run.captures.len()
    );
    assert_eq!(
        run.delivered.len() as u64,
        PIPELINED.connections as u64 * PIPELINED.per_connection
    );
    let failures = power_loss_everywhere(&run);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// A lone lockstep sender is committed on the event-loop thread itself
/// (no hand-off to the writer thread): the same guarantees at every flush
/// point, and the captures show the inline path was the one taken.
#[test]
fn a_lone_sender_committed_inline_survives_power_loss_at_every_flush_point() {
    let run = first_incarnation("always", LONE);
    let inline = run.captures.iter().filter(|c| c.inline).count();
    assert!(
        inline * 2 > LONE.per_connection as usize,
        "only {inline} of {} messages were committed inline",
        LONE.per_connection
    );
    assert_eq!(run.delivered.len() as u64, LONE.per_connection);
    let failures = power_loss_everywhere(&run);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The harness can fail: when acknowledgements do not wait for the fsync,
/// power loss costs acknowledged messages and the checks above say so.
#[test]
fn the_harness_catches_acknowledgements_that_do_not_wait_for_fsync() {
    let run = first_incarnation("never", PIPELINED);
    let failures = power_loss_everywhere(&run);
    assert!(
        failures
            .iter()
            .any(|f| f.contains("got AA but is not in the queue")),
        "power loss after unsynced acknowledgements went unnoticed"
    );
}
