//! The scan made when CPython's finalisation began, as replay reads it: its classes, its
//! holders with their retention paths, and the object types, gathered between the FINALIZING
//! record and that scan's REACHABILITY, then closed against the blocks live at that point.
//!
//! Must never read a file or decide a block's class at exit: [`Trace`](super::Trace) applies
//! what this gathers once the whole trace is read.

use libleak_format::live::AddressMap as FastMap;
use libleak_format::{BlockHolder, Holder, LeakClass, Reachability, ScanOutcome};

use super::{BlockThen, HeldBlocks, Holding};
use crate::live::{AtFinalization, ExitBlock, LiveSet};

/// The scan made when CPython's finalisation began, as replay meets it: the FINALIZING
/// record opens it, its BLOCK_CLASSES gather, and its REACHABILITY closes it against the
/// blocks live at that point of the replay.
#[derive(Default)]
pub(super) struct FinalizationScan {
    /// The thread finalising the interpreter.
    pub(super) thread_id: u32,
    pub(super) classes: FastMap<u64, LeakClass>,
    pub(super) scan: Option<Reachability>,
    pub(super) holder_names: Vec<Holder>,
    /// The BLOCK_HOLDERS entries, in file order.
    pub(super) block_holders: Vec<BlockHolder>,
    pub(super) object_types: Vec<String>,
    pub(super) step_names: Vec<String>,
    pub(super) holding: Option<Holding>,
}

impl FinalizationScan {
    /// Tells every block live when the scan was made what it says of it
    /// ([`ExitBlock::at_finalization`]): the replay's own, `live`, and those of `inherited` (a
    /// forked child's inheritance) that the child's events never named.
    pub(super) fn close(
        &mut self,
        scan: Reachability,
        live: &mut LiveSet<ExitBlock>,
        inherited: &mut [(u64, ExitBlock)],
    ) {
        let complete = scan.outcome == ScanOutcome::Complete;
        let keeps_holders = complete && !self.holder_names.is_empty();
        let mut live_then = Vec::new();
        let tell = |address: u64, block: &mut ExitBlock, inherited: bool, live_then: &mut Vec<BlockThen>| {
            let class = complete
                .then(|| class_given(&self.classes, &scan, inherited, address))
                .flatten();
            block.at_finalization = AtFinalization::Live(class);
            if keeps_holders {
                live_then.push(BlockThen {
                    address,
                    seq: block.seq,
                    size: block.size,
                    stack: block.stack,
                });
            }
        };
        live.for_each_live_mut(|block| tell(block.address, block, false, &mut live_then));
        let own = live_then.len();
        for (address, block) in inherited.iter_mut() {
            if !live.has_events_at(*address) {
                tell(*address, block, true, &mut live_then);
            }
        }
        let block_holders = std::mem::take(&mut self.block_holders);
        if keeps_holders {
            self.holding = Some(Holding::new(
                std::mem::take(&mut self.holder_names),
                std::mem::take(&mut self.object_types),
                std::mem::take(&mut self.step_names),
                HeldBlocks::new(block_holders),
                live_then,
                own,
            ));
        }
        self.classes = FastMap::default();
        self.scan = Some(scan);
    }
}

/// The class a complete scan gave a block: its BLOCK_CLASSES entry, else reachable; but an
/// inherited block a forked child's scan left to its parent's trace (see
/// [`Reachability::inherited_unjudged`]) has none unless the scan wrote one.
pub(super) fn class_given(
    classes: &FastMap<u64, LeakClass>,
    scan: &Reachability,
    inherited: bool,
    address: u64,
) -> Option<LeakClass> {
    let written = classes.get(&address).copied();
    if inherited && scan.inherited_unjudged > 0 {
        written
    } else {
        Some(written.unwrap_or(LeakClass::Reachable))
    }
}
