//! HL7 escape sequences: decoding when a value is read, encoding when the
//! ACK builder writes text.
//!
//! Decoding resolves `\F\ \S\ \T\ \R\ \E\ \P\`, hex data `\Xhh..\`, and the
//! formatting commands (`\.br\`, `\.sp n\`, `\.sk n\`, `\H\`, `\N\`, ...).
//! Unknown or unterminated sequences are kept literally: reading a value
//! never fails and never rewrites the stored message.

use std::borrow::Cow;

use super::delimiters::Delimiters;

/// Largest repeat count honoured in `\.sp n\` and `\.sk n\`, so a tiny
/// escape cannot expand into megabytes.
pub const FORMAT_REPEAT_MAX: usize = 100;
/// Longest escape sequence body searched for a closing escape character;
/// longer runs are literal text.
pub const ESCAPE_SEQUENCE_BYTES_MAX: usize = 4096;

/// `raw` with escape sequences resolved; borrowed when there are none.
pub fn decode<'a>(raw: &'a [u8], d: &Delimiters) -> Cow<'a, [u8]> {
    if !raw.contains(&d.escape) {
        return Cow::Borrowed(raw);
    }
    let mut out = Vec::with_capacity(raw.len());
    decode_into(raw, d, &mut out);
    Cow::Owned(out)
}

/// Appends `raw` with escape sequences resolved to `out`.
pub fn decode_into(raw: &[u8], d: &Delimiters, out: &mut Vec<u8>) {
    let mut rest = raw;
    while let Some(at) = rest.iter().position(|&b| b == d.escape) {
        out.extend_from_slice(&rest[..at]);
        let after = &rest[at + 1..];
        let window = &after[..after.len().min(ESCAPE_SEQUENCE_BYTES_MAX)];
        match window.iter().position(|&b| b == d.escape) {
            Some(close) if resolve(&after[..close], d, out) => rest = &after[close + 1..],
            _ => {
                out.push(d.escape);
                rest = after;
            }
        }
    }
    out.extend_from_slice(rest);
}

/// Writes the meaning of one sequence body; false if it is not one we know
/// (the caller then keeps it literally).
fn resolve(body: &[u8], d: &Delimiters, out: &mut Vec<u8>) -> bool {
    let single = match body {
        b"F" => Some(d.field),
        b"S" => Some(d.component),
        b"T" => Some(d.subcomponent),
        b"R" => Some(d.repetition),
        b"E" => Some(d.escape),
        b"P" => d.truncation,
        _ => None,
    };
    if let Some(byte) = single {
        out.push(byte);
        return true;
    }
    match body {
        [b'X', hex @ ..] => decode_hex(hex, out),
        b"H" | b"N" | b".fi" | b".nf" | b".ce" => true,
        [b'C', rest @ ..] | [b'M', rest @ ..] => {
            !rest.is_empty() && rest.iter().all(u8::is_ascii_hexdigit)
        }
        [b'.', command @ ..] => format_command(command, out),
        _ => false,
    }
}

fn decode_hex(hex: &[u8], out: &mut Vec<u8>) -> bool {
    if hex.is_empty() || !hex.len().is_multiple_of(2) || !hex.iter().all(u8::is_ascii_hexdigit) {
        return false;
    }
    out.extend(
        hex.chunks_exact(2)
            .map(|pair| (nibble(pair[0]) << 4) | nibble(pair[1])),
    );
    true
}

fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        _ => c.wrapping_sub(b'A').wrapping_add(10) & 0x0F,
    }
}

/// Formatting commands of formatted text (FT): line breaks become `\n`,
/// skips become spaces, layout-only commands vanish.
fn format_command(command: &[u8], out: &mut Vec<u8>) -> bool {
    let (name, arg) = match command
        .iter()
        .position(|&b| b == b' ' || b.is_ascii_digit() || b == b'-' || b == b'+')
    {
        Some(i) => (&command[..i], trim_spaces(&command[i..])),
        None => (command, &b""[..]),
    };
    let count = parse_count(arg);
    match (name, count) {
        (b"br", _) if arg.is_empty() => out.push(b'\n'),
        (b"sp", Some(n)) => out.extend(std::iter::repeat_n(b'\n', n.max(1))),
        (b"sk", Some(n)) => out.extend(std::iter::repeat_n(b' ', n.max(1))),
        (b"in" | b"ti", Some(_)) => {}
        _ => return false,
    }
    true
}

fn trim_spaces(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != b' ').unwrap_or(bytes.len());
    &bytes[start..]
}

/// Count argument of `.sp`/`.sk`/`.in`/`.ti`: empty means 1; signs allowed;
/// capped at [`FORMAT_REPEAT_MAX`].
fn parse_count(arg: &[u8]) -> Option<usize> {
    let digits = arg
        .strip_prefix(b"+")
        .or_else(|| arg.strip_prefix(b"-"))
        .unwrap_or(arg);
    if digits.is_empty() {
        return Some(1);
    }
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .take(4)
        .fold(0usize, |n, &c| n * 10 + usize::from(c - b'0'));
    Some(n.min(FORMAT_REPEAT_MAX))
}

/// Appends `text` escaped for use inside a field written with `d`, but stops
/// before `out` would grow by more than `budget` bytes. Never ends inside an
/// escape sequence or a UTF-8 character. Returns the bytes of `text` written.
pub fn encode_bounded(text: &[u8], d: &Delimiters, budget: usize, out: &mut Vec<u8>) -> usize {
    let start_len = out.len();
    for (i, &b) in text.iter().enumerate() {
        let needed = match b {
            b'\r' | b'\n' => 5,
            _ if d.is_special(b) => 3,
            _ => utf8_char_end(text, i) - i,
        };
        if is_char_start(b) && out.len() - start_len + needed > budget {
            return i;
        }
        push_escaped(b, d, out);
    }
    text.len()
}

fn push_escaped(b: u8, d: &Delimiters, out: &mut Vec<u8>) {
    let code = match b {
        _ if b == d.field => b'F',
        _ if b == d.component => b'S',
        _ if b == d.subcomponent => b'T',
        _ if b == d.repetition => b'R',
        _ if b == d.escape => b'E',
        _ if Some(b) == d.truncation => b'P',
        b'\r' | b'\n' => {
            let hex = if b == b'\r' { b"0D" } else { b"0A" };
            out.extend_from_slice(&[d.escape, b'X', hex[0], hex[1], d.escape]);
            return;
        }
        _ => {
            out.push(b);
            return;
        }
    };
    out.extend_from_slice(&[d.escape, code, d.escape]);
}

fn is_char_start(b: u8) -> bool {
    b & 0xC0 != 0x80
}

/// End index of the UTF-8 character starting at `i` (1 byte for non-lead
/// bytes and invalid input).
fn utf8_char_end(text: &[u8], i: usize) -> usize {
    let len = match text[i] {
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    };
    let mut end = i + 1;
    while end < text.len() && end < i + len && !is_char_start(text[end]) {
        end += 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(raw: &[u8]) -> Vec<u8> {
        decode(raw, &Delimiters::default()).into_owned()
    }

    #[test]
    fn delimiter_escapes_resolve() {
        assert_eq!(dec(b"a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f"), b"a|b^c&d~e\\f");
    }

    #[test]
    fn double_escaped_text_decodes_once() {
        assert_eq!(dec(b"\\E\\T\\E\\"), b"\\T\\");
    }

    #[test]
    fn hex_and_formatting_escapes_resolve() {
        assert_eq!(
            dec(b"\\X41E9\\x\\.br\\y\\.sp 2\\z\\H\\bold\\N\\"),
            b"A\xE9x\ny\n\nzbold"
        );
    }

    #[test]
    fn unknown_and_unterminated_sequences_stay_literal() {
        assert_eq!(dec(b"\\Q\\ and \\F"), b"\\Q\\ and \\F");
        assert_eq!(dec(b"\\X4\\"), b"\\X4\\");
    }

    #[test]
    fn repeat_counts_are_capped() {
        assert_eq!(dec(b"\\.sp 9999999\\").len(), FORMAT_REPEAT_MAX);
    }

    #[test]
    fn unescaped_value_is_borrowed() {
        assert!(matches!(
            decode(b"plain", &Delimiters::default()),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn encode_escapes_every_delimiter_and_line_break() {
        let mut out = Vec::new();
        encode_bounded(b"a|b^c~d\\e&f\rg", &Delimiters::default(), 100, &mut out);
        assert_eq!(out, b"a\\F\\b\\S\\c\\R\\d\\E\\e\\T\\f\\X0D\\g");
        assert_eq!(dec(&out), b"a|b^c~d\\e&f\rg");
    }

    #[test]
    fn encode_budget_never_splits_a_sequence_or_character() {
        let mut out = Vec::new();
        let written = encode_bounded("ab|é".as_bytes(), &Delimiters::default(), 6, &mut out);
        assert_eq!((written, out.as_slice()), (3, &b"ab\\F\\"[..]));
    }
}
