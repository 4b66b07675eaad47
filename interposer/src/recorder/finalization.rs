//! The moment CPython's finalisation begins: its `atexit` callbacks have run and its
//! non-daemon threads have ended, but no module is torn down yet. What the program holds
//! then is not a leak, however much of it the teardown orphans before exit; so the
//! collector scans there, once, while the finalising thread waits in the hook that noticed.
//!
//! Must never run inside another hook or while this thread records, and never wait longer
//! than the scan's own time limit plus a margin.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::channel::{self, offer};
use super::collector_thread::{self, PARKED};
use super::state;
use super::thread::as_own_work;
use crate::collector::Message;
use crate::config;
use crate::python;
use crate::reach::ExitingThread;
use crate::sys;

/// How long the finalising thread waits for the scan beyond its time limit.
const MARGIN: Duration = Duration::from_secs(10);

/// The scan was asked for (at most once per process; a hook may race another to it).
static TAKEN: AtomicBool = AtomicBool::new(false);
/// The collector has written the scan.
static DONE: AtomicBool = AtomicBool::new(false);

/// Whether this hook call is on the finalising thread since finalisation began, and the scan
/// not yet made (cheap while it has not begun: a load or two, see `python::finalizing_here`).
#[inline(always)]
pub fn due() -> bool {
    python::finalizing_here()
}

/// Has the collector scan what is live now, and waits for it.
#[cold]
#[inline(never)]
pub fn scan_now() {
    if TAKEN.swap(true, Ordering::AcqRel) {
        return;
    }
    python::stop_watching_finalization();
    if !state::is_recording() || !state::in_recorded_process() {
        return;
    }
    let Some(time_limit) = config::get().and_then(|c| c.scan_time_limit) else {
        return;
    };
    as_own_work(|| {
        let from = ExitingThread {
            tid: sys::gettid(),
            stack_pointer: sys::memory::stack_pointer(),
            frames: Vec::new(),
            stack_is_root: false,
        };
        if PARKED.load(Ordering::Acquire) {
            collector_thread::resume();
        }
        channel::flush_this_thread();
        let deadline = Instant::now() + time_limit + MARGIN;
        if !offer(Message::Finalizing { from, done: &DONE }, Some(deadline)) {
            return;
        }
        while !DONE.load(Ordering::Acquire) && Instant::now() < deadline && state::is_recording() {
            sys::sleep_us(200);
        }
        if !DONE.load(Ordering::Acquire) {
            // The program goes on finalising (freeing, unmapping) while the scan may still read.
            sys::memory::refuse_copies();
        }
    });
}
