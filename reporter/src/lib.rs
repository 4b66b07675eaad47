//! The reporter as a library: [`replay`] reads a trace into the set of blocks live at exit,
//! [`symbolize`] turns native addresses into functions and lines offline from the recorded
//! module map, [`merge`] splices Python frames (lines from [`python_lines`]) into native
//! stacks, [`owner`] decides who is responsible for a stack (and what the runtime left by
//! itself), [`suppress`] applies LeakSanitizer-style suppressions, and [`report`] groups,
//! ranks and renders. The `libleak` binary is a thin CLI over these.
//!
//! Nothing here may panic on any input file: every failure is a typed error.
#![forbid(unsafe_code)]

pub mod live;
pub mod merge;
pub mod owner;
pub mod python_lines;
pub mod replay;
pub mod report;
pub mod suppress;
pub mod symbolize;
