//! orderly-ackd: a NON-DURABLE MLLP server that answers every frame with an
//! AA at once, storing nothing. It is the comparison baseline for the load
//! tool (the ceiling of "MLLP + ACK building" on this machine) and a test
//! downstream that can add ACK latency.
//!
//!   orderly-ackd --listen 127.0.0.1:6661 [--ack-delay-ms 1]
use clap::Parser;
use orderly::hl7::ack::{build_ack, AckKind, Hl7Timestamp};
use orderly::hl7::parse_header;
use orderly::mllp::{Decoded, FrameDecoder, END_BLOCK, START_BLOCK, TRAILER};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
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

type Latencies = std::sync::Arc<std::sync::Mutex<Vec<u64>>>;

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

/// Latency samples kept; later ones are dropped (a run of this many
/// messages is far longer than any benchmark here), so memory is bounded.
const LATENCY_SAMPLES_MAX: usize = 20_000_000;

fn report_latencies(lat: Latencies, path: std::path::PathBuf) {
    let mut reported = usize::MAX;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        // Nothing new since the last report: skip the copy and the sort.
        if lat.lock().map(|v| v.len()).unwrap_or(0) == reported {
            continue;
        }
        let mut v = lat.lock().map(|v| v.clone()).unwrap_or_default();
        reported = v.len();
        v.sort_unstable();
        let pct = |p: f64| {
            if v.is_empty() {
                0
            } else {
                v[((v.len() - 1) as f64 * p) as usize]
            }
        };
        let _ = std::fs::write(&path, format!("{} {} {}\n", v.len(), pct(0.5), pct(0.99)));
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
    let latencies: Latencies = Default::default();
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

fn serve(mut stream: TcpStream, delay: Duration, latencies: Option<Latencies>) {
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
                        if let Ok(mut v) = l.lock() {
                            if v.len() < LATENCY_SAMPLES_MAX {
                                v.push(now_us().saturating_sub(sent));
                            }
                        }
                    }
                    out.push(START_BLOCK);
                    let header = parse_header(&buf[range]).ok();
                    let kind = if header.is_some() {
                        AckKind::Accept
                    } else {
                        AckKind::Reject
                    };
                    build_ack(
                        header.as_ref(),
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
