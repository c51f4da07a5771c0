//! Fuzz target: every parse entry point on arbitrary bytes. Parsed messages
//! must re-serialise to the same bytes, and field-path access (including a
//! path taken from the input) must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderly::hl7::{ack, batch, parse_header, validate, FieldPath, Message, ValidationLevel};

const PATHS: &[&str] = &[
    "MSH-1",
    "MSH-2",
    "MSH-9.2",
    "MSH-10",
    "PID-3",
    "PID-3.1",
    "PID-3[2].1",
    "PID-3.4.2",
    "OBX[3]-5",
    "EVN-1[1].1.1",
];

fuzz_target!(|data: &[u8]| {
    let _ = parse_header(data);
    let _ = validate(data, ValidationLevel::Minimal);
    let _ = batch::split_batch(data);
    let _ = ack::parse_ack(data);
    let Ok(message) = Message::parse(data) else {
        return;
    };
    let mut out = Vec::with_capacity(data.len());
    message.write_to(&mut out);
    assert_eq!(out, data, "re-serialising must reproduce the input");
    let from_input = data
        .split(|&b| b == b'\r')
        .next_back()
        .and_then(|tail| std::str::from_utf8(tail).ok())
        .and_then(|s| FieldPath::parse(s).ok());
    let paths = PATHS
        .iter()
        .filter_map(|p| FieldPath::parse(p).ok())
        .chain(from_input);
    for path in paths {
        if let Some(value) = message.get(&path) {
            let decoded = value.decoded();
            assert!(
                decoded.len() <= value.raw().len() * 100 + 1,
                "escape expansion is bounded"
            );
        }
    }
});
