//! The `orderly` command line: parses arguments and calls into the library.
use clap::{Parser, Subcommand};
use orderly::check::{self, Outcome};
use orderly::config::Config;
use orderly::hl7::ack::parse_ack;
use orderly::layout::DataDir;
use orderly::mllp::{encode_frame, Decoded, FrameDecoder, FRAME_BYTES_MAX_DEFAULT};
use orderly::server::Server;
use orderly::storage::FsStorage;
use orderly::wal::meta::{MetaKey, MetaView};
use orderly::wal::{inspect, Offset, Writer};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Orderly: a durable, ordered HL7 v2 message broker (MLLP in, MLLP out).
#[derive(Parser)]
#[command(name = "orderly", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the broker (the embedded default config when no --config is given).
    Serve {
        /// TOML configuration file.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print one line per stored record: offset timestamp_ms bytes control_id message_type.
    Inspect {
        /// Queue name.
        queue: String,
        /// Data directory (default: from --config, else ./orderly-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Configuration file whose data_dir to use.
        #[arg(long)]
        config: Option<PathBuf>,
        /// First offset to print.
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// Most records to print.
        #[arg(long)]
        limit: Option<u64>,
        /// Read the dead-letter queue of the destination named by QUEUE instead.
        #[arg(long)]
        dlq: bool,
    },
    /// Check every queue, dead-letter log and cursor file; non-zero exit on damage.
    Verify {
        /// Data directory (default: from --config, else ./orderly-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Configuration file whose data_dir to use.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Operator actions against the running broker (found through its data_dir).
    Ctl {
        /// Configuration file of the running broker (default: the embedded default).
        #[arg(long, global = true)]
        config: Option<PathBuf>,
        /// Data directory of the running broker (overrides --config).
        #[arg(long, global = true)]
        data_dir: Option<PathBuf>,
        #[command(subcommand)]
        action: CtlAction,
    },
    /// Send each file as one HL7 message over MLLP and print each ACK.
    Send {
        /// Broker address, HOST:PORT.
        #[arg(long)]
        to: String,
        /// Seconds to wait for each ACK.
        #[arg(long, default_value_t = 30)]
        timeout_s: u64,
        /// Files, one message each (LF and CRLF segment ends become CR).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CtlAction {
    /// Per destination and lane: committed offset, log end, lag, blocked head, circuit, paused.
    Status,
    /// Stop delivering to a destination (messages keep being accepted and stored).
    Pause { destination: String },
    /// Resume a paused destination.
    Resume { destination: String },
    /// Retry a failed head now (all lanes with one, or --lane N).
    Retry {
        destination: String,
        #[arg(long)]
        lane: Option<u16>,
    },
    /// Move a lane's failed head to the dead-letter queue and continue.
    Skip {
        destination: String,
        #[arg(long)]
        lane: u16,
        /// Why (kept in the dead-letter record).
        #[arg(long)]
        reason: String,
    },
    /// Move a destination's cursors down (never up) and resume a halted one:
    /// the decision a cursor past the end of its queue waits for.
    ResetCursor {
        destination: String,
        /// Deliver every message appended from the queue's current end on.
        #[arg(
            long,
            conflicts_with = "to_offset",
            required_unless_present = "to_offset"
        )]
        to_log_end: bool,
        /// Deliver (again) every message from this offset on.
        #[arg(long)]
        to_offset: Option<u64>,
        /// Why (kept in the audit journal).
        #[arg(long)]
        reason: String,
    },
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => serve(config.as_deref()),
        Command::Inspect {
            queue,
            data_dir,
            config,
            from,
            limit,
            dlq,
        } => with_data_dir(data_dir, config, |dir| {
            let layout = DataDir::new(dir);
            let log_dir = if dlq {
                layout.dlq(&queue)
            } else {
                layout.queue(&queue)
            };
            inspect_queue(&log_dir, &queue, Offset(from), limit.unwrap_or(u64::MAX))
        }),
        Command::Verify { data_dir, config } => with_data_dir(data_dir, config, verify_all),
        Command::Send {
            to,
            timeout_s,
            files,
        } => send(&to, Duration::from_secs(timeout_s), &files),
        Command::Ctl {
            config,
            data_dir,
            action,
        } => with_data_dir(data_dir, config, |dir| ctl(dir, action)),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ORDERLY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .init();
}

fn load_config(path: Option<&Path>) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("orderly: configuration error: {e}");
        ExitCode::from(2)
    })
}

fn serve(config: Option<&Path>) -> ExitCode {
    let config = match load_config(config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let server = match Server::start(&config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("orderly: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    println!("orderly: config {}", config.source);
    println!("orderly: data dir {}", config.data_dir.display());
    for (name, addr, queue) in server.bound() {
        println!("orderly: listener {name} on {addr} -> queue {queue}");
    }
    println!("orderly: ready");
    let _ = std::io::stdout().flush();
    let handle = server.shutdown_handle();
    if let Err(e) = install_signal_handler(handle) {
        eprintln!("orderly: cannot install signal handlers: {e}");
        return ExitCode::from(1);
    }
    match server.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orderly: {e}");
            ExitCode::from(1)
        }
    }
}

/// SIGTERM and SIGINT start a graceful shutdown.
fn install_signal_handler(handle: orderly::server::ShutdownHandle) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("orderly-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(signal = sig, "signal received");
                handle.shutdown();
            }
        })?;
    Ok(())
}

fn with_data_dir(
    data_dir: Option<PathBuf>,
    config: Option<PathBuf>,
    f: impl FnOnce(&Path) -> ExitCode,
) -> ExitCode {
    let dir = match (data_dir, config) {
        (Some(d), _) => d,
        (None, Some(c)) => match load_config(Some(&c)) {
            Ok(cfg) => cfg.data_dir,
            Err(code) => return code,
        },
        (None, None) => PathBuf::from("./orderly-data"),
    };
    f(&dir)
}

/// A reason must be one line of text: it goes into records and the audit journal.
fn valid_reason(reason: &str) -> bool {
    !reason.trim().is_empty() && !reason.contains(['\t', '\n'])
}

fn ctl(data_dir: &Path, action: CtlAction) -> ExitCode {
    let lane_text;
    let target_text;
    let words: Vec<&str> = match &action {
        CtlAction::Status => vec!["status"],
        CtlAction::Pause { destination } => vec!["pause", destination],
        CtlAction::Resume { destination } => vec!["resume", destination],
        CtlAction::Retry {
            destination,
            lane: None,
        } => vec!["retry", destination],
        CtlAction::Retry {
            destination,
            lane: Some(l),
        } => {
            lane_text = l.to_string();
            vec!["retry", destination, &lane_text]
        }
        CtlAction::Skip {
            destination,
            lane,
            reason,
        } => {
            if !valid_reason(reason) {
                eprintln!("orderly: --reason must be non-empty text on one line");
                return ExitCode::from(2);
            }
            lane_text = lane.to_string();
            vec!["skip", destination, &lane_text, reason]
        }
        CtlAction::ResetCursor {
            destination,
            to_offset,
            reason,
            ..
        } => {
            if !valid_reason(reason) {
                eprintln!("orderly: --reason must be non-empty text on one line");
                return ExitCode::from(2);
            }
            target_text = to_offset.map_or("log-end".to_string(), |o| o.to_string());
            vec!["reset-cursor", destination, &target_text, reason]
        }
    };
    match orderly::control::request(data_dir, &words) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("orderly: {e}");
            ExitCode::from(1)
        }
    }
}

fn inspect_queue(dir: &Path, queue: &str, from: Offset, limit: u64) -> ExitCode {
    if !dir.is_dir() {
        eprintln!("orderly: no log for `{queue}` at {}", dir.display());
        return ExitCode::from(1);
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut corrupt = 0u64;
    let writer = writer_of(&DataDir::new(data_dir_of(dir)));
    let result =
        inspect::for_each_record(&FsStorage, dir, from, limit, writer, |item| match item {
            inspect::Item::Record(r) => {
                let meta = MetaView::new(r.meta);
                let field = |k| {
                    meta.get(k)
                        .filter(|v: &&[u8]| !v.is_empty())
                        .map(|v| String::from_utf8_lossy(v).replace(char::is_whitespace, "_"))
                        .unwrap_or_else(|| "-".into())
                };
                let _ = writeln!(
                    out,
                    "{} {} {} {} {}",
                    r.offset,
                    r.timestamp_ms,
                    r.payload.len(),
                    field(MetaKey::ControlId),
                    field(MetaKey::MessageType)
                );
            }
            inspect::Item::Corrupt {
                offset,
                segment,
                position,
                reason,
            } => {
                corrupt += 1;
                let _ = writeln!(
                    out,
                    "{offset} CORRUPT segment={} position={position} reason={}",
                    segment.display(),
                    reason.replace(' ', "_")
                );
            }
        });
    let _ = out.flush();
    match result {
        Ok(_) if corrupt == 0 => ExitCode::SUCCESS,
        Ok(_) => {
            eprintln!(
                "orderly: {corrupt} unreadable record(s); run `orderly verify` for a full report"
            );
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("orderly: {e}");
            ExitCode::from(1)
        }
    }
}

/// Whether a broker is writing the data directory (it holds the lock); the
/// active segments' tails may then be in flight.
fn writer_of(layout: &DataDir) -> Writer {
    if check::broker_running(layout) {
        eprintln!(
            "orderly: a broker is running on {}: the newest records may still be being written",
            layout.root().display()
        );
        Writer::Running
    } else {
        Writer::Stopped
    }
}

/// The data directory a queue or dead-letter log directory lives in.
fn data_dir_of(log_dir: &Path) -> &Path {
    log_dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."))
}

fn verify_all(data_dir: &Path) -> ExitCode {
    let layout = DataDir::new(data_dir);
    let writer = writer_of(&layout);
    let checked = match check::data_dir(&FsStorage, &layout, writer) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("orderly: cannot read {}: {e}", data_dir.display());
            return ExitCode::from(1);
        }
    };
    if checked.is_empty() {
        println!("nothing to verify under {}", data_dir.display());
    }
    let mut damaged = false;
    for c in &checked {
        print_checked(c);
        damaged |= !c.is_clean();
    }
    if damaged {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn print_checked(c: &check::Checked) {
    let label = c.kind.label();
    let name = &c.name;
    match &c.outcome {
        Outcome::Log(report) => {
            let range = match (report.first_offset, report.next_offset) {
                (Some(a), Some(b)) => format!("offsets {a}..{b}"),
                _ => "empty".into(),
            };
            let verdict = if report.is_clean() { "OK" } else { "CORRUPT" };
            println!(
                "{label} {name}: {verdict}: {} segment(s), {} record(s), {} unreadable record(s), {range}",
                report.segments, report.records, report.unreadable
            );
            for p in &report.problems {
                println!(
                    "  problem: {} at byte {}: {}",
                    p.file.display(),
                    p.position,
                    p.what
                );
            }
            for n in &report.notes {
                println!("  note: {n}");
            }
        }
        Outcome::Cursors(r) => {
            let lanes: Vec<String> = r
                .cursors
                .iter()
                .map(|c| match &c.head {
                    None => c.next_offset.to_string(),
                    Some(h) => format!("{}({})", c.next_offset, h.class.name()),
                })
                .collect();
            println!(
                "{label} {name}: OK: {} lane(s) at [{}], routing {}",
                r.lanes,
                lanes.join(", "),
                r.routing
                    .as_deref()
                    .unwrap_or("(version 1 file: not recorded)")
            );
            if r.torn_bytes > 0 {
                println!(
                    "  note: {} byte(s) of a torn last commit (its deliveries repeat)",
                    r.torn_bytes
                );
            }
        }
        Outcome::Unusable(reason) => {
            println!("{label} {name}: CORRUPT: {}: {reason}", c.path.display());
        }
    }
}

fn send(to: &str, timeout: Duration, files: &[PathBuf]) -> ExitCode {
    let addr = match to.to_socket_addrs().ok().and_then(|mut a| a.next()) {
        Some(a) => a,
        None => {
            eprintln!("orderly: cannot resolve `{to}` (expected HOST:PORT)");
            return ExitCode::from(2);
        }
    };
    let mut stream = match TcpStream::connect_timeout(&addr, timeout) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("orderly: cannot connect to {addr}: {e}");
            return ExitCode::from(1);
        }
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let mut all_positive = true;
    let mut buf = Vec::new();
    let mut decoder = FrameDecoder::for_acks(FRAME_BYTES_MAX_DEFAULT);
    for file in files {
        let line = match send_one(&mut stream, file, &mut buf, &mut decoder) {
            Ok((positive, line)) => {
                all_positive &= positive;
                line
            }
            Err(e) => {
                all_positive = false;
                format!("ERROR {e}")
            }
        };
        println!("{}: {line}", file.display());
    }
    if all_positive {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Sends one file and returns (positive?, "MSA-1 MSA-2 text").
fn send_one(
    stream: &mut TcpStream,
    file: &Path,
    buf: &mut Vec<u8>,
    decoder: &mut FrameDecoder,
) -> Result<(bool, String), String> {
    let raw = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
    let mut framed = Vec::with_capacity(raw.len() + 3);
    encode_frame(&normalize_segment_ends(&raw), &mut framed);
    stream
        .write_all(&framed)
        .map_err(|e| format!("send failed: {e}"))?;
    let ack = read_frame(stream, buf, decoder)?;
    let parsed = parse_ack(&ack).map_err(|e| format!("unreadable ACK: {e}"))?;
    let text = parsed
        .text
        .or(parsed.error.and_then(|e| e.text))
        .map(|t| String::from_utf8_lossy(&t.decoded()).into_owned())
        .unwrap_or_default();
    let line = format!(
        "{} {} {}",
        parsed.code.as_str(),
        String::from_utf8_lossy(parsed.control_id),
        text
    );
    Ok((parsed.code.is_positive(), line.trim_end().to_string()))
}

fn read_frame(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    decoder: &mut FrameDecoder,
) -> Result<Vec<u8>, String> {
    let mut chunk = [0u8; 4096];
    loop {
        match decoder.decode(buf) {
            Decoded::Frame(r) => {
                let frame = buf[r].to_vec();
                decoder.compact(buf);
                return Ok(frame);
            }
            Decoded::NeedMore | Decoded::Junk { .. } => {}
            Decoded::Invalid(e) => return Err(format!("bad ACK framing: {e}")),
            _ => {}
        }
        let n = stream
            .read(&mut chunk)
            .map_err(|e| format!("no ACK: {e}"))?;
        if n == 0 {
            return Err("connection closed before the ACK".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// CRLF and LF segment ends become CR, as HL7 requires; a trailing newline
/// becomes the last segment's CR.
fn normalize_segment_ends(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' if raw.get(i + 1) == Some(&b'\n') => {
                out.push(b'\r');
                i += 1;
            }
            b'\n' => out.push(b'\r'),
            b => out.push(b),
        }
        i += 1;
    }
    out
}
