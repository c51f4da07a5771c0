//! One MLLP connection: its socket, its ingest session and its limits.
//!
//! The bytes, frames and answer order live in [`Session`] (no I/O); this
//! is the socket side: reading state, timers and writing answers out.
use super::session::Session;
use crate::constants::CONNECTION_WRITE_BUFFER_BYTES_MAX;
use mio::net::TcpStream;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    Open,
    /// The peer closed its side: answer what is pending, then close.
    PeerClosed,
    /// We decided to close: flush what is ready, then close.
    Closing,
}

pub struct Conn {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// `peer` as text, formatted once: every stored record carries it.
    pub peer_text: String,
    pub listener: usize,
    pub generation: u32,
    pub session: Session,
    pub last_read: Instant,
    /// When the last bytes arrived: a trailing `0x1C` ends its frame once
    /// nothing more came for the listener's `frame_end_pause_ms`.
    pub last_bytes_at: Instant,
    /// A timer is queued for this connection's trailing `0x1C`.
    pub end_timer_armed: bool,
    /// Queued to read again once the read budget has room.
    pub waiting_budget: bool,
    /// When the currently buffered partial frame began.
    pub frame_started: Option<Instant>,
    pub state: ConnState,
    pub writable_registered: bool,
    /// The socket may hold unread bytes: set by a readable event, cleared
    /// when a read comes back short or would block. Sockets are registered
    /// edge-triggered, and any bytes arriving after a short read raise a new
    /// event, so reading only while this is set drops the EAGAIN `read`s
    /// (two per lockstep message) without ever leaving bytes unread.
    pub read_ready: bool,
    /// An event reported the peer's close (or an error): keep reading past
    /// short reads until the socket says 0 or fails.
    pub read_closed: bool,
}

impl Conn {
    pub fn new(
        stream: TcpStream,
        peer: SocketAddr,
        listener: usize,
        generation: u32,
        max_frame_bytes: usize,
    ) -> Self {
        Self {
            stream,
            peer_text: peer.to_string(),
            peer,
            listener,
            generation,
            session: Session::new(max_frame_bytes),
            last_read: Instant::now(),
            last_bytes_at: Instant::now(),
            end_timer_armed: false,
            waiting_budget: false,
            frame_started: None,
            state: ConnState::Open,
            writable_registered: false,
            read_ready: true,
            read_closed: false,
        }
    }

    /// Whether to take more frames from this peer now. The cap counts every
    /// unanswered frame, including NAKs parked behind a pending append, so
    /// a peer cannot queue rejections without bound during a slow fsync.
    pub fn accepts_frames(&self, max_inflight: usize) -> bool {
        self.state == ConnState::Open
            && self.session.unanswered() < max_inflight
            && self.session.pending_write() < CONNECTION_WRITE_BUFFER_BYTES_MAX
    }

    /// Writes buffered answers until done or the socket would block.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.session.pending_write() > 0 {
            let s = &self.session;
            match self.stream.write(&s.out[s.written..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.session.wrote(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
