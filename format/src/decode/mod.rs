//! Reading traces. [`TraceReader`] checks the header, then yields records chunk by chunk.
//! A file that stops inside a chunk is not an error: the reader yields every record of the
//! complete chunks and reports [`TraceReader::is_truncated`]. Anything else that does not
//! match `SPEC.md` is a [`DecodeError`]. Must never panic or allocate more than
//! [`MAX_CHUNK_BYTES`](crate::MAX_CHUNK_BYTES) per chunk, whatever the input.
//!
//! The reader mirrors the writer's two halves: `chunks.rs` ([`ChunkReader`], the mirror of
//! [`ChunkWriter`](crate::ChunkWriter)) reads the framing, and `records.rs`
//! ([`RecordDecoder`], the mirror of [`RecordEncoder`](crate::RecordEncoder)) decodes the
//! payloads; [`TraceReader`] drives both.

mod chunks;
mod error;
mod records;

use std::io::Read;

use crate::record::Record;
use crate::varint::Cursor;
use chunks::ChunkReader;
pub use error::DecodeError;
use records::RecordDecoder;

/// Decodes a trace from any byte source.
pub struct TraceReader<R: Read> {
    chunks: ChunkReader<R>,
    records: RecordDecoder,
    /// No chunk is read after this: the END record was seen (nothing may follow it), or the
    /// readable data ran out.
    finished: bool,
}

impl<R: Read> TraceReader<R> {
    /// Reads and checks the header.
    pub fn new(input: R) -> Result<Self, DecodeError> {
        Ok(TraceReader {
            chunks: ChunkReader::new(input)?,
            records: RecordDecoder::default(),
            finished: false,
        })
    }

    /// True once the reader has seen the file stop inside a chunk.
    pub fn is_truncated(&self) -> bool {
        self.chunks.is_truncated()
    }

    /// Bytes of the file consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.chunks.bytes_read()
    }

    /// The next record, or `None` at the end of the readable data.
    pub fn next_record(&mut self) -> Result<Option<Record>, DecodeError> {
        // One record per call, straight from the chunk's payload: records are 112-byte values,
        // and queueing a whole chunk's of them cost a fifth of a report's time.
        loop {
            let (records, addresses) = self.chunks.unread();
            if !records.is_empty() {
                let record_start = self.chunks.record_position();
                let mut records = Cursor::new(records);
                let mut addresses = Cursor::new(addresses);
                let decoded = self.records.decode(&mut records, &mut addresses);
                self.chunks.consume(records.position(), addresses.position());
                match decoded {
                    Some(None) => continue,
                    Some(Some(record)) => {
                        if let Record::End(_) = record {
                            self.finished = true;
                        }
                        return Ok(Some(record));
                    }
                    None => {
                        return Err(self
                            .chunks
                            .corrupt(format!("malformed record at payload byte {record_start}")))
                    }
                }
            }
            if !addresses.is_empty() {
                return Err(self
                    .chunks
                    .corrupt("the address stream holds more than the records refer to"));
            }
            if self.finished {
                return Ok(None);
            }
            if !self.chunks.next_chunk()? {
                self.finished = true;
            }
        }
    }
}

/// Traces for the tests of this module and its two halves.
#[cfg(test)]
mod testing {
    use super::*;
    use crate::record::*;
    use crate::{ChunkWriter, RecordEncoder};

    pub fn sample_records() -> Vec<Record> {
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
            Record::Finalizing { thread_id: 4321 },
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

    pub fn encode(records: &[Record], chunk_every: usize) -> Vec<u8> {
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
                Record::Finalizing { thread_id } => encoder.finalizing(*thread_id),
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

    pub fn decode_all(bytes: &[u8]) -> Result<(Vec<Record>, bool), DecodeError> {
        let mut reader = TraceReader::new(bytes)?;
        let mut out = Vec::new();
        while let Some(record) = reader.next_record()? {
            out.push(record);
        }
        Ok((out, reader.is_truncated()))
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{decode_all, encode, sample_records};
    use super::*;
    use crate::record::*;
    use crate::{ChunkWriter, Payload, RecordEncoder};

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
