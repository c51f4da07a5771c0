//! orderly-ackd: a NON-DURABLE MLLP server that answers every frame with an
//! AA at once, storing nothing. It is the comparison baseline for the load
//! tool (the ceiling of "MLLP + ACK building" on this machine) and a test
//! downstream that can add ACK latency.
//!
//!   orderly-ackd --listen 127.0.0.1:6661 [--ack-delay-ms 1]
use clap::Parser;
use orderly::hl7::ack::{build_ack, AckKind, AckMode, Hl7Timestamp};
use orderly::hl7::parse_header;
use orderly::mllp::{Decoded, FrameDecoder, END_BLOCK, START_BLOCK, TRAILER};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "orderly-ackd",
    about = "Immediate-ACK MLLP server (non-durable baseline)"
)]
struct Args {
    /// Address to listen on (port 0 picks one; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:6661")]
    listen: String,
    /// Delay before answering each read's worth of frames (each frame, for a
    /// lockstep sender), in milliseconds.
    #[arg(long, default_value_t = 0)]
    ack_delay_ms: u64,
    /// Every second, write `count p50_us p99_us` of end-to-end latency (from
    /// the `SENT_US=` stamp orderly-load puts in messages) to this file.
    #[arg(long)]
    latency_out: Option<std::path::PathBuf>,
}

fn sent_us(msg: &[u8]) -> Option<u64> {
    let at = msg.windows(8).position(|w| w == b"SENT_US=")? + 8;
    let end = msg[at..].iter().position(|&b| b == b';')? + at;
    std::str::from_utf8(&msg[at..end]).ok()?.parse().ok()
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// End-to-end latencies in µs as a log-linear histogram: exact below
/// 1,024 µs, then 512 buckets per power of two (under 0.2 % error), up to
/// 2^41 µs. Fixed size and lock-free: recording is one atomic add and a
/// report needs no copy or sort, so the sink's own cost stays flat however
/// long the run (it shares the machine with the broker it measures).
struct Histogram {
    counts: Vec<AtomicU64>,
}

/// Values below 2^EXACT_BITS µs get a bucket each.
const EXACT_BITS: u32 = 10;
const EXACT_BELOW: u64 = 1 << EXACT_BITS;
/// Buckets per power of two above that: 2^SUB_BITS.
const SUB_BITS: u32 = 9;
const TOP_EXP: u32 = 40;
const _: () = assert!(SUB_BITS <= EXACT_BITS && EXACT_BITS <= TOP_EXP);

impl Histogram {
    fn new() -> Histogram {
        let n = EXACT_BELOW as usize + ((TOP_EXP - EXACT_BITS + 1) << SUB_BITS) as usize;
        Histogram {
            counts: (0..n).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn bucket(v: u64) -> usize {
        if v < EXACT_BELOW {
            return v as usize;
        }
        let v = v.min((1u64 << (TOP_EXP + 1)) - 1);
        let exp = 63 - v.leading_zeros();
        let sub = (v >> (exp - SUB_BITS)) & ((1 << SUB_BITS) - 1);
        EXACT_BELOW as usize + (((exp - EXACT_BITS) as usize) << SUB_BITS) + sub as usize
    }

    /// The smallest value that falls in bucket `i`.
    fn lower_bound(i: usize) -> u64 {
        if (i as u64) < EXACT_BELOW {
            return i as u64;
        }
        let k = i - EXACT_BELOW as usize;
        let exp = EXACT_BITS + (k >> SUB_BITS) as u32;
        let sub = (k & ((1 << SUB_BITS) - 1)) as u64;
        (1u64 << exp) + (sub << (exp - SUB_BITS))
    }

    fn record(&self, v: u64) {
        self.counts[Self::bucket(v)].fetch_add(1, Ordering::Relaxed);
    }

    fn total(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// (count, value at each of `ps`), each the lower bound of the bucket
    /// holding the sample of rank floor((count - 1) * p).
    fn percentiles(&self, ps: &[f64]) -> (u64, Vec<u64>) {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        let values = ps
            .iter()
            .map(|p| {
                if total == 0 {
                    return 0;
                }
                let rank = ((total - 1) as f64 * p) as u64;
                let mut seen = 0;
                for (i, c) in counts.iter().enumerate() {
                    seen += c;
                    if seen > rank {
                        return Self::lower_bound(i);
                    }
                }
                0
            })
            .collect();
        (total, values)
    }
}

fn report_latencies(lat: Arc<Histogram>, path: std::path::PathBuf) {
    let mut reported = u64::MAX;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        if lat.total() == reported {
            continue;
        }
        let (n, v) = lat.percentiles(&[0.5, 0.99]);
        reported = n;
        let _ = std::fs::write(&path, format!("{n} {} {}\n", v[0], v[1]));
    }
}

fn main() {
    let args = Args::parse();
    let listener = match TcpListener::bind(&args.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("orderly-ackd: cannot listen on {}: {e}", args.listen);
            std::process::exit(1);
        }
    };
    println!(
        "orderly-ackd: listening on {}",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default()
    );
    let delay = Duration::from_millis(args.ack_delay_ms);
    let latencies = Arc::new(Histogram::new());
    if let Some(path) = args.latency_out.clone() {
        let l = latencies.clone();
        std::thread::spawn(move || report_latencies(l, path));
    }
    let record = args.latency_out.is_some();
    for stream in listener.incoming().flatten() {
        let l = latencies.clone();
        std::thread::spawn(move || serve(stream, delay, record.then_some(l)));
    }
}

fn serve(mut stream: TcpStream, delay: Duration, latencies: Option<Arc<Histogram>>) {
    stream.set_nodelay(true).ok();
    let (mut buf, mut out) = (Vec::new(), Vec::new());
    let mut decoder = FrameDecoder::new(16 << 20);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut seq = 0u64;
    loop {
        loop {
            match decoder.decode(&buf) {
                Decoded::Frame(range) => {
                    seq += 1;
                    if let (Some(l), Some(sent)) = (&latencies, sent_us(&buf[range.clone()])) {
                        l.record(now_us().saturating_sub(sent));
                    }
                    out.push(START_BLOCK);
                    let header = parse_header(&buf[range]).ok();
                    let kind = if header.is_some() {
                        AckKind::Accept
                    } else {
                        AckKind::Error
                    };
                    build_ack(
                        header.as_ref(),
                        AckMode::Original,
                        kind,
                        None,
                        format!("D{seq}").as_bytes(),
                        Hl7Timestamp::from_unix_seconds(0),
                        &mut out,
                    );
                    out.extend_from_slice(&[END_BLOCK, TRAILER]);
                }
                Decoded::NeedMore => break,
                Decoded::Invalid(_) => return,
                _ => {}
            }
        }
        decoder.compact(&mut buf);
        if !out.is_empty() {
            if !delay.is_zero() {
                std::thread::sleep(delay);
            }
            if stream.write_all(&out).is_err() {
                return;
            }
            out.clear();
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Histogram;

    /// Percentiles agree with sorting the samples, within the bucket width.
    #[test]
    fn histogram_percentiles_match_a_sort_within_0_2_percent() {
        let h = Histogram::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut samples = Vec::new();
        for i in 0..200_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly sub-millisecond, a tail up to ~1 s, and a few exact zeros.
            let v = match i % 100 {
                0 => 0,
                1..=3 => x % 1_000_000,
                _ => 200 + x % 2_000,
            };
            h.record(v);
            samples.push(v);
        }
        samples.sort_unstable();
        for p in [0.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let exact = samples[((samples.len() - 1) as f64 * p) as usize];
            let (n, got) = h.percentiles(&[p]);
            assert_eq!(n, samples.len() as u64);
            assert!(
                got[0] <= exact && exact - got[0] <= exact / 500,
                "p{p}: histogram {} vs exact {exact}",
                got[0]
            );
        }
    }

    #[test]
    fn buckets_and_lower_bounds_agree() {
        for v in (0..5_000u64).chain([1 << 20, (1 << 20) + 12_345, u64::MAX / 2]) {
            let b = Histogram::bucket(v);
            let lo = Histogram::lower_bound(b);
            assert!(lo <= v, "{v} in bucket {b} starting at {lo}");
            assert!(
                b + 1 == Histogram::new().counts.len() || Histogram::lower_bound(b + 1) > v,
                "{v} belongs to a later bucket than {b}"
            );
        }
    }
}
