//! The exported `getenv`: the real answer, except that a variable libleak means this process
//! alone to see (`PYTHONMALLOC=malloc`, see [`crate::config::answer_for_unset`]) is answered
//! while the environment lacks it. libleak never writes it into the environment, so the
//! programs this one starts (and Python's `os.environ`) see the environment as it was.
//!
//! Must never change the answer for a variable the environment has.

use std::ffi::{c_char, CStr};

use crate::config;
use crate::sys::real;

extern "C" {
    /// glibc's; not in the `libc` crate.
    fn secure_getenv(name: *const c_char) -> *mut c_char;
}

/// # Safety
/// As for getenv: `name` is a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn getenv(name: *const c_char) -> *mut c_char {
    let value = match real::get() {
        // SAFETY: forwarding the caller's argument.
        Some(real) => unsafe { (real.getenv)(name) },
        // Only while the real functions are being looked up: secure_getenv, which libleak
        // does not export, answers the same outside set-user-id programs.
        // SAFETY: as above.
        None => unsafe { secure_getenv(name) },
    };
    if !value.is_null() || name.is_null() {
        return value;
    }
    // SAFETY: getenv's contract: `name` is NUL-terminated.
    config::answer_for_unset(unsafe { CStr::from_ptr(name) }).map_or(value, |answer| answer.as_ptr() as *mut c_char)
}
