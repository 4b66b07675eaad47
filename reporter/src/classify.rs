//! Stage 2, classify: the blocks live at exit, counted by allocation stack and by the class
//! the exit-time scan gave them (none without a complete scan).
//!
//! Must never look at symbols or modules: it counts what replay found, and the judgement of
//! who owns a stack comes later (attribute).

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasherDefault;

use libleak_format::live::AddressHasher;

use libleak_format::{AllocKind, LeakClass};

use crate::live::ExitBlock;
use crate::model::{Class, References, Tally};
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
    /// Part of the structure of a leaked block of another stack (this one): these blocks
    /// leak because that one does, and are judged and listed with it.
    pub part_of: Option<u64>,
    /// The Python type of the objects these blocks hold, as an index into the trace's
    /// object types (lost blocks only).
    pub object_type: Option<u32>,
    /// The references these blocks' objects hold and the scan could not find.
    pub references: References,
    /// Lost blocks holding Python objects whose reference count is 0 that another dead object
    /// points to: members of a free list linked through them, which a deallocator keeps for
    /// reuse (see [`TallyKey::dead_objects`]).
    pub dead_objects: bool,
    /// The structure's root is a Python object native code keeps alive (see
    /// [`TallyKey::native_reference`]).
    pub native_reference: bool,
    pub tally: Tally,
    /// The allocator entry point of the first of these blocks replay listed.
    pub allocator: AllocKind,
    /// Lost, and made by an extension's module init, which the import machinery runs once
    /// (its stack's, or its structure's root's, innermost Python frame is importlib's): one-
    /// time set-up of an imported module that nothing refers to, such as the type specs
    /// pyo3 loses once per class. Code a module runs at import (a Python loop calling a C
    /// function that leaks) is not.
    pub import_once: bool,
}

impl StackTally {
    /// Blocks a fork child inherited and never judged: it ended before its exit scan. Its
    /// parent's report judges them; they are counted apart and never listed.
    pub fn unjudged_inheritance(&self) -> bool {
        self.inherited && self.class.is_none()
    }

    /// The key these blocks were counted under.
    pub fn key(&self) -> TallyKey {
        TallyKey {
            stack: self.stack,
            class: self.class,
            during_finalization: self.during_finalization,
            inherited: self.inherited,
            part_of: self.part_of,
            object_type: self.object_type,
            dead_objects: self.dead_objects,
            native_reference: self.native_reference,
        }
    }

    /// The stack whose owner answers for these blocks: their structure's root's, else their
    /// own.
    pub fn judged_stack(&self) -> u64 {
        self.part_of.unwrap_or(self.stack)
    }
}

/// What makes a count: each block is counted under exactly one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TallyKey {
    pub stack: u64,
    pub class: Option<LeakClass>,
    pub during_finalization: bool,
    pub inherited: bool,
    pub part_of: Option<u64>,
    pub object_type: Option<u32>,
    /// The blocks hold dead objects: a free list's, not leaked by anyone (the scan does not
    /// read the dead, whose words are stale, so it cannot follow the list past its head).
    pub dead_objects: bool,
    /// The blocks' structure's root (they themselves, or the root they are part of) is a
    /// Python object made outside any import that native code keeps alive: by a reference
    /// it took and never gave back (its count exceeds the references found), or by one the
    /// garbage collector cannot see (garbage that outlived finalisation's collections: a root
    /// definitely or possibly lost with every reference accounted for). Python code made it,
    /// but an extension lost it.
    pub native_reference: bool,
}

/// Finds each live block's [`TallyKey`].
pub struct Keys<'a> {
    trace: &'a Trace,
    fork_seq: Option<u64>,
    /// The stack of every lost block some other block's structure hangs from, by address.
    root_stacks: HashMap<u64, u64, BuildHasherDefault<AddressHasher>>,
    /// The roots (by address) that are objects native code keeps alive.
    natively_kept_roots: HashSet<u64, BuildHasherDefault<AddressHasher>>,
}

impl<'a> Keys<'a> {
    pub fn new(trace: &'a Trace) -> Keys<'a> {
        let mut root_stacks: HashMap<u64, u64, BuildHasherDefault<AddressHasher>> = HashMap::default();
        let mut natively_kept_roots: HashSet<u64, BuildHasherDefault<AddressHasher>> = HashSet::default();
        if !trace.lost.is_empty() {
            for facts in trace.lost.values() {
                root_stacks.insert(facts.root, 0);
            }
            for block in &trace.live {
                if let Some(stack) = root_stacks.get_mut(&block.address) {
                    if block.class.is_some_and(|class| Class::of(Some(class)).is_leak()) {
                        *stack = block.stack;
                    }
                }
            }
            root_stacks.retain(|_, stack| *stack != 0);
            let mut made_in_import: HashMap<u64, bool, BuildHasherDefault<AddressHasher>> = HashMap::default();
            for block in &trace.live {
                let Some(facts) = trace
                    .lost
                    .get(&block.address)
                    .filter(|facts| facts.root == block.address)
                else {
                    continue;
                };
                // Objects the thread finalising the interpreter made: a daemon thread ended by
                // the finalisation leaves the objects its C code held in locals unreachable
                // with their references counted.
                let by_finalizing_thread = trace.finalizing_thread.is_none_or(|thread| block.thread_id == thread);
                let type_name = facts
                    .object_type
                    .and_then(|id| trace.object_types.get(id as usize))
                    .map(String::as_str);
                // C code keeps a string's or bytes' characters by a pointer into the object
                // (numpy's docstrings): a reference it keeps, not one it lost.
                let kept_by_characters = matches!(type_name, Some("str" | "bytes"));
                let kept = facts.object_type.is_some()
                    && facts.refcount > 0
                    && by_finalizing_thread
                    && ((facts.leaked_references() > 0 && !kept_by_characters)
                        || (facts.leaked_references() == 0
                            && matches!(block.class, Some(LeakClass::DefinitelyLost | LeakClass::PossiblyLost))));
                if kept
                    && !*made_in_import
                        .entry(block.stack)
                        .or_insert_with(|| trace.allocated_during_import(block.stack))
                {
                    natively_kept_roots.insert(block.address);
                }
            }
        }
        Keys {
            trace,
            // Counted apart so that a row can tell whether all its blocks came from the parent.
            fork_seq: trace.header.fork.as_ref().map(|fork| fork.fork_seq),
            root_stacks,
            natively_kept_roots,
        }
    }

    pub fn of(&self, block: &ExitBlock) -> TallyKey {
        let facts = self.trace.lost.get(&block.address);
        let part_of = facts
            .filter(|facts| facts.root != block.address)
            .and_then(|facts| self.root_stacks.get(&facts.root).copied());
        TallyKey {
            stack: block.stack,
            class: block.class,
            during_finalization: block.during_finalization,
            inherited: self.fork_seq.is_some_and(|fork_seq| block.seq < fork_seq),
            part_of,
            object_type: facts.and_then(|facts| facts.object_type),
            // Linked from another dead object: a free list's member. A dead object nothing
            // points to was lost by its deallocator (one that forgets `tp_free`): a leak.
            dead_objects: facts
                .is_some_and(|facts| facts.object_type.is_some() && facts.refcount == 0 && facts.references > 0),
            native_reference: facts.is_some_and(|facts| self.natively_kept_roots.contains(&facts.root)),
        }
    }
}

/// The live blocks by [`TallyKey`], ordered by key.
pub fn tally(trace: &Trace) -> Vec<StackTally> {
    let keys = Keys::new(trace);
    // A fast hash: millions of blocks in a fork child of a large parent; sorted below. The
    // table holds indices into `groups`: a real program's 150k blocks make 60k counts, and
    // growing a table of the counts themselves moved them at every doubling.
    let mut index_of: HashMap<TallyKey, usize, BuildHasherDefault<AddressHasher>> = HashMap::default();
    let mut groups: Vec<StackTally> = Vec::new();
    for block in &trace.live {
        let key = keys.of(block);
        let index = *index_of.entry(key).or_insert_with(|| {
            groups.push(StackTally {
                stack: key.stack,
                class: key.class,
                during_finalization: key.during_finalization,
                inherited: key.inherited,
                part_of: key.part_of,
                object_type: key.object_type,
                references: References::default(),
                dead_objects: key.dead_objects,
                native_reference: key.native_reference,
                tally: Tally::default(),
                allocator: block.kind,
                import_once: false,
            });
            groups.len() - 1
        });
        let group = &mut groups[index];
        group.tally.add(1, block.size);
        if let Some(facts) = trace.lost.get(&block.address).filter(|f| f.leaked_references() > 0) {
            group.references.add(References {
                objects: 1,
                refcount: facts.refcount,
                found: facts.references,
            });
        }
    }
    drop(index_of);
    mark_import_once(trace, &mut groups);
    // Keys are distinct: the order is total.
    groups.sort_unstable_by_key(|group| {
        (
            group.stack,
            group.class.map(|c| c as u8),
            group.during_finalization,
            group.inherited,
            group.part_of,
            group.object_type,
            group.dead_objects,
            group.native_reference,
        )
    });
    groups
}

/// Sets [`StackTally::import_once`] on the lost counts whose judged stack an extension's
/// module init made.
fn mark_import_once(trace: &Trace, groups: &mut [StackTally]) {
    let mut by_init: HashMap<u64, bool, BuildHasherDefault<AddressHasher>> = HashMap::default();
    for tally in groups.iter_mut() {
        if !tally.class.is_some_and(|class| Class::of(Some(class)).is_leak()) {
            continue;
        }
        let judged = tally.judged_stack();
        tally.import_once = *by_init
            .entry(judged)
            .or_insert_with(|| trace.allocated_by_module_init(judged));
    }
}

/// The distinct stacks of `tallies` and of the structures they are part of, in order.
pub fn stacks<'a>(tallies: impl IntoIterator<Item = &'a StackTally>) -> Vec<u64> {
    let mut stacks: Vec<u64> = Vec::new();
    for tally in tallies {
        stacks.push(tally.stack);
        stacks.extend(tally.part_of);
    }
    stacks.sort_unstable();
    stacks.dedup();
    stacks
}
