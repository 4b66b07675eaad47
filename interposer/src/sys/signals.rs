//! Telling whether the calling thread is running a signal handler, for a hook entered while
//! the same thread is already recording an event: a handler's allocations are the program's
//! and must be recorded; libleak's own (a library it calls allocating lazily through the
//! hooks) must not.
//!
//! A handler runs either on the alternate signal stack (`sigaltstack` says so) or on the
//! thread's stack below a frame the kernel pushed: its first word is the return trampoline
//! glibc installs with every handler (`__restore_rt`), followed by the saved context, whose
//! stack pointer lies above the frame. Only the stack between the caller and the frame of
//! the interrupted recording is searched, and only read: all of it is this thread's live
//! stack.
//!
//! A handler installed without glibc's `sigaction` (a raw system call with a trampoline of
//! its own) is not recognised; its allocations are then skipped and counted, as libleak's
//! own are.

use std::mem::{offset_of, size_of, MaybeUninit};
use std::sync::atomic::{AtomicUsize, Ordering};

/// glibc's signal return trampoline (0: unknown).
static SIGNAL_RETURN: AtomicUsize = AtomicUsize::new(0);

/// Learns glibc's signal return trampoline. Call once, before the program starts threads:
/// it sets one signal's disposition to what it already is, which makes glibc's `sigaction`
/// supply the trampoline, then reads it back.
pub fn init() {
    let signal = libc::SIGWINCH;
    let mut current = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: reading a disposition into a properly sized, writable struct.
    if unsafe { libc::sigaction(signal, std::ptr::null(), current.as_mut_ptr()) } != 0 {
        return;
    }
    // SAFETY: `current` was filled by the kernel above; setting it again changes nothing the
    // program can observe (the handler, mask and flags stay as they were).
    if unsafe { libc::sigaction(signal, current.as_ptr(), std::ptr::null_mut()) } != 0 {
        return;
    }
    let mut installed = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: as in the first call.
    if unsafe { libc::sigaction(signal, std::ptr::null(), installed.as_mut_ptr()) } != 0 {
        return;
    }
    // SAFETY: filled by the successful call above.
    let restorer = unsafe { installed.assume_init() }.sa_restorer;
    SIGNAL_RETURN.store(restorer.map_or(0, |f| f as usize), Ordering::Relaxed);
}

/// Whether a signal handler runs between the caller's frame (`here`, an address in it) and
/// the frame at `interrupted` (an address in a frame of the code the handler would have
/// interrupted, higher on the same stack).
#[inline(never)]
pub fn handler_between(here: usize, interrupted: usize) -> bool {
    if on_alternate_stack() {
        return true;
    }
    let trampoline = SIGNAL_RETURN.load(Ordering::Relaxed);
    if trampoline == 0 || here >= interrupted {
        return false;
    }
    let gregs = offset_of!(libc::ucontext_t, uc_mcontext) + offset_of!(libc::mcontext_t, gregs);
    let saved_sp_offset = size_of::<usize>() + gregs + libc::REG_RSP as usize * size_of::<i64>();
    let word = size_of::<usize>();
    let mut address = (here + word - 1) & !(word - 1);
    while address + saved_sp_offset + word <= interrupted {
        // SAFETY: every address in [here, interrupted) is on this thread's live stack: `here`
        // is in the caller's frame and `interrupted` in a frame further up the same stack
        // (checked: not on the alternate stack). Reads only, aligned.
        let value = unsafe { std::ptr::read_volatile(address as *const usize) };
        if value == trampoline {
            // SAFETY: in range, as checked by the loop condition.
            let saved_sp = unsafe { std::ptr::read_volatile((address + saved_sp_offset) as *const usize) };
            if saved_sp > address && saved_sp <= interrupted {
                return true;
            }
        }
        address += word;
    }
    false
}

fn on_alternate_stack() -> bool {
    let mut current = MaybeUninit::<libc::stack_t>::zeroed();
    // SAFETY: querying only (null new stack), into a properly sized, writable struct.
    if unsafe { libc::sigaltstack(std::ptr::null(), current.as_mut_ptr()) } != 0 {
        return false;
    }
    // SAFETY: filled by the successful call above.
    unsafe { current.assume_init() }.ss_flags & libc::SS_ONSTACK != 0
}
