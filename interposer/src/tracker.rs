//! What a hook does once it has the real result: the per-thread re-entrancy guard, the
//! global sequence number, and packing events into the thread's batch; plus start-up, thread
//! exit, fork, exec and process exit.
//!
//! Fork: the `pthread_atfork` prepare handler has the writer take in everything recorded and
//! park (its thread ends, so the program forks with no libleak thread running: CPython 3.12+
//! counts threads right after `fork` to warn about forking a multi-threaded process). The
//! writer stays parked until a hook runs [`RESUME_AFTER_FORK`] later (or needs it sooner);
//! in the child, it then starts the child's own trace from the parked state.
//!
//! In-memory event layout (a batch is a `Vec<u64>`, read only by [`crate::writer`]):
//! - alloc: `[header, seq, address, size, frame…]`, frames innermost first;
//! - free:  `[header, seq, address]`;
//!
//! where `header = tag | kind << 8 | frame_count << 16 | thread_id << 32`.
//!
//! Nothing here may panic, block while holding a slot, or allocate except through the real
//! allocator (every allocation happens with the guard set).

use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::fs::OpenOptions;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use libleak_format::{program_name, trace_file_name, AllocKind, ExitKind, ForkInfo, ProcessInfo, PythonRuntime, Stats};

use crate::config::{self, Config, PythonMalloc};
use crate::ffi::buffer::WordBuffer;
use crate::ffi::slots::{self, Slot};
use crate::ffi::{hooks, signals, sys};
use crate::order;
use crate::python;
use crate::reach::ExitingThread;
use crate::stack_words;
use crate::trace_file::TraceFile;
use crate::unwind::{self, Registers};
use crate::writer::{ChildStart, Ending, Message, ScanSettings, Stopped, Writer};

pub const EVENT_ALLOC: u64 = 1;
pub const EVENT_FREE: u64 = 2;
/// Deepest native stack recorded; deeper stacks are cut (and counted).
pub use crate::unwind::MAX_FRAMES;
/// A batch is handed to the writer once it holds this many words.
const BATCH_WORDS: usize = 16 * 1024;
/// How far past its end a batch's memory is fetched (for writing) ahead of the events that
/// will fill it. A recycled batch was last read on the writer's core: without the hint, each
/// new cache line of it made the allocating thread wait for the line to come over, and the
/// locked instructions in malloc, free and the sequence table waited for those stores. How
/// long depends on where the two cores sit: on this VM, at times, 3× the whole cost of
/// recording a native allocation. 1 KiB is a few Python events ahead (256 bytes was not
/// enough).
const PREFETCH_BYTES: usize = 1024;
/// Batches in flight before producers wait: bounds the memory the interposer adds.
const CHANNEL_BATCHES: usize = 64;
/// How long a producer pauses before offering a message again when the writer is behind.
const WRITER_BEHIND_PAUSE_US: u64 = 100;
/// How long the writer stays parked after a fork (unless a producer needs it sooner): past
/// the program's own checks right after `fork` returns, within one flush interval.
const RESUME_AFTER_FORK: Duration = Duration::from_millis(100);
/// How long `fork` waits for the writer to park before giving up on tracing the child.
const PARK_TIMEOUT: Duration = Duration::from_secs(2);
/// Forked generations that get a channel of their own; deeper fork chains are not traced.
const MAX_FORK_DEPTH: usize = 64;

const STARTING: u8 = 0;
const RECORDING: u8 = 1;
const FINISHING: u8 = 2;
const OFF: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(STARTING);
static PID: AtomicU32 = AtomicU32::new(0);
static EXIT_STATUS: AtomicI64 = AtomicI64::new(i64::MIN);
static OWN_CODE_START: AtomicUsize = AtomicUsize::new(0);
static OWN_CODE_END: AtomicUsize = AtomicUsize::new(0);

static REENTRANT_CALLS: AtomicU64 = AtomicU64::new(0);
static PRODUCER_WAITS: AtomicU64 = AtomicU64::new(0);
static TRUNCATED_STACKS: AtomicU64 = AtomicU64::new(0);
/// The exit scan's time limit in milliseconds (0: no scan): the exiting thread waits that
/// much longer for the writer.
static SCAN_TIME_LIMIT: AtomicU64 = AtomicU64::new(0);
/// Larger freed blocks are not zeroed: they are rare, costly to clear, and mostly returned
/// to the system rather than reused.
pub const MAX_SCRUB_BYTES: usize = 64 << 10;

/// Set by the writer once the end marker is on disk.
pub static WRITER_DONE: AtomicU8 = AtomicU8::new(0);

struct Channels {
    events: Sender<Message>,
    spare_batches: Receiver<Vec<u64>>,
}
/// The channels of each fork generation: a forked child cannot use its parent's (another
/// thread may have been inside a send at the fork), so it makes new ones one entry further.
static CHANNELS: [OnceLock<Channels>; MAX_FORK_DEPTH] = [const { OnceLock::new() }; MAX_FORK_DEPTH];
static GENERATION: AtomicUsize = AtomicUsize::new(0);
static EXIT_KEY: OnceLock<sys::ThreadExitKey> = OnceLock::new();
static TRACE_PATH: Mutex<Option<String>> = Mutex::new(None);
/// The writer's state whenever no writer thread runs it: before its thread starts, and while
/// parked around a fork.
static WRITER_STATE: Mutex<Option<Box<Writer>>> = Mutex::new(None);
/// The running writer thread (0: none), joined when it parks.
static WRITER_THREAD: AtomicU64 = AtomicU64::new(0);
static WRITER_PARKED: AtomicBool = AtomicBool::new(false);
static PARKED_AT_NS: AtomicU64 = AtomicU64::new(0);
/// A fork is under way in some thread: the parked writer must not be resumed.
static FORKING: AtomicBool = AtomicBool::new(false);
/// The writer did not park in time for the last fork: that child does not record.
static FORK_FAILED: AtomicBool = AtomicBool::new(false);
/// False in a forked child until its writer has opened the child's trace.
static TRACE_OPEN: AtomicBool = AtomicBool::new(false);
/// `LIBLEAK_CHECK_UNWIND`: every how many allocations to compare the stack with libgcc's.
static CHECK_UNWIND_EVERY: AtomicU64 = AtomicU64::new(0);
static UNWIND_CHECK_CALLS: AtomicU64 = AtomicU64::new(0);
static UNWIND_CHECKS: AtomicU64 = AtomicU64::new(0);
static UNWIND_MISMATCHES: AtomicU64 = AtomicU64::new(0);
/// In a forked child: the sequence number at the fork.
static CHILD_FORK_SEQ: AtomicU64 = AtomicU64::new(0);

/// What a forked child's writer thread needs to start the child's trace.
struct PendingChild {
    fork: ForkInfo,
    events: Receiver<Message>,
    spare_batches: Sender<Vec<u64>>,
}
static PENDING_CHILD: Mutex<Option<PendingChild>> = Mutex::new(None);

fn channels() -> Option<&'static Channels> {
    CHANNELS.get(GENERATION.load(Ordering::Acquire))?.get()
}

/// Where a thread is relative to libleak. An allocator call made while the thread is already
/// inside a hook comes either from libleak itself or from a signal handler that interrupted
/// the hook; the phase, and in [`Phase::Recording`] a look for a signal frame, tell them
/// apart (libleak's own Rust code allocates through the real allocator directly, but the
/// libraries it calls may not).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not inside libleak.
    Outside,
    /// In a hook, around the real call: nothing of libleak's is held, so a nested call (a
    /// signal handler's) is recorded in full.
    AroundRealCall,
    /// Recording an event: the unwinder, the thread's slot or a channel may be in use. A
    /// nested call from a signal handler is recorded without a stack, and handed on when the
    /// hook is left; any other is libleak's own (a library it calls allocating lazily), not
    /// recorded, only counted.
    Recording,
    /// libleak's own work that may allocate through the hooks (start-up, dlopen, fork, exit;
    /// the writer thread): nested calls are not recorded, only counted.
    OwnWork,
}

/// Events a signal handler's allocator calls can leave for the interrupted hook to record.
const PENDING_EVENTS: usize = 32;
const PENDING_EVENT_WORDS: usize = 4;

struct ThreadState {
    phase: Cell<Phase>,
    /// An address in the frame that entered [`Phase::Recording`]: a signal handler's frame
    /// lies below it.
    recording_frame: Cell<usize>,
    slot: Cell<Option<&'static Slot>>,
    thread_id: Cell<u32>,
    /// Set once the thread's exit destructor ran: its thread-locals (and those of the
    /// channel) may be gone, so it no longer talks to the writer; the writer's sweep collects
    /// what it still records.
    exiting: Cell<bool>,
    /// Events recorded by a signal handler while this thread was in [`Phase::Recording`]:
    /// `[header without thread, seq, address, size]` each. Atomics, because a nested handler
    /// may interrupt another's append; only this thread touches them.
    pending: [AtomicU64; PENDING_EVENTS * PENDING_EVENT_WORDS],
    /// Slots reserved in `pending` (may exceed [`PENDING_EVENTS`]: the excess is lost and
    /// counted).
    pending_len: AtomicUsize,
}

thread_local! {
    // Const-initialised and without Drop: accessing it never allocates or registers a
    // destructor, so it is safe from inside malloc.
    static THREAD: ThreadState = const {
        ThreadState {
            phase: Cell::new(Phase::Outside),
            recording_frame: Cell::new(0),
            slot: Cell::new(None),
            thread_id: Cell::new(0),
            exiting: Cell::new(false),
            pending: [const { AtomicU64::new(0) }; PENDING_EVENTS * PENDING_EVENT_WORDS],
            pending_len: AtomicUsize::new(0),
        }
    };
}

/// A hook's permission to record, from [`enter`] to [`Hook::leave`].
pub struct Hook {
    /// The phase the hook was entered in. [`Phase::Recording`]: a signal handler interrupted
    /// the recording of another event on this thread, so this hook's events are deferred.
    outer: Phase,
}

/// Enters a hook: `Some` when the call is to be recorded (the caller makes the real call,
/// records through the returned [`Hook`], then leaves it); `None` when not recording, or when
/// the call is libleak's own.
#[inline(always)]
pub fn enter() -> Option<Hook> {
    if STATE.load(Ordering::Relaxed) != RECORDING {
        return None;
    }
    THREAD.with(|t| match t.phase.get() {
        Phase::Outside => {
            t.phase.set(Phase::AroundRealCall);
            Some(Hook { outer: Phase::Outside })
        }
        Phase::AroundRealCall => Some(Hook {
            outer: Phase::AroundRealCall,
        }),
        Phase::Recording if in_signal_handler(t) => Some(Hook {
            outer: Phase::Recording,
        }),
        Phase::Recording | Phase::OwnWork => {
            REENTRANT_CALLS.fetch_add(1, Ordering::Relaxed);
            None
        }
    })
}

impl Hook {
    /// Records a new block, after the real allocation; the stack is unwound from `caller`,
    /// the hook's caller at the call.
    #[inline(always)]
    pub fn record_alloc(&self, address: usize, size: usize, kind: AllocKind, caller: Registers) {
        let seq = next_seq(address);
        if self.outer == Phase::Recording {
            defer([EVENT_ALLOC | (kind as u64) << 8, seq, address as u64, size as u64]);
        } else {
            recording(|t| record_alloc(t, seq, address, size, kind, caller));
        }
    }

    /// Records a free that was given `seq` before the real free ran.
    #[inline(always)]
    pub fn record_free(&self, address: usize, seq: u64) {
        if self.outer == Phase::Recording {
            defer([EVENT_FREE, seq, address as u64, 0]);
        } else {
            recording(|t| record_free(t, seq, address));
        }
    }

    #[inline(always)]
    pub fn leave(self) {
        THREAD.with(|t| {
            t.phase.set(self.outer);
            if self.outer == Phase::Outside && t.pending_len.load(Ordering::Acquire) != 0 {
                hand_on_pending(t);
            }
        });
    }
}

/// Runs `record` in [`Phase::Recording`].
#[inline(always)]
fn recording(record: impl FnOnce(&ThreadState)) {
    THREAD.with(|t| {
        let frame = 0u8;
        t.recording_frame
            .set(std::hint::black_box(&frame) as *const u8 as usize);
        t.phase.set(Phase::Recording);
        record(t);
        t.phase.set(Phase::AroundRealCall);
    });
}

/// A hook entered while this thread records an event: is it a signal handler's?
#[cold]
fn in_signal_handler(t: &ThreadState) -> bool {
    let here = 0u8;
    signals::handler_between(
        std::hint::black_box(&here) as *const u8 as usize,
        t.recording_frame.get(),
    )
}

/// Keeps a signal handler's event for the interrupted hook to record when it leaves.
#[cold]
fn defer(event: [u64; PENDING_EVENT_WORDS]) {
    THREAD.with(|t| {
        let index = t.pending_len.fetch_add(1, Ordering::AcqRel);
        if index >= PENDING_EVENTS {
            REENTRANT_CALLS.fetch_add(1, Ordering::Relaxed);
            return;
        }
        for (cell, word) in t.pending[index * PENDING_EVENT_WORDS..].iter().zip(event) {
            cell.store(word, Ordering::Relaxed);
        }
    });
}

/// Records the events signal handlers left while this thread was recording. Runs as the
/// outermost hook leaves; a handler that interrupts this defers again, and is taken in the
/// next round.
#[cold]
fn hand_on_pending(t: &ThreadState) {
    loop {
        let reserved = t.pending_len.load(Ordering::Acquire);
        if reserved == 0 {
            return;
        }
        t.phase.set(Phase::Recording);
        let count = reserved.min(PENDING_EVENTS);
        let mut events = [[0u64; PENDING_EVENT_WORDS]; PENDING_EVENTS];
        for (index, event) in events[..count].iter_mut().enumerate() {
            for (word, cell) in event.iter_mut().zip(&t.pending[index * PENDING_EVENT_WORDS..]) {
                *word = cell.load(Ordering::Relaxed);
            }
        }
        // A handler that appended while we copied makes this fail; copy again.
        if t.pending_len
            .compare_exchange(reserved, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            for &[header, seq, address, size] in &events[..count] {
                push_event(t, |batch, thread_id| {
                    let header = header | u64::from(thread_id) << 32;
                    if header & 0xff == EVENT_ALLOC {
                        batch.extend_from_slice(&[header, seq, address, size]);
                    } else {
                        batch.extend_from_slice(&[header, seq, address]);
                    }
                });
            }
        }
        t.phase.set(Phase::Outside);
    }
}

/// Runs `f` as libleak's own work: allocator calls it makes through the hooks are not
/// recorded.
fn guarded<R>(f: impl FnOnce() -> R) -> R {
    let was = THREAD.with(|t| t.phase.replace(Phase::OwnWork));
    let result = f();
    THREAD.with(|t| t.phase.set(was));
    result
}

/// Whether freed blocks are zeroed before the real free: when the exit scan will run.
#[inline(always)]
pub fn scrub_freed() -> bool {
    SCAN_TIME_LIMIT.load(Ordering::Relaxed) != 0
}

/// The sequence number of an event on the block at `address` (see [`order`]).
#[inline(always)]
pub fn next_seq(address: usize) -> u64 {
    order::next(address)
}

#[inline(always)]
fn record_alloc(t: &ThreadState, seq: u64, address: usize, size: usize, kind: AllocKind, caller: Registers) {
    let mut stack = unwind::Stack::new();
    let from_caller = unwind::capture_from_caller(&mut stack, caller);
    if stack.is_full() {
        TRUNCATED_STACKS.fetch_add(1, Ordering::Relaxed);
    }
    let frames = if from_caller {
        stack.as_slice()
    } else {
        without_own_frames(stack.as_slice())
    };
    if CHECK_UNWIND_EVERY.load(Ordering::Relaxed) != 0 {
        check_unwind(frames, stack.is_full());
    }
    let mut python_words = WordBuffer::<{ python::MAX_WORDS }>::new();
    python::capture(&mut python_words, &mut |code| {
        send_message(Message::PythonCode(Box::new(code)))
    });
    let python_words = python_words.as_slice();
    push_event(t, |batch, thread_id| {
        let frame_count = frames.len() + python_words.len();
        let header = EVENT_ALLOC | (kind as u64) << 8 | (frame_count as u64) << 16 | u64::from(thread_id) << 32;
        batch.extend_from_slice(&[header, seq, address as u64, size as u64]);
        stack_words::interleave(batch, frames, python_words, python::eval_loop());
    });
}

/// `frames`, as libgcc unwound them from inside the interposer, without its own innermost
/// frames.
fn without_own_frames(frames: &[usize]) -> &[usize] {
    let (start, end) = (
        OWN_CODE_START.load(Ordering::Relaxed),
        OWN_CODE_END.load(Ordering::Relaxed),
    );
    let own = frames.iter().take_while(|&&ip| ip >= start && ip < end).count();
    &frames[own..]
}

/// `LIBLEAK_CHECK_UNWIND`: compare every Nth stack (`frames`, the interposer's own frames
/// trimmed) with libgcc's.
#[cold]
#[inline(never)]
fn check_unwind(frames: &[usize], truncated: bool) {
    let every = CHECK_UNWIND_EVERY.load(Ordering::Relaxed);
    if truncated || !UNWIND_CHECK_CALLS.fetch_add(1, Ordering::Relaxed).is_multiple_of(every) {
        return;
    }
    let mut reference = unwind::Stack::new();
    unwind::capture_slowly(&mut reference);
    let reference = without_own_frames(reference.as_slice());
    UNWIND_CHECKS.fetch_add(1, Ordering::Relaxed);
    if frames != reference && UNWIND_MISMATCHES.fetch_add(1, Ordering::Relaxed) < 3 {
        let hex = |ips: &[usize]| ips.iter().map(|ip| format!("{ip:#x}")).collect::<Vec<_>>().join(" ");
        sys::write_stderr(
            format!(
                "libleak: unwinder check: stacks differ\n  libleak: {}\n  libgcc:  {}\n",
                hex(frames),
                hex(reference)
            )
            .as_bytes(),
        );
    }
}

#[inline(always)]
fn record_free(t: &ThreadState, seq: u64, address: usize) {
    push_event(t, |batch, thread_id| {
        batch.extend_from_slice(&[EVENT_FREE | u64::from(thread_id) << 32, seq, address as u64]);
    });
}

#[inline(always)]
fn push_event(t: &ThreadState, write: impl FnOnce(&mut Vec<u64>, u32)) {
    let slot = match t.slot.get() {
        Some(slot) => slot,
        None => {
            let slot = slots::claim();
            // A full-size batch from the start: growing one by doubling would free the
            // smaller buffers, block addresses and all, into the program's heap, where
            // the exit scan would take the stale addresses for pointers.
            slot.with_batch(|batch| {
                if batch.capacity() < BATCH_WORDS {
                    let mut fresh = fresh_batch();
                    fresh.extend_from_slice(batch);
                    *batch = fresh;
                }
            });
            if let Some(key) = EXIT_KEY.get() {
                key.set(slot.as_ptr());
            }
            t.slot.set(Some(slot));
            t.thread_id.set(sys::gettid());
            slot
        }
    };
    let thread_id = t.thread_id.get();
    let may_send = !t.exiting.get();
    let full = slot.with_batch(|batch| {
        let before = batch.len();
        write(batch, thread_id);
        // The lines as far ahead of the batch's end as this event's words reach.
        crate::ffi::buffer::prefetch_for_write(batch, before * 8 + PREFETCH_BYTES, batch.len() * 8 + PREFETCH_BYTES);
        (batch.len() >= BATCH_WORDS && may_send).then(|| std::mem::replace(batch, fresh_batch()))
    });
    if let Some(full) = full {
        send_batch(full);
    }
    if WRITER_PARKED.load(Ordering::Relaxed) {
        resume_writer_if_due();
    }
}

#[cold]
fn resume_writer_if_due() {
    let parked_for = sys::monotonic_ns().saturating_sub(PARKED_AT_NS.load(Ordering::Relaxed));
    if parked_for >= RESUME_AFTER_FORK.as_nanos() as u64 {
        resume_writer();
    }
}

/// Starts a writer thread on the parked state (not while a fork is under way).
fn resume_writer() {
    if FORKING.load(Ordering::Acquire)
        || WRITER_PARKED
            .compare_exchange(true, false, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    guarded(|| match sys::spawn_thread(hooks::writer_main) {
        Some(handle) => WRITER_THREAD.store(handle.to_raw(), Ordering::Release),
        None => {
            STATE.store(OFF, Ordering::Relaxed);
            sys::write_stderr(b"libleak: cannot restart the writer thread after fork; recording stopped\n");
        }
    });
}

fn fresh_batch() -> Vec<u64> {
    channels()
        .and_then(|c| c.spare_batches.try_recv().ok())
        .unwrap_or_else(|| Vec::with_capacity(BATCH_WORDS + MAX_FRAMES + python::MAX_WORDS + 8))
}

fn send_batch(batch: Vec<u64>) {
    if !batch.is_empty() {
        send_message(Message::Batch(batch));
    }
}

/// Hands a message to the writer, waiting (and counting the wait) when it is behind. An
/// exiting thread sends nothing (see [`offer`]); its batches wait in its slot for the sweep,
/// and a code object it defines is lost (its frames then read "unknown code").
fn send_message(message: Message) {
    if THREAD.with(|t| t.exiting.get()) {
        return;
    }
    if sys::getpid() != PID.load(Ordering::Relaxed) {
        // A vfork child (sharing our memory: it must change nothing) or a child made without
        // fork handlers (clone, _Fork), which has no writer.
        return;
    }
    offer(message, None);
}

/// Puts `message` on the writer's channel, retrying while it is full until `deadline`.
///
/// Never uses the channel's blocking send: that registers the caller with
/// `std::thread::current()`, which panics in a thread whose thread-locals are being destroyed
/// (a thread-exit destructor that frees memory, or libleak's own thread-exit flush).
fn offer(mut message: Message, deadline: Option<Instant>) -> bool {
    let Some(channels) = channels() else { return false };
    let mut waited = false;
    loop {
        match channels.events.try_send(message) {
            Ok(()) => return true,
            Err(TrySendError::Full(returned)) => {
                if WRITER_PARKED.load(Ordering::Acquire) {
                    resume_writer();
                }
                if !waited {
                    PRODUCER_WAITS.fetch_add(1, Ordering::Relaxed);
                    waited = true;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return false;
                }
                message = returned;
                sys::sleep_us(WRITER_BEHIND_PAUSE_US);
            }
            Err(TrySendError::Disconnected(_)) => {
                STATE.store(OFF, Ordering::Relaxed);
                return false;
            }
        }
    }
}

/// Takes the partial batch of every thread (the writer's periodic sweep, and at exit).
pub fn take_all_batches(each: impl FnMut(Vec<u64>)) {
    let mut taken = Vec::new();
    let took = slots::for_each_batch(|batch| {
        if !batch.is_empty() {
            taken.push(std::mem::replace(batch, fresh_batch()));
        }
    });
    if !took && !BARRIER_FAILED.swap(true, Ordering::Relaxed) {
        sys::write_stderr(b"libleak: membarrier failed; events of idle threads may be missing from the trace\n");
    }
    taken.into_iter().for_each(each);
}

static BARRIER_FAILED: AtomicBool = AtomicBool::new(false);

pub fn stats() -> Stats {
    Stats {
        reentrant_calls: REENTRANT_CALLS.load(Ordering::Relaxed),
        producer_waits: PRODUCER_WAITS.load(Ordering::Relaxed),
        truncated_stacks: TRUNCATED_STACKS.load(Ordering::Relaxed),
        slot_locks: !slots::uses_fences(),
    }
}

/// An object may have been unloaded (dlclose returned): unwind rules cached for its
/// addresses are dropped, then the module list is snapshot.
pub fn module_unloaded() {
    unwind::tables::forget_all();
    modules_changed();
}

/// The module list changed (dlopen/dlclose returned): snapshot it now, in the caller's
/// thread, so that a library dlclosed soon after is still described in the trace.
pub fn modules_changed() {
    if STATE.load(Ordering::Relaxed) != RECORDING || THREAD.with(|t| t.phase.get() != Phase::Outside) {
        return;
    }
    guarded(|| {
        if channels().is_none() {
            return;
        }
        let exe = exe_path();
        let modules = sys::loaded_modules(&exe);
        // Flush this thread's events first, so the writer sees them against the old map.
        if let Some(slot) = THREAD.with(|t| t.slot.get()) {
            let batch = slot.with_batch(|batch| std::mem::replace(batch, fresh_batch()));
            send_batch(batch);
        }
        offer(Message::Modules(modules), None);
        // An embedding program may load the interpreter itself.
        if let Some(runtime) = detect_python(&Config::from_env()) {
            offer(Message::PythonRuntime(runtime), None);
        }
    });
}

/// The thread is exiting (its key destructor runs). Its partial batch stays in the slot for
/// the writer's next sweep; the slot becomes free for a new thread, which appends after it.
pub fn thread_exited(slot: &'static Slot) {
    THREAD.with(|t| {
        t.exiting.set(true);
        t.slot.set(None);
    });
    slot.release();
}

/// The `fork` prepare handler: the writer takes in everything recorded so far and parks, so
/// that its state is whole in both processes and no libleak thread runs across the fork.
pub fn before_fork() {
    FORK_FAILED.store(true, Ordering::Relaxed);
    if STATE.load(Ordering::Acquire) != RECORDING || sys::getpid() != PID.load(Ordering::Relaxed) {
        return;
    }
    guarded(|| {
        FORKING.store(true, Ordering::SeqCst);
        if !WRITER_PARKED.load(Ordering::Acquire) {
            let deadline = Instant::now() + PARK_TIMEOUT;
            if !offer(Message::Park, Some(deadline)) {
                return;
            }
            while !WRITER_PARKED.load(Ordering::Acquire) {
                if Instant::now() >= deadline {
                    return;
                }
                sys::sleep_us(50);
            }
            let thread = WRITER_THREAD.swap(0, Ordering::AcqRel);
            if thread != 0 {
                sys::ThreadHandle::from_raw(thread).join();
            }
        }
        FORK_FAILED.store(false, Ordering::Relaxed);
    });
}

/// The `fork` parent handler: the writer resumes a little later (see [`RESUME_AFTER_FORK`]).
pub fn after_fork_in_parent() {
    PARKED_AT_NS.store(sys::monotonic_ns(), Ordering::Relaxed);
    FORKING.store(false, Ordering::Release);
}

/// The `fork` child handler: keep recording, into a trace of the child's own that the
/// writer starts from its parked state when it resumes.
pub fn after_fork_in_child() {
    let generation = GENERATION.load(Ordering::Relaxed) + 1;
    if FORK_FAILED.load(Ordering::Relaxed) || STATE.load(Ordering::Acquire) != RECORDING || generation >= MAX_FORK_DEPTH
    {
        FORKING.store(false, Ordering::Relaxed);
        if STATE.swap(OFF, Ordering::AcqRel) == RECORDING {
            sys::write_stderr(
                b"libleak: this forked child is not recorded (the writer could not pause for the fork)\n",
            );
        }
        return;
    }
    guarded(|| {
        let parent_pid = PID.load(Ordering::Relaxed);
        PID.store(sys::getpid(), Ordering::Relaxed);
        THREAD.with(|t| t.thread_id.set(sys::gettid()));
        let (events_tx, events_rx) = crossbeam_channel::bounded(CHANNEL_BATCHES);
        let (spare_tx, spare_rx) = crossbeam_channel::bounded(CHANNEL_BATCHES);
        let _ = CHANNELS[generation].set(Channels {
            events: events_tx,
            spare_batches: spare_rx,
        });
        GENERATION.store(generation, Ordering::Release);
        slots::renew_fences_after_fork();
        let threads_cut = slots::adopt_after_fork(THREAD.with(|t| t.slot.get()));
        // The child's own events number from here; all the parent's are below.
        let fork_seq = order::above_all();
        order::start_thread_at(fork_seq - 1);
        order::allow_one_thread_alone(slots::uses_fences());
        CHILD_FORK_SEQ.store(fork_seq, Ordering::Relaxed);
        if let Ok(mut pending) = PENDING_CHILD.lock() {
            *pending = Some(PendingChild {
                fork: ForkInfo {
                    parent_pid,
                    fork_seq,
                    threads_cut,
                    ..ForkInfo::default()
                },
                events: events_rx,
                spare_batches: spare_tx,
            });
        }
        TRACE_OPEN.store(false, Ordering::Relaxed);
        WRITER_DONE.store(0, Ordering::Relaxed);
        WRITER_THREAD.store(0, Ordering::Relaxed);
        PARKED_AT_NS.store(sys::monotonic_ns(), Ordering::Relaxed);
        FORKING.store(false, Ordering::Release);
    });
}

/// The program an `exec` is about to run.
pub enum ExecTarget<'a> {
    Path(&'a CStr),
    /// A name without a slash, looked up along `PATH` (execvp).
    SearchPath(&'a CStr),
    /// A file descriptor (fexecve): assumed to succeed.
    Unknown,
}

/// Called just before an `exec` (the program image is about to be replaced): ends the trace,
/// unless the exec would fail anyway. Python's `os.execvp` tries each `PATH` entry in turn,
/// and a failed attempt must leave recording on.
pub fn before_exec(target: ExecTarget) {
    if sys::getpid() != PID.load(Ordering::Relaxed) {
        return; // a vfork child: it shares our memory and must change nothing
    }
    let will_run = guarded(|| match target {
        ExecTarget::Path(path) => sys::is_executable(path),
        ExecTarget::SearchPath(name) => {
            let search = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
            std::env::split_paths(&search).any(|dir| {
                let mut candidate = dir.into_os_string().into_vec();
                candidate.push(b'/');
                candidate.extend_from_slice(name.to_bytes());
                CString::new(candidate).is_ok_and(|path| sys::is_executable(&path))
            })
        }
        ExecTarget::Unknown => true,
    });
    if will_run {
        finish(ExitKind::Exec, None);
    }
}

pub fn note_exit_status(status: i32) {
    if sys::getpid() == PID.load(Ordering::Relaxed) {
        EXIT_STATUS.store(status.into(), Ordering::Relaxed);
    }
}

fn exe_path() -> String {
    std::fs::read_link("/proc/self/exe")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The library constructor: set everything up, then start recording. On any failure, say so
/// once and let the program run unrecorded.
pub fn start() {
    guarded(|| match start_recording() {
        Ok(()) => STATE.store(RECORDING, Ordering::Release),
        Err(reason) => {
            STATE.store(OFF, Ordering::Release);
            if !reason.is_empty() {
                sys::write_stderr(format!("libleak: {reason}; not recording\n").as_bytes());
            }
        }
    });
}

fn start_recording() -> Result<(), String> {
    crate::ffi::real::get().ok_or("cannot find the real allocator")?;
    let config = Config::from_env();
    if config.disabled {
        return Err(String::new());
    }
    // Before any event: no other thread appends yet.
    slots::choose_fences(config.slot_locks);
    order::allow_one_thread_alone(slots::uses_fences());
    let info = process_info();
    let (file, path) = open_trace(&config, &info)?;
    CHECK_UNWIND_EVERY.store(config.check_unwind_every, Ordering::Relaxed);
    signals::init();
    let modules = sys::loaded_modules(&info.exe);
    let python_runtime = detect_python(&config);
    let own_address = start as *const () as usize;
    if let Some(own) = modules.iter().find(|m| m.contains(own_address as u64)) {
        config::prepare_children(&config, &own.path, &info.cwd);
        let start = own.segments.iter().map(|s| own.bias + s.vaddr).min().unwrap_or(0);
        let end = own
            .segments
            .iter()
            .map(|s| own.bias + s.vaddr + s.memsz)
            .max()
            .unwrap_or(0);
        OWN_CODE_START.store(start as usize, Ordering::Relaxed);
        OWN_CODE_END.store(end as usize, Ordering::Relaxed);
    }
    let (events_tx, events_rx) = crossbeam_channel::bounded(CHANNEL_BATCHES);
    let (spare_tx, spare_rx) = crossbeam_channel::bounded(CHANNEL_BATCHES);
    let _ = CHANNELS[0].set(Channels {
        events: events_tx,
        spare_batches: spare_rx,
    });
    let key = sys::ThreadExitKey::create(hooks::thread_exit).ok_or("cannot create a thread key")?;
    let _ = EXIT_KEY.set(key);
    let own_code = OWN_CODE_START.load(Ordering::Relaxed) as u64;
    let writer = Writer::new(
        file,
        info,
        modules,
        python_runtime,
        events_rx,
        spare_tx,
        ScanSettings {
            own_code,
            time_limit: config.scan_time_limit,
        },
    )
    .map_err(|e| format!("cannot write {path}: {e}"))?;
    SCAN_TIME_LIMIT.store(
        config.scan_time_limit.map_or(0, |d| d.as_millis() as u64),
        Ordering::Relaxed,
    );
    *WRITER_STATE.lock().map_err(|_| "start-up lock poisoned")? = Some(Box::new(writer));
    set_trace_path(path);
    TRACE_OPEN.store(true, Ordering::Relaxed);
    PID.store(sys::getpid(), Ordering::Relaxed);
    let thread = sys::spawn_thread(hooks::writer_main).ok_or("cannot start the writer thread")?;
    WRITER_THREAD.store(thread.to_raw(), Ordering::Release);
    sys::register_fork_handlers(hooks::fork_prepare, hooks::fork_parent, hooks::fork_child);
    sys::register_exit_handler(hooks::at_exit);
    Ok(())
}

/// Looks for a CPython interpreter; when found (the first time), makes Python objects visible
/// to the hooks by selecting the malloc allocator for them, unless the user chose otherwise.
fn detect_python(config: &Config) -> Option<PythonRuntime> {
    let mut runtime = python::detect()?;
    if !runtime.note.is_empty() {
        sys::write_stderr(format!("libleak: {}; recording native stacks only\n", runtime.note).as_bytes());
    }
    runtime.pythonmalloc_set = config.python_malloc == PythonMalloc::SetMalloc && config::set_pythonmalloc_malloc();
    Some(runtime)
}

fn process_info() -> ProcessInfo {
    let argv: Vec<String> = std::fs::read("/proc/self/cmdline")
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|arg| !arg.is_empty())
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect()
        })
        .unwrap_or_default();
    ProcessInfo {
        pid: sys::getpid(),
        parent_pid: sys::getppid(),
        start_time_unix_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        exe: exe_path(),
        program: program_name(&argv),
        cwd: std::env::current_dir()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        argv,
    }
}

/// Creates the trace file: never overwrites an existing file and never follows a symlink; a
/// taken name gets a numeric suffix before `.trace`.
fn open_trace(config: &Config, info: &ProcessInfo) -> Result<(TraceFile, String), String> {
    let default_name = trace_file_name(&info.program, info.pid);
    let template = match &config.output_template {
        Some(directory) if directory.ends_with('/') => format!("{directory}{default_name}"),
        Some(template) => template.clone(),
        None => default_name,
    };
    let mut base = template.replace("%p", &info.pid.to_string());
    if !base.starts_with('/') && !info.cwd.is_empty() {
        base = format!("{}/{}", info.cwd.trim_end_matches('/'), base);
    }
    for attempt in 0..1000 {
        let path = match (attempt, base.strip_suffix(".trace")) {
            (0, _) => base.clone(),
            (n, Some(stem)) => format!("{stem}.{n}.trace"),
            (n, None) => format!("{base}.{n}"),
        };
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path);
        match opened {
            Ok(file) => {
                let file =
                    TraceFile::new(file, path.clone()).map_err(|e| format!("cannot use trace file {path}: {e}"))?;
                return Ok((file, path));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot create trace file {path}: {e}")),
        }
    }
    Err(format!("cannot find a free trace file name near {base}"))
}

fn set_trace_path(path: String) {
    if let Ok(mut current) = TRACE_PATH.lock() {
        *current = Some(path);
    }
}

/// The writer thread's body: runs the writer until the trace ends, or until it parks for a
/// fork (its state then waits in [`WRITER_STATE`] and the thread ends).
pub fn run_writer_thread() {
    THREAD.with(|t| t.phase.set(Phase::OwnWork));
    let Some(mut writer) = WRITER_STATE.lock().ok().and_then(|mut w| w.take()) else {
        WRITER_DONE.store(1, Ordering::Release);
        return;
    };
    if let Some(child) = PENDING_CHILD.lock().ok().and_then(|mut p| p.take()) {
        if let Err(reason) = start_child_trace(&mut writer, child) {
            STATE.store(OFF, Ordering::Relaxed);
            sys::write_stderr(format!("libleak: {reason}; this forked child is not recorded\n").as_bytes());
            WRITER_DONE.store(1, Ordering::Release);
            return;
        }
    }
    match writer.run() {
        Stopped::Parked(writer) => {
            if let Ok(mut state) = WRITER_STATE.lock() {
                *state = Some(writer);
            }
            WRITER_PARKED.store(true, Ordering::Release);
        }
        Stopped::Finished(result) => {
            if let Err(reason) = result {
                STATE.store(OFF, Ordering::Relaxed);
                sys::write_stderr(format!("libleak: {reason}; recording stopped\n").as_bytes());
            }
            WRITER_DONE.store(1, Ordering::Release);
        }
    }
}

fn start_child_trace(writer: &mut Writer, child: PendingChild) -> Result<(), String> {
    let config = Config::from_env();
    let info = process_info();
    let (file, path) = open_trace(&config, &info)?;
    writer
        .start_child_trace(
            ChildStart {
                file,
                info,
                fork: child.fork,
            },
            child.events,
            child.spare_batches,
        )
        .map_err(|e| format!("cannot write {path}: {e}"))?;
    set_trace_path(path);
    TRACE_OPEN.store(true, Ordering::Relaxed);
    Ok(())
}

/// Ends the trace: every batch goes to the writer, which writes the end marker. Runs at most
/// once per process, in whichever of exit, `_exit` or `abort` comes first.
pub fn finish(kind: ExitKind, status: Option<i32>) {
    if sys::getpid() != PID.load(Ordering::Relaxed) {
        return; // a vfork child sharing our memory, or a child that stopped recording
    }
    if kind == ExitKind::Exec
        && !TRACE_OPEN.load(Ordering::Relaxed)
        && order::above_all() == CHILD_FORK_SEQ.load(Ordering::Relaxed)
    {
        // A forked child that execs before recording anything: no trace of its own.
        STATE.store(OFF, Ordering::Release);
        return;
    }
    if STATE
        .compare_exchange(RECORDING, FINISHING, Ordering::AcqRel, Ordering::Relaxed)
        .is_err()
    {
        return;
    }
    guarded(|| {
        if WRITER_PARKED.load(Ordering::Acquire) {
            resume_writer();
        }
        let status = status.or_else(|| {
            let noted = EXIT_STATUS.load(Ordering::Relaxed);
            (noted != i64::MIN).then_some(noted as i32)
        });
        // After `_exit` (how multiprocessing's workers and shells end) the scan still tells
        // lost blocks from those the program holds. `abort` is a crash on its way: it is not
        // delayed; nor is an `exec`, whose program is only being replaced.
        let scan_from = matches!(kind, ExitKind::Exit | ExitKind::UnderscoreExit).then(|| {
            let mut frames = Vec::new();
            unwind::frames_with_cfa(&mut frames);
            ExitingThread {
                tid: sys::gettid(),
                stack_pointer: crate::ffi::memory::stack_pointer(),
                frames,
            }
        });
        offer(
            Message::Finish(Ending {
                kind,
                status,
                scan_from,
            }),
            Some(Instant::now() + Duration::from_secs(5)),
        );
        let scan_limit = Duration::from_millis(SCAN_TIME_LIMIT.load(Ordering::Relaxed));
        let deadline = Instant::now() + Duration::from_secs(10) + scan_limit;
        while WRITER_DONE.load(Ordering::Acquire) == 0 && Instant::now() < deadline {
            sys::sleep_ms(1);
        }
        if CHECK_UNWIND_EVERY.load(Ordering::Relaxed) != 0 {
            sys::write_stderr(
                format!(
                    "libleak: unwinder check: {} stacks compared with libgcc's, {} differed; {} captures unwound by libgcc\n",
                    UNWIND_CHECKS.load(Ordering::Relaxed),
                    UNWIND_MISMATCHES.load(Ordering::Relaxed),
                    unwind::LIBGCC_CAPTURES.load(Ordering::Relaxed),
                )
                .as_bytes(),
            );
        }
        let path = TRACE_PATH.lock().ok().and_then(|p| p.clone());
        let done = WRITER_DONE.load(Ordering::Acquire) != 0;
        // Only on a terminal: programs (and their tests) that capture a child's stderr must
        // see exactly what they would see without libleak. An exec'd image says nothing: the
        // program it becomes speaks for the process.
        if let (Some(path), true, false, true) = (path, done, kind == ExitKind::Exec, sys::stderr_is_terminal()) {
            sys::write_stderr(
                format!("libleak: trace written to {path}; report it with: libleak report {path}\n").as_bytes(),
            );
        }
    });
    STATE.store(OFF, Ordering::Release);
}
