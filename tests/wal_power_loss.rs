//! Power loss, not just kill -9: at every fsync of a workload the storage
//! is captured, then power is cut with each unsynced 512-byte sector reaching
//! the disk or not, in any order (`SimStorage::power_loss`). Recovery must
//! keep every acknowledged record intact at its offset, never serve a wrong
//! record, and never lose what it published: power is cut again at every
//! sync recovery itself makes, and once it finished.
mod wal_common;
use orderly::storage::SimStorage;
use orderly::wal::{Log, LogConfig, Offset, WalError};
use parking_lot::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use wal_common::*;

fn len_of(i: u64) -> usize {
    200 + ((i * 7919) % 1900) as usize
}

fn config(zero_filled: bool) -> LogConfig {
    LogConfig {
        segment_bytes: 64 * 1024,
        preallocate: !zero_filled,
        prepare_segments: zero_filled,
        checkpoint_interval_bytes: 8 * 1024,
        ..LogConfig::default()
    }
}

/// Bursts of appends sharing group commits, captured at every sync.
fn workload(config: &LogConfig, bursts: u64) -> Vec<Capture> {
    let sim = SimStorage::new();
    let log = open_sim(&sim, config.clone());
    let acked = Arc::new(AtomicU64::new(0));
    let caps = capture_every_sync(&sim, &acked);
    let mut next = 0;
    for b in 0..bursts {
        let n = 1 + b % 5;
        let items: Vec<(u64, usize)> = (next..next + n).map(|i| (i, len_of(i))).collect();
        for d in append_burst(&log, &items) {
            d.result.expect("append");
        }
        next += n;
        acked.store(next, Ordering::SeqCst);
    }
    sim.set_sync_hook(None);
    drop(log);
    let taken = std::mem::take(&mut *caps.lock());
    taken
}

/// What a recovered log serves: per offset, intact (checked against the
/// workload's payload) or a hole.
fn contents(log: &Log, what: &str) -> Vec<Option<()>> {
    (0..log.end_offset().0)
        .map(|o| match log.read(Offset(o)) {
            Ok(r) => {
                assert_eq!(
                    r.payload,
                    payload(o, len_of(o)),
                    "{what}: offset {o} holds another record"
                );
                Some(())
            }
            Err(WalError::Corrupt { .. } | WalError::Unreadable { .. }) => None,
            Err(e) => panic!("{what}: offset {o}: {e}"),
        })
        .collect()
}

fn check_acked(served: &[Option<()>], acked: u64, what: &str) {
    assert!(
        served.len() as u64 >= acked,
        "{what}: {acked} acknowledged, {} recovered",
        served.len()
    );
    if let Some(k) = served[..acked as usize].iter().position(Option::is_none) {
        panic!("{what}: acknowledged record {k} is damaged");
    }
}

/// Recovers `image`, cutting power at every sync recovery makes (a second
/// crash during recovery) and once it is done; checks each outcome.
fn recover_and_crash_again(image: &SimStorage, acked: u64, config: &LogConfig, what: &str) {
    let during = Arc::new(Mutex::new(Vec::new()));
    let d = during.clone();
    image.set_sync_hook(Some(Arc::new(move |s: &SimStorage| {
        d.lock().push(s.fork())
    })));
    let log = Log::open_with(
        Arc::new(image.clone()),
        std::path::Path::new(DIR),
        config.clone(),
    )
    .unwrap_or_else(|e| panic!("{what}: recovery failed: {e}"));
    image.set_sync_hook(None);
    let published = contents(&log, what);
    check_acked(&published, acked, what);
    assert_eq!(
        log.append(
            &meta(999_999),
            &payload(published.len() as u64, len_of(published.len() as u64))
        )
        .expect("a recovered log takes appends")
        .offset,
        Offset(published.len() as u64),
        "{what}: appends continue after the recovered end"
    );
    drop(log);
    // What recovery published must survive the next power loss as it was.
    let after = open_sim(&image.synced_only(), config.clone());
    let kept = contents(&after, what);
    assert!(
        kept.len() > published.len(),
        "{what}: published records lost after recovery"
    );
    assert_eq!(
        &kept[..published.len()],
        &published[..],
        "{what}: published records changed"
    );
    for (k, mid) in during.lock().iter().enumerate() {
        let again = open_sim(&mid.power_loss(k as u64), config.clone());
        check_acked(
            &contents(&again, what),
            acked,
            &format!("{what}, power lost in recovery sync {k}"),
        );
    }
}

fn power_loss_at_every_sync(zero_filled: bool) {
    let config = config(zero_filled);
    let captures = workload(&config, 40);
    assert!(captures.len() > 40);
    for (ci, cap) in captures.iter().enumerate() {
        for seed in 0..4u64 {
            let image = cap.storage.power_loss(seed * 1000 + ci as u64);
            recover_and_crash_again(
                &image,
                cap.acked,
                &config,
                &format!("capture {ci} seed {seed}"),
            );
        }
    }
}

#[test]
fn power_loss_at_every_sync_keeps_every_acknowledged_record_fallocated() {
    power_loss_at_every_sync(false);
}

#[test]
fn power_loss_at_every_sync_keeps_every_acknowledged_record_zero_filled() {
    power_loss_at_every_sync(true);
}

/// A flipped bit in synced data (bit rot) costs that record only, wherever
/// it lands: before or after the checkpoint, in a sealed or the active segment.
#[test]
fn a_latent_bit_flip_costs_only_the_record_it_hits() {
    let config = config(false);
    let sim = SimStorage::new();
    let log = open_sim(&sim, config.clone());
    for i in 0..200 {
        log.append(&meta(i), &payload(i, len_of(i))).unwrap();
    }
    let image = sim.crash(None);
    drop(log);
    let segs: Vec<_> = {
        use orderly::storage::Storage;
        let mut v: Vec<_> = image
            .list(std::path::Path::new(DIR))
            .unwrap()
            .into_iter()
            .filter(|n| n.ends_with(".log") && n.as_bytes()[0].is_ascii_digit())
            .collect();
        v.sort();
        v
    };
    for (si, name) in segs.iter().enumerate() {
        let path = std::path::Path::new(DIR).join(name);
        let len = image.contents(&path).unwrap().len() as u64;
        for step in 1..6u64 {
            let one = image.fork();
            let at = 64 + (len - 64) * step / 7;
            one.corrupt_byte(&path, at);
            let log = open_sim(&one, config.clone());
            let served = contents(&log, &format!("segment {si} byte {at}"));
            let holes = served.iter().filter(|s| s.is_none()).count();
            assert!(
                holes <= 1,
                "segment {si} byte {at}: {holes} records lost to one flipped byte"
            );
            assert!(
                served.len() >= 199,
                "segment {si} byte {at}: end {}",
                served.len()
            );
        }
    }
}
