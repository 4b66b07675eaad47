//! The top layer: the C ABI the traced program calls, and nothing else. Every exported
//! symbol makes the real call through [`crate::sys::real`] and delegates what libleak does
//! about it to [`crate::recorder`]:
//! - `alloc`: the malloc family, `free`, `malloc_usable_size`;
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

mod alloc;
mod env;
mod init;
mod mark;
mod process;
mod symbols;
