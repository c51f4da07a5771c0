//! The dead-letter workflow through the real binary: `orderly ctl dlq list`
//! with every filter, and `show`. The oracle is what the test sent and what
//! the sink refused, not the broker's own output.
mod delivery_common;
mod server_common;
use delivery_common::*;
use server_common::{Broker, Client};
use std::sync::Arc;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn adt(id: &str, facility: &str, patient: &str, visit: &str) -> Vec<u8> {
    format!(
        "MSH|^~\\&|ADT|{facility}|EHR|HOSP|20261127||ADT^A08|{id}|P|2.5\rEVN|A08|20261127\rPID|1||{patient}^^^HOSP^MR||DOE^J\rPV1|1|I|W1^1^1||||||||||||||||{visit}\r"
    )
    .into_bytes()
}

/// Control ids of `ctl dlq list --json` with extra filter arguments.
fn listed(config: &std::path::Path, filter: &[&str]) -> Vec<String> {
    let mut args = vec!["dlq", "list", "--json"];
    args.extend_from_slice(filter);
    let v: serde_json::Value = serde_json::from_str(&ctl(config, &args)).expect("json");
    v["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| e["control_id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn dead_letters_are_listed_by_every_filter_and_shown_whole() {
    let dir = tempfile::tempdir().unwrap();
    // The downstream finds an error (AE) in BAD1 and BAD2: dead-lettered.
    let sink = Sink::start(Arc::new(|id, _| match id {
        "BAD1" | "BAD2" => Reply::Error,
        _ => Reply::Accept,
    }));
    let config = config_with(dir.path(), &destination("ehr", sink.addr, ""));
    let broker = Broker::start(&config);
    let bad1 = adt("BAD1", "NORTH", "P1", "V1");
    let bad2 = adt("BAD2", "SOUTH", "P2", "V2");
    let mut c = Client::connect(broker.addr());
    for m in [&bad1, &bad2, &adt("GOOD", "NORTH", "P1", "V1")] {
        assert!(c.roundtrip(m).0.is_positive());
    }
    // Strict order: GOOD is delivered only after both were dead-lettered.
    sink.wait_accepted(&["GOOD".to_string()], WAIT);

    assert_eq!(listed(&config, &[]), vec!["BAD1", "BAD2"]);
    assert_eq!(
        listed(&config, &["--destination", "ehr"]),
        vec!["BAD1", "BAD2"]
    );
    assert_eq!(listed(&config, &["--control-id", "BAD2"]), vec!["BAD2"]);
    assert_eq!(listed(&config, &["--patient", "P2"]), vec!["BAD2"]);
    assert_eq!(listed(&config, &["--encounter", "V1"]), vec!["BAD1"]);
    assert_eq!(listed(&config, &["--facility", "SOUTH"]), vec!["BAD2"]);
    assert_eq!(
        listed(&config, &["--error", "rejected"]),
        vec!["BAD1", "BAD2"]
    );
    assert!(listed(&config, &["--error", "timeout"]).is_empty());
    assert_eq!(listed(&config, &["--since", "1h"]), vec!["BAD1", "BAD2"]);
    assert!(listed(&config, &["--until", "1h"]).is_empty());
    assert!(listed(
        &config,
        &[
            "--since",
            "2020-01-01T00:00:00Z",
            "--until",
            "2020-01-02T00:00:00+01:00"
        ]
    )
    .is_empty());
    assert_eq!(
        listed(
            &config,
            &["--patient", "P1", "--facility", "NORTH", "--since", "1d"]
        ),
        vec!["BAD1"]
    );

    // Text for people: a header and one line per record, ids that `show` takes.
    let text = ctl(&config, &["dlq", "list"]);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let id = lines[2].split(' ').next().unwrap().to_string();
    assert!(lines[2].contains(" BAD2 ADT^A08 SOUTH rejected "), "{text}");

    let shown = ctl(&config, &["dlq", "show", &id]);
    assert!(shown.contains("control id: BAD2"), "{shown}");
    assert!(
        shown.contains("MSA|AE|BAD2"),
        "the sink's answer is shown: {shown}"
    );
    assert!(shown.contains("  PV1|1|I|W1^1^1"), "{shown}");
    let json: serde_json::Value =
        serde_json::from_str(&ctl(&config, &["dlq", "show", &id, "--json"])).unwrap();
    assert_eq!(
        json["payload"].as_str().unwrap().as_bytes(),
        &bad2[..],
        "the message, byte for byte"
    );
    assert_eq!(json["entry"]["source_offset"], 1);

    // Discard: kept and listed with who and why, audited, never twice.
    let bad1_id = {
        let v: serde_json::Value = serde_json::from_str(&ctl(
            &config,
            &["dlq", "list", "--json", "--control-id", "BAD1"],
        ))
        .unwrap();
        v["entries"][0]["id"].as_str().unwrap().to_string()
    };
    let out = ctl(
        &config,
        &["dlq", "discard", &bad1_id, "--reason", "sent again by hand"],
    );
    assert!(out.contains("discarded"), "{out}");
    assert_eq!(
        listed(&config, &[]),
        vec!["BAD1", "BAD2"],
        "nothing vanishes"
    );
    assert_eq!(listed(&config, &["--status", "open"]), vec!["BAD2"]);
    assert_eq!(listed(&config, &["--status", "discarded"]), vec!["BAD1"]);
    let shown = ctl(&config, &["dlq", "show", &bad1_id]);
    assert!(
        shown.contains("status: discarded by uid=") && shown.contains("sent again by hand"),
        "{shown}"
    );
    let (code, err) = ctl_fails(&config, &["dlq", "discard", &bad1_id, "--reason", "again"]);
    assert_eq!(code, 1);
    assert!(err.contains("already discarded"), "{err}");
    let audit = std::fs::read_to_string(dir.path().join("data").join("audit.log")).unwrap();
    let lines: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("dlq-discard"))
        .collect();
    assert!(
        lines.len() >= 2 && lines.iter().all(|l| l.contains("uid=")),
        "{audit}"
    );
    assert!(
        lines.iter().any(|l| l.contains("sent again by hand")),
        "{audit}"
    );
    // The status record itself is not a dead letter.
    let status_id = format!("ehr:{}", 2);
    let (_, err) = ctl_fails(&config, &["dlq", "show", &status_id]);
    assert!(err.contains("not a dead letter"), "{err}");

    // Mistakes get clear errors: exit 2 for a bad argument, 1 for a refusal.
    let (code, err) = ctl_fails(&config, &["dlq", "list", "--since", "yesterday"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("RFC 3339"), "{err}");
    let (code, err) = ctl_fails(&config, &["dlq", "list", "--destination", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("no destination named `nope`"), "{err}");
    let (_, err) = ctl_fails(&config, &["dlq", "show", "ehr:99"]);
    assert!(err.contains("ehr:99"), "{err}");
}

#[test]
fn clear_moves_every_pending_message_to_the_dead_letter_queue_and_delivery_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(accept_all());
    let config = config_with(dir.path(), &destination("ehr", sink.addr, ""));
    let broker = Broker::start(&config);
    ctl(&config, &["pause", "ehr"]);
    let mut c = Client::connect(broker.addr());
    let pending: Vec<String> = (0..5).map(|i| format!("OLD{i}")).collect();
    for id in &pending {
        assert!(c.roundtrip(&adt(id, "NORTH", "P1", "V1")).0.is_positive());
    }
    let (code, err) = ctl_fails(
        &config,
        &[
            "clear",
            "--destination",
            "ehr",
            "--lane",
            "3",
            "--reason",
            "x",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("no lane 3"), "{err}");
    let out = ctl(
        &config,
        &[
            "clear",
            "--destination",
            "ehr",
            "--reason",
            "EHR rebuilt from backup",
        ],
    );
    assert!(out.contains("lane 0: 5 message(s) moved"), "{out}");
    assert_eq!(listed(&config, &["--error", "cleared"]), pending);
    ctl(&config, &["resume", "ehr"]);
    assert!(c
        .roundtrip(&adt("NEW", "NORTH", "P1", "V1"))
        .0
        .is_positive());
    sink.wait_accepted(&["NEW".to_string()], WAIT);
    let delivered: Vec<String> = sink.received().into_iter().map(|r| r.control_id).collect();
    assert_eq!(delivered, vec!["NEW"], "cleared messages are not delivered");
    let audit = std::fs::read_to_string(dir.path().join("data").join("audit.log")).unwrap();
    assert!(
        audit
            .lines()
            .any(|l| l.contains("\"clear\"") && l.contains("EHR rebuilt from backup")),
        "{audit}"
    );
}

#[test]
fn trace_shows_each_message_its_duplicates_and_where_it_stands_per_destination() {
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(reject_only("BAD1"));
    let config = config_with(dir.path(), &destination("ehr", sink.addr, ""));
    let broker = Broker::start(&config);
    let good = adt("GOOD", "NORTH", "P1", "V1");
    let mut c = Client::connect(broker.addr());
    assert!(c
        .roundtrip(&adt("BAD1", "NORTH", "P1", "V1"))
        .0
        .is_positive());
    assert!(c.roundtrip(&good).0.is_positive());
    sink.wait_accepted(&["GOOD".to_string()], WAIT);
    assert!(c.roundtrip(&good).0.is_positive(), "a resend: a duplicate");
    // The lane has read GOOD's ACK and passed the duplicate event (offset 2).
    let status = ctl_status_until(&config, WAIT, |s| s.contains("durable=3"));
    assert!(status.contains("durable=3"), "{status}");
    ctl(&config, &["pause", "ehr"]);
    assert!(c
        .roundtrip(&adt("LATE", "NORTH", "P1", "V1"))
        .0
        .is_positive());

    let t: serde_json::Value =
        serde_json::from_str(&ctl(&config, &["trace", "GOOD", "--json"])).unwrap();
    let m = &t["messages"][0];
    assert_eq!(t["messages"].as_array().unwrap().len(), 1);
    assert_eq!(
        (m["queue"].as_str(), m["offset"].as_u64()),
        (Some("lab"), Some(1))
    );
    assert_eq!(m["bytes"].as_u64(), Some(good.len() as u64));
    let sha: String = sha2::Sha256::digest(&good)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(m["sha256"].as_str(), Some(sha.as_str()));
    assert_eq!(m["destinations"][0]["state"].as_str(), Some("delivered"));
    let events = t["events"].as_array().unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0]["event"].as_str(), events[0]["original"].as_u64()),
        (Some("duplicate"), Some(1))
    );

    let t: serde_json::Value =
        serde_json::from_str(&ctl(&config, &["trace", "BAD1", "--json"])).unwrap();
    let d = &t["messages"][0]["destinations"][0];
    assert_eq!(d["state"].as_str(), Some("dead-lettered"), "{t}");
    assert!(
        d["detail"]
            .as_str()
            .unwrap()
            .starts_with("ehr:0 (rejected, open)"),
        "{t}"
    );
    let t: serde_json::Value =
        serde_json::from_str(&ctl(&config, &["trace", "LATE", "--json"])).unwrap();
    assert_eq!(
        t["messages"][0]["destinations"][0]["state"].as_str(),
        Some("pending"),
        "{t}"
    );
    let text = ctl(&config, &["trace", "GOOD"]);
    assert!(
        text.contains("destination ehr lane 0: delivered") && text.contains("event duplicate"),
        "{text}"
    );
    let (code, err) = ctl_fails(&config, &["trace", "NOPE"]);
    assert_eq!(code, 1);
    assert!(err.contains("no message with control id `NOPE`"), "{err}");
}
