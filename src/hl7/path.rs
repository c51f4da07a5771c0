//! Field paths as operators write them: `PID-3`, `PID-3.1`, `PID-3[2].1`,
//! `OBX[3]-5`, `MSH-9.2`, `PID-3.4.2`.
//!
//! Grammar: `SEG ['[' occurrence ']'] '-' field ['[' repetition ']']
//! ['.' component ['.' subcomponent]]`, all numbers 1-based. This module only
//! parses and prints paths; [`super::Message::get`] resolves them.

use std::fmt;
use std::str::FromStr;

use super::FIELD_PATH_NUMBER_MAX;

/// A parsed field path. See the module docs for the syntax and
/// [`super::Message::get`] for what each part selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FieldPath {
    /// Segment id, e.g. `PID`.
    pub segment: [u8; 3],
    /// Which occurrence of the segment (1 = first).
    pub occurrence: u16,
    /// Field number (MSH-1 is the field separator itself).
    pub field: u16,
    /// Repetition, if written (`PID-3[2]`).
    pub repetition: Option<u16>,
    /// Component, if written (`PID-3.1`).
    pub component: Option<u16>,
    /// Subcomponent, if written (`PID-3.4.2`).
    pub subcomponent: Option<u16>,
}

/// Why a field path string is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FieldPathError {
    /// The text does not follow the grammar.
    #[error("field path `{path}`: expected {expected} at character {at}; write paths like PID-3, PID-3.1, PID-3[2].1 or OBX[3]-5")]
    Syntax {
        /// The path as written.
        path: String,
        /// 1-based character position of the problem.
        at: usize,
        /// What the parser wanted there.
        expected: &'static str,
    },
    /// A number is 0 or above [`FIELD_PATH_NUMBER_MAX`].
    #[error("field path `{path}`: number at character {at} must be between 1 and {max} (positions are 1-based)")]
    OutOfRange {
        /// The path as written.
        path: String,
        /// 1-based character position of the number.
        at: usize,
        /// Largest allowed number.
        max: u16,
    },
}

struct Cursor<'a> {
    text: &'a str,
    pos: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let hit = self.peek() == Some(byte);
        self.pos += usize::from(hit);
        hit
    }

    fn syntax(&self, expected: &'static str) -> FieldPathError {
        FieldPathError::Syntax {
            path: self.text.to_owned(),
            at: self.pos + 1,
            expected,
        }
    }

    fn expect(&mut self, byte: u8, expected: &'static str) -> Result<(), FieldPathError> {
        if self.eat(byte) {
            Ok(())
        } else {
            Err(self.syntax(expected))
        }
    }

    fn number(&mut self) -> Result<u16, FieldPathError> {
        let start = self.pos;
        let mut value: u32 = 0;
        while let Some(d @ b'0'..=b'9') = self.peek() {
            value = (value * 10 + u32::from(d - b'0')).min(u32::from(u16::MAX));
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.syntax("a number"));
        }
        if value == 0 || value > u32::from(FIELD_PATH_NUMBER_MAX) {
            let path = self.text.to_owned();
            return Err(FieldPathError::OutOfRange {
                path,
                at: start + 1,
                max: FIELD_PATH_NUMBER_MAX,
            });
        }
        Ok(value as u16) // value <= FIELD_PATH_NUMBER_MAX, checked above.
    }

    fn bracketed(&mut self) -> Result<Option<u16>, FieldPathError> {
        if !self.eat(b'[') {
            return Ok(None);
        }
        let n = self.number()?;
        self.expect(b']', "']'")?;
        Ok(Some(n))
    }

    fn dotted(&mut self) -> Result<Option<u16>, FieldPathError> {
        if self.eat(b'.') {
            self.number().map(Some)
        } else {
            Ok(None)
        }
    }
}

impl FieldPath {
    /// Parses `PID-3[2].1` and friends. Segment ids are three upper-case
    /// letters or digits.
    pub fn parse(text: &str) -> Result<FieldPath, FieldPathError> {
        let mut cur = Cursor { text, pos: 0 };
        let mut segment = [0u8; 3];
        for slot in &mut segment {
            match cur.peek() {
                Some(c) if c.is_ascii_uppercase() || c.is_ascii_digit() => *slot = c,
                _ => return Err(cur.syntax("a three-character segment id such as PID")),
            }
            cur.pos += 1;
        }
        let occurrence = cur.bracketed()?.unwrap_or(1);
        cur.expect(b'-', "'-' before the field number")?;
        let field = cur.number()?;
        let repetition = cur.bracketed()?;
        let component = cur.dotted()?;
        let subcomponent = if component.is_some() {
            cur.dotted()?
        } else {
            None
        };
        if cur.pos != text.len() {
            return Err(cur.syntax("the end of the path"));
        }
        Ok(FieldPath {
            segment,
            occurrence,
            field,
            repetition,
            component,
            subcomponent,
        })
    }
}

impl FromStr for FieldPath {
    type Err = FieldPathError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        FieldPath::parse(s)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let seg = self.segment.map(char::from);
        write!(f, "{}{}{}", seg[0], seg[1], seg[2])?;
        if self.occurrence != 1 {
            write!(f, "[{}]", self.occurrence)?;
        }
        write!(f, "-{}", self.field)?;
        if let Some(r) = self.repetition {
            write!(f, "[{r}]")?;
        }
        if let Some(c) = self.component {
            write!(f, ".{c}")?;
        }
        if let Some(s) = self.subcomponent {
            write!(f, ".{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operator_paths_parse() {
        let p = FieldPath::parse("OBX[3]-5[2].1.4").unwrap();
        assert_eq!(p.segment, *b"OBX");
        assert_eq!(
            (
                p.occurrence,
                p.field,
                p.repetition,
                p.component,
                p.subcomponent
            ),
            (3, 5, Some(2), Some(1), Some(4))
        );
        let p = FieldPath::parse("MSH-9.2").unwrap();
        assert_eq!(
            (p.occurrence, p.field, p.repetition, p.component),
            (1, 9, None, Some(2))
        );
    }

    #[test]
    fn bad_paths_say_where() {
        let err = FieldPath::parse("PID3").unwrap_err();
        assert!(matches!(err, FieldPathError::Syntax { at: 4, .. }), "{err}");
        assert!(matches!(
            FieldPath::parse("PID-0").unwrap_err(),
            FieldPathError::OutOfRange { at: 5, .. }
        ));
        assert!(matches!(
            FieldPath::parse("pid-1").unwrap_err(),
            FieldPathError::Syntax { at: 1, .. }
        ));
        assert!(matches!(
            FieldPath::parse("PID-1.").unwrap_err(),
            FieldPathError::Syntax { at: 7, .. }
        ));
    }

    proptest::proptest! {
        #[test]
        fn display_round_trips(occ in 1u16..50, field in 1u16..200, rep in proptest::option::of(1u16..9), comp in proptest::option::of(1u16..9), sub in proptest::option::of(1u16..9)) {
            let path = FieldPath { segment: *b"ZX1", occurrence: occ, field, repetition: rep, component: comp, subcomponent: comp.and(sub) };
            proptest::prop_assert_eq!(FieldPath::parse(&path.to_string()).unwrap(), path);
        }
    }
}
