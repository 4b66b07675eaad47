//! The exported process-lifecycle symbols: `__libc_start_main`, `exit`, `_exit`, `_Exit`,
//! `abort`, the `exec` family, `dlopen` and `dlclose`. Each makes the real call and tells the
//! recorder what is about to happen (or just happened) to the process image.
//!
//! A `main` that returns hands its status to glibc, whose call to `exit` is internal to libc
//! and never reaches the exported `exit`: `__libc_start_main` is therefore handed a `main`
//! of libleak's that calls the program's and notes what it returns.
//!
//! Must never change what the caller sees: results and errno are the real call's.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};

use libleak_format::ExitKind;

use crate::recorder::{self, ExecTarget};
use crate::sys::real::{self, MainFn, Real};
use crate::sys::{errno, set_errno};

type Strings = *const *const c_char;

fn exit_group(status: c_int) -> ! {
    loop {
        // SAFETY: exit_group ends the process and does not return.
        unsafe { libc::syscall(libc::SYS_exit_group, status) };
    }
}

/// The program's `main`, as `__libc_start_main` was given it.
static PROGRAM_MAIN: AtomicUsize = AtomicUsize::new(0);

/// The `main` glibc runs: the program's, then the status it returned is noted.
extern "C" fn main_noting_status(argc: c_int, argv: *mut *mut c_char, envp: *mut *mut c_char) -> c_int {
    // SAFETY: set below to the program's main (of type MainFn) before this can run.
    let main = unsafe { std::mem::transmute::<usize, MainFn>(PROGRAM_MAIN.load(Ordering::Acquire)) };
    // SAFETY: the arguments glibc passes to main.
    let status = unsafe { main(argc, argv, envp) };
    recorder::note_exit_status(status);
    status
}

/// # Safety
/// As for glibc's `__libc_start_main` (called by the program's `_start`).
#[no_mangle]
pub unsafe extern "C" fn __libc_start_main(
    main: MainFn,
    argc: c_int,
    argv: *mut *mut c_char,
    init: *mut c_void,
    fini: *mut c_void,
    rtld_fini: *mut c_void,
    stack_end: *mut c_void,
) -> c_int {
    let Some(real) = real::get() else {
        exit_group(127); // the real allocator was not found, as said on stderr
    };
    PROGRAM_MAIN.store(main as usize, Ordering::Release);
    // SAFETY: forwarding `_start`'s arguments, with a main of the same signature.
    unsafe { (real.libc_start_main)(main_noting_status, argc, argv, init, fini, rtld_fini, stack_end) }
}

#[no_mangle]
pub extern "C" fn exit(status: c_int) -> ! {
    recorder::note_exit_status(status);
    match real::get() {
        // SAFETY: the real exit with the caller's status.
        Some(r) => unsafe { (r.exit)(status) },
        None => exit_group(status),
    }
}

#[no_mangle]
pub extern "C" fn _exit(status: c_int) -> ! {
    recorder::finish(ExitKind::UnderscoreExit, Some(status));
    match real::get() {
        // SAFETY: the real _exit with the caller's status.
        Some(r) => unsafe { (r.underscore_exit)(status) },
        None => exit_group(status),
    }
}

#[no_mangle]
pub extern "C" fn _Exit(status: c_int) -> ! {
    recorder::finish(ExitKind::UnderscoreExit, Some(status));
    match real::get() {
        // SAFETY: the real _Exit with the caller's status.
        Some(r) => unsafe { (r.underscore_capital_exit)(status) },
        None => exit_group(status),
    }
}

#[no_mangle]
pub extern "C" fn abort() -> ! {
    recorder::finish(ExitKind::Abort, None);
    match real::get() {
        // SAFETY: the real abort.
        Some(r) => unsafe { (r.abort)() },
        None => loop {
            // SAFETY: raising SIGABRT on ourselves; the default action ends the process.
            unsafe { libc::raise(libc::SIGABRT) };
        },
    }
}

/// # Safety
/// As for dlopen: `filename` is null or a NUL-terminated path.
#[no_mangle]
pub unsafe extern "C" fn dlopen(filename: *const c_char, flags: c_int) -> *mut c_void {
    let Some(real) = real::get() else {
        return std::ptr::null_mut();
    };
    // SAFETY: forwarding the caller's arguments.
    let handle = unsafe { (real.dlopen)(filename, flags) };
    if !handle.is_null() {
        let saved = errno();
        recorder::modules_changed();
        set_errno(saved);
    }
    handle
}

/// # Safety
/// As for dlclose: `handle` came from dlopen.
#[no_mangle]
pub unsafe extern "C" fn dlclose(handle: *mut c_void) -> c_int {
    let Some(real) = real::get() else {
        return -1;
    };
    // SAFETY: forwarding the caller's handle.
    let rc = unsafe { (real.dlclose)(handle) };
    let saved = errno();
    recorder::module_unloaded();
    set_errno(saved);
    rc
}

/// Where an `exec` looks for the program, to tell whether it will succeed.
fn exec_target<'a>(file: *const c_char, search_path: bool) -> ExecTarget<'a> {
    if file.is_null() {
        return ExecTarget::Unknown;
    }
    // SAFETY: exec's contract: `file` is a NUL-terminated string.
    let file = unsafe { CStr::from_ptr(file) };
    if search_path && !file.to_bytes().contains(&b'/') {
        ExecTarget::SearchPath(file)
    } else {
        ExecTarget::Path(file)
    }
}

/// Ends the trace if the exec will run, then makes the real call.
fn exec(target: ExecTarget, call: impl FnOnce(&Real) -> c_int) -> c_int {
    let Some(real) = real::get() else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    recorder::before_exec(target);
    call(real)
}

/// # Safety
/// As for execve.
#[no_mangle]
pub unsafe extern "C" fn execve(path: *const c_char, argv: Strings, envp: Strings) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    exec(exec_target(path, false), |r| unsafe { (r.execve)(path, argv, envp) })
}

/// # Safety
/// As for execv.
#[no_mangle]
pub unsafe extern "C" fn execv(path: *const c_char, argv: Strings) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    exec(exec_target(path, false), |r| unsafe { (r.execv)(path, argv) })
}

/// # Safety
/// As for execvp.
#[no_mangle]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: Strings) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    exec(exec_target(file, true), |r| unsafe { (r.execvp)(file, argv) })
}

/// # Safety
/// As for execvpe.
#[no_mangle]
pub unsafe extern "C" fn execvpe(file: *const c_char, argv: Strings, envp: Strings) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    exec(exec_target(file, true), |r| unsafe { (r.execvpe)(file, argv, envp) })
}

/// # Safety
/// As for fexecve.
#[no_mangle]
pub unsafe extern "C" fn fexecve(fd: c_int, argv: Strings, envp: Strings) -> c_int {
    // SAFETY: forwarding the caller's arguments.
    exec(ExecTarget::Unknown, |r| unsafe { (r.fexecve)(fd, argv, envp) })
}
