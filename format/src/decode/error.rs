//! Why a trace could not be read at all (the one error type of the decoder), and what of it
//! was skipped ([`Damage`]: damage past the header is not an error). Must never carry input
//! bytes.

use std::io;

use crate::HEADER_LEN;

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("the file is empty (the traced process may have been killed before its first flush)")]
    Empty,
    #[error("not a libleak trace (bad magic bytes)")]
    NotATrace,
    #[error("the file ends inside its {HEADER_LEN}-byte header")]
    TruncatedHeader,
    #[error("unsupported trace format version {found} (this libleak reads version {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
}

/// A part of the file the reader skipped: no record in it was read, except those of a chunk
/// that validated before a malformed record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Damage {
    /// File offset where the damaged region starts (a chunk's frame).
    pub offset: u64,
    /// Bytes skipped from there.
    pub bytes: u64,
}
