//! Each thread's standing with libleak: its [`Phase`] (outside libleak, in a hook, recording,
//! or doing libleak's own work), its event slot and id, and the events a signal handler left
//! for it. Also what happens when a thread exits.
//!
//! The thread-local is const-initialised and has no destructor, so touching it never
//! allocates or registers anything: safe from inside malloc. Must never do more than that.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::OnceLock;

use crate::batch::DEFERRED_WORDS;
use crate::stack_words::PreviousStack;
use crate::sys::slots::Slot;
use crate::sys::threads::ThreadExitKey;

/// Where a thread is relative to libleak. An allocator call made while the thread is already
/// inside a hook comes either from libleak itself or from a signal handler that interrupted
/// the hook; the phase, and in [`Phase::Recording`] a look for a signal frame, tell them
/// apart (libleak's own Rust code allocates through the real allocator directly, but the
/// libraries it calls may not).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Phase {
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
    /// the collector thread): nested calls are not recorded, only counted.
    OwnWork,
}

/// Events signal handlers' allocator calls can leave for the interrupted hook to record. A
/// recording that runs long (an unwind-rule cache miss parses DWARF) can be interrupted by a
/// fast timer's handler again and again, each time with a few events: 4 KiB of thread-local
/// space per thread keeps room for them.
pub const PENDING_EVENTS: usize = 128;

/// Most words an event's stack has: every native frame and every Python word.
pub const STACK_WORDS: usize = crate::unwind::MAX_FRAMES + crate::python::MAX_WORDS;
const _: () = assert!(STACK_WORDS <= crate::batch::MAX_STACK_WORDS);

/// Blocks this thread allocated last, kept to tell whether a Python constructor's object is
/// a new block or one taken off a free list (the constructors watched allocate at most two:
/// the object and a list's item array).
pub const RECENT_ALLOCATIONS: usize = 4;

pub struct ThreadState {
    pub phase: Cell<Phase>,
    /// An address in the frame that entered [`Phase::Recording`]: a signal handler's frame
    /// lies below it.
    pub recording_frame: Cell<usize>,
    pub slot: Cell<Option<&'static Slot>>,
    pub thread_id: Cell<u32>,
    /// Set once the thread's exit destructor ran: its thread-locals (and those of the
    /// channel) may be gone, so it no longer talks to the collector; the collector's sweep collects
    /// what it still records.
    pub exiting: Cell<bool>,
    /// Events recorded by a signal handler while this thread was in [`Phase::Recording`]:
    /// packed [`crate::batch::DeferredEvent`]s. Atomics, because a nested handler
    /// may interrupt another's append; only this thread touches them.
    pub pending: [AtomicU64; PENDING_EVENTS * DEFERRED_WORDS],
    /// Slots reserved in `pending` (may exceed [`PENDING_EVENTS`]: the excess is lost and
    /// counted).
    pub pending_len: AtomicUsize,
    /// Allocations this thread recorded, and the addresses of the latest ones (the one
    /// numbered `n` at `n % RECENT_ALLOCATIONS`), each stored inverted: the exit scan reads
    /// thread-local memory, where a plain address would keep the block it names reachable.
    pub allocations: Cell<u64>,
    pub recent_allocations: [Cell<usize>; RECENT_ALLOCATIONS],
    /// The stack of this thread's last event with one, while the batch in its slot still
    /// holds that event (forgotten whenever the thread finds its batch empty).
    pub previous_stack: PreviousStack<STACK_WORDS>,
}

thread_local! {
    // Const-initialised and without Drop: accessing it never allocates or registers a
    // destructor, so it is safe from inside malloc.
    pub static THREAD: ThreadState = const {
        ThreadState {
            phase: Cell::new(Phase::Outside),
            recording_frame: Cell::new(0),
            slot: Cell::new(None),
            thread_id: Cell::new(0),
            exiting: Cell::new(false),
            pending: [const { AtomicU64::new(0) }; PENDING_EVENTS * DEFERRED_WORDS],
            pending_len: AtomicUsize::new(0),
            allocations: Cell::new(0),
            recent_allocations: [const { Cell::new(0) }; RECENT_ALLOCATIONS],
            previous_stack: PreviousStack::new(),
        }
    };
}

/// The key whose destructor tells the recorder a thread is exiting.
pub static EXIT_KEY: OnceLock<ThreadExitKey> = OnceLock::new();

/// Runs `f` as libleak's own work: allocator calls it makes through the hooks are not
/// recorded.
pub fn as_own_work<R>(f: impl FnOnce() -> R) -> R {
    let was = THREAD.with(|t| t.phase.replace(Phase::OwnWork));
    let result = f();
    THREAD.with(|t| t.phase.set(was));
    result
}

/// Whether this thread is outside libleak (not in a hook, not libleak's own work).
pub fn is_outside() -> bool {
    THREAD.with(|t| t.phase.get() == Phase::Outside)
}

/// The thread is exiting (its key destructor runs). Its partial batch stays in the slot for
/// the collector's next sweep; the slot becomes free for a new thread, which appends after it.
pub fn exited(slot: &'static Slot) {
    THREAD.with(|t| {
        t.exiting.set(true);
        t.slot.set(None);
    });
    slot.release();
}
