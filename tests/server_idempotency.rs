//! Idempotency keys through the real binary: duplicates are answered
//! positively and stored once, conflicts follow `on_key_conflict`, and the
//! index survives kill -9. The oracle is the log itself (read with the
//! library's inspect, not the broker's answers) and the downstream sink.
mod delivery_common;
mod server_common;
use delivery_common::*;
use orderly::hl7::ack::AckCode;
use orderly::storage::FsStorage;
use orderly::wal::meta::{MetaKey, MetaView};
use orderly::wal::{inspect, Offset};
use server_common::{Broker, Client};
use std::path::Path;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// Every record of queue `lab`: (offset, meta, payload).
fn records(data_dir: &Path) -> Vec<(u64, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    inspect::for_each_record(
        &FsStorage,
        &data_dir.join("queues").join("lab"),
        Offset(0),
        u64::MAX,
        orderly::wal::Writer::Running,
        |item| match item {
            inspect::Item::Record(r) => out.push((r.offset.0, r.meta.to_vec(), r.payload.to_vec())),
            inspect::Item::Corrupt { offset, .. } => panic!("record {offset} damaged"),
        },
    )
    .unwrap();
    out
}

/// Message records (payload present, no event key) with their control ids.
fn messages(data_dir: &Path) -> Vec<(u64, String)> {
    records(data_dir)
        .into_iter()
        .filter(|(_, m, _)| MetaView::new(m).get(MetaKey::Event).is_none())
        .map(|(o, m, _)| (o, MetaView::new(&m).get_str(MetaKey::ControlId)))
        .collect()
}

/// Event records: (event, control id, original offset if known).
fn events(data_dir: &Path) -> Vec<(String, String, Option<u64>)> {
    records(data_dir)
        .into_iter()
        .filter_map(|(_, m, _)| {
            let v = MetaView::new(&m);
            let event = v.get(MetaKey::Event)?;
            let original = v.get(MetaKey::OriginalOffset).map(|b| {
                let mut a = [0u8; 8];
                a.copy_from_slice(b);
                u64::from_le_bytes(a)
            });
            Some((
                String::from_utf8_lossy(event).into_owned(),
                v.get_str(MetaKey::ControlId),
                original,
            ))
        })
        .collect()
}

fn msg(id: &str, note: &str) -> Vec<u8> {
    format!("MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261127||ORU^R01|{id}|P|2.5\rPID|1||MRN1^^^HOSP^MR||DOE^J\rOBX|1|TX|N||{note}\r").into_bytes()
}

fn enhanced(id: &str, note: &str) -> Vec<u8> {
    format!("MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261127||ORU^R01|{id}|P|2.5|||AL|NE\rPID|1||MRN1^^^HOSP^MR||DOE^J\rOBX|1|TX|N||{note}\r").into_bytes()
}

fn setup(dir: &Path, queue: &str, sink: &Sink) -> std::path::PathBuf {
    config_with(
        dir,
        &format!("{queue}\n{}", destination("ehr", sink.addr, "")),
    )
}

/// The ERR segment of an answer, if any.
fn err_segment(ack: &[u8]) -> String {
    String::from_utf8_lossy(ack)
        .split('\r')
        .find(|s| s.starts_with("ERR"))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_sender_retrying_five_times_gets_five_positive_acks_one_record_one_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(accept_all());
    let config = setup(dir.path(), "", &sink);
    let broker = Broker::start(&config);
    let m = msg("RETRY1", "potassium 4.1");
    for attempt in 0..5 {
        // A sender that lost its ACK reconnects and sends again.
        let mut c = Client::connect(broker.addr());
        let (code, id) = c.roundtrip(&m);
        assert_eq!(
            (code, id.as_str()),
            (AckCode::ApplicationAccept, "RETRY1"),
            "attempt {attempt}"
        );
    }
    // Strict order: once the sink has the next message, any second
    // delivery of RETRY1 would have come before it.
    let mut c = Client::connect(broker.addr());
    assert!(c.roundtrip(&msg("AFTER", "x")).0.is_positive());
    sink.wait_accepted(&["AFTER".to_string()], WAIT);
    let delivered: Vec<String> = sink.received().into_iter().map(|r| r.control_id).collect();
    assert_eq!(delivered, vec!["RETRY1", "AFTER"], "one delivery each");
    assert_eq!(
        messages(&broker.data_dir),
        vec![(0, "RETRY1".to_string()), (5, "AFTER".to_string())],
        "one record for the five copies"
    );
    let dups = events(&broker.data_dir);
    assert_eq!(dups.len(), 4, "four duplicates recorded: {dups:?}");
    for (event, cid, original) in dups {
        assert_eq!(
            (event.as_str(), cid.as_str(), original),
            ("duplicate", "RETRY1", Some(0))
        );
    }
    // inspect shows them too (extra columns after the five of a message).
    let out = std::process::Command::new(server_common::BIN)
        .args(["inspect", "lab", "--data-dir"])
        .arg(&broker.data_dir)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        text.matches("event=duplicate original=0").count(),
        4,
        "{text}"
    );
    // Trace: the duplicates, and the one delivery attempt from the journal
    // (durable once the lane's cursor past AFTER is).
    ctl_status_until(&config, WAIT, |s| s.contains("durable=6"));
    let t: serde_json::Value =
        serde_json::from_str(&ctl(&config, &["trace", "RETRY1", "--json"])).unwrap();
    assert_eq!(t["messages"].as_array().unwrap().len(), 1, "{t}");
    assert_eq!(t["events"].as_array().unwrap().len(), 4, "{t}");
    let attempts = t["messages"][0]["destinations"][0]["attempts"]
        .as_array()
        .unwrap();
    assert_eq!(attempts.len(), 1, "one delivery attempt: {t}");
    assert_eq!(
        (
            attempts[0]["outcome"].as_str(),
            attempts[0]["ack_code"].as_str()
        ),
        (Some("delivered"), Some("AA"))
    );
}

#[test]
fn copies_in_flight_together_are_stored_once_and_all_answered() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(accept_all());
    let broker = Broker::start(&setup(dir.path(), "", &sink));
    let m = msg("PIPE1", "sodium 140");
    // Three copies in one write: the later two arrive while the first is
    // still being appended.
    let mut frames = Vec::new();
    for _ in 0..3 {
        orderly::mllp::encode_frame(&m, &mut frames);
    }
    let mut c = Client::connect(broker.addr());
    c.send_raw(&frames);
    for _ in 0..3 {
        let ack = c.recv().expect("an answer per copy");
        let (code, id) = server_common::ack_of(&ack);
        assert_eq!((code, id.as_str()), (AckCode::ApplicationAccept, "PIPE1"));
    }
    assert_eq!(messages(&broker.data_dir), vec![(0, "PIPE1".to_string())]);
    assert_eq!(events(&broker.data_dir).len(), 2);
}

#[test]
fn the_index_survives_kill_9_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(accept_all());
    let config = setup(dir.path(), "", &sink);
    let mut broker = Broker::start(&config);
    let m = msg("CRASH1", "glucose 5.5");
    assert!(Client::connect(broker.addr()).roundtrip(&m).0.is_positive());
    sink.wait_accepted(&["CRASH1".to_string()], WAIT);
    broker.kill9();
    let broker = Broker::start(&config);
    let (code, id) = Client::connect(broker.addr()).roundtrip(&m);
    assert_eq!((code, id.as_str()), (AckCode::ApplicationAccept, "CRASH1"));
    let changed = msg("CRASH1", "glucose 9.9");
    let (code, _) = Client::connect(broker.addr()).roundtrip(&changed);
    assert_eq!(
        code,
        AckCode::ApplicationError,
        "a conflict is still known after restart"
    );
    assert_eq!(messages(&broker.data_dir), vec![(0, "CRASH1".to_string())]);
    let ev: Vec<String> = events(&broker.data_dir).into_iter().map(|e| e.0).collect();
    assert_eq!(ev, vec!["duplicate", "conflict-rejected"]);
}

#[test]
fn a_conflict_is_refused_with_err_205_in_both_ack_modes_and_kept_for_the_operator() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(accept_all());
    let broker = Broker::start(&setup(dir.path(), "", &sink));
    let mut c = Client::connect(broker.addr());
    assert!(c.roundtrip(&msg("K1", "first")).0.is_positive());
    c.send(&msg("K1", "second, different"));
    let ack = c.recv().unwrap();
    assert_eq!(
        server_common::ack_of(&ack),
        (AckCode::ApplicationError, "K1".into())
    );
    // v2.5: ERR-3 holds the table 0357 code.
    assert!(err_segment(&ack).contains("|205^"), "{}", err_segment(&ack));
    // Enhanced mode (MSH-15 = AL): CE.
    assert!(c.roundtrip(&enhanced("K2", "first")).0.is_positive());
    let (code, id) = c.roundtrip(&enhanced("K2", "changed"));
    assert_eq!((code, id.as_str()), (AckCode::CommitError, "K2"));
    assert!(c.roundtrip(&msg("END", "x")).0.is_positive());
    sink.wait_accepted(&["END".to_string()], WAIT);
    let delivered: Vec<String> = sink.received().into_iter().map(|r| r.control_id).collect();
    assert_eq!(
        delivered,
        vec!["K1", "K2", "END"],
        "refused versions are not delivered"
    );
    // The refused payload is kept in its event record.
    let refused: Vec<Vec<u8>> = records(&broker.data_dir)
        .into_iter()
        .filter(|(_, m, _)| MetaView::new(m).get(MetaKey::Event) == Some(b"conflict-rejected"))
        .map(|(_, _, p)| p)
        .collect();
    assert_eq!(
        refused,
        vec![msg("K1", "second, different"), enhanced("K2", "changed")]
    );
}

#[test]
fn with_on_key_conflict_accept_a_changed_message_is_a_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(accept_all());
    let queue = "[[queue]]\nname = \"lab\"\non_key_conflict = \"accept\"\n";
    let broker = Broker::start(&setup(dir.path(), queue, &sink));
    let mut c = Client::connect(broker.addr());
    assert!(c.roundtrip(&msg("V1", "draft")).0.is_positive());
    assert!(c.roundtrip(&msg("V1", "corrected")).0.is_positive());
    // A copy of the correction is a duplicate of the correction.
    assert!(c.roundtrip(&msg("V1", "corrected")).0.is_positive());
    assert!(c.roundtrip(&msg("END", "x")).0.is_positive());
    sink.wait_accepted(&["END".to_string()], WAIT);
    let delivered: Vec<Vec<u8>> = sink.received().into_iter().map(|r| r.payload).collect();
    assert_eq!(
        delivered,
        vec![msg("V1", "draft"), msg("V1", "corrected"), msg("END", "x")]
    );
    let recs = records(&broker.data_dir);
    let v = MetaView::new(&recs[1].1);
    assert!(
        v.get(MetaKey::NewVersion).is_some(),
        "offset 1 is flagged a new version"
    );
    assert_eq!(
        v.get(MetaKey::OriginalOffset),
        Some(&0u64.to_le_bytes()[..])
    );
    let ev = events(&broker.data_dir);
    assert_eq!(
        ev,
        vec![("duplicate".to_string(), "V1".to_string(), Some(1))]
    );
}

#[test]
fn custom_keys_missing_values_and_disabled_keys_are_not_deduplicated() {
    // Key on PID-3.1: a message without it is stored every time.
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(accept_all());
    let queue = "[[queue]]\nname = \"lab\"\nidempotency_key = [\"MSH-4\", \"PID-3.1\"]\n";
    let broker = Broker::start(&setup(dir.path(), queue, &sink));
    let mut c = Client::connect(broker.addr());
    let no_pid = b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261127||ADT^A08|N1|P|2.5\rEVN|A08|20261127\r";
    assert!(c.roundtrip(no_pid).0.is_positive());
    assert!(c.roundtrip(no_pid).0.is_positive());
    // Same MSH-4 and PID-3.1, another control id: the same key with a
    // different payload, so a conflict.
    assert!(c.roundtrip(&msg("P1", "same")).0.is_positive());
    assert_eq!(c.roundtrip(&msg("P2", "same")).0, AckCode::ApplicationError);
    let ids: Vec<String> = messages(&broker.data_dir)
        .into_iter()
        .map(|m| m.1)
        .collect();
    assert_eq!(ids, vec!["N1", "N1", "P1"]);
    drop(broker);

    // idempotency_key = [] turns deduplication off.
    let dir = tempfile::tempdir().unwrap();
    let queue = "[[queue]]\nname = \"lab\"\nidempotency_key = []\n";
    let broker = Broker::start(&setup(dir.path(), queue, &sink));
    let mut c = Client::connect(broker.addr());
    assert!(c.roundtrip(&msg("D1", "a")).0.is_positive());
    assert!(c.roundtrip(&msg("D1", "a")).0.is_positive());
    assert_eq!(messages(&broker.data_dir).len(), 2);
    assert!(events(&broker.data_dir).is_empty());
}

#[test]
fn a_queue_declared_but_unused_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = config_with(dir.path(), "[[queue]]\nname = \"labb\"\n");
    let out = std::process::Command::new(server_common::BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("queue[0].name") && err.contains("labb"),
        "{err}"
    );
}

/// Senders that reset the connection right after sending (no wait for the
/// ACK) leave their appends in flight on a closed connection; the index
/// must still learn where each went, or every resend would wait for an
/// original that never settles and be refused. Each resend here must be
/// answered positively and every message stored exactly once.
#[test]
fn appends_of_connections_reset_before_their_ack_still_settle_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(accept_all());
    let broker = Broker::start(&setup(dir.path(), "", &sink));
    let n = 40;
    for i in 0..n {
        let mut c = Client::connect(broker.addr());
        c.send(&msg(&format!("RST{i}"), "x"));
        // SO_LINGER 0: the close (the drop) resets at once, no FIN.
        socket_reset(&c.stream);
    }
    let mut c = Client::connect(broker.addr());
    for i in 0..n {
        let (code, id) = c.roundtrip(&msg(&format!("RST{i}"), "x"));
        assert_eq!((code, id), (AckCode::ApplicationAccept, format!("RST{i}")));
    }
    let mut ids: Vec<String> = messages(&broker.data_dir)
        .into_iter()
        .map(|m| m.1)
        .collect();
    ids.sort();
    let mut want: Vec<String> = (0..n).map(|i| format!("RST{i}")).collect();
    want.sort();
    assert_eq!(ids, want, "each message stored exactly once");
}

fn socket_reset(stream: &std::net::TcpStream) {
    use std::os::unix::io::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket this test owns, with a linger struct
    // of the size passed. The close when the client drops then resets.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_LINGER");
}

/// The session alone (no sockets, no log): K1 is sent, then a changed K1
/// arrives while the first is still being stored, and the first's append
/// then fails. The key was never accepted, so the change must not be
/// answered as a conflict (AE, ERR-3 205: a content error the sender would
/// not retry) but as "not stored, resend later" (AR, HL7 table 0008), and
/// the resend is then stored as new.
#[test]
fn a_conflict_with_a_version_that_then_fails_to_store_is_answered_resend_later() {
    use orderly::config::{Config, KeyConflict};
    use orderly::hl7::ack::parse_ack;
    use orderly::metrics::Metrics;
    use orderly::mllp::{Decoded, FrameDecoder};
    use orderly::server::dedupe::{stored_original, DedupeIndex, Original, Originals, QueueDedupe};
    use orderly::server::ingest::AckIds;
    use orderly::server::session::{Ingest, Session, Step};
    use orderly::wal::AppendError;
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    type Store = Arc<Mutex<BTreeMap<u64, Original>>>;
    struct Stored(Store);
    impl Originals for Stored {
        fn original(&self, offset: Offset) -> Option<Original> {
            self.0.lock().unwrap().get(&offset.0).cloned()
        }
    }
    /// A session, its queue's index and what it asked to append.
    struct Harness {
        config: Config,
        metrics: Metrics,
        ids: AckIds,
        store: Store,
        dedupe: QueueDedupe,
        session: Session,
        asked: Vec<(Vec<u8>, Vec<u8>)>,
    }
    impl Harness {
        fn with_ingest<R>(
            &mut self,
            f: impl FnOnce(&mut Session, &mut Ingest<'_>, &mut Vec<(Vec<u8>, Vec<u8>)>) -> R,
        ) -> R {
            let mut ing = Ingest {
                listener: &self.config.listeners[0],
                peer: "test",
                ids: &mut self.ids,
                metrics: &self.metrics,
                now_ms: 0,
                refused: None,
                dedupe: Some(&mut self.dedupe),
            };
            f(&mut self.session, &mut ing, &mut self.asked)
        }
        fn feed(&mut self, message: &[u8]) {
            let mut framed = vec![0x0b];
            framed.extend_from_slice(message);
            framed.extend_from_slice(&[0x1c, 0x0d]);
            self.session.rbuf.extend_from_slice(&framed);
            self.with_ingest(|session, ing, asked| {
                let mut append = |p: &[u8], m: Vec<u8>| asked.push((p.to_vec(), m));
                while !matches!(session.step(ing, &mut append), Step::NeedMore) {}
                session.compact();
            });
        }
        /// Completes append `i` as stored at offset `Ok(o)` or failed.
        fn complete(&mut self, i: usize, result: Result<u64, AppendError>) {
            let (payload, meta) = self.asked[i].clone();
            if let (Ok(o), Some(orig)) = (&result, stored_original(&meta, 0)) {
                self.store.lock().unwrap().insert(*o, orig);
            }
            self.with_ingest(|session, ing, _| match result {
                Ok(o) => session.complete(Ok(Offset(o)), &payload, ing),
                Err(e) => session.complete(Err(&e), &payload, ing),
            });
        }
        /// (MSA-1, MSA-2, ERR segment) of each answer written.
        fn answers(&self) -> Vec<(AckCode, String, String)> {
            let out = &self.session.out[self.session.written..];
            let mut decoder = FrameDecoder::for_acks(1 << 20);
            let mut acks = Vec::new();
            while let Decoded::Frame(r) = decoder.decode(out) {
                let a = parse_ack(&out[r.clone()]).unwrap();
                let id = String::from_utf8_lossy(a.control_id).into_owned();
                acks.push((a.code, id, err_segment(&out[r])));
            }
            acks
        }
    }
    let config = Config::parse(
        "[[listener]]\nname='l'\nlisten='127.0.0.1:1'\nqueue='q'\nack_mode='original'\n",
        "test",
    )
    .unwrap();
    let store: Store = Arc::default();
    let mut h = Harness {
        session: Session::new(config.listeners[0].max_frame_bytes),
        config,
        metrics: Metrics::default(),
        ids: AckIds::new(),
        dedupe: QueueDedupe {
            index: DedupeIndex::new(u64::MAX, 1024),
            paths: vec![orderly::hl7::FieldPath::parse("MSH-10").unwrap()],
            on_conflict: KeyConflict::Reject,
            originals: Box::new(Stored(store.clone())),
            log: None,
        },
        store,
        asked: Vec::new(),
    };
    h.feed(&msg("K1", "first"));
    h.feed(&msg("K1", "changed"));
    assert_eq!(h.asked.len(), 2, "the first version and the conflict event");
    h.complete(0, Err(AppendError::StorageFull("test".into())));
    h.complete(1, Ok(0));

    let acks = h.answers();
    assert_eq!(acks.len(), 2);
    assert_eq!(acks[0].0, AckCode::ApplicationReject, "K1 not stored: AR");
    assert_eq!(
        (acks[1].0, acks[1].1.as_str()),
        (AckCode::ApplicationReject, "K1"),
        "the key was never accepted: resend later, not a conflict ({})",
        acks[1].2
    );
    assert!(!acks[1].2.contains("|205^"), "{}", acks[1].2);
    assert!(acks[1].2.contains("resend later"), "{}", acks[1].2);

    // The resend is a new message now.
    h.feed(&msg("K1", "changed"));
    assert_eq!(h.asked.len(), 3);
    let meta = MetaView::new(&h.asked[2].1);
    assert_eq!(
        meta.get(MetaKey::Event),
        None,
        "stored as a message, not an event"
    );

    // The metrics say what the sender was told: one deferred conflict, no
    // rejected one. Then a real conflict with the stored resend counts.
    use std::sync::atomic::Ordering::SeqCst;
    let counts = |m: &Metrics| {
        (
            m.idempotency_conflicts_deferred.load(SeqCst),
            m.idempotency_conflicts_rejected.load(SeqCst),
        )
    };
    assert_eq!(counts(&h.metrics), (1, 0));
    h.complete(2, Ok(1));
    h.feed(&msg("K1", "third"));
    h.complete(3, Ok(2));
    assert_eq!(h.answers().last().unwrap().0, AckCode::ApplicationError);
    assert_eq!(counts(&h.metrics), (1, 1));
}
