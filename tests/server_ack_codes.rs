//! What the running broker answers, read against HL7 v2 Chapter 2 rather
//! than against the ACK builder: table 0008 for the codes (AE = an error in
//! the message, AR = not processed for another reason, CR = MSH-9/11/12 not
//! supported, CE = any other commit error), table 0155 for when an answer is
//! due, table 0357 for the ERR code, and the per-version ERR/MSH-9/MSA layout.
//!
//! Storage failures (AR / CE) are in `server_faults.rs`, where the storage
//! can be made to fail.
mod server_common;
use orderly::hl7::ack::AckCode;
use server_common::*;

/// One broker, one listener per `ack_mode`, and one that only takes ADT
/// production messages of version 2.5/2.5.1.
fn broker(dir: &std::path::Path) -> Broker {
    let restricted = "accept_message_types = [\"ADT\"]\naccept_processing_ids = [\"P\"]\naccept_versions = [\"2.5\", \"2.5.1\"]";
    Broker::start(&write_config(
        dir,
        &[
            ("auto", "lab", ""),
            ("strict", "lab", "ack_mode = \"strict\""),
            ("original", "lab", "ack_mode = \"original\""),
            ("adt-only", "adt", restricted),
        ],
    ))
}

/// A message with the given MSH-9, control id, MSH-11, MSH-12 and MSH-15|16.
fn msg(msh9: &str, id: &str, processing: &str, version: &str, msh15_16: &str) -> Vec<u8> {
    format!("MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261127080000||{msh9}|{id}|{processing}|{version}|||{msh15_16}\rPID|1||MRN1^^^HOSP^MR||DOE^JANE\r").into_bytes()
}

/// A message the broker must refuse for its content: MSH-9 is empty.
fn broken(id: &str, version: &str, msh15_16: &str) -> Vec<u8> {
    msg("", id, "P", version, msh15_16)
}

fn fields(ack: &[u8], segment: &str) -> Vec<String> {
    let text = String::from_utf8_lossy(ack);
    let line = text
        .split('\r')
        .find(|s| s.starts_with(&format!("{segment}|")))
        .unwrap_or_else(|| panic!("no {segment} in {text}"));
    line.split('|').map(str::to_owned).collect()
}

/// MSH-n of an ACK (MSH-1 is the field separator, so MSH-n is index n-1).
fn msh(ack: &[u8], n: usize) -> String {
    fields(ack, "MSH").get(n - 1).cloned().unwrap_or_default()
}

fn code_and_id(c: &mut Client, message: &[u8]) -> (String, String) {
    c.send(message);
    let ack = c.recv().expect("an answer");
    let msa = fields(&ack, "MSA");
    (msa[1].clone(), msa[2].clone())
}

#[test]
fn default_listener_answers_every_message_in_the_mode_msh15_asks_for() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let mut c = Client::connect(broker.addr_of("auto"));
    let cases = [
        // (message, expected MSA-1): original mode when MSH-15 is empty or
        // NE (senders that template NE still wait for an answer), enhanced
        // when it is AL, ER or SU.
        (msg("ORU^R01", "a1", "P", "2.5", ""), "AA"),
        (msg("ORU^R01", "a2", "P", "2.5", "NE|AL"), "AA"),
        (msg("ORU^R01", "a3", "P", "2.5", "AL|NE"), "CA"),
        (msg("ORU^R01", "a4", "P", "2.5", "ER|NE"), "CA"),
        (msg("ORU^R01", "a5", "P", "2.5", "SU|NE"), "CA"),
        (broken("a6", "2.5", ""), "AE"),
        (broken("a7", "2.5", "NE|NE"), "AE"),
        (broken("a8", "2.5", "AL|NE"), "CE"),
    ];
    for (i, (message, want)) in cases.iter().enumerate() {
        assert_eq!(code_and_id(&mut c, message).0, *want, "case {i}");
    }
}

#[test]
fn strict_listener_follows_table_0155_and_stays_in_frame_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let mut c = Client::connect(broker.addr_of("strict"));
    // Each row: a message, then a probe that is always answered (MSH-15
    // empty). If the first message gets no answer, the next ACK read is the
    // probe's: that, not a timeout, shows the silence.
    let cases = [
        (msg("ORU^R01", "s1", "P", "2.5", "NE|AL"), None),
        (broken("s2", "2.5", "NE|AL"), None),
        (msg("ORU^R01", "s3", "P", "2.5", "ER|NE"), None),
        (broken("s4", "2.5", "ER|NE"), Some("CE")),
        (msg("ORU^R01", "s5", "P", "2.5", "SU|NE"), Some("CA")),
        (broken("s6", "2.5", "SU|NE"), None),
        (msg("ORU^R01", "s7", "P", "2.5", "AL|AL"), Some("CA")),
        // Only MSH-16 valued: enhanced mode all the same.
        (msg("ORU^R01", "s8", "P", "2.5", "|AL"), Some("CA")),
        (msg("ORU^R01", "s9", "P", "2.5", ""), Some("AA")),
        (broken("s0", "2.5", ""), Some("AE")),
    ];
    for (i, (message, want)) in cases.iter().enumerate() {
        let probe = format!("probe{i}");
        c.send(message);
        c.send(&msg("ORU^R01", &probe, "P", "2.5", ""));
        let first = fields(&c.recv().expect("an answer"), "MSA");
        match want {
            None => assert_eq!(
                (first[1].as_str(), first[2].as_str()),
                ("AA", probe.as_str())
            ),
            Some(code) => {
                assert_eq!(first[1], *code, "case {i}");
                let next = fields(&c.recv().expect("probe answer"), "MSA");
                assert_eq!(next[2], probe);
            }
        }
    }
    // Silence is about the answer only: every well-formed one was stored.
    let ids: Vec<String> = inspect(&broker.data_dir, "lab")
        .into_iter()
        .map(|r| r.2)
        .collect();
    for id in ["s1", "s3", "s5", "s7", "s8", "s9"] {
        assert!(ids.iter().any(|s| s == id), "{id} stored: {ids:?}");
    }
}

#[test]
fn original_listener_never_answers_with_enhanced_codes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let mut c = Client::connect(broker.addr_of("original"));
    assert_eq!(
        code_and_id(&mut c, &msg("ORU^R01", "o1", "P", "2.5", "AL|AL")).0,
        "AA"
    );
    assert_eq!(
        code_and_id(&mut c, &msg("ORU^R01", "o2", "P", "2.5", "NE|NE")).0,
        "AA"
    );
    assert_eq!(code_and_id(&mut c, &broken("o3", "2.5", "AL|AL")).0, "AE");
    // "original" always answers (issue 12): ER does not silence a success,
    // SU does not silence an error, and neither brings enhanced codes.
    assert_eq!(
        code_and_id(&mut c, &msg("ORU^R01", "o4", "P", "2.5", "ER|ER")),
        ("AA".into(), "o4".into())
    );
    assert_eq!(
        code_and_id(&mut c, &msg("ORU^R01", "o5", "P", "2.5", "SU|SU")),
        ("AA".into(), "o5".into())
    );
    assert_eq!(code_and_id(&mut c, &broken("o6", "2.5", "SU|SU")).0, "AE");
    assert_eq!(code_and_id(&mut c, &broken("o7", "2.5", "ER|ER")).0, "AE");
}

#[test]
fn a_listener_restricting_msh9_11_12_answers_ar_or_cr_with_the_table_0357_code() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let mut c = Client::connect(broker.addr_of("adt-only"));
    // (message, MSA-1, ERR-3.1 per table 0357)
    let cases = [
        (msg("ORU^R01", "r1", "P", "2.5", ""), "AR", "200"),
        (msg("ORU^R01", "r2", "P", "2.5", "AL|NE"), "CR", "200"),
        (msg("ADT^A01", "r3", "T", "2.5", ""), "AR", "202"),
        (msg("ADT^A01", "r4", "P", "2.3", ""), "AR", "203"),
        (msg("ADT^A01", "r5", "P", "2.5.1", "AL|NE"), "CA", ""),
        (msg("ADT^A01", "r6", "P", "2.5", ""), "AA", ""),
    ];
    for (message, want, err_code) in cases {
        c.send(&message);
        let ack = c.recv().expect("an answer");
        assert_eq!(fields(&ack, "MSA")[1], want);
        if !err_code.is_empty() {
            let err = fields(&ack, "ERR");
            let err3 = err.get(3).cloned().unwrap_or_default();
            // v2.3 keeps the code in ERR-1 (ELD), v2.5 in ERR-3 (CWE).
            let code = if msh(&ack, 12).starts_with("2.3") {
                err[1]
                    .split('^')
                    .nth(3)
                    .unwrap_or("")
                    .split('&')
                    .next()
                    .unwrap_or("")
                    .to_owned()
            } else {
                err3.split('^').next().unwrap_or("").to_owned()
            };
            assert_eq!(code, err_code, "{}", String::from_utf8_lossy(&ack));
        }
    }
    let ids: Vec<String> = inspect(&broker.data_dir, "adt")
        .into_iter()
        .map(|r| r.2)
        .collect();
    assert_eq!(
        ids,
        vec!["r5".to_string(), "r6".to_string()],
        "only what was accepted is stored"
    );
}

#[test]
fn naks_follow_the_senders_version_layout() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let mut c = Client::connect(broker.addr_of("auto"));

    // v2.3: MSH-9 has two components (the message structure arrives in 2.4),
    // the error is ERR-1 as ELD (segment^sequence^field^code&text&table),
    // MSA-3 carries text.
    c.send(&broken("v23", "2.3", ""));
    let ack = c.recv().unwrap();
    let text = String::from_utf8_lossy(&ack).into_owned();
    assert_eq!(msh(&ack, 9), "ACK", "{text}");
    assert_eq!(msh(&ack, 12), "2.3");
    let msa = fields(&ack, "MSA");
    assert_eq!((msa[1].as_str(), msa[2].as_str()), ("AE", "v23"));
    assert!(
        msa.get(3).is_some_and(|t| !t.is_empty()),
        "MSA-3 text before 2.7: {text}"
    );
    let err = fields(&ack, "ERR");
    assert_eq!(err.len(), 2, "ERR-1 only before 2.5: {text}");
    let eld: Vec<&str> = err[1].split('^').collect();
    assert_eq!(&eld[..3], &["MSH", "1", "9"], "{text}");
    assert_eq!(
        eld[3].split('&').next(),
        Some("101"),
        "required field missing: {text}"
    );

    // v2.3 with an event to echo (MSH-10 broken instead): MSH-9 is ACK^event,
    // without the third component (the structure, 2.4 on).
    let m = String::from_utf8(broken("v23e", "2.3", ""))
        .unwrap()
        .replace("||v23e|", "|ORU^R01||")
        .into_bytes();
    c.send(&m);
    let ack = c.recv().unwrap();
    let text = String::from_utf8_lossy(&ack).into_owned();
    assert_eq!(msh(&ack, 9), "ACK^R01", "{text}");
    assert_eq!(fields(&ack, "MSA")[1], "AE", "{text}");
    let err = fields(&ack, "ERR");
    let eld: Vec<&str> = err[1].split('^').collect();
    assert_eq!(&eld[..3], &["MSH", "1", "10"], "{text}");

    // v2.8: MSH-9 ACK^event^ACK; ERR-2 location, ERR-3 the table 0357 code,
    // ERR-4 severity; MSA-3 is withdrawn.
    let mut m = broken("v28", "2.8", "");
    // MSH-9 empty has no event to echo; give it one and break MSH-10 instead.
    m = String::from_utf8(m)
        .unwrap()
        .replace("||v28|", "|ORU^R01||")
        .into_bytes();
    c.send(&m);
    let ack = c.recv().unwrap();
    let text = String::from_utf8_lossy(&ack).into_owned();
    assert_eq!(msh(&ack, 9), "ACK^R01^ACK", "{text}");
    let msa = fields(&ack, "MSA");
    assert_eq!(msa[1], "AE");
    assert!(
        msa.get(3).is_none_or(|t| t.is_empty()),
        "no MSA-3 from 2.7: {text}"
    );
    let err = fields(&ack, "ERR");
    assert_eq!(err[1], "", "ERR-1 is withdrawn: {text}");
    assert_eq!(err[2], "MSH^1^10", "{text}");
    assert_eq!(err[3].split('^').next(), Some("101"), "{text}");
    assert_eq!(err[3].split('^').nth(2), Some("HL70357"), "{text}");
    assert_eq!(err[4], "E", "{text}");
    assert!(
        msh(&ack, 7).ends_with("+0000"),
        "MSH-7 carries a UTC offset: {text}"
    );
}

#[test]
fn a_long_control_id_and_a_v27_truncation_character_are_echoed_whole() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let mut c = Client::connect(broker.addr_of("auto"));
    let long: String = (0..150)
        .map(|i| char::from(b'A' + (i % 26) as u8))
        .collect();
    assert_eq!(
        c.roundtrip(&msg("ORU^R01", &long, "P", "2.5", "")),
        (AckCode::ApplicationAccept, long.clone())
    );
    let v27 = String::from_utf8(msg("ORU^R01", "t27", "P", "2.7", ""))
        .unwrap()
        .replacen("^~\\&", "^~\\&#", 1);
    c.send(v27.as_bytes());
    let ack = c.recv().unwrap();
    assert_eq!(msh(&ack, 2), "^~\\&#", "{}", String::from_utf8_lossy(&ack));
    assert_eq!(fields(&ack, "MSA")[1], "AA");

    // Three encoding characters (no subcomponent separator, as some older
    // senders write MSH-2): accepted, and echoed as received.
    let three = String::from_utf8(msg("ORU^R01", "t3", "P", "2.3", ""))
        .unwrap()
        .replacen("^~\\&", "^~\\", 1);
    c.send(three.as_bytes());
    let ack = c.recv().unwrap();
    assert_eq!(msh(&ack, 2), "^~\\", "{}", String::from_utf8_lossy(&ack));
    assert_eq!(fields(&ack, "MSA")[1..3], ["AA", "t3"]);
}
