//! The MLLP decoder over real messages and generated streams: a frame split
//! at every byte boundary decodes to the same payload, arbitrary chunking of
//! a stream of frames (with junk, missing trailing CRs, and 0x0B/0x1C inside
//! payloads) yields exactly the payloads that were framed, and oversized
//! frames are reported, not buffered.

use std::path::PathBuf;

use orderly::mllp::{encode_frame, Decoded, FrameDecoder, FrameError, FRAME_BYTES_MAX_DEFAULT};
use proptest::prelude::*;

/// Below this size every split point is tried; above, the first and last
/// `EDGE` bytes plus every `STRIDE`-th byte (the work is quadratic).
const EVERY_SPLIT_BYTES_MAX: usize = 16 * 1024;
const EDGE: usize = 2048;
const STRIDE: usize = 61;

fn corpus_messages() -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .expect("shared corpus is readable")
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "hl7"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    assert!(out.len() >= 80, "corpus has its messages");
    out
}

/// Feeds `chunks` in order (compacting after each when asked) and returns
/// every payload and junk count.
fn decode_chunks<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    max: usize,
    compact: bool,
) -> (Vec<Vec<u8>>, usize) {
    let mut decoder = FrameDecoder::new(max);
    let mut buf = Vec::new();
    let (mut frames, mut junk) = (Vec::new(), 0);
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match decoder.decode(&buf) {
                Decoded::NeedMore => break,
                Decoded::Frame(range) => frames.push(buf[range].to_vec()),
                Decoded::Junk { bytes } => junk += bytes,
                other => panic!("unexpected {other:?}"),
            }
        }
        if compact {
            decoder.compact(&mut buf);
        }
    }
    // End of input: a trailing 0x1C ends its frame.
    if let Some(range) = decoder.finish_pending(&buf) {
        frames.push(buf[range].to_vec());
    }
    (frames, junk)
}

fn split_points(len: usize) -> Vec<usize> {
    if len <= EVERY_SPLIT_BYTES_MAX {
        return (0..=len).collect();
    }
    (0..=len)
        .filter(|&i| i < EDGE || i > len - EDGE || i % STRIDE == 0)
        .collect()
}

#[test]
fn frames_split_at_every_byte_boundary_decode_the_same() {
    for (name, message) in corpus_messages() {
        let mut framed = Vec::new();
        encode_frame(&message, &mut framed);
        for at in split_points(framed.len()) {
            let (head, tail) = framed.split_at(at);
            for compact in [false, true] {
                let (frames, junk) = decode_chunks([head, tail], FRAME_BYTES_MAX_DEFAULT, compact);
                assert!(
                    frames == [message.clone()] && junk == 0,
                    "{name}: split at {at} (compact {compact})"
                );
            }
        }
    }
}

#[test]
fn all_corpus_frames_in_one_read_come_out_in_order() {
    let messages: Vec<Vec<u8>> = corpus_messages().into_iter().map(|(_, m)| m).collect();
    let (mut stream, mut expected_junk) = (Vec::new(), 0);
    for (i, m) in messages.iter().enumerate() {
        if i % 3 == 0 {
            // Line ends between frames are skipped without a report; other
            // bytes are junk. After a frame without its 0x0D, the CR is
            // that frame's trailer.
            stream.extend_from_slice(b"\r\n");
            if i % 6 == 0 {
                stream.extend_from_slice(b"zz");
                let previous_had_cr = i == 0 || (i - 1) % 2 == 0;
                expected_junk += if previous_had_cr { 4 } else { 3 };
            }
        }
        stream.push(0x0B);
        stream.extend_from_slice(m);
        stream.extend_from_slice(if i % 2 == 0 { b"\x1c\r" } else { b"\x1c" });
    }
    let (frames, junk) = decode_chunks([stream.as_slice()], FRAME_BYTES_MAX_DEFAULT, false);
    assert_eq!(frames, messages);
    assert_eq!(junk, expected_junk);
}

#[test]
fn oversized_frame_keeps_its_head_readable_for_a_nak() {
    let mut message = b"MSH|^~\\&|A|B|C|D|2024||ADT^A01|BIG1|P|2.5\rOBX|1|ED|".to_vec();
    message.resize(10_000, b'x');
    let mut stream = Vec::new();
    encode_frame(&message, &mut stream);
    encode_frame(b"MSH|^~\\&|small", &mut stream);
    let mut decoder = FrameDecoder::new(4096);
    let Decoded::Invalid(FrameError::TooLarge {
        limit_bytes: 4096,
        prefix,
    }) = decoder.decode(&stream)
    else {
        panic!("expected TooLarge");
    };
    let header = orderly::hl7::parse_header(&stream[prefix]).expect("MSH readable from the prefix");
    assert_eq!(header.control_id(), b"BIG1");
    let Decoded::Frame(next) = decoder.decode(&stream) else {
        panic!("decoder resyncs on the next frame")
    };
    assert_eq!(&stream[next], b"MSH|^~\\&|small");
}

/// Payload bytes as a sender may put them in a frame: anything, including
/// 0x0B and a 0x1C that is not followed by 0x0D or 0x0B (data, per the
/// framing rules of ../shared/PEERS.md); not starting with blanks, which
/// the decoder trims before MSH.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(
        prop_oneof![4 => any::<u8>(), 1 => Just(0x1Cu8), 1 => Just(0x0Bu8)],
        0..300,
    )
    .prop_map(|mut p| {
        let blanks = p
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n' | b' ' | b'\t'))
            .count();
        p.drain(..blanks);
        p
    })
    .prop_filter("0x1C inside a payload is followed by data", |p| {
        !p.windows(2)
            .any(|w| w[0] == 0x1C && (w[1] == 0x0D || w[1] == 0x0B))
    })
}

proptest! {
    #[test]
    fn arbitrary_chunking_yields_exactly_the_framed_payloads(
        frames in proptest::collection::vec((payload(), any::<bool>(), 0usize..4), 1..8),
        cuts in proptest::collection::vec(1usize..97, 1..40),
        compact in any::<bool>(),
    ) {
        let mut stream = Vec::new();
        let mut previous_had_cr = true;
        for (payload, trailing_cr, junk) in &frames {
            // Line ends between frames: only after a trailer, since after a
            // bare 0x1C a byte other than CR or 0x0B is data.
            if previous_had_cr {
                stream.extend(std::iter::repeat_n(b'\n', *junk));
            }
            stream.push(0x0B);
            stream.extend_from_slice(payload);
            stream.push(0x1C);
            if *trailing_cr {
                stream.push(0x0D);
            }
            previous_had_cr = *trailing_cr;
        }
        let mut chunks = Vec::new();
        let mut rest = stream.as_slice();
        for cut in cuts.iter().cycle() {
            if rest.is_empty() { break; }
            let (head, tail) = rest.split_at((*cut).min(rest.len()));
            chunks.push(head);
            rest = tail;
        }
        let (got, junk) = decode_chunks(chunks, 1024, compact);
        let want: Vec<Vec<u8>> = frames.iter().map(|f| f.0.clone()).collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(junk, 0, "line ends are not reported as junk");
    }
}
