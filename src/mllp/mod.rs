//! MLLP framing: a streaming, zero-copy frame decoder and the frame encoder.
//!
//! A frame on the wire is `0x0B payload 0x1C 0x0D`. This module owns that
//! envelope and nothing else: it never reads or writes a socket, never
//! allocates per byte, and never looks inside a payload (that is `hl7`'s job).
//! The event loop feeds [`FrameDecoder`] whatever bytes it has; the decoder
//! answers with ranges into the caller's buffer.
//!
//! Architecture Invariant: the mllp module performs no I/O and never panics on
//! any input.

mod decoder;
mod encoder;
pub(crate) mod scan;

pub use decoder::{Decoded, FrameDecoder, FrameError};
pub use encoder::{commit_block, encode_frame, CommitBlock};

/// Start-of-block byte (VT) that opens every frame.
pub const START_BLOCK: u8 = 0x0B;
/// End-of-block byte (FS) that closes the payload.
pub const END_BLOCK: u8 = 0x1C;
/// Carriage return that should follow [`END_BLOCK`]; some senders omit it.
pub const TRAILER: u8 = 0x0D;
/// Largest frame payload accepted by default. Larger frames are reported as
/// [`FrameError::TooLarge`], never buffered without bound.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;
/// Junk bytes (whitespace, stray CR/LF, noise) tolerated between frames
/// before the decoder gives up on the connection.
pub const JUNK_BYTES_MAX: usize = 4096;
/// Payload bytes the decoder keeps readable when a frame is too large, so the
/// caller can still parse MSH and answer with a NAK.
pub const TOO_LARGE_PREFIX_BYTES_MAX: usize = 64 * 1024;

const _: () = assert!(TOO_LARGE_PREFIX_BYTES_MAX <= FRAME_BYTES_MAX_DEFAULT);
const _: () = assert!(JUNK_BYTES_MAX > 0);
