//! The collector: the thread that receives batches of events, interns stacks into a prefix
//! tree ([`stack_tree`], each distinct stack node written once), keeps the module map
//! current ([`modules`]), encodes records and writes compressed chunks to the
//! [`trace_file`] — at least every [`FLUSH_INTERVAL`] while events arrive, so a killed
//! process leaves a readable trace.
//!
//! It runs as libleak's own work (nothing it allocates is recorded) and with every signal
//! blocked. It knows nothing of the recorder above it: the recorder hands it an
//! [`EventSource`] for the threads' partial batches and the counters. It must never wait on
//! a producer.
//!
//! Around `fork` the collector *parks*: it takes in everything recorded so far, then its
//! thread ends, leaving its state (live set, stack tree, modules, code objects) consistent
//! for both processes, and its trace flushed up to the fork. The parent resumes it; the child
//! turns it into the start of its own trace ([`Collector::start_child_trace`]), which names
//! the parent's trace and its length at the fork instead of repeating the blocks the child
//! inherited: a child's trace holds its own work only.

mod dangling;
mod inheritance;
mod large;
mod modules;
mod pending_rebirths;
mod rebirths;
mod scans;
mod stack_tree;
mod sweep;
pub mod trace_file;
mod waiting;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use libleak_format::live::{LiveBlock, LiveSet};
use libleak_format::{
    Alloc, ChunkWriter, End, ExitKind, ForkInfo, Free, Mark, Module, ProcessInfo, PythonCode, PythonRuntime,
    RecordEncoder, Stats,
};

use crate::batch::{BatchEvent, BatchEvents};
use crate::config::ChildScan;
use crate::reach::ExitingThread;
use dangling::DanglingStatics;
use large::LargeBlocks;
use modules::ModuleMap;
use pending_rebirths::{PendingRebirths, Rebirth};
use stack_tree::StackTree;
use trace_file::TraceFile;
pub use waiting::ring_collector;

/// What the collector needs from the recorder that feeds it.
pub trait EventSource: Sync {
    /// Hands over every thread's partial batch (the periodic sweep, and at the end).
    fn take_partial_batches(&self, each: &mut dyn FnMut(Vec<u64>));
    /// The recorder's counters, as the trace's end states them.
    fn stats(&self) -> Stats;
}

const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
const SWEEP_INTERVAL: Duration = Duration::from_millis(40);
const CHUNK_BYTES: usize = 1 << 20;
/// Entries per BLOCK_CLASSES, HOLDERS or BLOCK_HOLDERS record.
const ENTRIES_PER_RECORD: usize = 4096;

/// What the exit-time scan needs from start-up.
pub struct ScanSettings {
    /// An address inside libleak itself, whose module is excluded from the roots.
    pub own_code: u64,
    /// `None` when the scan is turned off.
    pub time_limit: Option<Duration>,
    /// What a forked child's scan judges: the blocks it inherited too (reading all of them),
    /// or only its own, leaving the inherited ones to its parent's trace.
    pub child_scan: ChildScan,
}

/// How the collector ends the trace.
pub struct Ending {
    pub kind: ExitKind,
    pub status: Option<i32>,
    /// The thread that called exit, when the live set should be scanned for reachability.
    pub scan_from: Option<ExitingThread>,
}

/// A live block as the collector keeps it: what the exit scan needs (its stack is in the
/// trace already, and a forked child's trace refers to its parent's for the blocks it
/// inherited).
#[derive(Clone, Copy, Debug)]
struct CollectorBlock {
    seq: u64,
    size: u64,
}

impl LiveBlock for CollectorBlock {
    fn seq(&self) -> u64 {
        self.seq
    }

    fn size(&self) -> u64 {
        self.size
    }
}

/// How [`Collector::run`] ended.
pub enum Stopped {
    /// The trace is finished (or failed).
    Finished(Result<(), String>),
    /// Parked for a fork: the state waits for [`Collector::run`] to be called again.
    Parked(Box<Collector>),
}

/// What a forked child's collector needs to start the child's trace.
/// A trace file whose header and process record are on disk: a process killed from here on
/// leaves a trace that says which process it was.
pub struct OpenedTrace {
    chunks: ChunkWriter<TraceFile>,
    encoder: RecordEncoder,
    path: String,
    start_time_unix_ns: u64,
}

impl OpenedTrace {
    /// Writes the header and the process record of a new trace, as one chunk.
    pub fn begin(file: TraceFile, info: &ProcessInfo) -> std::io::Result<OpenedTrace> {
        let path = file.path().to_string();
        let mut opened = OpenedTrace {
            chunks: ChunkWriter::new(file)?,
            encoder: RecordEncoder::new(),
            path,
            start_time_unix_ns: info.start_time_unix_ns,
        };
        opened.encoder.process(info);
        write_pending(&mut opened.chunks, &mut opened.encoder)?;
        Ok(opened)
    }

    pub fn path(&self) -> &str {
        &self.path
    }
}

/// Writes what `encoder` holds as one chunk.
fn write_pending(chunks: &mut ChunkWriter<TraceFile>, encoder: &mut RecordEncoder) -> std::io::Result<()> {
    let result = chunks.write_chunk(&encoder.payload());
    encoder.clear_payload();
    result
}

pub struct ChildStart {
    pub trace: OpenedTrace,
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
    /// CPython's finalisation began: take in everything recorded so far, scan what is live
    /// now, then set `done`.
    Finalizing {
        from: ExitingThread,
        done: &'static AtomicBool,
    },
    /// The program named this point of the run (`libleak_mark`); `seq` is above every event
    /// before it.
    Mark {
        seq: u64,
        at: Instant,
        thread_id: u32,
        label: String,
    },
    /// A thread is about to fork: take in everything recorded so far, then park.
    Park,
    Finish(Ending),
}

pub struct Collector {
    chunks: ChunkWriter<TraceFile>,
    encoder: RecordEncoder,
    events: Receiver<Message>,
    spare_batches: Sender<Vec<u64>>,
    source: &'static dyn EventSource,
    stacks: StackTree,
    /// Every code object and interpreter recorded, for a forked child's trace.
    python_codes: HashMap<u64, PythonCode>,
    /// In a forked child: the ids of the code objects known from the parent that this trace
    /// has not written yet (written when a stack first refers to one).
    codes_unwritten: HashSet<u64>,
    /// The PROCESS record's start time: a forked child's trace names its parent's by it.
    start_time_unix_ns: u64,
    python_runtimes: Vec<PythonRuntime>,
    /// The PYTHON_CONFIG record, once written.
    python_ignores_environment: Option<bool>,
    modules: ModuleMap,
    last_flush: Instant,
    /// What is live, for the exit-time scan: in a forked child, what the child allocated.
    live: LiveSet<CollectorBlock>,
    /// In a forked child, the live sets of its ancestors at their forks (oldest first), never
    /// written to: a child of a large parent copies none of its pages. A block there is still
    /// live while no later set (nor `live`) has seen an event at its address.
    inherited: Vec<LiveSet<CollectorBlock>>,
    /// Of `live`'s blocks, those larger than a page (see [`LargeBlocks`]); and of each
    /// inherited set's, at its fork.
    large: LargeBlocks<CollectorBlock>,
    inherited_large: Vec<LargeBlocks<CollectorBlock>>,
    /// Words of the interpreter's static data left pointing into freed blocks.
    dangling: DanglingStatics,
    /// In a forked child, the private writable mappings at the fork: where inherited blocks
    /// can lie.
    fork_ranges: Vec<(u64, u64)>,
    /// This process parked its collector (to fork) since its trace began.
    parked_since_start: bool,
    /// Whether this (forked) process's scans judge its inherited blocks: decided at its
    /// first scan, kept for the next (the teardown frees inherited blocks in between).
    judges_inherited: Option<bool>,
    /// (address, seq) of the blocks the scan at finalisation found garbage awaiting collection.
    garbage_at_finalization: Vec<(u64, u64)>,
    /// Per free-list slot that handed out a reborn object: its block and the rebirth's seq.
    stale_slots: HashMap<u64, (u64, u64)>,
    scan: ScanSettings,
    /// Rebirths met before their block's allocation (see [`rebirths`]).
    rebirths: PendingRebirths,
    /// The low bits of every block address allocated, OR-ed: how the blocks are aligned.
    address_bits: u64,
    /// Messages a sweep received and left for the loop, in order (see [`Collector::sweep`]).
    held_back: VecDeque<Message>,
}

/// How the collector is started: its trace, what it knows of the process, and where its
/// events come from.
pub struct CollectorStart {
    pub file: TraceFile,
    pub info: ProcessInfo,
    pub modules: Vec<Module>,
    pub python_runtime: Option<PythonRuntime>,
    pub events: Receiver<Message>,
    pub spare_batches: Sender<Vec<u64>>,
    pub source: &'static dyn EventSource,
    pub scan: ScanSettings,
}

impl Collector {
    /// Writes the trace's first records (process, modules, interpreter) and returns the
    /// collector, ready to [`run`](Self::run).
    pub fn new(start: CollectorStart) -> std::io::Result<Collector> {
        let CollectorStart {
            file,
            info,
            modules,
            python_runtime,
            events,
            spare_batches,
            source,
            scan,
        } = start;
        let mut collector = Collector {
            chunks: ChunkWriter::new(file)?,
            encoder: RecordEncoder::new(),
            events,
            spare_batches,
            source,
            stacks: StackTree::default(),
            python_codes: HashMap::new(),
            codes_unwritten: HashSet::new(),
            start_time_unix_ns: info.start_time_unix_ns,
            python_runtimes: Vec::new(),
            python_ignores_environment: None,
            modules: ModuleMap::new(info.exe.clone()),
            last_flush: Instant::now(),
            live: LiveSet::new(),
            inherited: Vec::new(),
            large: LargeBlocks::default(),
            inherited_large: Vec::new(),
            dangling: DanglingStatics::default(),
            fork_ranges: Vec::new(),
            parked_since_start: false,
            judges_inherited: None,
            garbage_at_finalization: Vec::new(),
            stale_slots: HashMap::new(),
            scan,
            rebirths: PendingRebirths::default(),
            held_back: VecDeque::new(),
            address_bits: 0,
        };
        collector.encoder.process(&info);
        // On disk before the module list, which takes a while to encode: a process killed
        // meanwhile (test suites kill children right after starting them) still leaves a
        // readable trace that says which process it was.
        collector.flush()?;
        collector.update_modules(modules);
        if let Some(runtime) = python_runtime {
            collector.python_runtime(runtime);
        }
        collector.flush()?;
        Ok(collector)
    }

    /// Runs until the recorder sends `Finish` or `Park`. An I/O error ends recording.
    pub fn run(mut self: Box<Self>) -> Stopped {
        let mut last_sweep = Instant::now();
        let mut last_message = Instant::now();
        loop {
            let message = match self.held_back.pop_front() {
                Some(message) => Ok(message),
                None => self.next_message(last_message),
            };
            match message {
                Ok(Message::Finish(ending)) => {
                    let result = self.finish(ending);
                    // The process is ending (exit, _exit, abort, exec): giving the tables back
                    // would first write to every page of them (libleak scrubs what it frees),
                    // which in a fork child copies the pages it still shares with its parent.
                    // An exec that fails leaves them behind, in a process no longer recorded.
                    std::mem::forget(self);
                    return Stopped::Finished(result);
                }
                Ok(Message::Park) => {
                    // A fork follows: the pages this process wrote are shared again with the
                    // new child (see `inheritance.rs`).
                    self.parked_since_start = true;
                    self.take_in_everything();
                    self.dangling.checked_before_fork();
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
            if self.held_back.is_empty() && self.dangling.check_due() {
                self.check_dangling();
            }
            if last_sweep.elapsed() >= SWEEP_INTERVAL && self.held_back.is_empty() {
                last_sweep = Instant::now();
                self.sweep();
                self.rebirths.sweep_done();
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

    fn handle(&mut self, message: Message) {
        self.rebirths.message_handled();
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
                self.codes_unwritten.remove(&code.id);
                self.python_codes.insert(code.id, *code);
            }
            Message::PythonRuntime(runtime) => self.python_runtime(runtime),
            Message::Finalizing { from, done } => {
                self.scan_at_finalization(from);
                done.store(true, Ordering::Release);
            }
            Message::Mark {
                seq,
                at,
                thread_id,
                label,
            } => self.encoder.mark(&Mark {
                seq,
                time_ns: self.chunks.time_ns(at),
                thread_id,
                label,
            }),
            Message::Park | Message::Finish(_) => {}
        }
    }

    fn python_runtime(&mut self, runtime: PythonRuntime) {
        self.encoder.python_runtime(&runtime);
        self.python_runtimes.push(runtime);
    }

    /// Turns the parked state of the parent's collector into the start of a forked child's
    /// trace: a new file and the child's channels. The trace names the parent's trace and its
    /// length at the fork (the parent flushed everything before it forked), where the blocks
    /// the child inherited are, rather than repeat them; it defines its own stacks afresh and
    /// the parent's code objects as its stacks first refer to them. The parent's unwritten
    /// payload stays the parent's.
    pub fn start_child_trace(
        &mut self,
        child: ChildStart,
        events: Receiver<Message>,
        spare_batches: Sender<Vec<u64>>,
    ) -> std::io::Result<()> {
        let parent_trace = self.chunks.get_ref().path().to_string();
        let parent_trace_bytes = self.chunks.bytes_written();
        let parent_start_time_unix_ns = self.start_time_unix_ns;
        self.chunks = child.trace.chunks;
        self.encoder = child.trace.encoder;
        self.start_time_unix_ns = child.trace.start_time_unix_ns;
        self.events = events;
        self.spare_batches = spare_batches;
        // What the parent's channel held back is the parent's.
        self.held_back.clear();
        for module in self.modules.modules() {
            self.encoder.module(module);
        }
        for runtime in &self.python_runtimes {
            self.encoder.python_runtime(runtime);
        }
        if let Some(ignores) = self.python_ignores_environment {
            self.encoder.python_config(ignores);
        }
        self.codes_unwritten = self.python_codes.keys().copied().collect();
        self.stacks.start_child_trace();
        self.inherit_at_fork();
        let inherited = self.inherited_totals();
        self.encoder.fork(&ForkInfo {
            inherited_blocks: inherited.0,
            inherited_bytes: inherited.1,
            parent_trace,
            parent_trace_bytes,
            parent_start_time_unix_ns,
            ..child.fork
        });
        self.flush()
    }

    /// Writes the code objects that stacks defined since the last call refer to and that
    /// this (forked child's) trace does not have yet.
    fn write_noted_codes(&mut self) {
        let Some(noted) = self.stacks.take_noted_codes() else {
            return;
        };
        for code_id in noted {
            if self.codes_unwritten.remove(&code_id) {
                if let Some(code) = self.python_codes.get(&code_id) {
                    self.encoder.python_code(code);
                }
            }
        }
    }

    fn finish(&mut self, ending: Ending) -> Result<(), String> {
        self.take_in_everything();
        if let (Some(exiting), Some(time_limit)) = (ending.scan_from, self.scan.time_limit) {
            self.scan_reachability(exiting, time_limit, false);
        }
        self.encoder.end(&End {
            kind: ending.kind,
            status: ending.status,
            stats: self.source.stats(),
        });
        self.flush().map_err(|e| format!("cannot write the trace: {e}"))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.last_flush = Instant::now();
        write_pending(&mut self.chunks, &mut self.encoder)
    }

    /// The stack node of an event's stack (see [`StackTree::intern`]), the code objects it
    /// names written first where this trace lacks them.
    fn intern_stack(&mut self, shared_frames: usize, frames: &[u64]) -> u64 {
        let stack = self
            .stacks
            .intern(shared_frames, frames, &mut self.encoder, &mut self.modules);
        self.write_noted_codes();
        stack
    }

    fn process_batch(&mut self, mut batch: Vec<u64>) {
        let mut events = BatchEvents::new(&batch).peekable();
        while let Some(event) = events.next() {
            match event {
                BatchEvent::Alloc {
                    kind,
                    thread_id,
                    seq,
                    address,
                    size,
                    frames,
                    shared_frames,
                } => {
                    let stack = self.intern_stack(shared_frames, frames);
                    let block = CollectorBlock { seq, size };
                    self.address_bits |= address & 0xf;
                    self.encoder.alloc(&Alloc {
                        seq,
                        thread_id,
                        address,
                        size,
                        stack,
                        kind,
                    });
                    // The block freed by the thread's very next event: one live-set update.
                    match events
                        .next_if(|next| matches!(next, BatchEvent::Free { address: freed, .. } if *freed == address))
                    {
                        Some(BatchEvent::Free {
                            thread_id,
                            seq: free_seq,
                            ..
                        }) => {
                            self.live.alloc_and_free(address, block, free_seq);
                            self.dangling.note_free(address, size);
                            self.encoder.free(&Free {
                                seq: free_seq,
                                thread_id,
                                address,
                            });
                        }
                        _ => {
                            self.live.alloc(address, block);
                            self.large.note(address, block, &self.live);
                        }
                    }
                }
                BatchEvent::Reborn {
                    thread_id,
                    free_seq,
                    alloc_seq,
                    block,
                    stale,
                    frames,
                    shared_frames,
                } => {
                    // Interned even when the rebirth is dropped: the next event may share its words.
                    let stack = self.intern_stack(shared_frames, frames);
                    self.reborn(Rebirth {
                        thread_id,
                        free_seq,
                        alloc_seq,
                        block,
                        stale,
                        stack,
                    });
                }
                BatchEvent::Free {
                    thread_id,
                    seq,
                    address,
                } => {
                    if let Some(size) = self.live.free(address, seq) {
                        self.dangling.note_free(address, size);
                    }
                    self.encoder.free(&Free {
                        seq,
                        thread_id,
                        address,
                    });
                }
            }
        }
        if !self.rebirths.is_empty() {
            self.retry_rebirths(false);
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

    /// Records modules that appeared and disappeared since the last snapshot.
    fn update_modules(&mut self, snapshot: Vec<Module>) {
        if self.modules.update(snapshot, &mut self.encoder) {
            self.stacks.retire_all();
        }
    }
}
