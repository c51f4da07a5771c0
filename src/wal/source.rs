//! Reading segment files through `pread` into a reusable window.
//!
//! Segments are never memory-mapped: a media error on a mapped page is a
//! SIGBUS that kills the broker, and recovery would touch the same page at
//! every restart. Through `pread` it is an `EIO` that becomes a typed
//! result, located to the failing 4 KiB block so the rest of the segment
//! stays readable. A file truncated under a reader (a segment sealed beside
//! `orderly verify`) only reads short.
use super::segment::{SegmentBytes, Unreadable};
use crate::storage::StorageFile;
use std::io;

/// Bytes read per refill: sequential reads cost one `pread` per this much.
pub const WINDOW_READ_BYTES: usize = 256 * 1024;
/// The unit a read error is located to (a page; disks fail whole sectors).
pub const READ_BLOCK_BYTES: u64 = 4096;

/// A buffer holding the bytes of `[start, start + buf.len())` of one file.
#[derive(Default)]
pub struct Window {
    buf: Vec<u8>,
    start: u64,
}

impl Window {
    pub fn new() -> Window {
        Window::default()
    }

    /// Forgets the buffered bytes (the window moves to another file).
    pub fn clear(&mut self) {
        self.buf.clear();
        self.start = 0;
    }

    /// Buffered bytes of `[pos, pos + len)`, if all of them are buffered.
    pub fn buffered(&self, pos: u64, len: usize) -> Option<&[u8]> {
        let from = usize::try_from(pos.checked_sub(self.start)?).ok()?;
        self.buf.get(from..from.checked_add(len)?)
    }

    fn holds(&self, pos: u64, end: u64) -> bool {
        pos >= self.start && end <= self.start + self.buf.len() as u64
    }

    /// Reads `len` bytes at `pos`; on a read error keeps the readable
    /// prefix and returns the first failing block.
    fn fill(&mut self, file: &dyn StorageFile, pos: u64, len: usize) -> Option<Unreadable> {
        self.start = pos;
        self.buf.resize(len, 0);
        match read_some(file, &mut self.buf, pos) {
            Ok(n) => {
                self.buf.truncate(n);
                None
            }
            Err(_) => {
                let good = readable_prefix(file, &mut self.buf, pos);
                self.buf.truncate(good);
                let bad = pos + good as u64;
                Some(Unreadable {
                    position: bad,
                    resume: (bad / READ_BLOCK_BYTES + 1) * READ_BLOCK_BYTES,
                })
            }
        }
    }
}

/// Reads up to `buf.len()` bytes at `pos`, stopping early only at end of file.
fn read_some(file: &dyn StorageFile, buf: &mut [u8], pos: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], pos + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Re-reads `buf` block by block after a failed read: how many leading bytes
/// are readable.
fn readable_prefix(file: &dyn StorageFile, buf: &mut [u8], pos: u64) -> usize {
    let mut good = 0usize;
    while good < buf.len() {
        let at = pos + good as u64;
        let block_end = ((at / READ_BLOCK_BYTES + 1) * READ_BLOCK_BYTES - pos) as usize;
        let stop = block_end.min(buf.len());
        match read_some(file, &mut buf[good..stop], at) {
            Ok(n) if n == stop - good => good = stop,
            Ok(n) => return good + n,
            Err(_) => return good,
        }
    }
    good
}

/// How long bytes must stay the same to count as written: a batch being
/// written beside a reader is one `pwrite`, done well within this.
pub const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether `len` bytes at `pos` read the same twice, `SETTLE_WAIT` apart:
/// beside a running broker, damage that is still there, unchanged, is not
/// a write in progress. Unreadable bytes count as settled (a read error is
/// not in flight).
pub fn settled(file: &dyn StorageFile, pos: u64, len: usize) -> bool {
    let read = |buf: &mut Vec<u8>| -> bool {
        buf.resize(len, 0);
        match read_some(file, buf, pos) {
            Ok(n) => {
                buf.truncate(n);
                true
            }
            Err(_) => false,
        }
    };
    let (mut first, mut second) = (Vec::new(), Vec::new());
    if !read(&mut first) {
        return true;
    }
    std::thread::sleep(SETTLE_WAIT);
    !read(&mut second) || first == second
}

/// One file read through a window, up to a readable end.
pub struct WindowedFile<'a> {
    pub file: &'a dyn StorageFile,
    pub window: &'a mut Window,
    pub end: u64,
}

impl WindowedFile<'_> {
    /// Forgets the buffered bytes, so the next read sees the file as it is now.
    pub fn refresh(&mut self) {
        self.window.clear();
    }
}

impl SegmentBytes for WindowedFile<'_> {
    fn end(&self) -> u64 {
        self.end
    }

    fn get(&mut self, pos: u64, len: usize) -> Result<&[u8], Unreadable> {
        let stop = pos.saturating_add(len as u64).min(self.end);
        if pos >= stop {
            return Ok(&[]);
        }
        if !self.window.holds(pos, stop) {
            let want = (stop - pos).max(WINDOW_READ_BYTES as u64);
            let read = want.min(self.end - pos) as usize;
            if let Some(bad) = self.window.fill(self.file, pos, read) {
                // Read ahead may run into a bad block the caller never asked for.
                if !self.window.holds(pos, stop) {
                    return Err(bad);
                }
            }
        }
        let from = (pos - self.window.start) as usize;
        let to = ((stop - self.window.start) as usize).min(self.window.buf.len());
        // A file shorter than `end` (truncated under a reader) reads short.
        Ok(&self.window.buf[from.min(to)..to])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{write_all_at, SimStorage, Storage};
    use std::path::Path;

    #[test]
    fn a_read_error_is_located_to_its_block_and_the_rest_stays_readable() {
        let sim = SimStorage::new();
        let f = sim.open(Path::new("/f"), true).unwrap();
        let data: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        write_all_at(f.as_ref(), &data, 0).unwrap();
        sim.fail_reads(Path::new("/f"), 9000, 10);
        let mut w = Window::new();
        let mut src = WindowedFile {
            file: f.as_ref(),
            window: &mut w,
            end: data.len() as u64,
        };
        assert_eq!(src.get(100, 50).unwrap(), &data[100..150]);
        let err = src.get(8000, 2000).unwrap_err();
        assert_eq!(
            err,
            Unreadable {
                position: 8192,
                resume: 12288
            }
        );
        assert_eq!(src.get(12288, 100).unwrap(), &data[12288..12388]);
        assert_eq!(
            src.get(39_990, 100).unwrap(),
            &data[39_990..],
            "short at the end"
        );
    }
}
