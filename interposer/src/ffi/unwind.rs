//! The raw side of native stack capture: the registers of the capturing frame, reads of the
//! current thread's stack, the thread's stack bounds, each loaded object's unwind tables
//! (`.eh_frame_hdr` and `.eh_frame`, found under the loader's lock), and libgcc's unwinder as
//! the slow reference. The stepper and its caches are in [`crate::unwind`].
//!
//! Must never read memory it has not checked to be mapped, and never hold on to an object's
//! tables after the loader's lock is released (a `dlclose` may unmap them).

use std::ffi::{c_int, c_void};

use crate::ffi::buffer::StackBuffer;

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

/// Calls `visit` with each line of `/proc/self/maps` (without its newline) until it returns
/// false. Reads through a buffer on the stack: no allocation and no lock, so it may run
/// inside any hook or signal handler. Lines longer than the buffer are skipped.
pub fn for_each_mapping_line(visit: &mut dyn FnMut(&[u8]) -> bool) {
    const BUFFER: usize = 8192;
    // SAFETY: opening a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe { libc::open(c"/proc/self/maps".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return;
    }
    let mut buffer = [0u8; BUFFER];
    let mut filled = 0;
    let mut skipping = false;
    loop {
        // SAFETY: reading into the unfilled tail of our buffer.
        let read = unsafe { libc::read(fd, buffer[filled..].as_mut_ptr() as *mut c_void, BUFFER - filled) };
        if read <= 0 {
            break;
        }
        filled += read as usize;
        let mut start = 0;
        let mut stop = false;
        while let Some(length) = buffer[start..filled].iter().position(|&b| b == b'\n') {
            if !skipping && !visit(&buffer[start..start + length]) {
                stop = true;
                break;
            }
            skipping = false;
            start += length + 1;
        }
        if stop {
            break;
        }
        if start == 0 && filled == BUFFER {
            skipping = true;
            filled = 0;
        } else {
            buffer.copy_within(start..filled, 0);
            filled -= start;
        }
    }
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
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

/// The unwind tables of the object whose code holds an address, as the loader maps them.
pub struct UnwindTables<'a> {
    pub eh_frame_hdr: &'a [u8],
    pub eh_frame_hdr_address: usize,
    /// From `.eh_frame`'s start to the end of the segment holding it: the program headers do
    /// not give its size, and its entries end the walk themselves.
    pub eh_frame: &'a [u8],
    pub eh_frame_address: usize,
    pub text_address: usize,
}

struct Search<'f> {
    address: usize,
    visit: &'f mut dyn FnMut(Option<UnwindTables<'_>>),
    found: bool,
}

/// Calls `visit` with the unwind tables of the loaded object whose code holds `address`
/// (None when no object holds it, or it has no `.eh_frame_hdr`). Runs under the loader's
/// lock, so the tables stay mapped while `visit` runs; `visit` must not call into the
/// loader.
pub fn with_unwind_tables(address: usize, visit: &mut dyn FnMut(Option<UnwindTables<'_>>)) {
    let mut search = Search {
        address,
        visit,
        found: false,
    };
    // SAFETY: the callback receives `search` back as its data pointer, used only during
    // the call.
    unsafe { libc::dl_iterate_phdr(Some(visit_object), &mut search as *mut Search as *mut c_void) };
    if !search.found {
        (search.visit)(None);
    }
}

unsafe extern "C" fn visit_object(info: *mut libc::dl_phdr_info, _size: libc::size_t, data: *mut c_void) -> c_int {
    // SAFETY: `data` is the `Search` passed by `with_unwind_tables`, alive for the call.
    let search = unsafe { &mut *(data as *mut Search) };
    // SAFETY: the loader passes a valid `dl_phdr_info` for the duration of the callback.
    let info = unsafe { &*info };
    if info.dlpi_phdr.is_null() {
        return 0;
    }
    // SAFETY: the loader's program header table for this object, `dlpi_phnum` entries.
    let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
    let bias = info.dlpi_addr as usize;
    let segment_of = |address: usize| {
        headers.iter().find(|h| {
            let start = bias.wrapping_add(h.p_vaddr as usize);
            h.p_type == libc::PT_LOAD && address >= start && address < start + h.p_memsz as usize
        })
    };
    let Some(text) = segment_of(search.address) else {
        return 0;
    };
    search.found = true;
    let Some(hdr) = headers.iter().find(|h| h.p_type == libc::PT_GNU_EH_FRAME) else {
        (search.visit)(None);
        return 1;
    };
    let hdr_address = bias.wrapping_add(hdr.p_vaddr as usize);
    // SAFETY: .eh_frame_hdr lies inside a read-only PT_LOAD segment of an object the loader
    // keeps mapped while its lock is held, i.e. for this callback; the slice does not
    // outlive it.
    let eh_frame_hdr = unsafe { std::slice::from_raw_parts(hdr_address as *const u8, hdr.p_memsz as usize) };
    let Some(eh_frame_address) = crate::unwind::tables::eh_frame_pointer(eh_frame_hdr, hdr_address) else {
        (search.visit)(None);
        return 1;
    };
    let Some(eh_frame_segment) = segment_of(eh_frame_address) else {
        (search.visit)(None);
        return 1;
    };
    let eh_frame_end = bias.wrapping_add(eh_frame_segment.p_vaddr as usize) + eh_frame_segment.p_memsz as usize;
    // SAFETY: from .eh_frame's start to the end of the PT_LOAD segment holding it, mapped
    // and readable while the loader's lock is held; the slice does not outlive the callback.
    let eh_frame =
        unsafe { std::slice::from_raw_parts(eh_frame_address as *const u8, eh_frame_end - eh_frame_address) };
    (search.visit)(Some(UnwindTables {
        eh_frame_hdr,
        eh_frame_hdr_address: hdr_address,
        eh_frame,
        eh_frame_address,
        text_address: bias.wrapping_add(text.p_vaddr as usize),
    }));
    1
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
