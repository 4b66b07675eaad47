//! The libleak trace format, defined once: the interposer writes it with [`ChunkWriter`] and
//! [`RecordEncoder`], the reporter reads it with [`TraceReader`]. `SPEC.md` beside this crate
//! describes every byte; the two must change together, and any change to the bytes bumps
//! [`FORMAT_VERSION`].
//!
//! This crate must never depend on the interposer or the reporter, never perform I/O other
//! than through the reader/writer it is handed, and never panic on input bytes.
#![forbid(unsafe_code)]

mod decode;
mod delta;
mod encode;
pub mod live;
mod naming;
mod recent;
mod record;
mod varint;
mod wire_enum;

pub use decode::{DecodeError, TraceReader};
pub use encode::{ChunkWriter, Payload, RecordEncoder};
pub use naming::{program_name, trace_file_name, TraceTemplate};
pub use record::*;

/// The first eight bytes of every trace file.
pub const MAGIC: [u8; 8] = *b"LIBLEAK\0";
/// The version this crate writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 7;
/// Size of the file header: magic, version, flags.
pub const HEADER_LEN: usize = 16;
/// Size of a chunk's frame: compressed length, payload length, CRC-32.
pub const CHUNK_FRAME_LEN: usize = 12;
/// Upper bound on a chunk's compressed or uncompressed payload; larger lengths are corruption.
pub const MAX_CHUNK_BYTES: u32 = 64 << 20;
