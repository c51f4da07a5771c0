//! Which messages a destination takes (its filter) and which lane carries
//! each (the partition key). Decided from the stored payload; the lane of an
//! offset is cached so a partitioned destination's lanes parse each message
//! about once between them rather than once each.
use crate::config::{FilterConfig, Ordering};
use crate::hl7::batch::{is_batch, split_batch};
use crate::hl7::{parse_header, Message, MshHeader};
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
    cache: Vec<AtomicU64>,
}

impl Router {
    pub fn new(filter: FilterConfig, ordering: Ordering) -> Self {
        let slots = if matches!(ordering, Ordering::Partitioned { .. }) {
            LANE_CACHE_SLOTS
        } else {
            0
        };
        Router {
            filter,
            ordering,
            cache: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The lane that delivers this record, or `None` if the filter drops it.
    pub fn lane_of(&self, offset: Offset, payload: &[u8]) -> Option<u16> {
        if self.cache.is_empty() {
            return self.passes(payload).then_some(0);
        }
        let slot = &self.cache[(offset.0 as usize) % LANE_CACHE_SLOTS];
        let cached = slot.load(AtomicOrdering::Relaxed);
        if cached >> 9 == offset.0 + 1 {
            let v = cached & 0x1ff;
            return (v != FILTERED).then_some(v as u16);
        }
        let lane = if self.passes(payload) {
            self.partition(payload)
        } else {
            None
        };
        let v = lane.map_or(FILTERED, u64::from);
        slot.store((offset.0 + 1) << 9 | v, AtomicOrdering::Relaxed);
        lane
    }

    fn partition(&self, payload: &[u8]) -> Option<u16> {
        let Ordering::Partitioned { key, lanes } = &self.ordering else {
            return Some(0);
        };
        let value = Message::parse(payload)
            .ok()
            .and_then(|m| m.get(key).map(|v| v.raw().to_vec()));
        match value {
            Some(v) if !v.is_empty() => Some((fnv1a(&v) % u64::from(*lanes)) as u16),
            _ => Some(0),
        }
    }

    fn passes(&self, payload: &[u8]) -> bool {
        let f = &self.filter;
        if f.message_types.is_empty() && f.sending_facilities.is_empty() {
            return true;
        }
        let Some(h) = header_of(payload) else {
            return false;
        };
        let types_ok =
            f.message_types.is_empty() || f.message_types.iter().any(|t| type_matches(&h, t));
        let facility_ok = f.sending_facilities.is_empty()
            || f.sending_facilities.iter().any(|s| facility_matches(&h, s));
        types_ok && facility_ok
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

/// `ORU` matches MSH-9.1; `ORU^R01` matches MSH-9.1 and MSH-9.2, whatever
/// the message's own component separator.
fn type_matches(h: &MshHeader<'_>, wanted: &str) -> bool {
    let mut parts = wanted.split('^');
    let code = parts.next().unwrap_or("");
    let trigger = parts.next();
    h.message_type_component(1) == code.as_bytes()
        && trigger.is_none_or(|t| h.message_type_component(2) == t.as_bytes())
}

/// Matches MSH-4 whole or its first component (the HD namespace id).
fn facility_matches(h: &MshHeader<'_>, wanted: &str) -> bool {
    let field = h.sending_facility();
    let sep = h.delimiters().component;
    let first = field.split(|&b| b == sep).next().unwrap_or(field);
    field == wanted.as_bytes() || first == wanted.as_bytes()
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
            r.lane_of(Offset(0), &msg("ORU^R01^ORU_R01", "HOSP^1.2.3^ISO", "1")),
            Some(0)
        );
        assert_eq!(r.lane_of(Offset(1), &msg("ADT^A08", "HOSP", "1")), Some(0));
        assert_eq!(r.lane_of(Offset(2), &msg("ORU^R03", "HOSP", "1")), None);
        assert_eq!(r.lane_of(Offset(3), &msg("ORU^R01", "OTHER", "1")), None);
    }

    #[test]
    fn same_key_same_lane_and_missing_key_lane_zero() {
        let ordering = Ordering::Partitioned {
            key: FieldPath::parse("PID-3.1").unwrap(),
            lanes: 8,
        };
        let r = Router::new(FilterConfig::default(), ordering);
        let a = r.lane_of(Offset(10), &msg("ORU^R01", "H", "MRN7"));
        assert_eq!(a, r.lane_of(Offset(11), &msg("ORU^R01", "H", "MRN7")));
        assert_eq!(
            r.lane_of(Offset(10), &msg("ORU^R01", "H", "other")),
            a,
            "cached by offset"
        );
        let lanes: std::collections::BTreeSet<_> = (0..64)
            .map(|i| r.lane_of(Offset(100 + i), &msg("ORU^R01", "H", &format!("K{i}"))))
            .collect();
        assert!(lanes.len() >= 6, "keys spread over lanes: {lanes:?}");
        assert_eq!(
            r.lane_of(Offset(500), b"MSH|^~\\&|A|B|C|D|2026||ORU^R01|X|P|2.5\r"),
            Some(0)
        );
    }
}
