//! The top layer: the C ABI the traced program calls, and nothing else. Every exported
//! symbol makes the real call through [`crate::sys::real`] and delegates what libleak does
//! about it to [`crate::recorder`]:
//! - `alloc`: the malloc family, `free`, `malloc_usable_size`;
//! - `constructors`: CPython object constructors, not exported: extensions' import slots
//!   are redirected to them (see [`crate::python::constructors`]);
//! - `process`: `__libc_start_main` (to learn what `main` returns), `exit`, `_exit`, `_Exit`,
//!   `abort`, the `exec` family, `dlopen`, `dlclose`;
//! - `symbols`: `dlsym` and `dlvsym`, handing out the allocator wrappers for lookups by handle;
//! - `env`: `getenv`, answering `PYTHONMALLOC` for this process alone;
//! - `init`: the library constructor;
//! - `mark`: `libleak_mark`, for the program to name a point of its run.
//!
//! Must never change what the caller sees (results, errno, `free(NULL)`, alignment errors),
//! allocate through its own hooks, or hold anything of libleak's across the real call.
#![allow(unsafe_code)]

use crate::sys::stack::Registers;

/// Defines `$name` (exported when given `#[no_mangle]`), taking `$args`, as a stub that
/// jumps to `$body` with three more arguments, in the registers that follow the given ones: the caller's instruction pointer
/// (the return address), its stack pointer after the return, and its frame pointer, which
/// the stub has not touched. The body then runs as though the caller had called it.
macro_rules! entered_with_caller {
    ($(#[$doc:meta])* $name:ident($($arg:ident: $type:ty),*) -> $ret:ty = $body:ident, [$ip:literal, $sp:literal, $bp:literal]) => {
        $(#[$doc])*
        #[unsafe(naked)]
        pub unsafe extern "C" fn $name($($arg: $type),*) -> $ret {
            // SAFETY: reads the return address the call pushed and two registers into
            // argument registers the body's signature declares, then tail-jumps with the
            // stack as the call left it (alignment included); nothing else is touched.
            std::arch::naked_asm!(
                concat!("mov ", $ip, ", qword ptr [rsp]"),
                concat!("lea ", $sp, ", [rsp + 8]"),
                concat!("mov ", $bp, ", rbp"),
                "jmp {body}",
                body = sym $body,
            )
        }
    };
}

/// The caller's registers, as a stub passed them.
pub(crate) fn caller(ip: usize, sp: usize, bp: usize) -> Registers {
    Registers { ip, sp, bp }
}

mod alloc;
mod constructors;
mod env;
mod init;
mod mark;
mod process;
mod symbols;
