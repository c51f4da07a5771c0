//! Field-level difference between two versions of a message, for the
//! record an edited resubmission keeps: one line per changed field
//! (`PID-5: "DOE^JOHN" -> "DOE^JANE"`), per added or removed segment
//! (`+ OBX[3]`, `- NTE[1]`). Segments are paired by type and occurrence;
//! fields are numbered as HL7 numbers them (MSH-1 is the field separator).
//! The lines hold field values: they are stored with the message, never
//! logged.

use std::collections::HashMap;

/// Lines one diff holds at most (the rest is counted in a last line).
pub const DIFF_LINES_MAX: usize = 500;
/// Bytes of one value shown at most.
const VALUE_BYTES_MAX: usize = 200;

/// The changes from `old` to `new`, one line each; empty if none.
pub fn field_diff(old: &[u8], new: &[u8]) -> Vec<String> {
    let (a, b) = (segments(old), segments(new));
    // Linear in the segments: an edited message may hold tens of thousands.
    fn index<'a>(s: &[Seg<'a>]) -> HashMap<(&'a [u8], usize), usize> {
        s.iter()
            .enumerate()
            .map(|(n, (id, occ, _))| ((*id, *occ), n))
            .collect()
    }
    let (in_a, in_b) = (index(&a), index(&b));
    let mut lines = Vec::new();
    for (id, occurrence, seg) in &a {
        match in_b.get(&(*id, *occurrence)) {
            None => lines.push(format!("- {}[{occurrence}]", show_id(id))),
            Some(&n) => fields_changed(id, *occurrence, seg, b[n].2, &mut lines),
        }
        if lines.len() > DIFF_LINES_MAX {
            break;
        }
    }
    for (id, occurrence, _) in &b {
        if lines.len() > DIFF_LINES_MAX {
            break;
        }
        if !in_a.contains_key(&(*id, *occurrence)) {
            lines.push(format!("+ {}[{occurrence}]", show_id(id)));
        }
    }
    if lines.len() > DIFF_LINES_MAX {
        lines.truncate(DIFF_LINES_MAX);
        lines.push(format!(
            "... more changes (the first {DIFF_LINES_MAX} are shown)"
        ));
    }
    lines
}

/// A segment: its id, its occurrence among segments of that id (from 1),
/// its bytes.
type Seg<'a> = (&'a [u8], usize, &'a [u8]);

fn segments(msg: &[u8]) -> Vec<Seg<'_>> {
    let mut seen: HashMap<&[u8], usize> = HashMap::new();
    let mut out = Vec::new();
    for seg in msg.split(|&b| b == b'\r' || b == b'\n') {
        if seg.len() < 3 {
            continue;
        }
        let id = &seg[..3];
        let occurrence = seen.entry(id).or_insert(0);
        *occurrence += 1;
        out.push((id, *occurrence, seg));
    }
    out
}

fn fields_changed(id: &[u8], occurrence: usize, a: &[u8], b: &[u8], lines: &mut Vec<String>) {
    let (fa, fb) = (fields(a), fields(b));
    let name = if occurrence == 1 {
        show_id(id)
    } else {
        format!("{}[{occurrence}]", show_id(id))
    };
    for n in 1..fa.len().max(fb.len()) {
        let (x, y) = (
            fa.get(n).copied().unwrap_or_default(),
            fb.get(n).copied().unwrap_or_default(),
        );
        if lines.len() > DIFF_LINES_MAX {
            return;
        }
        if x != y {
            lines.push(format!("{name}-{n}: {} -> {}", show(x), show(y)));
        }
    }
}

/// Fields by HL7 number (index 0 is the segment id). In MSH the
/// separator itself is field 1, so the split shifts by one there.
fn fields(seg: &[u8]) -> Vec<&[u8]> {
    let Some(&sep) = seg.get(3) else {
        return vec![seg];
    };
    let parts: Vec<&[u8]> = seg[4..].split(|&b| b == sep).collect();
    let mut out = vec![&seg[..3]];
    if seg.starts_with(b"MSH") {
        out.push(&seg[3..4]);
    }
    out.extend(parts);
    out
}

fn show_id(id: &[u8]) -> String {
    String::from_utf8_lossy(id).into_owned()
}

fn show(v: &[u8]) -> String {
    let cut = &v[..v.len().min(VALUE_BYTES_MAX)];
    let more = if v.len() > cut.len() { "..." } else { "" };
    format!("{:?}{more}", String::from_utf8_lossy(cut))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &[u8] = b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20260101||ORU^R01|C1|P|2.5\rPID|1||12345||DOE^JOHN\rOBX|1|NM|GLU||5.1\rOBX|2|NM|K||4.0\r";

    #[test]
    fn changed_fields_are_named_as_hl7_numbers_them() {
        let new = b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20260101||ORU^R01|C1|P|2.5\rPID|1||12345||DOE^JANE\rOBX|1|NM|GLU||5.1\rOBX|2|NM|K||4.2\r";
        assert_eq!(
            field_diff(OLD, new),
            vec![
                "PID-5: \"DOE^JOHN\" -> \"DOE^JANE\"".to_string(),
                "OBX[2]-5: \"4.0\" -> \"4.2\"".to_string(),
            ]
        );
    }

    #[test]
    fn msh_fields_count_the_separator_as_field_1() {
        let new = b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20260101||ORU^R01|C2|P|2.5\rPID|1||12345||DOE^JOHN\rOBX|1|NM|GLU||5.1\rOBX|2|NM|K||4.0\r";
        assert_eq!(
            field_diff(OLD, new),
            vec!["MSH-10: \"C1\" -> \"C2\"".to_string()]
        );
    }

    #[test]
    fn added_and_removed_segments_are_listed() {
        let new = b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20260101||ORU^R01|C1|P|2.5\rPID|1||12345||DOE^JOHN\rOBX|1|NM|GLU||5.1\rNTE|1||checked\r";
        assert_eq!(
            field_diff(OLD, new),
            vec!["- OBX[2]".to_string(), "+ NTE[1]".to_string()]
        );
        assert!(field_diff(OLD, OLD).is_empty());
    }
}
