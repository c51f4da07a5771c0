//! The local control channel: a Unix socket at `<data_dir>/orderly.ctl`
//! through which `orderly ctl` asks the running broker for status and
//! operator actions. One request line (tab-separated words), one response
//! (first line `ok` or `error`, then text), then the connection closes.
//! The authenticated HTTP API of a later issue calls the same engine methods.
//!
//! Every action that changes delivery is recorded in the audit journal with
//! the operator's identity (the OS user on the other end of the socket, from
//! the kernel's peer credentials) and reason, before it runs.
use crate::audit::{AuditEntry, AuditLog};
use crate::delivery::{render_status, Engine, ResetTarget};
use crate::wal::Offset;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Longest request line accepted: an edited resubmission carries its
/// message hex-encoded, a reconciliation the downstream's id list.
const REQUEST_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// Pause after a failed accept (e.g. EMFILE), so the loop cannot spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

pub fn socket_path(data_dir: &Path) -> PathBuf {
    crate::layout::DataDir::new(data_dir).control_socket()
}

/// What the control loop needs: the engine to act on, the journal to record in.
struct Ctx {
    engine: Arc<Engine>,
    audit: Arc<AuditLog>,
}

pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    /// The listening socket, kept to shut it down: that wakes the accept
    /// loop without going through the socket's path, which an operator or
    /// a temp cleaner may have removed.
    listener: UnixListener,
    thread: Option<JoinHandle<()>>,
}

impl ControlServer {
    pub fn start(
        data_dir: &Path,
        engine: Arc<Engine>,
        audit: Arc<AuditLog>,
    ) -> std::io::Result<ControlServer> {
        let path = socket_path(data_dir);
        // A socket left by a killed broker; the data-dir lock proves it is stale.
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        let accepting = listener.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("orderly-control".into())
            .spawn(move || accept_loop(&accepting, &flag, &Ctx { engine, audit }))?;
        Ok(ControlServer {
            path,
            stop,
            listener,
            thread: Some(thread),
        })
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // SAFETY: shutdown(2) on a socket this struct owns; a blocked
        // accept(2) on it then returns (EINVAL) on Linux.
        let rc = unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if rc != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "control socket shutdown failed; waking it through its path");
            let _ = UnixStream::connect(&self.path);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Only our own socket: another broker cannot hold this data dir.
        let _ = std::fs::remove_file(&self.path);
    }
}

fn accept_loop(listener: &UnixListener, stop: &AtomicBool, ctx: &Ctx) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match conn {
            Ok(c) => serve(c, ctx),
            Err(e) => {
                // Out of file descriptors, most likely: back off rather than spin.
                tracing::warn!(error = %e, "control socket accept failed");
                std::thread::sleep(ACCEPT_ERROR_BACKOFF);
            }
        }
    }
}

fn serve(conn: UnixStream, ctx: &Ctx) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut line = String::new();
    if BufReader::new((&conn).take(REQUEST_BYTES_MAX))
        .read_line(&mut line)
        .is_err()
    {
        return;
    }
    let words: Vec<&str> = line.trim_end_matches(['\r', '\n']).split('\t').collect();
    let actor = peer_identity(&conn);
    let result = dispatch(&words, &actor, ctx);
    let text = match result {
        Ok(t) => format!("ok\n{t}"),
        Err(e) => format!("error\n{e}\n"),
    };
    let _ = (&conn).write_all(text.as_bytes());
}

fn dispatch(words: &[&str], actor: &str, ctx: &Ctx) -> Result<String, String> {
    let lane = |s: &str| match s {
        "replay" => Ok(crate::delivery::REPLAY_LANE),
        n => n
            .parse::<u16>()
            .ok()
            .filter(|&l| l != crate::delivery::REPLAY_LANE)
            .ok_or_else(|| format!("`{s}` is not a lane number (or `replay`)")),
    };
    let engine = &ctx.engine;
    let entry = |action, destination, detail, reason| AuditEntry {
        actor,
        action,
        destination,
        detail,
        reason,
    };
    match words {
        ["status"] => Ok(render_status(&engine.status())),
        // Read-only: not audited. The filter is JSON (one line, no tabs).
        ["dlq-list", filter] => {
            let filter: crate::delivery::dlq_query::DlqFilter =
                serde_json::from_str(filter).map_err(|e| format!("bad dlq-list filter: {e}"))?;
            let (entries, skipped) = engine.dlq_list(&filter)?;
            let answer = serde_json::json!({ "entries": entries, "damaged_skipped": skipped });
            Ok(answer.to_string() + "\n")
        }
        ["dlq-discard", id, reason] if !reason.trim().is_empty() => {
            let dest = id.rsplit_once(':').map_or(*id, |(d, _)| d);
            let detail = format!("id={id}");
            audited(ctx, entry("dlq-discard", dest, &detail, reason), || {
                engine.dlq_discard(id, actor, reason).map(|t| t + "\n")
            })
        }
        ["trace", control_id] => serde_json::to_string(&engine.trace(control_id))
            .map(|t| t + "\n")
            .map_err(|e| e.to_string()),
        ["dlq-resubmit", id, edited_hex, reason] if !reason.trim().is_empty() => {
            let edited = match *edited_hex {
                "" => None,
                h => Some(
                    crate::report::bytes_of_hex(h)
                        .ok_or("the edited message did not arrive intact (bad hex)")?,
                ),
            };
            let dest = id.rsplit_once(':').map_or(*id, |(d, _)| d);
            let detail = format!("id={id} edited={}", edited.is_some());
            audited(ctx, entry("dlq-resubmit", dest, &detail, reason), || {
                engine
                    .dlq_resubmit(id, edited, actor, reason)
                    .map(|t| t + "\n")
            })
        }
        ["replay", request, reason] if !reason.trim().is_empty() => {
            let req: crate::delivery::replay::ReplayRequest =
                serde_json::from_str(request).map_err(|e| format!("bad replay request: {e}"))?;
            let detail = format!(
                "since_ms={} until_ms={:?} type={:?} facility={:?} patient={} dry_run={} force={}",
                req.since_ms,
                req.until_ms,
                req.message_type,
                req.facility,
                if req.patient.is_some() { "given" } else { "-" },
                req.dry_run,
                req.force
            );
            let run = || {
                engine
                    .replay(&req, actor, reason)
                    .and_then(|o| serde_json::to_string(&o).map_err(|e| e.to_string()))
                    .map(|t| t + "\n")
            };
            if req.dry_run {
                run()
            } else {
                audited(ctx, entry("replay", &req.destination, &detail, reason), run)
            }
        }
        ["reconcile", request, reason] => {
            let req: crate::delivery::reconcile::ReconcileRequest =
                serde_json::from_str(request).map_err(|e| format!("bad reconcile request: {e}"))?;
            let run = || {
                engine
                    .reconcile(&req, actor, reason)
                    .and_then(|r| serde_json::to_string(&Some(r)).map_err(|e| e.to_string()))
                    .map(|t| t + "\n")
            };
            if req.replay_missing {
                if reason.trim().is_empty() {
                    return Err("--replay-missing needs --reason".into());
                }
                let detail = format!(
                    "since_ms={:?} until_ms={:?} against={} replay_missing=true",
                    req.since_ms,
                    req.until_ms,
                    req.against.as_ref().map_or(0, |a| a.len())
                );
                audited(
                    ctx,
                    entry("reconcile", &req.destination, &detail, reason),
                    run,
                )
            } else {
                run()
            }
        }
        ["reconcile-last", dest] => serde_json::to_string(&engine.last_reconcile(dest)?)
            .map(|t| t + "\n")
            .map_err(|e| e.to_string()),
        ["dlq-show", id] => {
            let record = engine.dlq_show(id)?;
            serde_json::to_string(&record)
                .map(|t| t + "\n")
                .map_err(|e| e.to_string())
        }
        ["pause", dest] => audited(ctx, entry("pause", dest, "", ""), || {
            engine.pause(dest, true).map(|_| format!("{dest} paused\n"))
        }),
        ["resume", dest] => audited(ctx, entry("resume", dest, "", ""), || {
            engine
                .pause(dest, false)
                .map(|_| format!("{dest} resumed\n"))
        }),
        ["retry", dest] => audited(ctx, entry("retry", dest, "all lanes", ""), || {
            engine.retry(dest, None).map(|t| t + "\n")
        }),
        ["retry", dest, l] => {
            let l = lane(l)?;
            let detail = format!("lane={l}");
            audited(ctx, entry("retry", dest, &detail, ""), || {
                engine.retry(dest, Some(l)).map(|t| t + "\n")
            })
        }
        ["skip", dest, l, reason] if !reason.trim().is_empty() => {
            let l = lane(l)?;
            let detail = format!("lane={l}");
            audited(ctx, entry("skip", dest, &detail, reason), || {
                engine.skip(dest, l, reason).map(|t| t + "\n")
            })
        }
        ["clear", dest, l, reason] if !reason.trim().is_empty() => {
            let lane_arg = match *l {
                "all" => None,
                n => Some(lane(n)?),
            };
            let detail = format!("lane={l}");
            audited(ctx, entry("clear", dest, &detail, reason), || {
                engine.clear(dest, lane_arg, reason).map(|t| t + "\n")
            })
        }
        ["reset-cursor", dest, target, reason] if !reason.trim().is_empty() => {
            let to = match *target {
                "log-end" => ResetTarget::LogEnd,
                n => ResetTarget::Offset(Offset(
                    n.parse().map_err(|_| format!("`{n}` is not an offset"))?,
                )),
            };
            let detail = format!("to={target}");
            audited(ctx, entry("reset-cursor", dest, &detail, reason), || {
                engine.reset_cursor(dest, to).map(|t| t + "\n")
            })
        }
        _ => Err(format!("unknown request {words:?}")),
    }
}

/// Runs `action` only once its request is durable in the audit journal,
/// then records how it ended.
fn audited(
    ctx: &Ctx,
    entry: AuditEntry<'_>,
    action: impl FnOnce() -> Result<String, String>,
) -> Result<String, String> {
    ctx.audit.requested(&entry).map_err(|e| {
        format!(
            "cannot record the action in {} ({e}); nothing was done",
            ctx.audit.path().display()
        )
    })?;
    tracing::info!(
        actor = entry.actor,
        action = entry.action,
        destination = entry.destination,
        detail = entry.detail,
        reason = entry.reason,
        "operator action"
    );
    let result = action();
    if let Err(e) = ctx.audit.finished(&entry, &result) {
        tracing::error!(error = %e, action = entry.action, "the outcome of an operator action could not be recorded in the audit journal");
    }
    result
}

/// The OS user on the other end of the control socket, from the kernel's
/// peer credentials (not from anything the client says).
fn peer_identity(conn: &UnixStream) -> String {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, a ucred we own.
    let rc = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return "unknown".into();
    }
    match user_name(cred.uid) {
        Some(name) => format!("uid={}({name})", cred.uid),
        None => format!("uid={}", cred.uid),
    }
}

fn user_name(uid: libc::uid_t) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 4096];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: getpwuid_r writes into `pwd` and `buf`, both ours and sized as
    // passed; `found` is set to `&pwd` or null.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: pw_name points into `buf`, NUL-terminated by getpwuid_r.
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
    Some(name.to_string_lossy().into_owned())
}

/// Sends one request to the broker owning `data_dir`; `Ok` carries the text
/// of an `ok` answer, `Err` an `error` answer or why the broker is unreachable.
pub fn request(data_dir: &Path, words: &[&str]) -> Result<String, String> {
    let path = socket_path(data_dir);
    let mut conn = UnixStream::connect(&path).map_err(|e| {
        format!(
            "cannot reach the broker at {}: {e} (is `orderly serve` running with this data_dir?)",
            path.display()
        )
    })?;
    conn.set_read_timeout(Some(Duration::from_secs(90)))
        .map_err(|e| e.to_string())?;
    let line = words.join("\t") + "\n";
    conn.write_all(line.as_bytes()).map_err(|e| e.to_string())?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)
        .map_err(|e| e.to_string())?;
    match answer.split_once('\n') {
        Some(("ok", rest)) => Ok(rest.to_string()),
        Some(("error", rest)) => Err(rest.trim_end().to_string()),
        _ => Err(format!("unexpected answer from the broker: {answer:?}")),
    }
}
