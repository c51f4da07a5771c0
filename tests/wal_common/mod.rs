//! Helpers shared by the WAL tests.
#![allow(dead_code)]
use crossbeam_channel::Sender;
use orderly::storage::SimStorage;
use orderly::wal::meta::{MetaBuilder, MetaKey};
use orderly::wal::{AppendDone, AppendRequest, Log, LogConfig, Offset};
use std::path::Path;
use std::sync::Arc;

pub const DIR: &str = "/sim/queues/q";

/// Small segments so tests roll often. `preallocate`: space ahead of the
/// tail, as in production (zero-filled spare segments, fallocate for the
/// rest); otherwise files grow with every write.
pub fn small_config(preallocate: bool) -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        preallocate,
        prepare_segments: preallocate,
        checkpoint_interval_bytes: 16 * 1024,
        ..LogConfig::default()
    }
}

pub fn open_sim(sim: &SimStorage, config: LogConfig) -> Log {
    Log::open_with(Arc::new(sim.clone()), Path::new(DIR), config).expect("open")
}

/// A distinguishable payload of `len` bytes for record `i`.
pub fn payload(i: u64, len: usize) -> Vec<u8> {
    let head = format!("MSH|^~\\&|T|F|R|F|20260101||ORU^R01|C{i}|P|2.5\r");
    let mut p = head.into_bytes();
    while p.len() < len {
        p.push(b'a' + (p.len() % 26) as u8);
    }
    p.truncate(len.max(1));
    p
}

pub fn meta(i: u64) -> Vec<u8> {
    let mut m = MetaBuilder::new();
    m.push(MetaKey::ControlId, format!("C{i}").as_bytes());
    m.finish()
}

/// A request for record `i` (payload of `len` bytes) tagged `tag`.
pub fn request(i: u64, len: usize, tag: u64, reply: &Sender<AppendDone>) -> AppendRequest {
    AppendRequest {
        payload: payload(i, len),
        meta: meta(i),
        tag,
        reply: reply.clone(),
        notify: None,
    }
}

/// Submits `items` as one burst (they may share group commits) and waits for all.
pub fn append_burst(log: &Log, items: &[(u64, usize)]) -> Vec<AppendDone> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let appender = log.appender();
    for (tag, &(i, len)) in items.iter().enumerate() {
        let req = request(i, len, tag as u64, &tx);
        assert!(appender.submit(req).is_ok(), "log open");
    }
    let mut done: Vec<AppendDone> = (0..items.len())
        .map(|_| rx.recv().expect("completion"))
        .collect();
    done.sort_by_key(|d| d.tag);
    done
}

/// Every record from the start, as (offset, payload).
pub fn read_all(log: &Log) -> Vec<(Offset, Vec<u8>)> {
    let mut r = log.reader(log.start_offset());
    let mut out = Vec::new();
    while let Some(rec) = r.next().expect("read") {
        out.push((rec.offset, rec.payload.to_vec()));
    }
    out
}

/// A storage state and how many appends had completed when it was taken.
pub struct Capture {
    pub storage: SimStorage,
    pub acked: u64,
}

/// Captures `sim` at the start of every sync (the moment unsynced bytes
/// exist), with the value of `acked` then. The count is read first: it only
/// grows, so it is a lower bound for the state forked after it (a sync on
/// another thread, the spare's, may run while appends complete).
pub fn capture_every_sync(
    sim: &SimStorage,
    acked: &Arc<std::sync::atomic::AtomicU64>,
) -> Arc<parking_lot::Mutex<Vec<Capture>>> {
    let caps = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let (a, c) = (acked.clone(), caps.clone());
    sim.set_sync_hook(Some(Arc::new(move |s: &SimStorage| {
        let acked = a.load(std::sync::atomic::Ordering::SeqCst);
        c.lock().push(Capture {
            storage: s.fork(),
            acked,
        });
    })));
    caps
}
