//! WAL benchmarks: fsync'd appends of 1.5 KB records in bursts of 1, 16 and
//! 256 (group commit), and reads. Runs on the real file system under
//! `target/bench-wal` (the project's disk). Compare against fio with
//! `tools/bench-wal.sh`, which runs both in one go (see docs/BENCHMARKS.md).
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam_channel::unbounded;
use orderly::wal::{AppendRequest, Log, LogConfig, Offset};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const RECORD_BYTES: usize = 1500;

fn bench_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/bench-wal")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn record() -> Vec<u8> {
    let mut p =
        b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261123090000||ORU^R01|CTRL|P|2.5\rPID|1||12345^^^HOSP^MR\r"
            .to_vec();
    p.resize(RECORD_BYTES, b'x');
    p
}

/// Submits `burst` appends as one unit (one write, one fsync) and waits
/// for all to be durable.
fn append_burst(log: &Log, payload: &[u8], burst: usize) {
    let (tx, rx) = unbounded();
    let reqs = (0..burst)
        .map(|tag| AppendRequest {
            payload: payload.to_vec(),
            meta: Vec::new(),
            tag: tag as u64,
            reply: tx.clone(),
            notify: None,
        })
        .collect();
    assert!(log.appender().submit_batch(reqs).is_ok());
    for _ in 0..burst {
        rx.recv().expect("completion").result.expect("durable");
    }
}

fn appends(c: &mut Criterion) {
    let mut g = c.benchmark_group("wal_append_fsync");
    g.measurement_time(Duration::from_secs(8)).sample_size(20);
    let payload = record();
    for burst in [1usize, 16, 256] {
        let log =
            Log::open(bench_dir(&format!("append-{burst}")), LogConfig::default()).expect("open");
        g.throughput(Throughput::Elements(burst as u64));
        g.bench_with_input(BenchmarkId::from_parameter(burst), &burst, |b, &burst| {
            b.iter(|| append_burst(&log, &payload, burst));
        });
        log.close().expect("close");
    }
    g.finish();
}

/// Bursts of 256 inside a segment that is already zero-filled: the append
/// path when the background spare keeps up (any rate below the fill rate),
/// comparable with fio overwriting a written file. Only the bursts are timed;
/// a fresh log with a 1 GiB zero-filled first segment is opened, untimed,
/// before one would fill up, and reopened without the spare thread so no
/// fill runs during the measurement. The sustained `wal_append_fsync/256`
/// above includes rolls onto segments the spare could not prepare in time.
fn appends_into_zero_filled(c: &mut Criterion) {
    const BURST: usize = 256;
    const SEGMENT: u64 = 1 << 30;
    let config = LogConfig {
        segment_bytes: SEGMENT,
        // Without fallocate only the zero fill makes segment 0 full-length,
        // which the check below relies on.
        preallocate: false,
        ..LogConfig::default()
    };
    let bursts_per_log = (SEGMENT as usize * 9 / 10) / (BURST * (RECORD_BYTES + 64));
    let fresh_log = || {
        let dir = bench_dir("append-zero-filled");
        Log::open(&dir, config.clone())
            .expect("open")
            .close()
            .expect("close");
        let first = std::fs::metadata(dir.join(format!("{:020}.log", 0))).expect("segment 0");
        assert_eq!(
            first.len(),
            SEGMENT,
            "first segment zero-filled (needs SEGMENT + 1 GiB free)"
        );
        // No spare thread during the measurement, but space ahead kept:
        // with neither `prepare_segments` nor `preallocate`, recovery trims
        // the zeros past the end and the bench would time a growing file.
        let no_fill = LogConfig {
            prepare_segments: false,
            preallocate: true,
            ..config.clone()
        };
        let log = Log::open(&dir, no_fill).expect("reopen");
        let kept = std::fs::metadata(dir.join(format!("{:020}.log", 0))).expect("segment 0");
        assert_eq!(kept.len(), SEGMENT, "reopening keeps the zero-filled space");
        log
    };
    let payload = record();
    let mut log = Some(fresh_log());
    let mut used = 0usize;
    let mut g = c.benchmark_group("wal_append_fsync_zero_filled");
    g.measurement_time(Duration::from_secs(4)).sample_size(10);
    g.throughput(Throughput::Elements(BURST as u64));
    g.bench_function(BenchmarkId::from_parameter(BURST), |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                if used == bursts_per_log {
                    log.take().expect("open").close().expect("close");
                    log = Some(fresh_log());
                    used = 0;
                }
                let start = Instant::now();
                append_burst(log.as_ref().expect("open"), &payload, BURST);
                timed += start.elapsed();
                used += 1;
            }
            timed
        })
    });
    g.finish();
    if let Some(l) = log {
        l.close().expect("close");
    }
}

fn reads(c: &mut Criterion) {
    let n = 20_000u64;
    let config = LogConfig {
        fsync: orderly::wal::FsyncMode::Never,
        segment_bytes: 8 * 1024 * 1024,
        ..LogConfig::default()
    };
    let dir = bench_dir("reads");
    {
        let log = Log::open(&dir, config.clone()).expect("open");
        let payload = record();
        for _ in 0..n / 500 {
            append_burst(&log, &payload, 500);
        }
        log.close().expect("close");
    }
    let log = Log::open(&dir, config).expect("reopen");
    let mut g = c.benchmark_group("wal_read");
    g.throughput(Throughput::Elements(n));
    g.bench_function("sequential_zero_copy", |b| {
        b.iter(|| {
            let mut r = log.reader(Offset(0));
            let mut bytes = 0usize;
            while let Some(rec) = r.next().expect("read") {
                bytes += rec.payload.len();
            }
            assert_eq!(bytes, n as usize * RECORD_BYTES);
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("random_by_offset", |b| {
        let mut i = 0u64;
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                i = (i + 7919) % n;
                let mut r = log.reader(Offset(i));
                let rec = r.next().expect("read").expect("present");
                assert_eq!(rec.offset, Offset(i));
            }
            start.elapsed()
        })
    });
    g.finish();
}

criterion_group!(benches, appends, appends_into_zero_filled, reads);
criterion_main!(benches);
