//! Which filter judged which offsets of a destination.
//!
//! A filter applies from each lane's cursor on, so after a destination's
//! `filter` changes, messages its lanes passed earlier were judged by the
//! old one. Reconciliation judges by the filter in force now; without this
//! history, a message the old filter left out (and the new one wants)
//! would look `missing`: passed by its lane, never acknowledged. At every
//! start the broker compares the configured filter with the last entry
//! here and, when it differs, appends an entry holding the new filter and
//! each lane's durable cursor: the first offset the new filter judges on
//! that lane. Lane numbers mean something only under one routing (queue,
//! lane count, partition key): when the routing changes the history starts
//! again, so older messages are judged by today's filter (at worst a false
//! `missing`, never a hidden one). The file is small and rewritten whole
//! (temp file, fsync, rename); its layout is in docs/FORMAT.md.
use super::route::Router;
use crate::config::{FilterConfig, Ordering};
use crate::storage::{self, Storage};
use crate::wal::Offset;
use std::path::Path;

const MAGIC: &str = "orderly filter history v1";
/// Entries kept; the oldest go first (their offsets are then judged by
/// the next older entry still kept, or by today's filter).
pub const FILTER_EPOCHS_MAX: usize = 1000;

/// One filter and where, per lane, it started judging.
struct Epoch {
    /// Per lane, the first offset this filter judged.
    from: Vec<u64>,
    router: Router,
}

/// The filters a destination had under today's routing, oldest first.
#[derive(Default)]
pub struct FilterHistory {
    epochs: Vec<Epoch>,
}

impl FilterHistory {
    /// Whether the lane that passed `offset` did so under an earlier
    /// filter that did not want the message. The filter that judged an
    /// offset last is the newest one that started at or before it (a later
    /// one that started past it never saw it; one that started before it,
    /// after a cursor was moved back, saw it again).
    pub fn filtered_then(&self, lane: u16, offset: Offset, meta: &[u8], payload: &[u8]) -> bool {
        let lane = usize::from(lane);
        let judge = self
            .epochs
            .iter()
            .rposition(|e| e.from.get(lane).is_some_and(|&from| from <= offset.0));
        match judge {
            // The last entry is the filter in force now, not history.
            Some(i) if i + 1 < self.epochs.len() => self.epochs[i]
                .router
                .lane_of(offset, meta, payload)
                .is_none(),
            _ => false,
        }
    }
}

/// One line of the file: the routing, the lanes' starting offsets, the
/// filter as text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    routing: String,
    from: Vec<u64>,
    filter: String,
}

/// The filter as one line of text (lists comma-separated, `*` for empty;
/// `%`, `,`, tab and line ends percent-encoded).
fn filter_text(f: &FilterConfig) -> String {
    let list = |items: &[String]| {
        if items.is_empty() {
            return "*".to_string();
        }
        items
            .iter()
            .map(|s| escape(s))
            .collect::<Vec<_>>()
            .join(",")
    };
    format!(
        "types={}\tfacilities={}",
        list(&f.message_types),
        list(&f.sending_facilities)
    )
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '%' | ',' | '\t' | '\n' | '\r' | '*' => out.push_str(&format!("%{:02X}", c as u32)),
            _ => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn parse_filter(text: &str) -> Option<FilterConfig> {
    let (types, facilities) = text.split_once('\t')?;
    let list = |field: &str, name: &str| -> Option<Vec<String>> {
        let v = field.strip_prefix(name)?.strip_prefix('=')?;
        if v == "*" {
            return Some(Vec::new());
        }
        v.split(',').map(unescape).collect()
    };
    Some(FilterConfig {
        message_types: list(types, "types")?,
        sending_facilities: list(facilities, "facilities")?,
    })
}

/// Lines: `<routing>\t<from offsets per lane, comma-separated>\t<filter>`.
fn parse(text: &str) -> Result<Vec<Entry>, String> {
    let mut lines = text.lines();
    if lines.next() != Some(MAGIC) {
        return Err(format!("does not start with {MAGIC:?}"));
    }
    lines
        .enumerate()
        .map(|(i, line)| {
            let bad = || format!("line {}: not `<routing>\\t<offsets>\\t<filter>`", i + 2);
            let (routing, rest) = line.split_once('\t').ok_or_else(bad)?;
            let (from, filter) = rest.split_once('\t').ok_or_else(bad)?;
            let from: Vec<u64> = from
                .split(',')
                .map(|o| o.parse().map_err(|_| bad()))
                .collect::<Result<_, _>>()?;
            parse_filter(filter).ok_or_else(bad)?;
            Ok(Entry {
                routing: unescape(routing).ok_or_else(bad)?,
                from,
                filter: filter.to_string(),
            })
        })
        .collect()
}

fn render(entries: &[Entry]) -> String {
    let mut out = format!("{MAGIC}\n");
    for e in entries {
        let from: Vec<String> = e.from.iter().map(u64::to_string).collect();
        out.push_str(&format!(
            "{}\t{}\t{}\n",
            escape(&e.routing),
            from.join(","),
            e.filter
        ));
    }
    out
}

/// Loads the history at `path` and, when `filter` differs from its last
/// entry (or there is none), appends `filter` from the lanes' durable
/// cursors `from` on; when `routing` differs, the history starts again. A
/// file that does not parse is left as it is (it is evidence) and the
/// history is empty: reconciliation then judges every message by today's
/// filter, as without a history. Errors are logged, never fatal: the
/// broker starts on a full disk.
pub fn record(
    storage: &dyn Storage,
    path: &Path,
    destination: &str,
    routing: &str,
    filter: &FilterConfig,
    from: &[u64],
) -> FilterHistory {
    let mut entries = match read(storage, path) {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(destination, path = %path.display(), error = %e, "filter history unreadable: kept as it is; reconcile judges older messages by today's filter");
            return FilterHistory::default();
        }
    };
    let now = Entry {
        routing: routing.to_string(),
        from: from.to_vec(),
        filter: filter_text(filter),
    };
    if entries.last().is_some_and(|e| e.routing != now.routing) {
        tracing::info!(
            destination,
            "destination routing changed: its filter history starts again"
        );
        entries.clear();
    }
    if entries.last().is_none_or(|e| e.filter != now.filter) {
        entries.push(now);
        let drop = entries.len().saturating_sub(FILTER_EPOCHS_MAX);
        entries.drain(..drop);
        if let Err(e) = storage::replace_file(storage, path, render(&entries).as_bytes()) {
            tracing::error!(destination, path = %path.display(), error = %e, "filter history not written: after this filter change reconcile may call messages the old filter left out missing");
        } else if entries.len() > 1 {
            tracing::info!(destination, from = ?from, "destination filter changed: recorded with each lane's cursor");
        }
    }
    history(&entries)
}

/// For `orderly verify`: how many filters the history at `path` holds,
/// or why it does not parse.
pub fn check_file(storage: &dyn Storage, path: &Path) -> Result<usize, String> {
    if !storage.exists(path) {
        return Err("no such file".into());
    }
    read(storage, path).map(|entries| entries.len())
}

fn read(storage: &dyn Storage, path: &Path) -> Result<Vec<Entry>, String> {
    if !storage.exists(path) {
        return Ok(Vec::new());
    }
    let file = storage.open(path, false).map_err(|e| e.to_string())?;
    let len = file.len().map_err(|e| e.to_string())?;
    if len > 16 * 1024 * 1024 {
        return Err(format!(
            "{len} bytes: larger than any history this broker writes"
        ));
    }
    let mut bytes = vec![0; len as usize];
    storage::read_exact_at(file.as_ref(), &mut bytes, 0).map_err(|e| e.to_string())?;
    parse(&String::from_utf8(bytes).map_err(|_| "not UTF-8".to_string())?)
}

fn history(entries: &[Entry]) -> FilterHistory {
    let epochs = entries
        .iter()
        .filter_map(|e| {
            let filter = parse_filter(&e.filter)?;
            Some(Epoch {
                from: e.from.clone(),
                router: Router::new(filter, Ordering::Strict),
            })
        })
        .collect();
    FilterHistory { epochs }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(types: &[&str], facilities: &[&str]) -> FilterConfig {
        FilterConfig {
            message_types: types.iter().map(|s| s.to_string()).collect(),
            sending_facilities: facilities.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn filter_text_round_trips_with_awkward_characters() {
        for f in [
            filter(&[], &[]),
            filter(&["ADT^A01", "ORU"], &["LAB,EAST", "50%*\tX"]),
        ] {
            let back = parse_filter(&filter_text(&f)).unwrap();
            assert_eq!(back.message_types, f.message_types);
            assert_eq!(back.sending_facilities, f.sending_facilities);
        }
    }

    #[test]
    fn each_offset_is_judged_by_the_filter_that_last_passed_it() {
        let adt_only = filter_text(&filter(&["ADT"], &[]));
        let all = filter_text(&filter(&[], &[]));
        let entry = |from: u64, filter: &str| Entry {
            routing: "queue=lab;lanes=1".into(),
            from: vec![from],
            filter: filter.to_string(),
        };
        // ADT only from 0, everything from 10, ADT only from 20, then
        // everything again from 15 (a cursor moved back to 15).
        let h = history(&[
            entry(0, &adt_only),
            entry(10, &all),
            entry(20, &adt_only),
            entry(15, &all),
        ]);
        let oru = b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261127||ORU^R01|C1|P|2.5\r";
        let adt = b"MSH|^~\\&|REG|HOSP|EHR|HOSP|20261127||ADT^A01|C2|P|2.5\r";
        let at = |o: u64, p: &[u8]| h.filtered_then(0, Offset(o), &[], p);
        assert!(at(0, oru) && at(9, oru), "left out by the first filter");
        assert!(!at(10, oru) && !at(14, oru), "wanted by the second");
        assert!(
            !at(15, oru) && !at(25, oru),
            "judged again by today's filter"
        );
        assert!(!at(5, adt), "wanted by the first");
        assert!(!h.filtered_then(1, Offset(5), &[], oru), "no such lane");
    }

    #[test]
    fn a_change_of_routing_starts_the_history_again() {
        use crate::storage::SimStorage;
        let sim = SimStorage::new();
        sim.create_dir_all(Path::new("/c")).unwrap();
        let path = Path::new("/c/d.filters");
        let (adt, all) = (filter(&["ADT"], &[]), filter(&[], &[]));
        record(&sim, path, "d", "lanes=2", &adt, &[0, 0]);
        record(&sim, path, "d", "lanes=2", &adt, &[5, 5]);
        assert_eq!(check_file(&sim, path), Ok(1), "same filter: nothing added");
        record(&sim, path, "d", "lanes=2", &all, &[10, 12]);
        assert_eq!(check_file(&sim, path), Ok(2));
        // Two lanes became four: the old lane numbers mean nothing now.
        let h = record(&sim, path, "d", "lanes=4", &all, &[10, 10, 10, 10]);
        assert_eq!(check_file(&sim, path), Ok(1));
        let oru = b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261127||ORU^R01|C1|P|2.5\r";
        assert!(
            !h.filtered_then(3, Offset(3), &[], oru),
            "judged by today's filter"
        );
    }

    #[test]
    fn a_garbled_file_is_an_error_not_a_history() {
        assert!(parse("something else\n").is_err());
        assert!(parse(&format!("{MAGIC}\nr\tx\ttypes=*\tfacilities=*\n")).is_err());
        assert!(parse(&format!("{MAGIC}\nr\t1,2\ttypes=*\n")).is_err());
        assert!(parse(&format!("{MAGIC}\n1,2\ttypes=*\tfacilities=*\n")).is_err());
        assert_eq!(
            parse(&format!("{MAGIC}\nq%2Cx\t1,2\ttypes=*\tfacilities=*\n")).unwrap(),
            vec![Entry {
                routing: "q,x".into(),
                from: vec![1, 2],
                filter: "types=*\tfacilities=*".into()
            }]
        );
    }
}
