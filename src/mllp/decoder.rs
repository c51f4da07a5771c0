//! Streaming MLLP frame decoder over a caller-owned, growable buffer.
//!
//! The connection appends socket bytes to its own `Vec<u8>` and calls
//! [`FrameDecoder::decode`] with the whole buffer. The decoder remembers how
//! far it has scanned, so repeated calls over a growing buffer cost O(new
//! bytes). It yields payloads as `Range<usize>` into that buffer (no copy),
//! and tells the caller how many leading bytes it may drop
//! ([`FrameDecoder::consumed`], [`FrameDecoder::compact`]). It never performs
//! I/O, never allocates, and never panics.

use std::ops::Range;

use super::scan::find2;
use super::{END_BLOCK, JUNK_BYTES_MAX, START_BLOCK, TOO_LARGE_PREFIX_BYTES_MAX, TRAILER};

/// One step of decoding. Call [`FrameDecoder::decode`] again after anything
/// but [`Decoded::NeedMore`]: several frames may sit in one buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Decoded {
    /// A complete payload (the bytes between `0x0B` and `0x1C`), as a range
    /// of the buffer passed to `decode`. Valid until the next `compact`.
    Frame(Range<usize>),
    /// `bytes` of junk were skipped: noise before a `0x0B`, or a partial
    /// frame abandoned because a new `0x0B` started before its `0x1C`.
    Junk {
        /// Bytes skipped in this run (at most [`JUNK_BYTES_MAX`]).
        bytes: usize,
    },
    /// Everything in the buffer has been scanned; read more bytes.
    NeedMore,
    /// The stream broke a limit; see [`FrameError`] for what to do.
    Invalid(FrameError),
}

/// Why the decoder could not produce a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The payload grew past the configured limit. `prefix` (a range of the
    /// current buffer, at most [`TOO_LARGE_PREFIX_BYTES_MAX`] long) holds its
    /// first bytes so the caller can parse MSH and send a NAK. The decoder
    /// then skips the rest of this frame by itself.
    #[error("MLLP frame larger than the {limit_bytes}-byte limit; answer with a NAK and raise the frame limit if such messages are expected")]
    TooLarge {
        /// The configured limit, in bytes.
        limit_bytes: usize,
        /// The first bytes of the oversized payload, in the current buffer.
        prefix: Range<usize>,
    },
    /// More than [`JUNK_BYTES_MAX`] bytes arrived outside any frame: the
    /// peer is probably not speaking MLLP. Close the connection.
    #[error("{bytes} bytes of non-MLLP data outside any frame (limit {limit_bytes}); is the peer sending raw HL7 without 0x0B/0x1C framing?")]
    TooMuchJunk {
        /// Junk bytes seen in this run.
        bytes: usize,
        /// The limit, in bytes.
        limit_bytes: usize,
    },
    /// The buffer is shorter than what the decoder already scanned: the
    /// caller dropped bytes without telling the decoder (use `compact`).
    #[error("connection buffer shrank from {scanned} to {len} bytes behind the MLLP decoder's back; drop bytes only through FrameDecoder::compact")]
    BufferShrank {
        /// Bytes the decoder had scanned.
        scanned: usize,
        /// Length of the buffer passed in.
        len: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Between frames, looking for `0x0B`.
    Idle,
    /// Inside a frame whose payload starts at `start`.
    InFrame { start: usize },
    /// Just after `0x1C`; a `0x0D` here belongs to the frame trailer.
    AfterEnd,
    /// Skipping the rest of an oversized frame.
    Discarding,
}

/// Streaming MLLP decoder. See the module docs for the buffer protocol:
///
/// ```
/// use orderly::mllp::{Decoded, FrameDecoder};
/// let mut buf = b"\r\n\x0bMSH|^~\\&|A\x1c\r".to_vec();
/// let mut decoder = FrameDecoder::new(1024);
/// assert_eq!(decoder.decode(&buf), Decoded::Junk { bytes: 2 });
/// let Decoded::Frame(range) = decoder.decode(&buf) else { panic!() };
/// assert_eq!(&buf[range], b"MSH|^~\\&|A");
/// assert_eq!(decoder.decode(&buf), Decoded::NeedMore);
/// decoder.compact(&mut buf);
/// assert!(buf.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame_bytes: usize,
    state: State,
    /// Next buffer index to examine.
    pos: usize,
    /// Leading bytes the caller may drop: everything before a frame start.
    consumed: usize,
    /// Junk bytes in the current run, not yet reported.
    junk: usize,
}

impl FrameDecoder {
    /// A decoder rejecting payloads longer than `max_frame_bytes`
    /// (use [`super::FRAME_BYTES_MAX_DEFAULT`] unless configured otherwise).
    pub fn new(max_frame_bytes: usize) -> Self {
        FrameDecoder {
            max_frame_bytes,
            state: State::Idle,
            pos: 0,
            consumed: 0,
            junk: 0,
        }
    }

    /// The configured payload limit.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_frame_bytes
    }

    /// Leading bytes of the buffer that no future result refers to. Frames
    /// already returned lie inside this prefix: read them before dropping it.
    pub fn consumed(&self) -> usize {
        self.consumed
    }

    /// Drops the consumed prefix from `buf` and rebases the decoder onto it.
    /// Ranges returned earlier are invalid afterwards.
    pub fn compact(&mut self, buf: &mut Vec<u8>) {
        let dropped = self.consumed.min(buf.len());
        buf.drain(..dropped);
        self.rebase(dropped);
    }

    /// Tells the decoder that the caller removed the first `dropped` bytes
    /// itself (for buffers other than `Vec<u8>`). `dropped` is clamped to
    /// [`Self::consumed`].
    pub fn rebase(&mut self, dropped: usize) {
        let dropped = dropped.min(self.consumed);
        self.consumed -= dropped;
        self.pos -= dropped; // pos >= consumed always holds.
        if let State::InFrame { start } = &mut self.state {
            *start -= dropped; // start > consumed always holds.
        }
    }

    /// Scans the bytes of `buf` not yet seen and reports the next event.
    pub fn decode(&mut self, buf: &[u8]) -> Decoded {
        if buf.len() < self.pos {
            return Decoded::Invalid(FrameError::BufferShrank {
                scanned: self.pos,
                len: buf.len(),
            });
        }
        loop {
            let step = match self.state {
                State::AfterEnd => self.after_end(buf),
                State::Idle => self.idle(buf),
                State::InFrame { start } => self.in_frame(buf, start),
                State::Discarding => self.discarding(buf),
            };
            if let Some(decoded) = step {
                return decoded;
            }
        }
    }

    fn after_end(&mut self, buf: &[u8]) -> Option<Decoded> {
        match buf.get(self.pos) {
            None => return Some(Decoded::NeedMore),
            Some(&TRAILER) => {
                self.pos += 1;
                self.consumed = self.pos;
            }
            Some(_) => {} // Sender omitted the trailing 0x0D.
        }
        self.state = State::Idle;
        None
    }

    fn idle(&mut self, buf: &[u8]) -> Option<Decoded> {
        let rest = &buf[self.pos..];
        let Some(at) = rest.iter().position(|&b| b == START_BLOCK) else {
            self.junk += rest.len();
            self.pos = buf.len();
            self.consumed = self.pos;
            return Some(self.junk_over_limit().unwrap_or(Decoded::NeedMore));
        };
        self.junk += at;
        self.consumed = self.pos + at;
        self.pos += at + 1;
        self.state = State::InFrame { start: self.pos };
        self.report_junk()
    }

    fn in_frame(&mut self, buf: &[u8], start: usize) -> Option<Decoded> {
        let window_end = buf
            .len()
            .min(start.saturating_add(self.max_frame_bytes).saturating_add(1));
        let window = &buf[self.pos.min(window_end)..window_end];
        match find2(window, END_BLOCK, START_BLOCK).map(|i| self.pos + i) {
            Some(end) if buf[end] == END_BLOCK => {
                self.pos = end + 1;
                self.consumed = self.pos;
                self.state = State::AfterEnd;
                Some(Decoded::Frame(start..end))
            }
            Some(restart) => {
                // A new 0x0B before 0x1C: the sender gave up on the old frame.
                self.junk += restart - start + 1;
                self.consumed = restart;
                self.pos = restart + 1;
                self.state = State::InFrame { start: self.pos };
                self.report_junk()
            }
            None if window_end - start > self.max_frame_bytes => Some(self.too_large(buf, start)),
            None => {
                self.pos = window_end;
                Some(Decoded::NeedMore)
            }
        }
    }

    fn too_large(&mut self, buf: &[u8], start: usize) -> Decoded {
        let prefix_len = self.max_frame_bytes.min(TOO_LARGE_PREFIX_BYTES_MAX);
        let prefix = start..start + prefix_len.min(buf.len() - start);
        self.pos = start + self.max_frame_bytes;
        self.consumed = self.pos;
        self.state = State::Discarding;
        Decoded::Invalid(FrameError::TooLarge {
            limit_bytes: self.max_frame_bytes,
            prefix,
        })
    }

    fn discarding(&mut self, buf: &[u8]) -> Option<Decoded> {
        match find2(&buf[self.pos..], END_BLOCK, START_BLOCK).map(|i| self.pos + i) {
            Some(end) if buf[end] == END_BLOCK => {
                self.pos = end + 1;
                self.consumed = self.pos;
                self.state = State::AfterEnd;
                None
            }
            Some(restart) => {
                self.consumed = restart;
                self.pos = restart + 1;
                self.state = State::InFrame { start: self.pos };
                None
            }
            None => {
                self.pos = buf.len();
                self.consumed = self.pos;
                Some(Decoded::NeedMore)
            }
        }
    }

    fn report_junk(&mut self) -> Option<Decoded> {
        if self.junk == 0 {
            return None;
        }
        if let Some(err) = self.junk_over_limit() {
            return Some(err);
        }
        let bytes = std::mem::take(&mut self.junk);
        Some(Decoded::Junk { bytes })
    }

    fn junk_over_limit(&mut self) -> Option<Decoded> {
        if self.junk <= JUNK_BYTES_MAX {
            return None;
        }
        let bytes = std::mem::take(&mut self.junk);
        Some(Decoded::Invalid(FrameError::TooMuchJunk {
            bytes,
            limit_bytes: JUNK_BYTES_MAX,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(decoder: &mut FrameDecoder, buf: &[u8]) -> Vec<Decoded> {
        let mut out = Vec::new();
        loop {
            match decoder.decode(buf) {
                Decoded::NeedMore => return out,
                other => out.push(other),
            }
        }
    }

    #[test]
    fn frame_without_trailing_cr_is_yielded_at_end_block() {
        let mut d = FrameDecoder::new(64);
        assert_eq!(drain(&mut d, b"\x0bABC\x1c"), vec![Decoded::Frame(1..4)]);
    }

    #[test]
    fn two_frames_in_one_read_both_come_out() {
        let mut d = FrameDecoder::new(64);
        let got = drain(&mut d, b"\x0bA\x1c\r\x0bBC\x1c\r");
        assert_eq!(got, vec![Decoded::Frame(1..2), Decoded::Frame(5..7)]);
        assert_eq!(d.consumed(), 9);
    }

    #[test]
    fn oversized_frame_reports_prefix_then_resyncs() {
        let mut d = FrameDecoder::new(4);
        let buf = b"\x0b123456789\x1c\r\x0bok\x1c\r";
        let got = drain(&mut d, buf);
        let too_large = FrameError::TooLarge {
            limit_bytes: 4,
            prefix: 1..5,
        };
        assert_eq!(
            got,
            vec![Decoded::Invalid(too_large), Decoded::Frame(13..15)]
        );
    }

    #[test]
    fn frame_of_exactly_the_limit_is_accepted() {
        let mut d = FrameDecoder::new(4);
        assert_eq!(drain(&mut d, b"\x0b1234\x1c\r"), vec![Decoded::Frame(1..5)]);
    }

    #[test]
    fn endless_junk_is_an_error_not_a_buffer() {
        let mut d = FrameDecoder::new(64);
        let junk = vec![b' '; JUNK_BYTES_MAX + 1];
        let err = FrameError::TooMuchJunk {
            bytes: JUNK_BYTES_MAX + 1,
            limit_bytes: JUNK_BYTES_MAX,
        };
        assert_eq!(d.decode(&junk), Decoded::Invalid(err));
    }

    #[test]
    fn restart_inside_frame_abandons_the_partial_frame() {
        let mut d = FrameDecoder::new(64);
        let got = drain(&mut d, b"\x0bhalf\x0bwhole\x1c\r");
        assert_eq!(got, vec![Decoded::Junk { bytes: 5 }, Decoded::Frame(6..11)]);
    }

    #[test]
    fn compact_keeps_a_partial_frame_and_its_scan_state() {
        let mut d = FrameDecoder::new(64);
        let mut buf = b"\x0bA\x1c\r\x0bpart".to_vec();
        assert_eq!(drain(&mut d, &buf), vec![Decoded::Frame(1..2)]);
        d.compact(&mut buf);
        assert_eq!(buf, b"\x0bpart");
        buf.extend_from_slice(b"ial\x1c");
        assert_eq!(drain(&mut d, &buf), vec![Decoded::Frame(1..8)]);
    }

    #[test]
    fn shrunk_buffer_is_reported() {
        let mut d = FrameDecoder::new(64);
        assert_eq!(d.decode(b"\x0babc"), Decoded::NeedMore);
        assert_eq!(
            d.decode(b"\x0b"),
            Decoded::Invalid(FrameError::BufferShrank { scanned: 4, len: 1 })
        );
    }
}
