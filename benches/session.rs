//! The ingest hot path without sockets or disk: an MLLP frame goes through
//! the sans-IO session (framing, header, idempotency key, SHA-256, record
//! metadata, append request), its append completes, and the ACK is built.
//! This is the broker's own CPU per message on the event loop, apart from
//! the kernel's socket work, so changes to it can be measured without the
//! load tool's noise. Each case also prints heap allocations per message
//! (a counting allocator wraps the system one in this binary only).
//!
//!   cargo bench --bench session
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use orderly::config::{Config, KeyConflict};
use orderly::hl7::FieldPath;
use orderly::metrics::Metrics;
use orderly::server::dedupe::{DedupeIndex, Original, Originals, QueueDedupe};
use orderly::server::ingest::AckIds;
use orderly::server::session::{Ingest, Session, Step};
use orderly::wal::Offset;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

struct Counting;
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Messages per measured pass: every one has a new control id, so each
/// takes the "new key" path, as under the load tool.
const PASS: usize = 20_000;

/// The load tool's message shape: an ORU^R01 of 1,500 bytes.
fn message(i: usize) -> Vec<u8> {
    let mut m = format!(
        "MSH|^~\\&|LOADGEN|LAB|ORDERLY|HOSP|20261123090000||ORU^R01^ORU_R01|B{i:08}|P|2.5.1\r\
         PID|1||MRN{}^^^HOSP^MR||DOE^JANE||19700101|F\rOBR|1||LAB1|CBC\rOBX|1|TX|NOTE||",
        i % 1000
    )
    .into_bytes();
    while m.len() < 1499 {
        m.push(b'a' + (m.len() % 26) as u8);
    }
    m.push(b'\r');
    m
}

struct NoOriginals;
impl Originals for NoOriginals {
    fn original(&self, _: Offset) -> Option<Original> {
        None
    }
}

fn dedupe(on: bool) -> Option<QueueDedupe> {
    on.then(|| QueueDedupe {
        index: DedupeIndex::new(u64::MAX, 10_000_000),
        paths: ["MSH-3", "MSH-4", "MSH-10"]
            .iter()
            .map(|p| FieldPath::parse(p).expect("a valid path"))
            .collect(),
        on_conflict: KeyConflict::Reject,
        originals: Box::new(NoOriginals),
        log: None,
    })
}

/// Runs `frames` through one session as the event loop does (one frame per
/// read, its append completed before the next frame arrives, the answer
/// written out). Returns the time taken.
fn pass(config: &Config, frames: &[Vec<u8>], dedupe_on: bool) -> Duration {
    let metrics = Metrics::default();
    let mut ids = AckIds::new();
    let mut dedupe = dedupe(dedupe_on);
    let mut session = Session::new(config.listeners[0].max_frame_bytes);
    let mut asked: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut meta_back: Vec<u8> = Vec::new();
    let started = Instant::now();
    for (offset, frame) in frames.iter().enumerate() {
        let mut ing = Ingest {
            listener: &config.listeners[0],
            peer: "127.0.0.1:40000",
            ids: &mut ids,
            metrics: &metrics,
            now_ms: 1_764_000_000_000,
            refused: None,
            dedupe: dedupe.as_mut(),
        };
        session.rbuf.extend_from_slice(frame);
        let mut append = |p: &[u8], m: Vec<u8>| {
            // The event loop copies the payload into a pooled buffer.
            asked.clear();
            asked.extend_from_slice(p);
            meta_back = m;
        };
        while !matches!(session.step(&mut ing, &mut append), Step::NeedMore) {}
        session.compact();
        session.complete(Ok(Offset(offset as u64)), &asked, &mut ing);
        black_box(&session.out[session.written..]);
        session.written = session.out.len();
        black_box(meta_back.len());
    }
    started.elapsed()
}

fn session(c: &mut Criterion) {
    let config = Config::parse(
        "[[listener]]\nname='l'\nlisten='127.0.0.1:1'\nqueue='q'\n",
        "bench",
    )
    .expect("a valid config");
    let frames: Vec<Vec<u8>> = (0..PASS)
        .map(|i| {
            let mut f = vec![0x0b];
            f.extend_from_slice(&message(i));
            f.extend_from_slice(&[0x1c, 0x0d]);
            f
        })
        .collect();
    let mut group = c.benchmark_group("session");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5))
        .sample_size(20)
        .throughput(Throughput::Elements(PASS as u64));
    for (name, dedupe_on) in [
        ("frame_to_ack/dedupe", true),
        ("frame_to_ack/no_dedupe", false),
    ] {
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        pass(&config, &frames, dedupe_on);
        let per_message = (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / PASS as f64;
        println!("{name}: {per_message:.2} heap allocations per message");
        group.bench_function(name, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| pass(&config, &frames, dedupe_on)).sum())
        });
    }
    group.finish();
}

criterion_group!(benches, session);
criterion_main!(benches);
