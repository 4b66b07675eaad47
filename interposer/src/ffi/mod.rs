//! Everything unsafe in the interposer lives under this module, in nine small files:
//! - `hooks`: the exported C symbols (malloc, free, …, `_exit`, `dlopen`), each a thin
//!   delegation to [`real`] and [`crate::tracker`];
//! - `real`: finding and calling the next allocator in the lookup chain, and the bootstrap
//!   arena used before it is known;
//! - `unwind`: the unwinder's registers, stack reads, stack bounds and unwind tables, and
//!   libgcc's unwinder as its reference and fallback;
//! - `sys`: system calls and libc services (errno, files, threads, modules, time);
//! - `slots`: the per-thread event batches the writer can drain;
//! - `python`: CPython's symbols and raw reads of its thread states, frames and code objects;
//! - `buffer`: uninitialised fixed-size word buffers, zeroed tables, and a write prefetch;
//! - `memory`: reading our own memory safely while other threads may unmap it (exit scan);
//! - `signals`: telling a signal handler's allocator calls from libleak's own.
//!
//! Nothing here may allocate through the hooks, panic, or take a lock that the traced
//! program could hold across `fork`.
#![allow(unsafe_code)]

pub mod buffer;
pub mod hooks;
pub mod memory;
pub mod python;
pub mod real;
pub mod signals;
pub mod slots;
pub mod sys;
pub mod unwind;
