//! The structure of lost memory, after the flood from the roots: which lost blocks are leaks
//! and which leaked root keeps each one, and which are only Python garbage awaiting
//! collection.
//!
//! A lost block is a *source* of a leak when nothing explains why it is still allocated: a
//! Python object whose reference count exceeds the pointers to it found in lost memory (a
//! leaked reference), or a block holding no object that no other lost block points to (a C
//! allocation nobody will free). Everything a source reaches through lost memory is part of
//! its structure. What no source reaches is either the garbage the collector would free (it
//! holds Python objects, all of whose references come from lost memory: a reference cycle
//! dropped by its last owner) or a cycle of C blocks, which is a leak like any other. Garbage
//! that outlived the collections of CPython's finalisation is no garbage the collector can
//! free when it holds an object the collector does not track: a leak, led by its oldest such
//! object.
//!
//! A block the flood reached can still belong to lost memory: when a stale copy of its address
//! (in a free list's spare slots, a dead stack slot) is all that reached it. A reached Python
//! object that lost memory points to, whose reference count those pointers account for in
//! full, is *adopted* by the structure (or the garbage) pointing to it, and so is a reached
//! block holding no object every pointer to which the flood read comes from adopted blocks;
//! adoption goes on through what each adopted block points to.
//!
//! Reads lost memory once, and adopted blocks once, through the [`Marker`]; must never write
//! to the program's memory.

use std::cell::Cell;
use std::collections::HashMap;

use libleak_format::{BlockClass, LeakClass, LostBlock};

use super::blocks::Pointer;
use super::marker::{Marker, POSSIBLY, REACHABLE, UNREACHED};

/// No object in the block (see [`Facts::object_starts`]).
pub(super) const NO_OBJECT: u8 = u8::MAX;
const NONE: u32 = u32::MAX;

/// What the scan learnt of the Python objects in the blocks, by block.
pub(super) struct Facts<'a> {
    /// Where the object starts in each block ([`NO_OBJECT`]: none recognised).
    pub(super) object_starts: &'a [u8],
    /// The type id of each block's object (0: none).
    pub(super) object_types: &'a [u32],
    /// The pointers to each block's start the flood from the roots read.
    pub(super) start_pointers: &'a [Cell<u32>],
    /// Blocks read as roots without being judged (empty: none); never adopted.
    pub(super) stand_in: &'a [bool],
    /// Per block, the pointers to its object's start read in dead objects (see
    /// [`Blocks::read_dead`]; empty: none): recorded as the references of a dead object.
    ///
    /// [`Blocks::read_dead`]: super::blocks::Blocks::read_dead
    pub(super) dead_links: &'a [u32],
    /// Blocks that were garbage when finalisation began and outlived its collections, oldest
    /// first.
    pub(super) survived_collection: &'a [usize],
    /// The allocation order of the block at an address (its sequence number; `u64::MAX` when
    /// unknown): structures are claimed oldest first.
    pub(super) age: &'a dyn Fn(u64) -> u64,
}

/// For an object whose count is 0 (dead, or not read): the pointers to it read in dead objects,
/// which link a free list through its members.
fn dead_links(facts: &Facts, index: usize) -> u64 {
    u64::from(facts.dead_links.get(index).copied().unwrap_or(0))
}

/// Who adopted a reached block: the garbage, or the structure of this member.
const GARBAGE: u32 = u32::MAX - 1;

/// The classes of the blocks that are not reachable, and what is known of each.
pub(super) struct Lost {
    pub(super) classes: Vec<BlockClass>,
    pub(super) blocks: Vec<LostBlock>,
}

/// Classifies the blocks the flood from the roots left unreached (`state`) or reached only
/// through interior pointers; `None` when the deadline passed.
pub(super) fn structures(marker: &mut Marker<'_>, state: &[u8], facts: &Facts<'_>) -> Option<Lost> {
    let blocks = marker.blocks;
    let count = blocks.addresses.len();
    // The blocks concerned, in address order, and each block's position among them.
    let mut position = vec![NONE; count];
    let mut members: Vec<usize> = Vec::new();
    for index in 0..count {
        if state[index] == UNREACHED || state[index] == POSSIBLY {
            position[index] = members.len() as u32;
            members.push(index);
        }
    }
    let lost = |k: usize| state[members[k]] == UNREACHED;

    // The pointers these blocks hold to each other. A possibly-lost block is taken in by a
    // pointer to its start only: something outside points into its middle, but a lost block
    // that points to its start owns it (and what it owns). No pointer leads from a
    // possibly-lost block to a lost one: the flood from the roots went through it.
    let n = members.len();
    let mut edge_starts: Vec<usize> = Vec::with_capacity(n + 1);
    let mut edges: Vec<u32> = Vec::new();
    let mut references = vec![0u64; n];
    let mut pointed_to = vec![false; n];
    // Pointed to at its start by another member.
    let mut start_pointed = vec![false; n];
    // (member, reached block) for each pointer from a member to a reached block's start.
    let mut to_reached: Vec<(u32, usize)> = Vec::new();
    for (k, &index) in members.iter().enumerate() {
        edge_starts.push(edges.len());
        if !marker.tick() {
            return None;
        }
        marker.prefetch(index, members[k + 1..].iter().copied(), |_| true);
        marker.block_words(index, &mut |_, word| {
            let Some((target, pointer)) = blocks.find(word) else {
                return;
            };
            let t = position[target];
            if t == NONE {
                if state[target] == REACHABLE && pointer == Pointer::Start {
                    to_reached.push((k as u32, target));
                }
                return;
            }
            if state[target] == POSSIBLY && pointer != Pointer::Start {
                return;
            }
            if pointer == Pointer::Start {
                references[t as usize] += 1;
            }
            if target != index {
                pointed_to[t as usize] = true;
                start_pointed[t as usize] |= pointer == Pointer::Start;
            }
            edges.push(t);
        });
    }
    edge_starts.push(edges.len());
    let targets = |k: usize| &edges[edge_starts[k]..edge_starts[k + 1]];

    // Reference counts, of possibly-lost objects too: CPython's references point to an
    // object's start, so a pointer into its middle accounts for none of them.
    let refcounts: Vec<u64> = members
        .iter()
        .map(|&index| reference_count(marker, facts, index).unwrap_or(0))
        .collect();
    // An object whose count could not be read is judged as a C block.
    let counted = |k: usize| refcounts[k] != 0;
    // It holds a reference nobody gave back.
    let leaks_a_reference = |k: usize| counted(k) && refcounts[k] > references[k];
    let is_source = |k: usize| {
        if counted(k) {
            leaks_a_reference(k)
        } else {
            !pointed_to[k]
        }
    };

    // Structures: from the sources nothing points to first, so that a source inside
    // another's structure stays part of it.
    let mut root = vec![NONE; n];
    let mut work: Vec<u32> = Vec::new();
    let claim = |from: usize, root: &mut Vec<u32>, work: &mut Vec<u32>| {
        if root[from] != NONE {
            return;
        }
        root[from] = from as u32;
        work.push(from as u32);
        while let Some(k) = work.pop() {
            for &t in targets(k as usize) {
                if root[t as usize] == NONE {
                    root[t as usize] = from as u32;
                    work.push(t);
                }
            }
        }
    };
    // Oldest first, where structures overlap or a cycle has no source: the same program makes
    // the same rows run after run, where the heap's addresses (the order before) vary.
    let mut by_age: Vec<usize> = (0..n).collect();
    by_age.sort_by_cached_key(|&k| ((facts.age)(blocks.addresses[members[k]]), k));
    let sources: Vec<usize> = by_age.iter().copied().filter(|&k| is_source(k)).collect();
    for &k in sources.iter().filter(|&&k| !pointed_to[k]) {
        claim(k, &mut root, &mut work);
    }
    for &k in &sources {
        claim(k, &mut root, &mut work);
    }
    // Garbage the collector could not free: it was garbage when finalisation began, the
    // collections finalisation runs left it allocated, and an object the collector does not
    // track (no GC header) closes a cycle of it: a reference the collector cannot see holds
    // the cycle. A leak, led by its oldest such object. (Garbage can outlive finalisation for
    // other reasons: frozen by `gc.freeze()`, or no collection ran because a daemon thread
    // stopped inside one; an untracked object in it that only points out, a bytearray to its
    // buffer, closes no cycle.)
    let mut seen = vec![false; n];
    for &index in facts.survived_collection {
        let k = position[index] as usize;
        if position[index] != NONE
            && root[k] == NONE
            && counted(k)
            && blocks.object_offsets[index] == 0
            && on_a_cycle(k, &targets, &mut seen)
        {
            claim(k, &mut root, &mut work);
        }
    }
    // Garbage: what the unclaimed Python objects reach among the unclaimed blocks.
    let mut garbage = vec![false; n];
    for k in (0..n).filter(|&k| root[k] == NONE && counted(k)) {
        if garbage[k] {
            continue;
        }
        garbage[k] = true;
        work.push(k as u32);
        while let Some(at) = work.pop() {
            for &t in targets(at as usize) {
                if root[t as usize] == NONE && !garbage[t as usize] {
                    garbage[t as usize] = true;
                    work.push(t);
                }
            }
        }
    }
    // Cycles of C blocks: each led by a block the others point into but not to the start of
    // (a C++ object whose `std::map` nodes point back to the map's header inside it), else by
    // its oldest block.
    for led_by_its_owner in [true, false] {
        for &k in &by_age {
            if lost(k) && root[k] == NONE && !garbage[k] && (!led_by_its_owner || !start_pointed[k]) {
                claim(k, &mut root, &mut work);
            }
        }
    }

    // Adoption of reached blocks that lost memory owns in full (see the module's doc).
    let owner_of = |k: usize| match (garbage[k], root[k]) {
        (true, _) => GARBAGE,
        (false, NONE) => k as u32,
        (false, r) => r,
    };
    // Per reached block: pointers to it from members, and from adopted blocks.
    let mut pointers_in: HashMap<usize, (u32, u32)> = HashMap::new();
    let mut adopted: HashMap<usize, (u32, u64)> = HashMap::new();
    let mut adoption_order: Vec<usize> = Vec::new();
    let mut queue: Vec<(u32, usize, bool)> = to_reached
        .iter()
        .map(|&(k, target)| (owner_of(k as usize), target, false))
        .collect();
    let mut children: Vec<usize> = Vec::new();
    while let Some((owner, target, from_adopted)) = queue.pop() {
        let counts = pointers_in.entry(target).or_insert((0, 0));
        if from_adopted {
            counts.1 += 1;
        } else {
            counts.0 += 1;
        }
        let (from_members, from_adopted_blocks) = *counts;
        if adopted.contains_key(&target) || facts.stand_in.get(target) == Some(&true) {
            continue;
        }
        let refcount = reference_count(marker, facts, target);
        let owned = match refcount {
            Some(refcount) => refcount <= u64::from(from_members + from_adopted_blocks),
            None => {
                facts.object_starts.get(target).copied().unwrap_or(NO_OBJECT) == NO_OBJECT
                    && facts.start_pointers[target].get() <= from_adopted_blocks
            }
        };
        if !owned {
            continue;
        }
        if !marker.tick() {
            return None;
        }
        adopted.insert(target, (owner, refcount.unwrap_or(0)));
        adoption_order.push(target);
        children.clear();
        marker.block_words(target, &mut |_, word| {
            if let Some((child, Pointer::Start)) = blocks.find(word) {
                if state[child] == REACHABLE {
                    children.push(child);
                }
            }
        });
        queue.extend(children.iter().map(|&child| (owner, child, true)));
    }

    let mut classes = Vec::with_capacity(n + adopted.len());
    let mut lost_blocks = Vec::with_capacity(n + adopted.len());
    for &index in &adoption_order {
        let (owner, refcount) = adopted[&index];
        let address = blocks.addresses[index];
        let (class, root_address) = match owner {
            GARBAGE => (LeakClass::Collectable, address),
            k => (LeakClass::IndirectlyLost, blocks.addresses[members[k as usize]]),
        };
        classes.push(BlockClass { address, class });
        let (from_members, from_adopted_blocks) = pointers_in.get(&index).copied().unwrap_or_default();
        lost_blocks.push(LostBlock {
            address,
            root: root_address,
            object_type: facts.object_types.get(index).copied().unwrap_or(0),
            refcount,
            references: if refcount != 0 {
                u64::from(from_members + from_adopted_blocks)
            } else {
                dead_links(facts, index)
            },
        });
    }
    for (k, &index) in members.iter().enumerate() {
        let address = blocks.addresses[index];
        // A pointer into an object's middle is no reference: a structure whose root holds a
        // reference nobody gave back leaks, whatever points into its blocks.
        let leaked_root = root[k] != NONE && leaks_a_reference(root[k] as usize);
        let class = if garbage[k] {
            LeakClass::Collectable
        } else if !lost(k) && !leaked_root {
            LeakClass::PossiblyLost
        } else if root[k] == k as u32 {
            LeakClass::DefinitelyLost
        } else {
            LeakClass::IndirectlyLost
        };
        classes.push(BlockClass { address, class });
        let root_address = match root[k] {
            NONE => address,
            r => blocks.addresses[members[r as usize]],
        };
        lost_blocks.push(LostBlock {
            address,
            root: root_address,
            object_type: facts.object_types.get(index).copied().unwrap_or(0),
            refcount: refcounts[k],
            references: if counted(k) {
                references[k]
            } else {
                dead_links(facts, index)
            },
        });
    }
    // Records are read in address order.
    classes.sort_unstable_by_key(|c| c.address);
    lost_blocks.sort_unstable_by_key(|b| b.address);
    Some(Lost {
        classes,
        blocks: lost_blocks,
    })
}

/// Whether member `k` reaches itself through the pointers between members (`targets`).
/// `seen`: one flag per member, all clear, and left clear.
fn on_a_cycle<'t>(k: usize, targets: &impl Fn(usize) -> &'t [u32], seen: &mut [bool]) -> bool {
    let mut visited: Vec<usize> = Vec::new();
    let mut work: Vec<usize> = targets(k).iter().map(|&t| t as usize).collect();
    let mut found = false;
    while let Some(at) = work.pop() {
        if at == k {
            found = true;
            break;
        }
        if !std::mem::replace(&mut seen[at], true) {
            visited.push(at);
            work.extend(targets(at).iter().map(|&t| t as usize));
        }
    }
    for at in visited {
        seen[at] = false;
    }
    found
}

/// The reference count of the Python object block `index` holds; `None` when it holds no
/// object the scan recognised, or the count is implausible (a recycled object's leftovers).
fn reference_count(marker: &mut Marker<'_>, facts: &Facts<'_>, index: usize) -> Option<u64> {
    let offset = facts.object_starts.get(index).copied().unwrap_or(NO_OBJECT);
    if offset == NO_OBJECT {
        return None;
    }
    marker
        .memory
        .word(marker.blocks.addresses[index] + u64::from(offset))
        .filter(|&count| count > 0 && count < 1 << 40)
}
