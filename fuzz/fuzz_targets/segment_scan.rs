//! Fuzz target: recovery's and the readers' view of arbitrary segment bytes.
//! Scanning with resync, finding records past damage and locating the end of
//! written data must never panic; every record found must check out; holes
//! must be ordered and never overlap what the scan counted as intact.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderly::wal::record::{self, Check};
use orderly::wal::segment::{self, SEGMENT_HEADER_BYTES};
use orderly::wal::Offset;

fuzz_target!(|data: &[u8]| {
    if data.len() < SEGMENT_HEADER_BYTES + 1 {
        return;
    }
    let base = Offset(u64::from(data[0] % 4));
    let bytes = &data[1..];
    let start = (SEGMENT_HEADER_BYTES as u64, base, 0);
    let scan = segment::scan_resyncing(&mut &bytes[..], base, start, Vec::new(), None);
    let mut previous = base;
    for h in &scan.holes {
        assert!(
            h.offset >= previous && h.end_offset > h.offset,
            "holes ordered"
        );
        assert!(h.resume_position > h.position);
        previous = h.end_offset;
    }
    assert!(scan.next_offset >= previous);
    let _ = segment::nonzero_end(&mut &bytes[..], scan.end);
    for target in base.0..scan.next_offset.0.min(base.0 + 64) {
        let from = (base, SEGMENT_HEADER_BYTES as u64);
        if let Ok((pos, len)) = segment::find_record(&mut &bytes[..], from, Offset(target), None) {
            let rec = &bytes[pos as usize..pos as usize + len];
            match record::check(rec) {
                Check::Valid(r) => assert_eq!(r.offset, Offset(target)),
                _ => panic!("find_record returned a record that does not check out"),
            }
        }
    }
});
