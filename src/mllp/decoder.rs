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
    /// A complete payload (the bytes between `0x0B` and the closing `0x1C`,
    /// without leading whitespace), as a range of the buffer passed to
    /// `decode`. Valid until the next `compact`.
    Frame(Range<usize>),
    /// `bytes` of junk were skipped before a `0x0B`. Runs of only CR, LF,
    /// space and tab (line ends after a trailer, keep-alive newlines) are
    /// skipped without a report; they still count toward [`JUNK_BYTES_MAX`].
    Junk {
        /// Bytes skipped in this run (at most [`JUNK_BYTES_MAX`]).
        bytes: usize,
    },
    /// Everything in the buffer has been scanned; read more bytes. If
    /// [`FrameDecoder::end_pending`] is true, the buffer ends in a `0x1C`
    /// that ends the frame unless data follows: call
    /// [`FrameDecoder::finish_pending`] when nothing arrives for a short
    /// pause, or at end of stream.
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
    /// A `0x1C` at `end` is the last byte buffered: it ends the frame if
    /// CR or `0x0B` follows, or nothing does; other bytes make it data.
    EndPending { start: usize, end: usize },
    /// Skipping the rest of an oversized frame.
    Discarding,
    /// As `EndPending`, for the oversized frame being skipped.
    DiscardEndPending,
}

/// Streaming MLLP decoder. See the module docs for the buffer protocol.
///
/// A frame ends at a `0x1C` followed by `0x0D` (the standard trailer) or by
/// `0x0B` (a sender that omits the trailer and pipelines), or at a `0x1C`
/// that is the last byte received when nothing follows for a moment (a
/// sender that omits the trailer and waits for its ACK). Any other `0x1C`,
/// and every `0x0B` inside a frame, is data, as in HAPI's and NextGen
/// Connect's decoders: both bytes turn up in free text pasted from word
/// processors, and cutting the frame there would store a truncated message.
///
/// ```
/// use orderly::mllp::{Decoded, FrameDecoder};
/// let mut buf = b"\r\n\x0bMSH|^~\\&|A\x1cB\x1c\r".to_vec();
/// let mut decoder = FrameDecoder::new(1024);
/// let Decoded::Frame(range) = decoder.decode(&buf) else { panic!() };
/// assert_eq!(&buf[range], b"MSH|^~\\&|A\x1cB");
/// assert_eq!(decoder.decode(&buf), Decoded::NeedMore);
/// decoder.compact(&mut buf);
/// assert!(buf.is_empty());
/// ```
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame_bytes: usize,
    /// A `0x1C` that is the last byte buffered ends the frame at once (for
    /// reading ACKs, which hold no free text).
    end_at_buffer_end: bool,
    state: State,
    /// Next buffer index to examine.
    pos: usize,
    /// Leading bytes the caller may drop: everything before a frame start.
    consumed: usize,
    /// Bytes skipped outside frames in the current run, not yet reported.
    junk: usize,
    /// The current run holds something other than whitespace.
    junk_is_noise: bool,
}

fn is_blank(b: u8) -> bool {
    matches!(b, b'\r' | b'\n' | b' ' | b'\t')
}

fn find_end(bytes: &[u8]) -> Option<usize> {
    find2(bytes, END_BLOCK, END_BLOCK)
}

impl FrameDecoder {
    /// A decoder rejecting payloads longer than `max_frame_bytes`
    /// (use [`super::FRAME_BYTES_MAX_DEFAULT`] unless configured otherwise).
    pub fn new(max_frame_bytes: usize) -> Self {
        FrameDecoder {
            max_frame_bytes,
            end_at_buffer_end: false,
            state: State::Idle,
            pos: 0,
            consumed: 0,
            junk: 0,
            junk_is_noise: false,
        }
    }

    /// A decoder for acknowledgments: a `0x1C` that is the last byte
    /// buffered ends the frame without waiting for what follows.
    pub fn for_acks(max_frame_bytes: usize) -> Self {
        FrameDecoder {
            end_at_buffer_end: true,
            ..Self::new(max_frame_bytes)
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

    /// The buffer ends in a `0x1C` whose meaning depends on the next byte.
    pub fn end_pending(&self) -> bool {
        matches!(
            self.state,
            State::EndPending { .. } | State::DiscardEndPending
        )
    }

    /// Takes a pending `0x1C` as the end of its frame (nothing followed it
    /// for a pause, or the stream ended). Returns the payload, or `None`
    /// when nothing was pending or the frame was an oversized one being
    /// skipped.
    pub fn finish_pending(&mut self, buf: &[u8]) -> Option<Range<usize>> {
        match self.state {
            State::EndPending { start, end } => {
                self.close_frame(end + 1);
                Some(self.payload(buf, start, end))
            }
            State::DiscardEndPending => {
                self.close_frame(self.pos);
                None
            }
            _ => None,
        }
    }

    /// The payload received so far of a frame that has not ended (for a
    /// NAK when the peer stops mid-frame), at most `max_frame_bytes` long.
    pub fn partial_frame(&self, buf: &[u8]) -> Option<Range<usize>> {
        let start = match self.state {
            State::InFrame { start } | State::EndPending { start, .. } => start,
            _ => return None,
        };
        let end = buf.len().min(start.saturating_add(self.max_frame_bytes));
        (start <= end).then(|| self.payload(buf, start, end))
    }

    /// The frame in progress has been answered as cut off (or discarded):
    /// forget it, so a second end of input cannot answer it again. All of
    /// `buf` counts as consumed; later bytes are scanned from `Idle`.
    pub fn abandon(&mut self, buf: &[u8]) {
        self.state = State::Idle;
        self.pos = buf.len();
        self.consumed = buf.len();
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
        match &mut self.state {
            // A frame's start and end lie after consumed, always.
            State::InFrame { start } => *start -= dropped,
            State::EndPending { start, end } => {
                *start -= dropped;
                *end -= dropped;
            }
            _ => {}
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
                State::Idle => self.idle(buf),
                State::InFrame { start } => self.in_frame(buf, start),
                State::EndPending { start, end } => self.end_pending_step(buf, start, end),
                State::Discarding => self.discarding(buf),
                State::DiscardEndPending => self.discard_end_pending(buf),
            };
            if let Some(decoded) = step {
                return decoded;
            }
        }
    }

    /// The payload `start..end` without leading whitespace (tolerated
    /// between `0x0B` and `MSH`).
    fn payload(&self, buf: &[u8], start: usize, end: usize) -> Range<usize> {
        let blank = buf[start..end].iter().take_while(|&&b| is_blank(b)).count();
        start + blank..end
    }

    /// The frame is over; scanning resumes at `next`.
    fn close_frame(&mut self, next: usize) {
        self.pos = next;
        self.consumed = next;
        self.state = State::Idle;
    }

    fn idle(&mut self, buf: &[u8]) -> Option<Decoded> {
        let rest = &buf[self.pos..];
        let Some(at) = rest.iter().position(|&b| b == START_BLOCK) else {
            self.skip(rest);
            self.pos = buf.len();
            self.consumed = self.pos;
            return Some(self.junk_over_limit().unwrap_or(Decoded::NeedMore));
        };
        self.skip(&rest[..at]);
        self.consumed = self.pos + at;
        self.pos += at + 1;
        self.state = State::InFrame { start: self.pos };
        self.report_junk()
    }

    fn skip(&mut self, bytes: &[u8]) {
        self.junk += bytes.len();
        self.junk_is_noise |= bytes.iter().any(|&b| !is_blank(b));
    }

    fn in_frame(&mut self, buf: &[u8], start: usize) -> Option<Decoded> {
        let window_end = buf
            .len()
            .min(start.saturating_add(self.max_frame_bytes).saturating_add(1));
        let from = self.pos.min(window_end);
        match find_end(&buf[from..window_end]).map(|i| from + i) {
            Some(end) => {
                self.pos = end + 1;
                self.state = State::EndPending { start, end };
                None
            }
            None if window_end - start > self.max_frame_bytes => Some(self.too_large(buf, start)),
            None => {
                self.pos = window_end;
                Some(Decoded::NeedMore)
            }
        }
    }

    /// `pos` is just past the `0x1C` at `end`.
    fn end_pending_step(&mut self, buf: &[u8], start: usize, end: usize) -> Option<Decoded> {
        debug_assert_eq!(self.pos, end + 1);
        match buf.get(self.pos) {
            None if self.end_at_buffer_end => self.close_frame(self.pos),
            None => return Some(Decoded::NeedMore),
            Some(&TRAILER) => self.close_frame(self.pos + 1),
            Some(&START_BLOCK) => self.close_frame(self.pos),
            Some(_) => {
                // Data: keep scanning the same frame.
                self.state = State::InFrame { start };
                return None;
            }
        }
        Some(Decoded::Frame(self.payload(buf, start, end)))
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
        match find_end(&buf[self.pos..]).map(|i| self.pos + i) {
            Some(end) => {
                self.pos = end + 1;
                self.consumed = self.pos;
                self.state = State::DiscardEndPending;
                None
            }
            None => {
                self.pos = buf.len();
                self.consumed = self.pos;
                Some(Decoded::NeedMore)
            }
        }
    }

    fn discard_end_pending(&mut self, buf: &[u8]) -> Option<Decoded> {
        match buf.get(self.pos) {
            None if self.end_at_buffer_end => self.close_frame(self.pos),
            None => return Some(Decoded::NeedMore),
            Some(&TRAILER) => self.close_frame(self.pos + 1),
            Some(&START_BLOCK) => self.close_frame(self.pos),
            Some(_) => self.state = State::Discarding,
        }
        None
    }

    fn report_junk(&mut self) -> Option<Decoded> {
        if self.junk == 0 {
            return None;
        }
        if let Some(err) = self.junk_over_limit() {
            return Some(err);
        }
        let bytes = std::mem::take(&mut self.junk);
        std::mem::take(&mut self.junk_is_noise).then_some(Decoded::Junk { bytes })
    }

    fn junk_over_limit(&mut self) -> Option<Decoded> {
        if self.junk <= JUNK_BYTES_MAX {
            return None;
        }
        let bytes = std::mem::take(&mut self.junk);
        self.junk_is_noise = false;
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

    // Expected results below are the framing rules of ../shared/PEERS.md
    // (HAPI's and NextGen Connect's decoders), not this decoder's output.

    #[test]
    fn a_trailing_end_block_waits_for_the_next_byte_or_a_pause() {
        let mut d = FrameDecoder::new(64);
        assert_eq!(drain(&mut d, b"\x0bABC\x1c"), vec![]);
        assert!(d.end_pending());
        assert_eq!(d.finish_pending(b"\x0bABC\x1c"), Some(1..4));
        assert!(!d.end_pending());
        assert_eq!(d.consumed(), 5);
    }

    #[test]
    fn an_end_block_followed_by_a_start_block_ends_the_frame() {
        let mut d = FrameDecoder::new(64);
        let got = drain(&mut d, b"\x0bA\x1c\x0bB\x1c\r");
        assert_eq!(got, vec![Decoded::Frame(1..2), Decoded::Frame(4..5)]);
    }

    #[test]
    fn a_lone_end_block_inside_a_payload_is_data() {
        let mut d = FrameDecoder::new(64);
        let got = drain(&mut d, b"\x0bNTE|1||a\x1cb\x1c\r");
        assert_eq!(got, vec![Decoded::Frame(1..11)]);
        // Split right after the lone 0x1C: the next read decides.
        let mut d = FrameDecoder::new(64);
        let mut buf = b"\x0bNTE|1||a\x1c".to_vec();
        assert_eq!(drain(&mut d, &buf), vec![]);
        assert!(d.end_pending());
        buf.extend_from_slice(b"b\x1c\r");
        assert_eq!(drain(&mut d, &buf), vec![Decoded::Frame(1..11)]);
    }

    #[test]
    fn a_start_block_inside_a_frame_is_data() {
        let mut d = FrameDecoder::new(64);
        let got = drain(&mut d, b"\x0bhalf\x0bwhole\x1c\r");
        assert_eq!(got, vec![Decoded::Frame(1..11)]);
    }

    #[test]
    fn whitespace_between_start_block_and_msh_is_not_payload() {
        let mut d = FrameDecoder::new(64);
        let buf = b"\x0b\r\n \tMSH|\x1c\r";
        assert_eq!(drain(&mut d, buf), vec![Decoded::Frame(5..9)]);
    }

    #[test]
    fn line_ends_between_frames_are_skipped_quietly_and_noise_is_reported() {
        let mut d = FrameDecoder::new(64);
        let got = drain(&mut d, b"\r\n\x0bA\x1c\r\r\n\x0bB\x1c\r");
        assert_eq!(got, vec![Decoded::Frame(3..4), Decoded::Frame(9..10)]);
        let mut d = FrameDecoder::new(64);
        let got = drain(&mut d, b"\r\nxx\x0bA\x1c\r");
        assert_eq!(got, vec![Decoded::Junk { bytes: 4 }, Decoded::Frame(5..6)]);
    }

    #[test]
    fn an_ack_decoder_ends_at_a_trailing_end_block_at_once() {
        let mut d = FrameDecoder::for_acks(64);
        assert_eq!(
            drain(&mut d, b"\x0bMSA|AA|1\x1c"),
            vec![Decoded::Frame(1..9)]
        );
    }

    #[test]
    fn oversized_frame_reports_prefix_then_resyncs() {
        let mut d = FrameDecoder::new(4);
        let buf = b"\x0b12\x1c456789\x1c\r\x0bok\x1c\r";
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
    fn compact_keeps_a_partial_frame_and_its_scan_state() {
        let mut d = FrameDecoder::new(64);
        let mut buf = b"\x0bA\x1c\r\x0bpart\x1c".to_vec();
        assert_eq!(drain(&mut d, &buf), vec![Decoded::Frame(1..2)]);
        d.compact(&mut buf);
        assert_eq!(buf, b"\x0bpart\x1c");
        assert!(d.end_pending());
        buf.extend_from_slice(b"ial\x1c\r");
        assert_eq!(drain(&mut d, &buf), vec![Decoded::Frame(1..9)]);
    }

    #[test]
    fn a_partial_frame_is_visible_for_a_nak() {
        let mut d = FrameDecoder::new(64);
        let buf = b"\x0b MSH|^~\\&|A";
        assert_eq!(drain(&mut d, buf), vec![]);
        assert_eq!(d.partial_frame(buf), Some(2..buf.len()));
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
