//! Offline verification of a log directory: reads every segment and index
//! and reports what does not check out, with the exact number of records
//! that cannot be read. Never modifies anything and reads through `pread`,
//! so it is safe beside a live broker (whose active tail may then be
//! reported as still being written).
use super::checkpoint::Checkpoint;
use super::fence::{self, Fence};
use super::files;
use super::segment::{self, file_path, parse_segment_name, SegmentHeader, SEGMENT_HEADER_BYTES};
use super::source::{Window, WindowedFile};
use super::{Offset, WalError, Writer};
use crate::index::{decode_points, IndexKind, IndexPoint, INDEX_HEADER_BYTES};
use crate::storage::{self, Storage, StorageFile};
use std::path::{Path, PathBuf};

/// Looks beside a running broker before damage past the checkpoint is
/// taken for a write in progress.
const SETTLE_TRIES_MAX: u32 = 5;

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
    /// Records that read back intact.
    pub records: u64,
    /// Records that cannot be read (damaged or unreadable): exactly the
    /// offsets a reader gets an error for.
    pub unreadable: u64,
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

/// Verifies a log no broker is writing.
pub fn verify_dir(storage: &dyn Storage, dir: &Path) -> Result<VerifyReport, WalError> {
    verify_dir_with(storage, dir, Writer::Stopped)
}

/// Verifies a log, knowing whether a broker may be appending to it.
pub fn verify_dir_with(
    storage: &dyn Storage,
    dir: &Path,
    writer: Writer,
) -> Result<VerifyReport, WalError> {
    let names = storage.list(dir).map_err(|e| WalError::io(dir, e))?;
    let mut bases: Vec<Offset> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    bases.sort();
    let mut report = VerifyReport {
        segments: bases.len(),
        first_offset: bases.first().copied(),
        ..Default::default()
    };
    note_fence(storage, dir, &mut report);
    let mut expected_next: Option<Offset> = None;
    for (i, &base) in bases.iter().enumerate() {
        if let Some(n) = expected_next.filter(|n| *n != base) {
            report.problems.push(Problem {
                file: file_path(dir, base, "log"),
                position: 0,
                what: format!("offsets jump from {n} to segment base {base}"),
            });
        }
        let next_base = bases.get(i + 1).copied();
        expected_next = Some(verify_segment(
            storage,
            dir,
            base,
            next_base,
            writer,
            &mut report,
        )?);
    }
    report.next_offset = expected_next;
    Ok(report)
}

fn note_fence(storage: &dyn Storage, dir: &Path, report: &mut VerifyReport) {
    match Fence::load(storage, dir) {
        Ok(None) => {}
        Ok(Some(f)) => report.notes.push(format!(
            "{}: an fsync failed while the broker ran; recovery discards what segment {} holds after byte {}",
            fence::path(dir).display(),
            f.segment_base,
            f.position
        )),
        Err(reason) => report.problems.push(Problem {
            file: fence::path(dir),
            position: 0,
            what: reason,
        }),
    }
}

fn verify_segment(
    storage: &dyn Storage,
    dir: &Path,
    base: Offset,
    next_base: Option<Offset>,
    writer: Writer,
    report: &mut VerifyReport,
) -> Result<Offset, WalError> {
    let path = file_path(dir, base, "log");
    let file = storage
        .open(&path, false)
        .map_err(|e| WalError::io(&path, e))?;
    let len = file.len().map_err(|e| WalError::io(&path, e))?;
    let active = next_base.is_none();
    // Beside a running broker the newest segment may be a file created a
    // moment ago whose header is being written: look again after a pause.
    let mut header = header_problem(file.as_ref(), base);
    for _ in 0..SETTLE_TRIES_MAX {
        if header.is_none() || !(active && writer == Writer::Running) {
            break;
        }
        std::thread::sleep(super::source::SETTLE_WAIT);
        header = header_problem(file.as_ref(), base);
    }
    if let Some(what) = header {
        report.problems.push(Problem {
            file: path.to_path_buf(),
            position: 0,
            what,
        });
    }
    // What a checkpoint vouches for was synced: damage there is corruption,
    // never a torn tail, even at the end of the active segment.
    let proven = Checkpoint::load(storage, dir)
        .filter(|c| active && c.segment_base == base && c.position <= len)
        .map(|c| (c.position, c.next_offset));
    let mut window = Window::new();
    let mut src = WindowedFile {
        file: file.as_ref(),
        window: &mut window,
        end: len,
    };
    let start = (SEGMENT_HEADER_BYTES as u64, base, 0);
    let mut scan = segment::scan_resyncing(&mut src, base, start, Vec::new(), next_base);
    let unproven = |position: u64| proven.is_none_or(|(end, _)| position >= end);
    // Beside a running broker, holes past the checkpoint count only once a
    // second look after a pause finds them again: a write in progress
    // settles within it. Until two looks agree they are in flight.
    let suspects = |s: &segment::Scan| -> Vec<segment::Hole> {
        s.holes
            .iter()
            .filter(|h| unproven(h.position))
            .copied()
            .collect()
    };
    let mut confirmed = !(active && writer == Writer::Running) || suspects(&scan).is_empty();
    for _ in 0..SETTLE_TRIES_MAX {
        if confirmed {
            break;
        }
        std::thread::sleep(super::source::SETTLE_WAIT);
        src.refresh();
        src.end = file.len().map_err(|e| WalError::io(&path, e))?;
        let again = segment::scan_resyncing(&mut src, base, start, Vec::new(), next_base);
        confirmed = suspects(&again) == suspects(&scan);
        scan = again;
    }
    report.records += scan.records;
    let problem = |position: u64, what: String| Problem {
        file: path.clone(),
        position,
        what,
    };
    let in_flight =
        |position: u64| active && writer == Writer::Running && !confirmed && unproven(position);
    for h in &scan.holes {
        if in_flight(h.position) {
            report.notes.push(format!(
                "{}: the broker is running; bytes at {} may be a write in progress ({})",
                path.display(),
                h.position,
                h.reason
            ));
            continue;
        }
        let n = h.end_offset.0 - h.offset.0;
        report.unreadable += n;
        report.problems.push(problem(
            h.position,
            format!(
                "{n} unreadable record(s), offsets {}..{}: {}",
                h.offset, h.end_offset, h.reason
            ),
        ));
    }
    let next = match scan.tail {
        None => scan.next_offset,
        Some(tail) => {
            let next = scan.next_offset;
            let tail = Tail {
                position: tail.0,
                reason: tail.1,
                unreadable: scan.tail_unreadable,
            };
            verify_tail(
                &mut src, &path, tail, next, next_base, proven, writer, report,
            )
        }
    };
    verify_index(storage, dir, base, active, len, &scan.points, report);
    Ok(next)
}

/// Where a segment's scan stopped with nothing intact after it, and why.
struct Tail {
    position: u64,
    reason: &'static str,
    /// The bytes there could not be read (an I/O error), as opposed to
    /// read and found damaged.
    unreadable: bool,
}

/// Damage with nothing intact after it: in a sealed segment the records up
/// to the next segment are unreadable; in the active one it is corruption
/// where a checkpoint vouches for it, bytes that cannot be read (recovery
/// keeps them as a hole, FORMAT.md r22), else a torn tail recovery cuts
/// (or, beside a running broker, possibly a write in progress). Returns the
/// offset after what the segment holds or claims.
#[allow(clippy::too_many_arguments)]
fn verify_tail<S: segment::SegmentBytes>(
    src: &mut S,
    path: &Path,
    Tail {
        position,
        reason,
        unreadable,
    }: Tail,
    next: Offset,
    next_base: Option<Offset>,
    proven: Option<(u64, Offset)>,
    writer: Writer,
    report: &mut VerifyReport,
) -> Offset {
    let problem = |what: String| Problem {
        file: path.to_path_buf(),
        position,
        what,
    };
    let len = src.end();
    if let Some(end) = next_base {
        if end > next {
            report.unreadable += end.0 - next.0;
            report.problems.push(problem(format!(
                "{} unreadable record(s), offsets {next}..{end} (to the end of the segment): {reason}",
                end.0 - next.0
            )));
        } else {
            report.notes.push(format!(
                "{}: {} byte(s) after the last record at {position}; recovery trims them",
                path.display(),
                len - position
            ));
        }
        return end;
    }
    if let Some((end, proven_next)) = proven.filter(|(end, _)| position < *end) {
        let n = proven_next.0.saturating_sub(next.0);
        report.unreadable += n;
        report.problems.push(problem(format!(
            "{n} unreadable record(s), offsets {next}..{proven_next} (synced: the checkpoint vouches for them): {reason}"
        )));
        // Recovery resumes at the checkpoint: unreadable bytes there are
        // kept as a hole too (r22), not cut.
        if src.get(end, 1).is_err() {
            let (hole_end, what) = unreadable_hole(src, end, proven_next);
            report.unreadable += hole_end.0 - proven_next.0;
            report.problems.push(problem(format!(
                "from the checkpoint at byte {end}: {what}"
            )));
            return hole_end;
        }
        if segment::nonzero_end(src, end) > end {
            report.notes.push(format!(
                "{}: unfinished tail after byte {end}; recovery cuts it (never acknowledged)",
                path.display()
            ));
        }
        return proven_next;
    }
    if unreadable {
        let (end, what) = unreadable_hole(src, position, next);
        report.unreadable += end.0 - next.0;
        report.problems.push(problem(format!("{what} ({reason})")));
        return end;
    }
    if segment::nonzero_end(src, position) > position {
        let what = if writer == Writer::Running {
            "the broker is running; it may be a write in progress"
        } else {
            "recovery cuts it (never acknowledged)"
        };
        report.notes.push(format!(
            "{}: {} byte(s) of unfinished tail at {position} ({reason}); {what}",
            path.display(),
            len - position
        ));
    }
    next
}

/// The hole recovery keeps for unreadable bytes at `from` (nothing intact
/// after them), its first offset `first`: where it ends, and the problem
/// text.
fn unreadable_hole<S: segment::SegmentBytes>(
    src: &mut S,
    from: u64,
    first: Offset,
) -> (Offset, String) {
    let (to, most) = segment::unreadable_tail_span(src, from);
    let end = Offset(first.0 + most);
    let what = format!(
        "{} byte(s) cannot be read; recovery keeps them as a quarantined hole of up to {most} offset(s), {first}..{end}, never cut: they were synced and may hold acknowledged records",
        to - from
    );
    (end, what)
}

fn header_problem(file: &dyn StorageFile, base: Offset) -> Option<String> {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    match storage::read_exact_at(file, &mut h, 0) {
        Err(e) => Some(format!("segment header unreadable: {e}")),
        Ok(()) => match SegmentHeader::decode(&h) {
            Ok(h) if h.base_offset == base => None,
            Ok(_) => Some("header base offset differs from the file name".into()),
            Err(reason) => Some(format!("segment header: {reason}")),
        },
    }
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
    let path = file_path(dir, base, "index");
    if !active {
        let matches = files::read_sealed_index(storage, dir, base, log_len).is_some_and(|idx| {
            idx.len() == points.len() && (0..idx.len()).all(|i| idx.point(i) == points[i])
        });
        if !matches {
            report.notes.push(format!(
                "{}: index missing, stale or damaged; it is rebuilt when the segment is read",
                path.display()
            ));
        }
        return;
    }
    let ckpt = Checkpoint::load(storage, dir).filter(|c| c.segment_base == base);
    let read = |kind: IndexKind| files::read_all(storage, &file_path(dir, base, kind.extension()));
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
