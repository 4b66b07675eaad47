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

pub use decode::{Damage, DecodeError, TraceReader};
pub use encode::{ChunkWriter, Payload, RecordEncoder};
pub use naming::{program_name, trace_file_name, TraceTemplate};
pub use record::*;

/// The first eight bytes of every trace file.
pub const MAGIC: [u8; 8] = *b"LIBLEAK\0";
/// The version this crate writes and the only one it reads.
pub const FORMAT_VERSION: u32 = 12;
/// Size of the file header: magic, version, flags.
pub const HEADER_LEN: usize = 16;
/// Size of a chunk's frame: sync marker, compressed length, payload length, CRC-32.
pub const CHUNK_FRAME_LEN: usize = 16;
/// The first four bytes of every chunk, which a reader looks for to find the next chunk after
/// damage. `0xF7` never occurs in UTF-8 text (so not in the strings a stored deflate block
/// copies verbatim), and the rest is arbitrary: in compressed data, which is close to random,
/// a false match comes once in 4 GiB, and must then also pass the chunk's lengths, inflation
/// and CRC-32.
pub const CHUNK_SYNC: [u8; 4] = [0xF7, 0xD3, 0xA9, 0x1E];
/// Upper bound on a chunk's compressed or uncompressed payload; a frame stating more is damaged.
pub const MAX_CHUNK_BYTES: u32 = 64 << 20;
