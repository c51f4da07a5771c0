//! Ordered delivery against scripted downstreams, through the real binary.
mod delivery_common;
mod server_common;
use delivery_common::*;
use orderly::storage::FsStorage;
use orderly::wal::meta::{MetaKey, MetaView};
use orderly::wal::{inspect, Offset};
use server_common::{oru, Broker, Client};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn send_all(broker: &Broker, msgs: &[Vec<u8>]) {
    let mut c = Client::connect(broker.addr());
    for m in msgs {
        assert!(c.roundtrip(m).0.is_positive());
    }
}

fn dlq_records(data_dir: &std::path::Path, dest: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    inspect::for_each_record(
        &FsStorage,
        &data_dir.join("dlq").join(dest),
        Offset(0),
        u64::MAX,
        orderly::wal::Writer::Running,
        |item| match item {
            inspect::Item::Record(r) => out.push((r.meta.to_vec(), r.payload.to_vec())),
            inspect::Item::Corrupt { offset, .. } => panic!("dead-letter record {offset} damaged"),
        },
    )
    .unwrap();
    out
}

fn u64_meta(meta: &[u8], key: MetaKey) -> u64 {
    let v = MetaView::new(meta).get(key).expect("key present");
    let mut b = [0u8; 8];
    b[..v.len()].copy_from_slice(v);
    u64::from_le_bytes(b)
}

#[test]
fn transient_errors_are_retried_with_growing_intervals_then_delivered_in_order() {
    let dir = tempfile::tempdir().unwrap();
    // M2 fails three times (AR, dropped connection, AR), then is accepted.
    let sink = Sink::start(Arc::new(|id, n| match (id, n) {
        ("M2", 1) | ("M2", 3) => Reply::Reject,
        ("M2", 2) => Reply::Drop,
        _ => Reply::Accept,
    }));
    let config = config_with(dir.path(), &destination("ehr", sink.addr, ""));
    let broker = Broker::start(&config);
    let ids: Vec<String> = (1..=5).map(|i| format!("M{i}")).collect();
    send_all(
        &broker,
        &ids.iter().map(|id| oru(id, 300)).collect::<Vec<_>>(),
    );
    sink.wait_accepted(&ids, WAIT);
    assert_eq!(sink.accepted_ids(), ids, "delivered once each, in order");
    let tries: Vec<_> = sink
        .received()
        .into_iter()
        .filter(|r| r.control_id == "M2")
        .collect();
    assert_eq!(tries.len(), 4);
    let gaps: Vec<Duration> = tries.windows(2).map(|w| w[1].at - w[0].at).collect();
    for (i, min_ms) in [20u64, 40, 80].iter().enumerate() {
        // Backoff deadlines are kept in whole milliseconds: allow 2 ms of rounding.
        assert!(
            gaps[i] + Duration::from_millis(2) >= Duration::from_millis(*min_ms),
            "retry {i} came after {:?}, backoff is {min_ms} ms",
            gaps[i]
        );
    }
    let received = sink.received();
    let m2_ok = received
        .iter()
        .position(|r| r.control_id == "M2" && r.reply == Reply::Accept)
        .unwrap();
    assert!(
        received[..m2_ok].iter().all(|r| r.control_id != "M3"),
        "nothing behind the failing head is sent"
    );
}

#[test]
fn reject_with_dead_letter_moves_on_and_the_dlq_record_has_its_context() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(reject_only("BAD"));
    let config = config_with(
        dir.path(),
        &destination("ehr", sink.addr, "on_reject = \"dead-letter\""),
    );
    let broker = Broker::start(&config);
    let msgs = vec![oru("A", 200), oru("BAD", 250), oru("C", 200)];
    send_all(&broker, &msgs);
    sink.wait_accepted(&["A".into(), "C".into()], WAIT);
    assert_eq!(sink.accepted_ids(), vec!["A".to_string(), "C".to_string()]);
    let dlq = dlq_records(&broker.data_dir, "ehr");
    assert_eq!(dlq.len(), 1);
    let (meta, payload) = &dlq[0];
    assert_eq!(payload, &msgs[1], "the original bytes");
    let m = MetaView::new(meta);
    assert_eq!(m.get(MetaKey::Destination), Some(&b"ehr"[..]));
    assert_eq!(m.get(MetaKey::ControlId), Some(&b"BAD"[..]));
    assert_eq!(m.get(MetaKey::ErrorClass), Some(&b"rejected"[..]));
    assert_eq!(u64_meta(meta, MetaKey::SourceOffset), 1);
    assert_eq!(u64_meta(meta, MetaKey::Attempts), 1);
    assert_eq!(u64_meta(meta, MetaKey::Lane), 0);
    assert!(
        u64_meta(meta, MetaKey::FirstFailureMs) > 0
            && u64_meta(meta, MetaKey::LastFailureMs) >= u64_meta(meta, MetaKey::FirstFailureMs)
    );
    assert!(String::from_utf8_lossy(m.get(MetaKey::LastAck).unwrap()).contains("MSA|AE|BAD"));
    assert!(String::from_utf8_lossy(m.get(MetaKey::ErrorText).unwrap()).starts_with("AE"));
}

#[test]
fn reject_with_block_holds_the_lane_until_ctl_skip_releases_it() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(reject_only("BAD"));
    let config = config_with(
        dir.path(),
        &destination("ehr", sink.addr, "on_reject = \"block\""),
    );
    let broker = Broker::start(&config);
    send_all(
        &broker,
        &[oru("A", 200), oru("BAD", 200), oru("C", 200), oru("D", 200)],
    );
    sink.wait_until(WAIT, "BAD rejected", |log| {
        log.iter().any(|r| r.control_id == "BAD")
    });
    let status = ctl(&config, &["status"]);
    assert!(
        status.contains("head=BLOCKED offset=1") && status.contains("class=rejected"),
        "{status}"
    );
    ctl(&config, &["pause", "ehr"]);
    assert!(ctl(&config, &["status"]).contains("paused=yes"));
    ctl(&config, &["resume", "ehr"]);
    // Blocked: C and D wait. Retrying changes nothing while the sink still rejects.
    ctl(&config, &["retry", "ehr", "--lane", "0"]);
    sink.wait_until(WAIT, "BAD retried", |log| {
        log.iter().filter(|r| r.control_id == "BAD").count() == 2
    });
    assert_eq!(sink.accepted_ids(), vec!["A".to_string()]);
    let out = ctl(
        &config,
        &[
            "skip",
            "ehr",
            "--lane",
            "0",
            "--reason",
            "wrong patient, fixed in EHR by hand",
        ],
    );
    assert!(out.contains("dead-letter"), "{out}");
    sink.wait_accepted(&["C".into(), "D".into()], WAIT);
    assert_eq!(
        sink.accepted_ids(),
        vec!["A".to_string(), "C".to_string(), "D".to_string()]
    );
    let dlq = dlq_records(&broker.data_dir, "ehr");
    assert_eq!(dlq.len(), 1);
    assert!(
        String::from_utf8_lossy(MetaView::new(&dlq[0].0).get(MetaKey::Reason).unwrap())
            .contains("wrong patient")
    );
}

#[test]
fn partitioned_lanes_keep_per_key_order_while_a_poisoned_key_blocks_only_its_lane() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(reject_only("K3-0"));
    let extra =
        "ordering = \"partitioned\"\npartition_key = \"PID-3.1\"\nlanes = 8\non_reject = \"block\"";
    let config = config_with(dir.path(), &destination("ehr", sink.addr, extra));
    let broker = Broker::start(&config);
    let keys = 12;
    let mut msgs = Vec::new();
    for round in 0..8 {
        for k in 0..keys {
            msgs.push((format!("K{k}-{round}"), format!("KEY{k}")));
        }
    }
    send_all(
        &broker,
        &msgs
            .iter()
            .map(|(id, key)| keyed(id, key))
            .collect::<Vec<_>>(),
    );
    // The documented lane rule: FNV-1a 64 of the raw PID-3.1 value, modulo lanes.
    let lane = |key: &str| {
        key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        }) % 8
    };
    let poisoned_lane = lane("KEY3");
    let poison_at = msgs.iter().position(|(id, _)| id == "K3-0").unwrap();
    let behind_poison = |i: usize, key: &str| i > poison_at && lane(key) == poisoned_lane;
    let others: Vec<String> = msgs
        .iter()
        .enumerate()
        .filter(|(i, (_, key))| !behind_poison(*i, key))
        .map(|(_, (id, _))| id.clone())
        .filter(|id| id != "K3-0")
        .collect();
    sink.wait_accepted(&others, WAIT);
    let status = ctl(&config, &["status"]);
    assert_eq!(
        status.matches("head=BLOCKED").count(),
        1,
        "only the poisoned key's lane blocks: {status}"
    );
    let check_order = |accepted: &[String]| {
        for k in 0..keys {
            let seq: Vec<u32> = accepted
                .iter()
                .filter_map(|id| id.strip_prefix(&format!("K{k}-")))
                .map(|s| s.parse().unwrap())
                .collect();
            assert!(
                seq.windows(2).all(|w| w[0] < w[1]),
                "key {k} out of order: {seq:?}"
            );
        }
    };
    check_order(&sink.accepted_ids());
    let held: Vec<&String> = msgs
        .iter()
        .enumerate()
        .filter(|(i, (_, key))| behind_poison(*i, key))
        .map(|(_, (id, _))| id)
        .collect();
    assert!(
        held.iter().all(|id| !sink.accepted_ids().contains(id)),
        "nothing behind the poisoned message in its lane"
    );
    sink.set_script(accept_all());
    ctl(&config, &["retry", "ehr"]);
    let all: Vec<String> = msgs.iter().map(|(id, _)| id.clone()).collect();
    sink.wait_accepted(&all, WAIT);
    check_order(&sink.accepted_ids());
    assert_eq!(sink.accepted_ids().len(), all.len(), "each delivered once");
}

#[test]
fn fan_out_keeps_healthy_destinations_current_while_one_is_down_then_it_catches_up_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let a = Sink::start(accept_all());
    let b = Sink::start(accept_all());
    // Reserve a port for the third destination, with nobody listening yet.
    let down_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let dests = [
        destination("a", a.addr, ""),
        destination("b", b.addr, ""),
        destination("c", down_addr, ""),
    ]
    .join("\n");
    let config = config_with(dir.path(), &dests);
    let broker = Broker::start(&config);
    let ids: Vec<String> = (0..60).map(|i| format!("F{i}")).collect();
    send_all(
        &broker,
        &ids.iter().map(|id| oru(id, 400)).collect::<Vec<_>>(),
    );
    a.wait_accepted(&ids, WAIT);
    b.wait_accepted(&ids, WAIT);
    assert_eq!(a.accepted_ids(), ids);
    assert_eq!(b.accepted_ids(), ids);
    let down_lane =
        |l: &str| l.contains("committed=0") && l.contains("lag=60") && l.contains("connect-failed");
    let status = ctl_status_until(&config, WAIT, |s| s.lines().any(down_lane));
    assert!(status.lines().any(down_lane), "{status}");
    let c = Sink::start_on(down_addr, accept_all());
    c.wait_accepted(&ids, WAIT);
    assert_eq!(c.accepted_ids(), ids, "caught up in order, each once");
}

#[test]
fn filter_sends_only_matching_messages_and_skips_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(accept_all());
    let config = config_with(
        dir.path(),
        &destination(
            "lab-only",
            sink.addr,
            "[destination.filter]\nmessage_types = [\"ORU^R01\"]",
        ),
    );
    let broker = Broker::start(&config);
    let adt = b"MSH|^~\\&|ADT|HOSP|EHR|HOSP|20261123||ADT^A01|ADT1|P|2.5\rPID|1\r".to_vec();
    send_all(&broker, &[oru("O1", 200), adt, oru("O2", 200)]);
    sink.wait_accepted(&["O1".into(), "O2".into()], WAIT);
    assert_eq!(
        sink.accepted_ids(),
        vec!["O1".to_string(), "O2".to_string()]
    );
    let status = ctl_status_until(&config, WAIT, |s| s.contains("committed=3"));
    assert!(
        status.contains("committed=3"),
        "cursor passes filtered messages: {status}"
    );
}
