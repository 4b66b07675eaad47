//! Why a trace could not be read: the one error type of the decoder, shared by its framing
//! and record halves. Must never carry more than a short reason (no input bytes).

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
    #[error("corrupt trace at byte {offset}: {reason}")]
    Corrupt { offset: u64, reason: String },
    #[error("read failed: {0}")]
    Io(#[from] io::Error),
}

impl DecodeError {
    pub(super) fn corrupt(offset: u64, reason: impl Into<String>) -> Self {
        DecodeError::Corrupt {
            offset,
            reason: reason.into(),
        }
    }
}
