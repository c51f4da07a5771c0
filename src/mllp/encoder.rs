//! MLLP frame encoder and recognition of MLLP release 2 commit blocks.
//!
//! Writes `0x0B payload 0x1C 0x0D` into a caller-owned buffer. It does not
//! inspect or escape the payload: HL7 text never contains the framing bytes.

use super::{END_BLOCK, START_BLOCK, TRAILER};

/// Appends `payload` framed as MLLP to `out`.
pub fn encode_frame(payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(payload.len() + 3);
    out.push(START_BLOCK);
    out.extend_from_slice(payload);
    out.push(END_BLOCK);
    out.push(TRAILER);
}

/// An MLLP release 2 commit acknowledgement: a frame whose whole payload is
/// one ACK (0x06) or NAK (0x15) byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommitBlock {
    /// `0x0B 0x06 0x1C 0x0D`: the receiver committed the message.
    Commit,
    /// `0x0B 0x15 0x1C 0x0D`: the receiver did not commit it; resend.
    NegativeCommit,
}

/// Recognises a release 2 commit block, given a decoded frame payload or the
/// whole framed block.
pub fn commit_block(bytes: &[u8]) -> Option<CommitBlock> {
    let payload = match bytes {
        [START_BLOCK, inner @ .., END_BLOCK, TRAILER] | [START_BLOCK, inner @ .., END_BLOCK] => {
            inner
        }
        other => other,
    };
    match payload {
        [0x06] => Some(CommitBlock::Commit),
        [0x15] => Some(CommitBlock::NegativeCommit),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_frame_has_envelope_bytes() {
        let mut out = vec![b'x'];
        encode_frame(b"MSH|", &mut out);
        assert_eq!(out, b"x\x0bMSH|\x1c\r");
    }

    #[test]
    fn commit_blocks_are_recognised_framed_and_bare() {
        assert_eq!(commit_block(b"\x0b\x06\x1c\r"), Some(CommitBlock::Commit));
        assert_eq!(commit_block(b"\x15"), Some(CommitBlock::NegativeCommit));
        assert_eq!(commit_block(b"\x0b\x06\x06\x1c\r"), None);
    }
}
