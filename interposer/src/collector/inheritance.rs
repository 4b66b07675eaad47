//! What a forked child inherited: the live sets of its ancestors at their forks, read without
//! ever being written, and where its exit scan must look in them.
//!
//! A child judges only what it allocated itself; its parent's trace judges the rest. Its own
//! blocks can be kept only by the roots, by its own blocks, or by inherited memory it wrote to
//! since the fork: an inherited block holds, on pages the child never wrote to, what it held
//! at the fork, nothing the child allocated. So the scan reads the pages written since the
//! fork (`/proc/self/pagemap`, see [`crate::sys::pagemap`]), and reads as a root each
//! inherited block holding there a word that points into one of the child's own blocks
//! (`reach::stand_in`), looked up by the word's address ([`InheritedHolder`]): the cost
//! follows what the child wrote, not what its parent holds. Where the pages cannot be told
//! apart the child judges everything, as `LIBLEAK_CHILD_SCAN=all` asks.
//!
//! Must never write to an inherited set: a child of a large parent would copy its pages.

use libleak_format::live::LiveSet;

use super::large::LARGE;
use super::{Collector, CollectorBlock};
use crate::sys::pagemap::WrittenPages;

/// Block addresses are multiples of this at least: every address that can start a block is
/// looked up. Where every block recorded started at a multiple of twice as much (glibc's
/// 16-byte alignment), only those are.
const BLOCK_ALIGN: u64 = 8;

/// What a forked child's scan does with the blocks it inherited.
#[derive(Default)]
pub(super) struct Inheritance {
    /// Inherited blocks still live: none judged.
    pub(super) unjudged: u64,
    /// The runs of pages written since the fork, where inherited blocks lie, in address
    /// order: only there can an inherited block point into one of this process's own.
    pub(super) written: Vec<(u64, u64)>,
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

    /// Where the exit scan must look for pointers into this process's own blocks in memory
    /// it inherited (see the module's doc); `None` when the written pages cannot be known (then
    /// every block must be judged).
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
        Some(Inheritance {
            unjudged: self.inherited_totals().0,
            written: pages.written_runs().collect(),
        })
    }

    /// Looks up the inherited blocks holding addresses, for the exit scan.
    pub(super) fn inherited_holder(&self) -> InheritedHolder<'_> {
        let align = if self.address_bits & BLOCK_ALIGN == 0 {
            2 * BLOCK_ALIGN
        } else {
            BLOCK_ALIGN
        };
        InheritedHolder {
            collector: self,
            large: None,
            align,
            last: None,
        }
    }

    /// The large inherited blocks still live, as (start, end), by address.
    fn large_inherited(&self) -> Vec<(u64, u64)> {
        let mut large: Vec<(u64, u64)> = Vec::new();
        for set in &self.inherited_large {
            for (address, noted) in set.blocks() {
                if let Some(block) = self.inherited_block_at(address).filter(|block| block.seq == noted.seq) {
                    large.push((address, address + block.size));
                }
            }
        }
        large.sort_unstable();
        large.dedup_by_key(|&mut (address, _)| address);
        large
    }
}

/// The block that starts at or below an address looked up, nearest to it.
#[derive(Clone, Copy)]
enum Nearest {
    /// A block of this process's own.
    Own,
    /// An inherited block still live: (start, size).
    Inherited(u64, u64),
    /// No block starts within [`LARGE`] bytes below.
    None,
}

/// Answers which inherited block holds an address (see `reach::stand_in`): the nearest block
/// start at or below it, found by looking up the aligned addresses down from it (no block
/// but a large one reaches further back than [`LARGE`] bytes). Asked in address order, it
/// looks each address up once: what lies at or below the last address asked was found then.
pub(super) struct InheritedHolder<'a> {
    collector: &'a Collector,
    /// See [`Collector::large_inherited`]; made at the first need.
    large: Option<Vec<(u64, u64)>>,
    align: u64,
    /// The last address asked for, and the nearest block start at or below it.
    last: Option<(u64, Nearest)>,
}

impl InheritedHolder<'_> {
    /// The inherited block still live holding `address`, as (address, size).
    pub(super) fn holding(&mut self, address: u64) -> Option<(u64, u64)> {
        let floor = address.saturating_sub(LARGE);
        let known = self.last.filter(|&(last, _)| last <= address && last >= floor);
        let mut at = address & !(self.align - 1);
        let nearest = loop {
            if let Some((_, nearest)) = known.filter(|&(last, _)| at <= last) {
                // Looked up from `last` down before (as far as this look-up would go, or to
                // a start).
                break nearest;
            }
            if at < floor || at == 0 {
                break Nearest::None;
            }
            if let Some(found) = self.start_at(at) {
                break found;
            }
            at -= self.align;
        };
        self.last = Some((address, nearest));
        match nearest {
            Nearest::Inherited(start, size) => (address < start + size.max(1)).then_some((start, size)),
            Nearest::Own => None,
            Nearest::None => self.large_holding(address),
        }
    }

    /// The block starting at `at`, if one does: this process's own, else an inherited one.
    fn start_at(&self, at: u64) -> Option<Nearest> {
        match self.collector.live.event_at(at) {
            Some(Some(_)) => Some(Nearest::Own),
            // Freed here by this process: no block of its own nor inherited starts here.
            Some(None) => None,
            None => self
                .collector
                .latest_inherited_at(at)
                .map(|block| Nearest::Inherited(at, block.size)),
        }
    }

    fn large_holding(&mut self, address: u64) -> Option<(u64, u64)> {
        let large = self.large.get_or_insert_with(|| self.collector.large_inherited());
        let after = large.partition_point(|&(start, _)| start <= address);
        let &(start, end) = large.get(after.checked_sub(1)?)?;
        (address < end).then_some((start, end - start))
    }
}
