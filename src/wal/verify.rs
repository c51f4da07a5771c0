//! Offline verification of a log directory: reads every segment and index
//! and reports what does not check out. Never modifies anything, so it is
//! safe to run beside a live broker (whose active tail may then be reported
//! as still being written).
use super::checkpoint::Checkpoint;
use super::open::load_sealed_index;
use super::segment::{self, parse_segment_name, SegmentHeader, Stop, SEGMENT_HEADER_BYTES};
use super::{Offset, WalError};
use crate::index::{decode_points, IndexKind, IndexPoint, INDEX_HEADER_BYTES};
use crate::storage::Storage;
use std::path::{Path, PathBuf};

/// One thing that does not check out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub position: u64,
    pub what: String,
}

#[derive(Debug, Default)]
pub struct VerifyReport {
    pub segments: usize,
    pub records: u64,
    pub first_offset: Option<Offset>,
    pub next_offset: Option<Offset>,
    /// Corruption: non-empty means the log is damaged.
    pub problems: Vec<Problem>,
    /// Conditions recovery repairs by itself (a torn tail, a stale index).
    pub notes: Vec<String>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

pub fn verify_dir(storage: &dyn Storage, dir: &Path) -> Result<VerifyReport, WalError> {
    let names = storage.list(dir).map_err(|e| WalError::io(dir, e))?;
    let mut bases: Vec<Offset> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    bases.sort();
    let mut report = VerifyReport {
        segments: bases.len(),
        first_offset: bases.first().copied(),
        ..Default::default()
    };
    let mut expected_next: Option<Offset> = None;
    for (i, &base) in bases.iter().enumerate() {
        if let Some(n) = expected_next.filter(|n| *n != base) {
            report.problems.push(Problem {
                file: segment::file_path(dir, base, "log"),
                position: 0,
                what: format!("offsets jump from {n} to segment base {base}"),
            });
        }
        let last = i + 1 == bases.len();
        expected_next = Some(verify_segment(storage, dir, base, last, &mut report)?);
    }
    report.next_offset = expected_next;
    Ok(report)
}

fn verify_segment(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    active: bool,
    report: &mut VerifyReport,
) -> Result<Offset, WalError> {
    let path = segment::file_path(dir, base, "log");
    let (_file, map) = super::files::open_mapped(storage, &path)?;
    let problem = |position: u64, what: String| Problem {
        file: path.clone(),
        position,
        what,
    };
    match SegmentHeader::decode(&map) {
        Ok(h) if h.base_offset == base => {}
        Ok(_) => report.problems.push(problem(
            0,
            "header base offset differs from the file name".into(),
        )),
        Err(reason) => report
            .problems
            .push(problem(0, format!("segment header: {reason}"))),
    }
    let (mut start, mut next, mut ts, mut points) = (
        SEGMENT_HEADER_BYTES as u64,
        base,
        0u64,
        Vec::<IndexPoint>::new(),
    );
    loop {
        let run = segment::scan_run(&map, base, start, next, ts, None);
        report.records += run.records;
        points.extend(&run.points);
        (next, ts) = (run.next_offset, run.last_timestamp_ms);
        let Stop::Invalid { position, reason } = run.stop else {
            break;
        };
        let rest_is_zero = map[position as usize..].iter().all(|&b| b == 0);
        if active && rest_is_zero {
            break;
        }
        match segment::resync(&map, position, next, None) {
            Some((pos, rec)) => {
                report.problems.push(problem(
                    position,
                    format!(
                        "corrupt record (offset {next}): {reason}; {} record(s) unreadable",
                        rec.offset.0 - next.0
                    ),
                ));
                (start, next) = (pos, rec.offset);
            }
            None if active => {
                report.notes.push(format!("{}: {} byte(s) of unfinished tail at {position} ({reason}); recovery truncates it", path.display(), map.len() as u64 - position));
                break;
            }
            None => {
                report.problems.push(problem(
                    position,
                    format!("corrupt data to the end of the segment (offset {next}): {reason}"),
                ));
                break;
            }
        }
    }
    verify_index(
        storage,
        dir,
        base,
        active,
        map.len() as u64,
        &points,
        report,
    );
    Ok(next)
}

fn verify_index(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    active: bool,
    log_len: u64,
    points: &[IndexPoint],
    report: &mut VerifyReport,
) {
    let path = segment::file_path(dir, base, "index");
    if !active {
        let matches = load_sealed_index(storage, dir, base, log_len).is_some_and(|idx| {
            idx.len() == points.len() && (0..idx.len()).all(|i| idx.point(i) == points[i])
        });
        if !matches {
            report.notes.push(format!(
                "{}: index missing, stale or damaged; recovery rebuilds it",
                path.display()
            ));
        }
        return;
    }
    let ckpt = Checkpoint::load(storage, dir).filter(|c| c.segment_base == base);
    let read = |kind: IndexKind| {
        storage
            .open(&segment::file_path(dir, base, kind.extension()), false)
            .ok()
            .and_then(|f| f.map(f.len().ok()?).ok())
    };
    let (Some(c), Some(o), Some(t)) = (ckpt, read(IndexKind::Offset), read(IndexKind::Time)) else {
        return;
    };
    let n = c.index_entries as usize;
    let entries = |m: &[u8]| m.get(INDEX_HEADER_BYTES..).unwrap_or(&[]).to_vec();
    let ok = decode_points(&entries(&o), &entries(&t), n, c.position)
        .is_some_and(|p| points.len() >= n && p[..] == points[..n]);
    if !ok {
        report.notes.push(format!(
            "{}: checkpointed index prefix disagrees with the log; recovery rescans",
            path.display()
        ));
    }
}
