//! The recorder's counters, as the trace's end record states them, and the
//! `LIBLEAK_CHECK_UNWIND` self-check that compares the fast unwinder's stacks with libgcc's.
//!
//! Must never allocate on the hot path: counters are relaxed atomics; the check's printout
//! is cold.

use std::sync::atomic::{AtomicU64, Ordering};

use libleak_format::Stats;

use super::state;
use crate::sys::{self, slots};
use crate::unwind;

/// Allocator calls made while the thread was already inside libleak: not recorded.
pub static REENTRANT_CALLS: AtomicU64 = AtomicU64::new(0);
/// Times a producer found the collector's channel full and waited.
pub static PRODUCER_WAITS: AtomicU64 = AtomicU64::new(0);
/// Native stacks cut at [`unwind::MAX_FRAMES`].
pub static TRUNCATED_STACKS: AtomicU64 = AtomicU64::new(0);

pub fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub fn snapshot() -> Stats {
    Stats {
        reentrant_calls: REENTRANT_CALLS.load(Ordering::Relaxed),
        producer_waits: PRODUCER_WAITS.load(Ordering::Relaxed),
        truncated_stacks: TRUNCATED_STACKS.load(Ordering::Relaxed),
        slot_locks: !slots::uses_fences(),
    }
}

/// `LIBLEAK_CHECK_UNWIND`: every how many allocations to compare the stack with libgcc's.
static CHECK_UNWIND_EVERY: AtomicU64 = AtomicU64::new(0);
static UNWIND_CHECK_CALLS: AtomicU64 = AtomicU64::new(0);
static UNWIND_CHECKS: AtomicU64 = AtomicU64::new(0);
static UNWIND_MISMATCHES: AtomicU64 = AtomicU64::new(0);

pub fn check_unwind_every(every: u64) {
    CHECK_UNWIND_EVERY.store(every, Ordering::Relaxed);
}

#[inline(always)]
pub fn checking_unwind() -> bool {
    CHECK_UNWIND_EVERY.load(Ordering::Relaxed) != 0
}

/// Compares every Nth stack (`frames`, the interposer's own frames trimmed) with libgcc's,
/// printing the first few that differ.
#[cold]
#[inline(never)]
pub fn check_unwind(frames: &[usize], truncated: bool) {
    let every = CHECK_UNWIND_EVERY.load(Ordering::Relaxed);
    if truncated || !UNWIND_CHECK_CALLS.fetch_add(1, Ordering::Relaxed).is_multiple_of(every) {
        return;
    }
    let mut reference = unwind::Stack::new();
    unwind::capture_slowly(&mut reference);
    let reference = state::without_own_frames(reference.as_slice());
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

/// At exit, when checking: one line with the counts.
pub fn report_unwind_check() {
    if !checking_unwind() {
        return;
    }
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
