//! Property tests for the HL7 parser with generated messages: any legal
//! delimiter set, CR/LF/CRLF segment ends, and values the generator knows,
//! so every expected value comes from the generator, not from the parser.
//! Also escape encode/decode round trips and the header fast path.

use orderly::hl7::escape::{decode, encode_bounded};
use orderly::hl7::{
    parse_header, validate, Delimiters, FieldPath, HeaderError, Message, ValidationError,
    ValidationLevel,
};
use proptest::prelude::*;

/// Five distinct ASCII punctuation characters: field, component,
/// repetition, escape, subcomponent.
fn delimiters() -> impl Strategy<Value = Delimiters> {
    let punct: Vec<u8> = (0x21u8..0x7F).filter(u8::is_ascii_punctuation).collect();
    Just(punct).prop_shuffle().prop_map(|p| Delimiters {
        field: p[0],
        component: p[1],
        repetition: p[2],
        escape: p[3],
        subcomponent: p[4],
        truncation: None,
    })
}

/// Text with no delimiter, escape or line-end bytes in it (alphanumerics,
/// space and UTF-8).
fn text() -> impl Strategy<Value = String> {
    "[A-Za-z0-9 éß]{0,6}"
}

/// field -> repetitions -> components -> subcomponents.
type Field = Vec<Vec<Vec<String>>>;

fn field() -> impl Strategy<Value = Field> {
    proptest::collection::vec(
        proptest::collection::vec(proptest::collection::vec(text(), 1..3), 1..3),
        1..3,
    )
}

fn segment() -> impl Strategy<Value = (String, Vec<Field>)> {
    (
        "(PID|OBX|NTE|ZZ1)",
        proptest::collection::vec(field(), 1..6),
    )
}

fn write_field(f: &Field, d: &Delimiters, out: &mut Vec<u8>) {
    for (r, rep) in f.iter().enumerate() {
        if r > 0 {
            out.push(d.repetition);
        }
        for (c, comp) in rep.iter().enumerate() {
            if c > 0 {
                out.push(d.component);
            }
            for (s, sub) in comp.iter().enumerate() {
                if s > 0 {
                    out.push(d.subcomponent);
                }
                out.extend_from_slice(sub.as_bytes());
            }
        }
    }
}

fn build(d: &Delimiters, segments: &[(String, Vec<Field>)], ends: &[&[u8]]) -> Vec<u8> {
    let f = d.field as char;
    let mut out = format!(
        "MSH{f}{}{}{}{}{f}APP{f}FAC{f}{f}{f}2024{f}{f}ADT{}A01{f}CTRL1{f}P{f}2.5",
        d.component as char,
        d.repetition as char,
        d.escape as char,
        d.subcomponent as char,
        d.component as char
    )
    .into_bytes();
    for (i, (name, fields)) in segments.iter().enumerate() {
        out.extend_from_slice(ends[i % ends.len()]);
        out.extend_from_slice(name.as_bytes());
        for field in fields {
            out.push(d.field);
            write_field(field, d, &mut out);
        }
    }
    out
}

proptest! {
    #[test]
    fn generated_values_come_back_through_field_paths(
        d in delimiters(),
        segments in proptest::collection::vec(segment(), 1..6),
        ends in proptest::sample::subsequence(vec![&b"\r"[..], b"\n", b"\r\n"], 1..=3),
    ) {
        let bytes = build(&d, &segments, &ends);
        let message = Message::parse(&bytes).expect("generated message parses");
        prop_assert_eq!(message.segment_count(), segments.len() + 1);
        prop_assert_eq!(message.header().control_id(), b"CTRL1");
        let mut occurrences = std::collections::HashMap::new();
        for (name, fields) in &segments {
            let occurrence = *occurrences.entry(name.clone()).and_modify(|n| *n += 1).or_insert(1u16);
            for (fi, field) in fields.iter().enumerate() {
                for (ri, rep) in field.iter().enumerate() {
                    for (ci, comp) in rep.iter().enumerate() {
                        for (si, sub) in comp.iter().enumerate() {
                            let path = format!("{name}[{occurrence}]-{}[{}].{}.{}", fi + 1, ri + 1, ci + 1, si + 1);
                            let value = message.get(&FieldPath::parse(&path).unwrap());
                            prop_assert_eq!(value.map(|v| v.raw()), Some(sub.as_bytes()), "{}", path);
                        }
                    }
                }
            }
            let past = format!("{name}[{occurrence}]-{}", fields.len() + 1);
            prop_assert!(message.get(&FieldPath::parse(&past).unwrap()).is_none(), "{} is past the last field", past);
        }
        let mut out = Vec::new();
        message.write_to(&mut out);
        prop_assert_eq!(out, bytes);
    }

    #[test]
    fn escaping_then_decoding_returns_the_text(d in delimiters(), text in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut escaped = Vec::new();
        let written = encode_bounded(&text, &d, usize::MAX, &mut escaped);
        prop_assert_eq!(written, text.len());
        prop_assert!(!escaped.iter().any(|&b| b == d.field || b == d.component || b == d.repetition || b == d.subcomponent || b == b'\r' || b == b'\n'));
        prop_assert_eq!(decode(&escaped, &d).into_owned(), text);
    }

    #[test]
    fn bounded_escaping_writes_a_decodable_prefix(d in delimiters(), text in ".{0,80}", budget in 0usize..60) {
        let mut escaped = Vec::new();
        let written = encode_bounded(text.as_bytes(), &d, budget, &mut escaped);
        prop_assert!(escaped.len() <= budget);
        prop_assert!(text.is_char_boundary(written), "cut between characters");
        prop_assert_eq!(decode(&escaped, &d).into_owned(), text.as_bytes()[..written].to_vec());
    }

    #[test]
    fn header_parse_never_panics_and_validation_agrees(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let header = parse_header(&bytes);
        let validated = validate(&bytes, ValidationLevel::None);
        prop_assert_eq!(header.is_ok(), validated.is_ok());
        let _ = Message::parse(&bytes);
    }
}

#[test]
fn custom_delimiter_header_reads_the_same_fields() {
    let msg = b"MSH#!@%*#SENDER#FAC#RECV#RFAC#20240101##ORU!R01!ORU_R01#ID-7#P#2.5.1###AL\rOBX#1#ST#A!B*C@D##";
    let header = parse_header(msg).unwrap();
    assert_eq!(header.message_type_component(2), b"R01");
    assert_eq!(header.control_id(), b"ID-7");
    assert_eq!(header.accept_ack_type(), b"AL");
    let message = Message::parse(msg).unwrap();
    let get = |p: &str| {
        message
            .get(&FieldPath::parse(p).unwrap())
            .map(|v| v.raw().to_vec())
    };
    assert_eq!(get("OBX-3.2.2"), Some(b"C".to_vec()));
    assert_eq!(get("OBX-3[2]"), Some(b"D".to_vec()));
}

#[test]
fn validation_errors_name_segment_and_field() {
    let err = validate(
        b"MSH|^~\\&|A|B|C|D|2024||ADT^A01||P|2.5",
        ValidationLevel::Minimal,
    )
    .unwrap_err();
    assert!(
        err.to_string().starts_with("segment 1 (MSH), field MSH-10"),
        "{err}"
    );
    let err = validate(b"MSH|^~|A", ValidationLevel::None).unwrap_err();
    assert_eq!(
        err,
        ValidationError::Header(HeaderError::EncodingCharsCount { count: 2 })
    );
    assert!(err.to_string().contains("MSH-2"), "{err}");
}
