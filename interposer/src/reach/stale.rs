//! Words the scans do not read as references: free-list slots that still name an object
//! CPython handed out again (see [`crate::python::free_lists`]), and words of the
//! interpreter's static data that pointed into a block since freed (see
//! `collector/dangling.rs`). Such a slot is a stale copy: a live object is on no free list;
//! memory freed and allocated again is not what a pointer kept from before named.
//!
//! Must stay cheap for every word the flood reads: one range test when there are no slots.

use super::blocks::Blocks;
use super::structure::NO_OBJECT;
use crate::sys::memory::MemoryReader;

/// How far into its block a slot's object starts, at most (a GC header, a pre-header).
const OBJECT_WITHIN: u64 = 64;

/// What the collector knows of stale words.
#[derive(Default)]
pub struct StaleWords {
    /// (slot, block), sorted: free-list slots that still name an object CPython handed out
    /// again (see [`crate::python::free_lists`]). A pointer into the block read there is no
    /// reference.
    pub slots: Vec<(u64, u64)>,
    /// (where, value): words of the interpreter's static data that pointed inside a block
    /// since freed (see `collector/dangling.rs`). Still holding that value, such a word
    /// names no block allocated there since.
    pub dangling: Vec<(u64, u64)>,
}

pub(super) struct StaleSlots {
    /// (slot, lowest, end): a word in `lowest..end` read at `slot` is stale. Sorted by slot.
    slots: Vec<(u64, u64, u64)>,
    lowest: u64,
    highest: u64,
}

impl StaleSlots {
    /// The slots of `slots` whose block holds a live object (a count above 0): a dead one
    /// is on the free list again, maybe in that very slot, which then keeps it; and the
    /// dangling words, stale while they still hold their value.
    pub(super) fn of_live_objects(
        words: StaleWords,
        blocks: &Blocks,
        object_starts: &[u8],
        memory: &mut MemoryReader,
    ) -> StaleSlots {
        let mut live: Vec<(u64, u64, u64)> = words
            .slots
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
            .map(|(slot, block)| (slot, block, block + OBJECT_WITHIN))
            .collect();
        live.extend(words.dangling.iter().map(|&(at, value)| (at, value, value + 1)));
        StaleSlots::new(live)
    }

    pub(super) fn new(mut slots: Vec<(u64, u64, u64)>) -> StaleSlots {
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
            .binary_search_by_key(&address, |&(slot, _, _)| slot)
            .is_ok_and(|index| {
                let (_, lowest, end) = self.slots[index];
                word >= lowest && word < end
            })
    }
}

#[cfg(test)]
mod tests {
    use super::StaleSlots;

    #[test]
    fn only_a_slot_naming_its_own_block_is_stale() {
        let stale = StaleSlots::new(vec![(0x9000, 0x5000, 0x5040), (0x8ff8, 0x6000, 0x6040)]);
        assert!(stale.names(0x9000, 0x5010));
        assert!(!stale.names(0x9000, 0x6010), "another object since");
        assert!(stale.names(0x8ff8, 0x6010));
        assert!(!stale.names(0x9008, 0x5010), "not a slot");
        assert!(!StaleSlots::new(Vec::new()).names(0x9000, 0x5010));
    }

    #[test]
    fn a_dangling_word_is_stale_only_with_its_old_value() {
        let stale = StaleSlots::new(vec![(0x9000, 0x5028, 0x5029)]);
        assert!(stale.names(0x9000, 0x5028));
        assert!(!stale.names(0x9000, 0x5020), "written since");
        assert!(!stale.names(0x9000, 0x5030), "written since");
    }
}
