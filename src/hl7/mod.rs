//! HL7 v2 parsing, field paths, escapes, validation, ACK building and parsing. Never performs I/O.
