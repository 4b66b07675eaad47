//! `libleak_mark`: the one function libleak adds to the process, for a program (or a test
//! runner, through `ctypes.CDLL(None).libleak_mark`) to name a point of its run in the trace.
//! A program that calls it must find it with `dlsym` (it exists only under the preload).
//!
//! Must never read past the label's terminating NUL or [`MAX_LABEL_BYTES`].

use std::ffi::{c_char, c_int};

use crate::recorder::{self, MAX_LABEL_BYTES};

/// Records a mark named `label` (UTF-8, NUL-terminated; NULL for none). Returns 0 when
/// recorded, -1 when this process is not recording.
///
/// # Safety
/// `label` is NULL or points to a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn libleak_mark(label: *const c_char) -> c_int {
    let mut bytes = [0u8; MAX_LABEL_BYTES];
    let mut len = 0;
    if !label.is_null() {
        while len < MAX_LABEL_BYTES {
            // SAFETY: the caller promises a NUL-terminated string; reading stops at the NUL.
            let byte = unsafe { *label.add(len) } as u8;
            if byte == 0 {
                break;
            }
            bytes[len] = byte;
            len += 1;
        }
    }
    if recorder::mark(&bytes[..len]) {
        0
    } else {
        -1
    }
}
