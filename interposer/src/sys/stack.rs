//! The raw side of native stack capture: the registers of the capturing frame, reads of the
//! current thread's stack, the main thread's stack size limit, and libgcc's unwinder as the
//! slow reference. The stepper and its caches are in [`crate::unwind`]; the objects' unwind
//! tables come from [`super::loader`].
//!
//! Must never read memory it has not checked to be mapped.

use super::buffer::StackBuffer;

/// The registers an unwind step needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Registers {
    pub ip: usize,
    pub sp: usize,
    pub bp: usize,
}

/// The stack word at `address`. The caller has checked that `address..address + 8` lies
/// between its own stack pointer and the top of the current thread's stack.
#[inline(always)]
pub fn read_stack_word(address: usize) -> usize {
    // SAFETY: per the caller's check, the word is inside the live part of this thread's
    // stack, which is mapped and readable; it may be unaligned.
    unsafe { (address as *const usize).read_unaligned() }
}

/// The soft limit on the main thread's stack size, if any.
pub fn stack_size_limit() -> Option<usize> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_STACK, &mut limit) };
    (rc == 0 && limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur as usize)
}

/// libgcc's unwinder (through the `backtrace` crate): the reference the fast stepper must
/// agree with, and its fallback for frames it cannot step (signal frames, CFA expressions).
/// Appends return addresses to `out`, innermost first, until it is full.
pub fn capture_with_libgcc<const N: usize>(out: &mut StackBuffer<usize, N>) {
    // SAFETY: trace_unsynchronized is safe to call concurrently on Linux (libgcc's unwinder
    // has no global state that needs the crate's lock); the closure does not allocate.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            out.push(frame.ip() as usize);
            !out.is_full()
        })
    };
}

/// (return address, canonical frame address) of every frame of the calling thread, innermost
/// first. Slow (libgcc's unwinder): for the exit path only, where the scan needs to know
/// where each frame's memory starts.
pub fn frames_with_cfa(out: &mut Vec<(u64, u64)>) {
    // SAFETY: as in `capture_with_libgcc`; the closure only pushes into a vector the caller
    // owns, and runs with the re-entrancy guard set, so the allocation passes through.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            out.push((frame.ip() as u64, frame.sp() as u64));
            out.len() < 4096
        })
    };
}
