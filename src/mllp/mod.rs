//! MLLP framing (decoder and encoder). Never performs I/O.
