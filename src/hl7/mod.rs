//! HL7 v2 parsing, field paths, escapes, validation, batches, ACK building and
//! parsing.
//!
//! Everything here works on borrowed bytes: a message is parsed where it lies
//! in the connection buffer or the log, values are returned as slices of it,
//! and escape sequences are resolved only when a value is read
//! ([`Value::decoded`]); the stored bytes are never rewritten. The
//! header-only path ([`header::parse_header`]) reads MSH and nothing else and
//! does not allocate.
//!
//! Architecture Invariant: the hl7 module never performs I/O and never panics
//! on any input.

pub mod ack;
pub mod batch;
pub mod delimiters;
pub mod diff;
pub mod escape;
pub mod header;
pub mod message;
pub mod path;
mod segments;
pub mod validate;

pub use batch::{split_batch, Batch, BatchError};
pub use delimiters::Delimiters;
pub use header::{parse_header, HeaderError, MshHeader};
pub use message::{Message, ParseError, Segment, Value};
pub use path::{FieldPath, FieldPathError};
pub use validate::{
    check_header, validate, validate_for, Acceptance, ValidationError, ValidationLevel,
};

/// UTF-8 byte order mark some senders put before `MSH`; skipped, never stored
/// twice.
pub const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
/// Segments one message may hold; bounds the segment index a parse allocates.
pub const MESSAGE_SEGMENTS_MAX: usize = 65_536;
/// Messages one batch may hold; bounds the list `split_batch` allocates.
pub const BATCH_MESSAGES_MAX: usize = 65_536;
/// Largest index accepted in a field path (`PID-3[2].1`): HL7 fields,
/// repetitions and components never come close.
pub const FIELD_PATH_NUMBER_MAX: u16 = 9_999;

const _: () = assert!(MESSAGE_SEGMENTS_MAX >= 2 && BATCH_MESSAGES_MAX >= 1);
