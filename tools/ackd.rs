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
#[command(name = "orderly-ackd", about = "Immediate-ACK MLLP server (non-durable baseline)")]
struct Args {
    /// Address to listen on (port 0 picks one; the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:6661")]
    listen: String,
    /// Delay before each ACK, in milliseconds.
    #[arg(long, default_value_t = 0)]
    ack_delay_ms: u64,
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
    println!("orderly-ackd: listening on {}", listener.local_addr().map(|a| a.to_string()).unwrap_or_default());
    let delay = Duration::from_millis(args.ack_delay_ms);
    for stream in listener.incoming().flatten() {
        std::thread::spawn(move || serve(stream, delay));
    }
}

fn serve(mut stream: TcpStream, delay: Duration) {
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
                    out.push(START_BLOCK);
                    let header = parse_header(&buf[range]).ok();
                    let kind = if header.is_some() { AckKind::Accept } else { AckKind::Reject };
                    build_ack(header.as_ref(), kind, None, format!("D{seq}").as_bytes(), Hl7Timestamp::from_unix_seconds(0), &mut out);
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
