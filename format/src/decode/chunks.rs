//! Reading the file's framing, the mirror of [`ChunkWriter`](crate::ChunkWriter):
//! [`ChunkReader`] checks the header, then reads one chunk at a time (its frame, the
//! compressed bytes, the inflated payload and its CRC-32), reads its prologue and splits the
//! rest into the records part and the address stream (`SPEC.md`, "Chunk" and "Payload
//! encoding"). A chunk that does not validate is damage: the reader looks for the next sync
//! marker whose chunk validates and goes on from there. A file that stops inside its last
//! chunk is truncation, which the reader reports rather than fails on.
//!
//! Must never interpret records (that is `records.rs`), never hold more than two chunks'
//! compressed bytes (plus one read block) and two payloads (the current chunk's, and the next
//! one's on the helper, see `inflate_ahead.rs`), each at most [`MAX_CHUNK_BYTES`], and never
//! panic, whatever the input.

use std::io::{self, Read};

use super::error::{Damage, DecodeError};
use super::inflate_ahead::{inflate_checked, InflateAhead};
use crate::varint::Cursor;
use crate::{CHUNK_FRAME_LEN, CHUNK_SYNC, FORMAT_VERSION, HEADER_LEN, MAGIC, MAX_CHUNK_BYTES};

/// How much the reader asks its input for at a time while it looks for a sync marker.
const SCAN_BLOCK: usize = 64 << 10;
/// The most the window grows by at a time: it grows only as bytes arrive, not by what a
/// (possibly damaged) frame claims.
const READ_BLOCK: usize = 1 << 20;

/// What a chunk's prologue says (`SPEC.md`, "Chunk prologue").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Prologue {
    /// STACK_NODE records in all earlier chunks.
    pub stack_nodes_before: u64,
    /// Nanoseconds since the first chunk was written.
    pub time_ns: u64,
}

/// Which stack node counts a chunk's prologue may state: exactly the running count when the
/// chunk follows one that was read whole, else at least it (a lost chunk may have defined
/// more; none can have taken ids back).
#[derive(Clone, Copy, Debug)]
pub(super) struct Expected {
    pub stack_nodes: u64,
    pub exact: bool,
}

/// What [`ChunkReader::next_chunk`] found.
pub(super) struct NextChunk {
    /// The bytes skipped before the chunk now loaded (or before the end of the data).
    pub damage: Option<Damage>,
    /// A chunk was loaded; `false` at the end of the readable data.
    pub loaded: bool,
}

/// One attempt at reading a chunk at a given offset.
enum Attempt {
    /// The chunk validates and is loaded; the next one starts at this offset.
    Valid(u64),
    /// No byte at all at the offset: the end of the file.
    End,
    /// The file ends inside the chunk.
    Cut,
    /// The chunk does not validate.
    Bad,
}

/// Reads a trace's header and then its chunks, one at a time, from any byte source.
pub(super) struct ChunkReader<R: Read> {
    input: R,
    input_ended: bool,
    /// Bytes read from the input and not yet dropped: `window[0]` is at file offset
    /// `window_start`.
    window: Vec<u8>,
    window_start: u64,
    /// File offset where the next chunk is expected.
    offset: u64,
    truncated: bool,
    /// The current chunk's payload: records from `records_position` to `records_end`, their
    /// addresses from `address_position` to the end.
    payload: Vec<u8>,
    records_position: usize,
    records_end: usize,
    address_position: usize,
    /// File offset and length (frame included) of the current chunk.
    chunk_offset: u64,
    chunk_len: u64,
    prologue: Prologue,
    /// The helper inflating the next chunk (see [`InflateAhead`]); none before the first
    /// chunk, or when no thread could be made.
    ahead: Option<InflateAhead>,
    ahead_tried: bool,
    /// Chunks loaded, and of them those whose payload came from the helper.
    chunks_loaded: u64,
    inflated_ahead: u64,
    /// An input error met while reading ahead for the helper, returned by the next read.
    deferred_error: Option<io::Error>,
    /// The payload buffer the current chunk replaced, for the helper to inflate into.
    spare_payload: Vec<u8>,
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

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
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
        let version = u32_at(&header, 8);
        if version != FORMAT_VERSION {
            return Err(DecodeError::UnsupportedVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        Ok(ChunkReader {
            input,
            input_ended: false,
            window: Vec::new(),
            window_start: HEADER_LEN as u64,
            offset: HEADER_LEN as u64,
            truncated: false,
            payload: Vec::new(),
            records_position: 0,
            records_end: 0,
            address_position: 0,
            chunk_offset: 0,
            chunk_len: 0,
            prologue: Prologue::default(),
            ahead: None,
            ahead_tried: false,
            chunks_loaded: 0,
            inflated_ahead: 0,
            deferred_error: None,
            spare_payload: Vec::new(),
        })
    }

    /// True once the reader has seen the file stop inside its last chunk.
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

    /// The current chunk's prologue.
    pub fn prologue(&self) -> Prologue {
        self.prologue
    }

    /// Drops the rest of the current chunk, which holds a malformed record: returns it as
    /// damage.
    pub fn abandon(&mut self) -> Damage {
        self.payload.clear();
        (self.records_position, self.records_end, self.address_position) = (0, 0, 0);
        Damage {
            offset: self.chunk_offset,
            bytes: self.chunk_len,
        }
    }

    /// Replaces the current chunk with the next one that validates, skipping damage. Stops at
    /// the end of the readable data (`loaded` false): the end of the file, or a chunk cut
    /// short by it (see [`ChunkReader::is_truncated`]).
    pub fn next_chunk(&mut self, expected: Expected) -> io::Result<NextChunk> {
        let start = self.offset;
        let first = self.try_chunk(start, expected)?;
        match first {
            Attempt::Valid(end) => return Ok(self.loaded(end, None)),
            Attempt::End => {
                return Ok(NextChunk {
                    damage: None,
                    loaded: false,
                })
            }
            Attempt::Cut | Attempt::Bad => {}
        }
        // After damage any count at least the running one is possible.
        let expected = Expected {
            exact: false,
            ..expected
        };
        // A chunk cut by the end of the file: the truncated tail, unless a chunk that
        // validates follows (then it was a damaged frame that claimed too many bytes).
        let mut cut_at = matches!(first, Attempt::Cut).then_some(start);
        let mut from = start + 1;
        while let Some(candidate) = self.find_sync(from)? {
            match self.try_chunk(candidate, expected)? {
                Attempt::Valid(end) => {
                    let damage = Damage {
                        offset: start,
                        bytes: candidate - start,
                    };
                    return Ok(self.loaded(end, Some(damage)));
                }
                Attempt::Cut => {
                    cut_at.get_or_insert(candidate);
                }
                Attempt::End | Attempt::Bad => {}
            }
            from = candidate + 1;
        }
        let data_end = self.window_start + self.window.len() as u64;
        self.truncated = cut_at.is_some();
        let damage_end = cut_at.unwrap_or(data_end);
        self.offset = data_end;
        self.window.clear();
        self.window_start = data_end;
        Ok(NextChunk {
            damage: (damage_end > start).then_some(Damage {
                offset: start,
                bytes: damage_end - start,
            }),
            loaded: false,
        })
    }

    fn loaded(&mut self, end: u64, damage: Option<Damage>) -> NextChunk {
        self.offset = end;
        self.drop_before(end);
        self.chunks_loaded += 1;
        // Not after the first chunk: a reader that wants only the process record (the
        // listing of a directory's traces) makes no thread.
        if self.chunks_loaded >= 2 {
            self.ask_ahead(end);
        }
        NextChunk { damage, loaded: true }
    }

    /// Has the chunk at `at`, as its frame states it, inflated on the helper while the
    /// current one is read. Nothing is asked when the frame is not whole or not plausible, or
    /// when reading on fails (the error is kept for the reader's next read).
    fn ask_ahead(&mut self, at: u64) {
        if !self.ahead_tried {
            self.ahead_tried = true;
            self.ahead = InflateAhead::start();
        }
        if self.ahead.as_ref().is_none_or(InflateAhead::is_busy) {
            return;
        }
        let frame_end = at + CHUNK_FRAME_LEN as u64;
        if !self.fill_to_ahead(frame_end) {
            return;
        }
        let frame = self.slice(at, frame_end);
        let (compressed_len, payload_len, crc) = (u32_at(frame, 4), u32_at(frame, 8), u32_at(frame, 12));
        if frame[..4] != CHUNK_SYNC
            || compressed_len == 0
            || compressed_len > MAX_CHUNK_BYTES
            || payload_len > MAX_CHUNK_BYTES
        {
            return;
        }
        let end = frame_end + u64::from(compressed_len);
        if !self.fill_to_ahead(end) {
            return;
        }
        let out = std::mem::take(&mut self.spare_payload);
        let compressed = &self.window[(frame_end - self.window_start) as usize..(end - self.window_start) as usize];
        if let Some(ahead) = self.ahead.as_mut() {
            ahead.ask(at, compressed, payload_len as usize, crc, out);
        }
    }

    /// Reads the chunk at `at` and, when it validates, makes it the current one.
    fn try_chunk(&mut self, at: u64, expected: Expected) -> io::Result<Attempt> {
        let frame_end = at + CHUNK_FRAME_LEN as u64;
        if !self.fill_to(frame_end)? {
            let available = self.window_start + self.window.len() as u64;
            return Ok(if available <= at { Attempt::End } else { Attempt::Cut });
        }
        let frame = self.slice(at, frame_end);
        if frame[..4] != CHUNK_SYNC {
            return Ok(Attempt::Bad);
        }
        let compressed_len = u32_at(frame, 4);
        let payload_len = u32_at(frame, 8);
        let crc = u32_at(frame, 12);
        if compressed_len == 0 || compressed_len > MAX_CHUNK_BYTES || payload_len > MAX_CHUNK_BYTES {
            return Ok(Attempt::Bad);
        }
        let end = frame_end + u64::from(compressed_len);
        if !self.fill_to(end)? {
            return Ok(Attempt::Cut);
        }
        let (from, to) = (
            (frame_end - self.window_start) as usize,
            (end - self.window_start) as usize,
        );
        let valid = match self.ahead.as_mut().and_then(|ahead| ahead.take(at)) {
            Some(Some(payload)) => {
                self.spare_payload = std::mem::replace(&mut self.payload, payload);
                self.inflated_ahead += 1;
                true
            }
            Some(None) => false,
            None => inflate_checked(&self.window[from..to], payload_len as usize, crc, &mut self.payload),
        };
        if !valid {
            self.payload.clear();
            return Ok(Attempt::Bad);
        }
        let mut prefix = Cursor::new(&self.payload);
        let (Some(stack_nodes_before), Some(time_ns), Some(records_len)) = (prefix.u64(), prefix.u64(), prefix.u64())
        else {
            self.payload.clear();
            return Ok(Attempt::Bad);
        };
        let records_start = prefix.position();
        let records_end = usize::try_from(records_len)
            .ok()
            .and_then(|len| records_start.checked_add(len))
            .filter(|&end| end <= self.payload.len());
        let count_fits = if expected.exact {
            stack_nodes_before == expected.stack_nodes
        } else {
            stack_nodes_before >= expected.stack_nodes
        };
        let Some(records_end) = records_end.filter(|_| count_fits) else {
            self.payload.clear();
            return Ok(Attempt::Bad);
        };
        self.records_position = records_start;
        self.records_end = records_end;
        self.address_position = records_end;
        self.chunk_offset = at;
        self.chunk_len = end - at;
        self.prologue = Prologue {
            stack_nodes_before,
            time_ns,
        };
        Ok(Attempt::Valid(end))
    }

    /// The window's bytes from file offset `from` to `to`, which it must hold.
    fn slice(&self, from: u64, to: u64) -> &[u8] {
        &self.window[(from - self.window_start) as usize..(to - self.window_start) as usize]
    }

    /// Reads until the window reaches file offset `end`; false when the file ends first.
    fn fill_to(&mut self, end: u64) -> io::Result<bool> {
        loop {
            let have = self.window_start + self.window.len() as u64;
            if have >= end {
                return Ok(true);
            }
            let want = usize::try_from(end - have).unwrap_or(READ_BLOCK).min(READ_BLOCK);
            if !self.read_more(want)? {
                return Ok(false);
            }
        }
    }

    /// As [`ChunkReader::fill_to`] for the helper's sake: an error is kept for the next read.
    fn fill_to_ahead(&mut self, end: u64) -> bool {
        match self.fill_to(end) {
            Ok(filled) => filled,
            Err(e) => {
                self.deferred_error = Some(e);
                false
            }
        }
    }

    /// Appends up to `want` more bytes of the input to the window; false at its end.
    fn read_more(&mut self, want: usize) -> io::Result<bool> {
        if let Some(e) = self.deferred_error.take() {
            return Err(e);
        }
        if self.input_ended {
            return Ok(false);
        }
        let old = self.window.len();
        self.window.resize(old + want, 0);
        let got = read_up_to(&mut self.input, &mut self.window[old..]);
        let got = match got {
            Ok(got) => got,
            Err(e) => {
                self.window.truncate(old);
                return Err(e);
            }
        };
        self.window.truncate(old + got);
        if got < want {
            self.input_ended = true;
        }
        Ok(got > 0)
    }

    /// Forgets the window's bytes before file offset `offset`.
    fn drop_before(&mut self, offset: u64) {
        let drop = offset.saturating_sub(self.window_start).min(self.window.len() as u64);
        self.window.drain(..drop as usize);
        self.window_start += drop;
    }

    /// The file offset of the first sync marker at or after `from`, reading on as needed; the
    /// window keeps everything from there on.
    fn find_sync(&mut self, from: u64) -> io::Result<Option<u64>> {
        let mut at = from.max(self.window_start);
        loop {
            self.drop_before(at);
            let start = (at - self.window_start) as usize;
            if let Some(found) = self
                .window
                .get(start..)
                .and_then(|rest| rest.windows(CHUNK_SYNC.len()).position(|w| w == CHUNK_SYNC))
            {
                return Ok(Some(at + found as u64));
            }
            // A marker may straddle the end of what was read.
            let have = self.window_start + self.window.len() as u64;
            at = at.max(have.saturating_sub(CHUNK_SYNC.len() as u64 - 1));
            if !self.read_more(SCAN_BLOCK)? {
                return Ok(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::inflate_ahead::inflate_exactly;
    use super::super::testing::{decode_all, encode, sample_records};
    use super::*;

    #[test]
    fn every_prefix_decodes_or_fails_cleanly() {
        let bytes = encode(&sample_records(), 2);
        for len in 0..bytes.len() {
            match decode_all(&bytes[..len]) {
                Ok(read) => {
                    assert!(read.damage.is_empty(), "prefix {len}: {:?}", read.damage);
                    assert!(
                        len < HEADER_LEN || read.truncated || read.records.len() % 2 == 0,
                        "prefix {len}"
                    );
                }
                Err(DecodeError::Empty) => assert_eq!(len, 0),
                Err(DecodeError::TruncatedHeader) => assert!(len < HEADER_LEN),
                Err(other) => panic!("prefix {len}: unexpected {other}"),
            }
        }
    }

    /// Every chunk and every region of damage, read with the helper or without.
    fn chunks_and_damage(bytes: &[u8], helper: bool) -> (Vec<Vec<u8>>, Vec<Damage>, u64) {
        let mut reader = ChunkReader::new(bytes).unwrap();
        reader.ahead_tried = !helper;
        let (mut chunks, mut damage) = (Vec::new(), Vec::new());
        loop {
            let expected = Expected {
                stack_nodes: reader.prologue().stack_nodes_before,
                exact: false,
            };
            let next = reader.next_chunk(expected).unwrap();
            damage.extend(next.damage);
            if !next.loaded {
                return (chunks, damage, reader.inflated_ahead);
            }
            chunks.push(reader.payload.clone());
        }
    }

    #[test]
    fn chunks_inflated_ahead_read_as_chunks_inflated_inline_whatever_the_damage() {
        let bytes = encode(&sample_records(), 2);
        let (chunks, damage, ahead) = chunks_and_damage(&bytes, true);
        assert!(
            chunks.len() >= 4 && damage.is_empty(),
            "{} chunks, {damage:?}",
            chunks.len()
        );
        assert_eq!(ahead, chunks.len() as u64 - 2, "all but the first two from the helper");
        assert_eq!(chunks_and_damage(&bytes, false), (chunks, damage, 0));
        for at in HEADER_LEN..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x41;
            let (chunks, damage, _) = chunks_and_damage(&damaged, true);
            let (inline_chunks, inline_damage, _) = chunks_and_damage(&damaged, false);
            assert_eq!((chunks, damage), (inline_chunks, inline_damage), "byte {at}");
        }
    }

    /// An input that fails once when `at` bytes were read, then goes on (a transient error:
    /// the bytes a failed read had taken are lost to the reader).
    struct FailingAfter<'a> {
        bytes: &'a [u8],
        at: usize,
        failed: bool,
    }

    impl Read for FailingAfter<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.at == 0 && !self.failed {
                self.failed = true;
                return Err(io::Error::other("the disk went away"));
            }
            if self.at == 0 {
                self.at = usize::MAX;
            }
            let n = buf.len().min(self.at).min(self.bytes.len());
            buf[..n].copy_from_slice(&self.bytes[..n]);
            (self.bytes, self.at) = (&self.bytes[n..], self.at - n);
            Ok(n)
        }
    }

    #[test]
    fn an_input_error_met_while_reading_ahead_is_the_next_reads_error() {
        let bytes = encode(&sample_records(), 2);
        let (chunks, _, _) = chunks_and_damage(&bytes, false);
        for at in HEADER_LEN..bytes.len() {
            let mut reader = ChunkReader::new(FailingAfter {
                bytes: &bytes,
                at,
                failed: false,
            })
            .unwrap();
            let mut loaded = 0;
            let failed = loop {
                let expected = Expected {
                    stack_nodes: reader.prologue().stack_nodes_before,
                    exact: false,
                };
                match reader.next_chunk(expected) {
                    Ok(next) if next.loaded => loaded += 1,
                    Ok(_) => break false,
                    Err(_) => break true,
                }
            };
            assert!(failed, "byte {at}: the error was lost after {loaded} chunks");
            assert!(loaded < chunks.len(), "byte {at}");
        }
    }

    #[test]
    fn typed_errors_for_bad_headers() {
        assert!(matches!(decode_all(b""), Err(DecodeError::Empty)));
        assert!(matches!(
            decode_all(b"hello world, not a trace"),
            Err(DecodeError::NotATrace)
        ));
        let mut future = encode(&sample_records(), 100);
        future[8] = FORMAT_VERSION as u8 + 1;
        match decode_all(&future) {
            Err(DecodeError::UnsupportedVersion {
                found,
                supported: FORMAT_VERSION,
            }) if found == FORMAT_VERSION + 1 => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn inflation_must_end_exactly_at_the_stated_lengths() {
        let payload: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut compressor = flate2::Compress::new(flate2::Compression::new(2), false);
        let mut compressed = Vec::with_capacity(10_000);
        compressor
            .compress_vec(&payload, &mut compressed, flate2::FlushCompress::Finish)
            .unwrap();
        let mut out = Vec::new();
        assert!(inflate_exactly(&compressed, payload.len(), &mut out));
        assert_eq!(out, payload);
        assert!(!inflate_exactly(&compressed, payload.len() - 1, &mut out));
        assert!(!inflate_exactly(&compressed, payload.len() + 1, &mut out));
        let trailing = [compressed.as_slice(), &[0]].concat();
        assert!(!inflate_exactly(&trailing, payload.len(), &mut out));
        assert!(!inflate_exactly(
            &compressed[..compressed.len() - 1],
            payload.len(),
            &mut out
        ));
        for len in [0, 1, 100, 65_535, 65_536, 70_000] {
            let data = vec![3u8; len];
            let mut compressed = Vec::with_capacity(len + 1024);
            flate2::Compress::new(flate2::Compression::new(2), false)
                .compress_vec(&data, &mut compressed, flate2::FlushCompress::Finish)
                .unwrap();
            assert!(inflate_exactly(&compressed, len, &mut out), "{len}");
            assert_eq!(out.len(), len);
        }
    }
}
