//! Full, zero-copy message parser: a segment index over borrowed bytes, and
//! field-path access with raw and escape-decoded values.
//!
//! Parsing validates the header (delimiters must be readable) and records
//! where each segment starts and ends; fields, repetitions, components and
//! subcomponents are split only when [`Message::get`] asks for them. The
//! stored bytes are never modified.

use std::borrow::Cow;

use super::delimiters::Delimiters;
use super::escape;
use super::header::{nth_piece, parse_header, HeaderError, MshHeader};
use super::path::FieldPath;
use super::segments::{Line, Lines};
use super::MESSAGE_SEGMENTS_MAX;

/// Why bytes are not a parseable HL7 v2 message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The MSH segment is unusable.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// More segments than [`MESSAGE_SEGMENTS_MAX`].
    #[error("message has more than {limit} segments; it is probably not one HL7 message (a batch or a stream of files?)")]
    TooManySegments {
        /// The limit.
        limit: usize,
    },
}

/// A parsed message borrowing its bytes.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    bytes: &'a [u8],
    header: MshHeader<'a>,
    lines: Vec<Line>,
}

/// One segment of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment<'a> {
    raw: &'a [u8],
    delimiters: Delimiters,
}

/// A value selected by a field path: raw bytes as stored, decoded on demand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Value<'a> {
    raw: &'a [u8],
    delimiters: Delimiters,
}

impl<'a> Message<'a> {
    /// Parses `bytes` (one message, optional leading UTF-8 BOM). Segment ends
    /// may be CR, LF or CRLF.
    pub fn parse(bytes: &'a [u8]) -> Result<Message<'a>, ParseError> {
        let header = parse_header(bytes)?;
        let mut lines = Vec::with_capacity(16);
        for line in Lines::new(bytes, header.body_offset()) {
            if lines.len() == MESSAGE_SEGMENTS_MAX {
                return Err(ParseError::TooManySegments {
                    limit: MESSAGE_SEGMENTS_MAX,
                });
            }
            lines.push(line);
        }
        Ok(Message {
            bytes,
            header,
            lines,
        })
    }

    /// The MSH header.
    pub fn header(&self) -> &MshHeader<'a> {
        &self.header
    }

    /// The message's delimiters.
    pub fn delimiters(&self) -> Delimiters {
        self.header.delimiters()
    }

    /// The bytes the message was parsed from, unchanged.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Number of segments (empty lines are not segments).
    pub fn segment_count(&self) -> usize {
        self.lines.len()
    }

    /// The segments, in order.
    pub fn segments(&self) -> impl Iterator<Item = Segment<'a>> + '_ {
        let (bytes, delimiters) = (self.bytes, self.delimiters());
        self.lines.iter().map(move |l| Segment {
            raw: &bytes[l.start..l.end],
            delimiters,
        })
    }

    /// The value at `path`, or `None` when the message does not reach that
    /// far. Without `[rep]` and `.comp` the whole field (all repetitions) is
    /// returned; with only `.comp` the first repetition is used. MSH-1 and
    /// MSH-2 are returned whole.
    pub fn get(&self, path: &FieldPath) -> Option<Value<'a>> {
        let occurrence = usize::from(path.occurrence.max(1));
        let segment = self
            .segments()
            .filter(|s| s.name() == path.segment)
            .nth(occurrence - 1)?;
        let field = segment.field(usize::from(path.field))?;
        let d = self.delimiters();
        if segment.is_msh() && path.field <= 2 {
            let whole = [path.repetition, path.component, path.subcomponent]
                .iter()
                .all(|p| p.unwrap_or(1) == 1);
            return whole.then_some(Value {
                raw: field,
                delimiters: d,
            });
        }
        let repetition = match (path.repetition, path.component) {
            (None, None) => field,
            (rep, _) => nth_piece(field, d.repetition, usize::from(rep.unwrap_or(1)))?,
        };
        let component = match path.component {
            None => repetition,
            Some(c) => nth_piece(repetition, d.component, usize::from(c))?,
        };
        let raw = match path.subcomponent {
            None => component,
            Some(s) => nth_piece(component, d.subcomponent, usize::from(s))?,
        };
        Some(Value { raw, delimiters: d })
    }

    /// Re-serialises the message from its parsed structure (segments, fields,
    /// repetitions, components, subcomponents) into `out`. The result equals
    /// the parsed bytes exactly.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.bytes[..self.header.body_offset()]);
        for (line, segment) in self.lines.iter().zip(self.segments()) {
            segment.write_to(out);
            out.extend_from_slice(&self.bytes[line.end..line.next]);
        }
    }
}

impl<'a> Segment<'a> {
    /// The segment's raw bytes, without terminator.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The segment id (the bytes before the first field separator).
    pub fn name(&self) -> &'a [u8] {
        let sep = self.delimiters.field;
        let len = self
            .raw
            .iter()
            .position(|&b| b == sep)
            .unwrap_or(self.raw.len());
        &self.raw[..len]
    }

    fn is_msh(&self) -> bool {
        self.raw.starts_with(b"MSH") && self.raw.get(3) == Some(&self.delimiters.field)
    }

    /// Raw field `n` (1-based, numbered as HL7 does: in MSH, field 1 is the
    /// separator itself), or `None` past the last field.
    pub fn field(&self, n: usize) -> Option<&'a [u8]> {
        if n == 0 {
            return None;
        }
        if self.is_msh() {
            return if n == 1 {
                Some(&self.raw[3..4])
            } else {
                self.fields().nth(n - 1)
            };
        }
        self.fields().nth(n)
    }

    /// Field pieces split on the field separator, the segment id first.
    fn fields(&self) -> impl Iterator<Item = &'a [u8]> {
        let sep = self.delimiters.field;
        self.raw.split(move |&b| b == sep)
    }

    fn write_to(&self, out: &mut Vec<u8>) {
        let d = self.delimiters;
        let skip_structure = usize::from(self.is_msh()); // MSH-2 is written as is.
        for (i, field) in self.fields().enumerate() {
            if i > 0 {
                out.push(d.field);
            }
            if i <= skip_structure {
                out.extend_from_slice(field);
            } else {
                write_field(field, &d, out);
            }
        }
    }
}

fn write_field(field: &[u8], d: &Delimiters, out: &mut Vec<u8>) {
    join(field, d.repetition, out, |rep, out| {
        join(rep, d.component, out, |comp, out| {
            join(comp, d.subcomponent, out, |sub, out| {
                out.extend_from_slice(sub)
            })
        })
    });
}

fn join(bytes: &[u8], sep: u8, out: &mut Vec<u8>, mut each: impl FnMut(&[u8], &mut Vec<u8>)) {
    for (i, piece) in bytes.split(|&b| b == sep).enumerate() {
        if i > 0 {
            out.push(sep);
        }
        each(piece, out);
    }
}

impl<'a> Value<'a> {
    pub(crate) fn new(raw: &'a [u8], delimiters: Delimiters) -> Self {
        Value { raw, delimiters }
    }

    /// The bytes as stored (escape sequences intact).
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The value with escape sequences resolved; borrowed when it has none.
    pub fn decoded(&self) -> Cow<'a, [u8]> {
        escape::decode(self.raw, &self.delimiters)
    }

    /// Appends the decoded value to `out` (no allocation beyond `out`).
    pub fn decode_into(&self, out: &mut Vec<u8>) {
        escape::decode_into(self.raw, &self.delimiters, out);
    }

    /// True for the HL7 explicit null `""`.
    pub fn is_null(&self) -> bool {
        self.raw == b"\"\""
    }

    /// True when the value is present but empty.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"MSH|^~\\&|APP|FAC|||20240101||ADT^A01^ADT_A01|42|P|2.5\r\
PID|1||111^^^H1&1.2&ISO~222^^^H2||DOE^JANE\\S\\X\r\
OBX|1|ST|A||one\r\nOBX|2|ST|B||two\nOBX|3|ST|C||three\r";

    fn get<'a>(m: &Message<'a>, path: &str) -> Option<&'a [u8]> {
        m.get(&FieldPath::parse(path).unwrap()).map(|v| v.raw())
    }

    #[test]
    fn operator_paths_select_the_right_bytes() {
        let m = Message::parse(MSG).unwrap();
        assert_eq!(get(&m, "PID-3"), Some(&b"111^^^H1&1.2&ISO~222^^^H2"[..]));
        assert_eq!(get(&m, "PID-3.1"), Some(&b"111"[..]));
        assert_eq!(get(&m, "PID-3[2].1"), Some(&b"222"[..]));
        assert_eq!(get(&m, "PID-3.4.2"), Some(&b"1.2"[..]));
        assert_eq!(get(&m, "OBX[3]-5"), Some(&b"three"[..]));
        assert_eq!(get(&m, "MSH-9.2"), Some(&b"A01"[..]));
        assert_eq!(get(&m, "MSH-1"), Some(&b"|"[..]));
        assert_eq!(get(&m, "MSH-2"), Some(&b"^~\\&"[..]));
        assert_eq!(get(&m, "MSH-10"), Some(&b"42"[..]));
    }

    #[test]
    fn missing_parts_are_none_and_empty_parts_are_empty() {
        let m = Message::parse(MSG).unwrap();
        assert_eq!(get(&m, "OBX[4]-1"), None);
        assert_eq!(get(&m, "PID-99"), None);
        assert_eq!(get(&m, "PID-3[3]"), None);
        assert_eq!(get(&m, "PID-2"), Some(&b""[..]));
        assert_eq!(get(&m, "MSH-2.2"), None);
    }

    #[test]
    fn decoded_value_resolves_escapes_but_raw_keeps_them() {
        let m = Message::parse(MSG).unwrap();
        let v = m.get(&FieldPath::parse("PID-5.2").unwrap()).unwrap();
        assert_eq!(
            (v.raw(), v.decoded().as_ref()),
            (&b"JANE\\S\\X"[..], &b"JANE^X"[..])
        );
    }

    #[test]
    fn write_to_reproduces_mixed_line_endings() {
        let m = Message::parse(MSG).unwrap();
        let mut out = Vec::new();
        m.write_to(&mut out);
        assert_eq!(out, MSG);
        assert_eq!(m.segment_count(), 5);
    }
}
