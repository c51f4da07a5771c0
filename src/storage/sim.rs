//! An in-memory file system for fault tests.
//!
//! It keeps, per file, the bytes that survived the last `sync_data` and, per
//! path, the directory entry that survived the last `sync_dir`. Everything else
//! is a pending operation in global order. [`SimStorage::crash`] builds the
//! state a machine would find after power loss: the durable state plus the
//! first `n` bytes of pending writes (the last one torn), so a test can crash
//! at every byte of the unsynced tail.
use super::{Mapping, Storage, StorageFile};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A fault to inject into later operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SimFault {
    /// The next `sync_data` fails with `EIO` and, like Linux, drops the dirty
    /// data it could not write: a retry would wrongly succeed.
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

/// Called at the start of every `sync_data`, before anything becomes durable:
/// the moment to capture what a crash would leave.
pub type SyncHook = Arc<dyn Fn(&SimStorage) + Send + Sync>;

type Ino = usize;

#[derive(Default, Clone)]
struct State {
    files: Vec<SimInode>,
    names: BTreeMap<PathBuf, Ino>,
    durable_names: BTreeMap<PathBuf, Ino>,
    pending: Vec<Pending>,
    faults: Vec<SimFault>,
    space_left: Option<u64>,
    syncs: u64,
}

#[derive(Default, Clone)]
struct SimInode {
    durable: Vec<u8>,
    current: Vec<u8>,
}

#[derive(Clone)]
enum Pending {
    Data { ino: Ino, pos: u64, bytes: Vec<u8> },
    SetLen { ino: Ino, len: u64 },
    Name { path: PathBuf, ino: Option<Ino> },
}

impl SimStorage {
    pub fn new() -> Self {
        Self::default()
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

    /// Installs (or removes) the hook run at the start of every `sync_data`.
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
    /// first `kept_bytes` pending bytes reached the disk (`None`: all of them).
    pub fn crash(&self, kept_bytes: Option<u64>) -> SimStorage {
        let st = self.state.lock();
        let mut files: Vec<SimInode> = st
            .files
            .iter()
            .map(|f| SimInode {
                durable: f.durable.clone(),
                current: f.durable.clone(),
            })
            .collect();
        let mut names = st.durable_names.clone();
        let mut budget = kept_bytes.unwrap_or(u64::MAX);
        for op in &st.pending {
            match op {
                Pending::Data { ino, pos, bytes } => {
                    let n = (bytes.len() as u64).min(budget) as usize;
                    write_into(&mut files[*ino].current, *pos, &bytes[..n]);
                    budget -= n as u64;
                    if n < bytes.len() {
                        break;
                    }
                }
                Pending::SetLen { ino, len } => files[*ino].current.resize(*len as usize, 0),
                Pending::Name { path, ino: Some(i) } => {
                    names.insert(path.clone(), *i);
                }
                Pending::Name { path, ino: None } => {
                    names.remove(path);
                }
            }
        }
        for f in &mut files {
            f.durable = f.current.clone();
        }
        let state = State {
            files,
            names: names.clone(),
            durable_names: names,
            ..State::default()
        };
        SimStorage {
            state: Arc::new(Mutex::new(state)),
            sync_hook: Arc::default(),
        }
    }

    /// Flips bits of one byte in a file, durably, as bit rot would.
    pub fn corrupt_byte(&self, path: &Path, pos: u64) {
        let mut st = self.state.lock();
        let ino = *st.names.get(path).expect("corrupt_byte: no such file");
        let f = &mut st.files[ino];
        for buf in [&mut f.durable, &mut f.current] {
            if let Some(b) = buf.get_mut(pos as usize) {
                *b ^= 0x5a;
            }
        }
    }

    /// The current bytes of a file (test inspection).
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let st = self.state.lock();
        st.names.get(path).map(|&ino| st.files[ino].current.clone())
    }
}

fn write_into(buf: &mut Vec<u8>, pos: u64, bytes: &[u8]) {
    let end = pos as usize + bytes.len();
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[pos as usize..end].copy_from_slice(bytes);
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
}

impl Storage for SimStorage {
    fn create_dir_all(&self, _dir: &Path) -> io::Result<()> {
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let st = self.state.lock();
        Ok(st
            .names
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect())
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn StorageFile>> {
        let mut st = self.state.lock();
        let ino = match st.names.get(path) {
            Some(&ino) => ino,
            None if create => {
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
        self.state.lock().names.contains_key(path)
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
        let in_dir = |p: &Path| p.parent() == Some(dir);
        st.durable_names.retain(|p, _| !in_dir(p));
        let current: Vec<(PathBuf, Ino)> = st
            .names
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        st.durable_names.extend(current);
        st.pending
            .retain(|op| !matches!(op, Pending::Name { path, .. } if in_dir(path)));
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
        let data = &st.files[self.ino].current;
        if pos as usize >= data.len() {
            return Ok(0);
        }
        let n = buf.len().min(data.len() - pos as usize);
        buf[..n].copy_from_slice(&data[pos as usize..pos as usize + n]);
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
        write_into(&mut st.files[self.ino].current, pos, &buf[..n]);
        st.pending.push(Pending::Data {
            ino: self.ino,
            pos,
            bytes: buf[..n].to_vec(),
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
        if let Some(i) = st.faults.iter().position(|f| *f == SimFault::SyncFailsOnce) {
            st.faults.remove(i);
            // Linux marks the failed pages clean: the data is gone from the
            // page cache's point of view but never reached the disk.
            st.pending.retain(|op| !matches!(op, Pending::Data { ino: i, .. } | Pending::SetLen { ino: i, .. } if *i == ino));
            let durable = st.files[ino].durable.clone();
            st.files[ino].current = durable;
            return Err(os_err(libc::EIO));
        }
        let current = st.files[ino].current.clone();
        st.files[ino].durable = current;
        st.pending.retain(|op| !matches!(op, Pending::Data { ino: i, .. } | Pending::SetLen { ino: i, .. } if *i == ino));
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
        st.files[self.ino].current.resize(len as usize, 0);
        st.pending.push(Pending::SetLen { ino: self.ino, len });
        Ok(())
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        if self.len()? < len {
            self.set_len(len)?;
        }
        Ok(())
    }

    fn map(&self, len: u64) -> io::Result<Mapping> {
        let st = self.storage.state.lock();
        let data = &st.files[self.ino].current;
        let n = (len as usize).min(data.len());
        Ok(Mapping::Owned(Arc::from(&data[..n])))
    }
}
