//! The file-system interface the WAL uses, so faults are testable.
//!
//! Production uses [`FsStorage`] (real files, `pread`/`pwrite`, `fdatasync`,
//! `fallocate`; never `mmap`: a media error on a mapped page is a SIGBUS). Tests use [`SimStorage`], an in-memory file system that remembers
//! which bytes were synced, can crash at any byte of the unsynced tail, and
//! injects short writes, `EIO` on fsync, `ENOSPC` and flipped bytes.
//!
//! This module never interprets file contents; it only moves bytes.
mod fs;
mod sim;

pub use fs::FsStorage;
pub use sim::{SimFault, SimStorage, SyncHook, SIM_SECTOR_BYTES};

use std::io;
use std::path::{Path, PathBuf};

/// A directory tree of files. Paths are absolute or relative to the process.
pub trait Storage: Send + Sync + 'static {
    /// Creates a directory and its parents; durable only after [`Storage::sync_dir`] of the parent.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Names (not paths) of the entries in `dir`, unsorted.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Opens a file for reading and writing, creating it when `create` is set.
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn StorageFile>>;
    fn exists(&self, path: &Path) -> bool;
    fn is_dir(&self, path: &Path) -> bool;
    /// Length of a file without opening it (no file descriptor is kept).
    fn file_len(&self, path: &Path) -> io::Result<u64>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals inside `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Bytes an unprivileged writer can still allocate on `dir`'s file
    /// system, where that is known.
    fn available_bytes(&self, _dir: &Path) -> io::Result<Option<u64>> {
        Ok(None)
    }
}

/// One open file. All I/O is positional so the writer never depends on a cursor.
// `len` is a file length that can fail (I/O), not a collection size.
#[allow(clippy::len_without_is_empty)]
pub trait StorageFile: Send + Sync {
    /// Reads up to `buf.len()` bytes at `pos`; returns 0 at end of file.
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    /// Writes some prefix of `buf` at `pos` (possibly short).
    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<usize>;
    /// `fdatasync`: once it returns `Ok`, every byte written before it survives a crash.
    fn sync_data(&self) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    /// Truncates or extends (with zeros). Durable after `sync_data`.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves blocks up to `len` so later writes neither allocate nor hit `ENOSPC`.
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// Writes the dirty pages of `len` bytes at `pos` to the device and waits,
    /// WITHOUT a cache flush: no durability promise, only bounded dirty data
    /// without the device-wide flush an fsync costs. Default: nothing.
    fn write_back(&self, _pos: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

/// Writes all of `buf` at `pos`, looping over short writes. A write that
/// makes no progress is an error rather than a spin.
pub fn write_all_at(file: &dyn StorageFile, mut buf: &[u8], mut pos: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let n = file.write_at(buf, pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "write made no progress",
            ));
        }
        buf = &buf[n..];
        pos += n as u64;
    }
    Ok(())
}

/// Reads exactly `buf.len()` bytes at `pos`, or fails with `UnexpectedEof`.
pub fn read_exact_at(file: &dyn StorageFile, mut buf: &mut [u8], mut pos: u64) -> io::Result<()> {
    while !buf.is_empty() {
        let n = file.read_at(buf, pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than expected",
            ));
        }
        buf = &mut buf[n..];
        pos += n as u64;
    }
    Ok(())
}

/// Creates `dir` and every missing ancestor, each made durable by an fsync
/// of its parent before anything is created inside it: a file in a
/// directory whose own entry never reached the disk vanishes with it.
pub fn create_dir_durable(storage: &dyn Storage, dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !storage.exists(a))
        .collect();
    storage.create_dir_all(dir)?;
    for created in missing.iter().rev() {
        storage.sync_dir(parent_of(created))?;
    }
    Ok(())
}

/// Writes a small file atomically: temp file, fsync, rename, fsync directory.
pub fn replace_file(storage: &dyn Storage, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = tmp_path(path);
    let file = storage.open(&tmp, true)?;
    file.set_len(0)?;
    write_all_at(file.as_ref(), bytes, 0)?;
    file.sync_data()?;
    drop(file);
    storage.rename(&tmp, path)?;
    storage.sync_dir(parent_of(path))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".tmp");
    path.with_file_name(name)
}

/// The directory holding `path` (the current directory for a bare name).
pub fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}
