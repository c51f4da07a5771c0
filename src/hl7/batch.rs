//! Batch envelopes: FHS/BHS ... BTS/FTS files and back-to-back messages.
//!
//! [`split_batch`] finds where each message starts (an `MSH` line) and ends
//! (the next `MSH`, `BHS`, `BTS`, `FHS` or `FTS` line) and returns borrowed
//! slices; the envelope segments are returned as they are. It does not trust
//! BTS/FTS counts (real files get them wrong) and never copies a message.

use super::segments::Lines;
use super::{BATCH_MESSAGES_MAX, UTF8_BOM};

/// A split batch. Each message slice includes its segment terminators.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch<'a> {
    /// The FHS segment, if any.
    pub file_header: Option<&'a [u8]>,
    /// The (first) BHS segment, if any.
    pub batch_header: Option<&'a [u8]>,
    /// The messages, in order.
    pub messages: Vec<&'a [u8]>,
    /// The (last) BTS segment, if any.
    pub batch_trailer: Option<&'a [u8]>,
    /// The FTS segment, if any.
    pub file_trailer: Option<&'a [u8]>,
}

/// Why bytes cannot be split into messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// No MSH segment anywhere.
    #[error("batch holds no MSH segment, so no message; check that the sender is not sending only envelope segments")]
    NoMessages,
    /// A segment other than an envelope appears before the first MSH.
    #[error("segment {segment} ('{name}') appears before the first MSH of the batch; only FHS and BHS may come first")]
    SegmentOutsideMessage {
        /// 1-based segment number in the batch.
        segment: usize,
        /// The segment id (lossy UTF-8).
        name: String,
    },
    /// More messages than [`BATCH_MESSAGES_MAX`].
    #[error("batch holds more than {limit} messages; split it before sending")]
    TooManyMessages {
        /// The limit.
        limit: usize,
    },
}

/// True when `bytes` start (after an optional BOM) with FHS or BHS.
pub fn is_batch(bytes: &[u8]) -> bool {
    let body = bytes.strip_prefix(UTF8_BOM).unwrap_or(bytes);
    body.starts_with(b"FHS") || body.starts_with(b"BHS")
}

fn kind(line: &[u8]) -> &[u8] {
    let is_named = line.len() == 3 || line.get(3).is_some_and(u8::is_ascii_punctuation);
    if is_named {
        &line[..3]
    } else {
        b""
    }
}

/// Splits `bytes` into its messages and envelope segments.
pub fn split_batch(bytes: &[u8]) -> Result<Batch<'_>, BatchError> {
    let offset = if bytes.starts_with(UTF8_BOM) {
        UTF8_BOM.len()
    } else {
        0
    };
    let mut batch = Batch::default();
    let mut open: Option<usize> = None;
    for (number, line) in Lines::new(bytes, offset).enumerate() {
        let segment = &bytes[line.start..line.end];
        let name = kind(segment);
        if let (Some(start), b"MSH" | b"BHS" | b"BTS" | b"FHS" | b"FTS") = (open, name) {
            push_message(&mut batch, &bytes[start..line.start])?;
            open = None;
        }
        match name {
            b"MSH" => open = Some(line.start),
            b"FHS" => batch.file_header = Some(segment),
            b"BHS" => batch.batch_header = batch.batch_header.or(Some(segment)),
            b"BTS" => batch.batch_trailer = Some(segment),
            b"FTS" => batch.file_trailer = Some(segment),
            _ if open.is_none() => {
                let name = String::from_utf8_lossy(&segment[..segment.len().min(3)]).into_owned();
                return Err(BatchError::SegmentOutsideMessage {
                    segment: number + 1,
                    name,
                });
            }
            _ => {}
        }
    }
    if let Some(start) = open {
        push_message(&mut batch, &bytes[start..])?;
    }
    if batch.messages.is_empty() {
        return Err(BatchError::NoMessages);
    }
    Ok(batch)
}

fn push_message<'a>(batch: &mut Batch<'a>, message: &'a [u8]) -> Result<(), BatchError> {
    if batch.messages.len() == BATCH_MESSAGES_MAX {
        return Err(BatchError::TooManyMessages {
            limit: BATCH_MESSAGES_MAX,
        });
    }
    batch.messages.push(message);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_is_split_from_messages() {
        let bytes = b"FHS|^~\\&\rBHS|^~\\&\rMSH|^~\\&|A\rPID|1\rMSH|^~\\&|B\rBTS|2\rFTS|1\r";
        let batch = split_batch(bytes).unwrap();
        assert_eq!(
            batch.messages,
            vec![&b"MSH|^~\\&|A\rPID|1\r"[..], b"MSH|^~\\&|B\r"]
        );
        assert_eq!(
            (batch.batch_trailer, batch.file_trailer),
            (Some(&b"BTS|2"[..]), Some(&b"FTS|1"[..]))
        );
        assert!(is_batch(bytes));
    }

    #[test]
    fn envelope_without_messages_is_an_error() {
        assert_eq!(
            split_batch(b"BHS|^~\\&\rBTS|0\r"),
            Err(BatchError::NoMessages)
        );
        let err = split_batch(b"BHS|^~\\&\rPID|1\r").unwrap_err();
        assert_eq!(
            err,
            BatchError::SegmentOutsideMessage {
                segment: 2,
                name: "PID".into()
            }
        );
    }
}
