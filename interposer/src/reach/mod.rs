//! The exit-time reachability scan: after the program's last code ran (for Python, after
//! interpreter finalisation), mark conservatively from the roots (see [`roots`]) through the
//! blocks live at exit, and classify each block as memcheck and LeakSanitizer do:
//! reachable (a pointer to its start from a root or a reachable block), possibly lost (only
//! pointers into its middle), definitely lost (nothing outside lost memory points to it) or
//! indirectly lost (reachable only from lost blocks).
//!
//! Python objects tracked by the garbage collector are recognised (see
//! [`crate::python::gc`]): their GC-header links are not references, and a pointer to the
//! object (past the header) is a pointer to the block's start.
//!
//! Runs on the collector thread while other threads may still run: every read goes through
//! [`MemoryReader`](crate::sys::memory::MemoryReader), which cannot fault. Bounded by a deadline; past it, nothing is
//! classified and the outcome says so. Must never write to the program's memory.

mod blocks;
mod index;
mod input;
mod marker;
mod paths;
pub mod roots;
mod sort;
mod stale;
mod stand_in;
mod structure;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use libleak_format::{BlockClass, BlockHolder, Holder, LostBlock, Reachability, ScanOutcome};

use crate::python::frame_locals;
use crate::segments::SegmentIndex;
use blocks::{native_layout, next_chunk, Blocks, Pointer};
pub use input::ScanInput;
use marker::{Marker, POSSIBLY, REACHABLE, UNREACHED};
use paths::{name_steps, PathFacts, Steps};
pub use roots::ExitingThread;
use stale::StaleSlots;
pub use stale::StaleWords;
pub use stand_in::WrittenInheritance;
use structure::{Facts, NO_OBJECT};

/// The bytes of a block the recognition of Python objects reads (the header of a managed
/// dict's values is the farthest).
const OBJECT_HEAD: u64 = 512;
/// A next-chunk offset not read yet.
const NOT_READ: u64 = u64::MAX - 1;

/// The two floods of the marking: from the named roots, then from every other root.
#[derive(Clone, Copy)]
enum Phase {
    Named,
    Anonymous,
}

pub struct ScanResult {
    pub classes: Vec<BlockClass>,
    pub summary: Reachability,
    /// Who holds each reachable block, when holders were asked for.
    pub holders: Option<Holders>,
    /// What is known of each block that is not reachable, by address.
    pub lost: Vec<LostBlock>,
    /// The names of the Python types of the objects recognised: type `id` is at index `id - 1`.
    pub types: Vec<String>,
}

/// The holder of every reachable block that has one: the nearest named root, breadth first;
/// and the Python type of the object each of those blocks holds.
#[derive(Default, Debug)]
pub struct Holders {
    /// Holder `id` is at index `id - 1`.
    pub names: Vec<Holder>,
    /// By address.
    pub blocks: Vec<BlockHolder>,
    /// The names of the steps of retention paths: step `id` is at index `id - 1`.
    pub steps: Vec<String>,
}

pub fn scan(input: ScanInput<'_>) -> ScanResult {
    let started = Instant::now();
    let mut memory = roots::reader(input.pages_shared, input.exiting.as_ref().map(|thread| thread.tid));
    let (judged_and_stand_ins, stand_in_roots) =
        stand_in::with_needed_stand_ins(input.blocks, input.inheritance, &mut memory);
    let mut blocks = Blocks::new(judged_and_stand_ins);
    let stand_in = blocks.marked(&stand_in_roots);
    let survived_collection = blocks.indices_of(&input.survived_collection);
    let mut summary = Reachability {
        blocks: blocks.addresses.len() as u64,
        inherited_scanned: stand_in_roots.len() as u64,
        ..Reachability::default()
    };

    // Where each block's next chunk starts; the recognition of Python objects reads the same
    // memory and finds them on its way.
    if input.python.is_none() {
        blocks.read_native_facts(&mut memory);
    }
    let mut immortal = Vec::new();
    let mut named_roots: Vec<(u64, String)> = Vec::new();
    // Per block, the id of its object's type (0: none), and where the object starts
    // (`NO_OBJECT`: none); empty when no Python objects are looked for.
    let mut object_types: Vec<u32> = Vec::new();
    let mut object_starts: Vec<u8> = Vec::new();
    let mut type_ids: HashMap<u64, u32> = HashMap::new();
    let mut type_names: Vec<String> = Vec::new();
    // The type of type id `id` is at index `id - 1`.
    let mut type_addresses: Vec<u64> = Vec::new();
    let mut dead_links: Vec<u32> = Vec::new();
    if let Some(mut python) = input.python {
        python.fit_type_cache(blocks.addresses.len());
        let count = blocks.addresses.len();
        let mut module_objects = Vec::new();
        object_types = vec![0; count];
        object_starts = vec![NO_OBJECT; count];
        // Found first and applied after: while looking, every block counts as holding no
        // object (`is_address` asks `find`).
        let mut object_offsets = vec![0u8; count];
        let mut reference_offsets = vec![0u8; count];
        let mut list_items: Vec<(u64, u64)> = Vec::new();
        let mut scan_limited: Vec<(usize, u64)> = Vec::new();
        let mut dead_objects: Vec<usize> = Vec::new();
        let mut next_chunks = std::mem::take(&mut blocks.next_chunks);
        next_chunks.fill(NOT_READ);
        {
            let blocks = &blocks;
            let modules = SegmentIndex::new(input.modules);
            let next_chunks = Cell::from_mut(next_chunks.as_mut_slice()).as_slice_of_cells();
            let memory = RefCell::new(&mut memory);
            // A block's next chunk, read in passing: while this block is being looked at,
            // or when a word points into a block not reached yet.
            let next_chunk_of = |index: usize| {
                let known = next_chunks[index].get();
                if known != NOT_READ {
                    return known;
                }
                let Ok(mut memory) = memory.try_borrow_mut() else {
                    return u64::MAX;
                };
                let offset = next_chunk(&mut memory, blocks.addresses[index], blocks.sizes[index]);
                next_chunks[index].set(offset);
                offset
            };
            // A word that names a live block or a loaded module's memory is an address, never
            // a reference count (non-PIE interpreters put both below any bound on counts).
            // As `blocks.find(word).is_some()` when no block holds an object yet.
            let is_block = |word: u64| {
                if word < blocks.lowest || word >= blocks.highest_end {
                    return false;
                }
                blocks
                    .index
                    .last_at_or_below(&blocks.addresses, word)
                    .is_some_and(|index| {
                        let offset = word - blocks.addresses[index];
                        offset < blocks.sizes[index].max(1) && offset != next_chunk_of(index)
                    })
            };
            let is_address = |word: u64| is_block(word) || modules.holds(word);
            for index in 0..count {
                let (address, size) = (blocks.addresses[index], blocks.sizes[index]);
                if let Ok(mut memory) = memory.try_borrow_mut() {
                    if !memory.holds(address.saturating_sub(8), address + size.min(OBJECT_HEAD)) {
                        let (start, end) =
                            blocks.run(index, index + 1..count, |_| true, (8, OBJECT_HEAD), &blocks.sizes);
                        memory.prefetch(start, end);
                    }
                }
                next_chunk_of(index);
                let mut read = |address: u64| memory.try_borrow_mut().ok().and_then(|mut memory| memory.word(address));
                let Some(object) = python.find(&mut read, &is_address, address, size) else {
                    reference_offsets[index] = match python.dict_values_offset(&mut read, address, size) {
                        Some(offset) => u8::try_from(offset).unwrap_or(0),
                        None => native_layout(&mut read, address, size),
                    };
                    continue;
                };
                object_starts[index] = u8::try_from(object.offset).unwrap_or(NO_OBJECT);
                if object.garbage_collected {
                    object_offsets[index] = u8::try_from(object.offset).unwrap_or(0);
                    summary.python_objects += 1;
                }
                if object.immortal {
                    immortal.push(index);
                }
                if let (Some(namer), Some(object_type)) = (&input.namer, object.gc_type) {
                    if namer.is_module_type(object_type) {
                        module_objects.push(address + object.offset);
                    }
                }
                if let Some(type_address) = object.type_address {
                    let next = type_ids.len() as u32 + 1;
                    let id = *type_ids.entry(type_address).or_insert(next);
                    object_types[index] = id;
                }
                // A dead list's item array pointer is its last life's: that memory may now be
                // another block, whose words past the old length must still be read.
                if let Some(items) = object.list_items.filter(|_| !object.dead) {
                    list_items.push(items);
                }
                if let Some(limit) = object.scan_limit {
                    scan_limited.push((index, limit));
                }
                if object.dead {
                    dead_objects.push(index);
                }
            }
        }
        for (index, offset) in next_chunks.iter_mut().enumerate() {
            if *offset == NOT_READ {
                *offset = next_chunk(&mut memory, blocks.addresses[index], blocks.sizes[index]);
            }
        }
        blocks.next_chunks = next_chunks;
        blocks.object_offsets = object_offsets;
        blocks.reference_offsets = reference_offsets;
        dead_links = blocks.read_dead(&mut memory, &dead_objects);
        for (index, limit) in scan_limited {
            blocks.scan_limits[index] = blocks.scan_limits[index].min(limit);
        }
        for (items, in_use) in list_items {
            if let Ok(items_index) = blocks.addresses.binary_search(&items) {
                blocks.scan_limits[items_index] = blocks.scan_limits[items_index].min(in_use);
            }
        }
        let mut read = |address: u64| memory.word(address);
        // Ids by first sight; a type whose name cannot be read is named by its address.
        let mut by_id: Vec<(u32, u64)> = type_ids.iter().map(|(&address, &id)| (id, address)).collect();
        by_id.sort_unstable();
        type_addresses = by_id.iter().map(|&(_, address)| address).collect();
        type_names = by_id
            .into_iter()
            .map(|(_, address)| {
                python
                    .type_name(&mut read, address)
                    .unwrap_or_else(|| format!("type@{address:#x}"))
            })
            .collect();
        if let Some(namer) = &input.namer {
            named_roots = namer.named_roots(
                &mut read,
                &mut |read, address| python.type_flags(read, address),
                &module_objects,
            );
            // After the globals: what a global holds keeps the global's name. Blocks of a
            // thread state's size may be the states of threads still running.
            let thread_states: Vec<u64> = frame_locals::thread_state_size().map_or_else(Vec::new, |wanted| {
                blocks
                    .addresses
                    .iter()
                    .zip(&blocks.sizes)
                    .filter(|&(_, &size)| size == wanted)
                    .map(|(&address, _)| address)
                    .collect()
            });
            named_roots.extend(namer.frame_roots(&mut read, &thread_states));
        }
    }
    summary.immortal_objects = immortal.len() as u64;

    let maps = roots::read_maps();
    let mut roots = roots::collect(
        &maps,
        input.modules,
        input.own_module,
        input.exiting.as_ref(),
        &mut memory,
    );
    if input.judged_allocated_since_fork {
        if let Some(written) = crate::sys::pagemap::written_parts(&roots.ranges) {
            roots.ranges = written;
        }
    }
    summary.root_bytes = roots.bytes();
    summary.threads = roots.threads;
    summary.threads_unknown = roots.threads_unknown;

    let count = blocks.addresses.len();
    let stale = StaleSlots::of_live_objects(input.stale_references, &blocks, &object_starts, &mut memory);
    let mut state = vec![UNREACHED; count];
    let mut work: VecDeque<usize> = VecDeque::new();
    let mut marker = Marker {
        blocks: &blocks,
        memory: &mut memory,
        deadline: started + input.time_limit,
        ticks: 0,
        out_of_time: false,
        heap_bytes: 0,
    };
    let naming = input.namer.is_some();
    // Only when naming. Per block: its holder's id (0: none), and the block (index + 1) it
    // was first reached from (0: straight from the holder).
    let mut holder: Vec<(u32, u32)> = if naming { vec![(0, 0); count] } else { Vec::new() };
    // Only when naming. Per block reached from another: where in that block the word that
    // reached it lies (`u32::MAX`: too far in to say).
    let mut reached_at: Vec<u32> = if naming { vec![0; count] } else { Vec::new() };
    // Only when naming. Per block: first reached while reading the current level (so it is
    // in the next one).
    let mut queued: Vec<bool> = if naming { vec![false; count] } else { Vec::new() };
    let mut holder_names: Vec<Holder> = Vec::new();
    let mut level_bits = vec![0u64; count.div_ceil(64)];
    // Per block: the pointers to its start the flood read (from roots and reached blocks).
    let start_pointers: Vec<Cell<u32>> = vec![Cell::new(0); count];

    // Reachable and possibly-lost blocks: a flood from the roots, where a block reached only
    // through interior pointers passes on only "possibly". Breadth first, from the named
    // roots before any other: a block is then held by the name nearest to it.
    {
        // `label`: the holder id passed on, the block (index + 1) the value was read from
        // (0: a root) and where in it.
        let raise = |value: u64,
                     from: u8,
                     (label, from_block, at): (u32, u32, u32),
                     state: &mut Vec<u8>,
                     (holder, reached_at, queued): (&mut Vec<(u32, u32)>, &mut Vec<u32>, &mut Vec<bool>),
                     work: &mut VecDeque<usize>| {
            if let Some((index, pointer)) = blocks.find(value) {
                if pointer == Pointer::Start {
                    let count = &start_pointers[index];
                    count.set(count.get().saturating_add(1));
                }
                let strength = if from == REACHABLE && pointer == Pointer::Start {
                    REACHABLE
                } else {
                    POSSIBLY
                };
                if state[index] < strength {
                    state[index] = strength;
                    // A word pointing inside a block at an odd place is no pointer a program
                    // keeps (stale bytes: a 3.11 str's state word is written in its low byte
                    // only): it names no holder, which a pointer to the start would then keep.
                    let can_name =
                        || pointer == Pointer::Start || value.wrapping_sub(blocks.addresses[index]).is_multiple_of(8);
                    if naming && holder[index].0 == 0 && label != 0 && can_name() {
                        holder[index] = (label, from_block);
                        reached_at[index] = at;
                    }
                    if naming {
                        queued[index] = true;
                    }
                    work.push_back(index);
                } else if naming && queued[index] && label != 0 && label < holder[index].0 {
                    // Reached again at the same distance: the name met first in the roots'
                    // order (`__main__`'s before other modules') holds it, whatever the
                    // addresses of the blocks it was reached through.
                    holder[index] = (label, from_block);
                    reached_at[index] = at;
                }
            }
        };
        // A new holder id for a root that reaches a block nobody holds yet (0: none).
        let new_holder =
            |value: u64, name: &mut dyn FnMut() -> Holder, holder: &[(u32, u32)], names: &mut Vec<Holder>| {
                if !naming {
                    return 0;
                }
                match blocks.find(value) {
                    Some((index, _)) if holder[index].0 == 0 => {
                        names.push(name());
                        names.len() as u32
                    }
                    _ => 0,
                }
            };
        // The named roots flood first, to the end: a block they reach is held by a name even
        // when a root word (a stale stack slot, a C cache) points at it too.
        for phase in [Phase::Named, Phase::Anonymous] {
            match phase {
                Phase::Named => {
                    for (object, name) in std::mem::take(&mut named_roots) {
                        let mut name = Some(name);
                        let label = new_holder(
                            object,
                            &mut || Holder::Python(name.take().unwrap_or_default()),
                            &holder,
                            &mut holder_names,
                        );
                        raise(
                            object,
                            REACHABLE,
                            (label, 0, 0),
                            &mut state,
                            (&mut holder, &mut reached_at, &mut queued),
                            &mut work,
                        );
                    }
                }
                Phase::Anonymous => {
                    let mut register_holder = 0;
                    for &word in &roots.words {
                        if register_holder == 0 {
                            register_holder = new_holder(word, &mut || Holder::Register, &holder, &mut holder_names);
                        }
                        raise(
                            word,
                            REACHABLE,
                            (register_holder, 0, 0),
                            &mut state,
                            (&mut holder, &mut reached_at, &mut queued),
                            &mut work,
                        );
                    }
                    let stand_ins = stand_in
                        .iter()
                        .enumerate()
                        .filter(|(_, &is)| is)
                        .map(|(index, _)| index);
                    for index in immortal.iter().copied().chain(stand_ins) {
                        if state[index] < REACHABLE {
                            state[index] = REACHABLE;
                            work.push_back(index);
                        }
                    }
                    for &(start, end) in &roots.ranges {
                        marker.words(start, end, (0, 0), &mut |address, word| {
                            if stale.names(address, word) {
                                return;
                            }
                            let label = new_holder(word, &mut || Holder::RootWord(address), &holder, &mut holder_names);
                            raise(
                                word,
                                REACHABLE,
                                (label, 0, 0),
                                &mut state,
                                (&mut holder, &mut reached_at, &mut queued),
                                &mut work,
                            )
                        });
                    }
                }
            }
            // Level by level, each level in address order: breadth first as the holders need,
            // and neighbouring blocks read one after another, so that most reads hit the
            // reader's page cache instead of making a system call each.
            let mut level: Vec<usize> = Vec::new();
            while !work.is_empty() && !marker.out_of_time {
                level.clear();
                level.extend(work.drain(..));
                sort_level(&mut level, &mut level_bits);
                if naming {
                    level.iter().for_each(|&index| queued[index] = false);
                }
                for (position, &index) in level.iter().enumerate() {
                    if !marker.tick() {
                        break;
                    }
                    marker.prefetch(index, level[position + 1..].iter().copied(), |_| true);
                    let from = state[index];
                    let (label, start) = (holder.get(index).map_or(0, |h| h.0), blocks.addresses[index]);
                    marker.block_words(index, &mut |address, word| {
                        if stale.names(address, word) {
                            return;
                        }
                        let at = u32::try_from(address - start).unwrap_or(u32::MAX);
                        raise(
                            word,
                            from,
                            (label, index as u32 + 1, at),
                            &mut state,
                            (&mut holder, &mut reached_at, &mut queued),
                            &mut work,
                        )
                    });
                }
            }
        }
    }

    // Lost blocks: which leaked root keeps each, and which are garbage awaiting collection.
    let lost = if marker.out_of_time {
        None
    } else {
        let facts = Facts {
            object_starts: &object_starts,
            object_types: &object_types,
            start_pointers: &start_pointers,
            stand_in: &stand_in,
            dead_links: &dead_links,
            survived_collection: &survived_collection,
            age: input.age,
        };
        structure::structures(&mut marker, &state, &facts)
    };

    summary.heap_bytes = marker.heap_bytes;
    summary.duration_us = started.elapsed().as_micros() as u64;
    let Some(lost) = lost.filter(|_| !marker.out_of_time) else {
        summary.outcome = ScanOutcome::CutShort;
        summary.note = format!("the scan stopped after its time limit of {:?}", input.time_limit);
        return ScanResult {
            classes: Vec::new(),
            summary,
            holders: None,
            lost: Vec::new(),
            types: Vec::new(),
        };
    };
    summary.outcome = ScanOutcome::Complete;
    let steps = match &input.namer {
        Some(namer) => {
            let path = PathFacts {
                blocks: &blocks,
                holder: &holder,
                reached_at: &reached_at,
                object_starts: &object_starts,
                object_types: &object_types,
                type_addresses: &type_addresses,
            };
            name_steps(namer, &path, marker.memory)
        }
        None => Steps::default(),
    };
    let holders = naming.then(|| holders_of(&blocks.addresses, &holder, holder_names, &object_types, steps));
    ScanResult {
        classes: lost.classes,
        summary,
        holders,
        lost: lost.blocks,
        types: type_names,
    }
}

/// Puts a level of the flood in address order (block indices are), without repeats: with a
/// bitmap of all blocks when the level is large, else by sorting.
fn sort_level(level: &mut Vec<usize>, bits: &mut [u64]) {
    if level.len() < bits.len() {
        level.sort_unstable();
        level.dedup();
        return;
    }
    for &index in level.iter() {
        bits[index / 64] |= 1 << (index % 64);
    }
    level.clear();
    for (at, word) in bits.iter_mut().enumerate() {
        while *word != 0 {
            level.push(at * 64 + word.trailing_zeros() as usize);
            *word &= *word - 1;
        }
    }
}

/// The holders that hold some block, renumbered from 1 in order, and each held block's, with
/// the type of the object it holds (`object_types` by block, empty when unknown) and the
/// named step it is held by.
fn holders_of(
    addresses: &[u64],
    holder: &[(u32, u32)],
    names: Vec<Holder>,
    object_types: &[u32],
    steps: Steps,
) -> Holders {
    let mut renumbered = vec![0u32; names.len() + 1];
    let mut kept = Vec::new();
    let mut blocks = Vec::new();
    for (index, (&address, &(id, via))) in addresses.iter().zip(holder).enumerate() {
        if id == 0 {
            continue;
        }
        if renumbered[id as usize] == 0 {
            kept.push(id);
            renumbered[id as usize] = kept.len() as u32;
        }
        blocks.push(BlockHolder {
            address,
            holder: renumbered[id as usize],
            object_type: object_types.get(index).copied().unwrap_or(0),
            via: via.checked_sub(1).map_or(0, |from| addresses[from as usize]),
            step: steps.of_block.get(index).copied().unwrap_or(0),
        });
    }
    let mut names: Vec<Option<Holder>> = names.into_iter().map(Some).collect();
    Holders {
        names: kept.iter().filter_map(|&id| names[id as usize - 1].take()).collect(),
        blocks,
        steps: steps.names,
    }
}

#[cfg(test)]
mod tests {
    use libleak_format::{BlockHolder, Holder};

    use super::{holders_of, Steps};

    #[test]
    fn only_holders_that_hold_a_block_are_kept_renumbered_in_address_order() {
        let names = vec![
            Holder::Python("app.unused".into()),
            Holder::Python("app._RESULTS".into()),
            Holder::RootWord(0x1000),
            Holder::Register,
        ];
        let holders = holders_of(
            &[0x10, 0x20, 0x30, 0x40],
            &[(3, 0), (0, 0), (2, 0), (3, 1)],
            names,
            &[1, 1, 0, 2],
            Steps {
                names: vec!["['key']".into()],
                of_block: vec![0, 0, 0, 1],
            },
        );
        assert_eq!(
            holders.names,
            [Holder::RootWord(0x1000), Holder::Python("app._RESULTS".into())]
        );
        let blocks: Vec<(u64, u32, u64, u32)> = holders
            .blocks
            .iter()
            .map(|b: &BlockHolder| (b.address, b.holder, b.via, b.step))
            .collect();
        assert_eq!(blocks, [(0x10, 1, 0, 0), (0x30, 2, 0, 0), (0x40, 1, 0x10, 1)]);
        assert_eq!(holders.steps, ["['key']"]);
    }
}
