//! Header-only fast path: MSH-1 to MSH-21 as borrowed slices, nothing else.
//!
//! [`parse_header`] reads the first segment of a message and stops; it never
//! touches the body and never allocates, so the server can route, validate
//! and ACK a message without parsing it. Errors say which field of segment 1
//! is wrong in words an operator can act on.

use std::fmt;

use super::delimiters::Delimiters;
use super::UTF8_BOM;

/// Highest MSH field number the header path records (MSH-21, message
/// profile). Later fields are left unread.
pub const MSH_FIELDS_MAX: usize = 21;

/// Why the first segment of a message is not a usable MSH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// No bytes at all (or only a byte order mark).
    #[error("message is empty; expected it to start with an MSH segment")]
    Empty,
    /// The first segment is not MSH.
    #[error("segment 1 must be MSH but starts with {}; the sender may be adding a prefix or sending a batch without splitting it", ShowBytes(&.first_bytes[..*.len as usize]))]
    NotMsh {
        /// Up to the first three bytes found instead of `MSH`.
        first_bytes: [u8; 3],
        /// How many of `first_bytes` are meaningful.
        len: u8,
    },
    /// `MSH` is not followed by a field separator.
    #[error("segment 1 (MSH): no field separator (MSH-1) after 'MSH'")]
    MissingFieldSeparator,
    /// MSH-1 is a letter, digit, space or control character.
    #[error("segment 1 (MSH), field MSH-1: {} is not a legal field separator; use ASCII punctuation such as '|'", ShowBytes(&[*.byte]))]
    IllegalFieldSeparator {
        /// The byte found.
        byte: u8,
    },
    /// MSH-2 does not hold 4 (or 5, with truncation; 3 is tolerated) characters.
    #[error("segment 1 (MSH), field MSH-2: {count} encoding characters; need 4 (component, repetition, escape, subcomponent, e.g. '^~\\&'), or 5 with a truncation character")]
    EncodingCharsCount {
        /// Characters found.
        count: usize,
    },
    /// An MSH-2 character is not ASCII punctuation.
    #[error("segment 1 (MSH), field MSH-2, character {position}: {} is not a legal delimiter; delimiters must be ASCII punctuation", ShowBytes(&[*.byte]))]
    IllegalEncodingChar {
        /// The byte found.
        byte: u8,
        /// 1-based position inside MSH-2.
        position: usize,
    },
    /// An MSH-2 character repeats MSH-1 or an earlier MSH-2 character.
    #[error("segment 1 (MSH), field MSH-2, character {position}: '{}' repeats a delimiter already in use; all delimiters must differ", *.byte as char)]
    DuplicateDelimiter {
        /// The repeated byte.
        byte: u8,
        /// 1-based position inside MSH-2.
        position: usize,
    },
}

impl HeaderError {
    /// The MSH field the error is about (1 or 2), or `None` when the segment
    /// itself is missing.
    pub fn field(&self) -> Option<u16> {
        match self {
            HeaderError::Empty | HeaderError::NotMsh { .. } => None,
            HeaderError::MissingFieldSeparator | HeaderError::IllegalFieldSeparator { .. } => {
                Some(1)
            }
            _ => Some(2),
        }
    }
}

/// Shows bytes to an operator: printable ASCII as is, the rest as `\xNN`.
pub(crate) struct ShowBytes<'a>(pub &'a [u8]);

impl fmt::Display for ShowBytes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("'")?;
        for &b in self.0 {
            if b.is_ascii_graphic() || b == b' ' {
                write!(f, "{}", b as char)?;
            } else {
                write!(f, "\\x{b:02X}")?;
            }
        }
        f.write_str("'")
    }
}

/// The MSH segment of one message, as borrowed raw (still escaped) bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MshHeader<'a> {
    delimiters: Delimiters,
    /// `fields[n]` is MSH-n; index 0 holds `MSH`.
    fields: [&'a [u8]; MSH_FIELDS_MAX + 1],
    segment: &'a [u8],
    body_offset: usize,
}

/// Reads MSH-1..MSH-21 of `msg` (a leading UTF-8 BOM is skipped). Stops at
/// the end of the first segment; never allocates.
pub fn parse_header(msg: &[u8]) -> Result<MshHeader<'_>, HeaderError> {
    let body_offset = if msg.starts_with(UTF8_BOM) {
        UTF8_BOM.len()
    } else {
        0
    };
    let bytes = &msg[body_offset..];
    if bytes.is_empty() {
        return Err(HeaderError::Empty);
    }
    if !bytes.starts_with(b"MSH") {
        let mut first_bytes = [0u8; 3];
        let len = bytes.len().min(3);
        first_bytes[..len].copy_from_slice(&bytes[..len]);
        return Err(HeaderError::NotMsh {
            first_bytes,
            len: len as u8,
        });
    }
    let (delimiters, encoding_chars) = Delimiters::from_header_segment(bytes)?;
    let mut fields: [&[u8]; MSH_FIELDS_MAX + 1] = [b""; MSH_FIELDS_MAX + 1];
    fields[0] = &bytes[..3];
    fields[1] = &bytes[3..4];
    fields[2] = encoding_chars;
    let after_msh2 = 4 + encoding_chars.len();
    let segment_len = split_msh_fields(bytes, after_msh2, delimiters.field, &mut fields);
    Ok(MshHeader {
        delimiters,
        fields,
        segment: &bytes[..segment_len],
        body_offset,
    })
}

/// Fills `fields[3..]` from `bytes[at..]` (where `at` is at the separator
/// after MSH-2 or at the segment end) and returns the MSH segment length.
fn split_msh_fields<'a>(
    bytes: &'a [u8],
    at: usize,
    sep: u8,
    fields: &mut [&'a [u8]; MSH_FIELDS_MAX + 1],
) -> usize {
    let mut pos = at;
    let mut number = 3;
    while bytes.get(pos) == Some(&sep) {
        let start = pos + 1;
        let rest = &bytes[start..];
        let len = rest
            .iter()
            .position(|&b| b == sep || b == b'\r' || b == b'\n')
            .unwrap_or(rest.len());
        if number <= MSH_FIELDS_MAX {
            fields[number] = &rest[..len];
        } else {
            // Fields past MSH-21 are not recorded; find the segment end only.
            let tail = rest
                .iter()
                .position(|&b| b == b'\r' || b == b'\n')
                .unwrap_or(rest.len());
            return start + tail;
        }
        number += 1;
        pos = start + len;
    }
    pos
}

impl<'a> MshHeader<'a> {
    /// The message's delimiters (MSH-1, MSH-2).
    pub fn delimiters(&self) -> Delimiters {
        self.delimiters
    }
    /// Raw MSH-`n` for `n` in 1..=21; empty when absent.
    pub fn field(&self, n: usize) -> &'a [u8] {
        self.fields.get(n).copied().unwrap_or(b"")
    }
    /// MSH-1 and MSH-2 as received (`|^~\&`), the message's delimiters.
    pub fn field_separator_and_encoding(&self) -> &'a [u8] {
        let end = 4 + self.field(2).len();
        self.segment.get(3..end).unwrap_or_default()
    }
    /// The whole MSH segment, without its terminator.
    pub fn segment(&self) -> &'a [u8] {
        self.segment
    }
    /// Bytes before `MSH` (3 for a UTF-8 BOM, else 0).
    pub fn body_offset(&self) -> usize {
        self.body_offset
    }
    /// MSH-3 sending application.
    pub fn sending_application(&self) -> &'a [u8] {
        self.fields[3]
    }
    /// MSH-4 sending facility.
    pub fn sending_facility(&self) -> &'a [u8] {
        self.fields[4]
    }
    /// MSH-5 receiving application.
    pub fn receiving_application(&self) -> &'a [u8] {
        self.fields[5]
    }
    /// MSH-6 receiving facility.
    pub fn receiving_facility(&self) -> &'a [u8] {
        self.fields[6]
    }
    /// MSH-7 date/time of message.
    pub fn date_time(&self) -> &'a [u8] {
        self.fields[7]
    }
    /// MSH-9 message type, e.g. `ADT^A01^ADT_A01`.
    pub fn message_type(&self) -> &'a [u8] {
        self.fields[9]
    }
    /// MSH-10 message control id.
    pub fn control_id(&self) -> &'a [u8] {
        self.fields[10]
    }
    /// MSH-11 processing id (`P`, `T`, `D`).
    pub fn processing_id(&self) -> &'a [u8] {
        self.fields[11]
    }
    /// MSH-12 version id, e.g. `2.5.1`.
    pub fn version(&self) -> &'a [u8] {
        self.fields[12]
    }
    /// MSH-15 accept acknowledgment type (`AL`, `NE`, `ER`, `SU`).
    pub fn accept_ack_type(&self) -> &'a [u8] {
        self.fields[15]
    }
    /// MSH-16 application acknowledgment type.
    pub fn application_ack_type(&self) -> &'a [u8] {
        self.fields[16]
    }
    /// MSH-18 character set.
    pub fn character_set(&self) -> &'a [u8] {
        self.fields[18]
    }
    /// MSH-9.`n` (1 = message code, 2 = trigger event, 3 = structure).
    pub fn message_type_component(&self, n: usize) -> &'a [u8] {
        nth_piece(self.fields[9], self.delimiters.component, n).unwrap_or(b"")
    }
}

/// The `n`-th (1-based) piece of `bytes` split on `sep`.
#[inline]
pub(crate) fn nth_piece(bytes: &[u8], sep: u8, n: usize) -> Option<&[u8]> {
    if n == 0 {
        return None;
    }
    bytes.split(|&b| b == sep).nth(n - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_fields_are_borrowed_by_number() {
        let msg =
            b"MSH|^~\\&|APP|FAC|RAPP|RFAC|20240101||ADT^A01|42|P|2.5|||AL|NE||UNICODE UTF-8\rPID|1";
        let h = parse_header(msg).unwrap();
        assert_eq!(h.sending_application(), b"APP");
        assert_eq!(h.receiving_facility(), b"RFAC");
        assert_eq!(h.message_type_component(2), b"A01");
        assert_eq!(h.control_id(), b"42");
        assert_eq!(h.accept_ack_type(), b"AL");
        assert_eq!(h.character_set(), b"UNICODE UTF-8");
        assert_eq!(h.field(19), b"");
        assert_eq!(h.segment().len(), msg.len() - 6);
    }

    #[test]
    fn bom_is_skipped_and_reported() {
        let h = parse_header(b"\xEF\xBB\xBFMSH|^~\\&|A").unwrap();
        assert_eq!((h.body_offset(), h.sending_application()), (3, &b"A"[..]));
    }

    #[test]
    fn header_stops_at_lf_segment_end() {
        let h = parse_header(b"MSH|^~\\&|A|B\nEVN|X|Y|Z|W|V|U|T|S").unwrap();
        assert_eq!(
            (h.sending_facility(), h.control_id()),
            (&b"B"[..], &b""[..])
        );
    }

    #[test]
    fn non_msh_start_names_what_was_found() {
        let err = parse_header(b"\0\0\x02MSH").unwrap_err();
        assert!(err.to_string().contains("'\\x00\\x00\\x02'"), "{err}");
        assert_eq!(parse_header(b"").unwrap_err(), HeaderError::Empty);
    }
}
