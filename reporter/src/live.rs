//! The reporter's view of a block live at exit. The live-set rules themselves are shared
//! with the interposer and live in [`libleak_format::live`].
//!
//! Data only: this module must never add rules of its own about which blocks are live.

use libleak_format::{AllocKind, LeakClass};

pub use libleak_format::live::{LiveSet, Totals};

/// One allocation that is still live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitBlock {
    pub seq: u64,
    pub address: u64,
    pub size: u64,
    pub stack: u64,
    pub kind: AllocKind,
    pub thread_id: u32,
    /// What the scan that covers it found: the one made when CPython's finalisation began
    /// for a block live then, else the exit-time scan; `None` when that scan is incomplete.
    pub class: Option<LeakClass>,
    /// Allocated after CPython's finalisation began: the runtime's, whatever its stack.
    pub during_finalization: bool,
}

impl libleak_format::live::LiveBlock for ExitBlock {
    fn seq(&self) -> u64 {
        self.seq
    }

    fn size(&self) -> u64 {
        self.size
    }
}
