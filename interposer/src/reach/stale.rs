//! Words the scans do not read as references: free-list slots that still name an object
//! CPython handed out again (see [`crate::python::free_lists`]). Such a slot is a stale copy:
//! a live object is on no free list.
//!
//! Must stay cheap for every word the flood reads: one range test when there are no slots.

use super::blocks::Blocks;
use super::structure::NO_OBJECT;
use crate::sys::memory::MemoryReader;

/// How far into its block a slot's object starts, at most (a GC header, a pre-header).
const OBJECT_WITHIN: u64 = 64;

pub(super) struct StaleSlots {
    /// (slot, block), sorted by slot.
    slots: Vec<(u64, u64)>,
    lowest: u64,
    highest: u64,
}

impl StaleSlots {
    /// The slots of `slots` whose block holds a live object (a count above 0): a dead one
    /// is on the free list again, maybe in that very slot, which then keeps it.
    pub(super) fn of_live_objects(
        slots: Vec<(u64, u64)>,
        blocks: &Blocks,
        object_starts: &[u8],
        memory: &mut MemoryReader,
    ) -> StaleSlots {
        let live = slots
            .into_iter()
            .filter(|&(_, block)| {
                let Some(start) = blocks.index_of(block).and_then(|i| object_starts.get(i)) else {
                    return false;
                };
                *start != NO_OBJECT
                    && memory
                        .word(block + u64::from(*start))
                        .is_some_and(|count| count > 0 && count < 1 << 40)
            })
            .collect();
        StaleSlots::new(live)
    }

    pub(super) fn new(mut slots: Vec<(u64, u64)>) -> StaleSlots {
        slots.sort_unstable();
        StaleSlots {
            lowest: slots.first().map_or(u64::MAX, |s| s.0),
            highest: slots.last().map_or(0, |s| s.0),
            slots,
        }
    }

    /// Whether `word`, read at `address`, is a stale slot's copy of its object's address.
    #[inline(always)]
    pub(super) fn names(&self, address: u64, word: u64) -> bool {
        if address < self.lowest || address > self.highest {
            return false;
        }
        self.slots
            .binary_search_by_key(&address, |&(slot, _)| slot)
            .is_ok_and(|index| word.wrapping_sub(self.slots[index].1) < OBJECT_WITHIN)
    }
}

#[cfg(test)]
mod tests {
    use super::StaleSlots;

    #[test]
    fn only_a_slot_naming_its_own_block_is_stale() {
        let stale = StaleSlots::new(vec![(0x9000, 0x5000), (0x8ff8, 0x6000)]);
        assert!(stale.names(0x9000, 0x5010));
        assert!(!stale.names(0x9000, 0x6010), "another object since");
        assert!(stale.names(0x8ff8, 0x6010));
        assert!(!stale.names(0x9008, 0x5010), "not a slot");
        assert!(!StaleSlots::new(Vec::new()).names(0x9000, 0x5010));
    }
}
