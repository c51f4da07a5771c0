//! Fuzz target: the MLLP decoder fed in random chunks, with random
//! compaction, must report exactly what it reports for the whole buffer at
//! once, and every frame must respect the envelope and the size limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use orderly::mllp::{Decoded, FrameDecoder, FrameError};

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
                    !payload.contains(&0x0B) && !payload.contains(&0x1C),
                    "no control bytes inside"
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

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let (seed, stream) = data.split_at(8);
    let mut rng = XorShift(u64::from_le_bytes(seed.try_into().unwrap()) | 1);
    let max = 1 + (rng.next() % 512) as usize;

    let mut whole = Vec::new();
    drain(&mut FrameDecoder::new(max), stream, &mut whole);

    let mut chunked = Vec::new();
    let mut decoder = FrameDecoder::new(max);
    let mut buf = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let take = 1 + (rng.next() % 64) as usize;
        let (chunk, tail) = rest.split_at(take.min(rest.len()));
        rest = tail;
        buf.extend_from_slice(chunk);
        if !drain(&mut decoder, &buf, &mut chunked) {
            break;
        }
        if rng.next() & 1 == 0 {
            decoder.compact(&mut buf);
        }
    }
    assert_eq!(chunked, whole, "chunking must not change what is decoded");
});
