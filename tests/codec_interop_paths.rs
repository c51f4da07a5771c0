//! Field-path access cross-checked against python-hl7: for every accepted
//! corpus message, every field, repetition, component and subcomponent that
//! this parser and python-hl7's `extract_field` can both address must hold
//! the same decoded value. python-hl7 is the oracle; nothing expected here is
//! produced by the code under test.

#[path = "support/peers.rs"]
mod peers;

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use orderly::hl7::{FieldPath, Message};

/// Segments, fields and depth probed per message (keeps the run short).
const SEGMENTS_PER_MESSAGE_MAX: usize = 40;
const FIELDS_MAX: u16 = 25;

const CHECK_SCRIPT: &str = r#"
import sys, hl7
cases = sys.stdin.read().split('\n')
msgs, bad, checked, trimmed = {}, [], 0, 0
for line in cases:
    if not line:
        continue
    path, seg, occ, f, r, c, s, ours = line.split('\t')
    if path not in msgs:
        t = open(path, 'rb').read().decode('latin-1')
        if t.startswith('\xef\xbb\xbf'):
            t = t[3:]
        t = '\r'.join(l for l in t.replace('\r\n', '\r').replace('\n', '\r').split('\r') if l.strip())
        msgs[path] = hl7.parse(t)
    try:
        theirs = msgs[path].extract_field(seg, int(occ), int(f), int(r), int(c), int(s))
    except (IndexError, KeyError):
        theirs = ''
    theirs = str(theirs).encode('latin-1', 'replace').hex()
    checked += 1
    # python-hl7 strips whitespace at segment ends; this parser keeps bytes as sent.
    if theirs != ours and bytes.fromhex(ours).rstrip(b' ') == bytes.fromhex(theirs):
        trimmed += 1
        continue
    if theirs != ours:
        bad.append(f'{path.rsplit("/", 1)[-1]} {seg}[{occ}]-{f}[{r}].{c}.{s}: ours {bytes.fromhex(ours)!r} python-hl7 {bytes.fromhex(theirs)!r}')
for b in bad[:40]:
    print('MISMATCH', b)
print('checked', checked, 'mismatches', len(bad), 'segment-end spaces', trimmed)
sys.exit(1 if bad else 0)
"#;

fn accepted_files() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    let manifest = std::fs::read_to_string(dir.join("MANIFEST.tsv")).expect("manifest readable");
    manifest
        .lines()
        .skip(1)
        .filter_map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            (cols.get(3) == Some(&"accept")).then(|| dir.join(cols[0]))
        })
        .collect()
}

/// Whether python-hl7 can be an oracle for this value: its unescape knows
/// only the delimiter escapes, so values with other sequences are left out.
fn comparable(raw: &[u8], escape: u8) -> bool {
    let mut parts = raw.split(|&b| b == escape);
    parts.next();
    parts
        .step_by(2)
        .all(|seq| matches!(seq, b"F" | b"S" | b"T" | b"R" | b"E"))
}

fn probes(path: &std::path::Path, bytes: &[u8], out: &mut String) -> usize {
    let message = Message::parse(bytes).expect("accepted message parses");
    let escape = message.delimiters().escape;
    let mut count = 0;
    let mut seen = std::collections::HashMap::<Vec<u8>, u16>::new();
    for segment in message.segments().take(SEGMENTS_PER_MESSAGE_MAX) {
        let name = segment.name();
        if name.len() != 3
            || !name
                .iter()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            continue;
        }
        let occurrence = seen
            .entry(name.to_vec())
            .and_modify(|n| *n += 1)
            .or_insert(1);
        let id = std::str::from_utf8(name).expect("ASCII id");
        for (f, r, c, s) in (1..=FIELDS_MAX).flat_map(|f| {
            (1..=2).flat_map(move |r| (1..=3).flat_map(move |c| (1..=2).map(move |s| (f, r, c, s))))
        }) {
            if id == "MSH" && f <= 2 {
                continue; // MSH-1/MSH-2 are not split; python-hl7 treats them specially too.
            }
            let text = format!("{id}[{occurrence}]-{f}[{r}].{c}.{s}");
            let field_path = FieldPath::parse(&text).expect("generated path parses");
            let value = message.get(&field_path);
            if value.is_some_and(|v| !comparable(v.raw(), escape)) {
                continue;
            }
            let ours: Vec<u8> = value.map(|v| v.decoded().into_owned()).unwrap_or_default();
            let hex: String = ours.iter().fold(String::new(), |mut h, b| {
                let _ = write!(h, "{b:02x}");
                h
            });
            let _ = writeln!(
                out,
                "{}\t{id}\t{occurrence}\t{f}\t{r}\t{c}\t{s}\t{hex}",
                path.display()
            );
            count += 1;
        }
    }
    count
}

#[test]
fn field_paths_agree_with_python_hl7_on_every_accepted_message() {
    let pythonpath = peers::python_hl7_path();
    let mut input = String::new();
    let mut count = 0;
    for path in accepted_files() {
        let bytes = std::fs::read(&path).expect("corpus file readable");
        count += probes(&path, &bytes, &mut input);
    }
    assert!(count > 10_000, "enough values probed: {count}");
    let script_path = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(script_path.path(), CHECK_SCRIPT).expect("write script");
    let mut child = Command::new("python3")
        .arg(script_path.path())
        .env("PYTHONPATH", &pythonpath)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut stdin = child.stdin.take().expect("stdin");
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let output = child.wait_with_output().expect("python3 finishes");
    writer.join().expect("writer thread").expect("send probes");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "python-hl7 disagrees:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!("checked {count} mismatches 0")),
        "{stdout}"
    );
}
