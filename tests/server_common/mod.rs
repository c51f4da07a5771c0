//! Helpers for tests that run the real `orderly` binary: start it on an
//! ephemeral port, talk MLLP to it, kill it, inspect its data.
#![allow(dead_code)]
use orderly::hl7::ack::{parse_ack, AckCode};
use orderly::mllp::{encode_frame, Decoded, FrameDecoder};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const BIN: &str = env!("CARGO_BIN_EXE_orderly");

/// A running broker process, killed (SIGKILL) on drop if still alive.
pub struct Broker {
    pub child: Child,
    pub addrs: Vec<(String, SocketAddr)>,
    pub data_dir: PathBuf,
    pub config: PathBuf,
    pub stderr_log: PathBuf,
}

/// Writes a config with one listener per `(name, queue, extra keys)` on port 0.
pub fn write_config(dir: &Path, listeners: &[(&str, &str, &str)]) -> PathBuf {
    let data = dir.join("data");
    let mut text = format!("data_dir = {:?}\n", data.display().to_string());
    for (name, queue, extra) in listeners {
        text.push_str(&format!("[[listener]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nqueue = \"{queue}\"\n{extra}\n"));
    }
    let path = dir.join("orderly.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

impl Broker {
    /// Starts `orderly serve --config` and waits for its "ready" line.
    pub fn start(config: &Path) -> Broker {
        Self::start_customized(config, |_| {})
    }

    /// As [`Broker::start`], with a chance to adjust the command (limits, environment).
    pub fn start_customized(config: &Path, customize: impl FnOnce(&mut Command)) -> Broker {
        let dir = config.parent().expect("config in a dir");
        let stderr_log = dir.join(format!(
            "stderr-{}.log",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let err = std::fs::File::create(&stderr_log).expect("stderr file");
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--config"])
            .arg(config)
            .env("ORDERLY_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(err);
        customize(&mut cmd);
        let mut child = cmd.spawn().expect("spawn orderly");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let mut addrs = Vec::new();
        let mut data_dir = PathBuf::new();
        loop {
            let line = match lines.next() {
                Some(Ok(l)) => l,
                _ => panic!(
                    "orderly exited before ready; stderr: {}",
                    std::fs::read_to_string(&stderr_log).unwrap_or_default()
                ),
            };
            if let Some(rest) = line.strip_prefix("orderly: listener ") {
                let mut parts = rest.split_whitespace();
                let name = parts.next().unwrap().to_string();
                assert_eq!(parts.next(), Some("on"));
                addrs.push((name, parts.next().unwrap().parse().unwrap()));
            } else if let Some(d) = line.strip_prefix("orderly: data dir ") {
                data_dir = PathBuf::from(d);
            } else if line == "orderly: ready" {
                break;
            }
        }
        // Keep draining stdout so the broker never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Broker {
            child,
            addrs,
            data_dir,
            config: config.to_path_buf(),
            stderr_log,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0].1
    }

    pub fn addr_of(&self, listener: &str) -> SocketAddr {
        self.addrs
            .iter()
            .find(|(n, _)| n == listener)
            .map(|(_, a)| *a)
            .expect("listener")
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status. A broker that does not stop fails the
    /// test instead of hanging the run.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.terminate_within(std::time::Duration::from_secs(60))
            .expect("broker exits within 60 s of SIGTERM")
    }

    /// SIGTERM, then the exit status if the broker exits within `limit`
    /// (`None`: still running; Drop kills it). std has no waitpid with a
    /// timeout, so this polls `try_wait`.
    pub fn terminate_within(
        &mut self,
        limit: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        // SAFETY: kill(2) with our own child's pid and a valid signal number.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `orderly inspect` output lines as (offset, bytes, control_id, message_type).
pub fn inspect(data_dir: &Path, queue: &str) -> Vec<(u64, usize, String, String)> {
    let out = Command::new(BIN)
        .args(["inspect", queue, "--data-dir"])
        .arg(data_dir)
        .output()
        .expect("inspect");
    assert!(
        out.status.success(),
        "inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            assert_eq!(f.len(), 5, "inspect line has 5 fields: {l}");
            (
                f[0].parse().unwrap(),
                f[2].parse().unwrap(),
                f[3].to_string(),
                f[4].to_string(),
            )
        })
        .collect()
}

/// A blocking MLLP client.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    decoder: FrameDecoder,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
            decoder: FrameDecoder::for_acks(1 << 24),
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    pub fn send(&mut self, msg: &[u8]) {
        let mut f = Vec::new();
        encode_frame(msg, &mut f);
        self.send_raw(&f);
    }

    /// The next ACK frame, or `None` if the server closed the connection.
    pub fn recv(&mut self) -> Option<Vec<u8>> {
        let mut chunk = [0u8; 8192];
        loop {
            if let Decoded::Frame(r) = self.decoder.decode(&self.buf) {
                let f = self.buf[r].to_vec();
                self.decoder.compact(&mut self.buf);
                return Some(f);
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("reading ACK: {e}"),
            }
        }
    }

    /// Sends and returns (MSA-1, MSA-2).
    pub fn roundtrip(&mut self, msg: &[u8]) -> (AckCode, String) {
        self.send(msg);
        let ack = self.recv().expect("an ACK");
        ack_of(&ack)
    }

    /// True once the server has closed the connection (EOF or reset).
    pub fn is_closed_by_server(&mut self) -> bool {
        self.recv().is_none()
    }
}

pub fn ack_of(ack: &[u8]) -> (AckCode, String) {
    let a = parse_ack(ack).expect("parseable ACK");
    (a.code, String::from_utf8_lossy(a.control_id).into_owned())
}

/// A small valid ORU^R01 with control id `id`, about `size` bytes.
pub fn oru(id: &str, size: usize) -> Vec<u8> {
    let mut m = format!("MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261123090000||ORU^R01|{id}|P|2.5\rPID|1||MRN{id}^^^HOSP^MR||DOE^JANE\rOBX|1|TX|NOTE||").into_bytes();
    while m.len() + 1 < size {
        m.push(b'x');
    }
    m.push(b'\r');
    m
}

pub fn is_positive(code: AckCode) -> bool {
    code.is_positive()
}

/// MSA-1 of an accepted message from a listener in the default
/// `ack_mode = "auto"`, from its MSH-15 alone (HL7 tables 0155 and 0008):
/// AL, ER, SU ask for enhanced mode (CA); empty or NE get original mode
/// (AA). MSH-15 is read with this splitter, not Orderly's parser; a field of
/// blanks (a padded template) counts as not valued.
pub fn accept_code_for(msg: &[u8]) -> &'static str {
    let at = msg
        .windows(3)
        .position(|w| w == b"MSH")
        .expect("a message has MSH");
    let line = msg[at..]
        .split(|&b| b == b'\r' || b == b'\n')
        .next()
        .unwrap_or_default();
    let sep = line[3];
    let msh15 = line.split(|&b| b == sep).nth(14).unwrap_or_default();
    match String::from_utf8_lossy(msh15).trim() {
        "AL" | "ER" | "SU" => "CA",
        "" | "NE" => "AA",
        other => panic!("MSH-15 {other:?} is not a table 0155 value this test covers"),
    }
}
