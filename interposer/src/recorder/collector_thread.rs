//! The collector's thread, as the recorder runs it: started at start-up, parked around each
//! `fork` (its state then waits here and the thread ends, so no libleak thread runs across
//! the fork), resumed in the parent a little later, and in a forked child turned into the
//! start of the child's own trace.
//!
//! Must never be resumed while a fork is under way, and never block a hook: a hook only
//! resumes a parked collector, it never waits for one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use libleak_format::ForkInfo;

use super::state::{self, State};
use super::thread::{as_own_work, Phase, THREAD};
use super::trace_open::{open_trace, process_info};
use crate::collector::{ChildStart, Collector, Message, OpenedTrace, Stopped};
use crate::config;
use crate::sys::{self, threads};

/// How long the collector stays parked after a fork unless a thread fills a batch first:
/// past the program's own checks right after `fork` returns, within one flush interval.
///
/// CPython 3.12+ warns, in the parent right after `fork`, when `/proc/self/stat` counts
/// more than one thread: the collector must not be running then in a process whose only
/// thread forked. That thread's batch was taken in before the fork, and the check allocates
/// a few blocks, far from a batch: a full batch resumes the collector (see
/// [`super::channel::push_event`]). Where other threads run, the count is above one anyway.
/// Until the collector runs, no batch comes back to be filled again (a child living less
/// than this filled every batch in memory never touched before), and the work it would
/// have done meanwhile waits for the next `fork`, which waits for it: a process forking
/// every few milliseconds spent 10 ms in each `fork`.
pub const RESUME_AFTER_FORK: Duration = Duration::from_millis(100);

/// The collector whenever no thread runs it: before its thread starts, and while parked
/// around a fork.
pub static PARKED_COLLECTOR: Mutex<Option<Box<Collector>>> = Mutex::new(None);
/// The running collector thread (0: none), joined when it parks.
pub static COLLECTOR_THREAD: AtomicU64 = AtomicU64::new(0);
pub static PARKED: AtomicBool = AtomicBool::new(false);
pub static PARKED_AT_NS: AtomicU64 = AtomicU64::new(0);
/// A fork is under way in some thread: the parked collector must not be resumed.
pub static FORKING: AtomicBool = AtomicBool::new(false);
/// Set by the collector's thread once the trace's end is on disk (or it failed for good).
pub static FINISHED: AtomicBool = AtomicBool::new(false);
/// False in a forked child until its collector has opened the child's trace.
pub static TRACE_OPEN: AtomicBool = AtomicBool::new(false);
/// The trace being written, for the message at exit.
pub static TRACE_PATH: Mutex<Option<String>> = Mutex::new(None);

/// What a forked child's collector needs to start the child's trace.
pub struct PendingChild {
    pub fork: ForkInfo,
    pub events: Receiver<Message>,
    pub spare_batches: Sender<Vec<u64>>,
    /// The child's trace, once its first event opened it (see [`open_child_trace_early`]).
    pub trace: Option<OpenedTrace>,
}
pub static PENDING_CHILD: Mutex<Option<PendingChild>> = Mutex::new(None);
/// Set in a forked child until its trace file exists.
pub static CHILD_TRACE_DUE: AtomicBool = AtomicBool::new(false);

/// Starts the collector's thread on the parked collector. False when it cannot start.
pub fn spawn() -> bool {
    match threads::spawn_thread(run) {
        Some(handle) => {
            COLLECTOR_THREAD.store(handle.to_raw(), Ordering::Release);
            true
        }
        None => false,
    }
}

#[cold]
pub fn resume_if_due() {
    if CHILD_TRACE_DUE.load(Ordering::Relaxed) {
        open_child_trace_early();
    }
    let parked_for = sys::monotonic_ns().saturating_sub(PARKED_AT_NS.load(Ordering::Relaxed));
    if parked_for >= RESUME_AFTER_FORK.as_nanos() as u64 {
        resume();
    }
}

/// Starts a collector thread on the parked state (not while a fork is under way).
pub fn resume() {
    if FORKING.load(Ordering::Acquire)
        || PARKED
            .compare_exchange(true, false, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    if !as_own_work(spawn) {
        state::set(State::Off);
        sys::write_stderr(b"libleak: cannot restart the writer thread after fork; recording stopped\n");
    }
}

/// A forked child's first event creates its trace file, with the header and the process
/// record, on the spot: the collector itself resumes only [`RESUME_AFTER_FORK`] later, and
/// pool workers are often terminated before that; their traces must still say which process
/// they were and that it was cut short.
#[cold]
fn open_child_trace_early() {
    if !CHILD_TRACE_DUE.swap(false, Ordering::AcqRel) {
        return;
    }
    as_own_work(|| {
        // Held while the file is made, so that a collector resuming meanwhile waits for it
        // rather than opening a second trace.
        let Ok(mut pending) = PENDING_CHILD.lock() else { return };
        let Some(child) = pending.as_mut().filter(|child| child.trace.is_none()) else {
            return;
        };
        // On failure the collector tries again when it resumes, and says why if it fails too.
        if let Ok(trace) = begin_trace() {
            note_trace_path(trace.path());
            child.trace = Some(trace);
        }
    });
}

fn begin_trace() -> Result<OpenedTrace, String> {
    let config = config::get().ok_or("no configuration")?;
    let info = process_info();
    let file = open_trace(config, &info)?;
    let path = file.path().to_string();
    OpenedTrace::begin(file, &info).map_err(|e| format!("cannot write {path}: {e}"))
}

pub fn note_trace_path(path: &str) {
    if let Ok(mut current) = TRACE_PATH.lock() {
        *current = Some(path.to_string());
    }
}

/// The collector thread's body: runs the collector until the trace ends, or until it parks
/// for a fork (its state then waits in [`PARKED_COLLECTOR`] and the thread ends).
fn run() {
    THREAD.with(|t| t.phase.set(Phase::OwnWork));
    let Some(mut collector) = PARKED_COLLECTOR.lock().ok().and_then(|mut c| c.take()) else {
        FINISHED.store(true, Ordering::Release);
        return;
    };
    if let Some(child) = PENDING_CHILD.lock().ok().and_then(|mut p| p.take()) {
        if let Err(reason) = start_child_trace(&mut collector, child) {
            state::set(State::Off);
            sys::write_stderr(format!("libleak: {reason}; this forked child is not recorded\n").as_bytes());
            FINISHED.store(true, Ordering::Release);
            return;
        }
    }
    match collector.run() {
        Stopped::Parked(collector) => {
            if let Ok(mut parked) = PARKED_COLLECTOR.lock() {
                *parked = Some(collector);
            }
            PARKED.store(true, Ordering::Release);
        }
        Stopped::Finished(result) => {
            if let Err(reason) = result {
                state::set(State::Off);
                sys::write_stderr(format!("libleak: {reason}; recording stopped\n").as_bytes());
            }
            FINISHED.store(true, Ordering::Release);
        }
    }
}

fn start_child_trace(collector: &mut Collector, child: PendingChild) -> Result<(), String> {
    CHILD_TRACE_DUE.store(false, Ordering::Relaxed);
    let trace = match child.trace {
        Some(trace) => trace,
        None => begin_trace()?,
    };
    let path = trace.path().to_string();
    collector
        .start_child_trace(
            ChildStart {
                trace,
                fork: child.fork,
            },
            child.events,
            child.spare_batches,
        )
        .map_err(|e| format!("cannot write {path}: {e}"))?;
    note_trace_path(&path);
    TRACE_OPEN.store(true, Ordering::Relaxed);
    Ok(())
}
