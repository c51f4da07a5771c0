//! What `orderly inspect` and `orderly verify` print: the walk over a data
//! directory's logs and cursor files, rendered for an operator.
use crate::check::{self, Outcome};
use crate::layout::DataDir;
use crate::storage::FsStorage;
use crate::wal::meta::{MetaKey, MetaView};
use crate::wal::{inspect, Offset, Writer};
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

/// Prints one line per record of the log in `dir` (a queue or a
/// dead-letter log); exit 1 if any record is unreadable.
pub fn inspect_queue(dir: &Path, queue: &str, from: Offset, limit: u64) -> ExitCode {
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
                    "{} {} {} {} {}{}",
                    r.offset,
                    r.timestamp_ms,
                    r.payload.len(),
                    field(MetaKey::ControlId),
                    field(MetaKey::MessageType),
                    idempotency_note(&meta)
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
pub fn writer_of(layout: &DataDir) -> Writer {
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

/// Checks everything under `data_dir` and prints the verdicts; exit 1 on damage.
pub fn verify_all(data_dir: &Path) -> ExitCode {
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
        Outcome::Filters(n) => {
            println!("{label} {name}: OK: {n} filter(s) recorded");
        }
        Outcome::Unusable(reason) => {
            println!("{label} {name}: CORRUPT: {}: {reason}", c.path.display());
        }
    }
}

/// Extra columns for ingest events and new versions (nothing for a plain
/// message, so the five columns scripts read stay as they were).
fn idempotency_note(meta: &MetaView<'_>) -> String {
    let original = crate::delivery::dlq::meta_u64_view(meta, MetaKey::OriginalOffset)
        .map_or_else(|| "in-flight".to_string(), |o| o.to_string());
    if let Some(event) = meta.get(MetaKey::Event) {
        return format!(
            " event={} original={original}",
            String::from_utf8_lossy(event)
        );
    }
    if meta.get(MetaKey::NewVersion).is_some() {
        return format!(" new-version-of={original}");
    }
    String::new()
}

/// What `orderly ctl dlq` asks the broker for.
pub enum DlqRequest {
    List {
        filter: crate::delivery::dlq_query::DlqFilter,
        json: bool,
    },
    Show {
        id: String,
        json: bool,
    },
    Discard {
        id: String,
        reason: String,
    },
    Resubmit {
        id: String,
        /// The corrected message, if edited.
        edited: Option<Vec<u8>>,
        reason: String,
    },
}

/// Runs `orderly ctl dlq ...` against the broker owning `data_dir` and
/// prints the answer (text for people, `--json` for scripts). Exit 2 for a
/// bad argument, 1 when the broker refuses or cannot be reached.
pub fn dlq(data_dir: &Path, request: Result<DlqRequest, String>) -> ExitCode {
    let request = match request {
        Ok(r) => r,
        Err(e) => {
            eprintln!("orderly: {e}");
            return ExitCode::from(2);
        }
    };
    let (words, json): (Vec<String>, bool) = match &request {
        DlqRequest::List { filter, json } => (
            vec![
                "dlq-list".into(),
                serde_json::to_string(filter).expect("a filter serialises"),
            ],
            *json,
        ),
        DlqRequest::Show { id, json } => (vec!["dlq-show".into(), id.clone()], *json),
        DlqRequest::Discard { id, reason } => {
            (vec!["dlq-discard".into(), id.clone(), reason.clone()], true)
        }
        DlqRequest::Resubmit { id, edited, reason } => (
            vec![
                "dlq-resubmit".into(),
                id.clone(),
                edited.as_deref().map(hex_of).unwrap_or_default(),
                reason.clone(),
            ],
            true,
        ),
    };
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let answer = match ask(data_dir, &words) {
        Ok(a) => a,
        Err(code) => return code,
    };
    if json {
        print!("{answer}");
        return ExitCode::SUCCESS;
    }
    let printed = match request {
        DlqRequest::List { .. } => print_dlq_list(&answer),
        DlqRequest::Show { .. } => print_dlq_record(&answer),
        DlqRequest::Discard { .. } | DlqRequest::Resubmit { .. } => {
            unreachable!("printed as is above")
        }
    };
    match printed {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orderly: unexpected answer from the broker: {e}");
            ExitCode::from(1)
        }
    }
}

fn print_dlq_list(answer: &str) -> Result<(), String> {
    use crate::delivery::dlq_query::DlqEntry;
    let v: serde_json::Value = serde_json::from_str(answer).map_err(|e| e.to_string())?;
    let entries: Vec<DlqEntry> =
        serde_json::from_value(v["entries"].clone()).map_err(|e| e.to_string())?;
    println!("id dead_lettered_ms control_id message_type facility error_class attempts status");
    for e in &entries {
        println!(
            "{} {} {} {} {} {} {} {}",
            e.id,
            e.dead_lettered_ms,
            dash(&e.control_id),
            dash(&e.message_type),
            dash(&e.facility),
            dash(&e.error_class),
            e.attempts.map_or("-".into(), |a| a.to_string()),
            e.status
        );
    }
    let skipped = v["damaged_skipped"].as_u64().unwrap_or(0);
    if skipped > 0 {
        println!("({skipped} damaged dead-letter record(s) could not be read; `orderly verify` names them)");
    }
    if entries.len() >= crate::delivery::dlq_query::DLQ_LIST_MAX {
        println!("(the first {} only: narrow the filter)", entries.len());
    }
    Ok(())
}

fn print_dlq_record(answer: &str) -> Result<(), String> {
    let r: crate::delivery::dlq_query::DlqRecord =
        serde_json::from_str(answer).map_err(|e| e.to_string())?;
    let e = &r.entry;
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    println!("id: {}", e.id);
    println!(
        "destination: {}  queue: {}  source offset: {}  lane: {}",
        e.destination,
        e.queue,
        opt(e.source_offset),
        opt(e.lane)
    );
    println!("dead-lettered at (ms): {}", e.dead_lettered_ms);
    println!(
        "control id: {}  message type: {}  facility: {}",
        dash(&e.control_id),
        dash(&e.message_type),
        dash(&e.facility)
    );
    println!(
        "error: {} after {} attempt(s), first {} last {}: {}",
        e.error_class,
        opt(e.attempts),
        opt(e.first_failure_ms),
        opt(e.last_failure_ms),
        e.error_text
    );
    println!("reason: {}", e.reason);
    if e.status != "open" {
        println!(
            "status: {} by {}: {}",
            e.status, e.status_by, e.status_reason
        );
        for line in e.edit_diff.lines() {
            println!("  edited {line}");
        }
    }
    if let Some(ack) = &r.last_ack {
        println!("last answer from the destination:");
        for seg in ack.split('\r').filter(|s| !s.is_empty()) {
            println!("  {seg}");
        }
    }
    println!("message ({} bytes):", e.bytes);
    for seg in r.payload.split('\r').filter(|s| !s.is_empty()) {
        println!("  {seg}");
    }
    Ok(())
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.replace(char::is_whitespace, "_")
    }
}

/// `orderly ctl trace <control-id>`: asks the broker, prints text (or the
/// JSON with `--json`). Exit 1 when no message has that control id.
pub fn trace(data_dir: &Path, control_id: &str, json: bool) -> ExitCode {
    use crate::delivery::trace::Trace;
    if control_id.contains(['\t', '\n']) {
        eprintln!("orderly: a control id cannot hold tabs or line ends");
        return ExitCode::from(2);
    }
    let (answer, t): (String, Trace) = match ask_json(data_dir, &["trace", control_id]) {
        Ok(a) => a,
        Err(code) => return code,
    };
    if json {
        print!("{answer}");
    } else {
        print_trace(&t);
    }
    if t.messages.is_empty() && t.events.is_empty() {
        eprintln!("orderly: no message with control id `{control_id}` in any queue");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

fn print_trace(t: &crate::delivery::trace::Trace) {
    for m in &t.messages {
        println!(
            "message {} queue={} offset={} type={} bytes={} sha256={}",
            t.control_id,
            m.queue,
            m.offset,
            dash(&m.message_type),
            m.bytes,
            m.sha256
        );
        println!(
            "  received {} from {} on listener {}; durable (ACK released) {}",
            m.received_ms.map_or("-".into(), |v| v.to_string()),
            m.peer,
            m.listener,
            m.durable_ms
        );
        if let Some(o) = m.new_version_of {
            println!("  a new version of offset {o} (same key, other bytes)");
        }
        for d in &m.destinations {
            let lane = d.lane.map_or("-".into(), |l| l.to_string());
            println!(
                "  destination {} lane {lane}: {} ({})",
                d.destination, d.state, d.detail
            );
            for a in &d.attempts {
                println!(
                    "    attempt {} on the {} lane at {}: {} {} {} {}",
                    a.attempt,
                    a.channel,
                    a.at_ms,
                    a.outcome,
                    dash(&a.ack_code),
                    dash(&a.error_class),
                    a.text
                );
            }
            for r in &d.replays {
                println!(
                    "    {} queued at {} by {}: {}{}",
                    r.kind,
                    r.queued_ms,
                    r.actor,
                    r.reason,
                    if r.dlq_id.is_empty() {
                        String::new()
                    } else {
                        format!(" (dead letter {})", r.dlq_id)
                    }
                );
                for line in r.edit_diff.lines() {
                    println!("      edited {line}");
                }
            }
        }
    }
    for e in &t.events {
        println!(
            "event {} queue={} offset={} at {} from {} on listener {}; original {}",
            e.event,
            e.queue,
            e.offset,
            e.at_ms,
            e.peer,
            e.listener,
            e.original.map_or("in flight".into(), |o| o.to_string())
        );
    }
}

/// Sends `words` to the broker; on failure the message is printed and
/// the exit code returned.
fn ask(data_dir: &Path, words: &[&str]) -> Result<String, ExitCode> {
    crate::control::request(data_dir, words).map_err(|e| {
        eprintln!("orderly: {e}");
        ExitCode::from(1)
    })
}

/// Sends `words` to the broker and decodes its JSON answer; on failure the
/// message is printed and the exit code returned.
fn ask_json<T: serde::de::DeserializeOwned>(
    data_dir: &Path,
    words: &[&str],
) -> Result<(String, T), ExitCode> {
    let answer = ask(data_dir, words)?;
    let value = serde_json::from_str(&answer).map_err(|e| {
        eprintln!("orderly: unexpected answer from the broker: {e}");
        ExitCode::from(1)
    })?;
    Ok((answer, value))
}

/// `orderly ctl replay`: queues (or, dry, counts) a window's messages on
/// the destination's replay lane and prints what it found.
pub fn replay(
    data_dir: &Path,
    req: &crate::delivery::replay::ReplayRequest,
    reason: &str,
    json: bool,
) -> ExitCode {
    use crate::delivery::replay::ReplayOutcome;
    let body = serde_json::to_string(req).expect("a request serialises");
    let (answer, o): (String, ReplayOutcome) = match ask_json(data_dir, &["replay", &body, reason])
    {
        Ok(a) => a,
        Err(code) => return code,
    };
    if json {
        print!("{answer}");
        return ExitCode::SUCCESS;
    }
    let verb = if o.dry_run { "would send" } else { "queued" };
    let sent = if o.dry_run { o.to_send } else { o.queued };
    println!(
        "destination {}: {} message(s) match; {verb} {sent}",
        o.destination, o.matched
    );
    if o.force {
        println!(
            "  {} already acknowledged by the destination, sent again (--force)",
            o.already_acknowledged
        );
    } else {
        println!(
            "  skipped {} already acknowledged by the destination (--force sends them too)",
            o.already_acknowledged
        );
    }
    println!(
        "  skipped {} still pending on the live lanes (they deliver them)",
        o.pending
    );
    if o.already_queued > 0 {
        println!(
            "  skipped {} already queued on the replay lane and not yet sent",
            o.already_queued
        );
    }
    if o.unreadable > 0 {
        println!(
            "  {} damaged record(s) in the window could not be read",
            o.unreadable
        );
    }
    if o.truncated {
        println!(
            "  (the window was cut at {} messages to send or {} records read: narrow it with --since/--until and run again)",
            crate::delivery::replay::REPLAY_MAX,
            crate::delivery::replay::REPLAY_SCAN_MAX
        );
    }
    ExitCode::SUCCESS
}

/// `orderly ctl reconcile`: prints where each message of the window stands
/// for the destination; exit 1 when something is missing.
pub fn reconcile(
    data_dir: &Path,
    req: &crate::delivery::reconcile::ReconcileRequest,
    reason: &str,
    last: bool,
    json: bool,
) -> ExitCode {
    use crate::delivery::reconcile::ReconcileReport;
    let body = serde_json::to_string(req).expect("a request serialises");
    let words: Vec<&str> = if last {
        vec!["reconcile-last", &req.destination]
    } else {
        vec!["reconcile", &body, reason]
    };
    let (answer, r): (String, Option<ReconcileReport>) = match ask_json(data_dir, &words) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let Some(r) = r else {
        eprintln!(
            "orderly: no scheduled reconciliation of `{}` has run (set reconcile_every_s)",
            req.destination
        );
        return ExitCode::from(1);
    };
    if json {
        print!("{answer}");
    } else {
        print_reconcile(&r);
    }
    if r.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn print_reconcile(r: &crate::delivery::reconcile::ReconcileReport) {
    let c = &r.counts;
    println!(
        "destination {} queue {} at {}: {} selected: {} delivered, {} pending, {} dead-lettered, {} blocked, {} missing",
        r.destination, r.queue, r.at_ms, c.selected, c.delivered, c.pending, c.dead_lettered, c.blocked, c.missing
    );
    if c.filtered_then > 0 {
        println!(
            "  {} passed under an earlier filter that left them out (never sent; `ctl replay` sends them)",
            c.filtered_then
        );
    }
    for (what, items) in [
        ("missing", &r.missing),
        ("blocked", &r.blocked),
        ("dead-lettered", &r.dead_lettered),
    ] {
        for i in items {
            println!(
                "  {what} offset={} control_id={}",
                i.offset,
                dash(&i.control_id)
            );
        }
    }
    if let Some(a) = &r.against {
        println!(
            "against the downstream's list ({} id(s)): {} missing downstream, {} unknown to Orderly",
            a.listed,
            a.missing_downstream_count,
            a.unknown_to_orderly.len()
        );
        for i in &a.missing_downstream {
            println!(
                "  missing-downstream control_id={} offset={} orderly_state={}",
                dash(&i.control_id),
                i.offset,
                i.state
            );
        }
        for id in &a.unknown_to_orderly {
            println!("  unknown-to-orderly control_id={id}");
        }
    }
    if r.replayed > 0 {
        println!("queued {} message(s) on the replay lane", r.replayed);
    }
    if r.unreadable > 0 {
        println!("({} damaged record(s) could not be read)", r.unreadable);
    }
    if r.truncated {
        println!(
            "(the window holds more than {} records, and only those were read: narrow it with --since/--until)",
            crate::delivery::replay::REPLAY_SCAN_MAX
        );
    }
}

/// Lower-case hex: how a message crosses the one-line control protocol.
pub fn hex_of(bytes: &[u8]) -> String {
    crate::server::ingest::hex(bytes)
}

/// The bytes of [`hex_of`]'s text; `None` if it is not even-length hex.
pub fn bytes_of_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}
