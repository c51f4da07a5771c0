//! The shared corpus, driven by `../shared/corpus/MANIFEST.tsv`: every file
//! meets the expectation the manifest gives it (accept, reject with the named
//! error, batch split into the named number of messages, either without a
//! panic), parsed messages re-serialise to identical bytes, and every
//! message's ACK or NAK parses back with the right code.

use std::path::PathBuf;

use orderly::hl7::ack::{self, AckCode, AckPolicy, Hl7Timestamp, Outcome};
use orderly::hl7::{
    split_batch, validate, HeaderError, Message, MshHeader, ValidationError, ValidationLevel,
};

struct Entry {
    file: String,
    message_type: String,
    version: String,
    expect: String,
    note: String,
    bytes: Vec<u8>,
}

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus")
}

fn manifest() -> Vec<Entry> {
    let dir = corpus_dir();
    let text = std::fs::read_to_string(dir.join("MANIFEST.tsv"))
        .expect("shared corpus manifest is readable");
    let entries: Vec<Entry> = text
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            assert!(
                cols.len() >= 4,
                "manifest line has file, type, version, expect: {line}"
            );
            let bytes =
                std::fs::read(dir.join(cols[0])).unwrap_or_else(|e| panic!("{}: {e}", cols[0]));
            Entry {
                file: cols[0].to_owned(),
                message_type: cols[1].to_owned(),
                version: cols[2].to_owned(),
                expect: cols[3].to_owned(),
                note: cols.get(4).unwrap_or(&"").to_string(),
                bytes,
            }
        })
        .collect();
    assert!(
        entries.len() >= 80,
        "manifest lists the whole corpus, got {}",
        entries.len()
    );
    entries
}

/// MSH-9 with components joined by `^`, whatever the message's delimiter.
fn normalised_type(header: &MshHeader<'_>) -> String {
    let component = header.delimiters().component;
    let raw: Vec<u8> = header
        .message_type()
        .iter()
        .map(|&b| if b == component { b'^' } else { b })
        .collect();
    String::from_utf8_lossy(&raw).into_owned()
}

fn check_accept(entry: &Entry) {
    let header = validate(&entry.bytes, ValidationLevel::Minimal)
        .unwrap_or_else(|e| panic!("{}: {e}", entry.file));
    if entry.message_type != "-" {
        assert_eq!(
            normalised_type(&header),
            entry.message_type,
            "{}: MSH-9",
            entry.file
        );
    }
    let version = header
        .version()
        .split(|&b| b == header.delimiters().component)
        .next()
        .unwrap_or(b"");
    let expected_version = if entry.version == "-" {
        ""
    } else {
        entry.version.as_str()
    };
    assert_eq!(
        String::from_utf8_lossy(version),
        expected_version,
        "{}: MSH-12",
        entry.file
    );
    check_round_trip(entry, &entry.bytes);
}

fn check_round_trip(entry: &Entry, bytes: &[u8]) {
    let message = Message::parse(bytes).unwrap_or_else(|e| panic!("{}: {e}", entry.file));
    let mut out = Vec::new();
    message.write_to(&mut out);
    assert!(out == bytes, "{}: re-serialised bytes differ", entry.file);
}

/// The typed errors a reject note names; a note naming none fails the test.
fn expected_errors(note: &str) -> Vec<fn(&ValidationError) -> bool> {
    let mut expected: Vec<fn(&ValidationError) -> bool> = Vec::new();
    if note.contains("first segment is not MSH") || note.contains("holds no MSH") {
        expected.push(|e| {
            matches!(
                e,
                ValidationError::Header(HeaderError::NotMsh { .. } | HeaderError::Empty)
            )
        });
    }
    if note.contains("repeats a delimiter") {
        expected.push(|e| {
            matches!(
                e,
                ValidationError::Header(HeaderError::DuplicateDelimiter { .. })
            )
        });
    }
    if note.contains("0xFD byte in MSH-2") {
        expected.push(|e| {
            matches!(
                e,
                ValidationError::Header(HeaderError::IllegalEncodingChar { byte: 0xFD, .. })
            )
        });
    }
    if note.contains("MSH-9 message type empty") {
        expected.push(|e| matches!(e, ValidationError::MissingField { field: 9, .. }));
    }
    if note.contains("MSH-10 control id empty") {
        expected.push(|e| matches!(e, ValidationError::MissingField { field: 10, .. }));
    }
    expected
}

/// `MSH-2 has N encoding characters` in a note, as N.
fn expected_encoding_char_count(note: &str) -> Option<usize> {
    let rest = note.split("MSH-2 has ").nth(1)?;
    let (number, tail) = rest.split_once(' ')?;
    tail.starts_with("encoding characters")
        .then(|| number.parse().ok())?
}

fn check_reject(entry: &Entry) {
    let err = validate(&entry.bytes, ValidationLevel::Minimal)
        .err()
        .unwrap_or_else(|| panic!("{}: accepted", entry.file));
    let matchers = expected_errors(&entry.note);
    let count = expected_encoding_char_count(&entry.note);
    assert!(
        !matchers.is_empty() || count.is_some(),
        "{}: note names no error this test knows: {}",
        entry.file,
        entry.note
    );
    let by_count = count.is_some_and(|n| {
        err == ValidationError::Header(HeaderError::EncodingCharsCount { count: n })
    });
    assert!(
        by_count || matchers.iter().any(|m| m(&err)),
        "{}: got `{err}`, note says: {}",
        entry.file,
        entry.note
    );
    assert!(!err.to_string().is_empty());
    check_nak(entry, &err);
}

fn check_nak(entry: &Entry, err: &ValidationError) {
    let header = orderly::hl7::parse_header(&entry.bytes).ok();
    let mut out = Vec::new();
    let (mode, kind) =
        ack::decide(AckPolicy::Auto, header.as_ref(), err.outcome()).expect("auto always answers");
    ack::build_ack(
        header.as_ref(),
        mode,
        kind,
        Some(&err.ack_error()),
        b"NAK-1",
        Hl7Timestamp::from_unix_seconds(0),
        &mut out,
    );
    let parsed =
        ack::parse_ack(&out).unwrap_or_else(|e| panic!("{}: NAK does not parse: {e}", entry.file));
    assert!(
        !parsed.code.is_positive(),
        "{}: NAK code {:?}",
        entry.file,
        parsed.code
    );
    let info = parsed
        .error
        .unwrap_or_else(|| panic!("{}: NAK without ERR", entry.file));
    assert_eq!(
        info.code,
        Some(err.ack_error().code.code()),
        "{}",
        entry.file
    );
}

fn check_batch(entry: &Entry) {
    let batch = split_batch(&entry.bytes).unwrap_or_else(|e| panic!("{}: {e}", entry.file));
    let types: Vec<&str> = entry.message_type.split(',').collect();
    let count = message_count_in_note(&entry.note).unwrap_or(types.len());
    assert_eq!(
        batch.messages.len(),
        count,
        "{}: messages in batch",
        entry.file
    );
    for (i, message) in batch.messages.iter().enumerate() {
        let header = validate(message, ValidationLevel::Minimal)
            .unwrap_or_else(|e| panic!("{} message {}: {e}", entry.file, i + 1));
        let expected_type = if types.len() == count {
            types[i]
        } else {
            types[0]
        };
        // The manifest may leave out the message structure (MSH-9.3).
        let got = normalised_type(&header);
        let same = got == expected_type || got.starts_with(&format!("{expected_type}^"));
        assert!(
            same,
            "{} message {}: MSH-9 {got}, manifest {expected_type}",
            entry.file,
            i + 1
        );
        check_round_trip(entry, message);
    }
}

/// "1 message", "2 ORU messages", "3 SIU messages" in a note.
fn message_count_in_note(note: &str) -> Option<usize> {
    let words: Vec<&str> = note.split_whitespace().collect();
    words.iter().enumerate().find_map(|(i, w)| {
        let n: usize = w.parse().ok()?;
        let follows = |k: usize| words.get(i + k).is_some_and(|x| x.starts_with("message"));
        (follows(1) || follows(2)).then_some(n)
    })
}

#[test]
fn every_corpus_file_meets_its_manifest_expectation() {
    let mut seen = std::collections::BTreeMap::new();
    for entry in manifest() {
        match entry.expect.as_str() {
            "accept" => check_accept(&entry),
            "reject" => check_reject(&entry),
            "batch" => check_batch(&entry),
            "either" => {
                if validate(&entry.bytes, ValidationLevel::Minimal).is_ok() {
                    check_round_trip(&entry, &entry.bytes);
                }
            }
            other => panic!("{}: unknown expectation `{other}`", entry.file),
        }
        *seen.entry(entry.expect.clone()).or_insert(0) += 1;
    }
    assert!(
        seen.get("accept").copied().unwrap_or(0) >= 50
            && seen.get("reject").copied().unwrap_or(0) >= 10
            && seen.get("batch").copied().unwrap_or(0) >= 5,
        "{seen:?}"
    );
}

#[test]
fn every_accepted_message_gets_an_ack_answering_its_control_id() {
    for entry in manifest().iter().filter(|e| e.expect == "accept") {
        let header = validate(&entry.bytes, ValidationLevel::Minimal)
            .unwrap_or_else(|e| panic!("{}: {e}", entry.file));
        let mut out = Vec::new();
        let (mode, kind) = ack::decide(AckPolicy::Auto, Some(&header), Outcome::Stored)
            .expect("auto always answers");
        ack::build_ack(
            Some(&header),
            mode,
            kind,
            None,
            b"ACK-1",
            Hl7Timestamp::from_unix_seconds(0),
            &mut out,
        );
        assert!(
            out.len() < 1024,
            "{}: ACK of {} bytes",
            entry.file,
            out.len()
        );
        let parsed = ack::parse_ack(&out).unwrap_or_else(|e| panic!("{}: {e}", entry.file));
        // Table 0155 values that ask for an accept ACK; `auto` answers
        // those in enhanced mode and everything else (empty, NE) in original.
        let msh15 = String::from_utf8_lossy(header.accept_ack_type())
            .trim()
            .to_uppercase();
        let expected = if ["AL", "ER", "SU"].contains(&msh15.as_str()) {
            AckCode::CommitAccept
        } else {
            AckCode::ApplicationAccept
        };
        assert_eq!(parsed.code, expected, "{}", entry.file);
        assert!(parsed.acknowledges(header.control_id()), "{}", entry.file);
        let ack_header = parsed
            .header
            .unwrap_or_else(|| panic!("{}: ACK has no MSH", entry.file));
        assert_eq!(
            ack_header.receiving_application(),
            header.sending_application(),
            "{}",
            entry.file
        );
        assert_eq!(
            ack_header.sending_facility(),
            header.receiving_facility(),
            "{}",
            entry.file
        );
        assert_eq!(ack_header.control_id(), b"ACK-1");
    }
}

#[test]
fn manifest_note_helpers_read_counts() {
    assert_eq!(
        message_count_in_note("FHS/BHS/BTS/FTS file, 2 ORU messages but BTS-1 says 1"),
        Some(2)
    );
    assert_eq!(message_count_in_note("BHS, 1 message, BTS"), Some(1));
    assert_eq!(
        expected_encoding_char_count("MSH-2 has 6 encoding characters (need 4"),
        Some(6)
    );
}
