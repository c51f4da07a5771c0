//! ACKs and NAKs built for every corpus message are read by real third-party
//! HL7 libraries: python-hl7 (PyPI `hl7`) and hl7apy. python-hl7 also reads
//! each inbound message itself, so the expected ACK fields (swapped parties,
//! MSA-2, processing id, version, AA vs CA) come from an independent parser,
//! not from the code under test.

#[path = "support/peers.rs"]
mod peers;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use orderly::hl7::ack::{self, AckKind, Hl7Timestamp};
use orderly::hl7::{parse_header, split_batch, validate, ValidationLevel};

/// Checks run by python for each case; prints `checked <n> hl7apy <m>` last.
const CHECK_SCRIPT: &str = r#"
import sys, hl7
from hl7apy.parser import parse_message
from hl7apy.consts import VALIDATION_LEVEL
d = sys.argv[1]
TABLE_0357 = {'0','100','101','102','103','200','201','202','203','204','205','206','207'}
HL7APY_VERSIONS = {'2.2','2.3','2.3.1','2.4','2.5','2.5.1','2.6','2.7','2.8','2.8.1','2.8.2'}

def load(path):
    t = open(path, 'rb').read().decode('latin-1')
    if t.startswith('\xef\xbb\xbf'):
        t = t[3:]
    lines = t.replace('\r\n', '\r').replace('\n', '\r').split('\r')
    return '\r'.join(l for l in lines if l.strip())  # python-hl7 cannot index empty segments

def f(seg, n):
    return str(seg[n]) if len(seg) > n else ''

failures, checked, apy = [], 0, 0
for line in open(d + '/cases.tsv'):
    idx, kind, name = line.rstrip('\n').split('\t')
    raw_ack = open(f'{d}/{idx}.ack', 'rb').read().decode('latin-1')
    try:
        assert len(raw_ack.encode('latin-1')) < 4096, 'ACK must fit one 4 KB recv'
        assert '\n' not in raw_ack and raw_ack.endswith('\r'), 'CR segment ends only'
        ack = hl7.parse(raw_ack)
        msh, msa = ack.segment('MSH'), ack.segment('MSA')
        comp = f(msh, 2)[0]
        assert f(msh, 9).split(comp)[0] == 'ACK', 'MSH-9 ' + f(msh, 9)
        assert f(msh, 10) == 'ACK-' + idx, 'ACK MSH-10 is its own id'
        code = f(msa, 1)
        if kind == 'accept':
            inbound = hl7.parse(load(f'{d}/{idx}.in'))
            imsh = inbound.segment('MSH')
            for ours, theirs in ((3, 5), (4, 6), (5, 3), (6, 4)):
                assert f(msh, ours) == f(imsh, theirs), f'ACK MSH-{ours} {f(msh, ours)!r} != inbound MSH-{theirs} {f(imsh, theirs)!r}'
            assert f(msa, 2) == f(imsh, 10), f'MSA-2 {f(msa, 2)!r} != MSH-10 {f(imsh, 10)!r}'
            assert f(msh, 11) == (f(imsh, 11) or 'P'), 'processing id'
            assert f(msh, 12) == (f(imsh, 12) or '2.5'), 'version'
            icomp = f(imsh, 2)[0]
            trigger = (f(imsh, 9).split(icomp) + [''])[1]
            if trigger:
                assert f(msh, 9).split(comp)[1] == trigger, 'MSH-9.2 trigger'
            expected = 'CA' if f(imsh, 15).strip() else 'AA'
            assert code == expected, f'MSA-1 {code} != {expected}'
        else:
            assert code in ('AR', 'AE', 'CR', 'CE'), 'NAK code ' + code
            err = ack.segment('ERR')
            parts = f(err, 3).split(comp)
            assert parts[0] in TABLE_0357 and parts[2] == 'HL70357', 'ERR-3 ' + f(err, 3)
            assert f(err, 4) == 'E' and f(err, 8), 'ERR-4 severity and ERR-8 text'
        version = f(msh, 12)
        if version in HL7APY_VERSIONS and f(msh, 1) == '|' and f(msh, 2) == '^~\\&':
            m = parse_message(raw_ack, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
            assert m.msh.msh_9.to_er7().startswith('ACK'), 'hl7apy MSH-9'
            assert m.msa.msa_1.to_er7() == code, 'hl7apy MSA-1'
            apy += 1
        checked += 1
    except Exception as e:
        failures.append(f'{name} ({kind}): {type(e).__name__}: {e}')
for fail in failures:
    print('FAIL', fail)
print('checked', checked, 'hl7apy', apy)
sys.exit(1 if failures else 0)
"#;

struct Case {
    kind: &'static str,
    name: String,
    inbound: Vec<u8>,
    ack: Vec<u8>,
}

fn corpus() -> Vec<(String, String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    let manifest = std::fs::read_to_string(dir.join("MANIFEST.tsv")).expect("manifest readable");
    manifest
        .lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            let bytes = std::fs::read(dir.join(cols[0])).expect("corpus file readable");
            (cols[0].to_owned(), cols[3].to_owned(), bytes)
        })
        .collect()
}

fn build(index: usize, message: &[u8]) -> (&'static str, Vec<u8>) {
    let id = format!("ACK-{index}");
    let now = Hl7Timestamp::from_unix_seconds(1_700_000_000);
    let mut out = Vec::new();
    match validate(message, ValidationLevel::Minimal) {
        Ok(header) => {
            ack::build_ack(
                Some(&header),
                AckKind::Accept,
                None,
                id.as_bytes(),
                now,
                &mut out,
            );
            ("accept", out)
        }
        Err(err) => {
            let header = parse_header(message).ok();
            ack::build_ack(
                header.as_ref(),
                err.ack_kind(),
                Some(&err.ack_error()),
                id.as_bytes(),
                now,
                &mut out,
            );
            ("nak", out)
        }
    }
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (name, expect, bytes) in corpus() {
        let messages: Vec<Vec<u8>> = match expect.as_str() {
            "batch" => split_batch(&bytes)
                .expect("batch splits")
                .messages
                .iter()
                .map(|m| m.to_vec())
                .collect(),
            _ => vec![bytes],
        };
        for message in messages {
            let (kind, ack) = build(cases.len(), &message);
            if expect == "accept" || expect == "batch" {
                assert_eq!(kind, "accept", "{name} must validate");
            }
            if expect == "reject" {
                assert_eq!(kind, "nak", "{name} must be rejected");
            }
            cases.push(Case {
                kind,
                name: name.clone(),
                inbound: message,
                ack,
            });
        }
    }
    cases
}

fn write_cases(dir: &Path, cases: &[Case]) {
    let mut index = std::fs::File::create(dir.join("cases.tsv")).expect("create cases.tsv");
    for (i, case) in cases.iter().enumerate() {
        std::fs::write(dir.join(format!("{i}.in")), &case.inbound).expect("write inbound");
        std::fs::write(dir.join(format!("{i}.ack")), &case.ack).expect("write ack");
        writeln!(index, "{i}\t{}\t{}", case.kind, case.name).expect("write case line");
    }
}

#[test]
fn acks_for_every_corpus_message_are_accepted_by_python_hl7_and_hl7apy() {
    let pythonpath = peers::python_hl7_path();
    let cases = cases();
    let naks = cases.iter().filter(|c| c.kind == "nak").count();
    assert!(
        cases.len() >= 80 && naks >= 10,
        "{} cases, {naks} NAKs",
        cases.len()
    );
    let dir = tempfile::tempdir().expect("temp dir");
    write_cases(dir.path(), &cases);
    let mut child = Command::new("python3")
        .args(["-", &dir.path().to_string_lossy()])
        .env("PYTHONPATH", &pythonpath)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(CHECK_SCRIPT.as_bytes())
        .expect("send script");
    let output = child.wait_with_output().expect("python3 finishes");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python peers rejected ACKs:\n{stdout}\n{stderr}"
    );
    let expected = format!("checked {} ", cases.len());
    assert!(stdout.contains(&expected), "every case checked: {stdout}");
    let apy: usize = stdout
        .rsplit(' ')
        .next()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        apy * 2 >= cases.len(),
        "hl7apy read at least half of the ACKs: {stdout}"
    );
}
