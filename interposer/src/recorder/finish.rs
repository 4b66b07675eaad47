//! Ending the trace, at most once per process, in whichever of `exit`, `_exit`, `abort` or
//! an `exec` comes first: every batch goes to the collector, which scans what is still live
//! (after `exit` and `_exit`) and writes the end record; the exiting thread waits for it.
//!
//! Must never delay an `abort` or an `exec` by a scan, and never speak on a stderr that is
//! not a terminal (programs that capture it must see exactly what they would without libleak).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use libleak_format::ExitKind;

use super::channel::offer;
use super::collector_thread::{self, FINISHED, PARKED, TRACE_PATH};
use super::fork;
use super::state::{self, State};
use super::stats;
use super::thread::as_own_work;
use crate::collector::{Ending, Message};
use crate::config;
use crate::reach::ExitingThread;
use crate::sys;
use crate::unwind;

/// How long the exiting thread waits for the collector to take the end message.
const HAND_OFF_TIMEOUT: Duration = Duration::from_secs(5);
/// How long it then waits for the end to be on disk, beyond the scan's own time limit.
const FINISH_TIMEOUT: Duration = Duration::from_secs(10);

/// The status `exit` was called with (`i64::MIN`: none yet).
static EXIT_STATUS: AtomicI64 = AtomicI64::new(i64::MIN);

/// The thread that called `exit` (or whose `main` returned), and its stack pointer then:
/// where the live part of its stack starts when the unwinder cannot walk from libleak's exit
/// handler back to that call (glibc may run the handler from `_dl_fini`, through a
/// destructor stub without unwind tables, and the frames in between are full of stale
/// pointers).
static EXIT_CALLER: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// Called by the thread that is about to run `exit`'s handlers, from the caller's frame.
pub fn note_exit_status(status: i32) {
    if state::in_recorded_process() {
        EXIT_STATUS.store(status.into(), Ordering::Relaxed);
        EXIT_CALLER[0].store(sys::gettid().into(), Ordering::Relaxed);
        EXIT_CALLER[1].store(sys::memory::stack_pointer(), Ordering::Relaxed);
    }
}

/// The stack pointer noted when thread `tid` called `exit`, if it did.
fn exit_caller_stack_pointer(tid: u32) -> Option<u64> {
    (EXIT_CALLER[0].load(Ordering::Relaxed) == u64::from(tid))
        .then(|| EXIT_CALLER[1].load(Ordering::Relaxed))
        .filter(|&sp| sp != 0)
}

/// Registered with `atexit`.
pub fn at_exit() {
    finish(ExitKind::Exit, None);
}

/// Ends the trace: every batch goes to the collector, which writes the end marker.
pub fn finish(kind: ExitKind, status: Option<i32>) {
    if !state::in_recorded_process() {
        return; // a vfork child sharing our memory, or a child that stopped recording
    }
    if kind == ExitKind::Exec && fork::is_idle_child() {
        // A forked child that execs before recording anything: no trace of its own.
        state::set(State::Off);
        return;
    }
    if !state::transition(State::Recording, State::Finishing) {
        return;
    }
    as_own_work(|| {
        hand_off(kind, status);
        wait_for_collector();
        stats::report_unwind_check();
        // An exec'd image says nothing: the program it becomes speaks for the process.
        if kind != ExitKind::Exec && !config::get().is_some_and(|c| c.quiet) {
            say_where_the_trace_is();
        }
    });
    state::set(State::Off);
}

fn hand_off(kind: ExitKind, status: Option<i32>) {
    if PARKED.load(Ordering::Acquire) {
        collector_thread::resume();
    }
    let status = status.or_else(|| {
        let noted = EXIT_STATUS.load(Ordering::Relaxed);
        (noted != i64::MIN).then_some(noted as i32)
    });
    // After `_exit` (how multiprocessing's workers and shells end) the scan still tells lost
    // blocks from those the program holds. `abort` is a crash on its way: it is not delayed;
    // nor is an `exec`, whose program is only being replaced.
    let scan_from = matches!(kind, ExitKind::Exit | ExitKind::UnderscoreExit).then(|| {
        let mut frames = Vec::new();
        unwind::frames_with_cfa(&mut frames);
        let tid = sys::gettid();
        ExitingThread {
            tid,
            stack_pointer: exit_caller_stack_pointer(tid).unwrap_or_else(sys::memory::stack_pointer),
            frames,
            stack_is_root: true,
        }
    });
    offer(
        Message::Finish(Ending {
            kind,
            status,
            scan_from,
        }),
        Some(Instant::now() + HAND_OFF_TIMEOUT),
    );
}

fn wait_for_collector() {
    let scan_limit = config::get().and_then(|c| c.scan_time_limit).unwrap_or_default();
    let deadline = Instant::now() + FINISH_TIMEOUT + scan_limit;
    while !FINISHED.load(Ordering::Acquire) && Instant::now() < deadline {
        sys::sleep_ms(1);
    }
    if !FINISHED.load(Ordering::Acquire) {
        // The program goes on exiting (destructors, unmapping) while the scan may still read.
        sys::memory::refuse_copies();
    }
}

/// Only on a terminal: programs (and their tests) that capture a child's stderr must see
/// exactly what they would see without libleak.
fn say_where_the_trace_is() {
    let path = TRACE_PATH.lock().ok().and_then(|p| p.clone());
    if let (Some(path), true, true) = (path, FINISHED.load(Ordering::Acquire), sys::stderr_is_terminal()) {
        sys::write_stderr(
            format!("libleak: trace written to {path}; report it with: libleak report {path}\n").as_bytes(),
        );
    }
}
