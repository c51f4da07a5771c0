//! The `orderly` command line: parses arguments and dispatches to the
//! library (`server`, `report`, `client`, `control`). Nothing else lives here.
use clap::{Parser, Subcommand};
use orderly::client::{normalize_segment_ends, Client, ClientError};
use orderly::config::Config;
use orderly::hl7::ack::parse_ack;
use orderly::layout::DataDir;
use orderly::report::{inspect_queue, verify_all};
use orderly::server::Server;
use orderly::wal::Offset;
use std::io::Write;
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
    /// Check every queue, dead-letter log, delivery journal, replay log and
    /// cursor file; non-zero exit on damage.
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
    /// Everything known about the messages with this control id (MSH-10):
    /// received, stored, duplicates, and where each stands per destination.
    Trace {
        control_id: String,
        #[arg(long)]
        json: bool,
    },
    /// Dead-letter queues: list and show what delivery gave up on.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Send a window of a destination's messages again, through its
    /// rate-limited replay lane (skipping what it already acknowledged
    /// unless --force).
    Replay {
        #[arg(long)]
        destination: String,
        /// Received at or after: RFC 3339, or a duration ago (30m, 2h, 7d).
        #[arg(long)]
        since: String,
        /// Received before: RFC 3339, or a duration ago (default: now).
        #[arg(long)]
        until: Option<String>,
        /// MSH-9: `ORU`, or `ORU^R01`.
        #[arg(long)]
        message_type: Option<String>,
        /// MSH-4.
        #[arg(long)]
        facility: Option<String>,
        /// PID-3.1.
        #[arg(long)]
        patient: Option<String>,
        /// Count what would be sent and skipped; send nothing.
        #[arg(long)]
        dry_run: bool,
        /// Send also what the destination already acknowledged.
        #[arg(long)]
        force: bool,
        /// Why (kept with every replayed message and in the audit journal).
        #[arg(long)]
        reason: String,
        #[arg(long)]
        json: bool,
    },
    /// Prove what a destination holds: every accepted message it should
    /// have, classified delivered / pending / dead-lettered / blocked /
    /// missing; exit 1 if anything is missing.
    Reconcile {
        #[arg(long)]
        destination: String,
        /// Received at or after: RFC 3339, or a duration ago (default: all retained).
        #[arg(long)]
        since: Option<String>,
        /// Received before: RFC 3339, or a duration ago.
        #[arg(long)]
        until: Option<String>,
        /// A file of control ids (one a line) the downstream reports holding.
        #[arg(long)]
        against: Option<PathBuf>,
        /// Queue the missing messages on the replay lane (needs --reason).
        #[arg(long)]
        replay_missing: bool,
        /// Why (with --replay-missing: kept with each resend and audited).
        #[arg(long)]
        reason: Option<String>,
        /// Print the last scheduled reconciliation (reconcile_every_s) instead.
        #[arg(long, conflicts_with_all = ["since", "until", "against", "replay_missing"])]
        last: bool,
        #[arg(long)]
        json: bool,
    },
    /// Stop delivering to a destination (messages keep being accepted and stored).
    Pause { destination: String },
    /// Resume a paused destination.
    Resume { destination: String },
    /// Retry a failed head now (all lanes with one, or --lane N, or --replay).
    Retry {
        destination: String,
        #[arg(long)]
        lane: Option<u16>,
        /// The destination's replay lane.
        #[arg(long, conflicts_with = "lane")]
        replay: bool,
    },
    /// Move a lane's failed head to the dead-letter queue and continue.
    Skip {
        destination: String,
        #[arg(long, required_unless_present = "replay")]
        lane: Option<u16>,
        /// The destination's replay lane.
        #[arg(long, conflicts_with = "lane")]
        replay: bool,
        /// Why (kept in the dead-letter record).
        #[arg(long)]
        reason: String,
    },
    /// Move every message still pending for a destination (or one lane) to
    /// its dead-letter queue, class `cleared`: nothing vanishes.
    Clear {
        #[arg(long)]
        destination: String,
        #[arg(long)]
        lane: Option<u16>,
        /// Only the resends waiting on the destination's replay lane.
        #[arg(long, conflicts_with = "lane")]
        replay: bool,
        /// Why (kept in every dead-letter record and the audit journal).
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

#[derive(Subcommand)]
enum DlqAction {
    /// One line per dead-lettered message (oldest first per destination).
    List {
        #[arg(long)]
        destination: Option<String>,
        /// PID-3.1.
        #[arg(long)]
        patient: Option<String>,
        /// MSH-10.
        #[arg(long)]
        control_id: Option<String>,
        /// PV1-19.
        #[arg(long)]
        encounter: Option<String>,
        /// MSH-4.
        #[arg(long)]
        facility: Option<String>,
        /// Error class (rejected, timeout, connect, ...).
        #[arg(long)]
        error: Option<String>,
        /// Dead-lettered at or after: RFC 3339, or a duration ago (30m, 2h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Dead-lettered before: RFC 3339, or a duration ago.
        #[arg(long)]
        until: Option<String>,
        /// Only records with this status (default: all).
        #[arg(long, value_parser = ["open", "discarded", "resubmitted", "replayed"])]
        status: Option<String>,
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Mark a dead letter discarded: kept and listed, never sent; audited.
    Discard {
        /// The id `list` prints (<destination>:<offset>).
        id: String,
        /// Why (kept with the record and in the audit journal).
        #[arg(long)]
        reason: String,
    },
    /// Send a dead letter again through the replay lane: as it is, or
    /// corrected (--edited FILE; the field diff is kept); audited.
    Resubmit {
        /// The id `list` prints (<destination>:<offset>).
        id: String,
        /// The corrected message (LF and CRLF segment ends become CR).
        #[arg(long)]
        edited: Option<PathBuf>,
        /// Why (kept with the resend, the dead letter and the audit journal).
        #[arg(long)]
        reason: String,
    },
    /// The whole record: its context, the downstream's last answer, the message.
    Show {
        /// The id `list` prints (<destination>:<offset>).
        id: String,
        #[arg(long)]
        json: bool,
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

impl DlqAction {
    fn into_request(self) -> Result<orderly::report::DlqRequest, String> {
        use orderly::report::DlqRequest;
        let now = orderly::wal::now_ms();
        let time = |t: Option<String>| t.map(|t| orderly::timearg::parse_time(&t, now)).transpose();
        Ok(match self {
            DlqAction::List {
                destination,
                patient,
                control_id,
                encounter,
                facility,
                error,
                since,
                until,
                status,
                json,
            } => DlqRequest::List {
                filter: orderly::delivery::dlq_query::DlqFilter {
                    destination,
                    patient,
                    control_id,
                    encounter,
                    facility,
                    error,
                    since_ms: time(since)?,
                    until_ms: time(until)?,
                    status,
                },
                json,
            },
            DlqAction::Discard { id, reason } => {
                if !valid_reason(&reason) {
                    return Err("--reason must be non-empty text on one line".into());
                }
                DlqRequest::Discard { id, reason }
            }
            DlqAction::Show { id, json } => DlqRequest::Show { id, json },
            DlqAction::Resubmit { id, edited, reason } => {
                if !valid_reason(&reason) {
                    return Err("--reason must be non-empty text on one line".into());
                }
                let edited = edited
                    .map(|f| {
                        std::fs::read(&f)
                            .map(|raw| normalize_segment_ends(&raw))
                            .map_err(|e| format!("cannot read {}: {e}", f.display()))
                    })
                    .transpose()?;
                DlqRequest::Resubmit { id, edited, reason }
            }
        })
    }
}

/// A reason must be one line of text: it goes into records and the audit journal.
fn valid_reason(reason: &str) -> bool {
    !reason.trim().is_empty() && !reason.contains(['\t', '\n'])
}

fn ctl(data_dir: &Path, action: CtlAction) -> ExitCode {
    if let CtlAction::Dlq { action } = action {
        return orderly::report::dlq(data_dir, action.into_request());
    }
    if let CtlAction::Trace { control_id, json } = action {
        return orderly::report::trace(data_dir, &control_id, json);
    }
    if let CtlAction::Replay { .. } | CtlAction::Reconcile { .. } = action {
        return window_action(data_dir, action);
    }
    let lane_text;
    let target_text;
    if let CtlAction::Skip { reason, .. }
    | CtlAction::Clear { reason, .. }
    | CtlAction::ResetCursor { reason, .. } = &action
    {
        if !valid_reason(reason) {
            eprintln!("orderly: --reason must be non-empty text on one line");
            return ExitCode::from(2);
        }
    }
    let words: Vec<&str> = match &action {
        CtlAction::Status => vec!["status"],
        CtlAction::Dlq { .. }
        | CtlAction::Trace { .. }
        | CtlAction::Replay { .. }
        | CtlAction::Reconcile { .. } => unreachable!("handled above"),
        CtlAction::Pause { destination } => vec!["pause", destination],
        CtlAction::Resume { destination } => vec!["resume", destination],
        CtlAction::Retry {
            destination,
            lane: None,
            replay: false,
        } => vec!["retry", destination],
        CtlAction::Retry {
            destination,
            lane,
            replay,
        } => {
            lane_text = lane_word(*lane, *replay);
            vec!["retry", destination, &lane_text]
        }
        CtlAction::Skip {
            destination,
            lane,
            replay,
            reason,
        } => {
            lane_text = lane_word(*lane, *replay);
            vec!["skip", destination, &lane_text, reason]
        }
        CtlAction::Clear {
            destination,
            lane,
            replay,
            reason,
        } => {
            lane_text = match (lane, replay) {
                (_, true) => "replay".to_string(),
                (Some(l), false) => l.to_string(),
                (None, false) => "all".to_string(),
            };
            vec!["clear", destination, &lane_text, reason]
        }
        CtlAction::ResetCursor {
            destination,
            to_offset,
            reason,
            ..
        } => {
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

/// How a lane is named on the control socket: its number, or `replay`.
fn lane_word(lane: Option<u16>, replay: bool) -> String {
    match (lane, replay) {
        (Some(l), false) => l.to_string(),
        _ => "replay".into(),
    }
}

/// `ctl replay` and `ctl reconcile`: parse the window, then ask the broker.
fn window_action(data_dir: &Path, action: CtlAction) -> ExitCode {
    let now = orderly::wal::now_ms();
    let time = |t: &str| orderly::timearg::parse_time(t, now);
    let bad = |e: String| {
        eprintln!("orderly: {e}");
        ExitCode::from(2)
    };
    match action {
        CtlAction::Replay {
            destination,
            since,
            until,
            message_type,
            facility,
            patient,
            dry_run,
            force,
            reason,
            json,
        } => {
            if !valid_reason(&reason) {
                return bad("--reason must be non-empty text on one line".into());
            }
            let (since_ms, until_ms) = match (time(&since), until.as_deref().map(time).transpose())
            {
                (Ok(s), Ok(u)) => (s, u),
                (Err(e), _) | (_, Err(e)) => return bad(e),
            };
            let req = orderly::delivery::replay::ReplayRequest {
                destination,
                since_ms,
                until_ms,
                message_type,
                facility,
                patient,
                dry_run,
                force,
            };
            orderly::report::replay(data_dir, &req, &reason, json)
        }
        CtlAction::Reconcile {
            destination,
            since,
            until,
            against,
            replay_missing,
            reason,
            last,
            json,
        } => {
            let reason = reason.unwrap_or_default();
            if replay_missing && !valid_reason(&reason) {
                return bad("--replay-missing needs --reason: non-empty text on one line".into());
            }
            if reason.contains(['\t', '\n']) {
                return bad("--reason must be text on one line".into());
            }
            let (since_ms, until_ms) = match (
                since.as_deref().map(time).transpose(),
                until.as_deref().map(time).transpose(),
            ) {
                (Ok(s), Ok(u)) => (s, u),
                (Err(e), _) | (_, Err(e)) => return bad(e),
            };
            let against = match against
                .map(|f| {
                    std::fs::read_to_string(&f)
                        .map_err(|e| format!("cannot read {}: {e}", f.display()))
                })
                .transpose()
            {
                Ok(a) => a.map(|text| {
                    text.lines()
                        .map(|l| l.trim().to_string())
                        .filter(|l| !l.is_empty())
                        .collect()
                }),
                Err(e) => return bad(e),
            };
            let req = orderly::delivery::reconcile::ReconcileRequest {
                destination,
                since_ms,
                until_ms,
                against,
                replay_missing,
            };
            orderly::report::reconcile(data_dir, &req, &reason, last, json)
        }
        _ => unreachable!("only replay and reconcile come here"),
    }
}

fn send(to: &str, timeout: Duration, files: &[PathBuf]) -> ExitCode {
    let mut client = match Client::connect(to, timeout) {
        Ok(c) => c,
        Err(e @ ClientError::Resolve(_)) => {
            eprintln!("orderly: {e}");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("orderly: {e}");
            return ExitCode::from(1);
        }
    };
    let mut all_positive = true;
    for file in files {
        let line = match send_one(&mut client, file) {
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
fn send_one(client: &mut Client, file: &Path) -> Result<(bool, String), String> {
    let raw = std::fs::read(file).map_err(|e| format!("cannot read: {e}"))?;
    let ack = client
        .exchange(&normalize_segment_ends(&raw))
        .map_err(|e| e.to_string())?;
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
