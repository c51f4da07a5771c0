//! The hot paths the server runs per message do not allocate: the frame
//! decoder, the header fast path, validation, and building an ACK or NAK into
//! a buffer with room. A counting global allocator proves it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use orderly::hl7::ack::{build_ack, decide, AckPolicy, Hl7Timestamp, Outcome};
use orderly::hl7::{parse_header, validate, ValidationLevel};
use orderly::mllp::{Decoded, FrameDecoder};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        // SAFETY: forwards the caller's layout to the system allocator.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr was allocated by System with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    f();
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

const MSG: &[u8] = b"\xEF\xBB\xBFMSH|^~\\&|SA|SF|RA|RF|20240101||ADT^A01^ADT_A01|C1|P|2.5|||AL|NE||UNICODE UTF-8\rPID|1||X\r";

#[test]
fn header_validation_framing_and_ack_building_do_not_allocate() {
    let mut stream = b"\r\n\x0b".to_vec();
    stream.extend_from_slice(MSG);
    stream.extend_from_slice(b"\x1c\r\x0bMSH|^~\\&|broken\x1c");
    let mut out = Vec::with_capacity(4096);
    let mut frames = 0;
    let count = allocations_during(|| {
        let mut decoder = FrameDecoder::new(1024);
        loop {
            // The stream ends in a 0x1C with no CR: the end of input ends it.
            let next = match decoder.decode(&stream) {
                Decoded::Frame(range) => Some(range),
                Decoded::NeedMore => match decoder.finish_pending(&stream) {
                    Some(range) => Some(range),
                    None => break,
                },
                _ => None,
            };
            if let Some(range) = next {
                frames += 1;
                let payload = &stream[range];
                let now = Hl7Timestamp::from_unix_seconds(1_700_000_000);
                match validate(payload, ValidationLevel::Minimal) {
                    Ok(header) => {
                        // MSH-15 AL: the default policy answers in enhanced mode.
                        let (mode, kind) =
                            decide(AckPolicy::Auto, Some(&header), Outcome::Stored).unwrap();
                        build_ack(Some(&header), mode, kind, None, b"A1", now, &mut out)
                    }
                    Err(err) => {
                        let header = parse_header(payload).ok();
                        let (mode, kind) =
                            decide(AckPolicy::Auto, header.as_ref(), err.outcome()).unwrap();
                        build_ack(
                            header.as_ref(),
                            mode,
                            kind,
                            Some(&err.ack_error()),
                            b"A2",
                            now,
                            &mut out,
                        )
                    }
                }
            }
        }
    });
    assert_eq!(frames, 2);
    assert_eq!(count, 0, "hot path allocated {count} times");
    // Table 0008: CA for the stored frame, AE with ERR for the broken one.
    assert!(out.windows(7).any(|w| w == b"MSA|CA|"));
    assert!(out.windows(7).any(|w| w == b"MSA|AE|") && out.windows(4).any(|w| w == b"ERR|"));
}
