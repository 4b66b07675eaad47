//! The exported `dlsym` and `dlvsym`: a program that looks an allocator up in a library by
//! handle (`ctypes.CDLL("libc.so.6").malloc`, a plugin loader's `dlsym(libc, "free")`) is
//! handed libleak's wrapper, so that what it allocates is recorded; every other lookup gets
//! exactly the real answer.
//!
//! Only lookups by handle are rewritten, and only when the real lookup lands on the very
//! function libleak forwards to (the next allocator): the allocator of a library that brings
//! its own stays its own. `RTLD_DEFAULT` lookups already find libleak's exports first, and
//! `RTLD_NEXT` means "after the caller's object", which the real function works out from its
//! return address: those calls are not made from here but jumped to, with the caller's
//! arguments and return address untouched.
//!
//! Must never change a lookup's result other than by that substitution, nor its `dlerror`.

use std::ffi::{c_char, c_void, CStr};

use super::alloc;
use crate::sys::dl_next;
use crate::sys::real::{self, Real};

type DlsymFn = unsafe extern "C" fn(*mut c_void, *const c_char) -> *mut c_void;
type DlvsymFn = unsafe extern "C" fn(*mut c_void, *const c_char, *const c_char) -> *mut c_void;

/// What a stub does next: return `value` to its caller, or, when `jump` is not 0, jump there
/// with the caller's arguments (returned in rax and rdx).
#[repr(C)]
struct Decision {
    value: usize,
    jump: usize,
}

/// For a malloc-family `name`: the function libleak forwards to, and libleak's wrapper.
fn substitute(name: &CStr, real: &Real) -> Option<(usize, usize)> {
    Some(match name.to_bytes() {
        b"malloc" => (real.malloc as usize, alloc::malloc as *const () as usize),
        b"calloc" => (real.calloc as usize, alloc::calloc as *const () as usize),
        b"realloc" => (real.realloc as usize, alloc::realloc as *const () as usize),
        b"reallocarray" => (real.reallocarray as usize, alloc::reallocarray as *const () as usize),
        b"free" => (real.free as usize, alloc::free as *const () as usize),
        b"memalign" => (real.memalign as usize, alloc::memalign as *const () as usize),
        b"aligned_alloc" => (real.aligned_alloc as usize, alloc::aligned_alloc as *const () as usize),
        b"valloc" => (real.valloc as usize, alloc::valloc as *const () as usize),
        b"pvalloc" => (real.pvalloc as usize, alloc::pvalloc as *const () as usize),
        b"posix_memalign" => (
            real.posix_memalign as usize,
            alloc::posix_memalign as *const () as usize,
        ),
        b"malloc_usable_size" => (
            real.malloc_usable_size as usize,
            alloc::malloc_usable_size as *const () as usize,
        ),
        _ => return None,
    })
}

/// Whether a lookup of `name` in `handle` may be answered with a wrapper; if so, the pair of
/// [`substitute`].
fn rewritable(handle: *mut c_void, name: *const c_char) -> Option<(usize, usize)> {
    if handle.is_null() || handle == libc::RTLD_NEXT || name.is_null() {
        return None;
    }
    // SAFETY: dlsym's contract: a non-null name is NUL-terminated.
    substitute(unsafe { CStr::from_ptr(name) }, real::get()?)
}

/// The real lookup's result, or libleak's wrapper in its place.
fn answer(found: *mut c_void, (forwarded_to, wrapper): (usize, usize)) -> Decision {
    let value = if found as usize == forwarded_to {
        wrapper
    } else {
        found as usize
    };
    Decision { value, jump: 0 }
}

extern "C" fn dlsym_decision(handle: *mut c_void, name: *const c_char) -> Decision {
    let Some((real_dlsym, _)) = dl_next::real_dl().filter(|(dlsym, _)| *dlsym != 0) else {
        return Decision { value: 0, jump: 0 };
    };
    let Some(pair) = rewritable(handle, name) else {
        return Decision {
            value: 0,
            jump: real_dlsym,
        };
    };
    // SAFETY: the address is glibc's dlsym, whose C signature is DlsymFn.
    let real_dlsym = unsafe { std::mem::transmute::<usize, DlsymFn>(real_dlsym) };
    // SAFETY: the caller's arguments, under dlsym's own contract.
    answer(unsafe { real_dlsym(handle, name) }, pair)
}

extern "C" fn dlvsym_decision(handle: *mut c_void, name: *const c_char, version: *const c_char) -> Decision {
    let Some((_, real_dlvsym)) = dl_next::real_dl().filter(|(_, dlvsym)| *dlvsym != 0) else {
        return Decision { value: 0, jump: 0 };
    };
    let Some(pair) = rewritable(handle, name) else {
        return Decision {
            value: 0,
            jump: real_dlvsym,
        };
    };
    // SAFETY: the address is glibc's dlvsym, whose C signature is DlvsymFn.
    let real_dlvsym = unsafe { std::mem::transmute::<usize, DlvsymFn>(real_dlvsym) };
    // SAFETY: the caller's arguments, under dlvsym's own contract.
    answer(unsafe { real_dlvsym(handle, name, version) }, pair)
}

/// Exports `$name` as a stub that asks `$decide` (given the same arguments) what to do, and
/// then either returns its value or jumps to the real function with the caller's arguments,
/// so that the real function sees the caller's return address as its own.
macro_rules! decided_lookup {
    ($(#[$doc:meta])* $name:ident($($arg:ident: $type:ty),*) = $decide:ident) => {
        $(#[$doc])*
        #[unsafe(naked)]
        #[no_mangle]
        pub unsafe extern "C" fn $name($($arg: $type),*) -> *mut c_void {
            // SAFETY: saves the three argument registers (three pushes also align the stack
            // for the call), restores them after the decision, and either returns its value
            // or tail-jumps through r11 (a scratch register, no argument) with the stack as
            // the caller left it.
            std::arch::naked_asm!(
                "push rdi",
                "push rsi",
                "push rdx",
                "call {decide}",
                "mov r11, rdx",
                "pop rdx",
                "pop rsi",
                "pop rdi",
                "test r11, r11",
                "jnz 2f",
                "ret",
                "2:",
                "jmp r11",
                decide = sym $decide,
            )
        }
    };
}

decided_lookup!(
    /// # Safety
    /// As for dlsym.
    dlsym(handle: *mut c_void, name: *const c_char) = dlsym_decision
);

decided_lookup!(
    /// # Safety
    /// As for dlvsym.
    dlvsym(handle: *mut c_void, name: *const c_char, version: *const c_char) = dlvsym_decision
);
