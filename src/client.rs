//! A blocking MLLP client, for `orderly send` and scripts: connect, send a
//! message, wait for the frame that answers it. One message at a time.
use crate::mllp::{encode_frame, Decoded, FrameDecoder, FrameError, FRAME_BYTES_MAX_DEFAULT};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    #[error("cannot resolve `{0}` (expected HOST:PORT)")]
    Resolve(String),
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: SocketAddr, source: io::Error },
    #[error("send failed: {0}")]
    Send(io::Error),
    #[error("no ACK: {0}")]
    NoAck(io::Error),
    #[error("connection closed before the ACK")]
    Closed,
    #[error("bad ACK framing: {0}")]
    Framing(FrameError),
}

pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    decoder: FrameDecoder,
}

impl Client {
    /// Connects to `to` (HOST:PORT); `timeout` bounds the connect and each
    /// wait for an answer.
    pub fn connect(to: &str, timeout: Duration) -> Result<Client, ClientError> {
        let addr = to
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| ClientError::Resolve(to.to_string()))?;
        let stream = TcpStream::connect_timeout(&addr, timeout)
            .map_err(|source| ClientError::Connect { addr, source })?;
        stream
            .set_read_timeout(Some(timeout))
            .map_err(ClientError::NoAck)?;
        Ok(Client {
            stream,
            buf: Vec::new(),
            decoder: FrameDecoder::for_acks(FRAME_BYTES_MAX_DEFAULT),
        })
    }

    /// Sends `payload` in one MLLP frame and returns the answering frame.
    pub fn exchange(&mut self, payload: &[u8]) -> Result<Vec<u8>, ClientError> {
        let mut framed = Vec::with_capacity(payload.len() + 3);
        encode_frame(payload, &mut framed);
        self.stream.write_all(&framed).map_err(ClientError::Send)?;
        let mut chunk = [0u8; 4096];
        loop {
            match self.decoder.decode(&self.buf) {
                Decoded::Frame(r) => {
                    let frame = self.buf[r].to_vec();
                    self.decoder.compact(&mut self.buf);
                    return Ok(frame);
                }
                Decoded::Invalid(e) => return Err(ClientError::Framing(e)),
                _ => {}
            }
            let n = self.stream.read(&mut chunk).map_err(ClientError::NoAck)?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// CRLF and LF segment ends become CR, as HL7 requires; a trailing newline
/// becomes the last segment's CR.
pub fn normalize_segment_ends(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\r' if raw.get(i + 1) == Some(&b'\n') => {
                out.push(b'\r');
                i += 1;
            }
            b'\n' => out.push(b'\r'),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::normalize_segment_ends;

    #[test]
    fn lf_and_crlf_become_cr() {
        assert_eq!(normalize_segment_ends(b"A\r\nB\nC\rD\n"), b"A\rB\rC\rD\r");
    }
}
