//! One MLLP connection to a downstream, and what its answer means.
//!
//! Sends the payload bytes unchanged, waits for the ACK whose MSA-2 names
//! the control id just sent, and classifies the outcome. ACKs naming a
//! message sent earlier on this connection are stale duplicates (some
//! servers repeat old ACKs) and are ignored; an ACK naming anything else is
//! a mismatch.
use crate::constants::DELIVERY_POLL_MS;
use crate::cursor::ErrorClass;
use crate::hl7::ack::{parse_ack, AckCode};
use crate::mllp::{encode_frame, Decoded, FrameDecoder};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Largest ACK frame read from a downstream.
const ACK_FRAME_BYTES_MAX: usize = 1024 * 1024;
/// Control ids remembered per connection to recognise stale duplicate ACKs.
const RECENT_IDS_MAX: usize = 32;

/// How one delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    Failed {
        class: ErrorClass,
        text: String,
        ack: Option<Vec<u8>>,
    },
}

pub struct Link {
    target: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    decoder: FrameDecoder,
    recent: VecDeque<Vec<u8>>,
    frame: Vec<u8>,
    /// Socket timeouts currently set on `stream`, so the per-message path
    /// makes no `setsockopt` call when they have not changed.
    timeouts: SocketTimeouts,
}

#[derive(Default)]
struct SocketTimeouts {
    read: Option<Duration>,
    write: Option<Duration>,
}

impl Link {
    pub fn new(target: &str) -> Link {
        Link {
            target: target.to_string(),
            stream: None,
            buf: Vec::new(),
            decoder: FrameDecoder::for_acks(ACK_FRAME_BYTES_MAX),
            recent: VecDeque::new(),
            frame: Vec::new(),
            timeouts: SocketTimeouts::default(),
        }
    }

    /// Drops the connection (the next send reconnects).
    pub fn reset(&mut self) {
        self.stream = None;
        self.timeouts = SocketTimeouts::default();
        self.buf.clear();
        self.decoder = FrameDecoder::for_acks(ACK_FRAME_BYTES_MAX);
        self.recent.clear();
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
            if *class != ErrorClass::ApplicationError && *class != ErrorClass::Rejected {
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
        self.remember(control_id);
        loop {
            let ack = match self.next_frame(deadline, stop) {
                Ok(a) => a,
                Err(outcome) => return outcome,
            };
            match classify(&ack, control_id, &self.recent) {
                Some(outcome) => return outcome,
                None => tracing::debug!(target = %self.target, "ignoring a stale duplicate ACK"),
            }
        }
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

    fn remember(&mut self, control_id: &[u8]) {
        if self.recent.len() == RECENT_IDS_MAX {
            self.recent.pop_front();
        }
        self.recent.push_back(control_id.to_vec());
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

fn failed(class: ErrorClass, text: String, ack: Option<Vec<u8>>) -> Outcome {
    Outcome::Failed { class, text, ack }
}

/// What an ACK frame means for the message `sent`; `None` for a stale
/// duplicate of an earlier message's ACK.
pub fn classify(ack: &[u8], sent: &[u8], recent: &VecDeque<Vec<u8>>) -> Option<Outcome> {
    let parsed = match parse_ack(ack) {
        Ok(p) => p,
        Err(e) => {
            return Some(failed(
                ErrorClass::UnparseableAck,
                e.to_string(),
                Some(bounded(ack)),
            ))
        }
    };
    let commit_block = matches!(
        parsed.code,
        AckCode::MllpCommit | AckCode::MllpNegativeCommit
    );
    if !commit_block && !parsed.acknowledges(sent) {
        if recent
            .iter()
            .rev()
            .skip(1)
            .any(|id| parsed.acknowledges(id))
        {
            return None;
        }
        let text = format!(
            "ACK names control id '{}' but '{}' was sent",
            String::from_utf8_lossy(parsed.control_id),
            String::from_utf8_lossy(sent)
        );
        return Some(failed(ErrorClass::MismatchedAck, text, Some(bounded(ack))));
    }
    let detail = || {
        let text = parsed
            .text
            .or(parsed.error.and_then(|e| e.text))
            .map(|t| String::from_utf8_lossy(&t.decoded()).into_owned())
            .unwrap_or_default();
        format!("{}: {text}", parsed.code.as_str())
    };
    Some(match parsed.code {
        AckCode::ApplicationAccept | AckCode::CommitAccept | AckCode::MllpCommit => {
            Outcome::Delivered
        }
        AckCode::ApplicationReject | AckCode::CommitReject => {
            failed(ErrorClass::Rejected, detail(), Some(bounded(ack)))
        }
        _ => failed(ErrorClass::ApplicationError, detail(), Some(bounded(ack))),
    })
}

/// ACK bytes kept for a dead-letter record, bounded.
fn bounded(ack: &[u8]) -> Vec<u8> {
    ack[..ack.len().min(1024)].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(code: &str, id: &str) -> Vec<u8> {
        format!("MSH|^~\\&|R|R|S|S|20260101||ACK^R01^ACK|A1|P|2.5\rMSA|{code}|{id}|text\r")
            .into_bytes()
    }

    #[test]
    fn classification_follows_msa_1_and_msa_2() {
        let recent: VecDeque<Vec<u8>> = [b"OLD".to_vec(), b"C1".to_vec()].into_iter().collect();
        assert_eq!(
            classify(&ack("AA", "C1"), b"C1", &recent),
            Some(Outcome::Delivered)
        );
        assert_eq!(
            classify(&ack("CA", "C1"), b"C1", &recent),
            Some(Outcome::Delivered)
        );
        let class = |o: Option<Outcome>| match o {
            Some(Outcome::Failed { class, .. }) => Some(class),
            _ => None,
        };
        assert_eq!(
            class(classify(&ack("AE", "C1"), b"C1", &recent)),
            Some(ErrorClass::ApplicationError)
        );
        assert_eq!(
            class(classify(&ack("CR", "C1"), b"C1", &recent)),
            Some(ErrorClass::Rejected)
        );
        assert_eq!(
            classify(&ack("AA", "OLD"), b"C1", &recent),
            None,
            "stale duplicate ignored"
        );
        assert_eq!(
            class(classify(&ack("AA", "OTHER"), b"C1", &recent)),
            Some(ErrorClass::MismatchedAck)
        );
        assert_eq!(
            class(classify(b"garbage", b"C1", &recent)),
            Some(ErrorClass::UnparseableAck)
        );
    }
}
