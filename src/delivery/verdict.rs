//! What a downstream's answer means for the message just sent: delivered,
//! retry, reject, or "not an answer to this message" (a stale duplicate).
//! Pure functions over bytes; the socket side is `link.rs`.
//!
//! MSA-1 codes map to a disposition through the destination's `ack_codes`
//! (HL7 table 0008 by default: AA/CA success; AR/CR "not processed, may be
//! resent" retried; AE/CE "error in the message" rejected). Real
//! downstreams disagree about AE versus AR, hence the table is per
//! destination.

use std::collections::VecDeque;

use crate::cursor::ErrorClass;
use crate::hl7::ack::{parse_ack, AckCode, ParsedAck};

/// What to do with a message whose ACK carried a given MSA-1 code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Delivered: move on.
    Success,
    /// Not processed; send it again after a backoff.
    Retry,
    /// Refused; the destination's `on_reject` decides.
    Reject,
}

/// The six MSA-1 codes, in the order `AckCodes` stores them.
const CODES: [(AckCode, &str); 6] = [
    (AckCode::ApplicationAccept, "AA"),
    (AckCode::ApplicationError, "AE"),
    (AckCode::ApplicationReject, "AR"),
    (AckCode::CommitAccept, "CA"),
    (AckCode::CommitError, "CE"),
    (AckCode::CommitReject, "CR"),
];

/// A destination's `ack_codes`: the disposition of each MSA-1 code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckCodes {
    table: [Disposition; 6],
}

impl Default for AckCodes {
    fn default() -> Self {
        use Disposition::*;
        AckCodes {
            // AA AE AR CA CE CR
            table: [Success, Reject, Retry, Success, Reject, Retry],
        }
    }
}

impl AckCodes {
    /// Builds the table from the lists a destination names. A list that is
    /// given replaces that list of the defaults; a code left in no list is
    /// a reject (never a silent success); a code in two lists is an error.
    pub fn from_lists(
        success: Option<&[String]>,
        retry: Option<&[String]>,
        reject: Option<&[String]>,
    ) -> Result<AckCodes, String> {
        let mut codes = AckCodes::default();
        let lists = [
            (Disposition::Success, success),
            (Disposition::Retry, retry),
            (Disposition::Reject, reject),
        ];
        for (disposition, list) in lists {
            if list.is_some() {
                for slot in codes.table.iter_mut().filter(|d| **d == disposition) {
                    *slot = Disposition::Reject;
                }
            }
        }
        let mut claimed = [None::<Disposition>; 6];
        for (disposition, list) in lists {
            for name in list.unwrap_or_default() {
                let i = index_of(name)?;
                if let Some(other) = claimed[i] {
                    if other != disposition {
                        return Err(format!(
                            "`{name}` is in two lists ({other:?} and {disposition:?})"
                        ));
                    }
                }
                claimed[i] = Some(disposition);
                codes.table[i] = disposition;
            }
        }
        Ok(codes)
    }

    /// The disposition of an MSA-1 code; `None` for MLLP commit blocks,
    /// which are not MSA codes.
    pub fn disposition(&self, code: AckCode) -> Option<Disposition> {
        CODES
            .iter()
            .position(|(c, _)| *c == code)
            .map(|i| self.table[i])
    }

    /// The codes of one disposition, for status output and docs.
    pub fn names(&self, disposition: Disposition) -> Vec<&'static str> {
        CODES
            .iter()
            .zip(self.table)
            .filter(|(_, d)| *d == disposition)
            .map(|((_, name), _)| *name)
            .collect()
    }
}

fn index_of(name: &str) -> Result<usize, String> {
    let upper = name.trim().to_ascii_uppercase();
    CODES
        .iter()
        .position(|(_, n)| *n == upper)
        .ok_or_else(|| format!("`{name}` is not an MSA-1 code (AA, AE, AR, CA, CE, CR)"))
}

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

pub fn failed(class: ErrorClass, text: String, ack: Option<Vec<u8>>) -> Outcome {
    Outcome::Failed { class, text, ack }
}

/// What the classifier knows about the connection besides the ACK.
pub struct Context<'a> {
    pub codes: &'a AckCodes,
    /// The destination speaks MLLP release 2: commit blocks count.
    pub mllp_r2: bool,
    /// Control ids sent earlier on this connection, oldest first (the
    /// message being answered is not among them).
    pub earlier_ids: &'a VecDeque<Vec<u8>>,
    /// Fingerprints of the ACK frames already consumed on this connection.
    pub consumed: &'a VecDeque<u64>,
}

/// What an ACK frame means for the message `sent`; `None` when it is not
/// an answer to it (a stale duplicate, or a commit block from a destination
/// not configured for MLLP release 2) and the next frame should be read.
pub fn classify(ack: &[u8], sent: &[u8], ctx: &Context<'_>) -> Option<Outcome> {
    if is_batch_ack(ack) {
        if stale_copy(ack, sent, ctx) {
            return None;
        }
        return batch(ack, sent, ctx);
    }
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
    if matches!(
        parsed.code,
        AckCode::MllpCommit | AckCode::MllpNegativeCommit
    ) {
        // Commit blocks are all alike; stale ones are drained before a send.
        return commit_block(parsed.code, ctx.mllp_r2);
    }
    if stale_copy(ack, sent, ctx) {
        return None;
    }
    if !sent.is_empty() && !parsed.acknowledges(sent) {
        return stale_or_mismatched(&parsed, ack, sent, ctx);
    }
    Some(verdict(&parsed, ack, ctx.codes))
}

/// A message repeating an earlier control id on this connection could be
/// "confirmed" by a stale copy of the earlier message's ACK: a byte copy of
/// an ACK already consumed is not an answer. (A downstream that answers
/// repeated ids with identical bytes costs one ack timeout: the timeout
/// reconnects, and a new connection has consumed nothing.)
fn stale_copy(ack: &[u8], sent: &[u8], ctx: &Context<'_>) -> bool {
    ctx.earlier_ids.iter().any(|id| id.as_slice() == sent)
        && ctx.consumed.contains(&fingerprint(ack))
}

fn commit_block(code: AckCode, mllp_r2: bool) -> Option<Outcome> {
    if !mllp_r2 {
        tracing::debug!("MLLP release 2 commit block ignored: the destination is not configured with mllp_r2 = true");
        return None;
    }
    Some(match code {
        AckCode::MllpCommit => Outcome::Delivered,
        _ => failed(
            ErrorClass::NegativeAck,
            "MLLP release 2 negative commit (NAK block)".into(),
            None,
        ),
    })
}

fn stale_or_mismatched(
    parsed: &ParsedAck<'_>,
    ack: &[u8],
    sent: &[u8],
    ctx: &Context<'_>,
) -> Option<Outcome> {
    if ctx.earlier_ids.iter().any(|id| parsed.acknowledges(id)) {
        return None;
    }
    let text = format!(
        "ACK names control id '{}' but '{}' was sent",
        String::from_utf8_lossy(parsed.control_id),
        String::from_utf8_lossy(sent)
    );
    Some(failed(ErrorClass::MismatchedAck, text, Some(bounded(ack))))
}

fn verdict(parsed: &ParsedAck<'_>, ack: &[u8], codes: &AckCodes) -> Outcome {
    let detail = || {
        let text = parsed
            .text
            .or(parsed.error.and_then(|e| e.text))
            .map(|t| String::from_utf8_lossy(&t.decoded()).into_owned())
            .unwrap_or_default();
        format!("{}: {text}", parsed.code.as_str())
    };
    match codes.disposition(parsed.code) {
        Some(Disposition::Success) => Outcome::Delivered,
        Some(Disposition::Retry) => failed(ErrorClass::NegativeAck, detail(), Some(bounded(ack))),
        Some(Disposition::Reject) | None => {
            failed(ErrorClass::Rejected, detail(), Some(bounded(ack)))
        }
    }
}

/// A batch acknowledgment (`BHS`/`FHS` first): every MSA is read. No MSA
/// means every message was accepted (HL7 v2 Chapter 2); otherwise the MSAs
/// naming the message sent decide, the worst of them winning.
fn batch(ack: &[u8], sent: &[u8], ctx: &Context<'_>) -> Option<Outcome> {
    let msas: Vec<(ParsedAck<'_>, &[u8])> = segments(ack)
        .filter(|s| s.starts_with(b"MSA"))
        .filter_map(|s| parse_ack(s).ok().map(|p| (p, s)))
        .collect();
    if msas.is_empty() {
        return Some(Outcome::Delivered);
    }
    let mine: Vec<&(ParsedAck<'_>, &[u8])> = msas
        .iter()
        .filter(|(p, _)| sent.is_empty() || p.acknowledges(sent))
        .collect();
    if mine.is_empty() {
        return stale_or_mismatched(&msas[0].0, ack, sent, ctx);
    }
    let rank = |o: &Outcome| match o {
        Outcome::Delivered => 0,
        Outcome::Failed {
            class: ErrorClass::NegativeAck,
            ..
        } => 1,
        Outcome::Failed { .. } => 2,
    };
    mine.iter()
        .map(|(p, _)| verdict(p, ack, ctx.codes))
        .max_by_key(rank)
}

/// `BHS` or `FHS` first, after blanks and an optional UTF-8 BOM.
fn is_batch_ack(ack: &[u8]) -> bool {
    let blank = |b: &&u8| matches!(b, b'\r' | b'\n' | b' ' | b'\t');
    let mut head = &ack[ack.iter().take_while(blank).count()..];
    if let Some(rest) = head.strip_prefix(b"\xEF\xBB\xBF".as_slice()) {
        head = &rest[rest.iter().take_while(blank).count()..];
    }
    head.starts_with(b"BHS") || head.starts_with(b"FHS")
}

fn segments(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    bytes
        .split(|b| *b == b'\r' || *b == b'\n')
        .filter(|s| !s.is_empty())
}

/// A fingerprint of an ACK frame, to recognise byte copies (FNV-1a).
pub fn fingerprint(ack: &[u8]) -> u64 {
    ack.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
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
        format!("MSH|^~\\&|R|R|S|S|20260101||ACK^R01^ACK|A-{id}|P|2.5\rMSA|{code}|{id}|text\r")
            .into_bytes()
    }

    fn class(o: Option<Outcome>) -> Option<Result<(), ErrorClass>> {
        o.map(|o| match o {
            Outcome::Delivered => Ok(()),
            Outcome::Failed { class, .. } => Err(class),
        })
    }

    struct Conn {
        earlier: VecDeque<Vec<u8>>,
        consumed: VecDeque<u64>,
        codes: AckCodes,
        r2: bool,
    }

    impl Conn {
        fn new(earlier: &[&str]) -> Conn {
            Conn {
                earlier: earlier.iter().map(|s| s.as_bytes().to_vec()).collect(),
                consumed: VecDeque::new(),
                codes: AckCodes::default(),
                r2: false,
            }
        }
        fn classify(&self, ack: &[u8], sent: &str) -> Option<Result<(), ErrorClass>> {
            let ctx = Context {
                codes: &self.codes,
                mllp_r2: self.r2,
                earlier_ids: &self.earlier,
                consumed: &self.consumed,
            };
            class(classify(ack, sent.as_bytes(), &ctx))
        }
    }

    // Expected dispositions are HL7 table 0008 as ../shared/PEERS.md reads
    // it: AR = not processed for reasons unrelated to the message, resend;
    // AE = an error in the message, do not resend unchanged.
    #[test]
    fn default_codes_follow_table_0008() {
        let c = Conn::new(&["OLD"]);
        assert_eq!(c.classify(&ack("AA", "C1"), "C1"), Some(Ok(())));
        assert_eq!(c.classify(&ack("CA", "C1"), "C1"), Some(Ok(())));
        assert_eq!(
            c.classify(&ack("AR", "C1"), "C1"),
            Some(Err(ErrorClass::NegativeAck))
        );
        assert_eq!(
            c.classify(&ack("CR", "C1"), "C1"),
            Some(Err(ErrorClass::NegativeAck))
        );
        assert_eq!(
            c.classify(&ack("AE", "C1"), "C1"),
            Some(Err(ErrorClass::Rejected))
        );
        assert_eq!(
            c.classify(&ack("CE", "C1"), "C1"),
            Some(Err(ErrorClass::Rejected))
        );
        assert_eq!(
            c.classify(&ack("AA", "OLD"), "C1"),
            None,
            "stale duplicate ignored"
        );
        assert_eq!(
            c.classify(&ack("AA", "OTHER"), "C1"),
            Some(Err(ErrorClass::MismatchedAck))
        );
        assert_eq!(
            c.classify(b"garbage", "C1"),
            Some(Err(ErrorClass::UnparseableAck))
        );
    }

    #[test]
    fn lists_replace_defaults_and_unlisted_codes_reject() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let codes =
            AckCodes::from_lists(Some(&list(&["AA", "AE"])), None, Some(&list(&["ce"]))).unwrap();
        assert_eq!(
            codes.disposition(AckCode::ApplicationError),
            Some(Disposition::Success)
        );
        assert_eq!(
            codes.disposition(AckCode::CommitAccept),
            Some(Disposition::Reject)
        );
        assert_eq!(
            codes.disposition(AckCode::ApplicationReject),
            Some(Disposition::Retry)
        );
        assert_eq!(codes.disposition(AckCode::MllpCommit), None);
        let e = AckCodes::from_lists(Some(&list(&["AA"])), Some(&list(&["AA"])), None).unwrap_err();
        assert!(e.contains("two lists"), "{e}");
        assert!(AckCodes::from_lists(Some(&list(&["OK"])), None, None).is_err());
    }

    #[test]
    fn commit_blocks_count_only_for_mllp_r2_destinations() {
        let mut c = Conn::new(&[]);
        assert_eq!(c.classify(b"\x06", "C1"), None, "ignored without mllp_r2");
        c.r2 = true;
        assert_eq!(c.classify(b"\x06", "C1"), Some(Ok(())));
        assert_eq!(
            c.classify(b"\x15", "C1"),
            Some(Err(ErrorClass::NegativeAck))
        );
    }

    #[test]
    fn an_empty_control_id_skips_msa_2_matching() {
        let c = Conn::new(&[]);
        assert_eq!(c.classify(&ack("AA", "whatever"), ""), Some(Ok(())));
    }

    #[test]
    fn a_byte_copy_of_a_consumed_ack_never_confirms_a_repeated_control_id() {
        let mut c = Conn::new(&["R1"]);
        let first = ack("AA", "R1");
        c.consumed.push_back(fingerprint(&first));
        assert_eq!(c.classify(&first, "R1"), None, "stale copy");
        let fresh = b"MSH|^~\\&|R|R|S|S|20260101||ACK^R01^ACK|A-2|P|2.5\rMSA|AA|R1\r";
        assert_eq!(c.classify(fresh, "R1"), Some(Ok(())));
    }

    #[test]
    fn batch_acks_read_every_msa_and_none_means_all_accepted() {
        let c = Conn::new(&[]);
        let empty = b"BHS|^~\\&|R|R|S|S|20260101||||B1|B0\rBTS|0\r";
        assert_eq!(c.classify(empty, "C1"), Some(Ok(())));
        let mixed = b"BHS|^~\\&|R|R\rMSA|AA|C0\rMSA|AE|C1\rMSA|AA|C2\rBTS|3\r";
        assert_eq!(c.classify(mixed, "C1"), Some(Err(ErrorClass::Rejected)));
        assert_eq!(c.classify(mixed, "C2"), Some(Ok(())));
        assert_eq!(
            c.classify(mixed, "C9"),
            Some(Err(ErrorClass::MismatchedAck))
        );
        let bom = b"\xEF\xBB\xBFBHS|^~\\&\rBTS|0\r";
        assert_eq!(c.classify(bom, "C1"), Some(Ok(())));
    }

    /// Found by the ack_classify fuzz target: a stray 0xBF (not a whole
    /// BOM) before `FHS` made garbage a batch ACK "with no MSA", i.e. all
    /// accepted.
    #[test]
    fn a_broken_bom_does_not_make_garbage_a_batch_ack() {
        let c = Conn::new(&[]);
        assert_eq!(
            c.classify(b"\n\xbfFHS", "{"),
            Some(Err(ErrorClass::UnparseableAck))
        );
    }
}
