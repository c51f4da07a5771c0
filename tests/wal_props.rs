//! Property tests: the log against an in-memory model (a Vec of payloads),
//! through random appends, bursts, reads, clean reopens and crash reopens.
mod wal_common;
use orderly::storage::SimStorage;
use orderly::wal::{LogConfig, Offset};
use proptest::prelude::*;
use wal_common::*;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    Burst(Vec<usize>),
    Read(usize),
    Reopen,
    /// Power loss with the writer idle: only unsynced index bytes are pending.
    Crash(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(any::<u8>(), 0..3000).prop_map(Op::Append),
        2 => prop::collection::vec(1usize..2500, 1..12).prop_map(Op::Burst),
        3 => any::<usize>().prop_map(Op::Read),
        1 => Just(Op::Reopen),
        1 => any::<u16>().prop_map(Op::Crash),
    ]
}

/// 0: files grow; 1: fallocated; 2: zero-filled spares (production).
fn config(space: u8) -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        preallocate: space > 0,
        prepare_segments: space == 2,
        checkpoint_interval_bytes: 8 * 1024,
        ..LogConfig::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn what_is_appended_is_what_is_read(ops in prop::collection::vec(op(), 1..60), prealloc in 0u8..3) {
        let mut sim = SimStorage::new();
        let mut log = open_sim(&sim, config(prealloc));
        let mut model: Vec<Vec<u8>> = Vec::new();
        for op in ops {
            match op {
                Op::Append(p) => {
                    let a = log.append(&[], &p).expect("append");
                    prop_assert_eq!(a.offset, Offset(model.len() as u64));
                    model.push(p);
                }
                Op::Burst(lens) => {
                    let start = model.len() as u64;
                    let items: Vec<(u64, usize)> = lens.iter().enumerate().map(|(k, &l)| (start + k as u64, l)).collect();
                    for d in append_burst(&log, &items) {
                        prop_assert_eq!(d.result.expect("append").offset, Offset(start + d.tag));
                    }
                    model.extend(items.iter().map(|&(i, l)| payload(i, l)));
                }
                Op::Read(i) if !model.is_empty() => {
                    let i = i % model.len();
                    prop_assert_eq!(&log.read(Offset(i as u64)).expect("read").payload, &model[i]);
                }
                Op::Read(_) => prop_assert!(log.read(Offset(0)).is_err()),
                Op::Reopen => {
                    drop(log);
                    log = open_sim(&sim, config(prealloc));
                }
                Op::Crash(k) => {
                    drop(log);
                    let pending = sim.pending_bytes();
                    sim = sim.crash(Some(u64::from(k) % (pending + 1)));
                    log = open_sim(&sim, config(prealloc));
                }
            }
            prop_assert_eq!(log.end_offset(), Offset(model.len() as u64));
        }
        let all = read_all(&log);
        prop_assert_eq!(all.len(), model.len());
        for (k, (off, p)) in all.iter().enumerate() {
            prop_assert_eq!(*off, Offset(k as u64));
            prop_assert_eq!(p, &model[k]);
        }
    }
}
