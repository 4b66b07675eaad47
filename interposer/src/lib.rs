//! `libleak.so`: injected with `LD_PRELOAD`, it wraps the malloc family, records every
//! allocation and free with its native stack, and hands batches of events to one collector
//! thread that writes the trace (see `format/SPEC.md`).
//!
//! Layers, top first; each imports only the layers below it:
//! - [`exports`]: the C ABI the program calls (malloc, free, exit, exec, dlopen, …) and the
//!   library constructor, each a thin delegation to the recorder.
//! - [`recorder`]: what a hook records, per-thread batches and the channel, and the process's
//!   lifecycle (start-up, fork, exec, exit).
//! - [`collector`]: the thread that interns stacks, keeps the module map, encodes and writes
//!   the trace; it knows nothing of the recorder but the [`collector::EventSource`] it is given.
//! - [`batch`]: the in-memory event, packed by the recorder and read by the collector.
//! - [`unwind`]: native stacks: a stepper over cached per-address unwind rules, reusing the
//!   part of the thread's previous stack that did not change.
//! - [`python`]: finding CPython and walking the allocating thread's Python frames; which
//!   object constructors extensions get redirected to libleak's, to follow objects that
//!   CPython's free lists hand out again without `malloc`.
//! - [`reach`]: the exit-time reachability scan that classifies the blocks live at exit.
//! - [`stack_words`]: how native and Python frames travel from hooks to the collector.
//! - [`segments`]: which loaded object holds an address, by binary search.
//! - [`config`]: the `LIBLEAK_*` environment variables, parsed once.
//! - [`sys`]: every system call, libc service and raw memory read, behind safe functions;
//!   it imports nothing of the crate.
//!
//! `unsafe` code is allowed in [`exports`] and [`sys`] only.
//!
//! The interposer must never change what the traced program sees (results, errno, output,
//! exit status), never allocate through its own hooks, never recurse, and never panic: a
//! failure stops recording and says so once on stderr.
#![deny(unsafe_code)]

mod batch;
mod collector;
mod config;
mod exports;
mod python;
mod reach;
mod recorder;
mod segments;
mod stack_words;
mod sys;
mod unwind;

/// The global allocator of the interposer's own Rust code is the real allocator, so that
/// the interposer's bookkeeping never enters the hooks.
#[global_allocator]
static OWN_ALLOCATOR: sys::real::RealAllocator = sys::real::RealAllocator;
