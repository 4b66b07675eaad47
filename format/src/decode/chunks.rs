//! Reading the file's framing, the mirror of [`ChunkWriter`](crate::ChunkWriter):
//! [`ChunkReader`] checks the header, then reads one chunk at a time (its frame, the
//! compressed bytes, the inflated payload and its CRC-32) and splits the payload into the
//! records part and the address stream (`SPEC.md`, "Payload encoding"). A file that stops
//! inside a frame or a chunk is truncation, which the reader reports rather than fails on.
//!
//! Must never interpret records (that is `records.rs`), never allocate more than
//! [`MAX_CHUNK_BYTES`] per chunk, and never panic, whatever the input.

use std::io::{self, Read};

use flate2::read::DeflateDecoder;

use super::error::DecodeError;
use crate::varint::Cursor;
use crate::{CHUNK_FRAME_LEN, FORMAT_VERSION, HEADER_LEN, MAGIC, MAX_CHUNK_BYTES};

/// Reads a trace's header and then its chunks, one at a time, from any byte source.
pub(super) struct ChunkReader<R: Read> {
    input: R,
    /// File offset of the next unread byte.
    offset: u64,
    truncated: bool,
    /// The current chunk's payload: records from `records_position` to `records_end`, their
    /// addresses from `address_position` to the end.
    payload: Vec<u8>,
    records_position: usize,
    records_end: usize,
    address_position: usize,
    /// File offset of the current chunk's frame.
    chunk_offset: u64,
}

/// Reads as many bytes as are available up to `buf.len()`; returns how many were read.
fn read_up_to<R: Read>(input: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl<R: Read> ChunkReader<R> {
    /// Reads and checks the header.
    pub fn new(mut input: R) -> Result<Self, DecodeError> {
        let mut header = [0u8; HEADER_LEN];
        let got = read_up_to(&mut input, &mut header)?;
        if got == 0 {
            return Err(DecodeError::Empty);
        }
        let magic_seen = got.min(MAGIC.len());
        if header[..magic_seen] != MAGIC[..magic_seen] {
            return Err(DecodeError::NotATrace);
        }
        if got < HEADER_LEN {
            return Err(DecodeError::TruncatedHeader);
        }
        let version = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
        if version != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        Ok(ChunkReader {
            input,
            offset: HEADER_LEN as u64,
            truncated: false,
            payload: Vec::new(),
            records_position: 0,
            records_end: 0,
            address_position: 0,
            chunk_offset: 0,
        })
    }

    /// True once the reader has seen the file stop inside a chunk.
    pub fn is_truncated(&self) -> bool {
        self.truncated
    }

    /// Bytes of the file consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.offset
    }

    /// The current chunk's records not read yet, and its address stream from the first
    /// address not read yet.
    pub fn unread(&self) -> (&[u8], &[u8]) {
        (
            &self.payload[self.records_position..self.records_end],
            &self.payload[self.address_position..],
        )
    }

    /// Marks the next `records` bytes of records and `addresses` bytes of addresses as read
    /// (at most what [`ChunkReader::unread`] holds).
    pub fn consume(&mut self, records: usize, addresses: usize) {
        self.records_position += records;
        self.address_position += addresses;
    }

    /// The payload offset of the first record not read yet.
    pub fn record_position(&self) -> usize {
        self.records_position
    }

    /// A corruption of the current chunk.
    pub fn corrupt(&self, reason: impl Into<String>) -> DecodeError {
        DecodeError::corrupt(self.chunk_offset, reason)
    }

    /// Replaces the current chunk with the next one. `Ok(false)` at the end of the readable
    /// data: the end of the file, or a chunk cut short (see [`ChunkReader::is_truncated`]).
    pub fn next_chunk(&mut self) -> Result<bool, DecodeError> {
        let chunk_offset = self.offset;
        let mut frame = [0u8; CHUNK_FRAME_LEN];
        let got = read_up_to(&mut self.input, &mut frame)?;
        if got < frame.len() {
            self.truncated = got != 0;
            return Ok(false);
        }
        let compressed_len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let raw_len = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let crc = u32::from_le_bytes([frame[8], frame[9], frame[10], frame[11]]);
        if compressed_len == 0 || compressed_len > MAX_CHUNK_BYTES || raw_len > MAX_CHUNK_BYTES {
            return Err(DecodeError::corrupt(
                chunk_offset,
                format!("impossible chunk lengths {compressed_len}/{raw_len}"),
            ));
        }
        let mut compressed = vec![0u8; compressed_len as usize];
        let got = read_up_to(&mut self.input, &mut compressed)?;
        if got < compressed.len() {
            self.truncated = true;
            return Ok(false);
        }
        self.offset += CHUNK_FRAME_LEN as u64 + u64::from(compressed_len);
        // The previous chunk is gone from here on: leave nothing of it unread.
        self.payload.clear();
        (self.records_position, self.records_end, self.address_position) = (0, 0, 0);
        self.payload.reserve(raw_len as usize);
        let inflated = DeflateDecoder::new(&compressed[..])
            .take(u64::from(raw_len) + 1)
            .read_to_end(&mut self.payload);
        if inflated.is_err() || self.payload.len() != raw_len as usize {
            return Err(self.failed(chunk_offset, "chunk does not decompress to its stated length"));
        }
        if crc32fast::hash(&self.payload) != crc {
            return Err(self.failed(chunk_offset, "chunk checksum mismatch"));
        }
        let mut prefix = Cursor::new(&self.payload);
        let records_len = prefix.u64();
        let records_start = prefix.position();
        let records_end = records_len
            .and_then(|len| usize::try_from(len).ok())
            .and_then(|len| records_start.checked_add(len))
            .filter(|&end| end <= self.payload.len());
        let Some(records_end) = records_end else {
            return Err(self.failed(chunk_offset, "chunk records length out of range"));
        };
        self.records_position = records_start;
        self.records_end = records_end;
        self.address_position = records_end;
        self.chunk_offset = chunk_offset;
        Ok(true)
    }

    /// The chunk at `chunk_offset` is corrupt: drops what was read of it.
    fn failed(&mut self, chunk_offset: u64, reason: &str) -> DecodeError {
        self.payload.clear();
        DecodeError::corrupt(chunk_offset, reason)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{decode_all, encode, sample_records};
    use super::*;

    #[test]
    fn every_prefix_decodes_or_fails_cleanly() {
        let bytes = encode(&sample_records(), 2);
        for len in 0..bytes.len() {
            match decode_all(&bytes[..len]) {
                Ok((records, truncated)) => {
                    assert!(len < HEADER_LEN || truncated || records.len() % 2 == 0, "prefix {len}");
                }
                Err(DecodeError::Empty) => assert_eq!(len, 0),
                Err(DecodeError::TruncatedHeader) => assert!(len < HEADER_LEN),
                Err(other) => panic!("prefix {len}: unexpected {other}"),
            }
        }
    }

    #[test]
    fn typed_errors_for_bad_headers_and_corruption() {
        assert!(matches!(decode_all(b""), Err(DecodeError::Empty)));
        assert!(matches!(
            decode_all(b"hello world, not a trace"),
            Err(DecodeError::NotATrace)
        ));
        let mut future = encode(&sample_records(), 100);
        future[8] = 9;
        match decode_all(&future) {
            Err(DecodeError::UnsupportedVersion {
                found: 9,
                supported: FORMAT_VERSION,
            }) => {}
            other => panic!("{other:?}"),
        }
        let mut flipped = encode(&sample_records(), 100);
        let last = flipped.len() - 3;
        flipped[last] ^= 0x55;
        assert!(matches!(decode_all(&flipped), Err(DecodeError::Corrupt { .. })));
    }
}
