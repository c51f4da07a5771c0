//! ACKs and NAKs built for every corpus message are read by real third-party
//! HL7 libraries: python-hl7 (PyPI `hl7`) and hl7apy. python-hl7 also reads
//! each inbound message itself, so the expected ACK fields (swapped parties,
//! MSA-2, processing id, version, AA vs CA, the ERR layout of the version)
//! come from an independent parser and the spec's rules, not from the code
//! under test. A second test has hl7apy validate, at STRICT level, every ACK
//! shape Orderly builds for each version from 2.1 to 2.8.

#[path = "support/peers.rs"]
mod peers;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use orderly::hl7::ack::{self, AckPolicy, Hl7Timestamp, Outcome};
use orderly::hl7::{parse_header, split_batch, validate, ValidationLevel};

/// Checks run by python for each case; prints `checked <n> hl7apy <m>` last.
const CHECK_SCRIPT: &str = r#"
import sys, re, hl7
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

def minor(version):
    # HL7 v2 minor version; messages without a readable one are answered as 2.5.
    m = re.match(r'^\s*2\.(\d+)', version)
    return int(m.group(1)) if m else 5

def expected_code(inbound_msh15, success):
    # Table 0155 values asking for an accept ACK get enhanced codes; the
    # broker's default `auto` mode answers empty and NE in original mode.
    enhanced = inbound_msh15.strip().upper() in ('AL', 'ER', 'SU')
    return ('C' if enhanced else 'A') + ('A' if success else 'E')

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
            expected = expected_code(f(imsh, 15), True)
            assert code == expected, f'MSA-1 {code} != {expected}'
        else:
            # Every corpus reject is an error in content or format: AE (CE).
            raw_in = load(f'{d}/{idx}.in')
            msh15 = ''
            if raw_in.startswith('MSH') and len(raw_in) > 8:
                fields = raw_in.split('\r')[0].split(raw_in[3])
                msh15 = fields[14] if len(fields) > 14 else ''
            assert code in ('AE', 'CE'), 'NAK code ' + code
            if not msh15.strip():
                assert code == 'AE', 'original mode NAK ' + code
            err = ack.segment('ERR')
            v = minor(f(msh, 12).split(comp)[0])
            if v >= 5:
                parts = f(err, 3).split(comp)
                assert parts[0] in TABLE_0357 and parts[2] == 'HL70357', 'ERR-3 ' + f(err, 3)
                assert f(err, 4) == 'E' and f(err, 8), 'ERR-4 severity and ERR-8 text'
            elif v >= 2:
                sub = f(msh, 2)[3] if len(f(msh, 2)) > 3 else '&'
                code_part = (f(err, 1).split(comp) + ['', '', '', ''])[3].split(sub)
                assert code_part[0] in TABLE_0357 and code_part[-1] == 'HL70357', 'ERR-1 ' + f(err, 1)
            else:
                assert f(err, 1) in TABLE_0357, 'v2.1 ERR-1 ' + f(err, 1)
            assert bool(f(msa, 3)) == (v < 7), 'MSA-3 text exists before 2.7 only'
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
            let (mode, kind) = ack::decide(AckPolicy::Auto, Some(&header), Outcome::Stored)
                .expect("auto always answers");
            ack::build_ack(
                Some(&header),
                mode,
                kind,
                None,
                id.as_bytes(),
                now,
                &mut out,
            );
            ("accept", out)
        }
        Err(err) => {
            let header = parse_header(message).ok();
            let (mode, kind) = ack::decide(AckPolicy::Auto, header.as_ref(), err.outcome())
                .expect("auto always answers");
            ack::build_ack(
                header.as_ref(),
                mode,
                kind,
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

/// Validates each ACK with hl7apy at STRICT level against its own version's
/// ACK structure, and checks MSA-1 against the code the case expects.
/// Before 2.5 hl7apy cannot infer the structure from MSH-9, so the script
/// builds an `ACK` message and attaches the parsed segments to it.
const STRICT_SCRIPT: &str = r#"
import sys
from hl7apy.core import Message
from hl7apy.parser import parse_segments
from hl7apy.consts import VALIDATION_LEVEL
d = sys.argv[1]
failures, checked = [], 0
for line in open(d + '/cases.tsv'):
    idx, version, expected, label = line.rstrip('\n').split('\t')
    text = open(f'{d}/{idx}.ack', 'rb').read().decode('latin-1')
    try:
        msh = text.split('\r')[0]
        sep = msh[3]
        enc = msh.split(sep)[1]
        chars = {'FIELD': sep, 'COMPONENT': enc[0], 'REPETITION': enc[1],
                 'ESCAPE': enc[2], 'SUBCOMPONENT': enc[3], 'GROUP': '\r', 'SEGMENT': '\r'}
        if len(enc) > 4:
            chars['TRUNCATION'] = enc[4]
        m = Message('ACK', version=version, validation_level=VALIDATION_LEVEL.STRICT)
        for seg in parse_segments(text, version=version, encoding_chars=chars,
                                  validation_level=VALIDATION_LEVEL.STRICT):
            setattr(m, seg.name.lower(), seg)
        m.validate()
        code = m.msa.msa_1.to_er7()
        assert code == expected, f'MSA-1 {code} != {expected}'
        checked += 1
    except Exception as e:
        failures.append(f'{label} v{version}: {type(e).__name__}: {e}\n    {text!r}')
for fail in failures:
    print('FAIL', fail)
print('checked', checked)
sys.exit(1 if failures else 0)
"#;

/// Runs `script` over files in a fresh directory; returns stdout.
fn run_python(script: &str, dir: &Path) -> String {
    let mut child = Command::new("python3")
        .args(["-", &dir.to_string_lossy()])
        .env("PYTHONPATH", peers::python_hl7_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(script.as_bytes())
        .expect("send script");
    let output = child.wait_with_output().expect("python3 finishes");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "hl7apy rejected ACKs:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn every_ack_shape_for_versions_2_1_to_2_8_passes_hl7apy_strict_validation() {
    use orderly::hl7::ack::{AckError, ErrorCode, ErrorLocation, Severity};
    // hl7apy ships these versions (not 2.7.1); together they cover every
    // ERR/MSA/MSH-9 layout change from 2.1 to 2.8.
    const VERSIONS: &[&str] = &[
        "2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8", "2.8.1", "2.8.2",
    ];
    let missing_id = AckError {
        code: ErrorCode::RequiredFieldMissing,
        severity: Severity::Error,
        text: "MSH-10 message control id is empty",
        location: Some(ErrorLocation {
            segment: *b"MSH",
            sequence: 1,
            field: Some(10),
        }),
    };
    let unsupported = AckError {
        code: ErrorCode::UnsupportedVersionId,
        severity: Severity::Error,
        text: "MSH-12 version not accepted by this listener",
        location: Some(ErrorLocation {
            segment: *b"MSH",
            sequence: 1,
            field: Some(12),
        }),
    };
    let disk_full = AckError {
        code: ErrorCode::ApplicationInternalError,
        severity: Severity::Error,
        text: "message NOT stored: broker storage is full; resend later",
        location: None,
    };
    // (MSH-15, outcome, error, expected MSA-1): table 0008 codes for each
    // outcome, original mode for empty MSH-15 and enhanced for AL.
    let shapes: &[(&str, Outcome, Option<&AckError<'_>>, &str)] = &[
        ("", Outcome::Stored, None, "AA"),
        ("", Outcome::ContentError, Some(&missing_id), "AE"),
        ("", Outcome::Unsupported, Some(&unsupported), "AR"),
        ("", Outcome::NotStored, Some(&disk_full), "AR"),
        ("AL", Outcome::Stored, None, "CA"),
        ("AL", Outcome::ContentError, Some(&missing_id), "CE"),
        ("AL", Outcome::Unsupported, Some(&unsupported), "CR"),
        ("AL", Outcome::NotStored, Some(&disk_full), "CE"),
    ];
    let dir = tempfile::tempdir().expect("temp dir");
    let mut index = std::fs::File::create(dir.path().join("cases.tsv")).expect("cases.tsv");
    let mut n = 0;
    for version in VERSIONS {
        // The truncation character exists from 2.7 on; a 150-character
        // MSH-10 (HL7 2.7 allows 199) must come back whole in MSA-2.
        let msh2 = if version >= &"2.7" { "^~\\&#" } else { "^~\\&" };
        let control_id = "C".repeat(150);
        for (shape, &(msh15, outcome, error, expected)) in shapes.iter().enumerate() {
            let inbound = format!(
                "MSH|{msh2}|LAB|HOSP|EHR|HOSP|20261127081500||ORU^R01|{control_id}|P|{version}|||{msh15}\rPID|1\r"
            );
            let header = parse_header(inbound.as_bytes()).expect("inbound header parses");
            let (mode, kind) =
                ack::decide(AckPolicy::Auto, Some(&header), outcome).expect("auto answers");
            let mut out = Vec::new();
            ack::build_ack(
                Some(&header),
                mode,
                kind,
                error,
                b"ACK-1",
                Hl7Timestamp::from_unix_seconds(1_700_000_000),
                &mut out,
            );
            let text = String::from_utf8(out).expect("ASCII ACK");
            assert!(
                text.contains(&format!("\rMSA|{expected}|{control_id}")),
                "MSA-2 echoes MSH-10 whole: {text:?}"
            );
            std::fs::write(dir.path().join(format!("{n}.ack")), &text).expect("write ack");
            writeln!(index, "{n}\t{version}\t{expected}\tshape {shape}").expect("write case");
            n += 1;
        }
    }
    drop(index);
    let stdout = run_python(STRICT_SCRIPT, dir.path());
    assert!(stdout.contains(&format!("checked {n}")), "{stdout}");
}

const BATCH_SCRIPT: &str = r#"
import sys
from hl7apy.core import Message
from hl7apy.parser import parse_segment, parse_segments
from hl7apy.consts import VALIDATION_LEVEL
d = sys.argv[1]
failures, checked = [], 0
for line in open(d + '/cases.tsv'):
    idx, version, expected = line.rstrip('\n').split('\t')
    text = open(f'{d}/{idx}.ack', 'rb').read().decode('latin-1')
    lines = [l for l in text.split('\r') if l]
    try:
        first = lines[0]
        sep, enc = first[3], first.split(first[3])[1]
        chars = {'FIELD': sep, 'COMPONENT': enc[0], 'REPETITION': enc[1],
                 'ESCAPE': enc[2], 'SUBCOMPONENT': enc[3], 'GROUP': '\r', 'SEGMENT': '\r'}
        envelope = [l for l in lines if l[:3] in ('FHS', 'BHS', 'BTS', 'FTS')]
        for seg in envelope:
            parts = seg.split(sep)
            if seg[:3] in ('FHS', 'BHS'):
                # FHS/BHS-1 and -2 are the separators, like MSH's, but
                # hl7apy special-cases only MSH: check them here and give
                # it placeholders, so -3 onwards keep their positions.
                assert parts[1] == enc, f'{seg[:3]}-2 {parts[1]} != {enc}'
                seg = sep.join([parts[0], 'X', 'Y'] + parts[2:])
            parse_segment(seg, version=version, encoding_chars=chars,
                          validation_level=VALIDATION_LEVEL.STRICT).validate()
        # Each ACK message inside: MSH up to the next MSH or envelope line.
        acks, current = [], None
        for l in lines:
            if l.startswith('MSH'):
                current = [l]
                acks.append(current)
            elif l[:3] in ('BTS', 'FTS', 'BHS', 'FHS'):
                current = None
            elif current is not None:
                current.append(l)
        codes = []
        for a in acks:
            m = Message('ACK', version=version, validation_level=VALIDATION_LEVEL.STRICT)
            for seg in parse_segments('\r'.join(a), version=version, encoding_chars=chars,
                                      validation_level=VALIDATION_LEVEL.STRICT):
                setattr(m, seg.name.lower(), seg)
            m.validate()
            codes.append(m.msa.msa_1.to_er7())
        assert ','.join(codes) == expected, f'MSA-1s {codes} != {expected}'
        bts = [l for l in lines if l.startswith('BTS')][0].split(sep)
        assert bts[1] == str(len(acks)), f'BTS-1 {bts[1]} != {len(acks)}'
        checked += 1
    except Exception as e:
        failures.append(f'v{version}: {type(e).__name__}: {e}\n    {text!r}')
for fail in failures:
    print('FAIL', fail)
print('checked', checked)
sys.exit(1 if failures else 0)
"#;

/// The batch acknowledgment the ingest session writes for a batch with an
/// invalid second message, through the real session (appends completing
/// Ok), for several versions: every envelope segment and every ACK inside
/// parses with hl7apy at STRICT validation, the MSA-1 codes are the table
/// 0008 ones, and BTS-1 counts the ACK messages.
#[test]
fn batch_acks_pass_hl7apy_strict_validation() {
    use orderly::config::Config;
    use orderly::metrics::Metrics;
    use orderly::server::ingest::AckIds;
    use orderly::server::session::{Ingest, Session, Step};
    let config = Config::parse(
        "[[listener]]\nname='l'\nlisten='127.0.0.1:1'\nqueue='q'\naccept_processing_ids = ['P']\n",
        "t",
    )
    .unwrap();
    let listener = &config.listeners[0];
    let dir = tempfile::tempdir().expect("temp dir");
    let mut index = std::fs::File::create(dir.path().join("cases.tsv")).expect("cases.tsv");
    let versions = ["2.3", "2.4", "2.5", "2.5.1", "2.6", "2.8"];
    for (n, version) in versions.iter().enumerate() {
        let msg = |processing: &str, id: &str| {
            format!("MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261127||ORU^R01|{id}|{processing}|{version}\rPID|1\r")
        };
        // The second is refused: its MSH-11 is not one the listener takes
        // (AR with ERR 202). Messages without MSH-9 or MSH-10 are kept out
        // on purpose: their NAK echoes the missing field as empty (plain
        // `ACK` in MSH-9, an empty MSA-2), which STRICT rejects from 2.6
        // (MSH-9.2) and in every version (MSA-2).
        let batch = format!(
            "FHS|^~\\&|LAB|HOSP|EHR|HOSP|20261127||||F1\rBHS|^~\\&|LAB|HOSP|EHR|HOSP|20261127||||B1\r{}{}{}BTS|3\rFTS|1\r",
            msg("P", "M1"),
            msg("T", "M2"),
            msg("P", "M3")
        );
        let mut session = Session::new(1 << 20);
        let (metrics, mut ids) = (Metrics::default(), AckIds::new());
        orderly::mllp::encode_frame(batch.as_bytes(), &mut session.rbuf);
        let mut appended: Vec<Vec<u8>> = Vec::new();
        {
            let mut ing = Ingest {
                listener,
                peer: "test",
                ids: &mut ids,
                metrics: &metrics,
                now_ms: 1_700_000_000_000,
                refused: None,
                dedupe: None,
            };
            let mut append = |p: &[u8], _m: Vec<u8>| appended.push(p.to_vec());
            assert_eq!(session.step(&mut ing, &mut append), Step::Frame);
        }
        assert_eq!(appended.len(), 2, "the two valid messages are appended");
        for payload in &appended {
            let mut ing = Ingest {
                listener,
                peer: "test",
                ids: &mut ids,
                metrics: &metrics,
                now_ms: 1_700_000_000_000,
                refused: None,
                dedupe: None,
            };
            session.complete(Ok(orderly::wal::Offset(0)), payload, &mut ing);
        }
        let out = &session.out[session.written..];
        assert!(out.starts_with(b"\x0b") && out.ends_with(b"\x1c\r"));
        std::fs::write(dir.path().join(format!("{n}.ack")), &out[1..out.len() - 2]).expect("write");
        writeln!(index, "{n}\t{version}\tAA,AR,AA").expect("write case");
    }
    drop(index);
    let stdout = run_python(BATCH_SCRIPT, dir.path());
    assert!(
        stdout.contains(&format!("checked {}", versions.len())),
        "{stdout}"
    );
}
