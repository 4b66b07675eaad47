//! The scan made when CPython's finalisation began, as replay reads it: its classes, its
//! holders with their retention paths, and the object types, gathered between the FINALIZING
//! record and that scan's REACHABILITY, then closed against the blocks live at that point.
//!
//! Must never read a file or decide a block's class at exit: [`Trace`](super::Trace) applies
//! what this gathers once the whole trace is read.

use std::collections::{HashMap, HashSet};

use libleak_format::{Holder, LeakClass, Reachability, ScanOutcome};

use super::{Held, Holding, PathStep};
use crate::live::ExitBlock;

/// The scan made when CPython's finalisation began, as replay meets it: the FINALIZING
/// record opens it, its BLOCK_CLASSES gather, and its REACHABILITY closes it against the
/// blocks live at that point of the replay.
#[derive(Default)]
pub(super) struct FinalizationScan {
    pub(super) classes: HashMap<u64, LeakClass>,
    pub(super) scan: Option<Reachability>,
    /// (address, seq) of every block live when the scan was made, with its class (`None`
    /// when the scan did not complete).
    pub(super) live_then: HashMap<(u64, u64), Option<LeakClass>>,
    /// (address, seq) of the blocks a Python name (a module global, a class attribute) held
    /// when the scan was made.
    pub(super) named_then: HashSet<(u64, u64)>,
    pub(super) holder_names: Vec<Holder>,
    /// Address → (holder id, object type id, the address it was reached from or 0, step id).
    pub(super) block_holders: HashMap<u64, (u32, u32, u64, u32)>,
    pub(super) object_types: Vec<String>,
    pub(super) step_names: Vec<String>,
    pub(super) holding: Option<Holding>,
}

/// Blocks followed back from a held block towards its holder, at most.
const MAX_PATH: usize = 16;

impl FinalizationScan {
    /// The blocks along the way from the holder to the block at `address` (that block's
    /// last), following each block's `via`, and whether the way was cut before the holder.
    fn path_to(&self, address: u64) -> (Vec<PathStep>, bool) {
        let mut path = Vec::new();
        let mut at = address;
        let mut cut = false;
        while let Some(&(_, object_type, via, step)) = self.block_holders.get(&at) {
            path.push(PathStep { object_type, step });
            if via == 0 {
                break;
            }
            if path.len() == MAX_PATH {
                cut = true;
                break;
            }
            at = via;
        }
        path.reverse();
        (path, cut)
    }

    /// `live`: every block live when the scan was made, inherited ones from `inherited_from`
    /// on.
    pub(super) fn close(&mut self, scan: Reachability, live: Vec<(u64, ExitBlock)>, inherited_from: usize) {
        let complete = scan.outcome == ScanOutcome::Complete;
        if complete {
            let named = |holder: u32| {
                matches!(
                    self.holder_names.get((holder as usize).wrapping_sub(1)),
                    Some(Holder::Python(_))
                )
            };
            self.named_then = live
                .iter()
                .filter(|(address, _)| {
                    self.block_holders
                        .get(address)
                        .is_some_and(|&(holder, ..)| named(holder))
                })
                .map(|(address, block)| (*address, block.seq))
                .collect();
        }
        if complete && !self.holder_names.is_empty() {
            let mut by_stack: HashMap<u64, Vec<Held>> = HashMap::new();
            let mut types_by_stack: HashMap<u64, Vec<(u32, u64, u64)>> = HashMap::new();
            // Per (stack, holder): the newest block's seq and address, whose path is shown.
            let mut newest: HashMap<(u64, u32), (u64, u64)> = HashMap::new();
            for &(address, block) in &live {
                let Some(&(holder, object_type, ..)) = self.block_holders.get(&address) else {
                    continue;
                };
                let slot = newest.entry((block.stack, holder)).or_insert((block.seq, address));
                if block.seq > slot.0 {
                    *slot = (block.seq, address);
                }
                if object_type != 0 {
                    let types = types_by_stack.entry(block.stack).or_default();
                    match types.iter_mut().find(|t| t.0 == object_type) {
                        Some(t) => {
                            t.1 += block.size;
                            t.2 += 1;
                        }
                        None => types.push((object_type, block.size, 1)),
                    }
                }
                let held = by_stack.entry(block.stack).or_default();
                match held.iter_mut().find(|h| h.holder == holder) {
                    Some(h) => {
                        h.bytes += block.size;
                        h.blocks += 1;
                    }
                    None => held.push(Held {
                        holder,
                        bytes: block.size,
                        blocks: 1,
                        path: Vec::new(),
                        path_cut: false,
                    }),
                }
            }
            for (stack, held) in &mut by_stack {
                for h in held.iter_mut() {
                    if let Some(&(_, address)) = newest.get(&(*stack, h.holder)) {
                        (h.path, h.path_cut) = self.path_to(address);
                    }
                }
            }
            for held in by_stack.values_mut() {
                held.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.holder.cmp(&b.holder)));
            }
            for types in types_by_stack.values_mut() {
                types.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            }
            self.holding = Some(Holding {
                names: std::mem::take(&mut self.holder_names),
                by_stack,
                types: std::mem::take(&mut self.object_types),
                steps: std::mem::take(&mut self.step_names),
                types_by_stack,
            });
        }
        self.block_holders = HashMap::new();
        self.live_then = live
            .into_iter()
            .enumerate()
            .map(|(index, (address, block))| {
                let class = complete
                    .then(|| class_given(&self.classes, &scan, index >= inherited_from, address))
                    .flatten();
                ((address, block.seq), class)
            })
            .collect();
        self.classes = HashMap::new();
        self.scan = Some(scan);
    }
}

/// The class a complete scan gave a block: its BLOCK_CLASSES entry, else reachable; but an
/// inherited block a forked child's scan left to its parent's trace (see
/// [`Reachability::inherited_unjudged`]) has none unless the scan wrote one.
pub(super) fn class_given(
    classes: &HashMap<u64, LeakClass>,
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
