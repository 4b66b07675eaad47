//! Stage 2, classify: the blocks live at exit, counted by allocation stack and by the class
//! the exit-time scan gave them (none without a complete scan).
//!
//! Must never look at symbols or modules: it counts what replay found, and the judgement of
//! who owns a stack comes later (attribute).

use std::collections::HashMap;

use libleak_format::{AllocKind, LeakClass};

use crate::model::Tally;
use crate::replay::Trace;

/// The live blocks of one stack and one class.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StackTally {
    pub stack: u64,
    pub class: Option<LeakClass>,
    /// Allocated after CPython's finalisation began (see [`ExitBlock`]).
    ///
    /// [`ExitBlock`]: crate::live::ExitBlock
    pub during_finalization: bool,
    pub tally: Tally,
    /// The allocator entry point of the first of these blocks replay listed.
    pub allocator: AllocKind,
}

/// The live blocks by (stack, class, during finalisation), ordered by stack id and then
/// class.
pub fn tally(trace: &Trace) -> Vec<StackTally> {
    let mut groups: HashMap<(u64, Option<LeakClass>, bool), StackTally> = HashMap::new();
    for block in &trace.live {
        groups
            .entry((block.stack, block.class, block.during_finalization))
            .or_insert_with(|| StackTally {
                stack: block.stack,
                class: block.class,
                during_finalization: block.during_finalization,
                tally: Tally::default(),
                allocator: block.kind,
            })
            .tally
            .add(1, block.size);
    }
    let mut groups: Vec<StackTally> = groups.into_values().collect();
    groups.sort_by_key(|group| (group.stack, group.class.map(|c| c as u8), group.during_finalization));
    groups
}

/// The distinct stacks of `tallies`, in order.
pub fn stacks(tallies: &[StackTally]) -> Vec<u64> {
    let mut stacks: Vec<u64> = tallies.iter().map(|t| t.stack).collect();
    stacks.dedup();
    stacks
}
