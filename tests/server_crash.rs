//! kill -9 under load: every message that got a positive ACK survives, in
//! per-connection send order; clean shutdown and restart keep everything.
mod server_common;
use server_common::*;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const CONNECTIONS: usize = 16;

/// Starts `CONNECTIONS` lockstep senders; each records the sequence numbers
/// that got a positive ACK and stops at the first failure.
fn load(
    broker: &Broker,
    round: usize,
    acked: &Arc<Mutex<Vec<Vec<u64>>>>,
    next_seq: &[u64],
) -> (
    Vec<std::thread::JoinHandle<u64>>,
    crossbeam_channel::Receiver<()>,
) {
    let (tx, rx) = crossbeam_channel::unbounded();
    let handles = (0..CONNECTIONS)
        .map(|c| {
            let (addr, acked, tx, start) = (broker.addr(), acked.clone(), tx.clone(), next_seq[c]);
            std::thread::spawn(move || {
                let mut client = Client::connect(addr);
                let mut seq = start;
                loop {
                    client.send(&oru(&format!("c{c}-{seq}"), 300 + (seq as usize % 5) * 250));
                    seq += 1;
                    let Some(ack) = client.recv() else { return seq };
                    let (code, msa2) = ack_of(&ack);
                    assert_eq!(
                        msa2,
                        format!("c{c}-{}", seq - 1),
                        "round {round}: ACK matches the message"
                    );
                    assert!(code.is_positive(), "round {round}: healthy broker accepts");
                    acked.lock().unwrap()[c].push(seq - 1);
                    if tx.send(()).is_err() {
                        return seq;
                    }
                }
            })
        })
        .collect();
    (handles, rx)
}

/// Per connection, the sequence numbers stored, in log order.
fn stored_by_connection(broker: &Broker) -> HashMap<usize, Vec<u64>> {
    let mut by_conn: HashMap<usize, Vec<u64>> = HashMap::new();
    for (_, _, id, _) in inspect(&broker.data_dir, "lab") {
        let (c, s) = id
            .trim_start_matches('c')
            .split_once('-')
            .expect("c<conn>-<seq>");
        by_conn
            .entry(c.parse().unwrap())
            .or_default()
            .push(s.parse().unwrap());
    }
    by_conn
}

fn check(broker: &Broker, acked: &[Vec<u64>], what: &str) {
    let stored = stored_by_connection(broker);
    for (c, acks) in acked.iter().enumerate() {
        let seqs = stored.get(&c).cloned().unwrap_or_default();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "{what}: connection {c} stored out of send order or duplicated: {seqs:?}"
        );
        for s in acks {
            assert!(
                seqs.binary_search(s).is_ok(),
                "{what}: connection {c} message {s} was acknowledged but is missing"
            );
        }
    }
}

#[test]
fn acknowledged_messages_survive_repeated_kill_9_under_16_connection_load() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("lab", "lab", "")]);
    let acked = Arc::new(Mutex::new(vec![Vec::new(); CONNECTIONS]));
    let mut next_seq = vec![0u64; CONNECTIONS];
    for round in 0..4 {
        let mut broker = Broker::start(&config);
        check(
            &broker,
            &acked.lock().unwrap(),
            &format!("after restart {round}"),
        );
        let (handles, acks) = load(&broker, round, &acked, &next_seq);
        for _ in 0..1500 {
            acks.recv_timeout(std::time::Duration::from_secs(60))
                .expect("load makes progress");
        }
        broker.kill9();
        drop(acks);
        for (c, h) in handles.into_iter().enumerate() {
            next_seq[c] = h.join().expect("sender thread");
        }
    }
    let mut broker = Broker::start(&config);
    let total: usize = acked.lock().unwrap().iter().map(Vec::len).sum();
    assert!(total >= 4 * 1500);
    check(&broker, &acked.lock().unwrap(), "after the last kill");
    let before = inspect(&broker.data_dir, "lab").len();
    assert!(broker.terminate().success());
    let broker = Broker::start(&config);
    assert_eq!(
        inspect(&broker.data_dir, "lab").len(),
        before,
        "clean restart keeps everything"
    );
    check(&broker, &acked.lock().unwrap(), "after clean restart");
    let verify = std::process::Command::new(BIN)
        .args(["verify", "--data-dir"])
        .arg(&broker.data_dir)
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

#[test]
fn sigterm_during_load_answers_in_flight_messages_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("lab", "lab", "")]);
    let mut broker = Broker::start(&config);
    let acked = Arc::new(Mutex::new(vec![Vec::new(); CONNECTIONS]));
    let (handles, acks) = load(&broker, 0, &acked, &[0; CONNECTIONS]);
    for _ in 0..500 {
        acks.recv_timeout(std::time::Duration::from_secs(60))
            .expect("progress");
    }
    let status = broker.terminate();
    assert!(
        status.success(),
        "graceful shutdown exits 0: {status:?}\n{}",
        broker.stderr()
    );
    drop(acks);
    for h in handles {
        h.join()
            .expect("senders saw only positive ACKs, then a close");
    }
    let broker = Broker::start(&config);
    check(&broker, &acked.lock().unwrap(), "after SIGTERM");
}
