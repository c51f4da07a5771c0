//! One MLLP connection to a downstream: send, drain, read the answer.
//!
//! Sends the payload bytes unchanged and reads frames until one is an
//! answer to the message just sent (`verdict::classify` decides). Bytes the
//! downstream sent beyond its last answer (late or duplicate ACKs) are
//! drained before each send, so they can never be read as the answer to
//! the next message; a timeout drops the connection for the same reason.
use crate::constants::DELIVERY_POLL_MS;
use crate::cursor::ErrorClass;
use crate::mllp::{encode_frame, Decoded, FrameDecoder};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use super::verdict::Outcome;
use super::verdict::{classify, failed, fingerprint, AckCodes, Context};

/// Largest ACK frame read from a downstream.
const ACK_FRAME_BYTES_MAX: usize = 1024 * 1024;
/// Control ids and consumed ACKs remembered per connection, to recognise
/// stale duplicate ACKs.
const RECENT_IDS_MAX: usize = 32;
/// Bytes drained before a send, at most (a downstream flooding us is cut off).
const DRAIN_BYTES_MAX: usize = 1024 * 1024;

pub struct Link {
    target: String,
    codes: AckCodes,
    mllp_r2: bool,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    decoder: FrameDecoder,
    /// Control ids sent on this connection, oldest first.
    recent: VecDeque<Vec<u8>>,
    /// Fingerprints of the ACK frames consumed on this connection.
    consumed: VecDeque<u64>,
    frame: Vec<u8>,
    /// Socket timeouts currently set on `stream`, so the per-message path
    /// makes no `setsockopt` call when they have not changed.
    timeouts: SocketTimeouts,
    /// MSA-1 of the answer to the last message sent (`""`: none yet).
    last_code: String,
}

#[derive(Default)]
struct SocketTimeouts {
    read: Option<Duration>,
    write: Option<Duration>,
}

impl Link {
    pub fn new(target: &str, codes: AckCodes, mllp_r2: bool) -> Link {
        Link {
            target: target.to_string(),
            codes,
            mllp_r2,
            stream: None,
            buf: Vec::new(),
            decoder: FrameDecoder::for_acks(ACK_FRAME_BYTES_MAX),
            recent: VecDeque::new(),
            consumed: VecDeque::new(),
            frame: Vec::new(),
            timeouts: SocketTimeouts::default(),
            last_code: String::new(),
        }
    }

    /// MSA-1 of the answer to the last message sent, `""` if none came.
    pub fn last_ack_code(&self) -> &str {
        &self.last_code
    }

    /// Drops the connection (the next send reconnects).
    pub fn reset(&mut self) {
        self.stream = None;
        self.timeouts = SocketTimeouts::default();
        self.buf.clear();
        self.decoder = FrameDecoder::for_acks(ACK_FRAME_BYTES_MAX);
        self.recent.clear();
        self.consumed.clear();
    }

    /// Delivers one message and waits up to `timeout` for its ACK. `stop`
    /// abandons the wait (the message is then not delivered, as far as the
    /// cursor knows, and will be sent again).
    pub fn deliver(
        &mut self,
        payload: &[u8],
        control_id: &[u8],
        timeout: Duration,
        stop: &AtomicBool,
    ) -> Outcome {
        let outcome = self.try_deliver(payload, control_id, timeout, stop);
        if let Outcome::Failed { class, .. } = &outcome {
            if *class != ErrorClass::NegativeAck && *class != ErrorClass::Rejected {
                self.reset();
            }
        }
        outcome
    }

    fn try_deliver(
        &mut self,
        payload: &[u8],
        control_id: &[u8],
        timeout: Duration,
        stop: &AtomicBool,
    ) -> Outcome {
        let deadline = Instant::now() + timeout;
        self.last_code.clear();
        if let Err(e) = self.drain() {
            // Closed by the downstream since the last answer (some close
            // after every message): reconnect now rather than fail a send.
            tracing::debug!(target = %self.target, error = %e, "connection gone before the send; reconnecting");
            self.reset();
        }
        if self.stream.is_none() {
            match self.connect(timeout) {
                Ok(s) => self.stream = Some(s),
                Err(e) => {
                    return failed(
                        ErrorClass::ConnectFailed,
                        format!("cannot connect to {}: {e}", self.target),
                        None,
                    )
                }
            }
        }
        self.frame.clear();
        encode_frame(payload, &mut self.frame);
        let stream = self.stream.as_mut().expect("connected above");
        let set = if self.timeouts.write == Some(timeout) {
            Ok(())
        } else {
            self.timeouts.write = Some(timeout);
            stream.set_write_timeout(Some(timeout))
        };
        if let Err(e) = set.and_then(|_| stream.write_all(&self.frame)) {
            return failed(
                ErrorClass::ConnectionLost,
                format!("send to {} failed: {e}", self.target),
                None,
            );
        }
        loop {
            let ack = match self.next_frame(deadline, stop) {
                Ok(a) => a,
                Err(outcome) => return outcome,
            };
            let ctx = Context {
                codes: &self.codes,
                mllp_r2: self.mllp_r2,
                earlier_ids: &self.recent,
                consumed: &self.consumed,
            };
            match classify(&ack, control_id, &ctx) {
                Some(outcome) => {
                    self.last_code = super::journal::ack_code(&ack);
                    push_bounded(&mut self.consumed, fingerprint(&ack));
                    push_bounded(&mut self.recent, control_id.to_vec());
                    return outcome;
                }
                None => {
                    tracing::debug!(target = %self.target, "ignoring a frame that does not answer this message (stale duplicate ACK)")
                }
            }
        }
    }

    /// Discards whatever the downstream sent after its last answer: frames
    /// already buffered and bytes waiting in the socket. One non-blocking
    /// `recv` when the socket is empty, the usual case.
    fn drain(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            tracing::debug!(target = %self.target, bytes = self.buf.len(), "discarding buffered bytes after the last ACK");
            self.buf.clear();
            self.decoder = FrameDecoder::for_acks(ACK_FRAME_BYTES_MAX);
        }
        let Some(stream) = &self.stream else {
            return Ok(());
        };
        let mut chunk = [0u8; 4096];
        let mut drained = 0;
        while drained < DRAIN_BYTES_MAX {
            // SAFETY: `chunk` is a live, writable buffer of the length given.
            let n = unsafe {
                libc::recv(
                    stream.as_raw_fd(),
                    chunk.as_mut_ptr().cast(),
                    chunk.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            match n {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n if n > 0 => drained += n as usize,
                _ => {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::WouldBlock => break,
                        io::ErrorKind::Interrupted => continue,
                        _ => return Err(e),
                    }
                }
            }
        }
        if drained > 0 {
            tracing::info!(target = %self.target, bytes = drained, "discarded late or duplicate bytes from the downstream before sending");
        }
        Ok(())
    }

    fn connect(&self, timeout: Duration) -> io::Result<TcpStream> {
        let addrs: Vec<SocketAddr> = self.target.to_socket_addrs()?.collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolved to nothing");
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout.min(Duration::from_secs(10))) {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    return Ok(s);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// The next ACK frame, reading in short slices so `stop` is honoured.
    fn next_frame(&mut self, deadline: Instant, stop: &AtomicBool) -> Result<Vec<u8>, Outcome> {
        let mut chunk = [0u8; 8192];
        loop {
            match self.decoder.decode(&self.buf) {
                Decoded::Frame(r) => {
                    let f = self.buf[r].to_vec();
                    self.decoder.compact(&mut self.buf);
                    return Ok(f);
                }
                Decoded::Invalid(e) => {
                    return Err(failed(
                        ErrorClass::UnparseableAck,
                        format!("bad MLLP framing from {}: {e}", self.target),
                        None,
                    ))
                }
                Decoded::NeedMore => {}
                _ => continue,
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(failed(
                    ErrorClass::Timeout,
                    format!("no ACK from {} within the ack timeout", self.target),
                    None,
                ));
            }
            if stop.load(Ordering::Relaxed) {
                return Err(failed(
                    ErrorClass::ConnectionLost,
                    "broker stopping".into(),
                    None,
                ));
            }
            let slice = (deadline - now).min(Duration::from_millis(DELIVERY_POLL_MS));
            let stream = self.stream.as_mut().expect("connected");
            if self.timeouts.read != Some(slice) {
                // Without a read timeout the wait below could outlast both
                // the ack timeout and a stop request.
                if let Err(e) = stream.set_read_timeout(Some(slice)) {
                    return Err(failed(
                        ErrorClass::ConnectionLost,
                        format!("setting the read timeout for {}: {e}", self.target),
                        None,
                    ));
                }
                self.timeouts.read = Some(slice);
            }
            match stream.read(&mut chunk) {
                Ok(0) => {
                    return Err(failed(
                        ErrorClass::ConnectionLost,
                        format!("{} closed the connection before answering", self.target),
                        None,
                    ))
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => {
                    return Err(failed(
                        ErrorClass::ConnectionLost,
                        format!("reading the ACK from {}: {e}", self.target),
                        None,
                    ))
                }
            }
        }
    }
}

fn push_bounded<T>(queue: &mut VecDeque<T>, item: T) {
    if queue.len() == RECENT_IDS_MAX {
        queue.pop_front();
    }
    queue.push_back(item);
}
