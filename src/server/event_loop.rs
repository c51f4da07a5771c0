//! The mio event loop: accepts connections, decodes frames, hands appends
//! to the WAL writers and writes ACKs back in arrival order.
//!
//! Architecture Invariant: the loop never blocks on disk. Appends go to the
//! writer thread with `try_submit`; completions come back on a channel and a
//! mio `Waker`. When the writer's queue is full, or too many bytes wait for
//! it, the loop stops taking frames from every socket (backpressure) and
//! resumes when completions drain it. mio is edge-triggered, so whenever a
//! connection may want to read again the loop drives it proactively instead
//! of waiting for a readiness event.
use super::conn::{Conn, ConnState};
use super::dedupe::QueueDedupe;
use super::ingest::{self, AckIds};
use super::session::{settle, Appender as SessionAppender, Ingest, Refused, Session, Step, Ticket};
use crate::config::ListenerConfig;
use crate::constants::{
    INFLIGHT_BYTES_MAX, READ_BUFFER_ALLOWANCE_BYTES, READ_CHUNK_BYTES, SHUTDOWN_GRACE_S,
};
use crate::metrics::Metrics;

use crate::wal::TrySubmitError;
use crate::wal::{now_ms, AppendDone, AppendError, AppendRequest, Appender, Notify};
use crossbeam_channel::{unbounded, Receiver, Sender};
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAKER: Token = Token(usize::MAX);
/// How often keys past their dedupe window are dropped from the index.
const DEDUPE_EXPIRY_INTERVAL: Duration = Duration::from_secs(60);
const CONN_BASE: usize = 1 << 20;
/// Recycled payload buffers kept for reuse, and the largest one kept.
const POOL_BUFFERS_MAX: usize = 1024;
const POOL_BUFFER_BYTES_MAX: usize = 64 * 1024;

pub struct ListenerSlot {
    pub config: ListenerConfig,
    /// Index of the listener's queue in the loop's idempotency indexes.
    pub queue: usize,
    pub socket: Option<TcpListener>,
    pub appender: Appender,
    pub active: usize,
}

struct WakerNotify(Arc<Waker>);

impl Notify for WakerNotify {
    fn notify(&self) {
        if let Err(e) = self.0.wake() {
            tracing::error!(error = %e, "cannot wake the event loop");
        }
    }
}

/// Asks a running loop to shut down gracefully.
#[derive(Clone)]
pub struct ShutdownHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

pub struct EventLoop {
    poll: Poll,
    waker: Arc<Waker>,
    notify: Arc<dyn Notify>,
    listeners: Vec<ListenerSlot>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    next_generation: u32,
    done_tx: Sender<AppendDone>,
    done_rx: Receiver<AppendDone>,
    /// Requests the writer had no room for, in submission order.
    stalled: VecDeque<(usize, AppendRequest)>,
    inflight_bytes: usize,
    pool: Vec<Vec<u8>>,
    ids: AckIds,
    metrics: Arc<Metrics>,
    shutdown: Arc<AtomicBool>,
    drain_deadline: Option<Instant>,
    dirty: Vec<usize>,
    chunk: Box<[u8]>,
    /// When to look again at a connection whose buffer ends in a `0x1C`
    /// (deadline, slot, generation). At most one entry per connection.
    end_timers: Vec<(Instant, usize, u32)>,
    /// Appends a session asked for, before they are submitted (reused).
    asked: Vec<(Vec<u8>, Vec<u8>)>,
    /// This loop turn serves one connection only: a lone append may be
    /// committed inline (see `Appender::try_commit_inline`).
    lone: bool,
    /// An inline commit ran this turn: its index bookkeeping is due.
    inline_committed: bool,
    /// Bytes in all connections' read buffers, and the budget for them.
    buffered: usize,
    budget: usize,
    /// The one connection allowed past the spent budget (slot, generation).
    overdraft: Option<(usize, u32)>,
    /// Connections waiting for budget, to drive again when some frees.
    budget_waiters: Vec<(usize, u32)>,
    /// Per queue: its idempotency index (`None`: no deduplication).
    dedupes: Vec<Option<QueueDedupe>>,
    /// Tickets of closed connections' appends still in flight, by tag,
    /// with their listener: settled when the completions come.
    orphans: HashMap<u64, (usize, VecDeque<Ticket>)>,
    last_expiry: Instant,
}

impl EventLoop {
    pub fn new(
        listeners: Vec<ListenerSlot>,
        metrics: Arc<Metrics>,
        read_buffer_budget_bytes: usize,
        dedupes: Vec<Option<QueueDedupe>>,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let mut listeners = listeners;
        for (i, l) in listeners.iter_mut().enumerate() {
            if let Some(socket) = &mut l.socket {
                // Listener sockets are registered once; index i is their token.
                poll.registry()
                    .register(socket, Token(i), Interest::READABLE)?;
            }
        }
        // Completions are bounded by construction: at most max_inflight per
        // connection and max_connections per listener can be outstanding.
        let (done_tx, done_rx) = unbounded();
        Ok(Self {
            notify: Arc::new(WakerNotify(waker.clone())),
            poll,
            waker,
            listeners,
            conns: Vec::new(),
            free: Vec::new(),
            next_generation: 0,
            done_tx,
            done_rx,
            stalled: VecDeque::new(),
            inflight_bytes: 0,
            pool: Vec::new(),
            ids: AckIds::new(),
            metrics,
            shutdown: Arc::new(AtomicBool::new(false)),
            drain_deadline: None,
            dirty: Vec::new(),
            chunk: vec![0u8; READ_CHUNK_BYTES].into_boxed_slice(),
            end_timers: Vec::new(),
            asked: Vec::new(),
            lone: false,
            inline_committed: false,
            buffered: 0,
            budget: read_buffer_budget_bytes,
            overdraft: None,
            budget_waiters: Vec::new(),
            dedupes,
            orphans: HashMap::new(),
            last_expiry: Instant::now(),
        })
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            flag: self.shutdown.clone(),
            waker: self.waker.clone(),
        }
    }

    /// Runs until a shutdown was requested and in-flight work finished.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut last_sweep = Instant::now();
        loop {
            let timeout = if self.drain_deadline.is_some() {
                Duration::from_millis(50)
            } else {
                Duration::from_secs(1)
            };
            let timeout = self
                .end_timers
                .iter()
                .map(|t| t.0)
                .min()
                .map_or(timeout, |due| {
                    timeout.min(due.saturating_duration_since(Instant::now()))
                });
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let mut conn_events = 0;
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    Token(t) if t < CONN_BASE => self.accept_all(t),
                    Token(t) => {
                        conn_events += 1;
                        let slot = t - CONN_BASE;
                        let closed = ev.is_read_closed() || ev.is_error();
                        if ev.is_readable() || closed {
                            if let Some(Some(conn)) = self.conns.get_mut(slot) {
                                conn.read_ready = true;
                                conn.read_closed |= closed;
                            }
                        }
                        self.dirty.push(slot);
                    }
                }
            }
            self.expire_end_timers();
            let blocked_before = self.globally_blocked();
            self.handle_completions();
            self.retry_stalled();
            if blocked_before && !self.globally_blocked() {
                self.dirty.extend(
                    self.conns
                        .iter()
                        .enumerate()
                        .filter(|(_, c)| c.is_some())
                        .map(|(i, _)| i),
                );
            }
            self.lone = conn_events == 1 && self.dirty.len() == 1;
            self.drive_dirty();
            self.lone = false;
            if !self.done_rx.is_empty() {
                // Inline commits completed during this turn: answer now
                // rather than after another poll.
                self.handle_completions();
                self.drive_dirty();
            }
            if std::mem::take(&mut self.inline_committed) {
                // The answers are written: now the index bookkeeping.
                self.listeners
                    .iter()
                    .for_each(|l| l.appender.tidy_after_inline());
            }
            if self.shutdown.load(Ordering::SeqCst) && self.drain_deadline.is_none() {
                self.begin_drain();
            }
            if last_sweep.elapsed() >= Duration::from_secs(1) {
                self.sweep_timeouts();
                last_sweep = Instant::now();
            }
            if self.last_expiry.elapsed() >= DEDUPE_EXPIRY_INTERVAL {
                self.expire_dedupe_keys();
            }
            if self.drain_finished() {
                tracing::info!("shutdown complete");
                return Ok(());
            }
        }
    }

    fn globally_blocked(&self) -> bool {
        !self.stalled.is_empty() || self.inflight_bytes >= INFLIGHT_BYTES_MAX
    }

    fn accept_all(&mut self, l: usize) {
        loop {
            let Some(socket) = &self.listeners[l].socket else {
                return;
            };
            match socket.accept() {
                Ok((stream, peer)) => self.admit(l, stream, peer),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!(listener = %self.listeners[l].config.name, error = %e, "accept failed");
                    return;
                }
            }
        }
    }

    fn admit(&mut self, l: usize, mut stream: mio::net::TcpStream, peer: std::net::SocketAddr) {
        let listener = &mut self.listeners[l];
        if listener.active >= listener.config.max_connections {
            Metrics::inc(&self.metrics.connections_refused);
            tracing::warn!(listener = %listener.config.name, %peer, max_connections = listener.config.max_connections, "connection refused: listener at max_connections");
            return;
        }
        let _ = stream.set_nodelay(true);
        let slot = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut stream, Token(CONN_BASE + slot), Interest::READABLE)
        {
            tracing::error!(%peer, error = %e, "cannot register connection");
            self.free.push(slot);
            return;
        }
        self.next_generation = self.next_generation.wrapping_add(1);
        listener.active += 1;
        Metrics::inc(&self.metrics.connections_accepted);
        tracing::debug!(listener = %listener.config.name, %peer, "connection accepted");
        self.conns[slot] = Some(Conn::new(
            stream,
            peer,
            l,
            self.next_generation,
            listener.config.max_frame_bytes,
        ));
        self.dirty.push(slot);
    }

    fn drive_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for &slot in &dirty {
            self.drive(slot);
        }
        dirty.clear();
        self.dirty = dirty;
    }

    /// Brings one connection up to date: frames, reads, writes, interest, close.
    fn drive(&mut self, slot: usize) {
        let Some(mut conn) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        let before = conn.session.rbuf.len();
        let alive = self.pump(slot, &mut conn);
        self.account(slot, &conn, before);
        let done = !alive
            || (conn.state != ConnState::Open
                && conn.session.inflight() == 0
                && conn.session.is_quiet());
        if done {
            self.close(slot, conn);
            return;
        }
        let want_write = conn.session.pending_write() > 0;
        if want_write != conn.writable_registered {
            let interest = if want_write {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if self
                .poll
                .registry()
                .reregister(&mut conn.stream, Token(CONN_BASE + slot), interest)
                .is_err()
            {
                self.close(slot, conn);
                return;
            }
            conn.writable_registered = want_write;
        }
        self.conns[slot] = Some(conn);
    }

    /// Processes buffered frames, reads while wanted, flushes. False if the socket failed.
    fn pump(&mut self, slot: usize, conn: &mut Conn) -> bool {
        loop {
            self.take_frames(slot, conn);
            if !conn.read_ready || !self.wants_read(conn) || !self.may_buffer(slot, conn) {
                break;
            }
            match conn.stream.read(&mut self.chunk) {
                Ok(0) => {
                    conn.state = ConnState::PeerClosed;
                    self.end_of_input(slot, conn, "the peer closed the connection");
                    break;
                }
                Ok(n) => {
                    Metrics::add(&self.metrics.bytes_received, n as u64);
                    conn.last_bytes_at = Instant::now();
                    conn.session.rbuf.extend_from_slice(&self.chunk[..n]);
                    // A short read emptied the socket (see `Conn::read_ready`).
                    conn.read_ready = n == self.chunk.len() || conn.read_closed;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    conn.read_ready = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::debug!(peer = %conn.peer, error = %e, "connection read failed");
                    return false;
                }
            }
        }
        conn.flush().is_ok()
    }

    fn wants_read(&self, conn: &Conn) -> bool {
        let max_inflight = self.listeners[conn.listener].config.max_inflight;
        conn.accepts_frames(max_inflight)
            && !self.globally_blocked()
            && self.drain_deadline.is_none()
    }

    /// Decodes and handles complete frames while the connection may take them.
    fn take_frames(&mut self, slot: usize, conn: &mut Conn) {
        while self.wants_read(conn) {
            match self.with_session(slot, conn, |s, ing, app| s.step(ing, app)) {
                Step::Frame => conn.last_read = Instant::now(),
                Step::Junk => {}
                Step::NeedMore => {
                    if !conn.session.decoder.end_pending() {
                        break;
                    }
                    if !self.pause_ended(conn) {
                        self.arm_end_timer(slot, conn);
                        break;
                    }
                    self.with_session(slot, conn, |s, ing, app| s.finish_pending(ing, app));
                    conn.last_read = Instant::now();
                }
                Step::Close(_) => {
                    conn.state = ConnState::Closing;
                    break;
                }
            }
        }
        conn.session.compact();
        conn.frame_started = if conn.session.rbuf.is_empty() {
            None
        } else {
            conn.frame_started.or(Some(Instant::now()))
        };
    }

    /// Runs `f` on a connection's session with its listener's context,
    /// then submits the appends it asked for (payloads copied into pooled
    /// buffers, tagged with the connection).
    fn with_session<R>(
        &mut self,
        slot: usize,
        conn: &mut Conn,
        f: impl FnOnce(&mut Session, &mut Ingest<'_>, &mut dyn SessionAppender) -> R,
    ) -> R {
        let mut pool = std::mem::take(&mut self.pool);
        let mut asked = std::mem::take(&mut self.asked);
        let listener = &self.listeners[conn.listener];
        let failure = listener.appender.failure();
        let refused = match failure.as_deref() {
            Some(reason) => Some(Refused::StorageFailed(reason)),
            None => self
                .drain_deadline
                .is_some()
                .then_some(Refused::ShuttingDown),
        };
        let result = {
            let mut ing = Ingest {
                listener: &listener.config,
                peer: &conn.peer_text,
                ids: &mut self.ids,
                metrics: &self.metrics,
                now_ms: now_ms(),
                refused,
                dedupe: self.dedupes[listener.queue].as_mut(),
            };
            let mut append = |payload: &[u8], meta: Vec<u8>| {
                let mut buf = pool.pop().unwrap_or_default();
                buf.clear();
                buf.extend_from_slice(payload);
                asked.push((buf, meta));
            };
            f(&mut conn.session, &mut ing, &mut append)
        };
        self.pool = pool;
        let tag = (slot as u64) << 32 | u64::from(conn.generation);
        let inline = self.lone && asked.len() == 1 && self.stalled.is_empty();
        for (payload, meta) in asked.drain(..) {
            self.inflight_bytes += payload.len();
            let req = AppendRequest {
                payload,
                meta,
                tag,
                reply: self.done_tx.clone(),
                // An inline commit's completion is read in this same turn.
                notify: (!inline).then(|| self.notify.clone()),
            };
            if inline {
                match self.listeners[conn.listener]
                    .appender
                    .try_commit_inline(req)
                {
                    Ok(()) => {
                        self.inline_committed = true;
                        continue;
                    }
                    Err(mut req) => {
                        req.notify = Some(self.notify.clone());
                        self.submit(conn.listener, req);
                    }
                }
            } else {
                self.submit(conn.listener, req);
            }
        }
        self.asked = asked;
        result
    }

    fn submit(&mut self, listener: usize, req: AppendRequest) {
        if !self.stalled.is_empty() {
            self.stalled.push_back((listener, req));
            return;
        }
        match self.listeners[listener].appender.try_submit(req) {
            Ok(()) => {}
            Err(TrySubmitError::Full(req)) => self.stalled.push_back((listener, req)),
            Err(TrySubmitError::Closed(req)) => self.complete_locally(req, AppendError::Closed),
        }
    }

    fn retry_stalled(&mut self) {
        while let Some((l, req)) = self.stalled.pop_front() {
            match self.listeners[l].appender.try_submit(req) {
                Ok(()) => {}
                Err(TrySubmitError::Full(req)) => {
                    self.stalled.push_front((l, req));
                    return;
                }
                Err(TrySubmitError::Closed(req)) => self.complete_locally(req, AppendError::Closed),
            }
        }
    }

    fn complete_locally(&mut self, req: AppendRequest, e: AppendError) {
        let done = AppendDone {
            tag: req.tag,
            result: Err(e),
            payload: req.payload,
        };
        let _ = self.done_tx.send(done);
    }

    fn handle_completions(&mut self) {
        while let Ok(done) = self.done_rx.try_recv() {
            self.inflight_bytes -= done.payload.len();
            let slot = (done.tag >> 32) as usize;
            let generation = done.tag as u32;
            if let Err(e) = &done.result {
                Metrics::inc(&self.metrics.messages_storage_failed);
                tracing::warn!(control_id = %ingest::control_id_text(&done.payload), error = %e, "message not stored");
            }
            let result = done.result.as_ref().map(|a| a.offset);
            if let Some((l, tickets)) = self.orphans.get_mut(&done.tag) {
                // The connection is gone; its append still settles.
                let l = *l;
                if let Some(ticket) = tickets.pop_front() {
                    let listener = &self.listeners[l];
                    let mut ing = Ingest {
                        listener: &listener.config,
                        peer: "-",
                        ids: &mut self.ids,
                        metrics: &self.metrics,
                        now_ms: now_ms(),
                        refused: None,
                        dedupe: self.dedupes[listener.queue].as_mut(),
                    };
                    let _ = settle(&ticket, result, &mut ing);
                }
                if tickets.is_empty() {
                    self.orphans.remove(&done.tag);
                }
            } else if let Some(conn) = self
                .conns
                .get_mut(slot)
                .and_then(Option::as_mut)
                .filter(|c| c.generation == generation)
            {
                let listener = &self.listeners[conn.listener];
                let mut ing = Ingest {
                    listener: &listener.config,
                    peer: &conn.peer_text,
                    ids: &mut self.ids,
                    metrics: &self.metrics,
                    now_ms: now_ms(),
                    refused: None,
                    dedupe: self.dedupes[listener.queue].as_mut(),
                };
                conn.session.complete(result, &done.payload, &mut ing);
                self.dirty.push(slot);
            }
            let mut payload = done.payload;
            if payload.capacity() <= POOL_BUFFER_BYTES_MAX && self.pool.len() < POOL_BUFFERS_MAX {
                payload.clear();
                self.pool.push(payload);
            }
        }
    }

    /// A trailing `0x1C` ends its frame once the socket is drained and
    /// nothing arrived for the listener's pause.
    fn pause_ended(&self, conn: &Conn) -> bool {
        let pause = self.listeners[conn.listener].config.frame_end_pause_ms;
        !conn.read_ready && conn.last_bytes_at.elapsed() >= Duration::from_millis(pause)
    }

    fn arm_end_timer(&mut self, slot: usize, conn: &mut Conn) {
        if conn.end_timer_armed {
            return;
        }
        let pause = Duration::from_millis(self.listeners[conn.listener].config.frame_end_pause_ms);
        conn.end_timer_armed = true;
        self.end_timers
            .push((conn.last_bytes_at + pause, slot, conn.generation));
    }

    /// Drives connections whose pause may be over; `take_frames` decides.
    fn expire_end_timers(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.end_timers.len() {
            let (due, slot, generation) = self.end_timers[i];
            if due > now {
                i += 1;
                continue;
            }
            self.end_timers.swap_remove(i);
            if let Some(conn) = self.conns[slot]
                .as_mut()
                .filter(|c| c.generation == generation)
            {
                conn.end_timer_armed = false;
                self.dirty.push(slot);
            }
        }
    }

    /// The peer sent its last byte, or stalled past `frame_timeout_s`.
    fn end_of_input(&mut self, slot: usize, conn: &mut Conn, why: &'static str) {
        self.with_session(slot, conn, |s, ing, app| s.end_of_input(why, ing, app));
    }

    /// Whether this connection may read more now. Small buffers always
    /// may; beyond its allowance a connection draws on the shared budget,
    /// and when that is spent one connection at a time (the overdraft) may
    /// go on, so a frame larger than what is left still completes and the
    /// budget can never deadlock. Memory stays within the allowances, the
    /// budget and one `max_frame_bytes`.
    fn may_buffer(&mut self, slot: usize, conn: &mut Conn) -> bool {
        let len = conn.session.rbuf.len();
        if len + READ_CHUNK_BYTES <= READ_BUFFER_ALLOWANCE_BYTES
            || self.buffered + READ_CHUNK_BYTES <= self.budget
            || self.overdraft == Some((slot, conn.generation))
        {
            return true;
        }
        if self.overdraft.is_none() {
            Metrics::inc(&self.metrics.read_budget_overdrafts);
            self.overdraft = Some((slot, conn.generation));
            return true;
        }
        if !conn.waiting_budget {
            Metrics::inc(&self.metrics.read_budget_waits);
            conn.waiting_budget = true;
            self.budget_waiters.push((slot, conn.generation));
        }
        false
    }

    /// Books the change of one connection's buffer since `before`.
    fn account(&mut self, slot: usize, conn: &Conn, before: usize) {
        let after = conn.session.rbuf.len();
        self.buffered = self.buffered + after - before;
        if self.overdraft == Some((slot, conn.generation)) && after < READ_BUFFER_ALLOWANCE_BYTES {
            self.overdraft = None;
        }
        if after < before || self.overdraft.is_none() {
            self.wake_budget_waiters();
        }
    }

    fn wake_budget_waiters(&mut self) {
        for (slot, generation) in self.budget_waiters.drain(..) {
            if let Some(conn) = self.conns[slot]
                .as_mut()
                .filter(|c| c.generation == generation)
            {
                conn.waiting_budget = false;
                self.dirty.push(slot);
            }
        }
    }

    fn sweep_timeouts(&mut self) {
        for slot in 0..self.conns.len() {
            let Some(conn) = &self.conns[slot] else {
                continue;
            };
            let cfg = &self.listeners[conn.listener].config;
            // A frame in progress is not idleness: frame_timeout_s judges it
            // (and answers it when it runs out), so it is never closed silently.
            let idle = conn.session.inflight() == 0
                && conn.session.is_quiet()
                && conn.frame_started.is_none()
                && conn.last_read.elapsed() > Duration::from_secs(cfg.idle_timeout_s);
            let slow = conn.session.inflight() == 0
                && conn
                    .frame_started
                    .is_some_and(|t| t.elapsed() > Duration::from_secs(cfg.frame_timeout_s));
            if !(idle || slow) {
                continue;
            }
            let (counter, what) = if slow {
                (
                    &self.metrics.connections_closed_slow,
                    "partial frame older than frame_timeout_s",
                )
            } else {
                (
                    &self.metrics.connections_closed_idle,
                    "no message for idle_timeout_s",
                )
            };
            Metrics::inc(counter);
            tracing::info!(listener = %cfg.name, peer = %conn.peer, reason = what, "closing connection");
            if let Some(mut conn) = self.conns[slot].take() {
                if slow {
                    // The NAK is small and nothing else is queued (no append
                    // is in flight), so one write normally delivers it.
                    let before = conn.session.rbuf.len();
                    self.end_of_input(slot, &mut conn, "frame_timeout_s passed mid-frame");
                    self.account(slot, &conn, before);
                    let _ = conn.flush();
                }
                self.close(slot, conn);
            }
        }
    }

    /// Forgets idempotency keys older than their queue's window.
    fn expire_dedupe_keys(&mut self) {
        let now = now_ms();
        for d in self.dedupes.iter_mut().flatten() {
            let n = d.expire(now);
            if n > 0 {
                tracing::debug!(
                    expired = n,
                    keys = d.index.len(),
                    "idempotency keys past their window forgotten"
                );
            }
        }
        self.last_expiry = Instant::now();
    }

    fn close(&mut self, slot: usize, mut conn: Conn) {
        self.buffered -= conn.session.rbuf.len();
        if conn.session.inflight() > 0 {
            let tickets = conn.session.orphan_tickets();
            let tag = (slot as u64) << 32 | u64::from(conn.generation);
            self.orphans.insert(tag, (conn.listener, tickets));
        }
        if self.overdraft == Some((slot, conn.generation)) {
            self.overdraft = None;
        }
        self.wake_budget_waiters();
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.listeners[conn.listener].active -= 1;
        self.free.push(slot);
        tracing::debug!(peer = %conn.peer, "connection closed");
    }

    fn begin_drain(&mut self) {
        tracing::info!(
            "shutdown requested: no new connections; finishing in-flight appends and ACKs"
        );
        for l in &mut self.listeners {
            if let Some(mut s) = l.socket.take() {
                let _ = self.poll.registry().deregister(&mut s);
            }
        }
        self.drain_deadline = Some(Instant::now() + Duration::from_secs(SHUTDOWN_GRACE_S));
        self.answer_buffered_frames();
    }

    /// No more frames are taken once a drain begins, but some were already
    /// read: held back by `max_inflight` or backpressure, or cut off by the
    /// stop of reading. Each gets "not stored, resend later" (AR/CE, in
    /// frame order behind the appends in flight) instead of a close in
    /// silence; a partial frame with a readable MSH likewise.
    fn answer_buffered_frames(&mut self) {
        debug_assert!(self.drain_deadline.is_some(), "only while draining");
        for slot in 0..self.conns.len() {
            let Some(mut conn) = self.conns[slot].take() else {
                continue;
            };
            if !conn.session.rbuf.is_empty() {
                let before = conn.session.rbuf.len();
                self.end_of_input(slot, &mut conn, "the broker is shutting down");
                self.account(slot, &conn, before);
                self.dirty.push(slot);
            }
            self.conns[slot] = Some(conn);
        }
    }

    fn drain_finished(&self) -> bool {
        let Some(deadline) = self.drain_deadline else {
            return false;
        };
        let busy = !self.stalled.is_empty()
            || self
                .conns
                .iter()
                .flatten()
                .any(|c| c.session.inflight() > 0 || c.session.pending_write() > 0);
        if busy && Instant::now() >= deadline {
            tracing::warn!("shutdown grace period over with work still pending; unanswered messages were not acknowledged and will be resent by their senders");
            return true;
        }
        !busy
    }
}
