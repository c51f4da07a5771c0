//! One MLLP connection: its buffers, its in-order ACK queue and its limits.
//!
//! ACKs leave in the order their frames arrived, whatever order appends
//! complete in: each frame takes a slot in `acks`, and bytes move to the
//! write buffer only from the front of that queue.
use crate::constants::CONNECTION_WRITE_BUFFER_BYTES_MAX;
use crate::mllp::FrameDecoder;
use mio::net::TcpStream;
use std::collections::VecDeque;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::time::Instant;

/// An ACK position in arrival order.
pub enum AckSlot {
    /// Waiting for its append to complete.
    Waiting,
    /// Framed ACK bytes, waiting for the slots before it.
    Ready(Vec<u8>),
}

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
    pub rbuf: Vec<u8>,
    pub decoder: FrameDecoder,
    pub wbuf: Vec<u8>,
    pub wpos: usize,
    pub acks: VecDeque<AckSlot>,
    /// Appends submitted and not yet completed.
    pub inflight: usize,
    pub last_read: Instant,
    /// When the last bytes arrived: a trailing `0x1C` ends its frame once
    /// nothing more came for the listener's `frame_end_pause_ms`.
    pub last_bytes_at: Instant,
    /// A timer is queued for this connection's trailing `0x1C`.
    pub end_timer_armed: bool,
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
            rbuf: Vec::new(),
            decoder: FrameDecoder::new(max_frame_bytes),
            wbuf: Vec::new(),
            wpos: 0,
            acks: VecDeque::new(),
            inflight: 0,
            last_read: Instant::now(),
            last_bytes_at: Instant::now(),
            end_timer_armed: false,
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
        debug_assert!(self.acks.len() >= self.inflight);
        self.state == ConnState::Open
            && self.acks.len() < max_inflight
            && self.pending_write() < CONNECTION_WRITE_BUFFER_BYTES_MAX
    }

    pub fn pending_write(&self) -> usize {
        self.wbuf.len() - self.wpos
    }

    /// Nothing left to answer or send.
    pub fn is_quiet(&self) -> bool {
        self.acks.is_empty() && self.pending_write() == 0
    }

    /// Writes a framed ACK into its slot: straight to the write buffer when
    /// it is first in line, else parked until the slots before it are done.
    pub fn fill_oldest_waiting(&mut self, build: impl FnOnce(&mut Vec<u8>)) {
        let Some(i) = self.acks.iter().position(|s| matches!(s, AckSlot::Waiting)) else {
            debug_assert!(false, "a completion always has a waiting slot");
            return;
        };
        // Ready slots never sit at the front (they are released as soon as
        // they get there, and push_ready queues one only behind a waiting
        // slot), and completions come back in submission order, so the
        // oldest waiting slot is the front one. The other branch keeps ACK
        // order intact should that ever stop being true.
        debug_assert_eq!(i, 0, "completions fill ACK slots front first");
        if i == 0 {
            build(&mut self.wbuf);
            self.acks.pop_front();
            self.release_ready();
        } else {
            let mut bytes = Vec::with_capacity(256);
            build(&mut bytes);
            self.acks[i] = AckSlot::Ready(bytes);
        }
    }
}

/// Queues an ACK that is ready now (a NAK for a refused frame). Takes the
/// connection's fields apart so the frame (in `rbuf`) can stay borrowed.
pub fn push_ready(
    acks: &mut VecDeque<AckSlot>,
    wbuf: &mut Vec<u8>,
    build: impl FnOnce(&mut Vec<u8>),
) {
    if acks.is_empty() {
        build(wbuf);
    } else {
        let mut bytes = Vec::with_capacity(256);
        build(&mut bytes);
        acks.push_back(AckSlot::Ready(bytes));
    }
}

impl Conn {
    /// Moves ready ACKs at the front of the queue into the write buffer.
    fn release_ready(&mut self) {
        while let Some(AckSlot::Ready(_)) = self.acks.front() {
            if let Some(AckSlot::Ready(bytes)) = self.acks.pop_front() {
                self.wbuf.extend_from_slice(&bytes);
            }
        }
    }

    /// Writes buffered bytes until done or the socket would block.
    pub fn flush(&mut self) -> io::Result<()> {
        while self.wpos < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        Ok(())
    }
}
