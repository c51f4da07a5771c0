//! Every limit and default of the storage core, in one place, with the reason.
//!
//! Names end in their unit and `_max`/`_min` so related limits line up.
//! Compile-time assertions keep the relations between them honest.

/// Size at which the active segment is sealed and a new one started. Large
/// enough that rolls are rare, small enough that retention frees space in
/// useful steps and recovery of one segment stays bounded.
pub const SEGMENT_BYTES_DEFAULT: u64 = 128 * 1024 * 1024;
/// Smallest configurable segment: a segment must hold its header and at least
/// one maximal record.
pub const SEGMENT_BYTES_MIN: u64 = 64 * 1024;
/// Largest configurable segment: index entries store 32-bit positions.
pub const SEGMENT_BYTES_MAX: u64 = 1024 * 1024 * 1024;
/// Age after which a non-empty active segment is rolled, so time-based
/// retention can free old data even on a quiet queue (7 days).
pub const SEGMENT_AGE_MS_DEFAULT: u64 = 7 * 24 * 3600 * 1000;

/// Largest payload one record may carry, and the highest `max_frame_bytes`
/// a listener may set (PDFs and images as base64 in OBX-5 exceed 16 MiB in
/// real feeds). A record larger than `segment_bytes` gets a segment of its
/// own.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 1024 * 1024 * 1024;
/// Largest typed metadata area of one record (listener, peer, MSH fields).
pub const RECORD_META_BYTES_MAX: usize = 8 * 1024;
/// Largest value of one metadata field; longer header fields are truncated
/// by the producer (they are routing hints, the payload stays intact).
pub const META_FIELD_BYTES_MAX: usize = 1024;

/// One offset-index entry per this many bytes of log: a lookup scans at
/// most this much (plus one record) after the index hit.
pub const INDEX_INTERVAL_BYTES: u32 = 4096;

/// Records written in one group commit; bounds fsync latency under load and
/// the memory a batch holds.
pub const COMMIT_BATCH_RECORDS_MAX: usize = 4096;
/// Bytes written in one group commit (soft: a single record may exceed it).
pub const COMMIT_BATCH_BYTES_MAX: usize = 16 * 1024 * 1024;
/// Append requests that may wait for the writer; beyond this, producers block
/// (the server stops reading sockets instead of buffering without bound).
pub const APPEND_QUEUE_DEPTH_MAX: usize = 8192;

/// Free space a zero-filled spare segment must leave on its file system:
/// it is only an optimisation, and must never take the room cursor commits,
/// dead letters, indexes and checkpoints need.
pub const SPARE_FREE_SPACE_RESERVE_BYTES: u64 = 1024 * 1024 * 1024;
/// A spare segment is prepared after a roll only if the segment just sealed
/// averaged fewer bytes per fdatasync than this, or at least
/// [`SPARE_BYTES_PER_FLUSH_LARGE`]. Zero-filling writes every byte twice,
/// which pays only where an fdatasync into fallocated blocks is much dearer
/// than into written ones. Measured on the reference machine: small flushes
/// (one lockstep sender, 1.5 KB: +15 % throughput, the journal commit is a
/// large part of each flush) and very large ones (384 KiB bursts: 1.7-3.3x, the
/// extent conversion grows with the flush). In between (32 senders, ~35 KiB
/// per flush) it gained nothing and, with delivery running on 2 cores, cost
/// 8 % throughput.
pub const SPARE_BYTES_PER_FLUSH_MAX: u64 = 16 * 1024;
/// See [`SPARE_BYTES_PER_FLUSH_MAX`].
pub const SPARE_BYTES_PER_FLUSH_LARGE: u64 = 128 * 1024;
/// Bytes appended between recovery checkpoints: recovery scans at most this
/// much (plus the unflushed tail) of the active segment.
pub const CHECKPOINT_INTERVAL_BYTES: u64 = 8 * 1024 * 1024;

/// Sealed segments a log keeps open for readers by default (one file
/// descriptor each); others are opened when read and the least recently
/// used closed, so descriptors stay bounded however many segments a log has.
pub const OPEN_SEGMENTS_MAX_DEFAULT: usize = 32;
/// Upper bound on `open_segments_max`.
pub const OPEN_SEGMENTS_MAX: usize = 4096;

/// Bytes of a truncated torn tail copied into `quarantine/` for forensics;
/// beyond this the tail is only counted and logged.
pub const QUARANTINE_TAIL_BYTES_MAX: u64 = 64 * 1024 * 1024;

const _: () = assert!(SEGMENT_BYTES_MIN < SEGMENT_BYTES_DEFAULT);
const _: () = assert!((RECORD_PAYLOAD_BYTES_MAX as u64) < u32::MAX as u64);
const _: () = assert!(COMMIT_BATCH_RECORDS_MAX.is_power_of_two());
const _: () = assert!(CHECKPOINT_INTERVAL_BYTES < SEGMENT_BYTES_DEFAULT);
// Index entries store positions as u32 relative to the segment start.
const _: () = assert!(SEGMENT_BYTES_MAX + 2 * (RECORD_PAYLOAD_BYTES_MAX as u64) < u32::MAX as u64);
const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_MAX);

/// Connections one listener accepts by default; more are refused.
pub const LISTENER_CONNECTIONS_DEFAULT: usize = 1024;
/// Upper bound on `max_connections` (file descriptors are finite).
pub const LISTENER_CONNECTIONS_MAX: usize = 65_536;
/// Seconds without a byte after which a connection is closed.
pub const IDLE_TIMEOUT_S_DEFAULT: u64 = 600;
/// Seconds a frame may take from its first byte to its last (slow-drip peers).
pub const FRAME_TIMEOUT_S_DEFAULT: u64 = 60;
/// Milliseconds a `0x1C` that is the last byte received waits for a next
/// byte before it counts as the end of its frame (senders that omit the
/// trailing CR and wait for their ACK). A longer wait costs such senders
/// latency; a shorter one risks cutting a payload whose free text holds a
/// `0x1C` at a read boundary.
pub const FRAME_END_PAUSE_MS_DEFAULT: u64 = 20;
pub const FRAME_END_PAUSE_MS_MAX: u64 = 2000;
/// Appends one connection may have waiting for their fsync (pipelining).
pub const CONNECTION_INFLIGHT_DEFAULT: usize = 64;
pub const CONNECTION_INFLIGHT_MAX: usize = 4096;
/// ACK bytes one connection may have queued before it stops being read
/// (a peer that sends but never reads).
pub const CONNECTION_WRITE_BUFFER_BYTES_MAX: usize = 1024 * 1024;
/// Bytes read from a socket per read call.
pub const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Bytes a connection may buffer without drawing on the global read
/// budget (a lockstep message or a few pipelined ones never wait for it).
pub const READ_BUFFER_ALLOWANCE_BYTES: usize = 128 * 1024;
/// Default of `read_buffer_budget_bytes`: all connections' read buffers
/// together, beyond their allowance. One connection at a time may exceed it
/// (the overdraft) so a frame larger than what is left always completes.
pub const READ_BUFFER_BUDGET_BYTES_DEFAULT: usize = 256 * 1024 * 1024;
pub const READ_BUFFER_BUDGET_BYTES_MIN: usize = 1024 * 1024;
/// A buffer above this capacity is shrunk once it holds less than a
/// quarter of it, so one large frame does not pin its memory.
pub const BUFFER_SHRINK_ABOVE_BYTES: usize = 256 * 1024;
/// Payload bytes waiting for the WAL across all connections; above this the
/// server stops reading sockets (backpressure instead of unbounded buffering).
pub const INFLIGHT_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Seconds a graceful shutdown waits for in-flight appends and ACK writes.
pub const SHUTDOWN_GRACE_S: u64 = 10;

/// Lanes of a partitioned destination by default, and at most.
pub const DESTINATION_LANES_DEFAULT: u16 = 8;
pub const DESTINATION_LANES_MAX: u16 = 256;
/// Upper bound on `retry.max_attempts`.
pub const RETRY_ATTEMPTS_MAX: u32 = 1_000_000;
/// Deliveries a lane may complete ahead of its durably committed cursor.
/// After a crash at most this many per lane (plus the one in flight) are
/// delivered again; it lets cursor fsyncs overlap with sending, and must
/// cover what a fast lane delivers during one sync interval plus one fsync.
pub const CURSOR_LEAD_MAX: u64 = 256;
/// Default least time between two cursor fsyncs of one destination. Each
/// cursor fsync is a disk flush competing with the WAL's; pacing them keeps
/// a fast lane from doubling the flush rate, at the price of (bounded)
/// extra duplicates after a crash.
pub const CURSOR_SYNC_INTERVAL_MS_DEFAULT: u64 = 2;
/// Upper bound on `cursor_sync_interval_ms`.
pub const CURSOR_SYNC_INTERVAL_MS_MAX: u64 = 1000;
/// Longest error text kept in a blocked-head state or a dead-letter record.
pub const ERROR_TEXT_BYTES_MAX: usize = 512;
/// Slice of a blocking wait, so stop and operator commands are seen promptly.
pub const DELIVERY_POLL_MS: u64 = 100;

// Idempotency (see server/dedupe.rs).
/// Fields in one `idempotency_key`.
pub const IDEMPOTENCY_KEY_FIELDS_MAX: usize = 16;
/// Longest `dedupe_window_s`: a year.
pub const DEDUPE_WINDOW_S_MAX: u64 = 366 * 24 * 3600;
/// Largest `dedupe_keys_max` (about 2.3 GB of index at 17 bytes a bucket).
pub const DEDUPE_KEYS_MAX_LIMIT: usize = 100_000_000;
/// Bytes of one stored idempotency key (the joined field values); a longer
/// key is stored cut and compared by its full hash (see server/ingest.rs).
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 1024;
