//! Resubmission, replay and reconciliation through the real binary and a
//! scripted downstream. The oracle is what the test sent and what the sink
//! received and answered, never the broker's own view of it.
mod delivery_common;
mod server_common;
use delivery_common::*;
use server_common::{Broker, Client};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn oru(id: &str, name: &str) -> Vec<u8> {
    format!("MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261127||ORU^R01|{id}|P|2.5\rPID|1||P{id}^^^HOSP^MR||{name}\rOBX|1|NM|GLU||5.1\r").into_bytes()
}

fn send_all(broker: &Broker, ids: &[String]) {
    let mut c = Client::connect(broker.addr());
    for id in ids {
        assert!(c.roundtrip(&oru(id, "DOE^J")).0.is_positive(), "{id}");
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// How many frames with each control id the sink received.
fn receipts(sink: &Sink) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in sink.received() {
        *m.entry(r.control_id).or_insert(0) += 1;
    }
    m
}

fn json(config: &std::path::Path, args: &[&str]) -> serde_json::Value {
    serde_json::from_str(&ctl(config, args)).expect("json answer")
}

/// `ctl reconcile ... --json` whatever its exit status (1 = not clean).
fn reconcile_json(config: &std::path::Path, args: &[&str]) -> (i32, serde_json::Value) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orderly"))
        .args(["ctl", "--config"])
        .arg(config)
        .args(["reconcile", "--json"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), value)
}

/// `ctl replay --destination ehr --since 1h <extra> --json` (a window
/// holding everything a test sent).
fn replay_last_hour(config: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["replay", "--destination", "ehr", "--since", "1h"];
    args.extend_from_slice(extra);
    args.push("--json");
    json(config, &args)
}

/// A broker in a fresh directory delivering queue `lab` to destination
/// `ehr`, a sink accepting everything (`extra`: more destination keys).
fn started(extra: &str) -> (tempfile::TempDir, Sink, std::path::PathBuf, Broker) {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(accept_all());
    let config = config_with(dir.path(), &destination("ehr", sink.addr, extra));
    let broker = Broker::start(&config);
    (dir, sink, config, broker)
}

/// Sends `n` messages with ids `<prefix>0..` and waits until the sink
/// accepted each; their ids.
fn delivered(broker: &Broker, sink: &Sink, prefix: &str, n: usize) -> Vec<String> {
    let sent = ids(prefix, n);
    send_all(broker, &sent);
    sink.wait_accepted(&sent, WAIT);
    sent
}

/// Waits until the replay lane has nothing left to send and its cursor is
/// durable (`replay committed=N end=N`, N given).
fn replay_lane_done(config: &std::path::Path, end: u64) {
    let want = format!("replay committed={end} end={end} lag=0");
    let status = ctl_status_until(config, WAIT, |s| s.contains(&want));
    assert!(status.contains(&want), "{status}");
}

#[test]
fn a_poison_message_resubmitted_with_an_edit_is_delivered_once_and_its_diff_kept() {
    let dir = tempfile::tempdir().unwrap();
    // The downstream finds an error (AE) in the first copy of POISON only.
    let sink = Sink::start(Arc::new(|id, n| {
        if id == "POISON" && n == 1 {
            Reply::Error
        } else {
            Reply::Accept
        }
    }));
    let config = config_with(dir.path(), &destination("ehr", sink.addr, ""));
    let mut broker = Broker::start(&config);
    let mut c = Client::connect(broker.addr());
    assert!(c.roundtrip(&oru("POISON", "DOE^J")).0.is_positive());
    assert!(c.roundtrip(&oru("NEXT", "ROE^R")).0.is_positive());
    sink.wait_accepted(&["NEXT".to_string()], WAIT);
    let list = json(&config, &["dlq", "list", "--json"]);
    let id = list["entries"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(list["entries"][0]["control_id"], "POISON");

    // The operator corrects PID-5 (with LF line ends, as an editor saves).
    let edited = "MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261127||ORU^R01|POISON|P|2.5\nPID|1||PPOISON^^^HOSP^MR||DOE^JANE\nOBX|1|NM|GLU||5.1\n";
    let file = dir.path().join("fixed.hl7");
    std::fs::write(&file, edited).unwrap();
    let out = ctl(
        &config,
        &[
            "dlq",
            "resubmit",
            &id,
            "--edited",
            file.to_str().unwrap(),
            "--reason",
            "name corrected per ward",
        ],
    );
    assert!(out.contains("resubmitted"), "{out}");
    sink.wait_until(WAIT, "the corrected POISON", |r| {
        r.iter()
            .any(|r| r.control_id == "POISON" && r.reply == Reply::Accept)
    });
    replay_lane_done(&config, 1);
    let got: Vec<Received> = sink
        .received()
        .into_iter()
        .filter(|r| r.control_id == "POISON")
        .collect();
    assert_eq!(got.len(), 2, "refused once, then delivered once");
    assert_eq!(got[1].payload, edited.replace('\n', "\r").into_bytes());

    // The diff is kept with the dead letter; a second resubmit is refused.
    let shown = json(&config, &["dlq", "show", &id, "--json"]);
    assert_eq!(shown["entry"]["status"], "resubmitted");
    assert_eq!(
        shown["entry"]["edit_diff"].as_str().unwrap(),
        "PID-5: \"DOE^J\" -> \"DOE^JANE\""
    );
    let (_, err) = ctl_fails(&config, &["dlq", "resubmit", &id, "--reason", "again"]);
    assert!(err.contains("already resubmitted"), "{err}");

    // Survives kill -9: trace still shows the refusal, the resend and the edit.
    broker.kill9();
    let _broker = Broker::start(&config);
    let t = json(&config, &["trace", "POISON", "--json"]);
    let d = &t["messages"][0]["destinations"][0];
    assert_eq!(d["state"], "delivered", "{t}");
    let outcomes: Vec<(&str, &str)> = d["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["channel"].as_str().unwrap(),
                a["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![("live", "dead-lettered"), ("replay", "delivered")]
    );
    assert_eq!(d["replays"][0]["kind"], "resubmit");
    assert!(d["replays"][0]["edit_diff"]
        .as_str()
        .unwrap()
        .contains("DOE^JANE"));
    // Nothing is sent again after the restart.
    replay_lane_done(&config, 1);
    assert_eq!(receipts(&sink)["POISON"], 2);
}

#[test]
fn replaying_a_window_half_delivered_sends_only_the_rest_unless_forced() {
    let (dir, sink, config, broker) = started("");
    let delivered = delivered(&broker, &sink, "A", 10);
    // The other half never reaches the destination: held, then cleared
    // to the dead-letter queue by an operator.
    ctl(&config, &["pause", "ehr"]);
    let cleared = ids("B", 10);
    send_all(&broker, &cleared);
    let out = ctl(
        &config,
        &[
            "clear",
            "--destination",
            "ehr",
            "--reason",
            "downstream rebuilt",
        ],
    );
    assert!(out.contains("10 message(s) moved"), "{out}");
    ctl(&config, &["resume", "ehr"]);
    ctl_status_until(&config, WAIT, |s| s.contains("durable=20"));

    let dry = replay_last_hour(&config, &["--dry-run", "--reason", "outage"]);
    assert_eq!(
        (
            &dry["matched"],
            &dry["to_send"],
            &dry["already_acknowledged"],
            &dry["queued"]
        ),
        (&20.into(), &10.into(), &10.into(), &0.into()),
        "{dry}"
    );
    let forced = replay_last_hour(&config, &["--dry-run", "--force", "--reason", "outage"]);
    assert_eq!(forced["to_send"], 20, "{forced}");
    let other_type = replay_last_hour(
        &config,
        &["--message-type", "ADT", "--dry-run", "--reason", "x"],
    );
    assert_eq!(other_type["matched"], 0, "{other_type}");
    assert_eq!(sink.received().len(), 10, "a dry run sends nothing");

    let done = replay_last_hour(&config, &["--reason", "outage"]);
    assert_eq!(done["queued"], 10, "{done}");
    // Their dead letters say so, and cannot be resubmitted a second time.
    let replayed = json(&config, &["dlq", "list", "--status", "replayed", "--json"]);
    let letters = replayed["entries"].as_array().unwrap();
    assert_eq!(letters.len(), 10, "{replayed}");
    let one = letters[0]["id"].as_str().unwrap();
    let (_, err) = ctl_fails(&config, &["dlq", "resubmit", one, "--reason", "again"]);
    assert!(err.contains("already replayed"), "{err}");
    sink.wait_accepted(&cleared, WAIT);
    replay_lane_done(&config, 10);
    let r = receipts(&sink);
    assert!(
        delivered.iter().chain(&cleared).all(|id| r[id] == 1),
        "each sent once: {r:?}"
    );
    assert_eq!(r.len(), 20);
    // The replay is audited with who and why.
    let audit = std::fs::read_to_string(dir.path().join("data/audit.log")).unwrap();
    assert!(
        audit.contains("\"replay\"") && audit.contains("outage"),
        "{audit}"
    );
}

#[test]
fn reconciling_against_a_list_missing_three_reports_those_and_replays_them() {
    let (dir, sink, config, broker) = started("");
    let sent = delivered(&broker, &sink, "R", 12);
    ctl_status_until(&config, WAIT, |s| s.contains("durable=12"));

    // Without a list: everything is delivered, nothing missing (exit 0).
    let plain = json(&config, &["reconcile", "--destination", "ehr", "--json"]);
    assert_eq!(plain["counts"]["selected"], 12, "{plain}");
    assert_eq!(plain["counts"]["delivered"], 12, "{plain}");
    assert_eq!(plain["counts"]["missing"], 0, "{plain}");

    // The downstream lost three of them, and holds one we never had.
    let lost = ["R2", "R7", "R11"];
    let mut held: Vec<String> = sink
        .accepted_ids()
        .into_iter()
        .filter(|id| !lost.contains(&id.as_str()))
        .collect();
    held.push("NOT-OURS".into());
    let list = dir.path().join("held.txt");
    std::fs::write(&list, held.join("\n") + "\n").unwrap();
    let (code, r) = reconcile_json(
        &config,
        &["--destination", "ehr", "--against", list.to_str().unwrap()],
    );
    assert_eq!(code, 1, "a destination lacking messages fails the check");
    let mut missing: Vec<&str> = r["against"]["missing_downstream"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["control_id"].as_str().unwrap())
        .collect();
    missing.sort();
    assert_eq!(missing, vec!["R11", "R2", "R7"], "{r}");
    assert_eq!(
        r["against"]["unknown_to_orderly"],
        serde_json::json!(["NOT-OURS"])
    );

    let (_, replayed) = reconcile_json(
        &config,
        &[
            "--destination",
            "ehr",
            "--against",
            list.to_str().unwrap(),
            "--replay-missing",
            "--reason",
            "downstream lost them",
        ],
    );
    assert_eq!(replayed["replayed"], 3, "{replayed}");
    replay_lane_done(&config, 3);
    let got = receipts(&sink);
    for id in &sent {
        let want = if lost.contains(&id.as_str()) { 2 } else { 1 };
        assert_eq!(got[id], want, "{id}: {got:?}");
    }
}

#[test]
fn a_queued_replay_and_the_journal_survive_kill_9() {
    // One resend a second: the replay is still under way when the broker dies.
    let (dir, sink, config, mut broker) = started("replay_rate_limit_per_s = 1");
    let sent = delivered(&broker, &sink, "K", 5);
    ctl_status_until(&config, WAIT, |s| s.contains("durable=5"));
    let out = replay_last_hour(&config, &["--force", "--reason", "drill"]);
    assert_eq!(out["queued"], 5, "{out}");
    broker.kill9();

    let _broker = Broker::start(&config);
    sink.wait_until(WAIT, "every message sent twice", |r| {
        sent.iter()
            .all(|id| r.iter().filter(|x| &x.control_id == id).count() >= 2)
    });
    replay_lane_done(&config, 5);
    // Attempts journaled before the crash are still there, and the
    // reconciliation finds nothing missing.
    let t = json(&config, &["trace", "K0", "--json"]);
    let attempts = t["messages"][0]["destinations"][0]["attempts"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        attempts
            .iter()
            .any(|a| a["channel"] == "live" && a["outcome"] == "delivered"),
        "{t}"
    );
    assert!(
        attempts
            .iter()
            .any(|a| a["channel"] == "replay" && a["outcome"] == "delivered"),
        "{t}"
    );
    let r = json(&config, &["reconcile", "--destination", "ehr", "--json"]);
    assert_eq!(r["counts"]["delivered"], 5, "{r}");
    assert_eq!(r["counts"]["missing"], 0, "{r}");
    // verify checks the journal, the replay log and the replay cursor too.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orderly"))
        .args(["verify", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for line in [
        "journal ehr: OK",
        "replay ehr: OK: 1 segment(s), 5 record(s)",
        "replay-cursors ehr: OK: 1 lane(s) at [5]",
    ] {
        assert!(text.contains(line), "{line} in {text}");
    }
}

#[test]
fn a_damaged_replay_record_blocks_only_the_replay_lane_until_skipped() {
    let (dir, sink, config, mut broker) = started("");
    delivered(&broker, &sink, "D", 3);
    // The sink's receipt precedes the lane's durable cursor: until that is
    // past D2, replay calls D2 pending on the live lane and skips it.
    ctl_status_until(&config, WAIT, |s| s.contains(" durable=3 "));
    // Queue the replay while delivery is paused, then stop cleanly.
    ctl(&config, &["pause", "ehr"]);
    let out = replay_last_hour(&config, &["--force", "--reason", "drill"]);
    assert_eq!(out["queued"], 3, "{out}");
    assert!(broker.terminate().success());

    // One bit of D1's copy in the replay log rots on disk.
    let segment = dir.path().join("data/replay/ehr/00000000000000000000.log");
    let mut bytes = std::fs::read(&segment).unwrap();
    let at = bytes
        .windows(4)
        .position(|w| w == b"|D1|")
        .expect("D1's copy in the replay log");
    bytes[at + 1] ^= 0x01;
    std::fs::write(&segment, bytes).unwrap();

    let _broker = Broker::start(&config);
    // D0 is resent; the replay lane then holds at the damaged copy, visibly,
    // and live delivery goes on.
    let status = ctl_status_until(&config, WAIT, |s| {
        s.contains("head=BLOCKED") && s.contains("replay committed=1")
    });
    assert!(status.contains("class=corrupt"), "{status}");
    let mut c = Client::connect(_broker.addr());
    assert!(c.roundtrip(&oru("LIVE", "DOE^J")).0.is_positive());
    sink.wait_accepted(&["LIVE".to_string()], WAIT);

    let out = ctl(
        &config,
        &["skip", "ehr", "--replay", "--reason", "replay copy damaged"],
    );
    assert!(out.contains("lane replay"), "{out}");
    replay_lane_done(&config, 3);
    let got = receipts(&sink);
    assert_eq!((got["D0"], got["D1"], got["D2"]), (2, 1, 2), "{got:?}");
    let letters = json(&config, &["dlq", "list", "--error", "corrupt", "--json"]);
    assert_eq!(letters["entries"].as_array().unwrap().len(), 1, "{letters}");
}

#[test]
fn what_the_live_lanes_will_send_again_is_never_replayed_nor_queued_twice() {
    let (_dir, sink, config, broker) = started("");
    delivered(&broker, &sink, "P", 5);
    ctl_status_until(&config, WAIT, |s| s.contains("durable=5"));
    let forced = ["--force", "--reason", "x"];
    // Queued once, then not again while it waits on the replay lane.
    ctl(&config, &["pause", "ehr"]);
    let first = replay_last_hour(&config, &forced);
    assert_eq!(first["queued"], 5, "{first}");
    let second = replay_last_hour(&config, &forced);
    assert_eq!(
        (&second["queued"], &second["already_queued"]),
        (&0.into(), &5.into()),
        "{second}"
    );
    // Resends waiting on the replay lane are pending for the destination:
    // clear moves them to the dead-letter queue too.
    let out = ctl(
        &config,
        &[
            "clear",
            "--destination",
            "ehr",
            "--reason",
            "downstream gone",
        ],
    );
    assert!(out.contains("lane replay: 5 message(s) moved"), "{out}");
    let cleared = json(&config, &["dlq", "list", "--error", "cleared", "--json"]);
    assert_eq!(cleared["entries"].as_array().unwrap().len(), 5, "{cleared}");
    // After a reset-cursor below them the live lane sends them again:
    // acknowledged before or not, a forced replay must not add a copy.
    ctl(
        &config,
        &[
            "reset-cursor",
            "ehr",
            "--to-offset",
            "0",
            "--reason",
            "EHR lost a day",
        ],
    );
    let out = replay_last_hour(&config, &["--dry-run", "--force", "--reason", "x"]);
    assert_eq!(
        (&out["pending"], &out["to_send"]),
        (&5.into(), &0.into()),
        "{out}"
    );
}

/// A destination's filter widened between two runs: the lane passed the
/// messages the old filter left out, never sending them. Reconcile must not
/// call them missing (they were not wanted then, and "missing" means a bug
/// or tampering) but counts them apart; what the new filter wants from the
/// change on is delivered and counted as usual.
#[test]
fn messages_an_earlier_filter_left_out_are_not_missing_after_it_is_widened() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(accept_all());
    let narrow = "[destination.filter]\nmessage_types = [\"ADT\"]";
    let config = config_with(dir.path(), &destination("ehr", sink.addr, narrow));
    let mut broker = Broker::start(&config);
    let adt = |id: &str| {
        format!("MSH|^~\\&|REG|HOSP|EHR|HOSP|20261127||ADT^A01|{id}|P|2.5\rPID|1||P{id}^^^HOSP^MR||DOE^J\r")
            .into_bytes()
    };
    let mut c = Client::connect(broker.addr());
    for id in ["R1", "R2", "R3"] {
        assert!(c.roundtrip(&oru(id, "DOE^J")).0.is_positive());
    }
    assert!(c.roundtrip(&adt("A1")).0.is_positive());
    sink.wait_accepted(&["A1".to_string()], WAIT);
    // The lane's durable cursor is past all four (R1..R3 passed, A1 sent).
    let status = ctl_status_until(&config, WAIT, |s| s.contains(" durable=4 "));
    assert!(status.contains(" durable=4 "), "{status}");
    broker.kill9();
    drop(broker);

    // The same destination, now taking every message type.
    let config = config_with(dir.path(), &destination("ehr", sink.addr, ""));
    let broker = Broker::start(&config);
    let mut c = Client::connect(broker.addr());
    assert!(c.roundtrip(&oru("R4", "DOE^J")).0.is_positive());
    sink.wait_accepted(&["R4".to_string()], WAIT);
    let status = ctl_status_until(&config, WAIT, |s| s.contains(" durable=5 "));
    assert!(status.contains(" durable=5 "), "{status}");
    let (code, r) = reconcile_json(&config, &["--destination", "ehr"]);
    let counts = &r["counts"];
    assert_eq!(counts["missing"], 0, "{r}");
    assert_eq!(counts["filtered_then"], 3, "{r}");
    assert_eq!(counts["delivered"], 2, "A1 and R4: {r}");
    assert_eq!(code, 0, "clean: {r}");
    let received: Vec<String> = sink.received().into_iter().map(|r| r.control_id).collect();
    assert_eq!(received, vec!["A1", "R4"], "the old filter's choice stands");

    // verify reads the history; a garbled one is reported, and the broker
    // still starts on it (reconcile then judges by today's filter alone).
    let verify = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_orderly"))
            .args(["verify", "--data-dir"])
            .arg(dir.path().join("data"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success(), text)
    };
    let (ok, text) = verify();
    assert!(
        ok && text.contains("filters ehr: OK: 2 filter(s)"),
        "{text}"
    );
    drop(broker);
    std::fs::write(dir.path().join("data/cursors/ehr.filters"), "garbage\n").unwrap();
    let (ok, text) = verify();
    assert!(!ok && text.contains("filters ehr: CORRUPT"), "{text}");
    let broker = Broker::start(&config);
    let mut c = Client::connect(broker.addr());
    assert!(c.roundtrip(&oru("R5", "DOE^J")).0.is_positive());
    sink.wait_accepted(&["R5".to_string()], WAIT);
    let kept = std::fs::read_to_string(dir.path().join("data/cursors/ehr.filters")).unwrap();
    assert_eq!(kept, "garbage\n", "left as it is, as evidence");
}
