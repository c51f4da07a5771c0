//! Fuzz target: the MLLP decoder fed in random chunks, with random
//! compaction, must report exactly what it reports for the whole buffer at
//! once, and every frame must respect the envelope and the size limit.
//!
//! The envelope rules checked are those of ../shared/PEERS.md: 0x0B and a
//! 0x1C followed by anything but 0x0D/0x0B are data inside a frame, so a
//! payload may hold them, but never a 0x1C that such a byte follows.
//! One input in four is repeated past the 64 KiB NAK prefix with a frame
//! limit around it, so the large-frame paths are reached.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderly::mllp::{Decoded, FrameDecoder, FrameError, TOO_LARGE_PREFIX_BYTES_MAX};

#[derive(Debug, PartialEq, Eq)]
enum Event {
    Frame(Vec<u8>),
    Junk(usize),
    TooLarge(Vec<u8>),
    TooMuchJunk,
}

/// Tiny deterministic PRNG so chunk sizes come from the input's seed bytes.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn drain(decoder: &mut FrameDecoder, buf: &[u8], events: &mut Vec<Event>) -> bool {
    loop {
        let event = match decoder.decode(buf) {
            Decoded::NeedMore => return true,
            Decoded::Frame(range) => {
                let payload = &buf[range];
                assert!(
                    payload.len() <= decoder.max_frame_bytes(),
                    "frame within limit"
                );
                assert!(
                    !payload
                        .windows(2)
                        .any(|w| w[0] == 0x1C && (w[1] == 0x0D || w[1] == 0x0B)),
                    "a 0x1C followed by CR or 0x0B ends a frame"
                );
                assert!(
                    !payload
                        .first()
                        .is_some_and(|b| matches!(b, b'\r' | b'\n' | b' ' | b'\t')),
                    "blanks before MSH are trimmed"
                );
                Event::Frame(payload.to_vec())
            }
            Decoded::Junk { bytes } => Event::Junk(bytes),
            Decoded::Invalid(FrameError::TooLarge { prefix, .. }) => {
                Event::TooLarge(buf[prefix].to_vec())
            }
            Decoded::Invalid(FrameError::TooMuchJunk { .. }) => {
                events.push(Event::TooMuchJunk);
                return false;
            }
            Decoded::Invalid(other) => panic!("unexpected decoder error: {other}"),
            _ => unreachable!("no other variants yet"),
        };
        events.push(event);
    }
}

/// End of input: a trailing 0x1C ends its frame.
fn finish(decoder: &mut FrameDecoder, buf: &[u8], events: &mut Vec<Event>) {
    if let Some(range) = decoder.finish_pending(buf) {
        assert!(range.end <= buf.len() && range.len() <= decoder.max_frame_bytes());
        events.push(Event::Frame(buf[range].to_vec()));
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let (seed, input) = data.split_at(8);
    let mut rng = XorShift(u64::from_le_bytes(seed.try_into().unwrap()) | 1);
    let large = rng.next() % 4 == 0;
    let (max, stream) = if large {
        let max = TOO_LARGE_PREFIX_BYTES_MAX - 64 + (rng.next() % 128) as usize;
        let copies = (max + 256) / input.len() + 1;
        (max, input.repeat(copies))
    } else {
        (1 + (rng.next() % 512) as usize, input.to_vec())
    };
    let stream = stream.as_slice();

    let mut whole = Vec::new();
    let mut decoder = FrameDecoder::new(max);
    if drain(&mut decoder, stream, &mut whole) {
        finish(&mut decoder, stream, &mut whole);
    }

    let mut chunked = Vec::new();
    let mut decoder = FrameDecoder::new(max);
    let mut buf = Vec::new();
    let mut rest = stream;
    let mut open = true;
    while !rest.is_empty() {
        let take = 1 + (rng.next() % if large { 8192 } else { 64 }) as usize;
        let (chunk, tail) = rest.split_at(take.min(rest.len()));
        rest = tail;
        buf.extend_from_slice(chunk);
        if !drain(&mut decoder, &buf, &mut chunked) {
            open = false;
            break;
        }
        if rng.next() & 1 == 0 {
            decoder.compact(&mut buf);
        }
    }
    if open {
        finish(&mut decoder, &buf, &mut chunked);
    }
    assert_eq!(chunked, whole, "chunking must not change what is decoded");
});
