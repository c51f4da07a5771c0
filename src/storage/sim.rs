//! An in-memory file system for fault tests.
//!
//! It keeps, per file, the bytes the disk holds (`durable`) and the bytes
//! the page cache holds (`current`), and every operation not yet made
//! durable as a pending operation in global order. A crash builds the state
//! a restarted machine finds:
//!
//! - [`SimStorage::crash`]: the durable state plus the first `n` pending
//!   bytes in order (the last write torn), so a test can crash at every byte.
//! - [`SimStorage::power_loss`]: what real disks do: every 512-byte sector of
//!   unsynced data independently reaches the disk or not (so writes are lost
//!   in any order, torn at sector boundaries), while file-system metadata
//!   (names, directories, lengths) survives as an in-order prefix.
//!
//! Directories below a root given to [`SimStorage::with_root`] are modeled:
//! an entry in one survives a crash only once the directory itself is
//! durable (its parent was synced after it was created). Other paths behave
//! as existing, durable directories.
//!
//! Faults: `EIO` on fsync that keeps the cached pages but never writes them
//! (as Linux does: the pages are marked clean), `ENOSPC`, short writes, write
//! errors, read errors on a byte range (latent sector errors, which survive
//! crashes until the range is rewritten) and flipped bits in synced data.
use super::{Storage, StorageFile};
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Bytes one disk sector holds: the unit a power loss keeps or loses.
pub const SIM_SECTOR_BYTES: u64 = 512;

/// A fault to inject into later operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFault {
    /// The next `sync_data` fails with `EIO`. Like Linux, the dirty pages it
    /// could not write are marked clean: reads still return them, but they
    /// never reach the disk, and a retried fsync would wrongly succeed.
    SyncFailsOnce,
    /// Writes and allocations beyond this many more bytes fail with `ENOSPC`.
    NoSpaceAfter(u64),
    /// Every write stores at most half its buffer (at least one byte).
    ShortWrites,
    /// Every write fails with `EIO`.
    WriteFails,
}

/// In-memory [`Storage`] with crash images and fault injection. Cloning shares state.
#[derive(Clone, Default)]
pub struct SimStorage {
    state: Arc<Mutex<State>>,
    sync_hook: Arc<Mutex<Option<SyncHook>>>,
}

/// Called at the start of every `sync_data` and `sync_dir`, before anything
/// becomes durable: the moment to capture what a crash would leave.
pub type SyncHook = Arc<dyn Fn(&SimStorage) + Send + Sync>;

type Ino = usize;

#[derive(Default, Clone)]
struct State {
    files: Vec<SimInode>,
    names: BTreeMap<PathBuf, Ino>,
    durable_names: BTreeMap<PathBuf, Ino>,
    /// Modeled directories (below `root`) as the cache sees them, and as the disk does.
    dirs: BTreeSet<PathBuf>,
    durable_dirs: BTreeSet<PathBuf>,
    root: Option<PathBuf>,
    pending: Vec<Pending>,
    faults: Vec<SimFault>,
    space_left: Option<u64>,
    syncs: u64,
}

/// File contents as copy-on-write 4 KiB pages, so forking a file system
/// (a crash capture at every sync) shares every page not written since.
#[derive(Default, Clone, PartialEq, Eq)]
struct Paged {
    len: usize,
    pages: Vec<Option<Arc<[u8; PAGE]>>>,
}

const PAGE: usize = 4096;

impl Paged {
    fn len(&self) -> usize {
        self.len
    }

    fn resize(&mut self, len: usize) {
        if len < self.len {
            // Bytes past the new end read as zeros if the file grows again.
            let keep = len % PAGE;
            if keep != 0 {
                if let Some(Some(p)) = self.pages.get_mut(len / PAGE) {
                    Arc::make_mut(p)[keep..].fill(0);
                }
            }
        }
        self.pages.resize(len.div_ceil(PAGE), None);
        self.len = len;
    }

    fn write(&mut self, pos: usize, bytes: &[u8]) {
        let end = pos + bytes.len();
        if end > self.len {
            self.resize(end);
        }
        let mut at = pos;
        while at < end {
            let (page, off) = (at / PAGE, at % PAGE);
            let n = (PAGE - off).min(end - at);
            let p = self.pages[page].get_or_insert_with(|| Arc::new([0u8; PAGE]));
            Arc::make_mut(p)[off..off + n].copy_from_slice(&bytes[at - pos..at - pos + n]);
            at += n;
        }
    }

    fn read(&self, pos: usize, buf: &mut [u8]) {
        let mut at = pos;
        let end = pos + buf.len();
        while at < end {
            let (page, off) = (at / PAGE, at % PAGE);
            let n = (PAGE - off).min(end - at);
            let dst = &mut buf[at - pos..at - pos + n];
            match &self.pages[page] {
                Some(p) => dst.copy_from_slice(&p[off..off + n]),
                None => dst.fill(0),
            }
            at += n;
        }
    }

    fn flip(&mut self, pos: usize) {
        if pos < self.len {
            let p = self.pages[pos / PAGE].get_or_insert_with(|| Arc::new([0u8; PAGE]));
            Arc::make_mut(p)[pos % PAGE] ^= 0x5a;
        }
    }

    fn to_vec(&self) -> Vec<u8> {
        let mut v = vec![0u8; self.len];
        self.read(0, &mut v);
        v
    }
}

#[derive(Default, Clone)]
struct SimInode {
    durable: Paged,
    current: Paged,
    /// Byte ranges whose reads fail with `EIO` until rewritten.
    bad: Vec<(u64, u64)>,
}

#[derive(Clone)]
enum Pending {
    Data {
        ino: Ino,
        pos: u64,
        bytes: Arc<[u8]>,
    },
    SetLen {
        ino: Ino,
        len: u64,
    },
    Name {
        path: PathBuf,
        ino: Option<Ino>,
    },
    Dir {
        path: PathBuf,
        present: bool,
    },
}

impl Pending {
    fn of_ino(&self, i: Ino) -> bool {
        matches!(self, Pending::Data { ino, .. } | Pending::SetLen { ino, .. } if *ino == i)
    }

    fn in_dir(&self, dir: &Path) -> bool {
        match self {
            Pending::Name { path, .. } | Pending::Dir { path, .. } => path.parent() == Some(dir),
            _ => false,
        }
    }
}

/// A small deterministic generator (splitmix64) so a failing power-loss
/// image can be rebuilt from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

impl SimStorage {
    pub fn new() -> Self {
        Self::default()
    }

    /// A file system whose directories strictly below `root` are modeled
    /// (they must be made durable by syncing their parent). `root` and its
    /// ancestors exist and are durable.
    pub fn with_root(root: &Path) -> Self {
        let sim = Self::default();
        sim.state.lock().root = Some(root.to_path_buf());
        sim
    }

    /// Adds a fault; it applies to every later matching operation until cleared
    /// (`SyncFailsOnce` clears itself).
    pub fn inject(&self, fault: SimFault) {
        let mut st = self.state.lock();
        if let SimFault::NoSpaceAfter(n) = fault {
            st.space_left = Some(n);
        }
        st.faults.push(fault);
    }

    pub fn clear_faults(&self) {
        let mut st = self.state.lock();
        st.faults.clear();
        st.space_left = None;
    }

    /// Makes reads of `len` bytes at `pos` of `path` fail with `EIO` (a
    /// latent sector error) until those bytes are written again.
    pub fn fail_reads(&self, path: &Path, pos: u64, len: u64) {
        let mut st = self.state.lock();
        let ino = *st.names.get(path).expect("fail_reads: no such file");
        st.files[ino].bad.push((pos, pos + len));
    }

    /// Ends every read error [`Self::fail_reads`] put on `path` (the
    /// error was transient: a cable, a controller retry).
    pub fn heal_reads(&self, path: &Path) {
        let mut st = self.state.lock();
        let ino = *st.names.get(path).expect("heal_reads: no such file");
        st.files[ino].bad.clear();
    }

    /// Installs (or removes) the hook run at the start of every sync.
    pub fn set_sync_hook(&self, hook: Option<SyncHook>) {
        *self.sync_hook.lock() = hook;
    }

    /// A deep copy: later operations on either side do not affect the other.
    pub fn fork(&self) -> SimStorage {
        let state = self.state.lock().clone();
        SimStorage {
            state: Arc::new(Mutex::new(state)),
            sync_hook: Arc::default(),
        }
    }

    /// Bytes of writes not yet made durable: the crash points of [`Self::crash`].
    pub fn pending_bytes(&self) -> u64 {
        let st = self.state.lock();
        st.pending
            .iter()
            .map(|p| match p {
                Pending::Data { bytes, .. } => bytes.len() as u64,
                _ => 0,
            })
            .sum()
    }

    /// Number of successful `sync_data` calls so far.
    pub fn sync_count(&self) -> u64 {
        self.state.lock().syncs
    }

    /// The storage a restarted machine would see if power failed after the
    /// first `kept_bytes` pending bytes reached the disk in order (`None`:
    /// all of them).
    pub fn crash(&self, kept_bytes: Option<u64>) -> SimStorage {
        let st = self.state.lock();
        let mut img = Image::durable(&st);
        let mut budget = kept_bytes.unwrap_or(u64::MAX);
        for op in &st.pending {
            if let Pending::Data { ino, pos, bytes } = op {
                let n = (bytes.len() as u64).min(budget) as usize;
                img.write(*ino, *pos, &bytes[..n]);
                budget -= n as u64;
                if n < bytes.len() {
                    break;
                }
            } else {
                img.apply_meta(op);
            }
        }
        img.into_storage(&st)
    }

    /// The storage after a power loss right after the last sync: nothing
    /// pending survives, not even metadata.
    pub fn synced_only(&self) -> SimStorage {
        let st = self.state.lock();
        Image::durable(&st).into_storage(&st)
    }

    /// The storage after a power loss, as real disks leave it: file-system
    /// metadata survives as an in-order prefix of the pending operations,
    /// and every 512-byte sector of every unsynced write independently
    /// reaches the disk or not (any order, torn at sector boundaries; a
    /// sector rewritten several times ends with any of its versions).
    /// Deterministic in `seed`.
    pub fn power_loss(&self, seed: u64) -> SimStorage {
        let st = self.state.lock();
        let mut rng = Rng(seed);
        let meta_ops = st
            .pending
            .iter()
            .filter(|op| !matches!(op, Pending::Data { .. }))
            .count() as u64;
        let mut meta_left = rng.below(meta_ops + 1);
        let mut img = Image::durable(&st);
        for op in &st.pending {
            match op {
                Pending::Data { ino, pos, bytes } => {
                    for (at, sector) in sectors(*pos, bytes) {
                        if rng.next() & 1 == 1 {
                            img.write(*ino, at, sector);
                        }
                    }
                }
                other if meta_left > 0 => {
                    meta_left -= 1;
                    img.apply_meta(other);
                }
                _ => {}
            }
        }
        img.into_storage(&st)
    }

    /// Flips bits of one byte in a file, durably, as bit rot would.
    pub fn corrupt_byte(&self, path: &Path, pos: u64) {
        let mut st = self.state.lock();
        let ino = *st.names.get(path).expect("corrupt_byte: no such file");
        let f = &mut st.files[ino];
        f.durable.flip(pos as usize);
        f.current.flip(pos as usize);
    }

    /// Overwrites bytes of a file, durably (a test building an on-disk state).
    pub fn overwrite(&self, path: &Path, pos: u64, bytes: &[u8]) {
        let mut st = self.state.lock();
        let ino = *st.names.get(path).expect("overwrite: no such file");
        let f = &mut st.files[ino];
        f.durable.write(pos as usize, bytes);
        f.current.write(pos as usize, bytes);
    }

    /// The current bytes of a file (test inspection).
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.state.lock();
        st.names
            .get(path)
            .map(|&ino| st.files[ino].current.to_vec())
    }
}

/// Splits a write into the sector-aligned pieces a disk persists atomically.
fn sectors(pos: u64, bytes: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    let mut at = pos;
    let end = pos + bytes.len() as u64;
    std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let next = ((at / SIM_SECTOR_BYTES) + 1) * SIM_SECTOR_BYTES;
        let stop = next.min(end);
        let piece = &bytes[(at - pos) as usize..(stop - pos) as usize];
        let item = (at, piece);
        at = stop;
        Some(item)
    })
}

/// A crash image being built from the durable state.
struct Image {
    files: Vec<SimInode>,
    names: BTreeMap<PathBuf, Ino>,
    dirs: BTreeSet<PathBuf>,
}

impl Image {
    fn durable(st: &State) -> Image {
        Image {
            files: st
                .files
                .iter()
                .map(|f| SimInode {
                    durable: f.durable.clone(),
                    current: f.durable.clone(),
                    bad: f.bad.clone(),
                })
                .collect(),
            names: st.durable_names.clone(),
            dirs: st.durable_dirs.clone(),
        }
    }

    fn write(&mut self, ino: Ino, pos: u64, bytes: &[u8]) {
        self.files[ino].current.write(pos as usize, bytes);
    }

    fn apply_meta(&mut self, op: &Pending) {
        match op {
            Pending::SetLen { ino, len } => self.files[*ino].current.resize(*len as usize),
            Pending::Name { path, ino: Some(i) } => {
                self.names.insert(path.clone(), *i);
            }
            Pending::Name { path, ino: None } => {
                self.names.remove(path);
            }
            Pending::Dir {
                path,
                present: true,
            } => {
                self.dirs.insert(path.clone());
            }
            Pending::Dir {
                path,
                present: false,
            } => {
                self.dirs.remove(path);
            }
            Pending::Data { .. } => unreachable!("data is applied by the caller"),
        }
    }

    /// Entries inside a modeled directory that did not survive vanish with it.
    fn into_storage(mut self, st: &State) -> SimStorage {
        if let Some(root) = &st.root {
            let dirs = self.dirs.clone();
            let reachable = |p: &Path| {
                p.ancestors()
                    .skip(1)
                    .take_while(|a| a.starts_with(root) && *a != root.as_path())
                    .all(|a| dirs.contains(a))
            };
            self.names.retain(|p, _| reachable(p));
            self.dirs.retain(|d| reachable(d));
        }
        for f in &mut self.files {
            f.durable = f.current.clone();
        }
        let state = State {
            files: self.files,
            names: self.names.clone(),
            durable_names: self.names,
            dirs: self.dirs.clone(),
            durable_dirs: self.dirs,
            root: st.root.clone(),
            ..State::default()
        };
        SimStorage {
            state: Arc::new(Mutex::new(state)),
            sync_hook: Arc::default(),
        }
    }
}

fn os_err(code: i32) -> io::Error {
    io::Error::from_raw_os_error(code)
}

impl State {
    fn has(&self, fault: SimFault) -> bool {
        self.faults.contains(&fault)
    }

    fn take_space(&mut self, bytes: u64) -> io::Result<()> {
        match self.space_left {
            Some(left) if left < bytes => Err(os_err(libc::ENOSPC)),
            Some(left) => {
                self.space_left = Some(left - bytes);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn set_name(&mut self, path: &Path, ino: Option<Ino>) {
        match ino {
            Some(i) => self.names.insert(path.to_path_buf(), i),
            None => self.names.remove(path),
        };
        self.pending.push(Pending::Name {
            path: path.to_path_buf(),
            ino,
        });
    }

    /// Whether `dir` is a directory modeled by this file system.
    fn modeled(&self, dir: &Path) -> bool {
        self.root
            .as_ref()
            .is_some_and(|r| dir.starts_with(r) && dir != r.as_path())
    }

    fn dir_exists(&self, dir: &Path) -> bool {
        !self.modeled(dir) || self.dirs.contains(dir)
    }

    fn parent_exists(&self, path: &Path) -> bool {
        path.parent().is_none_or(|p| self.dir_exists(p))
    }
}

impl Storage for SimStorage {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        let mut missing: Vec<PathBuf> = dir
            .ancestors()
            .filter(|a| st.modeled(a) && !st.dirs.contains(*a))
            .map(Path::to_path_buf)
            .collect();
        missing.reverse();
        for d in missing {
            st.dirs.insert(d.clone());
            st.pending.push(Pending::Dir {
                path: d,
                present: true,
            });
        }
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.state.lock();
        if !st.dir_exists(dir) {
            return Err(os_err(libc::ENOENT));
        }
        let mut names = BTreeSet::new();
        let children = st.names.keys().chain(st.dirs.iter());
        for p in children {
            if let Ok(rest) = p.strip_prefix(dir) {
                if let Some(first) = rest.components().next() {
                    names.insert(first.as_os_str().to_string_lossy().into_owned());
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn StorageFile>> {
        let mut st = self.state.lock();
        let ino = match st.names.get(path) {
            Some(&ino) => ino,
            None if create && st.parent_exists(path) => {
                st.files.push(SimInode::default());
                let ino = st.files.len() - 1;
                st.set_name(path, Some(ino));
                ino
            }
            None => return Err(os_err(libc::ENOENT)),
        };
        Ok(Box::new(SimFile {
            storage: self.clone(),
            ino,
        }))
    }

    fn exists(&self, path: &Path) -> bool {
        let st = self.state.lock();
        st.names.contains_key(path) || (st.modeled(path) && st.dirs.contains(path))
    }

    fn is_dir(&self, path: &Path) -> bool {
        let st = self.state.lock();
        if st.modeled(path) {
            return st.dirs.contains(path);
        }
        !st.names.contains_key(path)
            && st
                .names
                .keys()
                .any(|p| p.starts_with(path) && p.as_path() != path)
    }

    fn file_len(&self, path: &Path) -> io::Result<u64> {
        let st = self.state.lock();
        let ino = *st.names.get(path).ok_or_else(|| os_err(libc::ENOENT))?;
        Ok(st.files[ino].current.len() as u64)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        if !st.names.contains_key(path) {
            return Err(os_err(libc::ENOENT));
        }
        st.set_name(path, None);
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = self.state.lock();
        let ino = *st.names.get(from).ok_or_else(|| os_err(libc::ENOENT))?;
        st.set_name(from, None);
        st.set_name(to, Some(ino));
        Ok(())
    }

    /// What `SimFault::NoSpaceAfter` leaves, when injected.
    fn available_bytes(&self, _dir: &Path) -> io::Result<Option<u64>> {
        Ok(self.state.lock().space_left)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let hook = self.sync_hook.lock().clone();
        if let Some(hook) = hook {
            hook(self);
        }
        let mut st = self.state.lock();
        if !st.dir_exists(dir) {
            return Err(os_err(libc::ENOENT));
        }
        let in_dir = |p: &Path| p.parent() == Some(dir);
        st.durable_names.retain(|p, _| !in_dir(p));
        let current: Vec<(PathBuf, Ino)> = st
            .names
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        st.durable_names.extend(current);
        st.durable_dirs.retain(|p| !in_dir(p));
        let dirs: Vec<PathBuf> = st.dirs.iter().filter(|p| in_dir(p)).cloned().collect();
        st.durable_dirs.extend(dirs);
        st.pending.retain(|op| !op.in_dir(dir));
        Ok(())
    }
}

struct SimFile {
    storage: SimStorage,
    ino: Ino,
}

impl StorageFile for SimFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        let st = self.storage.state.lock();
        let f = &st.files[self.ino];
        if pos as usize >= f.current.len() {
            return Ok(0);
        }
        let n = buf.len().min(f.current.len() - pos as usize);
        let end = pos + n as u64;
        if f.bad.iter().any(|&(a, b)| a < end && pos < b) {
            return Err(os_err(libc::EIO));
        }
        f.current.read(pos as usize, &mut buf[..n]);
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], pos: u64) -> io::Result<usize> {
        let mut st = self.storage.state.lock();
        if st.has(SimFault::WriteFails) {
            return Err(os_err(libc::EIO));
        }
        let mut n = buf.len();
        if st.has(SimFault::ShortWrites) {
            n = (n / 2).max(1).min(buf.len());
        }
        let grows = (pos + n as u64).saturating_sub(st.files[self.ino].current.len() as u64);
        st.take_space(grows)?;
        let end = pos + n as u64;
        // A rewritten range is remapped by the disk: its read errors are gone.
        st.files[self.ino]
            .bad
            .retain(|&(a, b)| !(pos <= a && b <= end));
        st.files[self.ino].current.write(pos as usize, &buf[..n]);
        st.pending.push(Pending::Data {
            ino: self.ino,
            pos,
            bytes: Arc::from(&buf[..n]),
        });
        Ok(n)
    }

    fn sync_data(&self) -> io::Result<()> {
        let hook = self.storage.sync_hook.lock().clone();
        if let Some(hook) = hook {
            hook(&self.storage);
        }
        let mut st = self.storage.state.lock();
        let ino = self.ino;
        let failing = st.faults.iter().position(|f| *f == SimFault::SyncFailsOnce);
        let mine: Vec<Pending> = st
            .pending
            .iter()
            .filter(|op| op.of_ino(ino))
            .cloned()
            .collect();
        st.pending.retain(|op| !op.of_ino(ino));
        if let Some(i) = failing {
            st.faults.remove(i);
            // Linux marks the pages it failed to write clean: they stay in the
            // cache (reads return them) but will never reach the disk.
            return Err(os_err(libc::EIO));
        }
        let f = &mut st.files[ino];
        for op in mine {
            match op {
                Pending::Data { pos, bytes, .. } => f.durable.write(pos as usize, &bytes),
                Pending::SetLen { len, .. } => f.durable.resize(len as usize),
                _ => unreachable!("only this file's data and lengths"),
            }
        }
        st.syncs += 1;
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.storage.state.lock().files[self.ino].current.len() as u64)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let mut st = self.storage.state.lock();
        let grows = len.saturating_sub(st.files[self.ino].current.len() as u64);
        st.take_space(grows)?;
        st.files[self.ino].current.resize(len as usize);
        st.pending.push(Pending::SetLen { ino: self.ino, len });
        Ok(())
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        if self.len()? < len {
            self.set_len(len)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{read_exact_at, write_all_at};

    fn file(sim: &SimStorage, p: &str) -> Box<dyn StorageFile> {
        sim.open(Path::new(p), true).unwrap()
    }

    #[test]
    fn power_loss_keeps_synced_data_and_any_subset_of_unsynced_sectors() {
        let sim = SimStorage::new();
        let f = file(&sim, "/a");
        write_all_at(f.as_ref(), &[1u8; 1024], 0).unwrap();
        f.sync_data().unwrap();
        sim.sync_dir(Path::new("/")).unwrap();
        write_all_at(f.as_ref(), &[2u8; 4096], 1024).unwrap();
        let mut seen_gap = false;
        for seed in 0..64 {
            let img = sim.power_loss(seed);
            let bytes = img.contents(Path::new("/a")).unwrap();
            assert_eq!(&bytes[..1024], &[1u8; 1024], "synced data survives");
            let kept: Vec<bool> = (0..8)
                .map(|s| bytes.get(1024 + s * 512).copied() == Some(2))
                .collect();
            // A later sector kept while an earlier one is lost: not a prefix.
            seen_gap |= kept.windows(2).any(|w| !w[0] && w[1]);
        }
        assert!(seen_gap, "unsynced sectors are lost in any order");
    }

    #[test]
    fn failed_fsync_keeps_cached_pages_readable_but_never_durable() {
        let sim = SimStorage::new();
        let f = file(&sim, "/a");
        write_all_at(f.as_ref(), b"old", 0).unwrap();
        f.sync_data().unwrap();
        sim.sync_dir(Path::new("/")).unwrap();
        write_all_at(f.as_ref(), b"new", 0).unwrap();
        sim.inject(SimFault::SyncFailsOnce);
        assert!(f.sync_data().is_err());
        let mut buf = [0u8; 3];
        read_exact_at(f.as_ref(), &mut buf, 0).unwrap();
        assert_eq!(&buf, b"new", "the cache still holds the failed write");
        assert!(f.sync_data().is_ok(), "a retried fsync succeeds ...");
        let img = sim.crash(None);
        assert_eq!(
            img.contents(Path::new("/a")).unwrap(),
            b"old",
            "... but the failed pages never reached the disk"
        );
    }

    #[test]
    fn read_errors_persist_across_crashes_until_rewritten() {
        let sim = SimStorage::new();
        let f = file(&sim, "/a");
        write_all_at(f.as_ref(), &[7u8; 2048], 0).unwrap();
        f.sync_data().unwrap();
        sim.sync_dir(Path::new("/")).unwrap();
        sim.fail_reads(Path::new("/a"), 512, 512);
        let mut buf = [0u8; 100];
        assert!(f.read_at(&mut buf, 0).is_ok());
        assert!(f.read_at(&mut buf, 600).is_err());
        let img = sim.crash(None);
        let g = img.open(Path::new("/a"), false).unwrap();
        assert!(g.read_at(&mut buf, 600).is_err());
        write_all_at(g.as_ref(), &[8u8; 512], 512).unwrap();
        assert!(
            g.read_at(&mut buf, 600).is_ok(),
            "a rewrite remaps the sector"
        );
    }

    #[test]
    fn entries_of_a_directory_never_synced_into_its_parent_vanish() {
        let sim = SimStorage::with_root(Path::new("/r"));
        sim.create_dir_all(Path::new("/r/data/q")).unwrap();
        let f = file(&sim, "/r/data/q/file");
        f.sync_data().unwrap();
        let file = Path::new("/r/data/q/file");
        sim.sync_dir(Path::new("/r/data/q")).unwrap();
        assert!(!sim.synced_only().exists(file));
        sim.sync_dir(Path::new("/r/data")).unwrap();
        assert!(!sim.synced_only().exists(file));
        sim.sync_dir(Path::new("/r")).unwrap();
        assert!(sim.synced_only().exists(file));
    }
}
