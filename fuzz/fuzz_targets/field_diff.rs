//! Fuzz target: the field diff an edited resubmission stores, over any two
//! byte strings (an operator's file can hold anything). Besides never
//! panicking: a message compared with itself has no changes, and the diff
//! is bounded. (Linear in the segments, so a long input cannot hang the
//! control thread: libFuzzer's timeout would report it.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderly::hl7::diff::{field_diff, DIFF_LINES_MAX};

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (old, new) = data.split_at(split);
    let new = new.get(1..).unwrap_or_default();
    assert!(
        field_diff(old, old).is_empty(),
        "a message differs from itself"
    );
    let lines = field_diff(old, new);
    assert!(lines.len() <= DIFF_LINES_MAX + 1, "{} lines", lines.len());
});
