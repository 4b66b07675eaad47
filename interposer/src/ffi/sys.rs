//! System calls and libc services the interposer needs, each wrapped in a safe function:
//! errno, process and thread ids, raw stderr writes, the writer thread, the thread-exit key,
//! fork and exit handlers, signal masks, and the loaded-module list.

use std::ffi::{c_int, c_void, CStr};

use libleak_format::{Module, Segment};

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

/// A thread started by [`spawn_thread`], to be joined once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThreadHandle(libc::pthread_t);

impl ThreadHandle {
    pub fn to_raw(self) -> u64 {
        self.0
    }

    pub fn from_raw(raw: u64) -> ThreadHandle {
        ThreadHandle(raw)
    }

    /// Waits for the thread to end.
    pub fn join(self) -> bool {
        // SAFETY: the handle came from pthread_create of a joinable thread; the caller joins
        // each handle once.
        unsafe { libc::pthread_join(self.0, std::ptr::null_mut()) == 0 }
    }
}

/// Starts a joinable thread running `entry` with every signal blocked from its first
/// instruction. The new thread must set its own re-entrancy guard before allocating.
pub fn spawn_thread(entry: extern "C" fn(*mut c_void) -> *mut c_void) -> Option<ThreadHandle> {
    // SAFETY: the signal mask is restored right after pthread_create, which copies it into
    // the new thread; attr is initialised and destroyed around the call.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous);
        let mut thread: libc::pthread_t = 0;
        let rc = libc::pthread_create(&mut thread, std::ptr::null(), entry, std::ptr::null_mut());
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        (rc == 0).then_some(ThreadHandle(thread))
    }
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

/// A pthread key whose destructor runs at each thread's exit while its value is non-null.
pub struct ThreadExitKey(libc::pthread_key_t);

impl ThreadExitKey {
    pub fn create(destructor: unsafe extern "C" fn(*mut c_void)) -> Option<ThreadExitKey> {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: valid out-pointer and destructor.
        let rc = unsafe { libc::pthread_key_create(&mut key, Some(destructor)) };
        (rc == 0).then_some(ThreadExitKey(key))
    }

    pub fn set(&self, value: *const c_void) {
        // SAFETY: the key was created by pthread_key_create; glibc stores keys below 32 in
        // the thread descriptor without allocating.
        unsafe { libc::pthread_setspecific(self.0, value) };
    }
}

pub fn register_fork_handlers(
    prepare: unsafe extern "C" fn(),
    parent: unsafe extern "C" fn(),
    child: unsafe extern "C" fn(),
) {
    // SAFETY: plain function pointers that live as long as the library.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}

pub fn register_exit_handler(handler: extern "C" fn()) {
    // SAFETY: registers a plain function pointer that lives as long as the library.
    unsafe { libc::atexit(handler) };
}

/// The load generation counters of the dynamic loader (objects added, removed).
pub fn loader_generation() -> (u64, u64) {
    extern "C" fn first(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> c_int {
        // SAFETY: the loader passes a valid info for the duration of the call; `data` is the
        // `&mut (u64, u64)` given below.
        unsafe {
            let out = &mut *(data as *mut (u64, u64));
            *out = ((*info).dlpi_adds, (*info).dlpi_subs);
        }
        1
    }
    let mut generation = (0u64, 0u64);
    // SAFETY: the callback only reads the info and writes through the pointer we pass.
    unsafe { libc::dl_iterate_phdr(Some(first), &mut generation as *mut (u64, u64) as *mut c_void) };
    generation
}

/// Every loaded object with its load bias, PT_LOAD segments and GNU build-id. Module ids
/// are left 0 for the caller to assign. The main program (empty loader name) is given the
/// path `main_exe`.
pub fn loaded_modules(main_exe: &str) -> Vec<Module> {
    struct Scan<'a> {
        main_exe: &'a str,
        modules: Vec<Module>,
    }
    extern "C" fn each(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> c_int {
        // SAFETY: the loader passes a valid info whose dlpi_phdr array has dlpi_phnum entries
        // and whose segments are mapped while the callback runs; `data` is `&mut Scan`.
        unsafe {
            let scan = &mut *(data as *mut Scan);
            let info = &*info;
            let name = if info.dlpi_name.is_null() {
                c""
            } else {
                CStr::from_ptr(info.dlpi_name)
            };
            let path = match name.to_bytes() {
                b"" => scan.main_exe.to_string(),
                bytes => String::from_utf8_lossy(bytes).into_owned(),
            };
            let headers = std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum));
            let mut module = Module {
                path,
                bias: info.dlpi_addr,
                ..Module::default()
            };
            for header in headers {
                match header.p_type {
                    libc::PT_LOAD => module.segments.push(Segment {
                        vaddr: header.p_vaddr,
                        memsz: header.p_memsz,
                        flags: header.p_flags,
                    }),
                    libc::PT_NOTE if module.build_id.is_empty() => {
                        let start = info.dlpi_addr.wrapping_add(header.p_vaddr) as *const u8;
                        let notes = std::slice::from_raw_parts(start, header.p_memsz as usize);
                        module.build_id = gnu_build_id(notes).unwrap_or_default();
                    }
                    _ => {}
                }
            }
            if !module.segments.is_empty() {
                scan.modules.push(module);
            }
        }
        0
    }
    let mut scan = Scan {
        main_exe,
        modules: Vec::new(),
    };
    // SAFETY: the callback only reads loader data and pushes to the Scan we pass.
    unsafe { libc::dl_iterate_phdr(Some(each), &mut scan as *mut Scan as *mut c_void) };
    scan.modules
}

/// Finds the NT_GNU_BUILD_ID descriptor in a PT_NOTE segment's bytes.
fn gnu_build_id(mut notes: &[u8]) -> Option<Vec<u8>> {
    let word = |b: &[u8], at: usize| -> Option<usize> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    while notes.len() >= 12 {
        let (name_len, desc_len, kind) = (word(notes, 0)?, word(notes, 4)?, word(notes, 8)?);
        let name_end = 12 + name_len.next_multiple_of(4);
        let desc_end = name_end.checked_add(desc_len.next_multiple_of(4))?;
        if desc_end > notes.len() {
            return None;
        }
        if kind == 3 && notes.get(12..12 + name_len)? == b"GNU\0" {
            return Some(notes[name_end..name_end + desc_len].to_vec());
        }
        notes = &notes[desc_end..];
    }
    None
}
