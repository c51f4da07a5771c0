//! Memory under large frames, through the real binary: a 64 MiB message
//! (a PDF as base64 in OBX-5) is stored byte-exact and forwarded, and
//! 1024 connections each stuck halfway through a 16 MiB frame keep the
//! broker within its read budget instead of 1024 × 8 MiB.
mod delivery_common;
mod server_common;
use delivery_common::*;
use orderly::hl7::ack::AckCode;
use server_common::{oru, Broker, Client};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

const MIB: usize = 1024 * 1024;

fn large_message(id: &str, bytes: usize) -> Vec<u8> {
    let mut m = format!(
        "MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261127||MDM^T02|{id}|P|2.5\rPID|1||M1^^^HOSP^MR||DOE^J\rOBX|1|ED|PDF^Report||^application^pdf^Base64^"
    )
    .into_bytes();
    // Base64-like text; a repeating pattern, not one byte, so an
    // off-by-a-chunk bug shows as a mismatch.
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let body = bytes - m.len() - 1;
    m.extend((0..body).map(|i| alphabet[(i * 7 + i / 64) % 64]));
    m.push(b'\r');
    assert_eq!(m.len(), bytes);
    m
}

#[test]
fn a_64_mib_message_is_stored_byte_exact_and_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Sink::start(accept_all());
    let text = format!(
        "data_dir = {:?}\n[[listener]]\nname = \"lab\"\nlisten = \"127.0.0.1:0\"\nqueue = \"lab\"\nmax_frame_bytes = 67108864\n[wal]\nsegment_bytes = 33554432\n{}",
        dir.path().join("data").display().to_string(),
        destination("ehr", sink.addr, "")
    );
    let config = dir.path().join("orderly.toml");
    std::fs::write(&config, text).unwrap();
    let broker = Broker::start(&config);
    let big = large_message("BIG64", 64 * MIB);
    let mut c = Client::connect(broker.addr());
    assert_eq!(
        c.roundtrip(&big),
        (AckCode::ApplicationAccept, "BIG64".into())
    );
    // A small one after it, in the same (now shrunk) connection.
    assert_eq!(
        c.roundtrip(&oru("after", 300)).0,
        AckCode::ApplicationAccept
    );
    sink.wait_accepted(&["BIG64".into(), "after".into()], Duration::from_secs(120));
    let got = sink.received();
    let forwarded = got.iter().find(|r| r.control_id == "BIG64").unwrap();
    assert!(forwarded.payload == big, "forwarded byte for byte");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_orderly"))
        .args(["verify", "--data-dir"])
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

fn vm_rss_bytes(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: usize = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

fn raise_fd_limit(want: u64) {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < want {
            r.rlim_cur = want.min(r.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

/// Regression: each connection could buffer `max_frame_bytes` and kept the
/// capacity of its largest frame, so 1024 slow senders of 16 MiB frames
/// could hold 16 GiB. Now the read buffers beyond a 128 KiB allowance share
/// `read_buffer_budget_bytes`, and one connection at a time may overdraw it.
#[test]
fn a_thousand_half_sent_16_mib_frames_stay_within_the_read_budget() {
    const CONNS: usize = 1024;
    const HALF: usize = 8 * MIB;
    const BUDGET: usize = 32 * MIB;
    raise_fd_limit(4096);
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "data_dir = {:?}\nread_buffer_budget_bytes = {BUDGET}\n[[listener]]\nname = \"lab\"\nlisten = \"127.0.0.1:0\"\nqueue = \"lab\"\nmax_connections = 2048\n",
        dir.path().join("data").display().to_string()
    );
    let config = dir.path().join("orderly.toml");
    std::fs::write(&config, text).unwrap();
    let broker = Broker::start(&config);
    let baseline = vm_rss_bytes(broker.child.id());
    let frame_head = {
        let mut f = vec![0x0b];
        f.extend_from_slice(&large_message("HALF", 16 * MIB)[..HALF]);
        f
    };
    let mut conns: Vec<(std::net::TcpStream, usize)> = (0..CONNS)
        .map(|_| {
            let s = std::net::TcpStream::connect(broker.addr()).unwrap();
            let small: libc::c_int = 16 * 1024;
            // SAFETY: setsockopt on an open socket with a c_int option.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_SNDBUF,
                    (&small as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                );
            }
            s.set_nonblocking(true).unwrap();
            (s, 0)
        })
        .collect();
    // Push until no socket takes another byte for several passes: the
    // broker has read what it will. (No signal says "the peer stopped
    // reading"; quiet passes are the observable.)
    let mut quiet = 0;
    while quiet < 5 {
        let mut progress = 0;
        for (s, sent) in conns.iter_mut() {
            while *sent < frame_head.len() {
                match s.write(&frame_head[*sent..(*sent + 64 * 1024).min(frame_head.len())]) {
                    Ok(n) => {
                        *sent += n;
                        progress += n;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("send: {e}"),
                }
            }
        }
        quiet = if progress == 0 { quiet + 1 } else { 0 };
        std::thread::sleep(Duration::from_millis(50));
    }
    let sent: usize = conns.iter().map(|c| c.1).sum();
    let grown = vm_rss_bytes(broker.child.id()).saturating_sub(baseline);
    // Allowances, the budget, one overdraft of up to a whole frame, and
    // slack for allocator and stack growth.
    let bound = CONNS * 128 * 1024 + BUDGET + 16 * MIB + 64 * MIB;
    eprintln!(
        "broker grew by {} MiB (bound {} MiB); clients pushed {} MiB",
        grown / MIB,
        bound / MIB,
        sent / MIB
    );
    assert!(
        grown < bound,
        "broker grew by {} MiB (bound {} MiB) while clients pushed {} MiB",
        grown / MIB,
        bound / MIB,
        sent / MIB
    );
    let may_hold = CONNS * 128 * 1024 + BUDGET;
    assert!(
        sent > may_hold,
        "the clients pushed only {} MiB, not more than the broker may hold ({} MiB): the budget was never tested",
        sent / MIB,
        may_hold / MIB
    );
    // The broker still serves a small sender.
    let mut c = Client::connect(broker.addr());
    assert_eq!(
        c.roundtrip(&oru("small", 300)).0,
        AckCode::ApplicationAccept
    );
    drop(conns);
}
