//! What a forked child inherited: the live sets of its ancestors at their forks, read without
//! ever being written, and which of those blocks its exit scan must read.
//!
//! A child judges only what it allocated itself; its parent's trace judges the rest. Its own
//! blocks can be kept only by the roots, by its own blocks, or by inherited memory it wrote to
//! since the fork: an inherited block on pages it never wrote to holds what it held at the
//! fork, nothing the child allocated. So the scan reads, as roots, the inherited blocks that
//! overlap a page written since the fork, found from those pages (`/proc/self/pagemap`, see
//! [`crate::sys::pagemap`]) by looking up the addresses in and just before each, plus the few
//! inherited blocks larger than a page: the cost follows what the child wrote, not what its
//! parent holds. Where the pages cannot be told apart the child judges everything, as
//! `LIBLEAK_CHILD_SCAN=all` asks.
//!
//! Must never write to an inherited set: a child of a large parent would copy its pages.

use std::collections::HashSet;
use std::hash::BuildHasherDefault;

use libleak_format::live::{AddressHasher, LiveSet};

use super::{Collector, CollectorBlock};
use crate::sys::pagemap::{WrittenPages, PAGE};

/// Block addresses are multiples of this at least: every address that can start a block is
/// looked up. Where every block recorded started at a multiple of twice as much (glibc's
/// 16-byte alignment), only those are.
const BLOCK_ALIGN: u64 = 8;
/// Written bytes whose look-ups cost what going through one inherited block costs: below
/// this many written bytes per inherited block, the inherited blocks are gone through.
const WALK_BYTES_PER_INHERITED_BLOCK: u64 = 32;

/// What a forked child's scan does with the blocks it inherited.
#[derive(Default)]
pub(super) struct Inheritance {
    /// Inherited blocks still live: none judged.
    pub(super) unjudged: u64,
    /// Those to read as roots, on pages written since the fork: (address, size).
    pub(super) read: Vec<(u64, u64)>,
}

/// The private writable anonymous mappings of the process: where heap blocks lie (never in a
/// file's mapping nor on the main thread's stack).
fn private_writable_ranges() -> Vec<(u64, u64)> {
    crate::reach::roots::read_maps()
        .iter()
        .filter(|m| {
            m.perms[1] == b'w'
                && m.perms[3] == b'p'
                && (m.path.is_empty() || m.path.starts_with("[anon:") || m.path == "[heap]")
        })
        .map(|m| (m.start, m.end))
        .collect()
}

impl Collector {
    /// At a fork, in the child: the live set so far becomes inherited, never to be written
    /// again, and the mappings where inherited blocks can lie are noted.
    pub(super) fn inherit_at_fork(&mut self) {
        self.inherited.push(std::mem::take(&mut self.live));
        self.inherited_large.push(std::mem::take(&mut self.large));
        self.fork_ranges = private_writable_ranges();
        self.parked_since_start = false;
        self.judges_inherited = None;
    }

    /// Calls `each` with every block this process inherited at a fork and has not freed.
    pub(super) fn for_each_inherited(&self, mut each: impl FnMut(u64, &CollectorBlock)) {
        for (layer, inherited) in self.inherited.iter().enumerate() {
            let later = &self.inherited[layer + 1..];
            inherited.for_each_live(|address, block| {
                let touched = self.live.has_events_at(address) || later.iter().any(|set| set.has_events_at(address));
                if !touched {
                    each(address, block);
                }
            });
        }
    }

    /// The block live at `address` in this process: its own, or one inherited and not touched
    /// since.
    pub(super) fn live_block_at(&self, address: u64) -> Option<CollectorBlock> {
        if self.live.has_events_at(address) {
            return self.live.live_at(address).copied();
        }
        self.inherited_block_at(address)
    }

    /// The inherited block live at `address`, unless this process allocated or freed there.
    fn inherited_block_at(&self, address: u64) -> Option<CollectorBlock> {
        if self.live.has_events_at(address) {
            return None;
        }
        self.latest_inherited_at(address)
    }

    /// The inherited block live at `address` as the latest layer with an event there says.
    fn latest_inherited_at(&self, address: u64) -> Option<CollectorBlock> {
        self.inherited
            .iter()
            .rev()
            .find_map(|set| set.event_at(address))
            .flatten()
            .copied()
    }

    /// (blocks, bytes) inherited and still live: each inherited set's live blocks but those
    /// at an address a later set, or this process, has seen an event at. Reads the later sets'
    /// addresses, not the inherited blocks one by one.
    pub(super) fn inherited_totals(&self) -> (u64, u64) {
        let mut totals = (0, 0);
        for (layer, inherited) in self.inherited.iter().enumerate() {
            let set_totals = inherited.totals();
            totals.0 += set_totals.live_blocks;
            totals.1 += set_totals.live_bytes;
            // Each address once: skipped in a set when an earlier one of the later sets has it.
            let later: Vec<&LiveSet<CollectorBlock>> = self.inherited[layer + 1..].iter().chain([&self.live]).collect();
            for (position, set) in later.iter().enumerate() {
                set.for_each_address(|address| {
                    if later[..position].iter().any(|earlier| earlier.has_events_at(address)) {
                        return;
                    }
                    if let Some(block) = inherited.live_at(address) {
                        totals.0 -= 1;
                        totals.1 -= block.size;
                    }
                });
            }
        }
        totals
    }

    /// The inherited blocks the exit scan must read as roots (see the module's doc); `None`
    /// when the written pages cannot be known (then every block must be judged).
    pub(super) fn inheritance_to_read(&self) -> Option<Inheritance> {
        // A page is told written by being this process's alone: once it forked, what it wrote
        // before is shared with its own child again.
        if self.fork_ranges.is_empty() || self.parked_since_start {
            return None;
        }
        // libleak's own mappings (the event batches, written all the time) hold no block.
        let own = crate::sys::real::own_mappings();
        let ranges: Vec<(u64, u64)> = self
            .fork_ranges
            .iter()
            .flat_map(|&(start, end)| crate::reach::roots::without_excluded(&own, start, end))
            .collect();
        let pages = WrittenPages::read(&ranges)?;
        let mut inheritance = Inheritance {
            unjudged: self.inherited_totals().0,
            ..Inheritance::default()
        };
        // Looking up the addresses of the written pages costs about as much per block on
        // them as going through every inherited block costs per block: the cheaper of the two
        // (which names each block once).
        if inheritance.unjudged.saturating_mul(WALK_BYTES_PER_INHERITED_BLOCK) < pages.written * PAGE {
            self.for_each_inherited(|address, block| {
                if pages.any_written(address, address + block.size.max(1)) {
                    inheritance.read.push((address, block.size));
                }
            });
            return Some(inheritance);
        }
        // The large inherited blocks still live, by address: read when they overlap a written
        // page, and stepped over while looking up addresses (a written page in the middle of a
        // large array holds no block start).
        let mut large: Vec<(u64, CollectorBlock)> = Vec::new();
        for set in &self.inherited_large {
            for (address, noted) in set.blocks() {
                if let Some(block) = self.inherited_block_at(address).filter(|block| block.seq == noted.seq) {
                    large.push((address, block));
                }
            }
        }
        large.sort_unstable_by_key(|&(address, _)| address);
        large.dedup_by_key(|&mut (address, _)| address);
        let mut found: HashSet<u64, BuildHasherDefault<AddressHasher>> = HashSet::default();
        let mut add = |address: u64, block: CollectorBlock, read: &mut Vec<(u64, u64)>| {
            if found.insert(address) {
                read.push((address, block.size));
            }
        };
        for &(address, block) in &large {
            if pages.any_written(address, address + block.size) {
                add(address, block, &mut inheritance.read);
            }
        }
        // Every address in a run of written pages and in the page before it: a block starting
        // there that reaches into the run. From a block's start, the next look-up is at its
        // end; this process's own blocks are stepped over too.
        let align = if self.address_bits & BLOCK_ALIGN == 0 {
            2 * BLOCK_ALIGN
        } else {
            BLOCK_ALIGN
        };
        let mut looked_up_to = 0u64;
        let mut next_large = 0;
        for (run_start, run_end) in pages.written_runs() {
            let mut at = run_start.saturating_sub(PAGE).max(looked_up_to);
            while at < run_end {
                while next_large < large.len() && large[next_large].0 + large[next_large].1.size <= at {
                    next_large += 1;
                }
                let step_to = |end: u64| end.next_multiple_of(align).max(at + align);
                if let Some(&(start, block)) = large.get(next_large).filter(|(start, _)| *start <= at) {
                    at = step_to(start + block.size);
                } else if let Some(own) = self.live.event_at(at) {
                    at = match own {
                        Some(own) => step_to(at + own.size.max(1)),
                        // Freed here by this process: no block of its own nor inherited.
                        None => at + align,
                    };
                } else if let Some(block) = self.latest_inherited_at(at) {
                    let end = at + block.size.max(1);
                    if end > run_start {
                        add(at, block, &mut inheritance.read);
                    }
                    at = step_to(end);
                } else {
                    at += align;
                }
            }
            looked_up_to = at;
        }
        Some(inheritance)
    }
}
