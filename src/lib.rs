//! Orderly: a single-node, append-only log broker for HL7 v2 messages.
//!
//! Clinical systems send HL7 v2 over MLLP; Orderly makes each message durable
//! (fdatasync) before it answers with a positive ACK, then delivers it in order
//! to every downstream. See `docs/ARCHITECTURE.md` for the codemap.
pub mod audit;
pub mod check;
pub mod client;
pub mod config;
pub mod constants;
pub mod control;
pub mod cursor;
pub mod delivery;
pub mod hl7;
pub mod index;
pub mod layout;
pub mod metrics;
pub mod mllp;
pub mod report;
pub mod sched;
pub mod server;
pub mod storage;
pub mod timearg;
pub mod wal;
