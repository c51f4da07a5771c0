//! kill -9 of the broker during delivery, 20 times in one test: no message
//! that got a positive ACK from Orderly is missing downstream, per-connection
//! order holds for the strict destination and per-key order for the
//! partitioned one, and every duplicate is a redelivery across a crash.
mod delivery_common;
mod server_common;
use delivery_common::*;
use server_common::{ack_of, Broker, Client};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CONNECTIONS: usize = 4;
const ROUNDS: usize = 20;

fn key_of(id: &str) -> String {
    let (c, s) = id.trim_start_matches('c').split_once('-').unwrap();
    format!("KEY{c}-{}", s.parse::<u64>().unwrap() % 3)
}

/// Sequence number of `id` within its connection (or key group).
fn seq_of(id: &str) -> (String, u64) {
    let (c, s) = id.split_once('-').unwrap();
    (c.to_string(), s.parse().unwrap())
}

fn check_order(received: &[Received], group: impl Fn(&str) -> String, what: &str) {
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut seen = HashSet::new();
    for r in received.iter().filter(|r| r.reply == Reply::Accept) {
        if !seen.insert(r.control_id.clone()) {
            continue;
        }
        let g = group(&r.control_id);
        let (_, s) = seq_of(&r.control_id);
        if let Some(prev) = last.insert(g.clone(), s) {
            assert!(s > prev, "{what}: {g} delivered {s} after {prev}");
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

#[test]
fn acknowledged_messages_reach_every_destination_in_order_across_20_kill_9s() {
    let dir = tempfile::tempdir().unwrap();
    let strict = Sink::start(accept_all());
    let part = Sink::start(accept_all());
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
    for round in 0..ROUNDS {
        let mut broker = Broker::start(&config);
        let delivered_before = strict.received().len();
        let (tx, rx) = crossbeam_channel::unbounded();
        let handles: Vec<_> = (0..CONNECTIONS)
            .map(|c| {
                let (addr, acked, tx, mut seq) =
                    (broker.addr(), acked.clone(), tx.clone(), next_seq[c]);
                std::thread::spawn(move || {
                    let mut client = Client::connect(addr);
                    loop {
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
    }
    let _broker = Broker::start(&config);
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= ROUNDS * 80);
    strict.wait_accepted(&acked, Duration::from_secs(120));
    part.wait_accepted(&acked, Duration::from_secs(120));
    let (s, p) = (strict.received(), part.received());
    check_order(&s, |id| seq_of(id).0, "strict, per connection");
    check_order(&p, key_of, "partitioned, per key");
    check_duplicates_straddle_kills(&s, &kills, "strict");
    check_duplicates_straddle_kills(&p, &kills, "partitioned");
}
