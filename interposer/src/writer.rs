//! The writer thread: receives batches of events, interns stacks into a prefix tree (each
//! distinct stack node written once), keeps the module map current, encodes records and
//! writes compressed chunks — at least every [`FLUSH_INTERVAL`] while events arrive, so a
//! killed process leaves a readable trace.
//!
//! It runs with its re-entrancy guard permanently set, so nothing it allocates is recorded,
//! and with every signal blocked. It must never wait on a producer.
//!
//! Around `fork` the writer *parks*: it takes in everything recorded so far, then its thread
//! ends, leaving its state (live set, stack tree, modules, code objects) consistent for both
//! processes. The parent resumes it; the child turns it into the start of its own trace
//! ([`Writer::start_child_trace`]), with every inherited block and the stacks and code
//! objects they refer to.

use std::collections::HashMap;
use std::hash::BuildHasherDefault;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};
use libleak_format::live::{AddressHasher, LiveBlock, LiveSet};
use libleak_format::{
    Alloc, AllocKind, ChunkWriter, End, ExitKind, ForkInfo, Free, Module, ProcessInfo, PythonCode, PythonRuntime,
    RecordEncoder,
};

use crate::ffi::sys;
use crate::reach::{self, ExitingThread, ScanInput};
use crate::stack_words;
use crate::trace_file::TraceFile;
use crate::tracker::{self, EVENT_ALLOC, EVENT_FREE};

const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
const SWEEP_INTERVAL: Duration = Duration::from_millis(40);
const CHUNK_BYTES: usize = 1 << 20;
/// How long the writer keeps napping, rather than blocking, after the last message.
const NAPPING: Duration = Duration::from_millis(2);
const NAP_US: u64 = 100;
/// Block classes per BLOCK_CLASSES record.
const CLASSES_PER_RECORD: usize = 4096;

/// What the exit-time scan needs from start-up.
pub struct ScanSettings {
    /// An address inside libleak itself, whose module is excluded from the roots.
    pub own_code: u64,
    /// `None` when the scan is turned off.
    pub time_limit: Option<Duration>,
}

/// How the writer ends the trace.
pub struct Ending {
    pub kind: ExitKind,
    pub status: Option<i32>,
    /// The thread that called exit, when the live set should be scanned for reachability.
    pub scan_from: Option<ExitingThread>,
}

/// A live block as the writer keeps it: enough to re-record it in a forked child's trace.
#[derive(Clone, Copy, Debug)]
struct WriterBlock {
    seq: u64,
    /// The allocation kind in the top byte, the requested size below.
    size_and_kind: u64,
    /// Stack node id (0 when it did not fit).
    stack: u32,
    thread_id: u32,
}

const KIND_SHIFT: u32 = 56;

impl WriterBlock {
    fn new(seq: u64, size: u64, kind: AllocKind, stack: u64, thread_id: u32) -> WriterBlock {
        WriterBlock {
            seq,
            size_and_kind: size.min((1 << KIND_SHIFT) - 1) | (kind as u64) << KIND_SHIFT,
            stack: u32::try_from(stack).unwrap_or(0),
            thread_id,
        }
    }

    fn kind(&self) -> AllocKind {
        AllocKind::from_u8((self.size_and_kind >> KIND_SHIFT) as u8).unwrap_or(AllocKind::Malloc)
    }
}

impl LiveBlock for WriterBlock {
    fn seq(&self) -> u64 {
        self.seq
    }

    fn size(&self) -> u64 {
        self.size_and_kind & ((1 << KIND_SHIFT) - 1)
    }
}

/// How [`Writer::run`] ended.
pub enum Stopped {
    /// The trace is finished (or failed).
    Finished(Result<(), String>),
    /// Parked for a fork: the state waits for [`Writer::run`] to be called again.
    Parked(Box<Writer>),
}

/// What a forked child's writer needs to start the child's trace.
pub struct ChildStart {
    pub file: TraceFile,
    pub info: ProcessInfo,
    pub fork: ForkInfo,
}

pub enum Message {
    Batch(Vec<u64>),
    /// A fresh snapshot of the loaded modules, taken right after a dlopen or dlclose.
    Modules(Vec<Module>),
    /// A code object seen for the first time by a hook.
    PythonCode(Box<PythonCode>),
    /// An interpreter found after start-up (loaded by `dlopen`).
    PythonRuntime(PythonRuntime),
    /// A thread is about to fork: take in everything recorded so far, then park.
    Park,
    Finish(Ending),
}

/// A stack node's parent and frame word in 12 bytes, so that an entry of the node table is
/// 16: with hundreds of thousands of nodes the table was the writer's largest structure
/// (24-byte entries, 13 MB for alloc_heavy.py 500, and the old and new tables side by side
/// while it grew).
#[derive(Clone, Copy, PartialEq, Eq)]
struct NodeKey {
    word: [u32; 2],
    parent: u32,
}

impl NodeKey {
    /// `None` for a parent id past `u32::MAX` (never met: 4 G nodes would not fit in memory).
    fn new(parent: u64, word: u64) -> Option<NodeKey> {
        Some(NodeKey {
            word: [word as u32, (word >> 32) as u32],
            parent: u32::try_from(parent).ok()?,
        })
    }

    fn parent_and_word(self) -> (u64, u64) {
        (
            u64::from(self.parent),
            u64::from(self.word[0]) | u64::from(self.word[1]) << 32,
        )
    }
}

impl std::hash::Hash for NodeKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let (parent, word) = self.parent_and_word();
        state.write_u64(word);
        state.write_u64(parent);
    }
}

pub struct Writer {
    chunks: ChunkWriter<TraceFile>,
    encoder: RecordEncoder,
    events: Receiver<Message>,
    spare_batches: Sender<Vec<u64>>,
    /// (parent node, frame word) → node id.
    stack_nodes: HashMap<NodeKey, u32, BuildHasherDefault<AddressHasher>>,
    /// Nodes taken out of `stack_nodes` when a module went away, which a forked child may
    /// still need to re-define the stacks of the blocks it inherited. (The inverse table is
    /// built only at a fork: kept all along, it was ~16 bytes per node of resident memory.)
    retired_nodes: Vec<(NodeKey, u32)>,
    /// Every code object and interpreter recorded, for a forked child's trace.
    python_codes: Vec<PythonCode>,
    python_runtimes: Vec<PythonRuntime>,
    /// The PYTHON_CONFIG record, once written.
    python_ignores_environment: Option<bool>,
    /// The previous stack interned (outermost first) and its node ids, depth by depth:
    /// consecutive events of a thread share most of their outer frames, so only the frames
    /// after the shared part need a lookup.
    previous_frames: Vec<u64>,
    previous_nodes: Vec<u64>,
    modules: Vec<Module>,
    next_module_id: u64,
    main_exe: String,
    loader_generation: (u64, u64),
    last_flush: Instant,
    /// What is live, for the exit-time scan.
    live: LiveSet<WriterBlock>,
    scan: ScanSettings,
}

impl Writer {
    pub fn new(
        file: TraceFile,
        info: ProcessInfo,
        modules: Vec<Module>,
        python_runtime: Option<PythonRuntime>,
        events: Receiver<Message>,
        spare_batches: Sender<Vec<u64>>,
        scan: ScanSettings,
    ) -> std::io::Result<Writer> {
        let mut writer = Writer {
            chunks: ChunkWriter::new(file)?,
            encoder: RecordEncoder::new(),
            events,
            spare_batches,
            stack_nodes: HashMap::default(),
            retired_nodes: Vec::new(),
            python_codes: Vec::new(),
            python_runtimes: Vec::new(),
            python_ignores_environment: None,
            previous_frames: Vec::new(),
            previous_nodes: Vec::new(),
            modules: Vec::new(),
            next_module_id: 1,
            main_exe: info.exe.clone(),
            loader_generation: sys::loader_generation(),
            last_flush: Instant::now(),
            live: LiveSet::new(),
            scan,
        };
        writer.encoder.process(&info);
        // On disk before the module list, which takes a while to encode: a process killed
        // meanwhile (test suites kill children right after starting them) still leaves a
        // readable trace that says which process it was.
        writer.flush()?;
        writer.update_modules(modules);
        if let Some(runtime) = python_runtime {
            writer.python_runtime(runtime);
        }
        writer.flush()?;
        Ok(writer)
    }

    /// Runs until the tracker sends `Finish` or `Park`. An I/O error ends recording.
    pub fn run(mut self: Box<Self>) -> Stopped {
        let mut last_sweep = Instant::now();
        let mut last_message = Instant::now();
        loop {
            match self.next_message(last_message) {
                Ok(Message::Finish(ending)) => return Stopped::Finished(self.finish(ending)),
                Ok(Message::Park) => {
                    self.take_in_everything();
                    return match self.flush() {
                        Ok(()) => Stopped::Parked(self),
                        Err(e) => Stopped::Finished(Err(format!("cannot write the trace: {e}"))),
                    };
                }
                Ok(message) => {
                    last_message = Instant::now();
                    self.handle(message);
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Stopped::Finished(Ok(())),
            }
            if last_sweep.elapsed() >= SWEEP_INTERVAL {
                last_sweep = Instant::now();
                tracker::take_all_batches(|batch| self.process_batch(batch));
            }
            let due = self.last_flush.elapsed() >= FLUSH_INTERVAL || self.encoder.pending_bytes() >= CHUNK_BYTES;
            if due && self.encoder.pending_bytes() > 0 {
                if let Err(e) = self.flush() {
                    self.discard_until_finish();
                    return Stopped::Finished(Err(format!("cannot write the trace: {e}")));
                }
            }
        }
    }

    /// The next message, or a timeout after [`SWEEP_INTERVAL`]. While messages keep coming
    /// the writer naps instead of blocking: a blocked receiver makes every sender of a batch
    /// wake it with a system call (and an interrupt to its core), paid by the program's
    /// threads. After [`NAPPING`] without a message it blocks, so an idle program's writer
    /// does not wake up thousands of times a second.
    fn next_message(&self, last_message: Instant) -> Result<Message, RecvTimeoutError> {
        loop {
            match self.events.try_recv() {
                Ok(message) => return Ok(message),
                Err(TryRecvError::Disconnected) => return Err(RecvTimeoutError::Disconnected),
                Err(TryRecvError::Empty) if last_message.elapsed() < NAPPING => sys::sleep_us(NAP_US),
                Err(TryRecvError::Empty) => return self.events.recv_timeout(SWEEP_INTERVAL),
            }
        }
    }

    fn handle(&mut self, message: Message) {
        match message {
            Message::Batch(batch) => self.process_batch(batch),
            Message::Modules(modules) => self.update_modules(modules),
            Message::PythonCode(code) => {
                if self.python_ignores_environment.is_none() {
                    // Known before the first code object was sent.
                    self.python_ignores_environment = crate::python::ignores_environment();
                    if let Some(ignores) = self.python_ignores_environment {
                        self.encoder.python_config(ignores);
                    }
                }
                self.encoder.python_code(&code);
                self.python_codes.push(*code);
            }
            Message::PythonRuntime(runtime) => self.python_runtime(runtime),
            Message::Park | Message::Finish(_) => {}
        }
    }

    fn python_runtime(&mut self, runtime: PythonRuntime) {
        self.encoder.python_runtime(&runtime);
        self.python_runtimes.push(runtime);
    }

    /// Processes every message queued and every thread's partial batch.
    fn take_in_everything(&mut self) {
        while let Ok(message) = self.events.try_recv() {
            self.handle(message);
        }
        tracker::take_all_batches(|batch| self.process_batch(batch));
    }

    /// Turns the parked state of the parent's writer into the start of a forked child's
    /// trace: a new file, the child's channels, and every block the child inherited, with the
    /// modules, code objects and stacks they need. The parent's unwritten payload stays the
    /// parent's.
    pub fn start_child_trace(
        &mut self,
        child: ChildStart,
        events: Receiver<Message>,
        spare_batches: Sender<Vec<u64>>,
    ) -> std::io::Result<()> {
        self.chunks = ChunkWriter::new(child.file)?;
        self.events = events;
        self.spare_batches = spare_batches;
        self.encoder = RecordEncoder::new();
        self.encoder.process(&child.info);
        for module in &self.modules {
            self.encoder.module(module);
        }
        for runtime in &self.python_runtimes {
            self.encoder.python_runtime(runtime);
        }
        if let Some(ignores) = self.python_ignores_environment {
            self.encoder.python_config(ignores);
        }
        for code in &self.python_codes {
            self.encoder.python_code(code);
        }
        let inherited = self.live.live_blocks();
        let mut fork = child.fork;
        fork.inherited_blocks = inherited.len() as u64;
        fork.inherited_bytes = inherited.iter().map(|(_, block)| block.size()).sum();
        self.encoder.fork(&fork);
        // On disk before the inherited blocks, which take a while: a child killed meanwhile
        // still leaves a readable (cut short) trace.
        self.flush()?;
        let parent_nodes = self.take_node_table();
        self.previous_frames.clear();
        self.previous_nodes.clear();
        let mut frames = Vec::new();
        for (address, block) in inherited {
            frames.clear();
            let mut node = u64::from(block.stack);
            while let Some(&Some((parent, word))) = node.checked_sub(1).and_then(|i| parent_nodes.get(i as usize)) {
                frames.push(word);
                node = parent;
            }
            let stack = self.intern_stack(&frames);
            self.encoder.alloc(&Alloc {
                seq: block.seq,
                thread_id: block.thread_id,
                address,
                size: block.size(),
                stack,
                kind: block.kind(),
            });
            if self.encoder.pending_bytes() >= CHUNK_BYTES {
                self.flush()?;
            }
        }
        self.flush()
    }

    /// Node id − 1 → (parent node, frame word) of every node defined in this trace, emptying
    /// the tables the ids came from (a forked child's trace numbers its nodes afresh).
    fn take_node_table(&mut self) -> Vec<Option<(u64, u64)>> {
        let nodes: Vec<(NodeKey, u32)> = self.stack_nodes.drain().chain(self.retired_nodes.drain(..)).collect();
        let count = nodes.iter().map(|&(_, id)| id).max().unwrap_or(0);
        let mut table = vec![None; count as usize];
        for (key, id) in nodes {
            table[(id - 1) as usize] = Some(key.parent_and_word());
        }
        table
    }

    fn finish(&mut self, ending: Ending) -> Result<(), String> {
        self.take_in_everything();
        if let (Some(exiting), Some(time_limit)) = (ending.scan_from, self.scan.time_limit) {
            self.scan_reachability(exiting, time_limit);
        }
        self.encoder.end(&End {
            kind: ending.kind,
            status: ending.status,
            stats: tracker::stats(),
        });
        self.flush().map_err(|e| format!("cannot write the trace: {e}"))
    }

    fn scan_reachability(&mut self, exiting: ExitingThread, time_limit: Duration) {
        // Modules loaded since the last snapshot hold roots too.
        self.update_modules(sys::loaded_modules(&self.main_exe));
        let blocks = self
            .live
            .live_blocks()
            .into_iter()
            .map(|(address, block)| (address, block.size()))
            .collect();
        let own_module = self.modules.iter().find(|m| m.contains(self.scan.own_code));
        let result = reach::scan(ScanInput {
            blocks,
            modules: &self.modules,
            own_module,
            exiting: Some(exiting),
            python: crate::python::gc::objects(),
            time_limit,
        });
        for classes in result.classes.chunks(CLASSES_PER_RECORD) {
            self.encoder.block_classes(classes);
        }
        self.encoder.reachability(&result.summary);
    }

    /// After a write error: keep producers from blocking until the process ends.
    fn discard_until_finish(&mut self) {
        while let Ok(message) = self.events.recv() {
            if let Message::Finish(_) | Message::Park = message {
                return;
            }
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.last_flush = Instant::now();
        let result = self.chunks.write_chunk(&self.encoder.payload());
        self.encoder.clear_payload();
        result
    }

    fn process_batch(&mut self, mut batch: Vec<u64>) {
        let mut at = 0;
        while at < batch.len() {
            let header = batch[at];
            let thread_id = (header >> 32) as u32;
            match header & 0xff {
                EVENT_ALLOC if at + 4 <= batch.len() => {
                    let frame_count = ((header >> 16) & 0xffff) as usize;
                    let frames_end = (at + 4 + frame_count).min(batch.len());
                    let stack = self.intern_stack(&batch[at + 4..frames_end]);
                    let kind = AllocKind::from_u8(((header >> 8) & 0xff) as u8).unwrap_or(AllocKind::Malloc);
                    let (seq, address, size) = (batch[at + 1], batch[at + 2], batch[at + 3]);
                    let block = WriterBlock::new(seq, size, kind, stack, thread_id);
                    self.encoder.alloc(&Alloc {
                        seq,
                        thread_id,
                        address,
                        size,
                        stack,
                        kind,
                    });
                    at = frames_end;
                    // The block freed by the thread's very next event: one live-set update.
                    let next = batch
                        .get(at..at + 3)
                        .filter(|free| free[0] & 0xff == EVENT_FREE && free[2] == address);
                    match next {
                        Some(&[header, free_seq, _]) => {
                            self.live.alloc_and_free(address, block, free_seq);
                            self.encoder.free(&Free {
                                seq: free_seq,
                                thread_id: (header >> 32) as u32,
                                address,
                            });
                            at += 3;
                        }
                        _ => self.live.alloc(address, block),
                    }
                }
                EVENT_FREE if at + 3 <= batch.len() => {
                    self.live.free(batch[at + 2], batch[at + 1]);
                    self.encoder.free(&Free {
                        seq: batch[at + 1],
                        thread_id,
                        address: batch[at + 2],
                    });
                    at += 3;
                }
                _ => break, // cannot happen: batches are written only by the tracker
            }
        }
        batch.clear();
        if let Err(full) = self.spare_batches.try_send(batch) {
            // The buffer goes back to malloc, and its memory to the program: leave no block
            // addresses behind for the exit scan to mistake for pointers.
            let mut batch = full.into_inner();
            batch.spare_capacity_mut().iter_mut().for_each(|word| {
                word.write(0);
            });
        }
    }

    /// Returns the node id of the innermost frame of `frames` (stack words, innermost first).
    fn intern_stack(&mut self, frames: &[u64]) -> u64 {
        let shared = frames
            .iter()
            .rev()
            .zip(&self.previous_frames)
            .take_while(|(a, b)| a == b)
            .count();
        self.previous_frames.truncate(shared);
        self.previous_nodes.truncate(shared);
        let mut node = self.previous_nodes.last().copied().unwrap_or(0);
        for (depth, &word) in (shared..).zip(frames[..frames.len() - shared].iter().rev()) {
            let key = NodeKey::new(node, word);
            node = match key.and_then(|key| self.stack_nodes.get(&key)) {
                Some(&id) => u64::from(id),
                None => {
                    if stack_words::is_native(word) && !self.modules.iter().any(|m| m.contains(word)) {
                        self.rescan_if_loader_changed();
                    }
                    let id = self.encoder.stack_node(node, stack_words::to_frame(word));
                    // Past u32::MAX a node is not remembered: defined again when met again.
                    if let (Some(key), Ok(short_id)) = (key, u32::try_from(id)) {
                        self.stack_nodes.insert(key, short_id);
                    }
                    id
                }
            };
            // Unless a module went away meanwhile and the rescan emptied the previous stack:
            // kept from here, it would sit at the wrong depths.
            if self.previous_frames.len() == depth {
                self.previous_frames.push(word);
                self.previous_nodes.push(node);
            }
        }
        node
    }

    fn rescan_if_loader_changed(&mut self) {
        let generation = sys::loader_generation();
        if generation != self.loader_generation {
            let modules = sys::loaded_modules(&self.main_exe);
            self.update_modules(modules);
            // Only a snapshot taken here is known to match this generation: one sent by a
            // hook may predate loads that happened since (the writer can be behind).
            self.loader_generation = generation;
        }
    }

    /// Records modules that appeared and disappeared since the last snapshot.
    fn update_modules(&mut self, snapshot: Vec<Module>) {
        let same = |a: &Module, b: &Module| a.path == b.path && a.bias == b.bias;
        let before = self.modules.len();
        self.modules.retain(|known| {
            let present = snapshot.iter().any(|m| same(m, known));
            if !present {
                self.encoder.module_unloaded(known.id);
            }
            present
        });
        if self.modules.len() != before {
            // Addresses of an unloaded module may be reused by the next one: stack nodes
            // defined from now on must not be confused with the old ones.
            self.retired_nodes.extend(self.stack_nodes.drain());
            self.previous_frames.clear();
            self.previous_nodes.clear();
        }
        for mut module in snapshot {
            if !self.modules.iter().any(|known| same(known, &module)) {
                module.id = self.next_module_id;
                self.next_module_id += 1;
                self.encoder.module(&module);
                self.modules.push(module);
            }
        }
    }
}
