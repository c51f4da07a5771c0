//! The delimiter set a message declares in MSH-1 and MSH-2 (or FHS/BHS).
//!
//! Any legal set is accepted, not only `|^~\&`: five distinct ASCII
//! punctuation characters, plus an optional truncation character (v2.7+).
//! This module only reads the first bytes of a header segment.

use super::header::HeaderError;

/// The five (or six) separator characters of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Delimiters {
    /// MSH-1, between fields (usually `|`).
    pub field: u8,
    /// MSH-2.1, between components (usually `^`).
    pub component: u8,
    /// MSH-2.2, between repetitions (usually `~`).
    pub repetition: u8,
    /// MSH-2.3, starts and ends escape sequences (usually `\`).
    pub escape: u8,
    /// MSH-2.4, between subcomponents (usually `&`).
    pub subcomponent: u8,
    /// MSH-2.5, the truncation character of v2.7+ (usually `#`), if declared.
    pub truncation: Option<u8>,
}

impl Default for Delimiters {
    /// The standard set `|^~\&`.
    fn default() -> Self {
        Delimiters {
            field: b'|',
            component: b'^',
            repetition: b'~',
            escape: b'\\',
            subcomponent: b'&',
            truncation: None,
        }
    }
}

impl Delimiters {
    /// Reads MSH-1 and MSH-2 from a header segment (`MSH`, `FHS` or `BHS`,
    /// whose three-letter name is already checked). Returns the delimiters
    /// and the raw MSH-2 bytes.
    pub(crate) fn from_header_segment(segment: &[u8]) -> Result<(Delimiters, &[u8]), HeaderError> {
        let field = match segment.get(3) {
            None | Some(b'\r' | b'\n') => return Err(HeaderError::MissingFieldSeparator),
            Some(&b) if !b.is_ascii_punctuation() => {
                return Err(HeaderError::IllegalFieldSeparator { byte: b })
            }
            Some(&b) => b,
        };
        let rest = &segment[4..];
        let len = rest
            .iter()
            .position(|&b| b == field || b == b'\r' || b == b'\n')
            .unwrap_or(rest.len());
        let chars = &rest[..len];
        if !(3..=5).contains(&chars.len()) {
            return Err(HeaderError::EncodingCharsCount { count: chars.len() });
        }
        check_distinct(field, chars)?;
        let delimiters = Delimiters {
            field,
            component: chars[0],
            repetition: chars[1],
            escape: chars[2],
            subcomponent: chars
                .get(3)
                .copied()
                .unwrap_or_else(|| unused_subcomponent(field, chars)),
            truncation: chars.get(4).copied(),
        };
        Ok((delimiters, chars))
    }

    /// True when `byte` is one of the separators or the escape character.
    #[inline]
    pub fn is_special(&self, byte: u8) -> bool {
        byte == self.field
            || byte == self.component
            || byte == self.repetition
            || byte == self.escape
            || byte == self.subcomponent
            || Some(byte) == self.truncation
    }

    /// MSH-2 as this set would write it (always the four core characters).
    pub fn encoding_chars(&self) -> [u8; 4] {
        [
            self.component,
            self.repetition,
            self.escape,
            self.subcomponent,
        ]
    }
}

/// A 3-character MSH-2 (accepted, as HAPI and other lenient parsers do)
/// declares no subcomponent separator: use `&` unless the set already uses
/// it, so splitting never confuses two delimiters.
fn unused_subcomponent(field: u8, chars: &[u8]) -> u8 {
    *b"&$*@!%"
        .iter()
        .find(|c| **c != field && !chars.contains(c))
        .unwrap_or(&0x1A) // Six candidates, at most four in use.
}

fn check_distinct(field: u8, chars: &[u8]) -> Result<(), HeaderError> {
    for (i, &c) in chars.iter().enumerate() {
        let position = i + 1;
        if !c.is_ascii_punctuation() {
            return Err(HeaderError::IllegalEncodingChar { byte: c, position });
        }
        if c == field || chars[..i].contains(&c) {
            return Err(HeaderError::DuplicateDelimiter { byte: c, position });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_set_is_read_in_msh2_order() {
        let (d, raw) = Delimiters::from_header_segment(b"MSH#!@%*#APP").unwrap();
        assert_eq!(
            (d.field, d.component, d.repetition, d.escape, d.subcomponent),
            (b'#', b'!', b'@', b'%', b'*')
        );
        assert_eq!(raw, b"!@%*");
    }

    #[test]
    fn truncation_character_is_optional_fifth() {
        let (d, _) = Delimiters::from_header_segment(b"MSH|^~\\&#|A").unwrap();
        assert_eq!(d.truncation, Some(b'#'));
    }

    #[test]
    fn three_character_set_gets_an_unused_subcomponent_separator() {
        let (d, raw) = Delimiters::from_header_segment(b"MSH|^~\\|A").unwrap();
        assert_eq!((d.subcomponent, raw), (b'&', &b"^~\\"[..]));
        let (d, _) = Delimiters::from_header_segment(b"MSH|&~\\|A").unwrap();
        assert_eq!(d.subcomponent, b'$');
    }

    #[test]
    fn repeated_delimiter_is_rejected_with_its_position() {
        let err = Delimiters::from_header_segment(b"MSH|^&&^|").unwrap_err();
        assert_eq!(
            err,
            HeaderError::DuplicateDelimiter {
                byte: b'&',
                position: 3
            }
        );
    }

    #[test]
    fn letters_are_not_delimiters() {
        let err = Delimiters::from_header_segment(b"MSH|^~A&|").unwrap_err();
        assert_eq!(
            err,
            HeaderError::IllegalEncodingChar {
                byte: b'A',
                position: 3
            }
        );
    }
}
