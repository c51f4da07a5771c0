//! Splits a message into segment lines on CR, LF or CRLF.
//!
//! Each line comes with the run of terminator bytes that follows it (so empty
//! lines are absorbed and the original bytes can be written back exactly).
//! Only scans; never allocates.

use crate::mllp::scan::find2;

/// One segment line: `bytes[start..end]` is the segment, `bytes[end..next]`
/// its terminator run (possibly empty at the end of the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Line {
    pub start: usize,
    pub end: usize,
    pub next: usize,
}

/// Iterator over the lines of `bytes[pos..]`, positions absolute in `bytes`.
pub(crate) struct Lines<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Lines<'a> {
    pub fn new(bytes: &'a [u8], pos: usize) -> Self {
        Lines { bytes, pos }
    }
}

impl Iterator for Lines<'_> {
    type Item = Line;

    fn next(&mut self) -> Option<Line> {
        if self.pos >= self.bytes.len() {
            return None;
        }
        let start = self.pos;
        let rest = &self.bytes[start..];
        let end = find2(rest, b'\r', b'\n').map_or(self.bytes.len(), |i| start + i);
        let mut next = end;
        while matches!(self.bytes.get(next), Some(b'\r' | b'\n')) {
            next += 1;
        }
        self.pos = next;
        Some(Line { start, end, next })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cr_lf_and_crlf_all_end_segments() {
        let bytes = b"A\rB\nC\r\n\r\nD";
        let lines: Vec<_> = Lines::new(bytes, 0)
            .map(|l| &bytes[l.start..l.end])
            .collect();
        assert_eq!(lines, vec![&b"A"[..], b"B", b"C", b"D"]);
    }

    #[test]
    fn terminator_runs_cover_every_byte() {
        let bytes = b"A\r\r\nB\r";
        let lines: Vec<_> = Lines::new(bytes, 0).collect();
        assert_eq!(
            lines,
            vec![
                Line {
                    start: 0,
                    end: 1,
                    next: 4
                },
                Line {
                    start: 4,
                    end: 5,
                    next: 6
                }
            ]
        );
    }
}
