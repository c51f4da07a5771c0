//! The real `orderly` binary on an ephemeral port: what every kind of input
//! gets back, and that what was acknowledged is stored byte for byte.
mod server_common;
use orderly::hl7::ack::AckCode;
use orderly::storage::FsStorage;
use orderly::wal::{inspect, Offset};
use server_common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus")
}

/// (file, expect) pairs from MANIFEST.tsv.
fn manifest() -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(corpus_dir().join("MANIFEST.tsv")).expect("shared corpus manifest");
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_string(), f[3].to_string())
        })
        .collect()
}

/// Every stored payload of `queue`, in log order.
fn stored(data_dir: &Path, queue: &str) -> Vec<Vec<u8>> {
    records(data_dir, queue).into_iter().map(|r| r.0).collect()
}

/// The messages of a batch file by the Chapter 2 rule, independently of
/// the broker's splitter: a message starts at a line beginning `MSH` and
/// runs up to the next `MSH`, `BHS`, `BTS`, `FHS` or `FTS` line.
fn batch_messages(bytes: &[u8]) -> Vec<Vec<u8>> {
    let starts: Vec<usize> = (0..bytes.len())
        .filter(|&i| i == 0 || bytes[i - 1] == b'\r' || bytes[i - 1] == b'\n')
        .filter(|&i| i == 0 || !(bytes[i - 1] == b'\r' && bytes[i] == b'\n'))
        .collect();
    let name = |i: usize| {
        let at = if i == 0 && bytes.starts_with(b"\xEF\xBB\xBF") {
            3
        } else {
            i
        };
        bytes.get(at..at + 3).unwrap_or_default()
    };
    let mut out = Vec::new();
    let mut open: Option<usize> = None;
    for &i in &starts {
        let n = name(i);
        let boundary = [&b"MSH"[..], b"BHS", b"BTS", b"FHS", b"FTS"].contains(&n);
        if boundary {
            if let Some(s) = open.take() {
                out.push(bytes[s..i].to_vec());
            }
        }
        if n == b"MSH" {
            open = Some(i);
        }
    }
    if let Some(s) = open {
        out.push(bytes[s..].to_vec());
    }
    out
}

#[test]
fn every_corpus_message_gets_the_ack_its_manifest_implies_and_is_stored_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    // The corpus gathers samples from many sources, some reusing the same
    // MSH-3/4/10 for different messages: deduplication off, so each is
    // judged on its own as the manifest does.
    let no_dedupe = "[[queue]]\nname = \"lab\"\nidempotency_key = []\n";
    let mut broker = Broker::start(&write_config(dir.path(), &[("lab", "lab", no_dedupe)]));
    let mut client = Client::connect(broker.addr());
    let mut expected_stored = Vec::new();
    let entries = manifest();
    assert!(entries.len() >= 80, "the whole corpus is exercised");
    for (file, expect) in &entries {
        let bytes = std::fs::read(corpus_dir().join(file)).unwrap();
        client.send(&bytes);
        let ack = client
            .recv()
            .unwrap_or_else(|| panic!("{file}: connection closed instead of an ACK"));
        let (code, _) = ack_of(&ack);
        match expect.as_str() {
            "batch" => {
                // Chapter 2 batch protocol: each message is processed on its
                // own and the answer is a batch of ACKs, one MSA each.
                let messages = batch_messages(&bytes);
                let text = String::from_utf8_lossy(&ack).into_owned();
                assert!(
                    text.starts_with("BHS") || text.starts_with("FHS"),
                    "{file}: {text}"
                );
                let msas: Vec<&str> = text.split('\r').filter(|l| l.starts_with("MSA|")).collect();
                assert_eq!(
                    msas.len(),
                    messages.len(),
                    "{file}: one MSA per message: {text}"
                );
                for (msa, m) in msas.iter().zip(&messages) {
                    let code = msa.split('|').nth(1).unwrap_or_default();
                    assert_eq!(code, accept_code_for(m), "{file}: {text}");
                }
                expected_stored.extend(messages);
            }
            "accept" => {
                assert_eq!(
                    code.as_str(),
                    accept_code_for(&bytes),
                    "{file}: the code table 0155 implies"
                );
                expected_stored.push(bytes);
            }
            "reject" => assert!(
                !code.is_positive(),
                "{file}: expected a negative ACK, got {}",
                code.as_str()
            ),
            "either" => {
                if code.is_positive() {
                    expected_stored.push(bytes);
                }
            }
            other => panic!("unknown manifest expectation {other}"),
        }
    }
    assert!(broker.terminate().success(), "SIGTERM exits 0");
    let got = stored(&broker.data_dir, "lab");
    assert_eq!(
        got.len(),
        expected_stored.len(),
        "exactly the accepted messages are stored"
    );
    for (i, (g, e)) in got.iter().zip(&expected_stored).enumerate() {
        assert!(g == e, "record {i} differs from the bytes sent");
    }
}

#[test]
fn a_content_error_gets_ae_with_an_err_segment_that_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&write_config(dir.path(), &[("lab", "lab", "")]));
    let mut c = Client::connect(broker.addr());
    c.send(b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20260101||ORU^R01||P|2.5\rPID|1\r");
    let ack = c.recv().expect("NAK");
    let text = String::from_utf8_lossy(&ack).into_owned();
    // Table 0008: AE = an error in the message itself (do not resend it
    // unchanged); AR is kept for "not stored, resend later".
    assert!(text.contains("MSA|AE|"), "{text}");
    assert!(text.contains("\rERR|") && text.contains("MSH-10"), "{text}");
    c.send(b"PID|1||x\r");
    let (code, _) = ack_of(&c.recv().expect("NAK for non-HL7"));
    assert_eq!(code, AckCode::ApplicationError);
    assert_eq!(
        c.roundtrip(&oru("after-reject", 300)),
        (AckCode::ApplicationAccept, "after-reject".into()),
        "connection survives"
    );
}

#[test]
fn frames_split_at_every_byte_boundary_are_reassembled() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&write_config(dir.path(), &[("lab", "lab", "")]));
    let mut c = Client::connect(broker.addr());
    let mut frame = Vec::new();
    orderly::mllp::encode_frame(&oru("split", 200), &mut frame);
    for k in 1..frame.len() {
        let id = format!("S{k}");
        let mut f = Vec::new();
        orderly::mllp::encode_frame(&oru(&id, 200), &mut f);
        c.send_raw(&f[..k]);
        c.send_raw(&f[k..]);
        let (code, msa2) = ack_of(&c.recv().expect("ACK"));
        assert!(
            code.is_positive() && msa2 == id,
            "split at {k}: {} {msa2}",
            code.as_str()
        );
    }
    let ids: Vec<String> = inspect(&broker.data_dir, "lab")
        .into_iter()
        .map(|r| r.2)
        .collect();
    let want: Vec<String> = (1..frame.len()).map(|k| format!("S{k}")).collect();
    assert_eq!(ids, want);
}

#[test]
fn pipelined_frames_in_one_write_get_acks_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&write_config(dir.path(), &[("lab", "lab", "")]));
    let mut c = Client::connect(broker.addr());
    let mut burst = Vec::new();
    for i in 0..200 {
        // A rejected message in the middle must not overtake earlier ACKs.
        if i == 100 {
            orderly::mllp::encode_frame(b"MSH|^~\\&|A|B|C|D|2026||ORU^R01||P|2.5\r", &mut burst);
        }
        orderly::mllp::encode_frame(&oru(&format!("P{i}"), 400 + i * 7), &mut burst);
    }
    c.send_raw(&burst);
    for i in 0..201 {
        let (code, msa2) = ack_of(&c.recv().expect("ACK"));
        if i == 100 {
            assert_eq!(code, AckCode::ApplicationError, "no MSH-10: AE");
            continue;
        }
        let n = if i < 100 { i } else { i - 1 };
        assert_eq!(
            (code, msa2),
            (AckCode::ApplicationAccept, format!("P{n}")),
            "ACK {i} in arrival order"
        );
    }
}

#[test]
fn real_sender_habits_junk_bom_and_missing_trailing_cr_all_work() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&write_config(dir.path(), &[("lab", "lab", "")]));
    let mut c = Client::connect(broker.addr());
    // Junk before a frame; no CR after 0x1C but the next 0x0B right behind
    // it (which ends the frame); a BOM before MSH; junk between frames.
    let mut bytes = b"\r\n  \r\n".to_vec();
    bytes.push(0x0b);
    bytes.extend_from_slice(&oru("J1", 150));
    bytes.push(0x1c);
    bytes.push(0x0b);
    bytes.extend_from_slice(b"\xef\xbb\xbf");
    bytes.extend_from_slice(&oru("J2", 150));
    bytes.extend_from_slice(&[0x1c, 0x0d]);
    bytes.extend_from_slice(b"\n\n garbage \r");
    c.send_raw(&bytes);
    assert_eq!(
        ack_of(&c.recv().unwrap()),
        (AckCode::ApplicationAccept, "J1".into())
    );
    assert_eq!(
        ack_of(&c.recv().unwrap()),
        (AckCode::ApplicationAccept, "J2".into())
    );
    assert_eq!(
        c.roundtrip(&oru("J3", 100)),
        (AckCode::ApplicationAccept, "J3".into())
    );
    drop(c);
    let stored = stored(&broker.data_dir, "lab");
    assert_eq!(stored[0], oru("J1", 150));
    assert!(
        stored[1].starts_with(b"\xef\xbb\xbfMSH"),
        "BOM kept: payload stored exactly"
    );
}

/// Free text pasted from word processors carries 0x1C and 0x0B. HAPI and
/// NextGen Connect read both as data inside a frame (../shared/PEERS.md);
/// cutting there stored a truncated head, answered AA, and dropped the
/// rest as junk.
#[test]
fn control_bytes_inside_free_text_are_stored_as_data() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&write_config(dir.path(), &[("lab", "lab", "")]));
    let mut c = Client::connect(broker.addr());
    let fs = b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261127||ORU^R01|FS1|P|2.5\rPID|1||M1\rNTE|1||see \x1c attached\r".to_vec();
    let vt = b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261127||ORU^R01|VT1|P|2.5\rPID|1||M1\rNTE|1||line one\x0bline two\r".to_vec();
    let both =
        b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261127||ORU^R01|FV1|P|2.5\rNTE|1||\x0b\x1c\x1c!\r".to_vec();
    for (msg, id) in [(&fs, "FS1"), (&vt, "VT1"), (&both, "FV1")] {
        assert_eq!(c.roundtrip(msg), (AckCode::ApplicationAccept, id.into()));
    }
    // The lone 0x1C as the last byte of one write, its data in the next.
    let split = b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261127||ORU^R01|SP1|P|2.5\rNTE|1||a\x1c".to_vec();
    c.send_raw(b"\x0b");
    c.send_raw(&split);
    c.send_raw(b"b\r\x1c\r");
    assert_eq!(
        ack_of(&c.recv().unwrap()),
        (AckCode::ApplicationAccept, "SP1".into())
    );
    let mut split_whole = split.clone();
    split_whole.extend_from_slice(b"b\r");
    drop(c);
    assert_eq!(
        stored(&broker.data_dir, "lab"),
        vec![fs, vt, both, split_whole]
    );
}

#[test]
fn a_sender_that_omits_the_trailer_and_waits_gets_its_ack() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&write_config(dir.path(), &[("lab", "lab", "")]));
    let mut c = Client::connect(broker.addr());
    for i in 0..3 {
        let id = format!("W{i}");
        let mut frame = vec![0x0b];
        frame.extend_from_slice(&oru(&id, 200));
        frame.push(0x1c);
        c.send_raw(&frame);
        // No more bytes: the pause after the 0x1C ends the frame.
        assert_eq!(
            ack_of(&c.recv().expect("ACK")),
            (AckCode::ApplicationAccept, id)
        );
    }
}

#[test]
fn blanks_between_start_block_and_msh_are_tolerated() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&write_config(dir.path(), &[("lab", "lab", "")]));
    let mut c = Client::connect(broker.addr());
    let mut frame = b"\x0b\r\n \t".to_vec();
    frame.extend_from_slice(&oru("B1", 120));
    frame.extend_from_slice(b"\x1c\r");
    c.send_raw(&frame);
    assert_eq!(
        ack_of(&c.recv().unwrap()),
        (AckCode::ApplicationAccept, "B1".into())
    );
    drop(c);
    assert_eq!(stored(&broker.data_dir, "lab"), vec![oru("B1", 120)]);
}

/// A frame with a readable MSH never ends in a closed connection without an
/// answer: cut off by the peer's close (here a half-close, so the peer can
/// still read) or by frame_timeout_s, it gets AR "NOT stored ... resend".
#[test]
fn a_frame_cut_off_mid_message_gets_a_nak_not_silence() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&write_config(
        dir.path(),
        &[("lab", "lab", "frame_timeout_s = 1")],
    ));
    let partial = |id: &str| {
        let mut f = vec![0x0b];
        f.extend_from_slice(&oru(id, 300)[..200]);
        f
    };
    let mut c = Client::connect(broker.addr());
    c.send_raw(&partial("CUT1"));
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let ack = c.recv().expect("a NAK before the close");
    assert_eq!(ack_of(&ack), (AckCode::ApplicationReject, "CUT1".into()));
    assert!(String::from_utf8_lossy(&ack).contains("NOT stored"));
    assert!(c.is_closed_by_server());

    // A trailing 0x1C then the close: the close ends the frame; stored.
    let mut c = Client::connect(broker.addr());
    let mut frame = vec![0x0b];
    frame.extend_from_slice(&oru("EOF1", 200));
    frame.push(0x1c);
    c.send_raw(&frame);
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(
        ack_of(&c.recv().expect("ACK")),
        (AckCode::ApplicationAccept, "EOF1".into())
    );

    // Stalled past frame_timeout_s: the NAK, then the close.
    let mut c = Client::connect(broker.addr());
    c.send_raw(&partial("SLOW1"));
    let ack = c.recv().expect("a NAK at the frame timeout");
    assert_eq!(ack_of(&ack), (AckCode::ApplicationReject, "SLOW1".into()));
    assert!(c.is_closed_by_server());
    let ids: Vec<String> = inspect(&broker.data_dir, "lab")
        .into_iter()
        .map(|r| r.2)
        .collect();
    assert_eq!(ids, vec!["EOF1".to_string()]);
}

#[test]
fn oversized_frame_gets_a_nak_when_its_header_is_readable_else_the_connection_closes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&write_config(
        dir.path(),
        &[("lab", "lab", "max_frame_bytes = 4096")],
    ));
    let mut c = Client::connect(broker.addr());
    let (code, msa2) = c.roundtrip(&oru("BIG", 20_000));
    // Too large is the message's own fault: resending it unchanged fails again.
    assert_eq!((code, msa2.as_str()), (AckCode::ApplicationError, "BIG"));
    assert_eq!(
        c.roundtrip(&oru("SMALL", 1000)),
        (AckCode::ApplicationAccept, "SMALL".into()),
        "connection continues"
    );
    let mut junk = vec![0x0b];
    junk.extend(std::iter::repeat_n(b'z', 20_000));
    c.send_raw(&junk);
    assert!(
        c.is_closed_by_server(),
        "unreadable oversized frame closes the connection"
    );
    let ids: Vec<String> = inspect(&broker.data_dir, "lab")
        .into_iter()
        .map(|r| r.2)
        .collect();
    assert_eq!(ids, vec!["SMALL".to_string()]);
}

#[test]
fn idle_and_slow_drip_peers_are_closed_after_their_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&write_config(
        dir.path(),
        &[("lab", "lab", "idle_timeout_s = 1\nframe_timeout_s = 1")],
    ));
    let mut idle = Client::connect(broker.addr());
    let mut slow = Client::connect(broker.addr());
    slow.send_raw(b"\x0bMSH|^~\\&|A|B|C|D|2026||ORU^R01|X|P|2.5\r");
    let mut unreadable = Client::connect(broker.addr());
    unreadable.send_raw(b"\x0bnot hl7 at all");
    let t = std::time::Instant::now();
    assert!(idle.is_closed_by_server());
    // A readable MSH is answered before the close; anything else is not.
    let nak = slow.recv().expect("a NAK for the readable partial frame");
    assert_eq!(ack_of(&nak), (AckCode::ApplicationReject, "X".into()));
    assert!(slow.is_closed_by_server());
    assert!(unreadable.is_closed_by_server());
    assert!(t.elapsed() < std::time::Duration::from_secs(20));
    let fresh = Client::connect(broker.addr()).roundtrip(&oru("after", 100));
    assert_eq!(
        fresh,
        (AckCode::ApplicationAccept, "after".into()),
        "the broker keeps serving"
    );
}

/// A connection with a frame in progress is not idle: frame_timeout_s
/// judges it. Before, a sender whose previous message was longer ago than
/// idle_timeout_s was closed mid-frame without an answer.
#[test]
fn a_frame_in_progress_is_not_closed_as_idle() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&write_config(
        dir.path(),
        &[("lab", "lab", "idle_timeout_s = 1\nframe_timeout_s = 60")],
    ));
    let mut frame = vec![0x0b];
    frame.extend_from_slice(&oru("LATE", 300));
    frame.extend_from_slice(&[0x1c, 0x0d]);
    let mut sender = Client::connect(broker.addr());
    sender.send_raw(&frame[..150]);
    // Accepted after the sender, so once the idle sweep has closed this
    // one, it has judged the sender idle too (if it ever would).
    let mut witness = Client::connect(broker.addr());
    assert!(witness.is_closed_by_server(), "the idle sweep ran");
    sender.send_raw(&frame[150..]);
    let ack = sender.recv().expect("an answer, not a close");
    assert_eq!(ack_of(&ack), (AckCode::ApplicationAccept, "LATE".into()));
}

#[test]
fn connections_over_max_are_refused_and_existing_ones_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&write_config(
        dir.path(),
        &[("lab", "lab", "max_connections = 2")],
    ));
    let mut a = Client::connect(broker.addr());
    let mut b = Client::connect(broker.addr());
    assert!(a.roundtrip(&oru("A1", 100)).0.is_positive());
    assert!(b.roundtrip(&oru("B1", 100)).0.is_positive());
    let mut c = Client::connect(broker.addr());
    assert!(c.is_closed_by_server(), "third connection refused");
    assert!(a.roundtrip(&oru("A2", 100)).0.is_positive());
    drop(b);
    // A slot frees up once the broker sees the close: retry until it does.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut d = Client::connect(broker.addr());
        d.send(&oru("D1", 100));
        if let Some(ack) = d.recv() {
            assert!(ack_of(&ack).0.is_positive());
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot never freed");
    }
}

fn cork(stream: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket fd and a pointer to a live c_int of the size given.
    let r = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(r, 0, "TCP_CORK");
}

/// Senders that write one message and half-close at once (mllp_send-style
/// one-shot clients): the message and the FIN often arrive together, in one
/// readiness event. Each still gets its ACK, and the broker closes its side
/// right after, long before the idle timeout; with one connection slot, a
/// connection left open would refuse the next round.
#[test]
fn one_shot_senders_that_half_close_get_their_ack_and_free_the_slot() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&write_config(
        dir.path(),
        &[("lab", "lab", "max_connections = 1\nidle_timeout_s = 3600")],
    ));
    for i in 0..20 {
        let mut c = Client::connect(broker.addr());
        cork(&c.stream);
        let mut frame = Vec::new();
        orderly::mllp::encode_frame(&oru(&format!("H{i}"), 300), &mut frame);
        c.send_raw(&frame);
        // With the socket corked, the FIN joins the queued bytes: one segment.
        c.stream.shutdown(std::net::Shutdown::Write).unwrap();
        let ack = c.recv().unwrap_or_else(|| panic!("round {i}: no ACK"));
        assert_eq!(ack_of(&ack), (AckCode::ApplicationAccept, format!("H{i}")));
        assert!(
            c.is_closed_by_server(),
            "round {i}: broker closes after the ACK"
        );
    }
}

#[test]
fn several_listeners_feed_one_queue_and_separate_queues() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&write_config(
        dir.path(),
        &[("lab1", "lab", ""), ("lab2", "lab", ""), ("adt", "adt", "")],
    ));
    assert!(Client::connect(broker.addr_of("lab1"))
        .roundtrip(&oru("L1", 100))
        .0
        .is_positive());
    assert!(Client::connect(broker.addr_of("lab2"))
        .roundtrip(&oru("L2", 100))
        .0
        .is_positive());
    assert!(Client::connect(broker.addr_of("adt"))
        .roundtrip(&oru("A1", 100))
        .0
        .is_positive());
    let lab: Vec<String> = inspect(&broker.data_dir, "lab")
        .into_iter()
        .map(|r| r.2)
        .collect();
    let adt: Vec<String> = inspect(&broker.data_dir, "adt")
        .into_iter()
        .map(|r| r.2)
        .collect();
    assert_eq!(
        (lab, adt),
        (
            vec!["L1".to_string(), "L2".to_string()],
            vec!["A1".to_string()]
        )
    );
}

#[test]
fn config_errors_name_file_key_and_reason_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[listener]]\nname = \"lab\"\nlisten = \"not-an-address\"\nqueue = \"lab\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml")
            && err.contains("listener[0].listen")
            && err.contains("not-an-address"),
        "{err}"
    );
}

#[test]
fn a_second_broker_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &[("lab", "lab", "")]);
    let _first = Broker::start(&config);
    let out = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another Orderly process"));
}

#[test]
fn send_command_prints_each_ack_and_fails_on_a_negative_one() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&write_config(dir.path(), &[("lab", "lab", "")]));
    let good = corpus_dir().join("adt_a01_v25_crlf_rethink_01_lf.hl7");
    let bad = corpus_dir().join("reject_no_msh10_cdc_01.hl7");
    let ok = Command::new(BIN)
        .args(["send", "--to", &broker.addr().to_string()])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains(": AA MSG006"));
    let mixed = Command::new(BIN)
        .args(["send", "--to", &broker.addr().to_string()])
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(mixed.status.code(), Some(1));
    let out = String::from_utf8_lossy(&mixed.stdout);
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| (l.contains(": AE ") || l.contains(": CE ")) && l.contains("MSH-10")),
        "{out}"
    );
    // LF segment ends were normalised to CR before sending.
    let stored = stored(&broker.data_dir, "lab");
    assert!(!stored[0].contains(&b'\n'));
}

#[test]
fn sigterm_exits_cleanly_even_if_the_control_socket_file_was_removed() {
    // A temp cleaner or an operator may delete `orderly.ctl`; shutdown must
    // not depend on connecting to it.
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&write_config(dir.path(), &[("lab", "lab", "")]));
    let mut c = Client::connect(broker.addr());
    assert_eq!(
        c.roundtrip(&oru("before-stop", 300)).0,
        AckCode::ApplicationAccept
    );
    let ctl = orderly::control::socket_path(&broker.data_dir);
    std::fs::remove_file(&ctl).expect("the running broker has a control socket");
    let status = broker.terminate_within(std::time::Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "broker did not exit 0 after SIGTERM: {status:?}\n{}",
        broker.stderr()
    );
    assert_eq!(
        stored(&broker.data_dir, "lab"),
        vec![oru("before-stop", 300)]
    );
}

/// (payload, metadata) of every record in a queue.
fn records(data_dir: &Path, queue: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    inspect::for_each_record(
        &FsStorage,
        &data_dir.join("queues").join(queue),
        Offset(0),
        u64::MAX,
        orderly::wal::Writer::Running,
        |item| match item {
            inspect::Item::Record(r) => out.push((r.payload.to_vec(), r.meta.to_vec())),
            inspect::Item::Corrupt { offset, .. } => panic!("record {offset} damaged"),
        },
    )
    .unwrap();
    out
}

/// `MSA|<MSA-1>|<MSA-2>` of each ACK message in a batch ACK.
fn msa_lines(ack: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(ack)
        .split('\r')
        .filter(|l| l.starts_with("MSA|"))
        .map(|l| l.split('|').take(3).collect::<Vec<_>>().join("|"))
        .collect()
}

/// HL7 v2 Chapter 2 batch protocol: each message of a batch is processed on
/// its own; the answer is a batch of ACKs whose BHS-12 is the original
/// BHS-11. Before, the batch was one record answered from its first MSH:
/// the invalid second message was stored and acknowledged with the rest.
#[test]
fn a_batch_is_stored_per_message_and_answered_with_a_batch_ack() {
    use orderly::wal::meta::{MetaKey, MetaView};
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&write_config(dir.path(), &[("lab", "lab", "")]));
    let mut c = Client::connect(broker.addr());
    let m1 = b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261127||ORU^R01|B-1|P|2.5\rPID|1||M1\r".to_vec();
    let m2 = b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261127||ORU^R01||P|2.5\rPID|1||M2\r".to_vec();
    let m3 = b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261127||ORU^R01|B-3|P|2.5\rPID|1||M3\r".to_vec();
    let mut batch = b"BHS|^~\\&|LAB|HOSP|EHR|HOSP|20261127||||BATCH42\r".to_vec();
    for m in [&m1, &m2, &m3] {
        batch.extend_from_slice(m);
    }
    batch.extend_from_slice(b"BTS|3\r");
    c.send(&batch);
    let ack = c.recv().expect("a batch ACK");
    let text = String::from_utf8_lossy(&ack).into_owned();
    let bhs: Vec<&str> = text.split('\r').next().unwrap().split('|').collect();
    assert_eq!(bhs[0], "BHS", "{text}");
    assert_eq!(
        (bhs[2], bhs[3], bhs[4], bhs[5]),
        ("EHR", "HOSP", "LAB", "HOSP"),
        "parties swapped: {text}"
    );
    assert_eq!(
        bhs.get(11),
        Some(&"BATCH42"),
        "BHS-12 = the original BHS-11: {text}"
    );
    assert_eq!(
        msa_lines(&ack),
        vec![
            "MSA|AA|B-1".to_string(),
            "MSA|AE|".to_string(),
            "MSA|AA|B-3".to_string()
        ],
        "{text}"
    );
    assert!(text.contains("\rBTS|3\r"), "{text}");
    drop(c);
    let stored = records(&broker.data_dir, "lab");
    assert_eq!(
        stored.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        vec![m1, m3]
    );
    for ((_, meta), index) in stored.iter().zip([0u32, 2]) {
        let m = MetaView::new(meta);
        assert_eq!(m.get(MetaKey::BatchControlId), Some(&b"BATCH42"[..]));
        assert_eq!(m.get(MetaKey::BatchIndex), Some(&index.to_le_bytes()[..]));
        assert_eq!(m.get(MetaKey::BatchCount), Some(&3u32.to_le_bytes()[..]));
    }
}

#[test]
fn back_to_back_messages_in_one_frame_are_stored_and_answered_each() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&write_config(dir.path(), &[("lab", "lab", "")]));
    let mut c = Client::connect(broker.addr());
    let (a, b) = (oru("BB-1", 150), oru("BB-2", 180));
    c.send(&[a.clone(), b.clone()].concat());
    let ack = c.recv().expect("a batch ACK");
    assert!(
        ack.starts_with(b"BHS|"),
        "{}",
        String::from_utf8_lossy(&ack)
    );
    assert_eq!(
        msa_lines(&ack),
        vec!["MSA|AA|BB-1".to_string(), "MSA|AA|BB-2".to_string()]
    );
    assert_eq!(
        c.roundtrip(&oru("after", 100)),
        (AckCode::ApplicationAccept, "after".into()),
        "the connection goes on with single messages"
    );
    drop(c);
    assert_eq!(
        stored(&broker.data_dir, "lab"),
        vec![a, b, oru("after", 100)]
    );
}
