//! Which messages a destination takes (its filter) and which lane carries
//! each (the partition key). Decided from the record's metadata (MSH-9,
//! MSH-4 and the delimiters, and the partition key value read at ingest),
//! so no payload is parsed; records written before that metadata existed
//! fall back to the payload. The lane of an offset is cached so a
//! partitioned destination's lanes decide each message once between them.
use crate::config::{FilterConfig, Ordering};
use crate::hl7::batch::{is_batch, split_batch};
use crate::hl7::{parse_header, Message, MshHeader};
use crate::wal::meta::{MetaKey, MetaView};
use crate::wal::Offset;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

/// Slots of the lane cache (offset modulo this); a lane further behind
/// than this recomputes instead of waiting.
const LANE_CACHE_SLOTS: usize = 1 << 16;
/// Cache value for "filtered out".
const FILTERED: u64 = 0x1ff;

pub struct Router {
    filter: FilterConfig,
    ordering: Ordering,
    /// The partition key's path as text, as ingest stores it.
    key_text: String,
    cache: Vec<AtomicU64>,
}

impl Router {
    pub fn new(filter: FilterConfig, ordering: Ordering) -> Self {
        let slots = if matches!(ordering, Ordering::Partitioned { .. }) {
            LANE_CACHE_SLOTS
        } else {
            0
        };
        let key_text = match &ordering {
            Ordering::Partitioned { key, .. } => key.to_string(),
            Ordering::Strict => String::new(),
        };
        Router {
            filter,
            key_text,
            ordering,
            cache: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The lane that delivers this record, or `None` if the filter drops it.
    pub fn lane_of(&self, offset: Offset, meta: &[u8], payload: &[u8]) -> Option<u16> {
        if crate::wal::meta::is_event(meta) {
            // An ingest event (a duplicate seen, a conflict refused) is
            // not a message: no lane delivers it.
            return None;
        }
        let meta = MetaView::new(meta);
        if self.cache.is_empty() {
            return self.passes(&meta, payload).then_some(0);
        }
        let slot = &self.cache[(offset.0 as usize) % LANE_CACHE_SLOTS];
        let cached = slot.load(AtomicOrdering::Relaxed);
        if cached >> 9 == offset.0 + 1 {
            let v = cached & 0x1ff;
            return (v != FILTERED).then_some(v as u16);
        }
        let lane = if self.passes(&meta, payload) {
            self.partition(&meta, payload)
        } else {
            None
        };
        let v = lane.map_or(FILTERED, u64::from);
        slot.store((offset.0 + 1) << 9 | v, AtomicOrdering::Relaxed);
        lane
    }

    fn partition(&self, meta: &MetaView<'_>, payload: &[u8]) -> Option<u16> {
        let Ordering::Partitioned { key, lanes } = &self.ordering else {
            return Some(0);
        };
        let value = match stored_key(meta, &self.key_text) {
            Some(v) => v.to_vec(),
            None => Message::parse(payload)
                .ok()
                .and_then(|m| m.get(key).map(|v| v.raw().to_vec()))
                .unwrap_or_default(),
        };
        if value.is_empty() {
            Some(0)
        } else {
            Some((fnv1a(&value) % u64::from(*lanes)) as u16)
        }
    }

    fn passes(&self, meta: &MetaView<'_>, payload: &[u8]) -> bool {
        let f = &self.filter;
        if f.message_types.is_empty() && f.sending_facilities.is_empty() {
            return true;
        }
        let Some(h) = Routed::from_meta(meta).or_else(|| Routed::from_payload(payload)) else {
            return false;
        };
        let types_ok =
            f.message_types.is_empty() || f.message_types.iter().any(|t| h.type_matches(t));
        let facility_ok = f.sending_facilities.is_empty()
            || f.sending_facilities.iter().any(|s| h.facility_matches(s));
        types_ok && facility_ok
    }
}

/// The value of the partition key `path` that ingest stored, if it did.
fn stored_key<'a>(meta: &MetaView<'a>, path: &str) -> Option<&'a [u8]> {
    meta.iter()
        .filter(|(k, _)| *k == MetaKey::PartitionKey as u8)
        .find_map(|(_, v)| {
            let (name, value) = v.split_at(v.iter().position(|&b| b == 0)?);
            (name == path.as_bytes()).then(|| &value[1..])
        })
}

/// What the filter looks at: MSH-9, MSH-4 and the component separator.
struct Routed<'a> {
    message_type: &'a [u8],
    facility: &'a [u8],
    component: u8,
}

impl<'a> Routed<'a> {
    fn from_meta(meta: &MetaView<'a>) -> Option<Routed<'a>> {
        let delimiters = meta.get(MetaKey::Delimiters)?;
        Some(Routed {
            message_type: meta.get(MetaKey::MessageType).unwrap_or_default(),
            facility: meta.get(MetaKey::SendingFacility).unwrap_or_default(),
            component: *delimiters.get(1)?,
        })
    }

    /// For records stored before the metadata held the delimiters: the
    /// MSH of the message, or of a batch's first message.
    fn from_payload(payload: &'a [u8]) -> Option<Routed<'a>> {
        let h = header_of(payload)?;
        Some(Routed {
            message_type: h.message_type(),
            facility: h.sending_facility(),
            component: h.delimiters().component,
        })
    }

    fn component(&self, field: &'a [u8], n: usize) -> &'a [u8] {
        field
            .split(|&b| b == self.component)
            .nth(n - 1)
            .unwrap_or_default()
    }

    /// `ORU` matches MSH-9.1; `ORU^R01` matches MSH-9.1 and MSH-9.2,
    /// whatever the message's own component separator.
    fn type_matches(&self, wanted: &str) -> bool {
        let mut parts = wanted.split('^');
        let code = parts.next().unwrap_or("");
        let trigger = parts.next();
        self.component(self.message_type, 1) == code.as_bytes()
            && trigger.is_none_or(|t| self.component(self.message_type, 2) == t.as_bytes())
    }

    /// Matches MSH-4 whole or its first component (the HD namespace id).
    fn facility_matches(&self, wanted: &str) -> bool {
        self.facility == wanted.as_bytes() || self.component(self.facility, 1) == wanted.as_bytes()
    }
}

/// The MSH of a message, or of a batch's first message.
fn header_of(payload: &[u8]) -> Option<MshHeader<'_>> {
    if is_batch(payload) {
        let first = split_batch(payload).ok()?.messages.first().copied()?;
        return parse_header(first).ok();
    }
    parse_header(payload).ok()
}

/// Names the function that maps a partition key to a lane. Part of the
/// routing description the cursor file keeps: changing the function moves
/// keys between lanes, which the cursor store must notice.
const LANE_MAP: &str = "fnv1a64-mod";

/// What decides which lane carries each message of a destination: its
/// queue, lane count, partition key and lane function. Stored with the
/// cursors; when it changes they no longer describe the same messages.
pub fn routing_description(queue: &str, ordering: &Ordering) -> String {
    match ordering {
        Ordering::Strict => format!("queue={queue};lanes=1;key=-;lane-map={LANE_MAP}"),
        Ordering::Partitioned { key, lanes } => {
            format!("queue={queue};lanes={lanes};key={key};lane-map={LANE_MAP}")
        }
    }
}

/// FNV-1a: stable across builds and platforms, so a key keeps its lane.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hl7::FieldPath;

    impl Router {
        /// A record stored without routing metadata (before issue 12).
        fn lane_of_payload(&self, offset: Offset, payload: &[u8]) -> Option<u16> {
            self.lane_of(offset, &[], payload)
        }
    }

    /// Metadata as the listener writes it for `payload`, with the
    /// partition keys of the destinations on its queue.
    fn ingest_meta(payload: &[u8], key: &str) -> Vec<u8> {
        let text = format!("[[listener]]\nname='l'\nlisten='127.0.0.1:1'\nqueue='q'\n[[destination]]\nname='d'\nqueue='q'\nconnect='127.0.0.1:2'\nordering='partitioned'\npartition_key='{key}'\n");
        let config = crate::config::Config::parse(&text, "t").unwrap();
        let header = crate::hl7::parse_header(payload).unwrap();
        let mut lazy = crate::server::ingest::LazyParse::new(payload);
        crate::server::ingest::record_meta(
            &header,
            &mut lazy,
            &config.listeners[0],
            "peer",
            0,
            &[0; 32],
            None,
        )
    }

    /// Routing reads the metadata only: the same answers as from the
    /// payload, with the payload replaced by garbage.
    #[test]
    fn routing_from_ingest_metadata_never_needs_the_payload() {
        let ordering = Ordering::Partitioned {
            key: FieldPath::parse("PID-3.1").unwrap(),
            lanes: 8,
        };
        let filter = FilterConfig {
            message_types: vec!["ORU^R01".into()],
            sending_facilities: vec!["HOSP".into()],
        };
        let by_payload = Router::new(filter.clone(), ordering.clone());
        let by_meta = Router::new(filter, ordering);
        for (i, m) in [
            msg("ORU^R01", "HOSP^1.2.3^ISO", "MRN7"),
            msg("ORU^R01", "HOSP", "K9"),
            msg("ORU^R03", "HOSP", "K9"),
            msg("ORU^R01", "OTHER", "K9"),
            b"MSH|$~\\&|LAB|HOSP|EHR|H|2026||ORU$R01|C1|P|2.5\rPID|1||K1$$$H\r".to_vec(),
            b"MSH|^~\\&|LAB|HOSP|EHR|H|2026||ORU^R01|C1|P|2.5\r".to_vec(),
        ]
        .iter()
        .enumerate()
        {
            let meta = ingest_meta(m, "PID-3.1");
            let offset = Offset(i as u64);
            assert_eq!(
                by_meta.lane_of(offset, &meta, b"garbage"),
                by_payload.lane_of_payload(offset, m),
                "message {i}"
            );
        }
    }

    fn msg(kind: &str, facility: &str, mrn: &str) -> Vec<u8> {
        format!("MSH|^~\\&|LAB|{facility}|EHR|H|2026||{kind}|C1|P|2.5\rPID|1||{mrn}^^^H^MR\r")
            .into_bytes()
    }

    #[test]
    fn filter_matches_type_and_facility() {
        let f = FilterConfig {
            message_types: vec!["ORU^R01".into(), "ADT".into()],
            sending_facilities: vec!["HOSP".into()],
        };
        let r = Router::new(f, Ordering::Strict);
        assert_eq!(
            r.lane_of_payload(Offset(0), &msg("ORU^R01^ORU_R01", "HOSP^1.2.3^ISO", "1")),
            Some(0)
        );
        assert_eq!(
            r.lane_of_payload(Offset(1), &msg("ADT^A08", "HOSP", "1")),
            Some(0)
        );
        assert_eq!(
            r.lane_of_payload(Offset(2), &msg("ORU^R03", "HOSP", "1")),
            None
        );
        assert_eq!(
            r.lane_of_payload(Offset(3), &msg("ORU^R01", "OTHER", "1")),
            None
        );
    }

    #[test]
    fn same_key_same_lane_and_missing_key_lane_zero() {
        let ordering = Ordering::Partitioned {
            key: FieldPath::parse("PID-3.1").unwrap(),
            lanes: 8,
        };
        let r = Router::new(FilterConfig::default(), ordering);
        let a = r.lane_of_payload(Offset(10), &msg("ORU^R01", "H", "MRN7"));
        assert_eq!(
            a,
            r.lane_of_payload(Offset(11), &msg("ORU^R01", "H", "MRN7"))
        );
        assert_eq!(
            r.lane_of_payload(Offset(10), &msg("ORU^R01", "H", "other")),
            a,
            "cached by offset"
        );
        let lanes: std::collections::BTreeSet<_> = (0..64)
            .map(|i| r.lane_of_payload(Offset(100 + i), &msg("ORU^R01", "H", &format!("K{i}"))))
            .collect();
        assert!(lanes.len() >= 6, "keys spread over lanes: {lanes:?}");
        assert_eq!(
            r.lane_of_payload(Offset(500), b"MSH|^~\\&|A|B|C|D|2026||ORU^R01|X|P|2.5\r"),
            Some(0)
        );
    }
}
