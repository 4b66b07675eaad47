//! Reading traces. [`TraceReader`] checks the header, then yields records chunk by chunk.
//! A file that stops inside a chunk is not an error: the reader yields every record of the
//! complete chunks and reports [`TraceReader::is_truncated`]. Anything else that does not
//! match `SPEC.md` is a [`DecodeError`]. Must never panic or allocate more than
//! [`MAX_CHUNK_BYTES`] per chunk, whatever the input.

use std::io::{self, Read};

use flate2::read::DeflateDecoder;

use crate::delta::{DeltaState, Recent};
use crate::record::*;
use crate::varint::Cursor;
use crate::{CHUNK_FRAME_LEN, FORMAT_VERSION, HEADER_LEN, MAGIC, MAX_CHUNK_BYTES};

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

/// Decodes a trace from any byte source.
pub struct TraceReader<R: Read> {
    input: R,
    /// File offset of the next unread byte.
    offset: u64,
    truncated: bool,
    finished: bool,
    /// The current chunk's payload, decoded one record per call (records were 112-byte
    /// values: queueing a whole chunk's of them cost a fifth of a report's time): records
    /// from `payload_position` to `records_end`, their addresses from `address_position`.
    payload: Vec<u8>,
    payload_position: usize,
    records_end: usize,
    address_position: usize,
    chunk_offset: u64,
    delta: DeltaState,
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

impl<R: Read> TraceReader<R> {
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
        Ok(TraceReader {
            input,
            offset: HEADER_LEN as u64,
            truncated: false,
            finished: false,
            payload: Vec::new(),
            payload_position: 0,
            records_end: 0,
            address_position: 0,
            chunk_offset: 0,
            delta: DeltaState::default(),
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

    /// The next record, or `None` at the end of the readable data.
    pub fn next_record(&mut self) -> Result<Option<Record>, DecodeError> {
        loop {
            if self.payload_position < self.records_end {
                let payload = std::mem::take(&mut self.payload);
                let mut cursor = Cursor::new(&payload[self.payload_position..self.records_end]);
                let mut addresses = Cursor::new(&payload[self.address_position..]);
                let decoded = self.decode_record(&mut cursor, &mut addresses);
                let record_start = self.payload_position;
                self.payload_position += cursor.position();
                self.address_position += addresses.position();
                self.payload = payload;
                match decoded {
                    Some(None) => continue,
                    Some(Some(record)) => {
                        if let Record::End(_) = record {
                            // Nothing may follow the end marker.
                            self.finished = true;
                        }
                        return Ok(Some(record));
                    }
                    None => {
                        return Err(self.corrupt(
                            self.chunk_offset,
                            format!("malformed record at payload byte {record_start}"),
                        ))
                    }
                }
            }
            if self.address_position != self.payload.len() {
                return Err(self.corrupt(
                    self.chunk_offset,
                    "the address stream holds more than the records refer to",
                ));
            }
            if self.finished {
                return Ok(None);
            }
            self.read_chunk()?;
        }
    }

    fn corrupt(&self, offset: u64, reason: impl Into<String>) -> DecodeError {
        DecodeError::Corrupt {
            offset,
            reason: reason.into(),
        }
    }

    fn read_chunk(&mut self) -> Result<(), DecodeError> {
        let chunk_offset = self.offset;
        let mut frame = [0u8; CHUNK_FRAME_LEN];
        let got = read_up_to(&mut self.input, &mut frame)?;
        if got < frame.len() {
            self.finished = true;
            self.truncated = got != 0;
            return Ok(());
        }
        let compressed_len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let raw_len = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let crc = u32::from_le_bytes([frame[8], frame[9], frame[10], frame[11]]);
        if compressed_len == 0 || compressed_len > MAX_CHUNK_BYTES || raw_len > MAX_CHUNK_BYTES {
            return Err(self.corrupt(
                chunk_offset,
                format!("impossible chunk lengths {compressed_len}/{raw_len}"),
            ));
        }
        let mut compressed = vec![0u8; compressed_len as usize];
        let got = read_up_to(&mut self.input, &mut compressed)?;
        if got < compressed.len() {
            self.finished = true;
            self.truncated = true;
            return Ok(());
        }
        self.offset += 12 + u64::from(compressed_len);
        let mut payload = std::mem::take(&mut self.payload);
        payload.clear();
        payload.reserve(raw_len as usize);
        let inflated = DeflateDecoder::new(&compressed[..])
            .take(u64::from(raw_len) + 1)
            .read_to_end(&mut payload);
        if inflated.is_err() || payload.len() != raw_len as usize {
            return Err(self.corrupt(chunk_offset, "chunk does not decompress to its stated length"));
        }
        if crc32fast::hash(&payload) != crc {
            return Err(self.corrupt(chunk_offset, "chunk checksum mismatch"));
        }
        let mut prefix = Cursor::new(&payload);
        let records_len = prefix.u64();
        let records_start = prefix.position();
        let records_end = records_len
            .and_then(|len| usize::try_from(len).ok())
            .and_then(|len| records_start.checked_add(len))
            .filter(|&end| end <= payload.len());
        let Some(records_end) = records_end else {
            return Err(self.corrupt(chunk_offset, "chunk records length out of range"));
        };
        self.payload = payload;
        self.payload_position = records_start;
        self.records_end = records_end;
        self.address_position = records_end;
        self.chunk_offset = chunk_offset;
        Ok(())
    }

    /// The next record; `Some(None)` for one that only changes the decoder's state (THREAD),
    /// `None` for a malformed one.
    fn decode_record(&mut self, c: &mut Cursor<'_>, addresses: &mut Cursor<'_>) -> Option<Option<Record>> {
        fn string(c: &mut Cursor<'_>) -> Option<String> {
            Some(String::from_utf8_lossy(c.bytes()?).into_owned())
        }
        fn u32_of(value: u64) -> Option<u32> {
            u32::try_from(value).ok()
        }
        fn stats(c: &mut Cursor<'_>) -> Option<Stats> {
            Some(Stats {
                reentrant_calls: c.u64()?,
                producer_waits: c.u64()?,
                truncated_stacks: c.u64()?,
                slot_locks: match c.u64()? {
                    0 => false,
                    1 => true,
                    _ => return None,
                },
            })
        }
        let tag = c.u8()?;
        let record = match tag {
            tag::THREAD => {
                self.delta.set_current_thread(u32_of(c.u64()?)?);
                return Some(None);
            }
            tag::PROCESS => {
                let pid = u32_of(c.u64()?)?;
                let parent_pid = u32_of(c.u64()?)?;
                let start_time_unix_ns = c.u64()?;
                let exe = string(c)?;
                let argc = c.u64()?;
                let mut argv = Vec::new();
                for _ in 0..argc {
                    argv.push(string(c)?);
                }
                let cwd = string(c)?;
                let program = string(c)?;
                Record::Process(ProcessInfo {
                    pid,
                    parent_pid,
                    start_time_unix_ns,
                    exe,
                    argv,
                    cwd,
                    program,
                })
            }
            tag::MODULE => {
                let id = c.u64()?;
                let path = string(c)?;
                let bias = c.u64()?;
                let build_id = c.bytes()?.to_vec();
                let count = c.u64()?;
                let mut segments = Vec::new();
                for _ in 0..count {
                    segments.push(Segment {
                        vaddr: c.u64()?,
                        memsz: c.u64()?,
                        flags: u32_of(c.u64()?)?,
                    });
                }
                Record::Module(Module {
                    id,
                    path,
                    bias,
                    build_id,
                    segments,
                })
            }
            tag::MODULE_UNLOADED => Record::ModuleUnloaded { module_id: c.u64()? },
            tag::STACK_NODE => {
                let parent = c.u64()?;
                if parent > self.delta.stack_nodes_defined() {
                    return None;
                }
                let frame = match c.u8()? {
                    frame_kind::NATIVE => Frame::Native { address: c.u64()? },
                    frame_kind::PYTHON => Frame::Python {
                        code_id: c.u64()?,
                        instruction_offset: c.i64()?,
                    },
                    frame_kind::PYTHON_ENTRY => Frame::PythonEntry,
                    _ => return None,
                };
                Record::StackNode {
                    id: self.delta.define_stack_node(),
                    parent,
                    frame,
                }
            }
            tag::ALLOC | tag::ALLOC_REUSE => {
                let kind = AllocKind::from_u8(c.u8()?)?;
                let (seq, address) = self.event_address(c, addresses, tag == tag::ALLOC_REUSE, Recent::Frees)?;
                self.delta.allocated(address);
                let thread_id = self.delta.current_thread();
                let size = c.u64()?;
                let stack = self.delta.stack_from_delta(c.i64()?);
                if stack > self.delta.stack_nodes_defined() {
                    return None;
                }
                Record::Alloc(Alloc {
                    seq,
                    thread_id,
                    address,
                    size,
                    stack,
                    kind,
                })
            }
            tag::FREE | tag::FREE_RECENT => {
                let (seq, address) = self.event_address(c, addresses, tag == tag::FREE_RECENT, Recent::Allocs)?;
                self.delta.freed(address);
                let thread_id = self.delta.current_thread();
                Record::Free(Free {
                    seq,
                    thread_id,
                    address,
                })
            }
            tag::PYTHON_CODE => Record::PythonCode(PythonCode {
                id: c.u64()?,
                python_version: u32_of(c.u64()?)?,
                filename: string(c)?,
                qualified_name: string(c)?,
                first_line: u32_of(c.u64()?)?,
                line_table: c.bytes()?.to_vec(),
            }),
            tag::PYTHON_CONFIG => Record::PythonConfig {
                ignores_environment: match c.u8()? {
                    0 => false,
                    1 => true,
                    _ => return None,
                },
            },
            tag::PYTHON_RUNTIME => {
                let python_version = u32_of(c.u64()?)?;
                let eval_loop_start = c.u64()?;
                let eval_loop_size = c.u64()?;
                let flags = c.u64()?;
                Record::PythonRuntime(PythonRuntime {
                    python_version,
                    eval_loop_start,
                    eval_loop_size,
                    frames_recorded: flags & 1 != 0,
                    pythonmalloc_set: flags & 2 != 0,
                    note: string(c)?,
                })
            }
            tag::BLOCK_CLASSES => {
                let count = usize::try_from(c.u64()?).ok()?;
                // Each entry takes at least two bytes: a count beyond that is corruption, and
                // must not size an allocation.
                if count > c.remaining() / 2 {
                    return None;
                }
                let mut entries = Vec::with_capacity(count);
                let mut address = 0u64;
                for _ in 0..count {
                    address = address.wrapping_add(c.i64()? as u64);
                    entries.push(BlockClass {
                        address,
                        class: LeakClass::from_u8(c.u8()?)?,
                    });
                }
                Record::BlockClasses(entries)
            }
            tag::REACHABILITY => Record::Reachability(Reachability {
                outcome: ScanOutcome::from_u8(c.u8()?)?,
                duration_us: c.u64()?,
                blocks: c.u64()?,
                root_bytes: c.u64()?,
                heap_bytes: c.u64()?,
                python_objects: c.u64()?,
                immortal_objects: c.u64()?,
                threads: c.u64()?,
                threads_unknown: c.u64()?,
                note: string(c)?,
            }),
            tag::FORK => Record::Fork(ForkInfo {
                parent_pid: u32::try_from(c.u64()?).ok()?,
                fork_seq: c.u64()?,
                inherited_blocks: c.u64()?,
                inherited_bytes: c.u64()?,
                threads_cut: c.u64()?,
            }),
            tag::STATS => Record::Stats(stats(c)?),
            tag::END => {
                let kind = ExitKind::from_u8(c.u8()?)?;
                let status = match c.u8()? {
                    0 => None,
                    1 => Some(i32::try_from(c.i64()?).ok()?),
                    _ => return None,
                };
                Record::End(End {
                    kind,
                    status,
                    stats: stats(c)?,
                })
            }
            _ => return None,
        };
        Some(Some(record))
    }

    /// An event record's sequence number and address: the address spelled out as a delta in
    /// the address stream, or `by_position` in one of the rings of recent addresses.
    fn event_address(
        &mut self,
        c: &mut Cursor<'_>,
        addresses: &mut Cursor<'_>,
        by_position: bool,
        ring: Recent,
    ) -> Option<(u64, u64)> {
        let seq = self.delta.seq_from_delta(c.i64()?);
        let address = if by_position {
            self.delta.recent(ring).get(c.u8()?)?
        } else {
            self.delta.address_from_delta(addresses.i64()?)
        };
        Some((seq, address))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChunkWriter, Payload, RecordEncoder};

    fn sample_records() -> Vec<Record> {
        vec![
            Record::Process(ProcessInfo {
                pid: 42,
                parent_pid: 1,
                start_time_unix_ns: 1_700_000_000_000_000_000,
                exe: "/usr/bin/python3".into(),
                argv: vec!["python3".into(), "app.py".into()],
                cwd: "/tmp".into(),
                program: "app".into(),
            }),
            Record::Module(Module {
                id: 1,
                path: "/lib/libc.so.6".into(),
                bias: 0x7f00_0000_0000,
                build_id: vec![0xde, 0xad],
                segments: vec![Segment {
                    vaddr: 0,
                    memsz: 0x1000,
                    flags: 5,
                }],
            }),
            Record::StackNode {
                id: 1,
                parent: 0,
                frame: Frame::Native {
                    address: 0x7f00_0000_0100,
                },
            },
            Record::StackNode {
                id: 2,
                parent: 1,
                frame: Frame::Python {
                    code_id: 3,
                    instruction_offset: -2,
                },
            },
            Record::StackNode {
                id: 3,
                parent: 2,
                frame: Frame::PythonEntry,
            },
            Record::PythonRuntime(PythonRuntime {
                python_version: 0x030c01f0,
                eval_loop_start: 0x7f00_0000_2000,
                eval_loop_size: 0x8000,
                frames_recorded: true,
                pythonmalloc_set: true,
                note: String::new(),
            }),
            Record::PythonConfig {
                ignores_environment: true,
            },
            Record::Alloc(Alloc {
                seq: 10,
                thread_id: 42,
                address: 0x5000,
                size: 100,
                stack: 2,
                kind: AllocKind::Calloc,
            }),
            Record::Free(Free {
                seq: 9,
                thread_id: 43,
                address: 0x4000,
            }),
            Record::PythonCode(PythonCode {
                id: 3,
                python_version: 0x030b07f0,
                filename: "app.py".into(),
                qualified_name: "main".into(),
                first_line: 1,
                line_table: vec![1, 2, 3],
            }),
            Record::ModuleUnloaded { module_id: 1 },
            Record::Stats(Stats {
                reentrant_calls: 1,
                producer_waits: 2,
                truncated_stacks: 3,
                slot_locks: true,
            }),
            Record::BlockClasses(vec![
                BlockClass {
                    address: 0x7000_0000_1000,
                    class: LeakClass::DefinitelyLost,
                },
                BlockClass {
                    address: 0x5000,
                    class: LeakClass::PossiblyLost,
                },
            ]),
            Record::Reachability(Reachability {
                outcome: ScanOutcome::Complete,
                duration_us: 1234,
                blocks: 10,
                root_bytes: 1 << 20,
                heap_bytes: 4096,
                python_objects: 3,
                immortal_objects: 4,
                threads: 2,
                threads_unknown: 1,
                note: "n".into(),
            }),
            Record::Fork(ForkInfo {
                parent_pid: 77,
                fork_seq: 1 << 40,
                inherited_blocks: 5,
                inherited_bytes: 500,
                threads_cut: 1,
            }),
            Record::End(End {
                kind: ExitKind::Exec,
                status: Some(-3),
                stats: Stats::default(),
            }),
        ]
    }

    fn encode(records: &[Record], chunk_every: usize) -> Vec<u8> {
        let mut writer = ChunkWriter::new(Vec::new()).unwrap();
        let mut encoder = RecordEncoder::new();
        for (i, record) in records.iter().enumerate() {
            match record {
                Record::Process(p) => encoder.process(p),
                Record::Module(m) => encoder.module(m),
                Record::ModuleUnloaded { module_id } => encoder.module_unloaded(*module_id),
                Record::StackNode { id, parent, frame } => assert_eq!(encoder.stack_node(*parent, *frame), *id),
                Record::Alloc(a) => encoder.alloc(a),
                Record::Free(f) => encoder.free(f),
                Record::PythonCode(p) => encoder.python_code(p),
                Record::PythonRuntime(r) => encoder.python_runtime(r),
                Record::PythonConfig { ignores_environment } => encoder.python_config(*ignores_environment),
                Record::Stats(s) => encoder.stats(s),
                Record::BlockClasses(entries) => encoder.block_classes(entries),
                Record::Reachability(r) => encoder.reachability(r),
                Record::Fork(f) => encoder.fork(f),
                Record::End(e) => encoder.end(e),
            }
            if (i + 1) % chunk_every == 0 {
                writer.write_chunk(&encoder.payload()).unwrap();
                encoder.clear_payload();
            }
        }
        writer.write_chunk(&encoder.payload()).unwrap();
        writer.get_mut().clone()
    }

    fn decode_all(bytes: &[u8]) -> Result<(Vec<Record>, bool), DecodeError> {
        let mut reader = TraceReader::new(bytes)?;
        let mut out = Vec::new();
        while let Some(record) = reader.next_record()? {
            out.push(record);
        }
        Ok((out, reader.is_truncated()))
    }

    #[test]
    fn round_trips_every_record_kind_across_chunk_sizes() {
        let records = sample_records();
        for chunk_every in [1, 2, 3, 100] {
            let (decoded, truncated) = decode_all(&encode(&records, chunk_every)).unwrap();
            assert_eq!(decoded, records);
            assert!(!truncated);
        }
    }

    /// malloc's reuse pattern: blocks freed and handed out again, from two threads, far apart
    /// and close by, so that records name addresses by position and by delta.
    fn churn_records() -> Vec<Record> {
        let mut records = vec![Record::Process(ProcessInfo::default())];
        for id in 1..=3 {
            records.push(Record::StackNode {
                id,
                parent: id - 1,
                frame: Frame::Native { address: 0x1000 * id },
            });
        }
        let mut seq = 0;
        for round in 0..700u64 {
            let thread_id = 7 + (round / 100 % 2) as u32;
            let address = 0x5000_0000 + (round % 300) * 48 + (round / 500) * 0x10_0000;
            seq += 1;
            records.push(Record::Alloc(Alloc {
                seq,
                thread_id,
                address,
                size: 24 + round % 5,
                stack: 1 + round % 3,
                kind: AllocKind::Malloc,
            }));
            if round % 7 != 3 {
                seq += 1;
                let freed = if round % 3 == 0 {
                    address
                } else {
                    address.wrapping_sub(48)
                };
                records.push(Record::Free(Free {
                    seq,
                    thread_id,
                    address: freed,
                }));
            }
        }
        records
    }

    #[test]
    fn addresses_named_by_position_round_trip_and_shorten_the_payload() {
        let records = churn_records();
        for chunk_every in [1, 5, 10_000] {
            let (decoded, _) = decode_all(&encode(&records, chunk_every)).unwrap();
            assert_eq!(decoded, records);
        }
        let mut encoder = RecordEncoder::new();
        let mut positional = 0;
        for record in &records {
            let before = encoder.payload().records().len();
            match record {
                Record::Alloc(a) => encoder.alloc(a),
                Record::Free(f) => encoder.free(f),
                _ => continue,
            }
            let records = encoder.payload().records();
            let tag_at = records[before..]
                .iter()
                .position(|&b| b != tag::THREAD)
                .map(|i| records[before + i]);
            if matches!(tag_at, Some(tag::ALLOC_REUSE | tag::FREE_RECENT)) {
                positional += 1;
            }
        }
        assert!(positional > 500, "{positional} records named an address by position");
    }

    #[test]
    fn a_position_beyond_the_records_seen_is_corruption() {
        let mut encoder = RecordEncoder::new();
        encoder.process(&ProcessInfo::default());
        let mut records = encoder.payload().records().to_vec();
        // A FREE_RECENT (seq delta +1) naming the latest ALLOC, when there is none.
        records.extend_from_slice(&[tag::FREE_RECENT, 2, 0]);
        let mut writer = ChunkWriter::new(Vec::new()).unwrap();
        writer.write_chunk(&Payload::new(&records, &[])).unwrap();
        assert!(matches!(decode_all(writer.get_mut()), Err(DecodeError::Corrupt { .. })));
    }

    #[test]
    fn addresses_travel_apart_and_a_stream_left_over_or_overlong_is_corruption() {
        let mut encoder = RecordEncoder::new();
        let alloc = Alloc {
            seq: 1,
            thread_id: 7,
            address: 0x7f00_1234_5678,
            size: 24,
            stack: 0,
            kind: AllocKind::Malloc,
        };
        encoder.alloc(&alloc);
        let payload = encoder.payload();
        let (records, addresses) = (payload.records().to_vec(), payload.parts()[2].to_vec());
        let mut spelled = Vec::new();
        crate::varint::put_i64(&mut spelled, alloc.address as i64);
        assert_eq!(addresses, spelled);
        let chunk = |records: &[u8], addresses: &[u8]| {
            let mut writer = ChunkWriter::new(Vec::new()).unwrap();
            writer.write_chunk(&Payload::new(records, addresses)).unwrap();
            std::mem::take(writer.get_mut())
        };
        let (decoded, _) = decode_all(&chunk(&records, &addresses)).unwrap();
        assert_eq!(decoded, [Record::Alloc(alloc)]);
        let left_over = [addresses.as_slice(), &[2]].concat();
        assert!(matches!(
            decode_all(&chunk(&records, &left_over)),
            Err(DecodeError::Corrupt { .. })
        ));
        assert!(matches!(
            decode_all(&chunk(&records, &addresses[..addresses.len() - 1])),
            Err(DecodeError::Corrupt { .. })
        ));
        let mut writer = ChunkWriter::new(Vec::new()).unwrap();
        writer.write_raw_chunk(&[&[200], &records]).unwrap();
        assert!(matches!(decode_all(writer.get_mut()), Err(DecodeError::Corrupt { .. })));
    }

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

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic fuzz loop; the dedicated fuzz target explores further.
        let base = encode(&sample_records(), 3);
        let mut state: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..3000 {
            let mut bytes = base.clone();
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state as usize) % bytes.len();
                bytes[at] = (state >> 32) as u8;
            }
            let _ = decode_all(&bytes);
        }
    }
}
