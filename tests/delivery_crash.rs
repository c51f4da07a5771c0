//! kill -9 of the broker during delivery, 20 times in one test, with a
//! downstream that rejects some messages (AR: dead-lettered) and drops the
//! connection on the first receipt of others (retried), as well as
//! accepting: no message that got a positive ACK from Orderly is missing
//! downstream or from the dead-letter queue; within each broker incarnation,
//! deliveries (retries and redeliveries included) follow per-connection
//! order on the strict destination and per-key order on the partitioned
//! one; and every duplicate is a redelivery across a crash.
mod delivery_common;
mod server_common;
use delivery_common::*;
use server_common::{ack_of, Broker, Client};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 4;
const ROUNDS: usize = 20;
/// Messages a sender sends per round at most: the kill comes after 80
/// acknowledgements in all, so senders are still sending when it comes,
/// but the backlog a slow (dropping) downstream must drain stays bounded.
const PER_ROUND_MAX: u64 = 120;

fn key_of(id: &str) -> String {
    let (c, s) = id.trim_start_matches('c').split_once('-').unwrap();
    format!("KEY{c}-{}", s.parse::<u64>().unwrap() % 3)
}

/// Sequence number of `id` within its connection (or key group).
fn seq_of(id: &str) -> (String, u64) {
    let (c, s) = id.split_once('-').unwrap();
    (c.to_string(), s.parse().unwrap())
}

/// Refused downstream (AE: an error in the message) on every receipt:
/// these end in the DLQ.
fn rejected(id: &str) -> bool {
    seq_of(id).1 % 17 == 5
}

/// The downstream drops the connection at the first receipt of these.
fn dropped_once(id: &str) -> bool {
    seq_of(id).1 % 29 == 7
}

fn script() -> Script {
    Arc::new(|id, n| {
        if rejected(id) {
            Reply::Error
        } else if dropped_once(id) && n == 1 {
            Reply::Drop
        } else {
            Reply::Accept
        }
    })
}

/// Which broker incarnation sent a frame: the number of kills before the
/// downstream accepted the connection it came on.
fn incarnation(r: &Received, kills: &[Instant]) -> usize {
    kills.iter().filter(|k| **k < r.conn_opened).count()
}

/// Within one incarnation a lane never goes back: each frame of a group is
/// the same message again (a retry) or a later one.
fn check_order_per_incarnation(
    received: &[Received],
    kills: &[Instant],
    group: impl Fn(&str) -> String,
    what: &str,
) {
    let mut last: HashMap<(usize, String), u64> = HashMap::new();
    for r in received {
        let key = (incarnation(r, kills), group(&r.control_id));
        let (_, s) = seq_of(&r.control_id);
        if let Some(prev) = last.insert(key.clone(), s) {
            assert!(
                s >= prev,
                "{what}: incarnation {} sent {} ({s}) after {prev} of {}",
                key.0,
                r.control_id,
                key.1
            );
        }
    }
}

/// A redelivery is legitimate only if the broker that sent it connected
/// after a kill that came after the connection of the earlier delivery (the
/// sink may read the old broker's last frames after the kill).
fn check_duplicates_straddle_kills(received: &[Received], kills: &[Instant], what: &str) {
    let mut first: HashMap<&str, Instant> = HashMap::new();
    let mut dups = 0;
    for r in received.iter().filter(|r| r.reply == Reply::Accept) {
        match first.get(r.control_id.as_str()) {
            None => {
                first.insert(&r.control_id, r.conn_opened);
            }
            Some(&opened) => {
                dups += 1;
                assert!(
                    kills.iter().any(|k| *k > opened && *k < r.conn_opened),
                    "{what}: {} delivered twice without a crash in between",
                    r.control_id
                );
                first.insert(&r.control_id, r.conn_opened);
            }
        }
    }
    eprintln!("{what}: {dups} redeliveries across {} crashes", kills.len());
}

/// Control ids in a destination's dead-letter queue.
fn dead_lettered(data_dir: &std::path::Path, destination: &str) -> HashSet<String> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orderly"))
        .args(["inspect", destination, "--dlq", "--data-dir"])
        .arg(data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split(' ').nth(3).unwrap().to_string())
        .collect()
}

#[test]
fn acknowledged_messages_reach_every_destination_in_order_across_20_kill_9s() {
    let dir = tempfile::tempdir().unwrap();
    let strict = Sink::start(script());
    let part = Sink::start(script());
    let dests = [
        destination("strict", strict.addr, ""),
        destination(
            "part",
            part.addr,
            "ordering = \"partitioned\"\npartition_key = \"PID-3.1\"\nlanes = 4",
        ),
    ]
    .join("\n");
    let config = config_with(dir.path(), &dests);
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut next_seq = [0u64; CONNECTIONS];
    let mut kills = Vec::new();
    let mut broker = Broker::start(&config);
    for round in 0..ROUNDS {
        let delivered_before = strict.received().len();
        let (tx, rx) = crossbeam_channel::unbounded();
        let handles: Vec<_> = (0..CONNECTIONS)
            .map(|c| {
                let (addr, acked, tx, mut seq) =
                    (broker.addr(), acked.clone(), tx.clone(), next_seq[c]);
                std::thread::spawn(move || {
                    let mut client = Client::connect(addr);
                    let stop_at = seq + PER_ROUND_MAX;
                    while seq < stop_at {
                        let id = format!("c{c}-{seq}");
                        client.send(&keyed(&id, &key_of(&id)));
                        seq += 1;
                        let Some(ack) = client.recv() else { return seq };
                        let (code, msa2) = ack_of(&ack);
                        assert!(code.is_positive() && msa2 == id, "round {round}");
                        acked.lock().unwrap().push(id);
                        if tx.send(()).is_err() {
                            return seq;
                        }
                    }
                    // Idle until the kill closes the connection.
                    let _ = client.recv();
                    seq
                })
            })
            .collect();
        for _ in 0..80 {
            rx.recv_timeout(Duration::from_secs(60))
                .expect("ingest progresses");
        }
        // Kill while deliveries are under way.
        strict.wait_until(Duration::from_secs(60), "deliveries under way", |log| {
            log.len() >= delivered_before + 20
        });
        broker.kill9();
        // After the kill returned: everything received later came from the next broker.
        kills.push(Instant::now());
        drop(rx);
        for (c, h) in handles.into_iter().enumerate() {
            next_seq[c] = h.join().unwrap();
        }
        broker = Broker::start(&config);
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= ROUNDS * 80);
    let (will_reject, will_accept): (Vec<String>, Vec<String>) =
        acked.iter().cloned().partition(|id| rejected(id));
    assert!(!will_reject.is_empty() && will_accept.iter().any(|id| dropped_once(id)));
    strict.wait_accepted(&will_accept, Duration::from_secs(120));
    part.wait_accepted(&will_accept, Duration::from_secs(120));
    // Every rejected message was offered (so its dead-letter record is being written).
    for sink in [&strict, &part] {
        sink.wait_until(
            Duration::from_secs(120),
            "every rejected message offered",
            |log| {
                will_reject
                    .iter()
                    .all(|id| log.iter().any(|r| &r.control_id == id))
            },
        );
    }
    assert!(broker.terminate().success());
    let data_dir = dir.path().join("data");
    for dest in ["strict", "part"] {
        let dlq = dead_lettered(&data_dir, dest);
        for id in &will_reject {
            assert!(
                dlq.contains(id),
                "{dest}: rejected {id} is not in the dead-letter queue"
            );
        }
        for id in &dlq {
            assert!(
                rejected(id),
                "{dest}: {id} dead-lettered but never rejected"
            );
        }
    }
    let (s, p) = (strict.received(), part.received());
    for r in s.iter().chain(&p).filter(|r| r.reply == Reply::Accept) {
        assert!(
            !rejected(&r.control_id),
            "{} accepted despite AR",
            r.control_id
        );
    }
    check_order_per_incarnation(&s, &kills, |id| seq_of(id).0, "strict, per connection");
    check_order_per_incarnation(&p, &kills, key_of, "partitioned, per key");
    check_duplicates_straddle_kills(&s, &kills, "strict");
    check_duplicates_straddle_kills(&p, &kills, "partitioned");
}
