//! Writing traces: [`RecordEncoder`] turns records into payload bytes, [`ChunkWriter`] frames
//! and compresses payloads into a file. The interposer's writer thread is the only user; it
//! must never be called from an allocation hook.

use std::io::{self, Write};
use std::time::Instant;

use flate2::{Compress, Compression, FlushCompress, Status};

use crate::delta::{DeltaState, Recent};
use crate::recent::Finder;
use crate::record::{
    frame_kind, holder_kind, tag, Alloc, BlockClass, BlockHolder, End, ForkInfo, Frame, Free, Holder, LostBlock, Mark,
    Module, ProcessInfo, PythonCode, PythonRuntime, Reachability, Stats,
};
use crate::varint::{put_bytes, put_i64, put_u64, put_u64_into, MAX_VARINT_BYTES};
use crate::{CHUNK_FRAME_LEN, CHUNK_SYNC, FORMAT_VERSION, HEADER_LEN, MAGIC};

/// zlib-rs at level 2: 4.5 % smaller than miniz_oxide's level 1 for about the same writer
/// time (level 1 of zlib-rs is a faster, looser algorithm: 16 % larger).
const DEFLATE_LEVEL: u32 = 2;

/// Encodes records into an uncompressed payload. Keeps the [`DeltaState`] that the decoder
/// mirrors; each payload starts from the state a chunk starts in, so that a reader can
/// decode it without the chunks before it.
#[derive(Default)]
pub struct RecordEncoder {
    /// Records, except the address fields of ALLOC and FREE.
    payload: Vec<u8>,
    /// Those address fields, in record order: the payload's address stream. Heap addresses
    /// are close to random bytes; interleaved with the records they kept deflate from
    /// matching the records' repetitive bytes (apart: 23 % smaller traces).
    addresses: Vec<u8>,
    delta: DeltaState,
    /// Where addresses sit in `delta`'s rings of recent allocations and frees.
    alloc_finder: Finder,
    free_finder: Finder,
    /// Stack nodes defined before this payload: its prologue's `stack_nodes_before`.
    stack_nodes_before: u64,
}

impl RecordEncoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes encoded since the last [`RecordEncoder::clear_payload`].
    pub fn pending_bytes(&self) -> usize {
        self.payload.len() + self.addresses.len()
    }

    /// The payload encoded since the last [`RecordEncoder::clear_payload`], in the pieces
    /// [`ChunkWriter::write_chunk`] takes.
    pub fn payload(&self) -> Payload<'_> {
        Payload::new(&self.payload, &self.addresses).with_stack_nodes_before(self.stack_nodes_before)
    }

    /// Starts a new payload (after it was written as a chunk), from the state a chunk starts
    /// in: the next records spell their thread and deltas out again. Measured against
    /// version 7 (state across chunks): +0.03 % on a C program's trace (2 M events in 25
    /// chunks), nothing beyond the 0.1 % run-to-run noise on Python ones (47 chunks of
    /// 100 ms); in exchange every chunk reads on its own after damage to those before it.
    pub fn clear_payload(&mut self) {
        self.payload.clear();
        self.addresses.clear();
        self.stack_nodes_before = self.delta.stack_nodes_defined();
        self.delta.start_chunk(self.stack_nodes_before);
        self.alloc_finder.clear();
        self.free_finder.clear();
    }

    pub fn process(&mut self, info: &ProcessInfo) {
        let out = &mut self.payload;
        out.push(tag::PROCESS);
        put_u64(out, info.pid.into());
        put_u64(out, info.parent_pid.into());
        put_u64(out, info.start_time_unix_ns);
        put_bytes(out, info.exe.as_bytes());
        put_u64(out, info.argv.len() as u64);
        for arg in &info.argv {
            put_bytes(out, arg.as_bytes());
        }
        put_bytes(out, info.cwd.as_bytes());
        put_bytes(out, info.program.as_bytes());
    }

    pub fn module(&mut self, module: &Module) {
        let out = &mut self.payload;
        out.push(tag::MODULE);
        put_u64(out, module.id);
        put_bytes(out, module.path.as_bytes());
        put_u64(out, module.bias);
        put_bytes(out, &module.build_id);
        put_u64(out, module.segments.len() as u64);
        for segment in &module.segments {
            put_u64(out, segment.vaddr);
            put_u64(out, segment.memsz);
            put_u64(out, segment.flags.into());
        }
    }

    pub fn module_unloaded(&mut self, module_id: u64) {
        self.payload.push(tag::MODULE_UNLOADED);
        put_u64(&mut self.payload, module_id);
    }

    /// Defines the next stack node and returns its id.
    pub fn stack_node(&mut self, parent: u64, frame: Frame) -> u64 {
        let out = &mut self.payload;
        out.push(tag::STACK_NODE);
        put_u64(out, parent);
        match frame {
            Frame::Native { address } => {
                out.push(frame_kind::NATIVE);
                put_u64(out, address);
            }
            Frame::Python {
                code_id,
                instruction_offset,
            } => {
                out.push(frame_kind::PYTHON);
                put_u64(out, code_id);
                put_i64(out, instruction_offset);
            }
            Frame::PythonEntry => out.push(frame_kind::PYTHON_ENTRY),
        }
        self.delta.define_stack_node()
    }

    fn seq_and_address(&mut self, seq: u64, address: u64) {
        self.seq(seq);
        put_i64(&mut self.addresses, self.delta.address_delta(address));
    }

    /// Events come in per-thread batches: naming the thread once per run of its events,
    /// rather than in every record, took ~3 bytes off each event before compression.
    fn thread(&mut self, thread_id: u32) {
        if thread_id != self.delta.current_thread() {
            self.payload.push(tag::THREAD);
            put_u64(&mut self.payload, thread_id.into());
            self.delta.set_current_thread(thread_id);
        }
    }

    fn seq(&mut self, seq: u64) {
        put_i64(&mut self.payload, self.delta.seq_delta(seq));
    }

    pub fn alloc(&mut self, alloc: &Alloc) {
        self.thread(alloc.thread_id);
        match self.free_finder.find(self.delta.recent(Recent::Frees), alloc.address) {
            Some(back) => {
                self.payload.push(tag::ALLOC_REUSE);
                self.payload.push(alloc.kind as u8);
                self.seq(alloc.seq);
                self.payload.push(back);
            }
            None => {
                self.payload.push(tag::ALLOC);
                self.payload.push(alloc.kind as u8);
                self.seq_and_address(alloc.seq, alloc.address);
            }
        }
        self.delta.allocated(alloc.address);
        self.alloc_finder
            .pushed(self.delta.recent(Recent::Allocs), alloc.address);
        put_u64(&mut self.payload, alloc.size);
        put_i64(&mut self.payload, self.delta.stack_delta(alloc.stack));
    }

    pub fn free(&mut self, free: &Free) {
        self.thread(free.thread_id);
        match self.alloc_finder.find(self.delta.recent(Recent::Allocs), free.address) {
            Some(back) => {
                self.payload.push(tag::FREE_RECENT);
                self.seq(free.seq);
                self.payload.push(back);
            }
            None => {
                self.payload.push(tag::FREE);
                self.seq_and_address(free.seq, free.address);
            }
        }
        self.delta.freed(free.address);
        self.free_finder.pushed(self.delta.recent(Recent::Frees), free.address);
    }

    pub fn python_code(&mut self, code: &PythonCode) {
        let out = &mut self.payload;
        out.push(tag::PYTHON_CODE);
        put_u64(out, code.id);
        put_u64(out, code.python_version.into());
        put_bytes(out, code.filename.as_bytes());
        put_bytes(out, code.qualified_name.as_bytes());
        put_u64(out, code.first_line.into());
        put_bytes(out, &code.line_table);
    }

    pub fn python_config(&mut self, ignores_environment: bool) {
        self.payload.push(tag::PYTHON_CONFIG);
        self.payload.push(u8::from(ignores_environment));
    }

    pub fn python_runtime(&mut self, runtime: &PythonRuntime) {
        let out = &mut self.payload;
        out.push(tag::PYTHON_RUNTIME);
        put_u64(out, runtime.python_version.into());
        put_u64(out, runtime.eval_loop_start);
        put_u64(out, runtime.eval_loop_size);
        let flags = u64::from(runtime.frames_recorded) | (u64::from(runtime.pythonmalloc_set) << 1);
        put_u64(out, flags);
        put_bytes(out, runtime.note.as_bytes());
    }

    /// The scan records that follow describe the moment CPython's finalisation began.
    pub fn finalizing(&mut self, thread_id: u32) {
        let out = &mut self.payload;
        out.push(tag::FINALIZING);
        put_u64(out, u64::from(thread_id));
    }

    /// Entries must be sorted by address; the caller splits long lists into several records.
    pub fn block_classes(&mut self, entries: &[BlockClass]) {
        self.address_entries(
            tag::BLOCK_CLASSES,
            entries,
            |e| e.address,
            |out, e| out.push(e.class as u8),
        );
    }

    /// The next holders of the scan under way.
    pub fn holders(&mut self, holders: &[Holder]) {
        let out = &mut self.payload;
        out.push(tag::HOLDERS);
        put_u64(out, holders.len() as u64);
        for holder in holders {
            match holder {
                Holder::Python(name) => {
                    out.push(holder_kind::PYTHON);
                    put_bytes(out, name.as_bytes());
                }
                Holder::RootWord(address) => {
                    out.push(holder_kind::ROOT_WORD);
                    put_u64(out, *address);
                }
                Holder::Register => out.push(holder_kind::REGISTER),
            }
        }
    }

    /// Entries must be sorted by address; the caller splits long lists into several records.
    pub fn block_holders(&mut self, entries: &[BlockHolder]) {
        self.address_entries(
            tag::BLOCK_HOLDERS,
            entries,
            |e| e.address,
            |out, e| {
                put_u64(out, e.holder.into());
                put_u64(out, e.object_type.into());
                let via = if e.via == 0 {
                    0
                } else {
                    e.via.wrapping_sub(e.address) as i64
                };
                put_i64(out, via);
                put_u64(out, e.step.into());
            },
        );
    }

    /// The next object type names of the scan under way.
    pub fn object_types(&mut self, names: &[String]) {
        self.names(tag::OBJECT_TYPES, names);
    }

    /// The next retention-path step names of the scan under way.
    pub fn step_names(&mut self, names: &[String]) {
        self.names(tag::STEP_NAMES, names);
    }

    fn names(&mut self, record: u8, names: &[String]) {
        let out = &mut self.payload;
        out.push(record);
        put_u64(out, names.len() as u64);
        for name in names {
            put_bytes(out, name.as_bytes());
        }
    }

    /// Entries must be sorted by address; the caller splits long lists into several records.
    pub fn lost_blocks(&mut self, entries: &[LostBlock]) {
        self.address_entries(
            tag::LOST_BLOCKS,
            entries,
            |e| e.address,
            |out, e| {
                put_i64(out, e.root.wrapping_sub(e.address) as i64);
                put_u64(out, e.object_type.into());
                put_u64(out, e.refcount);
                put_u64(out, e.references);
            },
        );
    }

    /// A record of `entries` keyed by address: the count, then per entry the address as a
    /// delta from the previous one's (the first from 0) and what `rest` writes.
    fn address_entries<T>(
        &mut self,
        record_tag: u8,
        entries: &[T],
        address: impl Fn(&T) -> u64,
        mut rest: impl FnMut(&mut Vec<u8>, &T),
    ) {
        let out = &mut self.payload;
        out.push(record_tag);
        put_u64(out, entries.len() as u64);
        let mut previous = 0u64;
        for entry in entries {
            put_i64(out, address(entry).wrapping_sub(previous) as i64);
            rest(out, entry);
            previous = address(entry);
        }
    }

    /// Before a scan's REACHABILITY: the inherited blocks it left to the parent's trace.
    pub fn inheritance_left(&mut self, unjudged: u64, scanned: u64) {
        let out = &mut self.payload;
        out.push(tag::INHERITANCE_LEFT);
        put_u64(out, unjudged);
        put_u64(out, scanned);
    }

    pub fn reachability(&mut self, scan: &Reachability) {
        let out = &mut self.payload;
        out.push(tag::REACHABILITY);
        out.push(scan.outcome as u8);
        for value in [
            scan.duration_us,
            scan.blocks,
            scan.root_bytes,
            scan.heap_bytes,
            scan.python_objects,
            scan.immortal_objects,
            scan.threads,
            scan.threads_unknown,
        ] {
            put_u64(out, value);
        }
        put_bytes(out, scan.note.as_bytes());
    }

    pub fn fork(&mut self, fork: &ForkInfo) {
        let out = &mut self.payload;
        out.push(tag::FORK);
        for value in [
            fork.parent_pid.into(),
            fork.fork_seq,
            fork.inherited_blocks,
            fork.inherited_bytes,
            fork.threads_cut,
        ] {
            put_u64(out, value);
        }
        put_bytes(out, fork.parent_trace.as_bytes());
        put_u64(out, fork.parent_trace_bytes);
        put_u64(out, fork.parent_start_time_unix_ns);
    }

    pub fn mark(&mut self, mark: &Mark) {
        let out = &mut self.payload;
        out.push(tag::MARK);
        put_u64(out, mark.seq);
        put_u64(out, mark.time_ns);
        put_u64(out, mark.thread_id.into());
        put_bytes(out, mark.label.as_bytes());
    }

    fn stats_fields(out: &mut Vec<u8>, stats: &Stats) {
        put_u64(out, stats.reentrant_calls);
        put_u64(out, stats.producer_waits);
        put_u64(out, stats.truncated_stacks);
        put_u64(out, stats.slot_locks.into());
    }

    pub fn stats(&mut self, stats: &Stats) {
        self.payload.push(tag::STATS);
        Self::stats_fields(&mut self.payload, stats);
    }

    pub fn end(&mut self, end: &End) {
        let out = &mut self.payload;
        out.push(tag::END);
        out.push(end.kind as u8);
        match end.status {
            Some(status) => {
                out.push(1);
                put_i64(out, status.into());
            }
            None => out.push(0),
        }
        Self::stats_fields(out, &end.stats);
    }
}

/// A chunk's payload before compression: the chunk prologue's stack node count, the records
/// and the address stream (`SPEC.md`, "Payload encoding"). [`ChunkWriter::write_chunk`]
/// adds the prologue's time and the records' length.
pub struct Payload<'a> {
    stack_nodes_before: u64,
    records: &'a [u8],
    addresses: &'a [u8],
}

impl<'a> Payload<'a> {
    /// A payload of `records` and the `addresses` their ALLOC and FREE records refer to, in a
    /// chunk that no stack node precedes.
    pub fn new(records: &'a [u8], addresses: &'a [u8]) -> Self {
        Payload {
            stack_nodes_before: 0,
            records,
            addresses,
        }
    }

    /// The same payload in a chunk after `count` stack nodes were defined.
    pub fn with_stack_nodes_before(self, count: u64) -> Self {
        Payload {
            stack_nodes_before: count,
            ..self
        }
    }

    /// True when nothing was encoded (an empty payload is not written).
    pub fn is_empty(&self) -> bool {
        self.records.is_empty() && self.addresses.is_empty()
    }

    /// The records part.
    pub fn records(&self) -> &'a [u8] {
        self.records
    }

    /// The address stream.
    pub fn addresses(&self) -> &'a [u8] {
        self.addresses
    }
}

/// Writes the file header once, then one self-delimiting compressed chunk per
/// [`ChunkWriter::write_chunk`], so that any prefix of the file ending on a chunk boundary
/// decodes.
pub struct ChunkWriter<W: Write> {
    out: W,
    compressed: Vec<u8>,
    /// Kept from chunk to chunk: a fresh compressor per chunk allocated (and the traced
    /// process then unmapped, with a TLB shootdown to its cores) ~300 KB of state each time.
    compressor: Compress,
    /// When the first chunk was written: chunk prologues and MARK records count time from it.
    started: Option<Instant>,
    /// Bytes written so far, header included: where the next chunk starts.
    bytes_written: u64,
}

impl<W: Write> ChunkWriter<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(&MAGIC);
        header[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.write_all(&header)?;
        Ok(ChunkWriter {
            out,
            compressed: Vec::new(),
            compressor: Compress::new(Compression::new(DEFLATE_LEVEL), false),
            started: None,
            bytes_written: HEADER_LEN as u64,
        })
    }

    /// Bytes written so far, header included (a chunk boundary).
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    pub fn get_ref(&self) -> &W {
        &self.out
    }

    /// Nanoseconds from the first chunk to `instant` (0 before it, or when no chunk was
    /// written yet): the clock of chunk prologues and of MARK records.
    pub fn time_ns(&self, instant: Instant) -> u64 {
        self.started.map_or(0, |started| {
            u64::try_from(instant.saturating_duration_since(started).as_nanos()).unwrap_or(u64::MAX)
        })
    }

    /// Compresses the payload into one chunk, stamped with the time now, and writes it with a
    /// single `write_all`.
    pub fn write_chunk(&mut self, payload: &Payload<'_>) -> io::Result<()> {
        if payload.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        self.started.get_or_insert(now);
        self.write_chunk_at(payload, self.time_ns(now))
    }

    /// As [`ChunkWriter::write_chunk`], with the prologue's time given.
    pub fn write_chunk_at(&mut self, payload: &Payload<'_>, time_ns: u64) -> io::Result<()> {
        // Prologue and records length: three varints.
        let mut head = [0u8; 3 * MAX_VARINT_BYTES];
        let mut len = 0;
        for value in [payload.stack_nodes_before, time_ns, payload.records.len() as u64] {
            let mut varint = [0u8; MAX_VARINT_BYTES];
            let n = put_u64_into(&mut varint, value);
            head[len..len + n].copy_from_slice(&varint[..n]);
            len += n;
        }
        self.write_raw_chunk(&[&head[..len], payload.records, payload.addresses])
    }

    /// Writes a chunk whose payload is the concatenation of `parts`, whatever they hold (the
    /// prologue included).
    pub fn write_raw_chunk(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let total: usize = parts.iter().map(|part| part.len()).sum();
        self.compressed.clear();
        self.compressed.resize(CHUNK_FRAME_LEN, 0);
        self.compressor.reset();
        let mut crc = crc32fast::Hasher::new();
        for (index, part) in parts.iter().enumerate() {
            crc.update(part);
            let flush = if index + 1 == parts.len() {
                FlushCompress::Finish
            } else {
                FlushCompress::None
            };
            let start = self.compressor.total_in();
            loop {
                let consumed = (self.compressor.total_in() - start) as usize;
                // Raw deflate never grows data by more than a few bytes per 16 KiB block.
                self.compressed.reserve(part.len() - consumed + part.len() / 64 + 1024);
                let status = self
                    .compressor
                    .compress_vec(&part[consumed..], &mut self.compressed, flush)
                    .map_err(io::Error::other)?;
                let done = (self.compressor.total_in() - start) as usize == part.len();
                if status == Status::StreamEnd || (done && flush == FlushCompress::None) {
                    break;
                }
            }
        }
        let compressed_len = (self.compressed.len() - CHUNK_FRAME_LEN) as u32;
        self.compressed[0..4].copy_from_slice(&CHUNK_SYNC);
        self.compressed[4..8].copy_from_slice(&compressed_len.to_le_bytes());
        self.compressed[8..12].copy_from_slice(&(total as u32).to_le_bytes());
        self.compressed[12..16].copy_from_slice(&crc.finalize().to_le_bytes());
        self.out.write_all(&self.compressed)?;
        self.bytes_written += self.compressed.len() as u64;
        self.out.flush()
    }

    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }
}
