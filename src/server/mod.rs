//! The MLLP server: opens each queue's log, binds the listeners, and runs
//! the event loop until SIGTERM/SIGINT (or a [`ShutdownHandle`]).
//!
//! Architecture Invariant: a positive ACK (AA/CA) is written only from an
//! append completion whose result is `Ok`, which the WAL sends only after
//! the record's `fdatasync` returned.
mod conn;
pub mod dedupe;
mod event_loop;
pub mod ingest;
pub mod session;

pub use event_loop::ShutdownHandle;

use crate::audit::AuditLog;
use crate::config::Config;
use crate::control::ControlServer;
use crate::delivery::{DeliveryError, Engine};
use crate::metrics::Metrics;
use crate::storage::{FsStorage, Storage};
use crate::wal::{Log, RetentionPolicy, WalError};
use event_loop::{EventLoop, ListenerSlot};
use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error("data dir {dir}: {source}")]
    DataDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("data dir {dir} is in use by another Orderly process (lock file {lock}); stop it or choose another data_dir")]
    Locked { dir: PathBuf, lock: PathBuf },
    #[error("listener `{name}`: cannot listen on {addr}: {source}; change `listen` or stop the other process")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("queue `{queue}`: {source}")]
    Wal { queue: String, source: WalError },
    #[error("event loop: {0}")]
    Io(#[from] std::io::Error),
    #[error("delivery: {0}")]
    Delivery(#[from] DeliveryError),
}

/// Applies the retention policy every minute, and runs scheduled
/// reconciliations when due, in the background.
struct Maintenance {
    stop: crossbeam_channel::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Maintenance {
    fn start(
        logs: &BTreeMap<String, Arc<Log>>,
        engine: Arc<Engine>,
        config: &Config,
    ) -> Result<Option<Maintenance>, ServeError> {
        // A destination's journal and replay log age with its queue.
        let logs: Vec<(String, Arc<Log>, RetentionPolicy)> = logs
            .iter()
            .map(|(q, l)| (q.clone(), l.clone()))
            .chain(engine.replay_logs())
            .map(|(q, l)| (q.clone(), l, config.queue(&q).retention))
            .filter(|(_, _, p)| p.max_age_ms.is_some() || p.max_bytes.is_some())
            .collect();
        let reconciling = config.destinations.iter().any(|d| d.reconcile_every_s > 0);
        if logs.is_empty() && !reconciling && config.destinations.is_empty() {
            return Ok(None);
        }
        let tick = if reconciling {
            RECONCILE_TICK
        } else {
            RETENTION_INTERVAL
        };
        let (stop, stopped) = crossbeam_channel::bounded::<()>(1);
        let mut last_retention: Option<std::time::Instant> = None;
        let thread = std::thread::Builder::new().name("orderly-maintenance".into()).spawn(move || loop {
            if last_retention.is_none_or(|t| t.elapsed() >= RETENTION_INTERVAL) {
                last_retention = Some(std::time::Instant::now());
                for (queue, log, policy) in &logs {
                    match log.enforce_retention(policy, crate::wal::now_ms()) {
                        Ok(deleted) if !deleted.is_empty() => tracing::info!(%queue, segments = deleted.len(), log = %log.dir().display(), "retention deleted segments every reader had passed"),
                        Ok(_) => {}
                        Err(e) => tracing::error!(%queue, error = %e, "retention failed"),
                    }
                }
                engine.trim_journals(crate::wal::now_ms());
            }
            if reconciling {
                engine.scheduled_reconciliations(crate::wal::now_ms());
            }
            match stopped.recv_timeout(tick) {
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
                _ => return,
            }
        })?;
        Ok(Some(Maintenance { stop, thread }))
    }

    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// How often retention runs.
const RETENTION_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
/// How often due reconciliations are looked for (`reconcile_every_s` >= 10).
const RECONCILE_TICK: std::time::Duration = std::time::Duration::from_secs(5);

/// A started broker: logs open, sockets bound, not yet serving.
pub struct Server {
    logs: BTreeMap<String, Arc<Log>>,
    engine: Arc<Engine>,
    control: Option<ControlServer>,
    maintenance: Option<Maintenance>,
    event_loop: EventLoop,
    metrics: Arc<Metrics>,
    bound: Vec<(String, SocketAddr, String)>,
    _lock: File,
}

impl Server {
    pub fn start(config: &Config) -> Result<Server, ServeError> {
        Self::start_with(config, Arc::new(FsStorage))
    }

    /// Starts on any [`Storage`] for the logs (tests inject faults this way;
    /// the data-dir lock always uses the real file system).
    pub fn start_with(config: &Config, storage: Arc<dyn Storage>) -> Result<Server, ServeError> {
        let lock = lock_data_dir(&config.data_dir)?;
        raise_open_files_limit();
        let mut logs = BTreeMap::new();
        for queue in config.queue_names() {
            let log = Log::open_with(
                storage.clone(),
                &config.queue_dir(&queue),
                config.wal.clone(),
            )
            .map_err(|source| ServeError::Wal {
                queue: queue.clone(),
                source,
            })?;
            logs.insert(queue, Arc::new(log));
        }
        let queue_names: Vec<String> = logs.keys().cloned().collect();
        let now = crate::wal::now_ms();
        let dedupes = queue_names
            .iter()
            .map(|q| dedupe::QueueDedupe::open(&config.queue(q), logs[q].clone(), now))
            .collect();
        let mut slots = Vec::new();
        let mut bound = Vec::new();
        for l in &config.listeners {
            let socket =
                mio::net::TcpListener::bind(l.listen).map_err(|source| ServeError::Bind {
                    name: l.name.clone(),
                    addr: l.listen,
                    source,
                })?;
            let addr = socket.local_addr()?;
            bound.push((l.name.clone(), addr, l.queue.clone()));
            let appender = logs
                .get(&l.queue)
                .expect("a log per configured queue")
                .appender();
            slots.push(ListenerSlot {
                config: l.clone(),
                queue: queue_names
                    .iter()
                    .position(|q| *q == l.queue)
                    .expect("a log per configured queue"),
                socket: Some(socket),
                appender,
                active: 0,
            });
        }
        let metrics = Arc::new(Metrics::default());
        let event_loop = EventLoop::new(
            slots,
            metrics.clone(),
            config.read_buffer_budget_bytes,
            dedupes,
        )?;
        let audit =
            AuditLog::open(storage.clone(), &config.layout().audit_log()).map_err(|source| {
                ServeError::DataDir {
                    dir: config.data_dir.clone(),
                    source,
                }
            })?;
        let engine = Arc::new(Engine::start(config, &logs, storage)?);
        let control = ControlServer::start(&config.data_dir, engine.clone(), Arc::new(audit))
            .map_err(|source| ServeError::DataDir {
                dir: config.data_dir.clone(),
                source,
            })?;
        let maintenance = Maintenance::start(&logs, engine.clone(), config)?;
        Ok(Server {
            logs,
            engine,
            control: Some(control),
            maintenance,
            event_loop,
            metrics,
            bound,
            _lock: lock,
        })
    }

    /// `(listener name, bound address, queue)` for every listener.
    pub fn bound(&self) -> &[(String, SocketAddr, String)] {
        &self.bound
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.event_loop.shutdown_handle()
    }

    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Serves until shut down, then stops delivery (committing cursors) and
    /// closes every log (final checkpoint).
    pub fn run(mut self) -> Result<(), ServeError> {
        let served = self.event_loop.run();
        drop(self.event_loop);
        if let Some(c) = self.control.take() {
            c.stop();
        }
        if let Some(m) = self.maintenance.take() {
            m.stop();
        }
        self.engine.stop();
        drop(self.engine);
        served?;
        for (queue, log) in std::mem::take(&mut self.logs) {
            match Arc::try_unwrap(log) {
                Ok(log) => log
                    .close()
                    .map_err(|source| ServeError::Wal { queue, source })?,
                Err(_) => {
                    tracing::warn!(%queue, "log still referenced at shutdown; closing without a final checkpoint")
                }
            }
        }
        tracing::info!(metrics = %self.metrics.summary(), "stopped");
        Ok(())
    }

    /// The delivery engine (status and operator actions).
    pub fn engine(&self) -> Arc<Engine> {
        self.engine.clone()
    }
}

/// Raises the soft limit on open files to the hard limit. Connections,
/// segments, index files and sockets each take a descriptor; the usual soft
/// limit of 1024 is far below what a busy broker may need, while the hard
/// limit (often 524288 under systemd) is the administrator's real bound.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read or write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            lim.rlim_cur = before;
        }
    }
    tracing::info!(
        soft = lim.rlim_cur,
        hard = lim.rlim_max,
        raised_from = before,
        "open files limit"
    );
}

/// One broker per data dir: two writers on one log would corrupt it.
fn lock_data_dir(dir: &std::path::Path) -> Result<File, ServeError> {
    std::fs::create_dir_all(dir).map_err(|source| ServeError::DataDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let lock = crate::layout::DataDir::new(dir).lock_file();
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(|source| ServeError::DataDir {
            dir: dir.to_path_buf(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(ServeError::Locked {
            dir: dir.to_path_buf(),
            lock,
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(ServeError::DataDir {
            dir: dir.to_path_buf(),
            source,
        }),
    }
}
