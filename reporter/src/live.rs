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
    /// What the scan made when CPython's finalisation began says of this block.
    pub at_finalization: AtFinalization,
}

/// What the scan made when CPython's finalisation began says of a block: kept with the
/// block while replay reads on, so that the blocks still live at exit know it without a
/// table of every block live then.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AtFinalization {
    /// Not live then: allocated after that scan was read, or there was no such scan.
    #[default]
    NotLive,
    /// Live then, with the class that scan gave it (`None` when it was incomplete, or left
    /// an inherited block to the parent's trace).
    Live(Option<LeakClass>),
}

impl libleak_format::live::LiveBlock for ExitBlock {
    fn seq(&self) -> u64 {
        self.seq
    }

    fn size(&self) -> u64 {
        self.size
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The live set keeps one per live block (hundreds of thousands in a real program's
    /// trace): what the finalisation scan said of it fits in the padding.
    #[test]
    fn an_exit_block_stays_40_bytes() {
        assert_eq!(std::mem::size_of::<ExitBlock>(), 40);
    }
}
