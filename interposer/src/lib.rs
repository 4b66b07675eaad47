//! `libleak.so`: injected with `LD_PRELOAD`, it wraps the malloc family, records every
//! allocation and free with its native stack, and hands batches of events to one writer
//! thread that writes the trace (see `format/SPEC.md`).
//!
//! Layout:
//! - [`ffi`]: every `unsafe` line and FFI call — the exported hooks, the real allocator,
//!   the unwinder's raw reads, system calls, the per-thread batch slots.
//! - [`tracker`]: what a hook does once it has the real result: the re-entrancy guard, the
//!   event encoding into per-thread batches, start-up and exit.
//! - [`unwind`]: native stacks: a stepper over cached per-address unwind rules, reusing the
//!   part of the thread's previous stack that did not change.
//! - [`writer`]: the writer thread: stack interning, module map, encoding, compression.
//! - [`python`]: finding CPython and walking the allocating thread's Python frames.
//! - [`reach`]: the exit-time reachability scan that classifies the blocks live at exit.
//! - [`stack_words`]: how native and Python frames travel from hooks to the writer.
//! - [`trace_file`]: the trace file's descriptor, kept out of the program's way.
//! - [`config`]: the `LIBLEAK_*` environment variables, parsed once.
//!
//! The interposer must never change what the traced program sees (results, errno, output,
//! exit status), never allocate through its own hooks, never recurse, and never panic: a
//! failure stops recording and says so once on stderr.
#![deny(unsafe_code)]

mod config;
mod ffi;
mod order;
mod python;
mod reach;
mod stack_words;
mod trace_file;
mod tracker;
mod unwind;
mod writer;

/// The global allocator of the interposer's own Rust code is the real allocator, so that
/// the interposer's bookkeeping never enters the hooks.
#[global_allocator]
static OWN_ALLOCATOR: ffi::real::RealAllocator = ffi::real::RealAllocator;
