//! Storage faults under the real server (in process, on simulated storage):
//! disk full and fsync failure answer AE/CE, never AA, and the broker stays up.
mod server_common;
use orderly::config::Config;
use orderly::hl7::ack::AckCode;
use orderly::server::Server;
use orderly::storage::{SimFault, SimStorage};
use server_common::*;
use std::sync::Arc;

fn start(
    sim: &SimStorage,
    dir: &std::path::Path,
    extra: &str,
) -> (
    std::net::SocketAddr,
    orderly::server::ShutdownHandle,
    std::thread::JoinHandle<()>,
) {
    // Files that grow with every write (no preallocation, no zero-filled
    // spare), so a full disk fails the append itself, not only a roll.
    let text = format!("data_dir = {:?}\n[wal]\npreallocate = false\nzero_fill_segments = false\nsegment_bytes = 65536\n{extra}\n[[listener]]\nname = \"lab\"\nlisten = \"127.0.0.1:0\"\nqueue = \"lab\"\n", dir.display().to_string());
    let config = Config::parse(&text, "test.toml").expect("config");
    let server = Server::start_with(&config, Arc::new(sim.clone())).expect("start");
    let addr = server.bound()[0].1;
    let handle = server.shutdown_handle();
    let join = std::thread::spawn(move || server.run().expect("run"));
    (addr, handle, join)
}

#[test]
fn disk_full_answers_ae_and_service_resumes_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new();
    let (addr, stop, join) = start(&sim, dir.path(), "");
    let mut c = Client::connect(addr);
    assert_eq!(
        c.roundtrip(&oru("before", 500)).0,
        AckCode::ApplicationAccept
    );
    sim.inject(SimFault::NoSpaceAfter(0));
    let (code, msa2) = c.roundtrip(&oru("full", 500));
    assert_eq!(
        (code, msa2.as_str()),
        (AckCode::ApplicationError, "full"),
        "disk full is an error ACK, not AA"
    );
    let mut other = Client::connect(addr);
    assert_eq!(
        other.roundtrip(&oru("full2", 500)).0,
        AckCode::ApplicationError,
        "broker stays up, refuses work"
    );
    sim.clear_faults();
    assert_eq!(
        c.roundtrip(&oru("after", 500)).0,
        AckCode::ApplicationAccept,
        "healthy again"
    );
    stop.shutdown();
    join.join().unwrap();
    let log = orderly::wal::Log::open_with(
        Arc::new(sim.crash(Some(0))),
        &dir.path().join("queues/lab"),
        orderly::wal::LogConfig {
            preallocate: false,
            prepare_segments: false,
            segment_bytes: 65536,
            ..Default::default()
        },
    )
    .unwrap();
    let ids: Vec<Vec<u8>> = (0..log.end_offset().0)
        .map(|i| log.read(orderly::wal::Offset(i)).unwrap().payload)
        .collect();
    assert_eq!(
        ids,
        vec![oru("before", 500), oru("after", 500)],
        "only acknowledged messages were stored"
    );
}

#[test]
fn fsync_failure_answers_ae_for_that_and_every_later_message() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new();
    let (addr, stop, join) = start(&sim, dir.path(), "");
    let mut c = Client::connect(addr);
    assert_eq!(c.roundtrip(&oru("ok", 200)).0, AckCode::ApplicationAccept);
    sim.inject(SimFault::SyncFailsOnce);
    assert_eq!(c.roundtrip(&oru("lost", 200)).0, AckCode::ApplicationError);
    for i in 0..3 {
        let (code, _) = Client::connect(addr).roundtrip(&oru(&format!("later{i}"), 200));
        assert_eq!(
            code,
            AckCode::ApplicationError,
            "no positive ACK after a failed fsync until restart"
        );
    }
    stop.shutdown();
    join.join().unwrap();
}

#[test]
fn enhanced_mode_senders_get_ce_on_storage_failure() {
    let dir = tempfile::tempdir().unwrap();
    let sim = SimStorage::new();
    let (addr, stop, join) = start(&sim, dir.path(), "");
    let msg = b"MSH|^~\\&|LAB|HOSP|EHR|HOSP|20261123||ORU^R01|E1|P|2.5|||AL|NE\rPID|1\r";
    let mut c = Client::connect(addr);
    assert_eq!(c.roundtrip(msg).0, AckCode::CommitAccept);
    sim.inject(SimFault::WriteFails);
    assert_eq!(c.roundtrip(msg).0, AckCode::CommitError);
    stop.shutdown();
    join.join().unwrap();
}
