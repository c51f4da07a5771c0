//! The local control channel: a Unix socket at `<data_dir>/orderly.ctl`
//! through which `orderly ctl` asks the running broker for status and
//! operator actions. One request line (tab-separated words), one response
//! (first line `ok` or `error`, then text), then the connection closes.
//! The authenticated HTTP API of a later issue calls the same engine methods.
use crate::delivery::{render_status, Engine};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Longest request line accepted.
const REQUEST_BYTES_MAX: u64 = 4096;
/// Pause after a failed accept (e.g. EMFILE), so the loop cannot spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join("orderly.ctl")
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
    pub fn start(data_dir: &Path, engine: Arc<Engine>) -> std::io::Result<ControlServer> {
        let path = socket_path(data_dir);
        // A socket left by a killed broker; the data-dir lock proves it is stale.
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)?;
        let accepting = listener.try_clone()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("orderly-control".into())
            .spawn(move || accept_loop(&accepting, &flag, &engine))?;
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

fn accept_loop(listener: &UnixListener, stop: &AtomicBool, engine: &Engine) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match conn {
            Ok(c) => serve(c, engine),
            Err(e) => {
                // Out of file descriptors, most likely: back off rather than spin.
                tracing::warn!(error = %e, "control socket accept failed");
                std::thread::sleep(ACCEPT_ERROR_BACKOFF);
            }
        }
    }
}

fn serve(conn: UnixStream, engine: &Engine) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    if BufReader::new((&conn).take(REQUEST_BYTES_MAX))
        .read_line(&mut line)
        .is_err()
    {
        return;
    }
    let words: Vec<&str> = line.trim_end_matches(['\r', '\n']).split('\t').collect();
    let result = dispatch(&words, engine);
    let text = match result {
        Ok(t) => format!("ok\n{t}"),
        Err(e) => format!("error\n{e}\n"),
    };
    let _ = (&conn).write_all(text.as_bytes());
}

fn dispatch(words: &[&str], engine: &Engine) -> Result<String, String> {
    let lane = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| format!("`{s}` is not a lane number"))
    };
    match words {
        ["status"] => Ok(render_status(&engine.status())),
        ["pause", dest] => engine.pause(dest, true).map(|_| format!("{dest} paused\n")),
        ["resume", dest] => engine
            .pause(dest, false)
            .map(|_| format!("{dest} resumed\n")),
        ["retry", dest] => engine.retry(dest, None).map(|t| t + "\n"),
        ["retry", dest, l] => engine.retry(dest, Some(lane(l)?)).map(|t| t + "\n"),
        ["skip", dest, l, reason] if !reason.trim().is_empty() => {
            engine.skip(dest, lane(l)?, reason).map(|t| t + "\n")
        }
        _ => Err(format!("unknown request {words:?}")),
    }
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
