//! The exported allocator symbols. Each hook gets the real result from [`real`], and if the
//! recorder accepts the call (recording, and not already inside a hook on this thread) records it.
//! glibc's contract is kept exactly: results, errno (saved after the real call and restored
//! after recording), `free(NULL)`, `realloc(NULL, n)`, `realloc(p, 0)`, alignment errors.
//!
//! The allocating hooks are entered through a stub that hands the body its caller's
//! registers at the call: the stack is unwound from the program's frame, without stepping
//! through libleak's own (see docs/benchmarks.md, "Where the time goes").

use std::ffi::{c_int, c_void};

use libleak_format::AllocKind;

use super::caller;
use crate::sys::glibc::MALLOC_LINK_BYTES;
use crate::sys::real::{self, bootstrap, Real};
use crate::sys::stack::Registers;
use crate::sys::{errno, set_errno};
use crate::{python, recorder};

/// Runs the real allocation `call`, recording a non-null result of `size` bytes.
#[inline(always)]
fn allocate(
    kind: AllocKind,
    size: usize,
    call: impl FnOnce(&Real) -> *mut c_void,
    early_align: usize,
    caller: Registers,
) -> *mut c_void {
    let Some(real) = real::get() else {
        return bootstrap::alloc(size, early_align);
    };
    let Some(hook) = recorder::enter() else {
        return call(real);
    };
    let ptr = call(real);
    if !ptr.is_null() {
        let saved = errno();
        if kind != AllocKind::Calloc && recorder::scrub_freed() {
            // A reused block starts with the free lists' links malloc wrote into it (up to
            // four words), heap addresses that outlive the link when the program does not
            // overwrite them (a 4 KiB stdio buffer holding one short line): the exit scan
            // would read them as pointers.
            // SAFETY: the first `size` bytes at `ptr` are the block just allocated.
            unsafe { std::ptr::write_bytes(ptr as *mut u8, 0, size.min(MALLOC_LINK_BYTES)) };
        }
        hook.record_alloc(ptr as usize, size, kind, caller);
        set_errno(saved);
    }
    hook.leave();
    ptr
}

entered_with_caller!(
    #[no_mangle]
    /// # Safety
    /// None beyond malloc's.
    malloc(size: usize) -> *mut c_void = malloc_body, ["rsi", "rdx", "rcx"]
);

extern "C" fn malloc_body(size: usize, ip: usize, sp: usize, bp: usize) -> *mut c_void {
    // SAFETY: forwarding the caller's arguments to the real function of the same contract.
    allocate(
        AllocKind::Malloc,
        size,
        |r| unsafe { (r.malloc)(size) },
        16,
        caller(ip, sp, bp),
    )
}

entered_with_caller!(
    #[no_mangle]
    /// # Safety
    /// None beyond calloc's.
    calloc(count: usize, size: usize) -> *mut c_void = calloc_body, ["rdx", "rcx", "r8"]
);

extern "C" fn calloc_body(count: usize, size: usize, ip: usize, sp: usize, bp: usize) -> *mut c_void {
    let Some(total) = count.checked_mul(size) else {
        return match real::get() {
            // SAFETY: the real calloc reports the overflow itself (NULL, ENOMEM).
            Some(r) => unsafe { (r.calloc)(count, size) },
            None => {
                set_errno(libc::ENOMEM);
                std::ptr::null_mut()
            }
        };
    };
    // SAFETY: as for malloc. The bootstrap arena is zero-filled and never reused.
    allocate(
        AllocKind::Calloc,
        total,
        |r| unsafe { (r.calloc)(count, size) },
        16,
        caller(ip, sp, bp),
    )
}

entered_with_caller!(
    #[no_mangle]
    /// # Safety
    /// None beyond memalign's.
    memalign(alignment: usize, size: usize) -> *mut c_void = memalign_body, ["rdx", "rcx", "r8"]
);

extern "C" fn memalign_body(alignment: usize, size: usize, ip: usize, sp: usize, bp: usize) -> *mut c_void {
    // SAFETY: as for malloc.
    allocate(
        AllocKind::Memalign,
        size,
        |r| unsafe { (r.memalign)(alignment, size) },
        alignment.max(16),
        caller(ip, sp, bp),
    )
}

entered_with_caller!(
    #[no_mangle]
    /// # Safety
    /// None beyond aligned_alloc's.
    aligned_alloc(alignment: usize, size: usize) -> *mut c_void = aligned_alloc_body, ["rdx", "rcx", "r8"]
);

extern "C" fn aligned_alloc_body(alignment: usize, size: usize, ip: usize, sp: usize, bp: usize) -> *mut c_void {
    // SAFETY: as for malloc.
    allocate(
        AllocKind::AlignedAlloc,
        size,
        |r| unsafe { (r.aligned_alloc)(alignment, size) },
        alignment.max(16),
        caller(ip, sp, bp),
    )
}

entered_with_caller!(
    #[no_mangle]
    /// # Safety
    /// None beyond valloc's.
    valloc(size: usize) -> *mut c_void = valloc_body, ["rsi", "rdx", "rcx"]
);

extern "C" fn valloc_body(size: usize, ip: usize, sp: usize, bp: usize) -> *mut c_void {
    // SAFETY: as for malloc.
    allocate(
        AllocKind::Valloc,
        size,
        |r| unsafe { (r.valloc)(size) },
        4096,
        caller(ip, sp, bp),
    )
}

entered_with_caller!(
    #[no_mangle]
    /// # Safety
    /// None beyond pvalloc's.
    pvalloc(size: usize) -> *mut c_void = pvalloc_body, ["rsi", "rdx", "rcx"]
);

extern "C" fn pvalloc_body(size: usize, ip: usize, sp: usize, bp: usize) -> *mut c_void {
    // SAFETY: as for malloc.
    allocate(
        AllocKind::Pvalloc,
        size,
        |r| unsafe { (r.pvalloc)(size) },
        4096,
        caller(ip, sp, bp),
    )
}

entered_with_caller!(
    #[no_mangle]
    /// # Safety
    /// `memptr` must be valid for a pointer write, as posix_memalign requires.
    posix_memalign(memptr: *mut *mut c_void, alignment: usize, size: usize) -> c_int = posix_memalign_body, ["rcx", "r8", "r9"]
);

/// # Safety
/// As for posix_memalign.
unsafe extern "C" fn posix_memalign_body(
    memptr: *mut *mut c_void,
    alignment: usize,
    size: usize,
    ip: usize,
    sp: usize,
    bp: usize,
) -> c_int {
    let Some(real) = real::get() else {
        let ptr = bootstrap::alloc(size, alignment.max(16));
        if ptr.is_null() {
            return libc::ENOMEM;
        }
        // SAFETY: caller guarantees `memptr` is writable.
        unsafe { *memptr = ptr };
        return 0;
    };
    let Some(hook) = recorder::enter() else {
        // SAFETY: forwarding the caller's arguments.
        return unsafe { (real.posix_memalign)(memptr, alignment, size) };
    };
    // SAFETY: forwarding the caller's arguments.
    let rc = unsafe { (real.posix_memalign)(memptr, alignment, size) };
    if rc == 0 {
        let saved = errno();
        // SAFETY: on success the real function stored the block in `*memptr`.
        hook.record_alloc(
            unsafe { *memptr } as usize,
            size,
            AllocKind::PosixMemalign,
            caller(ip, sp, bp),
        );
        set_errno(saved);
    }
    hook.leave();
    rc
}

/// # Safety
/// `ptr` must be null or a live block of this allocator, as free requires.
#[no_mangle]
pub unsafe extern "C" fn free(ptr: *mut c_void) {
    if ptr.is_null() || bootstrap::owns(ptr) {
        return;
    }
    let Some(real) = real::get() else {
        return;
    };
    // Recording or not: a walk's memo of code objects must hear of every freed one.
    python::code_cache::note_free(ptr as usize);
    let Some(hook) = recorder::enter() else {
        // libleak's own work (or no recording): such a free may unmap memory a scan copying
        // directly reads.
        if crate::sys::memory::direct_reader_exists() {
            real::note_given_back();
        }
        // SAFETY: forwarding the caller's live block.
        return unsafe { (real.free)(ptr) };
    };
    let saved = errno();
    // The free is ordered before the real free, so no other thread can be handed the same
    // address with an earlier sequence number.
    hook.record_free(ptr as usize, recorder::next_seq(ptr as usize));
    if recorder::scrub_freed() {
        // Freed memory is handed out again uninitialised; stale pointers left in it would
        // read as references in the exit scan and hide leaks. Zeroing it first keeps the
        // scan precise (the program may not read a block it freed).
        // SAFETY: `ptr` is a live block of the real allocator, usable for the size it reports.
        let usable = unsafe { (real.malloc_usable_size)(ptr) };
        if usable <= recorder::MAX_SCRUB_BYTES {
            // SAFETY: as above: `usable` bytes at `ptr` belong to the block being freed.
            unsafe { std::ptr::write_bytes(ptr as *mut u8, 0, usable) };
        }
    }
    // SAFETY: forwarding the caller's live block.
    unsafe { (real.free)(ptr) };
    set_errno(saved);
    hook.leave();
}

entered_with_caller!(
    #[no_mangle]
    /// # Safety
    /// `ptr` must be null or a live block of this allocator, as realloc requires.
    realloc(ptr: *mut c_void, size: usize) -> *mut c_void = realloc_body, ["rdx", "rcx", "r8"]
);

/// # Safety
/// As for realloc.
unsafe extern "C" fn realloc_body(ptr: *mut c_void, size: usize, ip: usize, sp: usize, bp: usize) -> *mut c_void {
    // SAFETY: same contract.
    unsafe { resize(ptr, size, AllocKind::Realloc, caller(ip, sp, bp)) }
}

entered_with_caller!(
    #[no_mangle]
    /// # Safety
    /// As for realloc.
    reallocarray(ptr: *mut c_void, count: usize, size: usize) -> *mut c_void = reallocarray_body, ["rcx", "r8", "r9"]
);

/// # Safety
/// As for realloc.
unsafe extern "C" fn reallocarray_body(
    ptr: *mut c_void,
    count: usize,
    size: usize,
    ip: usize,
    sp: usize,
    bp: usize,
) -> *mut c_void {
    match count.checked_mul(size) {
        // SAFETY: same contract as realloc.
        Some(total) => unsafe { resize(ptr, total, AllocKind::ReallocArray, caller(ip, sp, bp)) },
        None => {
            set_errno(libc::ENOMEM);
            std::ptr::null_mut()
        }
    }
}

/// # Safety
/// As for realloc.
unsafe fn resize(ptr: *mut c_void, size: usize, kind: AllocKind, caller: Registers) -> *mut c_void {
    if ptr.is_null() {
        // SAFETY: realloc(NULL, n) is malloc(n).
        return allocate(kind, size, |r| unsafe { (r.malloc)(size) }, 16, caller);
    }
    if bootstrap::owns(ptr) {
        // Arena blocks move to the real allocator, recorded as this call's allocation.
        // SAFETY: as for malloc.
        let new_ptr = allocate(kind, size.max(1), |r| unsafe { (r.malloc)(size.max(1)) }, 16, caller);
        if !new_ptr.is_null() {
            let keep = bootstrap::size_of(ptr).min(size);
            // SAFETY: both blocks hold at least `keep` bytes and do not overlap.
            unsafe { std::ptr::copy_nonoverlapping(ptr as *const u8, new_ptr as *mut u8, keep) };
        }
        return new_ptr;
    }
    let Some(real) = real::get() else {
        return std::ptr::null_mut();
    };
    python::code_cache::note_free(ptr as usize);
    let Some(hook) = recorder::enter() else {
        if crate::sys::memory::direct_reader_exists() {
            real::note_given_back();
        }
        // SAFETY: forwarding the caller's arguments.
        return unsafe { (real.realloc)(ptr, size) };
    };
    let free_seq = recorder::next_seq(ptr as usize);
    // SAFETY: forwarding the caller's arguments.
    let new_ptr = unsafe { (real.realloc)(ptr, size) };
    let saved = errno();
    if !new_ptr.is_null() {
        hook.record_free(ptr as usize, free_seq);
        hook.record_alloc(new_ptr as usize, size, kind, caller);
    } else if size == 0 {
        // glibc's realloc(p, 0) frees p and returns NULL.
        hook.record_free(ptr as usize, free_seq);
    }
    set_errno(saved);
    hook.leave();
    new_ptr
}

/// # Safety
/// `ptr` must be null or a live block of this allocator.
#[no_mangle]
pub unsafe extern "C" fn malloc_usable_size(ptr: *mut c_void) -> usize {
    if ptr.is_null() {
        return 0;
    }
    if bootstrap::owns(ptr) {
        return bootstrap::size_of(ptr);
    }
    // SAFETY: forwarding the caller's live block.
    real::get().map_or(0, |r| unsafe { (r.malloc_usable_size)(ptr) })
}
