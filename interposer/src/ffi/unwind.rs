//! Native stack capture behind one small interface: [`capture`] fills a buffer with return
//! addresses, innermost first, starting inside the interposer (the caller trims its own
//! frames by address range).
//!
//! The fast path is libunwind's `unw_backtrace` (≈110 ns per allocation here, see
//! `shared/docs/prior-art/unwinding.md`). libunwind is loaded with `dlopen(RTLD_LOCAL)`:
//! linked normally, it would export `_Unwind_*` ahead of libgcc_s and take over C++ exception
//! and Rust panic unwinding for the whole traced process. Without libunwind, libgcc's
//! `_Unwind_Backtrace` (through the `backtrace` crate) gives the same stacks, ≈25× slower.

use std::ffi::{c_int, c_void};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicUsize, Ordering};

type UnwBacktraceFn = unsafe extern "C" fn(*mut *mut c_void, c_int) -> c_int;

static UNW_BACKTRACE: AtomicUsize = AtomicUsize::new(0);

/// Loads libunwind privately. Returns false when it is not installed; [`capture`] then uses
/// the slower libgcc unwinder.
pub fn init() -> bool {
    for name in [c"libunwind.so.8", c"libunwind-x86_64.so.8"] {
        // SAFETY: dlopen with a NUL-terminated name; RTLD_LOCAL keeps its symbols out of the
        // global scope. Called under the re-entrancy guard, so its allocations pass through.
        let handle = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            continue;
        }
        // SAFETY: valid handle and NUL-terminated symbol name.
        let symbol = unsafe { libc::dlsym(handle, c"unw_backtrace".as_ptr()) };
        if !symbol.is_null() {
            UNW_BACKTRACE.store(symbol as usize, Ordering::Release);
            return true;
        }
    }
    false
}

/// Fills `out` with return addresses, innermost first, and returns the filled part.
#[inline(never)]
pub fn capture(out: &mut [MaybeUninit<usize>]) -> &[usize] {
    let written = capture_into(out);
    // SAFETY: the first `written` entries were initialised by the unwinder.
    unsafe { std::slice::from_raw_parts(out.as_ptr() as *const usize, written) }
}

#[inline(always)]
fn capture_into(out: &mut [MaybeUninit<usize>]) -> usize {
    let unw = UNW_BACKTRACE.load(Ordering::Acquire);
    if unw != 0 {
        // SAFETY: `unw` is libunwind's `unw_backtrace(void **buffer, int size)`, stored by
        // `init`; `out` is valid for out.len() pointer-sized writes.
        let backtrace = unsafe { std::mem::transmute::<usize, UnwBacktraceFn>(unw) };
        let len = c_int::try_from(out.len()).unwrap_or(c_int::MAX);
        // SAFETY: as above.
        let written = unsafe { backtrace(out.as_mut_ptr() as *mut *mut c_void, len) };
        return usize::try_from(written).unwrap_or(0).min(out.len());
    }
    let mut written = 0;
    // SAFETY: trace_unsynchronized is safe to call concurrently on Linux (libgcc's unwinder
    // has no global state that needs the crate's lock); the closure does not allocate.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            if written == out.len() {
                return false;
            }
            out[written] = MaybeUninit::new(frame.ip() as usize);
            written += 1;
            true
        })
    };
    written
}

/// (return address, canonical frame address) of every frame of the calling thread, innermost
/// first. Slow (libgcc's unwinder): for the exit path only, where the scan needs to know
/// where each frame's memory starts.
pub fn frames_with_cfa(out: &mut Vec<(u64, u64)>) {
    // SAFETY: as in `capture_into`; the closure only pushes into a vector the caller owns,
    // and runs with the re-entrancy guard set, so the allocation passes through.
    unsafe {
        backtrace::trace_unsynchronized(|frame| {
            out.push((frame.ip() as u64, frame.sp() as u64));
            out.len() < 4096
        })
    };
}
