//! The interpreter's memory and entry points, seen from inside malloc: finding CPython's
//! symbols in the process, calling its allocation-free thread-state getters, and reading its
//! structures by address.
//!
//! Everything here is a raw read or a call through a pointer found with `dlsym`; the logic
//! deciding *what* to read lives in `crate::python`. Nothing here may allocate through the
//! hooks, take the GIL, touch a reference count or call an API that can raise.

use std::ffi::{c_char, c_int, c_void, CStr};

type GetThreadStateFn = unsafe extern "C" fn() -> *mut c_void;
type GetAllocatorFn = unsafe extern "C" fn(c_int, *mut MemAllocator);
type ThreadHeadFn = unsafe extern "C" fn(*mut c_void) -> *mut c_void;

/// `PyMemAllocatorEx`: a context and four entry points, compared, never called.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct MemAllocator {
    context: usize,
    malloc: usize,
    calloc: usize,
    realloc: usize,
    free: usize,
}

/// `PyMemAllocatorDomain` values.
const PYMEM_DOMAIN_RAW: c_int = 0;
const PYMEM_DOMAIN_OBJ: c_int = 2;

/// The interpreter's symbols, as runtime addresses.
#[derive(Clone, Copy, Debug)]
pub struct Symbols {
    /// `_PyRuntime`, the interpreter's global state.
    pub runtime: usize,
    /// `PY_VERSION_HEX` of the running interpreter.
    pub version_hex: u32,
    pub code_type: usize,
    pub unicode_type: usize,
    /// `PyType_Type`: the metatype every type object leads to.
    pub type_type: usize,
    pub list_type: usize,
    /// `PyModule_Type`, `PyDict_Type`: what the scan at finalisation names holders from.
    pub module_type: usize,
    pub dict_type: usize,
    /// `PyTuple_Type`, `PyLong_Type`: what the names of retention-path steps read.
    pub tuple_type: usize,
    pub long_type: usize,
    /// `PyCell_Type`: a cell holds one reference, its contents. `PyFunction_Type`.
    pub cell_type: usize,
    pub function_type: usize,
    pub eval_loop_start: usize,
    pub eval_loop_size: usize,
    /// `PyGILState_GetThisThreadState`: the thread state bound to the calling OS thread.
    this_thread_state: GetThreadStateFn,
    /// 3.12+: `_PyThreadState_UncheckedGet`/`PyThreadState_GetUnchecked`, the thread-local
    /// current state. Not used before 3.12, where the same name returns the GIL holder.
    attached_thread_state: Option<GetThreadStateFn>,
    /// `PyMem_GetAllocator`: copies a domain's allocator; allocation-free (3.13 takes the
    /// allocators' own mutex, which is never held across an allocation).
    get_allocator: Option<GetAllocatorFn>,
    /// `PyInterpreterState_Main` and `PyInterpreterState_ThreadHead`: the main interpreter's
    /// first thread state (a plain read of two fields in every supported version).
    main_interpreter: Option<GetThreadStateFn>,
    thread_head: Option<ThreadHeadFn>,
    /// `Py_IgnoreEnvironmentFlag` (0 when absent): the interpreter writes its configuration's
    /// `!use_environment` there (`-I`, `-E`, an embedder's isolated configuration).
    ignore_environment_flag: usize,
}

fn symbol(name: &CStr) -> usize {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name. Called from the constructor
    // or the dlopen hook with the re-entrancy guard set, so dlerror's allocation passes through.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) as usize }
}

/// The address `name` is bound to for the process (the first definition in the global
/// lookup scope, as the loader binds an extension's imports), or 0.
pub fn function_address(name: &CStr) -> usize {
    symbol(name)
}

fn thread_state_getter(name: &CStr) -> Option<GetThreadStateFn> {
    let address = symbol(name);
    // SAFETY: the symbol is a CPython function taking no argument and returning a pointer.
    (address != 0).then(|| unsafe { std::mem::transmute::<usize, GetThreadStateFn>(address) })
}

/// Finds a CPython interpreter in the process; `None` when there is none (yet).
pub fn find_symbols() -> Option<Symbols> {
    let runtime = symbol(c"_PyRuntime");
    let this_thread_state = thread_state_getter(c"PyGILState_GetThisThreadState")?;
    let code_type = symbol(c"PyCode_Type");
    let unicode_type = symbol(c"PyUnicode_Type");
    let type_type = symbol(c"PyType_Type");
    let list_type = symbol(c"PyList_Type");
    let eval_loop_start = symbol(c"_PyEval_EvalFrameDefault");
    if runtime == 0 || code_type == 0 || unicode_type == 0 || type_type == 0 || eval_loop_start == 0 {
        return None;
    }
    let version_hex = version_hex()?;
    let attached_thread_state = if version_hex >= 0x030c_0000 {
        thread_state_getter(c"PyThreadState_GetUnchecked")
            .or_else(|| thread_state_getter(c"_PyThreadState_UncheckedGet"))
    } else {
        None
    };
    let get_allocator = symbol(c"PyMem_GetAllocator");
    // SAFETY: `PyMem_GetAllocator(domain, out)` has this signature in every supported version.
    let get_allocator =
        (get_allocator != 0).then(|| unsafe { std::mem::transmute::<usize, GetAllocatorFn>(get_allocator) });
    Some(Symbols {
        runtime,
        version_hex,
        code_type,
        unicode_type,
        type_type,
        list_type,
        module_type: symbol(c"PyModule_Type"),
        dict_type: symbol(c"PyDict_Type"),
        tuple_type: symbol(c"PyTuple_Type"),
        long_type: symbol(c"PyLong_Type"),
        cell_type: symbol(c"PyCell_Type"),
        function_type: symbol(c"PyFunction_Type"),
        main_interpreter: thread_state_getter(c"PyInterpreterState_Main"),
        thread_head: {
            let address = symbol(c"PyInterpreterState_ThreadHead");
            // SAFETY: `PyThreadState *PyInterpreterState_ThreadHead(PyInterpreterState *)`.
            (address != 0).then(|| unsafe { std::mem::transmute::<usize, ThreadHeadFn>(address) })
        },
        eval_loop_start,
        eval_loop_size: symbol_size(eval_loop_start),
        this_thread_state,
        attached_thread_state,
        get_allocator,
        ignore_environment_flag: symbol(c"Py_IgnoreEnvironmentFlag"),
    })
}

/// `PY_VERSION_HEX`: the `Py_Version` constant (3.11+), else parsed from `Py_GetVersion()`,
/// which formats static strings into a static buffer.
fn version_hex() -> Option<u32> {
    let constant = symbol(c"Py_Version");
    if constant != 0 {
        return read::<u32>(constant);
    }
    let get_version = symbol(c"Py_GetVersion");
    if get_version == 0 {
        return None;
    }
    // SAFETY: `Py_GetVersion` takes no argument and returns a static NUL-terminated string.
    let text = unsafe {
        let get_version = std::mem::transmute::<usize, unsafe extern "C" fn() -> *const c_char>(get_version);
        CStr::from_ptr(get_version())
    };
    let text = text.to_str().ok()?;
    let release = text.split(|c: char| !(c.is_ascii_digit() || c == '.')).next()?;
    let mut parts = release.split('.').map(|p| p.parse::<u32>().ok());
    let (major, minor, micro) = (parts.next()??, parts.next()??, parts.next().flatten().unwrap_or(0));
    Some(major << 24 | minor << 16 | micro.min(255) << 8 | 0xf0)
}

/// `dladdr1` flag asking for the symbol table entry (glibc `<dlfcn.h>`).
const RTLD_DL_SYMENT: c_int = 1;

/// The size of the function symbol at `address`, from the dynamic symbol table.
fn symbol_size(address: usize) -> usize {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    let mut entry: *const libc::Elf64_Sym = std::ptr::null();
    // SAFETY: dladdr1 with RTLD_DL_SYMENT writes a Dl_info and a pointer to the symbol's
    // entry in the loaded object's symbol table, which stays mapped while the object is.
    unsafe {
        let found = libc::dladdr1(
            address as *const c_void,
            info.as_mut_ptr(),
            &mut entry as *mut *const libc::Elf64_Sym as *mut *mut c_void,
            RTLD_DL_SYMENT,
        );
        if found == 0 || entry.is_null() {
            0
        } else {
            (*entry).st_size as usize
        }
    }
}

impl Symbols {
    /// The calling thread's own thread state, or 0 when it has none. Never another thread's.
    pub fn current_thread_state(&self) -> usize {
        if let Some(attached) = self.attached_thread_state {
            // SAFETY: an allocation-free CPython getter reading thread-local storage.
            let state = unsafe { attached() } as usize;
            if state != 0 {
                return state;
            }
        }
        // SAFETY: an allocation-free CPython getter (`pthread_getspecific` on its key); it
        // returns NULL before the interpreter starts and after it finishes.
        unsafe { (self.this_thread_state)() as usize }
    }

    /// The main interpreter and the first thread state in its list (0: none; the others
    /// follow through each state's `next`), or `None`. For the scan at finalisation, where
    /// the interpreter still exists.
    pub fn main_interpreter(&self) -> Option<(usize, usize)> {
        let (main, head) = (self.main_interpreter?, self.thread_head?);
        // SAFETY: both are allocation-free getters returning a field (`_PyRuntime`'s main
        // interpreter, then that interpreter's `threads.head`); neither locks nor raises.
        let interpreter = unsafe { main() };
        if interpreter.is_null() {
            return None;
        }
        // SAFETY: as above, with the main interpreter, alive until the runtime is finalised.
        Some((interpreter as usize, unsafe { head(interpreter) } as usize))
    }

    /// Whether the configured interpreter ignores environment variables such as
    /// `PYTHONMALLOC`; `None` when the flag is not there to read.
    pub fn ignores_environment(&self) -> Option<bool> {
        if self.ignore_environment_flag == 0 {
            return None;
        }
        read::<c_int>(self.ignore_environment_flag).map(|flag| flag != 0)
    }

    /// Whether Python objects come from the same allocator as raw memory, which is the C
    /// library's malloc itself unless an embedder replaced both (`PYTHONMALLOC=malloc`; not
    /// pymalloc, the debug hooks or tracemalloc's wrappers). Objects are then freed through
    /// `free`, where the hooks see them.
    pub fn objects_use_raw_allocator(&self) -> bool {
        let Some(get_allocator) = self.get_allocator else {
            return false;
        };
        let (mut raw, mut objects) = (MemAllocator::default(), MemAllocator::default());
        // SAFETY: each call copies one domain's allocator into a struct of the C layout;
        // neither allocates nor calls into Python code.
        unsafe {
            get_allocator(PYMEM_DOMAIN_RAW, &mut raw);
            get_allocator(PYMEM_DOMAIN_OBJ, &mut objects);
        }
        raw.free != 0 && raw == objects
    }
}

/// The word at `offset` in a heap block the program is freeing; `offset + 8` must not exceed
/// 24, the smallest usable size of a glibc block.
#[inline(always)]
pub fn freed_block_word(block: usize, offset: usize) -> usize {
    debug_assert!(offset + 8 <= 24);
    // SAFETY: `block` is a live malloc block handed to `free` by the program (null and
    // libleak's bootstrap blocks are filtered before), at least 24 bytes long and 16-aligned.
    unsafe { std::ptr::read_volatile((block + offset) as *const usize) }
}

/// The reference count of `object`, a non-null object a CPython constructor just returned to
/// the calling thread (so alive and not yet shared with another thread).
#[inline(always)]
pub fn new_object_refcount(object: usize) -> i64 {
    // SAFETY: as documented: a live object whose first word is `ob_refcnt` (in 3.12+ a
    // union whose full word is 1 for a new, mortal object).
    unsafe { std::ptr::read_volatile(object as *const i64) }
}

/// Lowest and highest address a user-space object can have on x86-64 Linux.
const LOWEST_ADDRESS: usize = 0x1000;
const HIGHEST_ADDRESS: usize = 0x7fff_ffff_f000;

/// Whether `[address, address + len)` is a plausible, aligned user-space range for a `T`.
fn plausible<T>(address: usize, len: usize) -> bool {
    address >= LOWEST_ADDRESS
        && address.is_multiple_of(std::mem::align_of::<T>())
        && address.checked_add(len).is_some_and(|end| end <= HIGHEST_ADDRESS)
}

/// Reads a `T` at `address`, or `None` when the address cannot be one.
#[inline]
pub fn read<T: Copy>(address: usize) -> Option<T> {
    if !plausible::<T>(address, std::mem::size_of::<T>()) {
        return None;
    }
    // SAFETY: the address is aligned and in user space; it was reached from the calling
    // thread's own interpreter state, whose frame chain only this thread mutates and which
    // is alive while this thread is inside malloc (see docs/python-frames.md
    // §1.3). A volatile read keeps the compiler from assuming anything about the value.
    Some(unsafe { std::ptr::read_volatile(address as *const T) })
}

/// Copies `len` bytes at `address` into `out`, or returns false when the range is implausible.
pub fn read_bytes(address: usize, len: usize, out: &mut Vec<u8>) -> bool {
    if !plausible::<u8>(address, len) {
        return false;
    }
    // SAFETY: as for `read`: the range lies in user space inside a live interpreter object
    // (a bytes or string buffer whose length was read from the object itself).
    out.extend_from_slice(unsafe { std::slice::from_raw_parts(address as *const u8, len) });
    true
}
