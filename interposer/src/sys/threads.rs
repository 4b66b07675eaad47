//! Threads and process-lifecycle registrations: starting the collector's thread, the
//! thread-exit key, and the `fork` and `exit` handlers. Callers hand plain Rust `fn`s; the
//! `extern "C"` functions glibc calls are private trampolines here, which keep the caller's
//! errno as it was, so no layer above needs to know the C calling convention.
//!
//! Each registration is made once per process: a second one of the same kind keeps the first
//! function.

use std::ffi::c_void;
use std::sync::OnceLock;

use super::slots::Slot;
use super::{errno, set_errno};

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
/// instruction. The new thread must set its own re-entrancy phase before allocating.
pub fn spawn_thread(entry: fn()) -> Option<ThreadHandle> {
    extern "C" fn start(entry: *mut c_void) -> *mut c_void {
        // SAFETY: `entry` is the `fn()` that `spawn_thread` passed as the thread's argument.
        let entry = unsafe { std::mem::transmute::<*mut c_void, fn()>(entry) };
        // Named, so that whoever lists the program's threads (top -H, gdb, psutil) can tell
        // libleak's own from the program's, which the new thread was named after.
        // SAFETY: PR_SET_NAME reads a NUL-terminated name of at most 16 bytes; failure is
        // harmless (the thread keeps the program's name).
        unsafe { libc::prctl(libc::PR_SET_NAME, c"libleak".as_ptr()) };
        entry();
        std::ptr::null_mut()
    }
    // SAFETY: the signal mask is restored right after pthread_create, which copies it into
    // the new thread; attr is the default; the argument is a function pointer, valid forever.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut previous);
        let mut thread: libc::pthread_t = 0;
        let rc = libc::pthread_create(&mut thread, std::ptr::null(), start, entry as *mut c_void);
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        (rc == 0).then_some(ThreadHandle(thread))
    }
}

static ON_THREAD_EXIT: OnceLock<fn(&'static Slot)> = OnceLock::new();

/// A pthread key whose destructor hands each exiting thread's slot to a function.
pub struct ThreadExitKey(libc::pthread_key_t);

impl ThreadExitKey {
    /// Creates the key; `on_exit` runs at the exit of every thread that [`set`](Self::set) a
    /// slot, with that slot.
    pub fn create(on_exit: fn(&'static Slot)) -> Option<ThreadExitKey> {
        unsafe extern "C" fn destructor(value: *mut c_void) {
            if value.is_null() {
                return;
            }
            let saved = errno();
            if let Some(on_exit) = ON_THREAD_EXIT.get() {
                // SAFETY: the key's values are only ever set by `ThreadExitKey::set` from a
                // `&'static Slot`.
                on_exit(unsafe { Slot::from_ptr(value) });
            }
            set_errno(saved);
        }
        let _ = ON_THREAD_EXIT.set(on_exit);
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: valid out-pointer and destructor.
        let rc = unsafe { libc::pthread_key_create(&mut key, Some(destructor)) };
        (rc == 0).then_some(ThreadExitKey(key))
    }

    /// Makes `slot` this thread's value of the key.
    pub fn set(&self, slot: &'static Slot) {
        // SAFETY: the key was created by pthread_key_create; glibc stores keys below 32 in
        // the thread descriptor without allocating.
        unsafe { libc::pthread_setspecific(self.0, slot.as_ptr()) };
    }
}

/// The functions run around `fork`: before it, after it in the parent, after it in the child.
pub struct ForkHandlers {
    pub prepare: fn(),
    pub parent: fn(),
    pub child: fn(),
}

static FORK_HANDLERS: OnceLock<ForkHandlers> = OnceLock::new();

pub fn register_fork_handlers(handlers: ForkHandlers) {
    extern "C" fn prepare() {
        keeping_errno(|| FORK_HANDLERS.get().map(|h| h.prepare));
    }
    extern "C" fn parent() {
        keeping_errno(|| FORK_HANDLERS.get().map(|h| h.parent));
    }
    extern "C" fn child() {
        keeping_errno(|| FORK_HANDLERS.get().map(|h| h.child));
    }
    if FORK_HANDLERS.set(handlers).is_ok() {
        // SAFETY: plain function pointers that live as long as the library.
        unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
    }
}

static ON_EXIT: OnceLock<fn()> = OnceLock::new();

/// Registers `handler` with `atexit`: it runs after the program's own exit handlers
/// registered before it (and after Python's finalisation, which happens before `exit`).
pub fn register_exit_handler(handler: fn()) {
    extern "C" fn at_exit() {
        keeping_errno(|| ON_EXIT.get().copied());
    }
    if ON_EXIT.set(handler).is_ok() {
        // SAFETY: registers a plain function pointer that lives as long as the library.
        unsafe { libc::atexit(at_exit) };
    }
}

/// Runs the handler `find` gives, if any, leaving errno as the program had it.
fn keeping_errno(find: impl FnOnce() -> Option<fn()>) {
    if let Some(handler) = find() {
        let saved = errno();
        handler();
        set_errno(saved);
    }
}
