//! Decoding records, the mirror of [`RecordEncoder`](crate::RecordEncoder): [`RecordDecoder`]
//! turns a chunk's records part and address stream into [`Record`]s, one at a time, keeping
//! the [`DeltaState`] from record to record (and the stack node count from chunk to chunk).
//!
//! Must never read the file or know how chunks are framed (that is `chunks.rs`), never size an
//! allocation from a count it has not checked against the bytes left, and never panic: a
//! record that does not match `SPEC.md` is `None`.

use crate::delta::{DeltaState, Recent};
use crate::record::*;
use crate::varint::Cursor;

/// Decodes the records of successive chunks, in file order.
#[derive(Default)]
pub(super) struct RecordDecoder {
    delta: DeltaState,
}

impl RecordDecoder {
    /// A new chunk starts, after `stack_nodes_before` stack nodes.
    pub fn start_chunk(&mut self, stack_nodes_before: u64) {
        self.delta.start_chunk(stack_nodes_before);
    }

    /// The highest stack node id defined so far.
    pub fn stack_nodes_defined(&self) -> u64 {
        self.delta.stack_nodes_defined()
    }

    /// The record at the start of `c`, whose address (if spelled out) is at the start of
    /// `addresses`; both cursors move past what it used. `Some(None)` for a record that only
    /// changes the decoder's state (THREAD), `None` for a malformed one.
    // Inlined into its one caller, TraceReader::next_record_within, so that the record is
    // built in the slot that returns it: returned from here, it was copied there, and the
    // copy's wide loads stalled on the narrow stores that had just built it (store
    // forwarding), once per record.
    #[inline(always)]
    pub fn decode(&mut self, c: &mut Cursor<'_>, addresses: &mut Cursor<'_>) -> Option<Option<Record>> {
        fn string(c: &mut Cursor<'_>) -> Option<String> {
            Some(String::from_utf8_lossy(c.bytes()?).into_owned())
        }
        fn u32_of(value: u64) -> Option<u32> {
            u32::try_from(value).ok()
        }
        /// A count, then that many strings.
        fn names(c: &mut Cursor<'_>) -> Option<Vec<String>> {
            let count = usize::try_from(c.u64()?).ok()?;
            // Each name takes at least its length byte.
            if count > c.remaining() {
                return None;
            }
            let mut names = Vec::with_capacity(count);
            for _ in 0..count {
                names.push(string(c)?);
            }
            Some(names)
        }
        /// A count, then per entry an address (a delta from the previous entry's, the first
        /// from 0) and what `rest` reads.
        fn address_entries<T>(
            c: &mut Cursor<'_>,
            mut rest: impl FnMut(&mut Cursor<'_>, u64) -> Option<T>,
        ) -> Option<Vec<T>> {
            let count = usize::try_from(c.u64()?).ok()?;
            // Each entry takes at least two bytes: a count beyond that is corruption, and must
            // not size an allocation.
            if count > c.remaining() / 2 {
                return None;
            }
            let mut entries = Vec::with_capacity(count);
            let mut address = 0u64;
            for _ in 0..count {
                address = address.wrapping_add(c.i64()? as u64);
                entries.push(rest(c, address)?);
            }
            Some(entries)
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
                Record::Process(Box::new(ProcessInfo {
                    pid,
                    parent_pid,
                    start_time_unix_ns,
                    exe,
                    argv,
                    cwd,
                    program,
                }))
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
                Record::Module(Box::new(Module {
                    id,
                    path,
                    bias,
                    build_id,
                    segments,
                }))
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
            tag::PYTHON_CODE => Record::PythonCode(Box::new(PythonCode {
                id: c.u64()?,
                python_version: u32_of(c.u64()?)?,
                filename: string(c)?,
                qualified_name: string(c)?,
                first_line: u32_of(c.u64()?)?,
                line_table: c.bytes()?.to_vec(),
            })),
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
                Record::PythonRuntime(Box::new(PythonRuntime {
                    python_version,
                    eval_loop_start,
                    eval_loop_size,
                    frames_recorded: flags & 1 != 0,
                    pythonmalloc_set: flags & 2 != 0,
                    note: string(c)?,
                }))
            }
            tag::FINALIZING => Record::Finalizing {
                thread_id: u32_of(c.u64()?)?,
            },
            tag::BLOCK_CLASSES => Record::BlockClasses(address_entries(c, |c, address| {
                Some(BlockClass {
                    address,
                    class: LeakClass::from_u8(c.u8()?)?,
                })
            })?),
            tag::REACHABILITY => Record::Reachability(Box::new(Reachability {
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
                ..Reachability::default()
            })),
            tag::INHERITANCE_LEFT => Record::InheritanceLeft {
                unjudged: c.u64()?,
                scanned: c.u64()?,
            },
            tag::FORK => Record::Fork(Box::new(ForkInfo {
                parent_pid: u32::try_from(c.u64()?).ok()?,
                fork_seq: c.u64()?,
                inherited_blocks: c.u64()?,
                inherited_bytes: c.u64()?,
                threads_cut: c.u64()?,
                parent_trace: string(c)?,
                parent_trace_bytes: c.u64()?,
                parent_start_time_unix_ns: c.u64()?,
            })),
            tag::STATS => Record::Stats(stats(c)?),
            tag::HOLDERS => {
                let count = usize::try_from(c.u64()?).ok()?;
                // Each holder takes at least one byte.
                if count > c.remaining() {
                    return None;
                }
                let mut holders = Vec::with_capacity(count);
                for _ in 0..count {
                    holders.push(match c.u8()? {
                        holder_kind::PYTHON => Holder::Python(string(c)?),
                        holder_kind::ROOT_WORD => Holder::RootWord(c.u64()?),
                        holder_kind::REGISTER => Holder::Register,
                        _ => return None,
                    });
                }
                Record::Holders(holders)
            }
            tag::BLOCK_HOLDERS => Record::BlockHolders(address_entries(c, |c, address| {
                Some(BlockHolder {
                    address,
                    holder: u32_of(c.u64()?)?,
                    object_type: u32_of(c.u64()?)?,
                    via: match c.i64()? {
                        0 => 0,
                        delta => address.wrapping_add(delta as u64),
                    },
                    step: u32_of(c.u64()?)?,
                })
            })?),
            tag::LOST_BLOCKS => Record::LostBlocks(address_entries(c, |c, address| {
                Some(LostBlock {
                    address,
                    root: address.wrapping_add(c.i64()? as u64),
                    object_type: u32_of(c.u64()?)?,
                    refcount: c.u64()?,
                    references: c.u64()?,
                })
            })?),
            tag::OBJECT_TYPES => Record::ObjectTypes(names(c)?),
            tag::STEP_NAMES => Record::StepNames(names(c)?),
            tag::MARK => Record::Mark(Box::new(Mark {
                seq: c.u64()?,
                time_ns: c.u64()?,
                thread_id: u32_of(c.u64()?)?,
                label: string(c)?,
            })),
            tag::END => {
                let kind = ExitKind::from_u8(c.u8()?)?;
                let status = match c.u8()? {
                    0 => None,
                    1 => Some(i32::try_from(c.i64()?).ok()?),
                    _ => return None,
                };
                Record::End(Box::new(End {
                    kind,
                    status,
                    stats: stats(c)?,
                }))
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
    use super::super::testing::{chunk_offsets, decode_all, encode, sample_records};
    use super::super::Damage;
    use crate::record::*;
    use crate::{ChunkWriter, Payload, RecordEncoder, HEADER_LEN};

    #[test]
    fn round_trips_every_record_kind_across_chunk_sizes() {
        let records = sample_records();
        for chunk_every in [1, 2, 3, 100] {
            let read = decode_all(&encode(&records, chunk_every)).unwrap();
            assert_eq!(read.records, records);
            assert!(!read.truncated && read.damage.is_empty());
        }
    }

    /// malloc's reuse pattern: blocks freed and handed out again, from two threads, far apart
    /// and close by, so that records name addresses by position and by delta.
    fn churn_records() -> Vec<Record> {
        let mut records = vec![Record::Process(Box::default())];
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
            let read = decode_all(&encode(&records, chunk_every)).unwrap();
            assert_eq!(read.records, records);
            assert!(read.damage.is_empty());
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
    fn a_position_beyond_the_records_seen_is_damage() {
        let mut encoder = RecordEncoder::new();
        encoder.process(&ProcessInfo::default());
        let mut records = encoder.payload().records().to_vec();
        // A FREE_RECENT (seq delta +1) naming the latest ALLOC, when there is none.
        records.extend_from_slice(&[tag::FREE_RECENT, 2, 0]);
        let mut writer = ChunkWriter::new(Vec::new()).unwrap();
        writer.write_chunk(&Payload::new(&records, &[])).unwrap();
        let read = decode_all(writer.get_mut()).unwrap();
        assert_eq!(read.records, [Record::Process(Box::default())], "kept: the CRC matched");
        assert_eq!(
            read.damage,
            [Damage {
                offset: HEADER_LEN as u64,
                bytes: (writer.get_mut().len() - HEADER_LEN) as u64
            }]
        );
    }

    /// Positions and deltas never reach into the chunk before: each chunk decodes alone.
    #[test]
    fn each_chunk_starts_from_the_initial_state() {
        let records = churn_records();
        let bytes = encode(&records, 50);
        let whole = decode_all(&bytes).unwrap().records;
        let chunks = chunk_offsets(&bytes);
        assert!(chunks.len() > 10);
        // Drop the third chunk's frame sync: the records of every other chunk survive.
        let mut damaged = bytes.clone();
        damaged[chunks[2]] ^= 0xff;
        let read = decode_all(&damaged).unwrap();
        assert_eq!(read.damage.len(), 1);
        assert_eq!(read.damage[0].offset, chunks[2] as u64);
        assert_eq!(read.damage[0].bytes, (chunks[3] - chunks[2]) as u64);
        assert_eq!(read.records.len(), whole.len() - 50);
        assert_eq!(read.records[..100], whole[..100]);
        assert_eq!(read.records[100..], whole[150..]);
    }
}
