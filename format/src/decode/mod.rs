//! Reading traces. [`TraceReader`] checks the header, then yields records chunk by chunk.
//! Damage does not stop it: a chunk that does not validate, or that holds a malformed
//! record, is skipped and noted as [`Damage`], and reading resumes at the next chunk that
//! validates, which is decodable on its own. A file that stops inside its last chunk is not
//! an error either: the reader yields every record of the complete chunks and reports
//! [`TraceReader::is_truncated`]. Only a header it cannot read (or the input failing) is a
//! [`DecodeError`]. Must never panic or allocate more than
//! [`MAX_CHUNK_BYTES`](crate::MAX_CHUNK_BYTES) per buffer, whatever the input.
//!
//! The reader mirrors the writer's two halves: `chunks.rs` ([`ChunkReader`], the mirror of
//! [`ChunkWriter`](crate::ChunkWriter)) reads the framing, and `records.rs`
//! ([`RecordDecoder`], the mirror of [`RecordEncoder`](crate::RecordEncoder)) decodes the
//! payloads; [`TraceReader`] drives both. `inflate_ahead.rs` inflates the chunk after the
//! current one on a helper thread.

mod chunks;
mod error;
mod inflate_ahead;
mod records;

use std::io::Read;

use crate::record::Record;
use crate::varint::Cursor;
use chunks::{ChunkReader, Expected};
pub use error::{Damage, DecodeError};
use records::RecordDecoder;

/// Decodes a trace from any byte source.
pub struct TraceReader<R: Read> {
    chunks: ChunkReader<R>,
    records: RecordDecoder,
    /// No chunk is read after this: the END record was seen (nothing may follow it), or the
    /// readable data ran out.
    finished: bool,
    /// The current chunk follows one that was read whole, so its prologue must state the
    /// running stack node count exactly.
    continuous: bool,
    damage: Vec<Damage>,
    /// The prologue time of the chunk the last record returned came from.
    chunk_time_ns: Option<u64>,
}

impl<R: Read> TraceReader<R> {
    /// Reads and checks the header.
    pub fn new(input: R) -> Result<Self, DecodeError> {
        Ok(TraceReader {
            chunks: ChunkReader::new(input)?,
            records: RecordDecoder::default(),
            finished: false,
            continuous: true,
            damage: Vec::new(),
            chunk_time_ns: None,
        })
    }

    /// True once the reader has seen the file stop inside its last chunk.
    pub fn is_truncated(&self) -> bool {
        self.chunks.is_truncated()
    }

    /// The regions skipped so far, in file order; adjacent ones are merged.
    pub fn damage(&self) -> &[Damage] {
        &self.damage
    }

    /// Nanoseconds from the trace's first chunk to the writing of the chunk that the record
    /// last returned came from (`None` before the first record).
    pub fn chunk_time_ns(&self) -> Option<u64> {
        self.chunk_time_ns
    }

    /// Bytes of the file consumed so far.
    pub fn bytes_read(&self) -> u64 {
        self.chunks.bytes_read()
    }

    fn note_damage(&mut self, damage: Damage) {
        match self.damage.last_mut() {
            Some(last) if last.offset + last.bytes == damage.offset => last.bytes += damage.bytes,
            _ => self.damage.push(damage),
        }
    }

    /// The next record, or `None` at the end of the readable data. Fails only when the input
    /// does.
    pub fn next_record(&mut self) -> Result<Option<Record>, DecodeError> {
        self.next_record_within(u64::MAX)
    }

    /// As [`TraceReader::next_record`], reading no chunk that starts at byte `limit` or
    /// later: `None` there, and reading may go on later with a higher limit. (A forked
    /// child's inheritance is its parent's trace up to the byte where the fork left it.)
    pub fn next_record_within(&mut self, limit: u64) -> Result<Option<Record>, DecodeError> {
        // One record per call, straight from the chunk's payload: queueing a whole chunk's
        // records (then 112-byte values) cost a fifth of a report's time.
        loop {
            if self.finished {
                return Ok(None);
            }
            let (records, addresses) = self.chunks.unread();
            if !records.is_empty() {
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
                        self.chunk_time_ns = Some(self.chunks.prologue().time_ns);
                        return Ok(Some(record));
                    }
                    None => {
                        let damage = self.chunks.abandon();
                        self.note_damage(damage);
                        self.continuous = false;
                        continue;
                    }
                }
            }
            if !addresses.is_empty() {
                // Addresses the records do not use: the records part lost some of its own.
                let damage = self.chunks.abandon();
                self.note_damage(damage);
                self.continuous = false;
                continue;
            }
            if self.chunks.bytes_read() >= limit {
                return Ok(None);
            }
            let next = self.chunks.next_chunk(Expected {
                stack_nodes: self.records.stack_nodes_defined(),
                exact: self.continuous,
            })?;
            if let Some(damage) = next.damage {
                self.note_damage(damage);
            }
            if next.loaded {
                self.records.start_chunk(self.chunks.prologue().stack_nodes_before);
                self.continuous = true;
            } else {
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
            Record::Process(Box::new(ProcessInfo {
                pid: 42,
                parent_pid: 1,
                start_time_unix_ns: 1_700_000_000_000_000_000,
                exe: "/usr/bin/python3".into(),
                argv: vec!["python3".into(), "app.py".into()],
                cwd: "/tmp".into(),
                program: "app".into(),
            })),
            Record::Module(Box::new(Module {
                id: 1,
                path: "/lib/libc.so.6".into(),
                bias: 0x7f00_0000_0000,
                build_id: vec![0xde, 0xad],
                segments: vec![Segment {
                    vaddr: 0,
                    memsz: 0x1000,
                    flags: 5,
                }],
            })),
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
            Record::PythonRuntime(Box::new(PythonRuntime {
                python_version: 0x030c01f0,
                eval_loop_start: 0x7f00_0000_2000,
                eval_loop_size: 0x8000,
                frames_recorded: true,
                pythonmalloc_set: true,
                note: String::new(),
            })),
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
            Record::PythonCode(Box::new(PythonCode {
                id: 3,
                python_version: 0x030b07f0,
                filename: "app.py".into(),
                qualified_name: "main".into(),
                first_line: 1,
                line_table: vec![1, 2, 3],
            })),
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
            Record::Reachability(Box::new(Reachability {
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
                ..Reachability::default()
            })),
            Record::InheritanceLeft {
                unjudged: 2_500_000,
                scanned: 1200,
            },
            Record::Holders(vec![
                Holder::Python("app._RESULTS".into()),
                Holder::RootWord(0x7f00_0000_1000),
                Holder::Register,
            ]),
            Record::BlockHolders(vec![
                BlockHolder {
                    address: 0x5000,
                    holder: 1,
                    object_type: 2,
                    via: 0x4000,
                    step: 1,
                },
                BlockHolder {
                    address: 0x4000,
                    holder: 3,
                    object_type: 0,
                    via: 0,
                    step: 0,
                },
            ]),
            Record::ObjectTypes(vec!["dict".into(), "app.Item".into()]),
            Record::StepNames(vec![".sessions".into(), "['user-7']".into()]),
            Record::LostBlocks(vec![
                LostBlock {
                    address: 0x4000,
                    root: 0x9000,
                    object_type: 1,
                    refcount: 1,
                    references: 1,
                },
                LostBlock {
                    address: 0x9000,
                    root: 0x9000,
                    object_type: 2,
                    refcount: 3,
                    references: 1,
                },
            ]),
            Record::Mark(Box::new(Mark {
                seq: 1 << 33,
                time_ns: 123_456_789,
                thread_id: 42,
                label: "epoch 2".into(),
            })),
            Record::Fork(Box::new(ForkInfo {
                parent_pid: 77,
                fork_seq: 1 << 40,
                inherited_blocks: 5,
                inherited_bytes: 500,
                threads_cut: 1,
                parent_trace: "/tmp/libleak.app.76.trace".into(),
                parent_trace_bytes: 123_456,
                parent_start_time_unix_ns: 1 << 60,
            })),
            Record::End(Box::new(End {
                kind: ExitKind::Exec,
                status: Some(-3),
                stats: Stats::default(),
            })),
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
                Record::Mark(m) => encoder.mark(m),
                Record::Holders(holders) => encoder.holders(holders),
                Record::BlockHolders(entries) => encoder.block_holders(entries),
                Record::ObjectTypes(names) => encoder.object_types(names),
                Record::StepNames(names) => encoder.step_names(names),
                Record::LostBlocks(entries) => encoder.lost_blocks(entries),
                Record::InheritanceLeft { unjudged, scanned } => encoder.inheritance_left(*unjudged, *scanned),
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

    /// What a reader made of a whole file.
    #[derive(Debug)]
    pub struct Read {
        pub records: Vec<Record>,
        pub truncated: bool,
        pub damage: Vec<Damage>,
    }

    pub fn decode_all(bytes: &[u8]) -> Result<Read, DecodeError> {
        let mut reader = TraceReader::new(bytes)?;
        let mut records = Vec::new();
        while let Some(record) = reader.next_record()? {
            records.push(record);
        }
        Ok(Read {
            records,
            truncated: reader.is_truncated(),
            damage: reader.damage().to_vec(),
        })
    }

    /// The file offsets of the chunks of a well-formed trace.
    pub fn chunk_offsets(bytes: &[u8]) -> Vec<usize> {
        let mut offsets = Vec::new();
        let mut at = crate::HEADER_LEN;
        while at + crate::CHUNK_FRAME_LEN <= bytes.len() {
            offsets.push(at);
            let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
            at += crate::CHUNK_FRAME_LEN + len;
        }
        offsets
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{chunk_offsets, decode_all, encode, sample_records};
    use super::*;
    use crate::record::*;
    use crate::{ChunkWriter, Payload, RecordEncoder, CHUNK_FRAME_LEN, HEADER_LEN};

    fn one_chunk(records: &[u8], addresses: &[u8]) -> Vec<u8> {
        let mut writer = ChunkWriter::new(Vec::new()).unwrap();
        writer.write_chunk(&Payload::new(records, addresses)).unwrap();
        std::mem::take(writer.get_mut())
    }

    #[test]
    fn addresses_travel_apart_and_a_stream_left_over_or_overlong_is_damage() {
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
        let (records, addresses) = (payload.records().to_vec(), payload.addresses().to_vec());
        let mut spelled = Vec::new();
        crate::varint::put_i64(&mut spelled, alloc.address as i64);
        assert_eq!(addresses, spelled);
        let read = decode_all(&one_chunk(&records, &addresses)).unwrap();
        assert_eq!(read.records, [Record::Alloc(alloc)]);
        assert!(read.damage.is_empty());
        let left_over = [addresses.as_slice(), &[2]].concat();
        let read = decode_all(&one_chunk(&records, &left_over)).unwrap();
        assert_eq!(read.damage.len(), 1);
        let read = decode_all(&one_chunk(&records, &addresses[..addresses.len() - 1])).unwrap();
        assert!(read.records.is_empty());
        assert_eq!(read.damage.len(), 1);
        // A records length past the payload's end.
        let mut writer = ChunkWriter::new(Vec::new()).unwrap();
        writer.write_raw_chunk(&[&[0, 0, 200], &records]).unwrap();
        let read = decode_all(writer.get_mut()).unwrap();
        assert!(read.records.is_empty());
        assert_eq!(read.damage.len(), 1);
    }

    /// Many small chunks, with stack nodes spread over them.
    fn several_chunks() -> (Vec<Record>, Vec<u8>) {
        let mut records = vec![Record::Process(Box::default())];
        for i in 0..60u64 {
            records.push(Record::StackNode {
                id: i + 1,
                parent: i,
                frame: Frame::Native { address: 0x1000 + i },
            });
            records.push(Record::Alloc(Alloc {
                seq: i,
                thread_id: 3,
                address: 0x5000 + i * 64,
                size: 10 + i,
                stack: i + 1,
                kind: AllocKind::Malloc,
            }));
        }
        let bytes = encode(&records, 6);
        (records, bytes)
    }

    /// A forked child's inheritance is its parent's trace up to a chunk boundary, read on
    /// later for the next child: reading stops before the chunk at the limit and goes on.
    #[test]
    fn reading_within_a_limit_stops_at_its_chunk_boundary_and_goes_on() {
        let (records, bytes) = several_chunks();
        let offsets = chunk_offsets(&bytes);
        let mut reader = TraceReader::new(bytes.as_slice()).unwrap();
        let mut read = Vec::new();
        for &limit in &offsets[1..] {
            while let Some(record) = reader.next_record_within(limit as u64).unwrap() {
                read.push(record);
            }
            assert_eq!(reader.bytes_read(), limit as u64);
        }
        let before_last = read.len();
        assert!(before_last > 0 && before_last < records.len());
        while let Some(record) = reader.next_record().unwrap() {
            read.push(record);
        }
        assert_eq!(read, records);
        assert!(reader.damage().is_empty());
    }

    #[test]
    fn damage_in_a_middle_chunk_loses_that_chunk_only() {
        let (records, bytes) = several_chunks();
        let chunks = chunk_offsets(&bytes);
        assert!(chunks.len() >= 10);
        let (from, to) = (chunks[4], chunks[5]);
        for at in from..to {
            for damage in [0xffu8, 0x01] {
                let mut mutant = bytes.clone();
                mutant[at] ^= damage;
                let read = decode_all(&mutant).unwrap();
                assert!(!read.truncated, "byte {at}");
                assert_eq!(
                    read.damage,
                    [Damage {
                        offset: from as u64,
                        bytes: (to - from) as u64
                    }],
                    "byte {at}"
                );
                assert_eq!(read.records[..24], records[..24], "byte {at}");
                assert_eq!(read.records[24..], records[30..], "byte {at}");
            }
        }
    }

    #[test]
    fn nodes_defined_in_a_lost_chunk_may_be_named_after_it() {
        let (records, bytes) = several_chunks();
        let chunks = chunk_offsets(&bytes);
        let mut mutant = bytes.clone();
        mutant[chunks[1] + CHUNK_FRAME_LEN + 2] ^= 0x40;
        let read = decode_all(&mutant).unwrap();
        assert_eq!(read.damage.len(), 1);
        // The third chunk's first node has the id it had, and its parent was lost.
        assert_eq!(read.records[6..], records[12..]);
    }

    #[test]
    fn a_cut_at_the_end_is_truncation_and_a_cut_frame_in_the_middle_is_damage() {
        let (records, bytes) = several_chunks();
        let chunks = chunk_offsets(&bytes);
        let last = *chunks.last().unwrap();
        let read = decode_all(&bytes[..last + 20]).unwrap();
        assert!(read.truncated && read.damage.is_empty());
        assert_eq!(read.records, records[..records.len() - 1]);
        // A compressed length grown past the end of the file, in the middle of it.
        let mut mutant = bytes.clone();
        mutant[chunks[3] + 6] = 0x10;
        let read = decode_all(&mutant).unwrap();
        assert!(!read.truncated);
        assert_eq!(read.damage[0].offset, chunks[3] as u64);
        assert_eq!(read.records.len(), records.len() - 6);
        // Grown, but still inside the file: the next chunk must not be swallowed.
        let mut mutant = bytes.clone();
        mutant[chunks[3] + 4] = mutant[chunks[3] + 4].wrapping_add(40);
        let read = decode_all(&mutant).unwrap();
        assert_eq!(read.damage[0].offset, chunks[3] as u64);
        assert_eq!(read.records.len(), records.len() - 6);
        // A damaged chunk just before a cut one: both show.
        let mut mutant = bytes[..last + 20].to_vec();
        let before = chunks[chunks.len() - 2];
        mutant[before + CHUNK_FRAME_LEN + 1] ^= 0xff;
        let read = decode_all(&mutant).unwrap();
        assert!(read.truncated);
        assert_eq!(
            read.damage,
            [Damage {
                offset: before as u64,
                bytes: (last - before) as u64
            }]
        );
        // Damage running to the end of the file.
        let mut mutant = bytes.clone();
        mutant[last + CHUNK_FRAME_LEN + 1] ^= 0xff;
        let read = decode_all(&mutant).unwrap();
        assert!(!read.truncated);
        assert_eq!(
            read.damage,
            [Damage {
                offset: last as u64,
                bytes: (bytes.len() - last) as u64
            }]
        );
    }

    #[test]
    fn a_prologue_that_disagrees_with_the_running_count_is_damage() {
        let mut encoder = RecordEncoder::new();
        encoder.stack_node(0, Frame::PythonEntry);
        let mut writer = ChunkWriter::new(Vec::new()).unwrap();
        writer.write_chunk(&encoder.payload()).unwrap();
        encoder.clear_payload();
        encoder.stack_node(1, Frame::PythonEntry);
        let good = encoder.payload();
        let (records, addresses) = (good.records().to_vec(), good.addresses().to_vec());
        writer
            .write_chunk(&Payload::new(&records, &addresses).with_stack_nodes_before(1))
            .unwrap();
        writer
            .write_chunk(&Payload::new(&records, &addresses).with_stack_nodes_before(5))
            .unwrap();
        let read = decode_all(writer.get_mut()).unwrap();
        assert_eq!(read.records.len(), 2);
        assert_eq!(read.damage.len(), 1);
    }

    #[test]
    fn chunk_time_is_that_of_the_last_record_returned() {
        let mut encoder = RecordEncoder::new();
        let mut writer = ChunkWriter::new(Vec::new()).unwrap();
        for (i, time) in [0u64, 5_000, 1 << 40].into_iter().enumerate() {
            encoder.module_unloaded(i as u64);
            encoder.module_unloaded(i as u64 + 10);
            writer.write_chunk_at(&encoder.payload(), time).unwrap();
            encoder.clear_payload();
        }
        let mut reader = TraceReader::new(writer.get_mut().as_slice()).unwrap();
        assert_eq!(reader.chunk_time_ns(), None);
        let mut times = Vec::new();
        while reader.next_record().unwrap().is_some() {
            times.push(reader.chunk_time_ns().unwrap());
        }
        assert_eq!(times, [0, 0, 5_000, 5_000, 1 << 40, 1 << 40]);
        // The writer's own clock: the first chunk is at 0.
        let mut writer = ChunkWriter::new(Vec::new()).unwrap();
        encoder.module_unloaded(1);
        writer.write_chunk(&encoder.payload()).unwrap();
        let mut reader = TraceReader::new(writer.get_mut().as_slice()).unwrap();
        reader.next_record().unwrap();
        assert_eq!(reader.chunk_time_ns(), Some(0));
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
            if let Ok(read) = decode_all(&bytes) {
                let skipped: u64 = read.damage.iter().map(|d| d.bytes).sum();
                assert!(skipped <= (bytes.len() - HEADER_LEN) as u64);
            }
        }
    }
}
