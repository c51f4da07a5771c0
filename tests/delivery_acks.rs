//! What a downstream's answer means, through the real binary: table 0008
//! defaults (AR retried, AE dead-lettered), per-destination `ack_codes`,
//! MLLP release 2 commit blocks, and stale or duplicate ACKs that must
//! never confirm a later message.
mod delivery_common;
mod server_common;
use delivery_common::*;
use orderly::mllp::{Decoded, FrameDecoder};
use parking_lot::{Condvar, Mutex};
use server_common::{oru, Broker, Client};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);

fn send_all(broker: &Broker, msgs: &[Vec<u8>]) {
    let mut c = Client::connect(broker.addr());
    for m in msgs {
        assert!(c.roundtrip(m).0.is_positive());
    }
}

#[test]
fn by_default_ar_is_retried_and_ae_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    // Table 0008: AR = not processed for a reason unrelated to the message
    // (may be resent); AE = an error in the message (resending it unchanged
    // fails again).
    let sink = Sink::start(Arc::new(|id, n| match (id, n) {
        ("BUSY", 1 | 2) => Reply::Reject,
        ("BAD", _) => Reply::Error,
        _ => Reply::Accept,
    }));
    let config = config_with(dir.path(), &destination("ehr", sink.addr, ""));
    let broker = Broker::start(&config);
    send_all(
        &broker,
        &[oru("BUSY", 200), oru("BAD", 200), oru("NEXT", 200)],
    );
    sink.wait_accepted(&["BUSY".into(), "NEXT".into()], WAIT);
    let log: Vec<(String, Reply)> = sink
        .received()
        .into_iter()
        .map(|r| (r.control_id, r.reply))
        .collect();
    let expected: Vec<(String, Reply)> = [
        ("BUSY", Reply::Reject),
        ("BUSY", Reply::Reject),
        ("BUSY", Reply::Accept),
        ("BAD", Reply::Error),
        ("NEXT", Reply::Accept),
    ]
    .into_iter()
    .map(|(id, r)| (id.to_string(), r))
    .collect();
    assert_eq!(log, expected, "AR retried until accepted, AE sent once");
    let status = ctl_status_until(&config, WAIT, |s| s.contains("dead_lettered=1"));
    assert!(status.contains("dead_lettered=1"), "{status}");
}

#[test]
fn ack_codes_per_destination_override_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    // A downstream that answers AE for "accepted with warnings".
    let sink = Sink::start(Arc::new(|id, _| match id {
        "WARN" => Reply::Error,
        _ => Reply::Accept,
    }));
    let extra = "[destination.ack_codes]\nsuccess = [\"AA\", \"CA\", \"AE\"]";
    let config = config_with(dir.path(), &destination("ehr", sink.addr, extra));
    let broker = Broker::start(&config);
    send_all(&broker, &[oru("WARN", 200), oru("NEXT", 200)]);
    sink.wait_accepted(&["NEXT".into()], WAIT);
    let status = ctl_status_until(&config, WAIT, |s| s.contains("delivered=2"));
    assert!(
        status.contains("delivered=2") && status.contains("dead_lettered=0"),
        "{status}"
    );
    assert_eq!(
        sink.received()
            .iter()
            .filter(|r| r.control_id == "WARN")
            .count(),
        1
    );
}

/// (connection number, control id, payload) of every frame received, and
/// a signal on each.
type ReceiptLog = (Mutex<Vec<(usize, String, Vec<u8>)>>, Condvar);

/// A downstream whose answers are scripted byte for byte, per connection.
struct Scripted {
    addr: SocketAddr,
    log: Arc<ReceiptLog>,
}

type Answer = dyn Fn(usize, &str, usize) -> Vec<u8> + Send + Sync;

impl Scripted {
    /// `answer(connection, control id, n-th receipt of that id)` is written
    /// back, in one write, for each frame.
    fn start(answer: Arc<Answer>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let log: Arc<ReceiptLog> = Arc::default();
        let shared = log.clone();
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(conn) = conn else { return };
                let (log, answer) = (shared.clone(), answer.clone());
                std::thread::spawn(move || serve(n, conn, &log, &*answer));
            }
        });
        Scripted { addr, log }
    }

    fn wait_until(&self, what: &str, done: impl Fn(&[(usize, String, Vec<u8>)]) -> bool) {
        let deadline = Instant::now() + WAIT;
        let mut log = self.log.0.lock();
        while !done(&log) {
            if self.log.1.wait_until(&mut log, deadline).timed_out() {
                panic!(
                    "timed out waiting for {what}: {:?}",
                    log.iter().map(|l| (l.0, &l.1)).collect::<Vec<_>>()
                );
            }
        }
    }
}

fn serve(n: usize, mut conn: std::net::TcpStream, log: &ReceiptLog, answer: &Answer) {
    let mut dec = FrameDecoder::new(1 << 20);
    let (mut buf, mut chunk) = (Vec::new(), [0u8; 8192]);
    loop {
        while let Decoded::Frame(r) = dec.decode(&buf) {
            let payload = buf[r].to_vec();
            let id = orderly::hl7::parse_header(&payload)
                .map(|h| String::from_utf8_lossy(h.control_id()).into_owned())
                .unwrap_or_default();
            let nth = {
                let mut l = log.0.lock();
                let nth = l.iter().filter(|e| e.1 == id).count() + 1;
                l.push((n, id.clone(), payload));
                log.1.notify_all();
                nth
            };
            let bytes = answer(n, &id, nth);
            if !bytes.is_empty() && conn.write_all(&bytes).is_err() {
                return;
            }
        }
        dec.compact(&mut buf);
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(k) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

fn framed(ack: &str) -> Vec<u8> {
    let mut f = vec![0x0b];
    f.extend_from_slice(ack.as_bytes());
    f.extend_from_slice(b"\x1c\r");
    f
}

fn aa(ack_id: &str, id: &str) -> Vec<u8> {
    framed(&format!(
        "MSH|^~\\&|EHR|HOSP|LAB|HOSP|20261127120000||ACK^R01^ACK|{ack_id}|P|2.5\rMSA|AA|{id}\r"
    ))
}

const COMMIT: &[u8] = b"\x0b\x06\x1c\r";

/// Regression: a second commit block left in the socket after M1's answer
/// was read as M2's, so M2 counted as delivered although the downstream
/// never answered it. Now bytes left over are drained before each send.
#[test]
fn a_late_commit_block_never_confirms_the_next_message() {
    let dir = tempfile::tempdir().unwrap();
    let downstream = Scripted::start(Arc::new(|conn, id, _| match (conn, id) {
        // Two commit blocks for M1 in one write; M2 never answered.
        (0, "M1") => [COMMIT, COMMIT].concat(),
        (0, _) => Vec::new(),
        _ => COMMIT.to_vec(),
    }));
    let config = config_with(
        dir.path(),
        &destination("ehr", downstream.addr, "mllp_r2 = true"),
    );
    let broker = Broker::start(&config);
    send_all(&broker, &[oru("M1", 200), oru("M2", 200), oru("M3", 200)]);
    downstream.wait_until("M3 delivered", |log| log.iter().any(|l| l.1 == "M3"));
    let log = downstream.log.0.lock().clone();
    let m2: Vec<usize> = log.iter().filter(|l| l.1 == "M2").map(|l| l.0).collect();
    assert_eq!(
        m2,
        vec![0, 1],
        "M2 unanswered on the first connection, resent on the next"
    );
}

#[test]
fn commit_blocks_do_not_count_unless_the_destination_speaks_mllp_r2() {
    let dir = tempfile::tempdir().unwrap();
    // A commit block, then (on a new connection) a real ACK.
    let downstream = Scripted::start(Arc::new(|conn, id, _| match conn {
        0 => COMMIT.to_vec(),
        _ => aa("A2", id),
    }));
    let config = config_with(dir.path(), &destination("ehr", downstream.addr, ""));
    let broker = Broker::start(&config);
    send_all(&broker, &[oru("C1", 200)]);
    downstream.wait_until("C1 resent", |log| {
        log.iter().filter(|l| l.1 == "C1").count() == 2
    });
    let status = ctl_status_until(&config, WAIT, |s| s.contains("delivered=1"));
    assert!(status.contains("delivered=1"), "{status}");
}

/// Regression: repeated MSH-10s are common. A stale copy of the ACK for
/// the first "R" (as node-hl7-server sends, its buffer never cleared)
/// named the same control id as the second "R" and confirmed it.
#[test]
fn a_stale_duplicate_ack_never_confirms_a_message_with_the_same_control_id() {
    let dir = tempfile::tempdir().unwrap();
    let downstream = Scripted::start(Arc::new(|conn, id, nth| match (conn, id, nth) {
        // The first R is answered; the second R only gets that same ACK again.
        (0, "R", _) => aa("ACK-1", "R"),
        (_, id, _) => aa(&format!("ACK-{conn}-{nth}"), id),
    }));
    // The sender reuses control id R for two different messages; the queue
    // stores both (the default would refuse the second as a key conflict).
    let queue = "[[queue]]\nname = \"lab\"\non_key_conflict = \"accept\"\n";
    let config = config_with(
        dir.path(),
        &format!("{queue}{}", destination("ehr", downstream.addr, "")),
    );
    let broker = Broker::start(&config);
    let (first, second) = (oru("R", 200), oru("R", 260));
    send_all(&broker, &[first.clone(), second.clone(), oru("N", 200)]);
    downstream.wait_until("N delivered", |log| log.iter().any(|l| l.1 == "N"));
    let log = downstream.log.0.lock().clone();
    let second_receipts: Vec<usize> = log.iter().filter(|l| l.2 == second).map(|l| l.0).collect();
    assert_eq!(
        second_receipts,
        vec![0, 1],
        "the second R is resent, not confirmed by the stale copy"
    );
}

#[test]
fn with_an_empty_control_id_msa_2_is_not_matched() {
    let dir = tempfile::tempdir().unwrap();
    let downstream = Scripted::start(Arc::new(|_, _, _| aa("A1", "SOMETHING-ELSE")));
    // validation = "none" stores a message without MSH-10.
    let text = format!(
        "data_dir = {:?}\n[[listener]]\nname = \"lab\"\nlisten = \"127.0.0.1:0\"\nqueue = \"lab\"\nvalidation = \"none\"\n{}",
        dir.path().join("data").display().to_string(),
        destination("ehr", downstream.addr, "")
    );
    let config = dir.path().join("orderly.toml");
    std::fs::write(&config, text).unwrap();
    let broker = Broker::start(&config);
    let mut c = Client::connect(broker.addr());
    c.send(b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261127||ORU^R01||P|2.5\rPID|1\r");
    assert!(orderly::hl7::ack::parse_ack(&c.recv().unwrap())
        .unwrap()
        .code
        .is_positive());
    let status = ctl_status_until(&config, WAIT, |s| s.contains("delivered=1"));
    assert!(
        status.contains("delivered=1") && status.contains("dead_lettered=0"),
        "{status}"
    );
}
