//! `fork`: the prepare handler has the collector take in everything recorded and park (its
//! thread ends, so the program forks with no libleak thread running: CPython 3.12+ counts
//! threads right after `fork` to warn about forking a multi-threaded process). The collector
//! stays parked until a hook resumes it
//! [`RESUME_AFTER_FORK`](super::collector_thread::RESUME_AFTER_FORK) later (or needs it sooner); in
//! the child, it then starts the child's own trace from the parked state.
//!
//! Must never leave a forked child recording into its parent's channels or trace.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use libleak_format::ForkInfo;

use super::channel::{self, MAX_FORK_DEPTH};
use super::collector_thread::{
    self, PendingChild, CHILD_TRACE_DUE, COLLECTOR_THREAD, FINISHED, FORKING, PARKED, PARKED_AT_NS, PENDING_CHILD,
    TRACE_OPEN,
};
use super::seq;
use super::state::{self, State};
use super::thread::{as_own_work, THREAD};
use crate::collector::Message;
use crate::sys::{self, slots, threads};

/// How long `fork` waits for the collector to park before giving up on tracing the child.
const PARK_TIMEOUT: Duration = Duration::from_secs(2);

/// The collector did not park in time for the last fork: that child does not record.
static FORK_FAILED: AtomicBool = AtomicBool::new(false);
/// In a forked child: the sequence number at the fork.
static CHILD_FORK_SEQ: AtomicU64 = AtomicU64::new(0);

pub fn register() {
    threads::register_fork_handlers(threads::ForkHandlers {
        prepare: before_fork,
        parent: after_fork_in_parent,
        child: after_fork_in_child,
    });
}

/// A forked child that has recorded nothing since the fork and has no trace of its own.
pub fn is_idle_child() -> bool {
    !TRACE_OPEN.load(Ordering::Relaxed) && seq::above_all() == CHILD_FORK_SEQ.load(Ordering::Relaxed)
}

/// The `fork` prepare handler: the collector takes in everything recorded so far and parks,
/// so that its state is whole in both processes and no libleak thread runs across the fork.
fn before_fork() {
    FORK_FAILED.store(true, Ordering::Relaxed);
    if state::current() != State::Recording || !state::in_recorded_process() {
        return;
    }
    as_own_work(|| {
        // Still parked from an earlier fork (this process forks again within
        // RESUME_AFTER_FORK, or is a child that has not started its own trace yet): resume it
        // first, so that it takes in what was recorded since, starts this process's trace if
        // due, and flushes it all before parking again. The new child's trace starts where
        // this one then ends.
        if PARKED.load(Ordering::Acquire) {
            collector_thread::resume();
        }
        FORKING.store(true, Ordering::SeqCst);
        if !PARKED.load(Ordering::Acquire) {
            let deadline = Instant::now() + PARK_TIMEOUT;
            if !channel::offer(Message::Park, Some(deadline)) {
                return;
            }
            while !PARKED.load(Ordering::Acquire) {
                if Instant::now() >= deadline {
                    return;
                }
                sys::sleep_us(50);
            }
            let thread = COLLECTOR_THREAD.swap(0, Ordering::AcqRel);
            if thread != 0 {
                threads::ThreadHandle::from_raw(thread).join();
            }
        }
        FORK_FAILED.store(false, Ordering::Relaxed);
    });
}

/// The `fork` parent handler: the collector resumes a little later.
fn after_fork_in_parent() {
    PARKED_AT_NS.store(sys::monotonic_ns(), Ordering::Relaxed);
    FORKING.store(false, Ordering::Release);
}

/// The `fork` child handler: keep recording, into a trace of the child's own that the
/// collector starts from its parked state when it resumes.
fn after_fork_in_child() {
    let generation = channel::generation() + 1;
    if FORK_FAILED.load(Ordering::Relaxed) || state::current() != State::Recording || generation >= MAX_FORK_DEPTH {
        FORKING.store(false, Ordering::Relaxed);
        if state::turn_off() == State::Recording {
            sys::write_stderr(
                b"libleak: this forked child is not recorded (the writer could not pause for the fork)\n",
            );
        }
        return;
    }
    as_own_work(|| {
        let parent_pid = state::recorded_process();
        state::set_recorded_process(sys::getpid());
        THREAD.with(|t| t.thread_id.set(sys::gettid()));
        let (events, spare_batches) = channel::open(generation);
        slots::renew_fences_after_fork();
        let threads_cut = slots::adopt_after_fork(THREAD.with(|t| t.slot.get()));
        // The child's own events number from here; all the parent's are below.
        let fork_seq = seq::above_all();
        seq::start_thread_at(fork_seq - 1);
        seq::allow_one_thread_alone(slots::uses_fences());
        CHILD_FORK_SEQ.store(fork_seq, Ordering::Relaxed);
        if let Ok(mut pending) = PENDING_CHILD.lock() {
            *pending = Some(PendingChild {
                fork: ForkInfo {
                    parent_pid,
                    fork_seq,
                    threads_cut,
                    ..ForkInfo::default()
                },
                events,
                spare_batches,
                trace: None,
            });
        }
        CHILD_TRACE_DUE.store(true, Ordering::Relaxed);
        TRACE_OPEN.store(false, Ordering::Relaxed);
        FINISHED.store(false, Ordering::Relaxed);
        COLLECTOR_THREAD.store(0, Ordering::Relaxed);
        PARKED_AT_NS.store(sys::monotonic_ns(), Ordering::Relaxed);
        FORKING.store(false, Ordering::Release);
    });
}
