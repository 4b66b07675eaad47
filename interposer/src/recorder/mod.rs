//! The recorder: what a hook does once it has the real result, and the process's life as
//! libleak follows it. It sits between the exported symbols above ([`crate::exports`]) and
//! the collector thread below ([`crate::collector`]), which it starts, feeds, parks around
//! `fork` and ends.
//!
//! Files, lowest first (each imports only those above it in this list):
//! - `state`: recording or not, for which process; `stats`: the counters and the unwinder
//!   self-check; `seq`: sequence numbers; `thread`: each thread's phase and slot;
//!   `trace_open`: the process record and the trace file;
//! - `collector_thread`: starting, parking and resuming the collector's thread;
//! - `channel`: batches and the channel to the collector, and the sweep's [`EventSource`];
//! - `finalization`: the scan when CPython's finalisation begins; `mark`: points of the run
//!   the program names;
//! - `phase`: entering a hook and recording its event;
//! - `fork`, `startup`, `modules`, `finish`, `exec`: the process's moments.
//!
//! Nothing here may panic, block while holding a slot, or allocate except through the real
//! allocator (every allocation happens as libleak's own work).
//!
//! [`EventSource`]: crate::collector::EventSource

mod channel;
mod collector_thread;
mod exec;
mod finalization;
mod finish;
mod fork;
mod mark;
mod modules;
mod phase;
mod seq;
mod startup;
mod state;
mod stats;
mod thread;
mod trace_open;

pub use exec::{before_exec, ExecTarget};
pub use finish::{finish, note_exit_status};
pub use mark::{mark, MAX_LABEL_BYTES};
pub use modules::{module_unloaded, modules_changed};
pub use phase::{allocation_mark, enter, next_seq, scrub_freed, MAX_SCRUB_BYTES};
pub use startup::start;
