//! The real allocator: the next definition of each malloc-family symbol after ours in the
//! dynamic lookup order (`dlsym(RTLD_NEXT)`), so an allocator preloaded after libleak
//! (jemalloc, tcmalloc) is used rather than bypassed. Until those pointers are known, and for
//! any call made while they are being looked up, a static bump arena serves allocations;
//! `free` ignores its blocks and `realloc` copies them out.

use std::alloc::{GlobalAlloc, Layout};
use std::cell::UnsafeCell;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

type MallocFn = unsafe extern "C" fn(usize) -> *mut c_void;
type FreeFn = unsafe extern "C" fn(*mut c_void);
type CallocFn = unsafe extern "C" fn(usize, usize) -> *mut c_void;
type ReallocFn = unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void;
type MemalignFn = unsafe extern "C" fn(usize, usize) -> *mut c_void;
type PosixMemalignFn = unsafe extern "C" fn(*mut *mut c_void, usize, usize) -> c_int;
type UsableSizeFn = unsafe extern "C" fn(*mut c_void) -> usize;
type ExitFn = unsafe extern "C" fn(c_int) -> !;
type AbortFn = unsafe extern "C" fn() -> !;
type DlopenFn = unsafe extern "C" fn(*const libc::c_char, c_int) -> *mut c_void;
type DlcloseFn = unsafe extern "C" fn(*mut c_void) -> c_int;
type Strings = *const *const libc::c_char;
type ExecveFn = unsafe extern "C" fn(*const libc::c_char, Strings, Strings) -> c_int;
type ExecvFn = unsafe extern "C" fn(*const libc::c_char, Strings) -> c_int;
type FexecveFn = unsafe extern "C" fn(c_int, Strings, Strings) -> c_int;
type ReallocArrayFn = unsafe extern "C" fn(*mut c_void, usize, usize) -> *mut c_void;
type GetenvFn = unsafe extern "C" fn(*const libc::c_char) -> *mut libc::c_char;
type DlsymFn = unsafe extern "C" fn(*mut c_void, *const libc::c_char) -> *mut c_void;
/// `__libc_start_main`'s arguments after `main`: argc, argv, init, fini, rtld_fini, stack end.
pub type MainFn = unsafe extern "C" fn(c_int, *mut *mut libc::c_char, *mut *mut libc::c_char) -> c_int;
pub type StartMainFn = unsafe extern "C" fn(
    MainFn,
    c_int,
    *mut *mut libc::c_char,
    *mut c_void,
    *mut c_void,
    *mut c_void,
    *mut c_void,
) -> c_int;

/// The resolved entry points. Written once, before `STATE` becomes `READY`.
pub struct Real {
    pub malloc: MallocFn,
    pub free: FreeFn,
    pub calloc: CallocFn,
    pub realloc: ReallocFn,
    pub memalign: MemalignFn,
    pub aligned_alloc: MemalignFn,
    pub posix_memalign: PosixMemalignFn,
    pub valloc: MallocFn,
    pub pvalloc: MallocFn,
    pub malloc_usable_size: UsableSizeFn,
    pub exit: ExitFn,
    pub underscore_exit: ExitFn,
    pub underscore_capital_exit: ExitFn,
    pub abort: AbortFn,
    pub dlopen: DlopenFn,
    pub dlclose: DlcloseFn,
    pub execve: ExecveFn,
    pub execv: ExecvFn,
    pub execvp: ExecvFn,
    pub execvpe: ExecveFn,
    pub fexecve: FexecveFn,
    /// Not called (libleak's `reallocarray` uses `realloc`): what `dlsym` answers are compared to.
    pub reallocarray: ReallocArrayFn,
    pub getenv: GetenvFn,
    pub libc_start_main: StartMainFn,
}

const UNRESOLVED: u8 = 0;
const RESOLVING: u8 = 1;
const READY: u8 = 2;
const FAILED: u8 = 3;

static STATE: AtomicU8 = AtomicU8::new(UNRESOLVED);

struct RealCell(UnsafeCell<Option<Real>>);
// SAFETY: written once by the thread that wins the UNRESOLVED→RESOLVING exchange, and read
// only after STATE is READY (acquire/release), so no access races.
unsafe impl Sync for RealCell {}
static REAL: RealCell = RealCell(UnsafeCell::new(None));

/// The real allocator, resolving it on first use. `None` while it is being resolved (by this
/// or another thread) or if resolution failed: callers then use the bootstrap arena.
#[inline]
pub fn get() -> Option<&'static Real> {
    if STATE.load(Ordering::Acquire) == READY {
        // SAFETY: READY is stored (release) only after REAL was fully written.
        return unsafe { (*REAL.0.get()).as_ref() };
    }
    resolve()
}

#[cold]
fn resolve() -> Option<&'static Real> {
    if STATE
        .compare_exchange(UNRESOLVED, RESOLVING, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return if STATE.load(Ordering::Acquire) == READY {
            // SAFETY: as in `get`.
            unsafe { (*REAL.0.get()).as_ref() }
        } else {
            None
        };
    }
    match lookup_all() {
        Some(real) => {
            // SAFETY: we won the exchange above, so no other thread reads or writes REAL
            // until READY is published below.
            unsafe { *REAL.0.get() = Some(real) };
            STATE.store(READY, Ordering::Release);
            // SAFETY: just written, and never written again.
            unsafe { (*REAL.0.get()).as_ref() }
        }
        None => {
            STATE.store(FAILED, Ordering::Release);
            super::write_stderr(b"libleak: cannot find the real malloc; the program cannot run under libleak\n");
            None
        }
    }
}

/// `dlsym(RTLD_NEXT, name)` through the real dlsym: libleak's own `dlsym` export would
/// otherwise answer a call by name. The real one sees this function as its caller, so "next"
/// means after libleak.
fn next_symbol(name: &std::ffi::CStr) -> Option<*mut c_void> {
    let (dlsym, _) = super::dl_next::real_dl().filter(|(dlsym, _)| *dlsym != 0)?;
    // SAFETY: the address is glibc's dlsym, whose C signature is DlsymFn.
    let dlsym = unsafe { std::mem::transmute::<usize, DlsymFn>(dlsym) };
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name; glibc 2.36's dlsym does not
    // call malloc here, and if it did the call would be served by the bootstrap arena.
    let ptr = unsafe { dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    (!ptr.is_null()).then_some(ptr)
}

fn lookup_all() -> Option<Real> {
    macro_rules! next {
        ($name:literal, $ty:ty) => {{
            let ptr = next_symbol($name)?;
            // SAFETY: the symbol is the glibc (or replacement allocator) function of that
            // name, whose C signature is $ty.
            unsafe { std::mem::transmute::<*mut c_void, $ty>(ptr) }
        }};
    }
    Some(Real {
        malloc: next!(c"malloc", MallocFn),
        free: next!(c"free", FreeFn),
        calloc: next!(c"calloc", CallocFn),
        realloc: next!(c"realloc", ReallocFn),
        memalign: next!(c"memalign", MemalignFn),
        aligned_alloc: next!(c"aligned_alloc", MemalignFn),
        posix_memalign: next!(c"posix_memalign", PosixMemalignFn),
        valloc: next!(c"valloc", MallocFn),
        pvalloc: next!(c"pvalloc", MallocFn),
        malloc_usable_size: next!(c"malloc_usable_size", UsableSizeFn),
        exit: next!(c"exit", ExitFn),
        underscore_exit: next!(c"_exit", ExitFn),
        underscore_capital_exit: next!(c"_Exit", ExitFn),
        abort: next!(c"abort", AbortFn),
        dlopen: next!(c"dlopen", DlopenFn),
        dlclose: next!(c"dlclose", DlcloseFn),
        execve: next!(c"execve", ExecveFn),
        execv: next!(c"execv", ExecvFn),
        execvp: next!(c"execvp", ExecvFn),
        execvpe: next!(c"execvpe", ExecveFn),
        fexecve: next!(c"fexecve", FexecveFn),
        reallocarray: next!(c"reallocarray", ReallocArrayFn),
        getenv: next!(c"getenv", GetenvFn),
        libc_start_main: next!(c"__libc_start_main", StartMainFn),
    })
}

/// The bootstrap arena: never freed, zero-filled (so it also serves calloc).
pub mod bootstrap {
    use super::*;

    const ARENA_BYTES: usize = 256 * 1024;
    const HEADER_BYTES: usize = 16;

    #[repr(C, align(4096))]
    struct Arena(UnsafeCell<[u8; ARENA_BYTES]>);
    // SAFETY: disjoint ranges are handed out by an atomic bump pointer; each range is then
    // owned by the caller that received it.
    unsafe impl Sync for Arena {}
    static ARENA: Arena = Arena(UnsafeCell::new([0; ARENA_BYTES]));
    static USED: AtomicUsize = AtomicUsize::new(0);

    fn base() -> usize {
        ARENA.0.get() as usize
    }

    pub fn owns(ptr: *const c_void) -> bool {
        let address = ptr as usize;
        address >= base() && address < base() + ARENA_BYTES
    }

    /// A block of `size` bytes aligned to `align` (a power of two ≥ 16), or null when the
    /// arena is exhausted (errno is then ENOMEM).
    pub fn alloc(size: usize, align: usize) -> *mut c_void {
        let align = align.max(HEADER_BYTES);
        let mut used = USED.load(Ordering::Relaxed);
        loop {
            let start = (base() + used + HEADER_BYTES).next_multiple_of(align);
            let end = match start.checked_add(size) {
                Some(end) if end <= base() + ARENA_BYTES => end,
                _ => {
                    super::super::set_errno(libc::ENOMEM);
                    return std::ptr::null_mut();
                }
            };
            match USED.compare_exchange_weak(used, end - base(), Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => {
                    let header = (start - HEADER_BYTES) as *mut usize;
                    // SAFETY: [start-16, end) lies inside the arena and was just reserved for
                    // this call alone; the header slot is 8-aligned.
                    unsafe { header.write(size) };
                    return start as *mut c_void;
                }
                Err(actual) => used = actual,
            }
        }
    }

    /// The size requested for a block of the arena.
    pub fn size_of(ptr: *const c_void) -> usize {
        // SAFETY: `ptr` came from `alloc`, which wrote the size 16 bytes before it.
        unsafe { ((ptr as usize - HEADER_BYTES) as *const usize).read() }
    }
}

/// Routes the interposer's own Rust allocations straight to the real allocator (or the
/// bootstrap arena before it is known), never through the recording hooks. Large blocks
/// (event batches, the collector's tables) are mapped directly instead: a malloc that has to
/// grow its heap holds the arena lock across a system call, and a signal handler that
/// allocates and interrupts it there deadlocks the thread; libleak must not open that window
/// where the program did not. Those mappings are listed in [`own_mappings`], so that the exit
/// scan does not take libleak's memory for the program's.
pub struct RealAllocator;

/// Blocks from this size up are mapped directly.
const MAPPED_FROM: usize = 64 * 1024;
const PAGE: usize = 4096;
const MAPPING_SLOTS: usize = 4096;

/// How many blocks libleak has given back (to the real allocator or by unmapping), its own
/// and those libc frees for it (a directory listing's buffer): either can unmap memory, so
/// what a reader learnt about which pages are mapped holds only while this count stays the
/// same.
static BLOCKS_GIVEN_BACK: AtomicUsize = AtomicUsize::new(0);

/// See [`BLOCKS_GIVEN_BACK`].
pub fn blocks_given_back() -> usize {
    BLOCKS_GIVEN_BACK.load(Ordering::Acquire)
}

/// A block given back outside this allocator (see [`BLOCKS_GIVEN_BACK`]).
pub fn note_given_back() {
    BLOCKS_GIVEN_BACK.fetch_add(1, Ordering::AcqRel);
}

/// Start and length of each live direct mapping; start 0 marks a free slot.
static MAPPINGS: [(AtomicUsize, AtomicUsize); MAPPING_SLOTS] =
    [const { (AtomicUsize::new(0), AtomicUsize::new(0)) }; MAPPING_SLOTS];

fn mapped_length(size: usize) -> usize {
    size.div_ceil(PAGE) * PAGE
}

/// Maps `size` bytes and records them; None when the table is full or mmap fails.
fn map_block(size: usize) -> Option<*mut u8> {
    let length = mapped_length(size);
    let slot = MAPPINGS.iter().find(|(start, _)| {
        start
            .compare_exchange(0, usize::MAX, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
    })?;
    // SAFETY: an anonymous private mapping of a fresh range; no existing memory is touched.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            length,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        slot.0.store(0, Ordering::Release);
        return None;
    }
    slot.1.store(length, Ordering::Release);
    slot.0.store(ptr as usize, Ordering::Release);
    Some(ptr as *mut u8)
}

/// Whether `ptr` is a live direct mapping; if so, unmaps it.
fn unmap_block(ptr: *mut u8) -> bool {
    let Some((start, length)) = MAPPINGS
        .iter()
        .find(|(start, _)| start.load(Ordering::Acquire) == ptr as usize)
    else {
        return false;
    };
    let bytes = length.load(Ordering::Acquire);
    // SAFETY: unmapping a mapping this allocator made and nothing else refers to any more.
    unsafe { libc::munmap(ptr as *mut c_void, bytes) };
    start.store(0, Ordering::Release);
    true
}

/// libleak's own direct mappings, as (start, end).
pub fn own_mappings() -> Vec<(u64, u64)> {
    MAPPINGS
        .iter()
        .filter_map(|(start, length)| {
            let start = start.load(Ordering::Acquire);
            let length = length.load(Ordering::Acquire);
            (start != 0 && start != usize::MAX).then_some((start as u64, (start + length) as u64))
        })
        .collect()
}

// SAFETY: forwards to malloc/memalign/free of the real allocator, which meet the
// GlobalAlloc contract for the requested layouts, or maps page-aligned zeroed pages for
// large blocks (alignments up to a page); arena blocks are never reused.
unsafe impl GlobalAlloc for RealAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= MAPPED_FROM && layout.align() <= PAGE {
            if let Some(ptr) = map_block(layout.size()) {
                return ptr;
            }
        }
        match get() {
            // SAFETY: real allocator entry points with valid sizes and power-of-two alignment.
            Some(real) if layout.align() <= 16 => unsafe { (real.malloc)(layout.size()) as *mut u8 },
            // SAFETY: as above.
            Some(real) => unsafe { (real.memalign)(layout.align(), layout.size()) as *mut u8 },
            None => bootstrap::alloc(layout.size(), layout.align()) as *mut u8,
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= MAPPED_FROM && layout.align() <= PAGE {
            if let Some(ptr) = map_block(layout.size()) {
                return ptr; // fresh anonymous pages are zero
            }
        }
        match get() {
            // SAFETY: calloc of the real allocator returns zeroed memory aligned for any
            // fundamental type (16 bytes here), and only fresh pages for large sizes.
            Some(real) if layout.align() <= 16 => unsafe { (real.calloc)(1, layout.size()) as *mut u8 },
            _ => {
                // SAFETY: same layout contract as `alloc`.
                let ptr = unsafe { self.alloc(layout) };
                if !ptr.is_null() {
                    // SAFETY: `ptr` is a fresh block of `layout.size()` bytes.
                    unsafe { std::ptr::write_bytes(ptr, 0, layout.size()) };
                }
                ptr
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if bootstrap::owns(ptr as *const c_void) {
            return;
        }
        BLOCKS_GIVEN_BACK.fetch_add(1, Ordering::AcqRel);
        if layout.size() >= MAPPED_FROM && unmap_block(ptr) {
            return;
        }
        if let Some(real) = get() {
            // The block goes back to malloc and may be handed to the program next: leave no
            // copies of block addresses (the collector's tables hold many) for the exit scan to
            // take for the program's pointers.
            // SAFETY: `ptr` is a live block of `layout.size()` bytes from this allocator.
            unsafe { std::ptr::write_bytes(ptr, 0, layout.size()) };
            // SAFETY: `ptr` came from this allocator's `alloc`, i.e. from the real allocator.
            unsafe { (real.free)(ptr as *mut c_void) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Never the real realloc: a block it moves is freed without being scrubbed (see
        // `dealloc`).
        // SAFETY: the layout is valid (checked by the caller's contract).
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: fresh allocation with a valid layout.
        let new_ptr = unsafe { self.alloc(new_layout) };
        if !new_ptr.is_null() {
            // SAFETY: both blocks are at least min(old, new) bytes and distinct.
            unsafe { std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size)) };
            // SAFETY: `ptr` came from this allocator with `layout`.
            unsafe { self.dealloc(ptr, layout) };
        }
        new_ptr
    }
}
