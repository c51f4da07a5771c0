//! Batch acknowledgments (HL7 v2 Chapter 2, batch protocol): the answer to
//! an FHS/BHS batch, or to back-to-back messages in one frame, is a batch
//! of ACK messages, `[FHS] BHS {MSH MSA [ERR]} BTS [FTS]`, whose BHS-12
//! (reference batch control id) is the original BHS-11 and whose FHS-12 is
//! the original FHS-11. A batch with no MSA means every message was
//! accepted; Orderly always lists one ACK per message it answers.

use super::{build::echo_field, Hl7Timestamp, ACK_ECHO_FIELD_BYTES_MAX};
use crate::hl7::batch::Batch;
use crate::hl7::Delimiters;

/// Envelope fields a batch acknowledgment echoes, copied out of the batch
/// (bounded), so the answer can be written after the appends complete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchEcho {
    /// The batch came in an FHS file envelope.
    pub file: Option<Envelope>,
    /// The BHS, if the batch had one (back-to-back messages have none).
    pub batch: Option<Envelope>,
}

/// The fields of one FHS or BHS segment the answer needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// -1 and -2: the separator and encoding characters, as received.
    pub separator: u8,
    pub encoding: Vec<u8>,
    /// -3 .. -6: sending application/facility, receiving application/facility.
    pub parties: [Vec<u8>; 4],
    /// -11: the control id the answer references in -12.
    pub control_id: Vec<u8>,
}

impl Envelope {
    /// Reads an FHS or BHS segment (without its terminator).
    fn parse(segment: &[u8]) -> Option<Envelope> {
        let separator = *segment.get(3)?;
        if !separator.is_ascii_punctuation() {
            return None;
        }
        let fields: Vec<&[u8]> = segment.split(|&b| b == separator).collect();
        let field = |n: usize| fields.get(n - 1).copied().unwrap_or_default();
        let bounded = |v: &[u8]| v[..v.len().min(ACK_ECHO_FIELD_BYTES_MAX)].to_vec();
        Some(Envelope {
            separator,
            encoding: bounded(field(2)),
            parties: [3, 4, 5, 6].map(|n| bounded(field(n))),
            control_id: bounded(field(11)),
        })
    }
}

impl BatchEcho {
    pub fn of(batch: &Batch<'_>) -> BatchEcho {
        BatchEcho {
            file: batch.file_header.and_then(Envelope::parse),
            batch: batch.batch_header.and_then(Envelope::parse),
        }
    }
}

/// Writes a whole batch acknowledgment around `acks` (unframed ACK
/// messages, each ending in CR), `count` of them. `d` are the delimiters
/// of the batch's first message, used where the batch had no BHS.
pub fn write_batch_ack(
    echo: &BatchEcho,
    d: &Delimiters,
    acks: &[u8],
    count: usize,
    control_id: &[u8],
    now: Hl7Timestamp,
    out: &mut Vec<u8>,
) {
    let default = Envelope {
        separator: d.field,
        encoding: d.encoding_chars().to_vec(),
        ..Envelope::default()
    };
    if let Some(file) = &echo.file {
        write_header(b"FHS", file, d, control_id, now, out);
    }
    let batch = echo.batch.as_ref().unwrap_or(&default);
    write_header(b"BHS", batch, d, control_id, now, out);
    out.extend_from_slice(acks);
    out.extend_from_slice(b"BTS");
    out.push(batch.separator);
    out.extend_from_slice(count.to_string().as_bytes());
    out.push(b'\r');
    if let Some(file) = &echo.file {
        out.extend_from_slice(b"FTS");
        out.push(file.separator);
        out.extend_from_slice(b"1\r");
    }
}

/// `BHS|^~\&|<-5>|<-6>|<-3>|<-4>|<now>||||<our id>|<their -11>` (FHS alike).
fn write_header(
    name: &[u8],
    e: &Envelope,
    d: &Delimiters,
    control_id: &[u8],
    now: Hl7Timestamp,
    out: &mut Vec<u8>,
) {
    let sep = e.separator;
    out.extend_from_slice(name);
    out.push(sep);
    out.extend_from_slice(&e.encoding);
    for n in [2, 3, 0, 1] {
        out.push(sep);
        echo_field(&e.parties[n], d, out);
    }
    out.push(sep);
    out.extend_from_slice(now.as_bytes());
    out.extend_from_slice(super::build::UTC_OFFSET);
    out.extend_from_slice(&[sep; 4]); // -8, -9, -10 empty.
    echo_field(control_id, d, out);
    out.push(sep);
    echo_field(&e.control_id, d, out);
    out.push(b'\r');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hl7::split_batch;

    // The expected text is Chapter 2's batch acknowledgment layout, written
    // by hand: parties swapped, BHS-12 = the original BHS-11, BTS-1 the
    // number of ACK messages.
    #[test]
    fn a_batch_ack_echoes_the_envelope_and_counts_its_acks() {
        let batch = b"FHS|^~\\&|LAB|H1|EHR|H2|2026||||F7\rBHS|^~\\&|LAB|H1|EHR|H2|2026||||B9\rMSH|^~\\&|A\rBTS|1\rFTS|1\r";
        let split = split_batch(batch).unwrap();
        let echo = BatchEcho::of(&split);
        let mut out = Vec::new();
        let now = Hl7Timestamp::from_unix_seconds(0);
        let acks = b"MSH|^~\\&|X\rMSA|AA|1\r";
        write_batch_ack(&echo, &Delimiters::default(), acks, 1, b"K1", now, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "FHS|^~\\&|EHR|H2|LAB|H1|19700101000000+0000||||K1|F7\r\
             BHS|^~\\&|EHR|H2|LAB|H1|19700101000000+0000||||K1|B9\r\
             MSH|^~\\&|X\rMSA|AA|1\r\
             BTS|1\r\
             FTS|1\r"
        );
    }

    #[test]
    fn back_to_back_messages_get_a_bhs_without_a_reference() {
        let split = split_batch(b"MSH|^~\\&|A\rMSH|^~\\&|B\r").unwrap();
        let mut out = Vec::new();
        let now = Hl7Timestamp::from_unix_seconds(0);
        write_batch_ack(
            &BatchEcho::of(&split),
            &Delimiters::default(),
            b"",
            0,
            b"K2",
            now,
            &mut out,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "BHS|^~\\&|||||19700101000000+0000||||K2|\rBTS|0\r"
        );
    }
}
