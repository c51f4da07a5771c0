//! How an ACK is spelled in each HL7 v2 version (MSH-12 of the message it
//! answers): the shape of MSH-7, MSH-9 and ERR, and whether MSA-3 exists.
//!
//! The rules come from the version chapters: MSH-9.3 (message structure)
//! appears in 2.3.1 and is written from 2.4 on; ERR-1 (error code and
//! location) is the only ERR field before 2.5 and is deprecated after it, in
//! favour of ERR-2 location, ERR-3 code and ERR-4 severity; MSA-3 (text
//! message) is withdrawn in 2.7. HL7 2.1's TS also carries a degree of
//! precision component.

use super::super::header::nth_piece;

/// Which ERR layout a version uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrLayout {
    /// 2.1: ERR-1 holds the table 0357 code alone.
    CodeOnly,
    /// 2.2 to 2.4: ERR-1 is an ELD, `segment^sequence^field^code&text&HL70357`.
    Eld,
    /// 2.5 on: ERR-2 location, ERR-3 code, ERR-4 severity, ERR-8 text.
    Erl,
}

/// The version-dependent parts of an ACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialect {
    /// MSH-9 as `ACK^<trigger>^ACK` (else `ACK^<trigger>`).
    pub structure_in_type: bool,
    /// ERR segment layout.
    pub err: ErrLayout,
    /// MSA-3 text message exists (withdrawn in 2.7).
    pub msa_text: bool,
    /// MSH-7 carries the `^S` degree-of-precision component (2.1).
    pub ts_precision: bool,
}

impl Dialect {
    /// The rules for a raw MSH-12 (its first component is the version id).
    /// Unreadable or missing versions get the 2.5 rules, matching the
    /// version the builder writes when MSH-12 is empty.
    pub fn for_version(msh12: &[u8], component: u8) -> Dialect {
        let id = nth_piece(msh12, component, 1).unwrap_or(b"");
        let (minor, _patch) = parse_version(id).unwrap_or((5, 0));
        Dialect {
            structure_in_type: minor >= 4,
            err: match minor {
                0..=1 => ErrLayout::CodeOnly,
                2..=4 => ErrLayout::Eld,
                _ => ErrLayout::Erl,
            },
            msa_text: minor < 7,
            ts_precision: minor <= 1,
        }
    }
}

/// `2.<minor>[.<patch>]` with surrounding spaces allowed; any other major
/// version is not HL7 v2 and returns `None`.
fn parse_version(id: &[u8]) -> Option<(u16, u16)> {
    let id = super::build::trim(id);
    let rest = id.strip_prefix(b"2.")?;
    let mut parts = rest.split(|&b| b == b'.');
    let minor = number(parts.next()?)?;
    let patch = match parts.next() {
        Some(p) => number(p)?,
        None => 0,
    };
    Some((minor, patch))
}

fn number(digits: &[u8]) -> Option<u16> {
    if digits.is_empty() || digits.len() > 4 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(digits.iter().fold(0, |n, &d| n * 10 + u16::from(d - b'0')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_pick_their_chapter_rules() {
        let d = |v: &[u8]| Dialect::for_version(v, b'^');
        assert_eq!(d(b"2.1").err, ErrLayout::CodeOnly);
        assert!(d(b"2.1").ts_precision);
        assert_eq!(d(b"2.3.1").err, ErrLayout::Eld);
        assert!(!d(b"2.3.1").structure_in_type);
        assert!(d(b"2.4").structure_in_type);
        assert_eq!(d(b"2.5^FRA^2.5").err, ErrLayout::Erl);
        assert!(d(b"2.6").msa_text);
        assert!(!d(b"2.7.1").msa_text);
        assert_eq!(d(b"banana"), d(b"2.5"));
        assert_eq!(d(b""), d(b"2.5"));
    }
}
