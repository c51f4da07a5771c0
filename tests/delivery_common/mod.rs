//! A scriptable test downstream (MLLP server) and config helpers for the
//! delivery tests. The sink records every frame it receives and answers per
//! a script: ACK with a code, stay silent, or drop the connection.
#![allow(dead_code)]
use orderly::hl7::ack::{build_ack, AckKind, AckMode, Hl7Timestamp};
use orderly::hl7::parse_header;
use orderly::mllp::{Decoded, FrameDecoder, END_BLOCK, START_BLOCK, TRAILER};
use parking_lot::{Condvar, Mutex};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// AA.
    Accept,
    /// AE: an error in the message (table 0008); dead-lettered by default.
    Error,
    /// AR: not processed, may be resent (table 0008); retried by default.
    Reject,
    /// Close the connection without answering.
    Drop,
}

/// What the sink answers for a control id on its `n`-th receipt (1-based).
pub type Script = Arc<dyn Fn(&str, usize) -> Reply + Send + Sync>;

#[derive(Clone, Debug)]
pub struct Received {
    pub control_id: String,
    pub payload: Vec<u8>,
    pub at: Instant,
    pub reply: Reply,
    /// When the sink accepted the connection this frame came on.
    pub conn_opened: Instant,
}

pub struct Sink {
    pub addr: SocketAddr,
    log: Arc<(Mutex<Vec<Received>>, Condvar)>,
    script: Arc<Mutex<Script>>,
}

pub fn accept_all() -> Script {
    Arc::new(|_, _| Reply::Accept)
}

/// Rejects (AR) every message whose control id is `poisoned`, accepts the rest.
/// AA for everything but `poisoned`, which gets AE every time (the
/// downstream finds an error in that message: `on_reject` applies).
pub fn reject_only(poisoned: &'static str) -> Script {
    Arc::new(move |id, _| {
        if id == poisoned {
            Reply::Error
        } else {
            Reply::Accept
        }
    })
}

impl Sink {
    pub fn start(script: Script) -> Sink {
        Self::start_on("127.0.0.1:0".parse().unwrap(), script)
    }

    pub fn start_on(addr: SocketAddr, script: Script) -> Sink {
        let listener = TcpListener::bind(addr).expect("sink bind");
        let addr = listener.local_addr().unwrap();
        let log: Arc<(Mutex<Vec<Received>>, Condvar)> = Arc::default();
        let script = Arc::new(Mutex::new(script));
        let (l, s) = (log.clone(), script.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (l, s) = (l.clone(), s.clone());
                let opened = Instant::now();
                std::thread::spawn(move || serve(conn, opened, l, s));
            }
        });
        Sink { addr, log, script }
    }

    pub fn set_script(&self, script: Script) {
        *self.script.lock() = script;
    }

    pub fn received(&self) -> Vec<Received> {
        self.log.0.lock().clone()
    }

    /// Control ids answered AA, in the order they arrived.
    pub fn accepted_ids(&self) -> Vec<String> {
        self.received()
            .into_iter()
            .filter(|r| r.reply == Reply::Accept)
            .map(|r| r.control_id)
            .collect()
    }

    /// Waits (signalled on every receipt) until `done` holds; panics after `timeout`.
    pub fn wait_until(&self, timeout: Duration, what: &str, done: impl Fn(&[Received]) -> bool) {
        let deadline = Instant::now() + timeout;
        let mut log = self.log.0.lock();
        while !done(&log) {
            if self.log.1.wait_until(&mut log, deadline).timed_out() && !done(&log) {
                panic!(
                    "timed out waiting for: {what}; received {} frames: {:?}",
                    log.len(),
                    log.iter()
                        .map(|r| (&r.control_id, r.reply))
                        .collect::<Vec<_>>()
                );
            }
        }
    }

    /// Waits until every id in `ids` was accepted at least once; on
    /// timeout the panic names the ids still missing. (Each wake-up checks
    /// incrementally: the sink's mutex is held meanwhile, and a slow check
    /// would throttle the sink itself.)
    pub fn wait_accepted(&self, ids: &[String], timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut accepted: std::collections::HashSet<String> = std::collections::HashSet::new();
        let mut seen = 0;
        let mut log = self.log.0.lock();
        loop {
            for r in &log[seen..] {
                if r.reply == Reply::Accept {
                    accepted.insert(r.control_id.clone());
                }
            }
            seen = log.len();
            if ids.iter().all(|id| accepted.contains(id)) {
                return;
            }
            if self.log.1.wait_until(&mut log, deadline).timed_out() {
                let missing: Vec<&String> =
                    ids.iter().filter(|id| !accepted.contains(*id)).collect();
                panic!(
                    "timed out waiting for {} of {} messages to be accepted ({} frames received), e.g. {:?}",
                    missing.len(),
                    ids.len(),
                    log.len(),
                    &missing[..missing.len().min(20)]
                );
            }
        }
    }
}

fn serve(
    mut conn: TcpStream,
    conn_opened: Instant,
    log: Arc<(Mutex<Vec<Received>>, Condvar)>,
    script: Arc<Mutex<Script>>,
) {
    let (mut buf, mut out) = (Vec::new(), Vec::new());
    let mut dec = FrameDecoder::new(1 << 27);
    let mut chunk = vec![0u8; 65536];
    loop {
        while let Decoded::Frame(r) = dec.decode(&buf) {
            let payload = buf[r].to_vec();
            let header = parse_header(&payload).ok();
            let id = header
                .as_ref()
                .map(|h| String::from_utf8_lossy(h.control_id()).into_owned())
                .unwrap_or_default();
            let n = log.0.lock().iter().filter(|r| r.control_id == id).count() + 1;
            let reply = (script.lock().clone())(&id, n);
            log.0.lock().push(Received {
                control_id: id,
                payload: payload.clone(),
                at: Instant::now(),
                reply,
                conn_opened,
            });
            log.1.notify_all();
            let kind = match reply {
                Reply::Drop => return,
                Reply::Accept => AckKind::Accept,
                Reply::Error => AckKind::Error,
                Reply::Reject => AckKind::Reject,
            };
            out.push(START_BLOCK);
            // Each ACK its own MSH-10, as real receivers do.
            static ACKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let ack_id = format!(
                "SINK{}",
                ACKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            build_ack(
                header.as_ref(),
                AckMode::Original,
                kind,
                None,
                ack_id.as_bytes(),
                Hl7Timestamp::from_unix_seconds(0),
                &mut out,
            );
            out.extend_from_slice(&[END_BLOCK, TRAILER]);
        }
        dec.compact(&mut buf);
        if !out.is_empty() {
            if conn.write_all(&out).is_err() {
                return;
            }
            out.clear();
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A config with one listener `lab` → queue `lab` and the given destination blocks.
pub fn config_with(dir: &std::path::Path, destinations: &str) -> std::path::PathBuf {
    let text = format!(
        "data_dir = {:?}\n[[listener]]\nname = \"lab\"\nlisten = \"127.0.0.1:0\"\nqueue = \"lab\"\n{destinations}\n",
        dir.join("data").display().to_string()
    );
    let path = dir.join("orderly.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A destination block with fast retries, for tests.
pub fn destination(name: &str, sink: SocketAddr, extra: &str) -> String {
    format!(
        "[[destination]]\nname = \"{name}\"\nqueue = \"lab\"\nconnect = \"{sink}\"\nack_timeout_ms = 2000\n{extra}\n[destination.retry]\nmax_attempts = 50\ninitial_backoff_ms = 20\nmax_backoff_ms = 200\njitter = 0.0\n[destination.circuit_breaker]\nfailure_threshold = 1000\nopen_ms = 100\n"
    )
}

/// A message whose PID-3.1 is `key`.
pub fn keyed(id: &str, key: &str) -> Vec<u8> {
    format!("MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261123||ORU^R01|{id}|P|2.5\rPID|1||{key}^^^HOSP^MR||DOE^J\rOBX|1|TX|N||result {id}\r").into_bytes()
}

/// `orderly ctl status` once it satisfies `done`, or the last one read at
/// `timeout`. The lane commits its cursor after reading the sink's ACK, in
/// another process, so a test that saw the sink accept polls for it.
pub fn ctl_status_until(
    config: &std::path::Path,
    timeout: std::time::Duration,
    done: impl Fn(&str) -> bool,
) -> String {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let status = ctl(config, &["status"]);
        if done(&status) || std::time::Instant::now() >= deadline {
            return status;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn ctl_output(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_orderly"))
        .arg("ctl")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

/// `orderly ctl ...` that must fail: its exit code and stderr.
pub fn ctl_fails(config: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = ctl_output(config, args);
    assert!(!out.status.success(), "ctl {args:?} should fail");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `orderly ctl ... ` output, asserting success.
pub fn ctl(config: &std::path::Path, args: &[&str]) -> String {
    let out = ctl_output(config, args);
    assert!(
        out.status.success(),
        "ctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
