//! The bottom layer: every system call, libc service and raw memory access the interposer
//! needs, each wrapped in a safe function or type, with one `// SAFETY:` line per `unsafe`
//! block. It imports nothing of the crate above it: callers hand it plain Rust `fn`s, and
//! its own private `extern "C"` trampolines call them back.
//! - this file: errno, process and thread ids, raw stderr writes, sleeping, clocks;
//! - `threads`: the collector's thread, the thread-exit key, fork and exit handlers;
//! - `imports`: redirecting a loaded object's imports (its GOT slots) to replacements;
//! - `loader`: the loaded objects (module list, load generation, an object's unwind tables);
//! - `maps`: the one `/proc/self/maps` line parser, allocation-free;
//! - `stack`: the unwinder's registers and stack reads, libgcc's unwinder;
//! - `glibc`: what libleak knows of glibc malloc's internal layout;
//! - `real`: the next allocator in the lookup chain, and the bootstrap arena;
//! - `dl_next`: the real `dlsym` and `dlvsym`, found without calling them by name;
//! - `doorbell`: a futex word the idle collector sleeps on and producers wake it through;
//! - `slots`: the per-thread event batches the collector can drain;
//! - `python_raw`: CPython's symbols and raw reads of its thread states, frames, code objects;
//! - `buffer`: uninitialised fixed-size word buffers, zeroed tables, and a write prefetch;
//! - `memory`: reading our own memory safely while other threads may unmap it, and copying it
//!   directly when none can (exit scan);
//! - `pagemap`: which heap pages a forked child wrote to since the fork (its exit scan);
//! - `protection_keys`: which mappings carry a memory protection key (a plain read may fault);
//! - `signals`: telling a signal handler's allocator calls from libleak's own.
//!
//! Nothing here may allocate through the hooks, panic, or take a lock that the traced
//! program could hold across `fork`.
#![allow(unsafe_code)]

pub mod buffer;
pub mod dl_next;
pub mod doorbell;
pub mod glibc;
pub mod imports;
pub mod loader;
pub mod maps;
pub mod memory;
pub mod pagemap;
pub mod protection_keys;
pub mod python_raw;
pub mod real;
pub mod signals;
pub mod slots;
pub mod stack;
pub mod threads;

use std::ffi::{c_int, c_void, CStr};

pub fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno slot, valid for the thread's life.
    unsafe { *libc::__errno_location() }
}

pub fn set_errno(value: c_int) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = value }
}

pub fn getpid() -> u32 {
    // SAFETY: getpid has no preconditions (and since glibc 2.25 is a real system call, so it
    // is right in a vfork or clone child too).
    unsafe { libc::getpid() as u32 }
}

pub fn getppid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::getppid() as u32 }
}

const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

/// Registers the process for [`membarrier`] (once per process; a forked child registers
/// again). False where the kernel or a seccomp filter refuses it.
pub fn register_membarrier() -> bool {
    // SAFETY: a system call without pointer arguments.
    unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0 }
}

/// Makes every running thread of the process execute a full memory barrier before this
/// returns.
pub fn membarrier() -> bool {
    // SAFETY: a system call without pointer arguments.
    unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0 }
}

pub fn gettid() -> u32 {
    // SAFETY: no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// Writes the whole message to fd 2 with raw `write`, retrying EINTR; never allocates.
pub fn write_stderr(message: &[u8]) {
    let saved = errno();
    let mut rest = message;
    while !rest.is_empty() {
        // SAFETY: `rest` is a valid readable buffer of the given length.
        let n = unsafe { libc::write(2, rest.as_ptr() as *const c_void, rest.len()) };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            break;
        }
        rest = &rest[n as usize..];
    }
    set_errno(saved);
}

pub fn stderr_is_terminal() -> bool {
    let saved = errno();
    // SAFETY: isatty only inspects the descriptor.
    let terminal = unsafe { libc::isatty(2) } == 1;
    set_errno(saved);
    terminal
}

/// A duplicate of `file` at a high descriptor number, out of the way of programs that expect
/// the lowest free numbers (0 to 2 when they closed their standard streams, 3 for their next
/// file) or `dup2` onto low numbers. None when that is not possible.
pub fn duplicate_high(file: &std::fs::File) -> Option<std::fs::File> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    let floor = (limit.rlim_cur / 2).min(512) as c_int;
    if floor <= 3 {
        return None;
    }
    // SAFETY: duplicating a descriptor we own; the new one is close-on-exec like the old.
    let moved = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor) };
    // SAFETY: `moved` is a fresh descriptor that nothing else owns.
    (moved >= 0).then(|| unsafe { std::fs::File::from_raw_fd(moved) })
}

pub fn sleep_ms(milliseconds: u64) {
    sleep_us(milliseconds * 1000);
}

pub fn sleep_us(microseconds: u64) {
    let request = libc::timespec {
        tv_sec: (microseconds / 1_000_000) as libc::time_t,
        tv_nsec: ((microseconds % 1_000_000) * 1000) as libc::c_long,
    };
    // SAFETY: valid timespec; the remainder pointer may be null.
    unsafe { libc::nanosleep(&request, std::ptr::null_mut()) };
}

/// CLOCK_MONOTONIC in nanoseconds (a vDSO call, no system call).
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    (now.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(now.tv_nsec as u64)
}

/// Whether `path` names a file this process may execute.
pub fn is_executable(path: &CStr) -> bool {
    let saved = errno();
    // SAFETY: NUL-terminated path.
    let ok = unsafe { libc::access(path.as_ptr(), libc::X_OK) } == 0;
    set_errno(saved);
    ok
}
