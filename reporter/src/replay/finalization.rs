//! The scan made when CPython's finalisation began, as replay reads it: its classes, its
//! holders with their retention paths, and the object types, gathered between the FINALIZING
//! record and that scan's REACHABILITY, then closed against the blocks live at that point.
//!
//! Must never read a file or decide a block's class at exit: [`Trace`](super::Trace) applies
//! what this gathers once the whole trace is read.

use std::collections::HashMap;

use libleak_format::live::{AddressMap as FastMap, AddressSet};
use libleak_format::{Holder, LeakClass, Reachability, ScanOutcome};

use super::{Held, Holding, ReachedFrom};
use crate::live::ExitBlock;

/// The scan made when CPython's finalisation began, as replay meets it: the FINALIZING
/// record opens it, its BLOCK_CLASSES gather, and its REACHABILITY closes it against the
/// blocks live at that point of the replay.
#[derive(Default)]
pub(super) struct FinalizationScan {
    /// The thread finalising the interpreter.
    pub(super) thread_id: u32,
    pub(super) classes: FastMap<u64, LeakClass>,
    pub(super) scan: Option<Reachability>,
    /// (address, seq) of every block live when the scan was made, with its class (`None`
    /// when the scan did not complete).
    pub(super) live_then: FastMap<(u64, u64), Option<LeakClass>>,
    /// (address, seq) of the blocks a Python name (a module global, a class attribute) held
    /// when the scan was made.
    pub(super) named_then: AddressSet<(u64, u64)>,
    pub(super) holder_names: Vec<Holder>,
    /// Address → (holder id, object type id, the address it was reached from or 0, step id).
    pub(super) block_holders: FastMap<u64, (u32, u32, u64, u32)>,
    pub(super) object_types: Vec<String>,
    pub(super) step_names: Vec<String>,
    pub(super) holding: Option<Holding>,
}

impl FinalizationScan {
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
            self.named_then.clear();
            // One look-up per block, a hash table per sum: a stack's blocks can have thousands
            // of holders (the items of one large dict each held by the module).
            let mut held_by: FastMap<(u64, u32), (Held, u64)> = FastMap::default();
            let mut types_of: FastMap<(u64, u32), (u64, u64)> = FastMap::default();
            for &(address, block) in &live {
                let Some(&(holder, object_type, ..)) = self.block_holders.get(&address) else {
                    continue;
                };
                if named(holder) {
                    self.named_then.insert((address, block.seq));
                }
                let (held, newest_seq) = held_by.entry((block.stack, holder)).or_insert((
                    Held {
                        holder,
                        bytes: 0,
                        blocks: 0,
                        newest: address,
                    },
                    block.seq,
                ));
                held.bytes += block.size;
                held.blocks += 1;
                // The newest block's path is shown.
                if block.seq > *newest_seq {
                    (held.newest, *newest_seq) = (address, block.seq);
                }
                if object_type != 0 {
                    let sums = types_of.entry((block.stack, object_type)).or_default();
                    sums.0 += block.size;
                    sums.1 += 1;
                }
            }
            let mut by_stack: HashMap<u64, Vec<Held>> = HashMap::new();
            for ((stack, _), (held, _)) in held_by {
                by_stack.entry(stack).or_default().push(held);
            }
            let mut types_by_stack: HashMap<u64, Vec<(u32, u64, u64)>> = HashMap::new();
            for ((stack, object_type), (bytes, blocks)) in types_of {
                types_by_stack
                    .entry(stack)
                    .or_default()
                    .push((object_type, bytes, blocks));
            }
            for held in by_stack.values_mut() {
                held.sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.holder.cmp(&b.holder)));
            }
            for types in types_by_stack.values_mut() {
                types.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
            }
            self.holding = (!self.holder_names.is_empty()).then(|| Holding {
                names: std::mem::take(&mut self.holder_names),
                by_stack,
                types: std::mem::take(&mut self.object_types),
                steps: std::mem::take(&mut self.step_names),
                types_by_stack,
                reached: ReachedFrom::new(
                    std::mem::take(&mut self.block_holders)
                        .into_iter()
                        .map(|(address, (_, object_type, via, step))| (address, via, object_type, step))
                        .collect(),
                ),
            });
        }
        self.block_holders = FastMap::default();
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
