//! Stage 2, classify: the blocks live at exit, counted by allocation stack and by the class
//! the exit-time scan gave them (none without a complete scan).
//!
//! Must never look at symbols or modules: it counts what replay found, and the judgement of
//! who owns a stack comes later (attribute).

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use libleak_format::live::AddressHasher;

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
    /// Inherited by a fork child: allocated in the parent before the fork (`seq` below the
    /// FORK record's `fork_seq`), so the parent's trace may hold the same block.
    pub inherited: bool,
    pub tally: Tally,
    /// The allocator entry point of the first of these blocks replay listed.
    pub allocator: AllocKind,
}

impl StackTally {
    /// Blocks a fork child inherited and never judged: it ended before its exit scan. Its
    /// parent's report judges them; they are counted apart and never listed.
    pub fn unjudged_inheritance(&self) -> bool {
        self.inherited && self.class.is_none()
    }
}

/// (stack, class, during finalisation, inherited).
type TallyKey = (u64, Option<LeakClass>, bool, bool);

/// The live blocks by (stack, class, during finalisation, inherited), ordered by stack id
/// and then class.
pub fn tally(trace: &Trace) -> Vec<StackTally> {
    // Counted apart so that a row can tell whether all its blocks came from the parent.
    let fork_seq = trace.header.fork.as_ref().map(|fork| fork.fork_seq);
    // A fast hash: millions of blocks in a fork child of a large parent; sorted below.
    let mut groups: HashMap<TallyKey, StackTally, BuildHasherDefault<AddressHasher>> = HashMap::default();
    for block in &trace.live {
        let inherited = fork_seq.is_some_and(|fork_seq| block.seq < fork_seq);
        groups
            .entry((block.stack, block.class, block.during_finalization, inherited))
            .or_insert_with(|| StackTally {
                stack: block.stack,
                class: block.class,
                during_finalization: block.during_finalization,
                inherited,
                tally: Tally::default(),
                allocator: block.kind,
            })
            .tally
            .add(1, block.size);
    }
    let mut groups: Vec<StackTally> = groups.into_values().collect();
    groups.sort_by_key(|group| {
        (
            group.stack,
            group.class.map(|c| c as u8),
            group.during_finalization,
            group.inherited,
        )
    });
    groups
}

/// The distinct stacks of `tallies` (in the order [`tally`] gives), in order.
pub fn stacks<'a>(tallies: impl IntoIterator<Item = &'a StackTally>) -> Vec<u64> {
    let mut stacks: Vec<u64> = tallies.into_iter().map(|t| t.stack).collect();
    stacks.dedup();
    stacks
}
