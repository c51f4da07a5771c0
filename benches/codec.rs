//! Codec benchmarks over the shared corpus (`../shared/corpus`, every file
//! the manifest marks `accept`): MLLP framing, the header-only path, full
//! parse with field access, and ACK building and parsing. Each operation is
//! measured twice, once with byte throughput (MB/s) and once with element
//! throughput (messages/s). `baseline/count_cr` (a plain byte count over the
//! same bytes) is the in-run reference the codec numbers are compared with.
//!
//! Run: `cargo bench --bench codec`.

use std::hint::black_box;
use std::path::PathBuf;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion, Throughput};
use orderly::hl7::ack::{build_ack, parse_ack, AckKind, AckMode, Hl7Timestamp};
use orderly::hl7::{parse_header, FieldPath, Message};
use orderly::mllp::{encode_frame, Decoded, FrameDecoder, FRAME_BYTES_MAX_DEFAULT};

fn corpus() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/corpus");
    let manifest =
        std::fs::read_to_string(dir.join("MANIFEST.tsv")).expect("shared corpus manifest");
    manifest
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, rest)| rest.split('\t').nth(2) == Some("accept"))
        .map(|(file, _)| std::fs::read(dir.join(file)).expect("corpus file"))
        .collect()
}

/// Runs `f` once per throughput unit so both MB/s and messages/s are reported.
fn both(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    bytes: u64,
    messages: u64,
    mut f: impl FnMut(),
) {
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function(format!("{name}/bytes"), |b| b.iter(&mut f));
    group.throughput(Throughput::Elements(messages));
    group.bench_function(format!("{name}/messages"), |b| b.iter(&mut f));
}

fn codec(c: &mut Criterion) {
    let messages = corpus();
    let total: u64 = messages.iter().map(|m| m.len() as u64).sum();
    let count = messages.len() as u64;
    let mut group = c.benchmark_group("codec");
    group
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);

    both(&mut group, "baseline/count_cr", total, count, || {
        black_box(
            messages
                .iter()
                .map(|m| m.iter().filter(|&&b| b == b'\r').count())
                .sum::<usize>(),
        );
    });

    let mut stream = Vec::new();
    for m in &messages {
        encode_frame(m, &mut stream);
    }
    both(&mut group, "framer/decode", total, count, || {
        let mut decoder = FrameDecoder::new(FRAME_BYTES_MAX_DEFAULT);
        let mut frames = 0;
        while let Decoded::Frame(range) = decoder.decode(black_box(&stream)) {
            frames += range.len();
        }
        black_box(frames);
    });

    both(&mut group, "header/parse_header", total, count, || {
        for m in &messages {
            black_box(
                parse_header(black_box(m))
                    .map(|h| h.control_id().len())
                    .unwrap_or(0),
            );
        }
    });

    let paths: Vec<FieldPath> = ["MSH-9.2", "PID-3.1", "PID-5", "PV1-3.1", "OBX[1]-5"]
        .iter()
        .map(|p| FieldPath::parse(p).expect("path"))
        .collect();
    let mut decoded = Vec::new();
    both(
        &mut group,
        "parse/full_with_field_access",
        total,
        count,
        || {
            for m in &messages {
                let Ok(message) = Message::parse(black_box(m)) else {
                    continue;
                };
                for path in &paths {
                    if let Some(value) = message.get(path) {
                        decoded.clear();
                        value.decode_into(&mut decoded);
                        black_box(decoded.len());
                    }
                }
            }
        },
    );

    let headers: Vec<_> = messages
        .iter()
        .filter_map(|m| parse_header(m).ok())
        .collect();
    let now = Hl7Timestamp::from_unix_seconds(1_700_000_000);
    let mut ack = Vec::with_capacity(1024);
    let mut ack_bytes = 0u64;
    for h in &headers {
        ack.clear();
        build_ack(
            Some(h),
            AckMode::Original,
            AckKind::Accept,
            None,
            b"ACK-1",
            now,
            &mut ack,
        );
        ack_bytes += ack.len() as u64;
    }
    both(
        &mut group,
        "ack/build",
        ack_bytes,
        headers.len() as u64,
        || {
            for h in &headers {
                ack.clear();
                build_ack(
                    Some(black_box(h)),
                    AckMode::Original,
                    AckKind::Accept,
                    None,
                    b"ACK-1",
                    now,
                    &mut ack,
                );
                black_box(ack.len());
            }
        },
    );

    let acks: Vec<Vec<u8>> = headers
        .iter()
        .map(|h| {
            let mut out = Vec::new();
            build_ack(
                Some(h),
                AckMode::Original,
                AckKind::Accept,
                None,
                b"ACK-1",
                now,
                &mut out,
            );
            out
        })
        .collect();
    both(
        &mut group,
        "ack/parse",
        ack_bytes,
        acks.len() as u64,
        || {
            for a in &acks {
                black_box(
                    parse_ack(black_box(a))
                        .map(|p| p.control_id.len())
                        .unwrap_or(0),
                );
            }
        },
    );
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
