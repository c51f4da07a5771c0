//! Real third-party MLLP clients against the real `orderly serve` binary on
//! an ephemeral loopback port: python-hl7's `mllp_send`, hl7apy, npm
//! `node-hl7-client` (pipelined) and npm `simple-hl7`. Each test proves that
//! every message gets a positive ACK whose MSA-2 is the message's control id,
//! read by the peer itself, and that `orderly inspect` then lists exactly those
//! messages in send order: an ACK means the message is stored.
//!
//! Expected control ids come from a small MSH splitter in this file, and ACKs
//! are read by the peers or by a splitter here, never by orderly's own parser.
//! A missing peer fails the test (see `support/peers.rs`,
//! `support/node_peers.rs`); every peer process runs under a deadline and is
//! killed by its pid if it overruns.

#[path = "support/node_peers.rs"]
mod node_peers;
#[path = "support/peers.rs"]
mod peers;
mod server_common;

use server_common::{accept_code_for, inspect, oru, write_config, Broker};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Longest a peer process may run; the drivers give up after 30 s themselves.
const PEER_DEADLINE: Duration = Duration::from_secs(60);
/// Messages the pipelining node-hl7-client test sends on one connection.
const PIPELINED_MESSAGES: usize = 40;
/// Queue (and listener) every test writes to.
const QUEUE: &str = "lab";

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("shared")
        .join("corpus")
}

/// Fields of the first segment of `msg` (after a BOM or leading whitespace),
/// split on the field separator MSH declares: `fields[n - 1]` is MSH-n for n >= 2.
fn msh_fields(msg: &[u8]) -> Option<Vec<String>> {
    let msg = msg.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(msg);
    let start = msg.iter().position(|b| !b.is_ascii_whitespace())?;
    let msg = &msg[start..];
    if !msg.starts_with(b"MSH") || msg.len() < 4 {
        return None;
    }
    let end = msg
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(msg.len());
    Some(
        msg[..end]
            .split(|&b| b == msg[3])
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect(),
    )
}

fn control_id(msg: &[u8]) -> String {
    msh_fields(msg)
        .and_then(|f| f.get(9).cloned())
        .expect("message has MSH-10")
}

/// MSA-1 and MSA-2 of an ACK, split on the separator its MSH declares.
fn msa_of(ack: &[u8]) -> (String, String) {
    let text = String::from_utf8_lossy(ack);
    let sep = text
        .chars()
        .nth(3)
        .expect("ACK starts with MSH and a separator");
    let msa = text
        .split(['\r', '\n'])
        .find(|s| s.starts_with("MSA"))
        .unwrap_or_else(|| panic!("ACK has no MSA segment: {text:?}"));
    let fields: Vec<&str> = msa.split(sep).collect();
    (
        fields.get(1).unwrap_or(&"").to_string(),
        fields.get(2).unwrap_or(&"").to_string(),
    )
}

/// Corpus files marked `accept` that `mllp_send` can carry unchanged: one
/// message each (no second MSH), no MLLP control bytes inside (it splits its
/// input on 0x1C, or on 0x0C when present), and a control id `inspect` prints
/// verbatim (no whitespace, not empty).
fn accepted_corpus_messages() -> Vec<(String, Vec<u8>)> {
    let manifest = std::fs::read_to_string(corpus_dir().join("MANIFEST.tsv"))
        .expect("read corpus MANIFEST.tsv");
    let mut out = Vec::new();
    for line in manifest.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.get(3) != Some(&"accept") {
            continue;
        }
        let bytes = std::fs::read(corpus_dir().join(cols[0])).expect("read corpus file");
        let one_message = bytes
            .windows(4)
            .filter(|w| (w[0] == b'\r' || w[0] == b'\n') && &w[1..] == b"MSH")
            .count()
            == 0;
        let no_mllp_bytes = !bytes.iter().any(|b| matches!(b, 0x0B | 0x0C | 0x1C));
        let id = msh_fields(&bytes)
            .and_then(|f| f.get(9).cloned())
            .unwrap_or_default();
        let printable_id = !id.is_empty() && id.bytes().all(|b| b.is_ascii_graphic());
        if one_message && no_mllp_bytes && printable_id {
            out.push((cols[0].to_string(), bytes));
        }
    }
    assert!(
        out.len() >= 10,
        "expected at least 10 usable accept messages in the corpus, found {}",
        out.len()
    );
    out
}

/// Runs a peer with stdin closed, and returns its output once it exits; kills
/// it (SIGKILL, by the pid this test started) and fails if it overruns `PEER_DEADLINE`.
fn run_peer(mut cmd: Command, what: &str) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(PEER_DEADLINE) {
        Ok(result) => result.unwrap_or_else(|e| panic!("{what}: waiting for it failed: {e}")),
        Err(_) => {
            // SAFETY: kill(2) on the pid of a child this test spawned and has not reaped
            // (its waiter thread has not returned, or recv_timeout would have succeeded).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            let partial = rx
                .recv_timeout(Duration::from_secs(10))
                .ok()
                .and_then(|r| r.ok());
            let (out, err) = partial
                .map(|o| {
                    (
                        String::from_utf8_lossy(&o.stdout).into_owned(),
                        String::from_utf8_lossy(&o.stderr).into_owned(),
                    )
                })
                .unwrap_or_default();
            panic!("{what} did not finish within {PEER_DEADLINE:?}; killed it.\nstdout:\n{out}\nstderr:\n{err}");
        }
    }
}

fn assert_peer_succeeded(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}).\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The string value of `"key": "value"` in a one-line JSON object printed by a
/// driver (values here never contain quotes or escapes).
fn json_str(line: &str, key: &str) -> Option<String> {
    let pattern = format!("\"{key}\":");
    let rest = line[line.find(&pattern)? + pattern.len()..]
        .trim_start()
        .strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_string())
}

fn json_num(line: &str, key: &str) -> Option<i64> {
    let pattern = format!("\"{key}\":");
    let rest = line[line.find(&pattern)? + pattern.len()..].trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// `(msh9, msa1, msa2)` of every `"event": "ack"` line, in print order.
fn driver_acks(stdout: &str) -> Vec<(String, String, String)> {
    stdout
        .lines()
        .filter(|l| json_str(l, "event").as_deref() == Some("ack"))
        .map(|l| {
            (
                json_str(l, "msh9").unwrap_or_default(),
                json_str(l, "msa1").unwrap_or_default(),
                json_str(l, "msa2").unwrap_or_default(),
            )
        })
        .collect()
}

/// Starts a broker with one listener in a fresh temporary directory.
fn start_broker() -> (tempfile::TempDir, Broker) {
    start_broker_with("")
}

/// The corpus gathers samples from many sources, several of which reuse
/// the same MSH-3/MSH-4/MSH-10 for different messages (MSG00001 ...): by
/// the default idempotency key those are key conflicts, refused. The
/// corpus says each message is acceptable on its own, so deduplication is
/// off for it.
fn start_broker_without_dedupe() -> (tempfile::TempDir, Broker) {
    start_broker_with(&format!(
        "[[queue]]\nname = \"{QUEUE}\"\nidempotency_key = []\n"
    ))
}

fn start_broker_with(extra: &str) -> (tempfile::TempDir, Broker) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), &[(QUEUE, QUEUE, extra)]);
    let broker = Broker::start(&config);
    (dir, broker)
}

/// Control ids `inspect` lists for the queue, in offset order.
fn stored_control_ids(broker: &Broker) -> Vec<String> {
    inspect(&broker.data_dir, QUEUE)
        .into_iter()
        .map(|(_, _, id, _)| id)
        .collect()
}

/// Writes `messages` as `m000.hl7`, `m001.hl7`, ... (the drivers' input).
fn write_message_dir(dir: &Path, messages: &[Vec<u8>]) -> PathBuf {
    let msgs = dir.join("messages");
    std::fs::create_dir_all(&msgs).expect("create message dir");
    for (i, m) in messages.iter().enumerate() {
        std::fs::write(msgs.join(format!("m{i:03}.hl7")), m).expect("write message");
    }
    msgs
}

/// Splits `mllp_send`'s stdout (each raw reply frame followed by `\n`) into ACK payloads.
fn mllp_send_replies(stdout: &[u8]) -> Vec<Vec<u8>> {
    let mut acks = Vec::new();
    for piece in stdout.split(|&b| b == 0x1C) {
        if let Some(start) = piece.iter().position(|&b| b == 0x0B) {
            acks.push(piece[start + 1..].to_vec());
        }
    }
    acks
}

/// `python3` able to import python-hl7 and hl7apy. `python_hl7_path` is empty
/// when the inherited environment (say a `PYTHONPATH` set by CI) already
/// provides them; setting an empty `PYTHONPATH` would then hide them.
fn python_with_hl7() -> Command {
    let path = peers::python_hl7_path();
    let mut cmd = Command::new("python3");
    if !path.is_empty() {
        cmd.env("PYTHONPATH", path);
    }
    cmd
}

fn mllp_send(broker: &Broker, file: &Path, loose: bool) -> Output {
    let mut cmd = python_with_hl7();
    cmd.args(["-m", "hl7.client", "--port"]);
    cmd.arg(broker.addr().port().to_string())
        .arg("--file")
        .arg(file);
    if loose {
        cmd.arg("--loose");
    }
    cmd.arg("127.0.0.1");
    let out = run_peer(cmd, "mllp_send");
    assert_peer_succeeded(&out, "mllp_send");
    out
}

/// Checks one positive ACK per message with MSA-2 = its control id, in order,
/// and that the queue stores exactly those messages in that order.
fn assert_acked_and_stored(
    broker: &Broker,
    sent: &[Vec<u8>],
    acks: &[(String, String)],
    peer: &str,
) {
    let sent_ids: Vec<String> = sent.iter().map(|m| control_id(m)).collect();
    assert_eq!(
        acks.len(),
        sent_ids.len(),
        "{peer}: one ACK per message; got {acks:?}"
    );
    for (i, ((code, msa2), id)) in acks.iter().zip(&sent_ids).enumerate() {
        let expected = accept_code_for(&sent[i]);
        assert_eq!(
            code,
            expected,
            "{peer}: message {i} ({id}) got MSA-1 {code:?}, table 0155 says {expected}; broker stderr:\n{}",
            broker.stderr()
        );
        assert_eq!(msa2, id, "{peer}: ACK {i} must answer message {i}");
    }
    assert_eq!(
        stored_control_ids(broker),
        sent_ids,
        "{peer}: inspect must list every ACKed message once, in send order"
    );
}

#[test]
fn mllp_send_corpus_messages_each_get_a_positive_ack_and_are_stored() {
    let started = Instant::now();
    let corpus = accepted_corpus_messages();
    let (dir, broker) = start_broker_without_dedupe();
    let mut framed = Vec::new();
    for (_, bytes) in &corpus {
        framed.push(0x0B);
        framed.extend_from_slice(bytes);
        framed.extend_from_slice(&[0x1C, 0x0D]);
    }
    let input = dir.path().join("corpus.mllp");
    std::fs::write(&input, framed).expect("write mllp_send input");

    let out = mllp_send(&broker, &input, false);

    let acks: Vec<(String, String)> = mllp_send_replies(&out.stdout)
        .iter()
        .map(|a| msa_of(a))
        .collect();
    let ids: Vec<String> = corpus.iter().map(|(_, b)| control_id(b)).collect();
    let sent: Vec<Vec<u8>> = corpus.iter().map(|(_, b)| b.clone()).collect();
    assert_acked_and_stored(&broker, &sent, &acks, "mllp_send");
    eprintln!(
        "mllp_send: {} corpus messages ACKed and stored in {:?}",
        ids.len(),
        started.elapsed()
    );
}

#[test]
fn mllp_send_loose_lf_input_gets_positive_acks_and_is_stored() {
    let (dir, broker) = start_broker();
    let ids: Vec<String> = (0..5).map(|i| format!("LOOSE-{i:02}")).collect();
    // `--loose` takes plain text with LF line ends and frames each MSH itself.
    let sent: Vec<Vec<u8>> = ids.iter().map(|id| oru(id, 120)).collect();
    let text: String = sent
        .iter()
        .map(|m| String::from_utf8(m.clone()).unwrap().replace('\r', "\n"))
        .collect();
    let input = dir.path().join("loose.hl7");
    std::fs::write(&input, text).expect("write mllp_send input");

    let out = mllp_send(&broker, &input, true);

    let acks: Vec<(String, String)> = mllp_send_replies(&out.stdout)
        .iter()
        .map(|a| msa_of(a))
        .collect();
    assert_acked_and_stored(&broker, &sent, &acks, "mllp_send --loose");
}

#[test]
fn hl7apy_one_connection_per_message_gets_strictly_valid_aa_acks() {
    let started = Instant::now();
    let (dir, broker) = start_broker();
    let ids: Vec<String> = (0..8).map(|i| format!("APY-{i:02}")).collect();
    let messages: Vec<Vec<u8>> = ids.iter().map(|id| oru(id, 200)).collect();
    let msgs = write_message_dir(dir.path(), &messages);

    let mut cmd = python_with_hl7();
    cmd.arg(node_peers::interop_dir().join("hl7apy_send.py"));
    cmd.arg(broker.addr().port().to_string()).arg(&msgs);
    let out = run_peer(cmd, "hl7apy driver");
    assert_peer_succeeded(&out, "hl7apy driver");

    let acks = driver_acks(&String::from_utf8_lossy(&out.stdout));
    for (msh9, _, _) in &acks {
        assert!(
            msh9.starts_with("ACK"),
            "hl7apy read MSH-9 {msh9:?}, expected ACK"
        );
    }
    let codes: Vec<(String, String)> = acks.into_iter().map(|(_, c, id)| (c, id)).collect();
    assert!(
        codes.iter().all(|(c, _)| c == "AA"),
        "original-mode messages get AA: {codes:?}"
    );
    assert_acked_and_stored(&broker, &messages, &codes, "hl7apy");
    eprintln!(
        "hl7apy: {} messages, one connection each, in {:?}",
        ids.len(),
        started.elapsed()
    );
}

#[test]
fn node_hl7_client_pipelined_messages_are_acked_in_order_and_stored_in_send_order() {
    let started = Instant::now();
    let interop = node_peers::node_peers_dir();
    let (dir, broker) = start_broker();
    let ids: Vec<String> = (0..PIPELINED_MESSAGES)
        .map(|i| format!("NODE-{i:03}"))
        .collect();
    let messages: Vec<Vec<u8>> = ids.iter().map(|id| oru(id, 150)).collect();
    let msgs = write_message_dir(dir.path(), &messages);

    let mut cmd = Command::new("node");
    cmd.current_dir(&interop)
        .arg("node_hl7_client_pipelined.cjs");
    cmd.arg(broker.addr().port().to_string())
        .arg("2.5")
        .arg(&msgs);
    let out = run_peer(cmd, "node-hl7-client driver");
    assert_peer_succeeded(&out, "node-hl7-client driver");

    let stdout = String::from_utf8_lossy(&out.stdout);
    let done = stdout
        .lines()
        .find(|l| json_str(l, "event").as_deref() == Some("done"))
        .expect("driver summary line");
    // All frames were written in one event-loop turn, before any reply could be read.
    let sent_before_first_ack =
        json_num(done, "sent_before_first_ack").expect("sent_before_first_ack");
    assert_eq!(
        sent_before_first_ack, PIPELINED_MESSAGES as i64,
        "the client pipelined every message: {done}"
    );
    let acks = driver_acks(&stdout);
    for (msh9, _, _) in &acks {
        assert!(
            msh9.starts_with("ACK"),
            "node-hl7-client read MSH-9 {msh9:?}, expected ACK"
        );
    }
    let codes: Vec<(String, String)> = acks.into_iter().map(|(_, c, id)| (c, id)).collect();
    assert_acked_and_stored(&broker, &messages, &codes, "node-hl7-client");
    eprintln!(
        "node-hl7-client: {PIPELINED_MESSAGES} pipelined messages in {:?}; {done}",
        started.elapsed()
    );
}

#[test]
fn simple_hl7_client_gets_aa_for_each_message() {
    let interop = node_peers::node_peers_dir();
    let (dir, broker) = start_broker();
    let ids: Vec<String> = (0..3).map(|i| format!("SIMPLE-{i}")).collect();
    let messages: Vec<Vec<u8>> = ids.iter().map(|id| oru(id, 150)).collect();
    let msgs = write_message_dir(dir.path(), &messages);

    let mut cmd = Command::new("node");
    cmd.current_dir(&interop).arg("simple_hl7_send.cjs");
    cmd.arg(broker.addr().port().to_string()).arg(&msgs);
    let out = run_peer(cmd, "simple-hl7 driver");
    assert_peer_succeeded(&out, "simple-hl7 driver");

    let codes: Vec<(String, String)> = driver_acks(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .map(|(_, c, id)| (c, id))
        .collect();
    assert!(
        codes.iter().all(|(c, _)| c == "AA"),
        "original-mode messages get AA: {codes:?}"
    );
    assert_acked_and_stored(&broker, &messages, &codes, "simple-hl7");
}
