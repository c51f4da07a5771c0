//! orderly-load: an MLLP load generator that checks every ACK.
//!
//! N connections, each lockstep (window 1) or pipelined (window W), sending
//! HL7 ORU^R01 messages of a chosen size for a count or a duration. Prints
//! messages/s and ACK latency percentiles, and counts every ACK that is not
//! positive or whose MSA-2 is not the control id just sent.
//!
//!   orderly-load --to 127.0.0.1:2575 --connections 32 --window 1 --size 1500 --duration-s 10
//!
//! With `--protocol redis` the same messages, in the same lockstep shape,
//! go to a Redis server as `XADD <stream> * m <message>` (RESP), each
//! answered with the new entry's id: the baseline Orderly's ingest is
//! compared with (Redis with `appendfsync always` syncs before answering).
use clap::Parser;
use orderly::hl7::ack::parse_ack;
use orderly::mllp::{encode_frame, Decoded, FrameDecoder};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser, Clone)]
#[command(name = "orderly-load", about = "MLLP load generator with ACK checking")]
struct Args {
    /// Server address.
    #[arg(long)]
    to: SocketAddr,
    /// Concurrent connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Messages in flight per connection (1 = lockstep).
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Message size in bytes.
    #[arg(long, default_value_t = 1500)]
    size: usize,
    /// Messages per connection (overrides --duration-s).
    #[arg(long)]
    count: Option<u64>,
    /// Seconds to run when no --count is given.
    #[arg(long, default_value_t = 10)]
    duration_s: u64,
    /// Extra idle connections to open and hold during the run (memory tests).
    #[arg(long, default_value_t = 0)]
    idle: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for any single ACK before giving up.
    #[arg(long, default_value_t = 30)]
    ack_timeout_s: u64,
    /// Distinct patient ids (PID-3.1) to cycle through, for partitioned lanes.
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// `mllp` (Orderly, any MLLP server) or `redis` (XADD to a Redis stream).
    #[arg(long, default_value = "mllp")]
    protocol: Protocol,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Protocol {
    Mllp,
    Redis,
}

#[derive(Default)]
struct ConnResult {
    sent: u64,
    positive: u64,
    negative: u64,
    mismatched: u64,
    latencies_us: Vec<u32>,
    error: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.window == 0 || args.connections == 0 || args.size < 200 {
        eprintln!("orderly-load: --window and --connections must be >= 1 and --size >= 200");
        return ExitCode::from(2);
    }
    let idle: Vec<TcpStream> = (0..args.idle)
        .filter_map(|_| TcpStream::connect(args.to).ok())
        .collect();
    if idle.len() < args.idle {
        eprintln!(
            "orderly-load: opened only {} of {} idle connections",
            idle.len(),
            args.idle
        );
    }
    let deadline = Instant::now() + Duration::from_secs(args.duration_s);
    let start = Instant::now();
    let handles: Vec<_> = (0..args.connections)
        .map(|c| {
            let a = args.clone();
            std::thread::spawn(move || run_connection(&a, c, deadline))
        })
        .collect();
    let results: Vec<ConnResult> = handles
        .into_iter()
        .map(|h| {
            h.join().unwrap_or_else(|_| ConnResult {
                error: Some("thread panicked".into()),
                ..Default::default()
            })
        })
        .collect();
    let elapsed = start.elapsed().as_secs_f64();
    drop(idle);
    report(&args, &results, elapsed)
}

fn report(args: &Args, results: &[ConnResult], elapsed: f64) -> ExitCode {
    let sum = |f: fn(&ConnResult) -> u64| results.iter().map(f).sum::<u64>();
    let (positive, negative, mismatched) = (
        sum(|r| r.positive),
        sum(|r| r.negative),
        sum(|r| r.mismatched),
    );
    let mut lat: Vec<u32> = results
        .iter()
        .flat_map(|r| r.latencies_us.iter().copied())
        .collect();
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() - 1) as f64 * p).round() as usize]
        }
    };
    let rate = positive as f64 / elapsed;
    // The load tool shares the machine with the server it measures: its own
    // CPU per answered message says how much of the host the client took.
    let client_cpu_us_per_msg = own_cpu_us() as f64 / (positive.max(1)) as f64;
    let errors: Vec<&str> = results.iter().filter_map(|r| r.error.as_deref()).collect();
    if args.json {
        println!(
            "{{\"connections\":{},\"window\":{},\"size\":{},\"seconds\":{elapsed:.3},\"acked\":{positive},\"negative\":{negative},\"mismatched\":{mismatched},\"msgs_per_s\":{rate:.1},\"p50_us\":{},\"p99_us\":{},\"p999_us\":{},\"errors\":{},\"client_cpu_us_per_msg\":{client_cpu_us_per_msg:.1}}}",
            args.connections, args.window, args.size, pct(0.5), pct(0.99), pct(0.999), errors.len()
        );
    } else {
        println!(
            "connections={} window={} size={}B seconds={elapsed:.2}",
            args.connections, args.window, args.size
        );
        println!(
            "acked={positive} negative={negative} mismatched_msa2={mismatched} errors={}",
            errors.len()
        );
        println!("throughput: {rate:.0} msgs/s");
        println!(
            "ack latency: p50={}us p99={}us p999={}us",
            pct(0.5),
            pct(0.99),
            pct(0.999)
        );
        println!("load tool CPU: {client_cpu_us_per_msg:.1} us per answered message");
    }
    for e in &errors {
        eprintln!("orderly-load: connection error: {e}");
    }
    if negative == 0 && mismatched == 0 && errors.is_empty() && positive > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// User + system CPU this process used so far, in microseconds (0 if the
/// kernel will not say).
fn own_cpu_us() -> u64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return 0;
    }
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(usage.ru_utime) + us(usage.ru_stime)
}

/// Eight hex digits telling this run's messages from every earlier run's:
/// a broker deduplicates by control id (MSH-3, MSH-4, MSH-10 by default),
/// so ids reused across runs with new bytes would be refused as conflicts.
fn run_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        format!(
            "{:08x}",
            (ms ^ (u64::from(std::process::id()) << 24)) as u32
        )
    })
}

/// An ORU^R01 of exactly `size` bytes with control id `id`, patient `key`,
/// and its send time (µs since the epoch) in OBX-5 as `SENT_US=<n>;` so a
/// downstream can measure end-to-end latency.
fn message(id: &str, key: u64, size: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"MSH|^~\\&|LOADGEN|LAB|ORDERLY|HOSP|20261123090000||ORU^R01^ORU_R01|");
    out.extend_from_slice(id.as_bytes());
    let sent_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let rest = format!("|P|2.5.1\rPID|1||MRN{key}^^^HOSP^MR||DOE^JANE||19700101|F\rOBR|1||LAB1|CBC\rOBX|1|TX|NOTE||SENT_US={sent_us};");
    out.extend_from_slice(rest.as_bytes());
    // Padding: byte i is b'a' + i % 26, copied a slice at a time (a byte-wise
    // loop made this tool a visible share of the machine's CPU, which the
    // broker it measures then lacked).
    const ALPHABET: &[u8; 26] = b"abcdefghijklmnopqrstuvwxyz";
    while out.len() + 1 < size {
        let phase = out.len() % 26;
        let take = (26 - phase).min(size - 1 - out.len());
        out.extend_from_slice(&ALPHABET[phase..phase + take]);
    }
    out.push(b'\r');
}

fn run_connection(args: &Args, conn: usize, deadline: Instant) -> ConnResult {
    let mut r = ConnResult::default();
    if let Err(e) = drive(args, conn, deadline, &mut r) {
        r.error = Some(e);
    }
    r
}

fn drive(args: &Args, conn: usize, deadline: Instant, r: &mut ConnResult) -> Result<(), String> {
    let mut stream = TcpStream::connect(args.to).map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).ok();
    stream
        .set_read_timeout(Some(Duration::from_secs(args.ack_timeout_s)))
        .ok();
    let mut inflight: std::collections::VecDeque<(String, Instant)> = Default::default();
    let (mut msg, mut frame, mut rbuf) = (Vec::new(), Vec::new(), Vec::new());
    let mut chunk = vec![0u8; 16 * 1024];
    let mut decoder = FrameDecoder::for_acks(1 << 20);
    let more = |r: &ConnResult| match args.count {
        Some(n) => r.sent < n,
        None => Instant::now() < deadline,
    };
    loop {
        while inflight.len() < args.window && more(r) {
            let id = format!("L{}-{conn}-{}", run_id(), r.sent);
            message(
                &id,
                (conn as u64 * 7919 + r.sent) % args.keys.max(1),
                args.size,
                &mut msg,
            );
            frame.clear();
            match args.protocol {
                Protocol::Mllp => encode_frame(&msg, &mut frame),
                Protocol::Redis => resp_xadd(&msg, conn, &mut frame),
            }
            let sent_at = Instant::now();
            stream.write_all(&frame).map_err(|e| format!("send: {e}"))?;
            inflight.push_back((id, sent_at));
            r.sent += 1;
        }
        let Some((id, sent_at)) = inflight.pop_front() else {
            return Ok(());
        };
        if args.protocol == Protocol::Redis {
            let ok = read_resp(&mut stream, &mut rbuf, &mut chunk)?;
            r.latencies_us
                .push(sent_at.elapsed().as_micros().min(u32::MAX as u128) as u32);
            if ok {
                r.positive += 1;
            } else {
                r.negative += 1;
            }
            continue;
        }
        let ack = read_ack(&mut stream, &mut rbuf, &mut chunk, &mut decoder)?;
        r.latencies_us
            .push(sent_at.elapsed().as_micros().min(u32::MAX as u128) as u32);
        match parse_ack(&ack) {
            Ok(a) if !a.acknowledges(id.as_bytes()) => r.mismatched += 1,
            Ok(a) if a.code.is_positive() => r.positive += 1,
            _ => r.negative += 1,
        }
    }
}

/// `XADD orderly-load-<conn> * m <message>` as a RESP array.
fn resp_xadd(msg: &[u8], conn: usize, out: &mut Vec<u8>) {
    let stream = format!("orderly-load-{conn}");
    let parts: [&[u8]; 5] = [b"XADD", stream.as_bytes(), b"*", b"m", msg];
    out.extend_from_slice(format!("*{}\r\n", parts.len()).as_bytes());
    for p in parts {
        out.extend_from_slice(format!("${}\r\n", p.len()).as_bytes());
        out.extend_from_slice(p);
        out.extend_from_slice(b"\r\n");
    }
}

/// Reads one RESP reply: a bulk string (the new entry id) is success, an
/// error reply (`-ERR ...`) is not.
fn read_resp(stream: &mut TcpStream, buf: &mut Vec<u8>, chunk: &mut [u8]) -> Result<bool, String> {
    loop {
        if let Some(line_end) = buf.windows(2).position(|w| w == b"\r\n") {
            let kind = buf[0];
            let line = String::from_utf8_lossy(&buf[1..line_end]).into_owned();
            let total = match kind {
                b'$' => {
                    let n: i64 = line
                        .parse()
                        .map_err(|_| format!("bad RESP length {line}"))?;
                    line_end + 2 + if n < 0 { 0 } else { n as usize + 2 }
                }
                b'+' | b'-' | b':' => line_end + 2,
                other => return Err(format!("unexpected RESP reply type {:?}", other as char)),
            };
            if buf.len() >= total {
                buf.drain(..total);
                return Ok(kind == b'$' || kind == b'+');
            }
        }
        match stream.read(chunk) {
            Ok(0) => return Err("server closed the connection".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("waiting for the reply: {e}")),
        }
    }
}

fn read_ack(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
    decoder: &mut FrameDecoder,
) -> Result<Vec<u8>, String> {
    loop {
        match decoder.decode(buf) {
            Decoded::Frame(range) => {
                let ack = buf[range].to_vec();
                decoder.compact(buf);
                return Ok(ack);
            }
            Decoded::Invalid(e) => return Err(format!("framing: {e}")),
            _ => {}
        }
        match stream.read(chunk) {
            Ok(0) => return Err("server closed the connection".into()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("waiting for ACK: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::message;

    #[test]
    fn messages_have_the_asked_size_and_the_alphabet_padding() {
        for size in [200, 201, 226, 1500, 4096] {
            let mut out = Vec::new();
            message("L0-1", 7, size, &mut out);
            assert_eq!(out.len(), size);
            assert_eq!(out.last(), Some(&b'\r'));
            let stamp_end = out.windows(1).rposition(|w| w == b";").unwrap() + 1;
            for (i, &b) in out.iter().enumerate().take(size - 1).skip(stamp_end) {
                assert_eq!(
                    b,
                    b'a' + (i % 26) as u8,
                    "byte {i} of a {size}-byte message"
                );
            }
            assert!(orderly::hl7::parse_header(&out).is_ok());
        }
    }
}
