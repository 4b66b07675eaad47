//! The live set: which blocks are allocated at the end of an event stream. Shared by the
//! interposer's writer (which needs the live set at exit for the reachability scan) and the
//! reporter (which rebuilds it from the trace), so that both agree block for block.
//!
//! Events reach the trace in batch order, not in program order: a free on one thread can
//! appear after a later allocation of the same address on another, and a block handed to
//! another thread can be freed (and its address reused) before the batch holding its
//! allocation is written. Sequence numbers give the true order of each address's events
//! (the tracker takes a free's number before the real free and an allocation's after the
//! real allocation; see the interposer's `order` module). Whether an
//! address holds a live block at the end depends only on its last event in sequence order:
//! so per address only the event with the highest sequence number seen so far is kept, and
//! an older one arriving later is already superseded. Pairing events as they arrive is not
//! enough: an allocation and a free adjacent among the events seen so far may have another
//! free and allocation of the same address between them, still to arrive.
//!
//! Memory follows the number of distinct addresses ever used (a freed address keeps its
//! last free as a marker), which malloc's reuse of addresses keeps close to the peak live
//! set, not the trace length.
//!
//! Must stay pure (no I/O) so that it can be tested on synthetic events.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// What the live set needs to know of a block; the rest is the caller's payload.
pub trait LiveBlock: Copy {
    fn seq(&self) -> u64;
    fn size(&self) -> u64;
}

/// The latest event seen for an address: its sequence number, and for an allocation the index
/// of its block in [`LiveSet::blocks`]. Kept small (16 bytes): the table holds every address
/// ever used, and its cache misses were most of the cost of replaying a trace.
#[derive(Clone, Copy, Debug)]
struct Latest {
    seq: u64,
    block: u32,
}

/// [`Latest::block`] of a free.
const FREED: u32 = u32::MAX;

/// Running totals over the stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub allocations: u64,
    pub frees: u64,
    /// Largest live byte count seen while replaying (exact to within one writer batch).
    pub peak_bytes: u64,
    pub live_bytes: u64,
    pub live_blocks: u64,
    /// Frees of addresses never seen allocated (blocks from before recording started).
    pub unmatched_frees: u64,
}

/// A multiply-rotate hash for addresses and the writer's (node id, frame) keys: they are not
/// attacker-chosen, and SipHash cost more than everything else on the writer's per-event path.
#[derive(Default)]
pub struct AddressHasher(u64);

/// A hash map keyed by addresses, ids or tuples of them, hashed with [`AddressHasher`].
pub type AddressMap<K, V> = HashMap<K, V, BuildHasherDefault<AddressHasher>>;
/// A hash set of addresses, ids or tuples of them, hashed with [`AddressHasher`].
pub type AddressSet<K> = std::collections::HashSet<K, BuildHasherDefault<AddressHasher>>;

impl Hasher for AddressHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0 ^ value).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }

    // Every integer is one round: the default methods go through `write`, a round per byte
    // (enum discriminants are written as `isize`, a tuple's small fields as theirs).
    fn write_u8(&mut self, value: u8) {
        self.write_u64(u64::from(value));
    }

    fn write_u16(&mut self, value: u16) {
        self.write_u64(u64::from(value));
    }

    fn write_u32(&mut self, value: u32) {
        self.write_u64(u64::from(value));
    }

    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }

    fn write_i8(&mut self, value: i8) {
        self.write_u64(value as u64);
    }

    fn write_i16(&mut self, value: i16) {
        self.write_u64(value as u64);
    }

    fn write_i32(&mut self, value: i32) {
        self.write_u64(value as u64);
    }

    fn write_i64(&mut self, value: i64) {
        self.write_u64(value as u64);
    }

    fn write_isize(&mut self, value: isize) {
        self.write_u64(value as u64);
    }
}

pub struct LiveSet<B> {
    by_address: HashMap<u64, Latest, BuildHasherDefault<AddressHasher>>,
    /// The live blocks' payloads; a slot is reused once its block is freed.
    blocks: Vec<B>,
    vacant: Vec<u32>,
    totals: Totals,
    /// Free events seen, matched or not.
    free_events: u64,
}

impl<B: LiveBlock> Default for LiveSet<B> {
    fn default() -> Self {
        LiveSet {
            by_address: HashMap::default(),
            blocks: Vec::new(),
            vacant: Vec::new(),
            totals: Totals::default(),
            free_events: 0,
        }
    }
}

impl<B: LiveBlock> LiveSet<B> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn alloc(&mut self, address: u64, block: B) {
        self.totals.allocations += 1;
        let seq = block.seq();
        match self.by_address.entry(address) {
            Entry::Vacant(vacant) => {
                let index = store(&mut self.blocks, &mut self.vacant, block);
                vacant.insert(Latest { seq, block: index });
                add_live(&mut self.totals, block.size());
            }
            Entry::Occupied(mut latest) if latest.get().seq < seq => {
                // A later allocation: the previous event was a free, or is followed by a
                // free not seen yet.
                let previous = *latest.get();
                let index = if previous.block == FREED {
                    store(&mut self.blocks, &mut self.vacant, block)
                } else {
                    let replaced = std::mem::replace(&mut self.blocks[previous.block as usize], block);
                    remove_live(&mut self.totals, replaced.size());
                    previous.block
                };
                latest.insert(Latest { seq, block: index });
                add_live(&mut self.totals, block.size());
            }
            // Older than what is known: freed (and perhaps reused) since.
            Entry::Occupied(_) => {}
        }
    }

    /// Returns the size of the block the free ended, if it ended one.
    pub fn free(&mut self, address: u64, seq: u64) -> Option<u64> {
        self.free_events += 1;
        match self.by_address.entry(address) {
            Entry::Vacant(vacant) => {
                vacant.insert(Latest { seq, block: FREED });
                None
            }
            Entry::Occupied(mut latest) if latest.get().seq < seq => {
                let previous = latest.insert(Latest { seq, block: FREED });
                (previous.block != FREED).then(|| {
                    let size = self.blocks[previous.block as usize].size();
                    self.vacant.push(previous.block);
                    remove_live(&mut self.totals, size);
                    size
                })
            }
            // Older than what is known: it freed an allocation that came before.
            Entry::Occupied(_) => None,
        }
    }

    /// An allocation and then the free of the same address (`free_seq` above the block's
    /// own), as `alloc` followed by `free` would record them, with one table lookup instead
    /// of two: short-lived blocks, freed right after they were allocated, are most events.
    pub fn alloc_and_free(&mut self, address: u64, block: B, free_seq: u64) {
        let seq = block.seq();
        if free_seq <= seq {
            self.alloc(address, block);
            self.free(address, free_seq);
            return;
        }
        self.totals.allocations += 1;
        self.free_events += 1;
        let freed = Latest {
            seq: free_seq,
            block: FREED,
        };
        match self.by_address.entry(address) {
            Entry::Vacant(vacant) => {
                vacant.insert(freed);
                self.passing_peak(block.size());
            }
            Entry::Occupied(mut latest) => {
                let previous = *latest.get();
                if previous.seq >= free_seq {
                    return; // both older than what is known
                }
                latest.insert(freed);
                if previous.block != FREED {
                    // Replaced by the allocation, or freed by the free when the allocation is
                    // the older one: gone either way.
                    let size = self.blocks[previous.block as usize].size();
                    self.vacant.push(previous.block);
                    remove_live(&mut self.totals, size);
                }
                if previous.seq < seq {
                    self.passing_peak(block.size());
                }
            }
        }
    }

    /// A block of `size` bytes was live for a moment.
    fn passing_peak(&mut self, size: u64) {
        self.totals.peak_bytes = self.totals.peak_bytes.max(self.totals.live_bytes + size);
    }

    /// Totals so far. Per address, events alternate allocation, free, …, so every allocation
    /// not live was freed exactly once; the other frees matched nothing recorded.
    pub fn totals(&self) -> Totals {
        let mut totals = self.totals;
        totals.frees = totals.allocations - totals.live_blocks;
        totals.unmatched_frees = self.free_events.saturating_sub(totals.frees);
        totals
    }

    /// Every block still live with its address, in sequence order (address order among
    /// equal sequence numbers, which only damage can make).
    pub fn live_blocks(&self) -> Vec<(u64, B)> {
        let mut blocks: Vec<(u64, B)> = Vec::with_capacity(self.totals.live_blocks as usize);
        self.for_each_live(|address, block| blocks.push((address, *block)));
        blocks.sort_unstable_by_key(|(address, b)| (b.seq(), *address));
        blocks
    }

    /// Calls `each` with every block still live and its address, in no particular order.
    pub fn for_each_live(&self, mut each: impl FnMut(u64, &B)) {
        // The table is in hash order and the blocks in allocation order, so nearly every
        // block read misses the caches: a batch's blocks are read one after another, with
        // nothing in between, so that the misses overlap.
        let mut addresses = [0u64; LIVE_BATCH];
        let mut indices = [0u32; LIVE_BATCH];
        let mut pending = 0;
        for (&address, latest) in &self.by_address {
            if latest.block != FREED {
                addresses[pending] = address;
                indices[pending] = latest.block;
                pending += 1;
                if pending == LIVE_BATCH {
                    each_of_batch(&self.blocks, &addresses, &indices, &mut each);
                    pending = 0;
                }
            }
        }
        each_of_batch(&self.blocks, &addresses[..pending], &indices[..pending], &mut each);
    }

    /// Calls `each` with every block still live, in no particular order, to change its
    /// payload; its sequence number and size must stay as they are (the totals count them).
    pub fn for_each_live_mut(&mut self, mut each: impl FnMut(&mut B)) {
        // The blocks in storage order, read straight through: the vacant slots are the only
        // ones not live.
        let mut vacant = vec![false; self.blocks.len()];
        for &slot in &self.vacant {
            if let Some(vacant) = vacant.get_mut(slot as usize) {
                *vacant = true;
            }
        }
        for (block, vacant) in self.blocks.iter_mut().zip(vacant) {
            if !vacant {
                each(block);
            }
        }
    }

    /// The block live at `address`, if its latest event is an allocation.
    pub fn live_at(&self, address: u64) -> Option<&B> {
        let latest = self.by_address.get(&address)?;
        (latest.block != FREED).then(|| &self.blocks[latest.block as usize])
    }

    /// The latest event at `address`: `None` when none was seen, `Some(None)` when it was a
    /// free, else the block it allocated. One look-up where
    /// [`has_events_at`](Self::has_events_at) and [`live_at`](Self::live_at) make two.
    pub fn event_at(&self, address: u64) -> Option<Option<&B>> {
        let latest = self.by_address.get(&address)?;
        Some((latest.block != FREED).then(|| &self.blocks[latest.block as usize]))
    }

    /// Calls `each` with every address an allocation or free was seen at.
    pub fn for_each_address(&self, mut each: impl FnMut(u64)) {
        self.by_address.keys().for_each(|&address| each(address));
    }

    /// Whether any allocation or free of `address` was seen.
    pub fn has_events_at(&self, address: u64) -> bool {
        self.by_address.contains_key(&address)
    }

    /// Makes room for `additional` more addresses.
    pub fn reserve(&mut self, additional: usize) {
        self.by_address.reserve(additional);
        self.blocks.reserve(additional);
    }
}

/// Blocks read together by [`LiveSet::for_each_live`].
const LIVE_BATCH: usize = 32;

fn each_of_batch<B: LiveBlock>(blocks: &[B], addresses: &[u64], indices: &[u32], each: &mut impl FnMut(u64, &B)) {
    let mut batch: [Option<B>; LIVE_BATCH] = [None; LIVE_BATCH];
    for (slot, &index) in batch.iter_mut().zip(indices) {
        *slot = Some(blocks[index as usize]);
    }
    for (&address, block) in addresses.iter().zip(batch.iter().flatten()) {
        each(address, block);
    }
}

fn add_live(totals: &mut Totals, size: u64) {
    totals.live_bytes += size;
    totals.live_blocks += 1;
    totals.peak_bytes = totals.peak_bytes.max(totals.live_bytes);
}

fn remove_live(totals: &mut Totals, size: u64) {
    totals.live_bytes -= size;
    totals.live_blocks -= 1;
}

/// Puts `block` in a vacant slot of `blocks` (or a new one) and returns its index.
fn store<B>(blocks: &mut Vec<B>, vacant: &mut Vec<u32>, block: B) -> u32 {
    match vacant.pop() {
        Some(index) => {
            blocks[index as usize] = block;
            index
        }
        None => {
            blocks.push(block);
            // More than 4 billion blocks live at once cannot fit in memory anyway.
            u32::try_from(blocks.len() - 1).unwrap_or(FREED - 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block known by its sequence number and size only: all the live set looks at.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct SizedBlock {
        seq: u64,
        size: u64,
    }

    impl LiveBlock for SizedBlock {
        fn seq(&self) -> u64 {
            self.seq
        }

        fn size(&self) -> u64 {
            self.size
        }
    }

    fn block(seq: u64, size: u64) -> SizedBlock {
        SizedBlock { seq, size }
    }

    /// `alloc_and_free` leaves the same live blocks and totals as `alloc` then `free`, in
    /// every order the pair can meet an address's earlier and later events.
    #[test]
    fn a_pair_at_once_matches_the_pair_one_by_one() {
        let histories: &[&[(u64, Option<u64>)]] = &[
            &[],
            &[(1, Some(8))],
            &[(1, Some(8)), (2, None)],
            &[(12, Some(8))],
            &[(12, None)],
            &[(20, Some(64))],
            &[(20, None)],
            &[(1, Some(8)), (15, None)],
            &[(1, Some(8)), (15, None), (16, Some(4))],
        ];
        for history in histories {
            for (alloc_seq, free_seq) in [(10, 11), (10, 14), (13, 17), (10, 25), (30, 31)] {
                let replay = |live: &mut LiveSet<SizedBlock>| {
                    live.alloc(0x40, block(3, 1000));
                    for &(seq, size) in history.iter() {
                        match size {
                            Some(size) => live.alloc(0x10, block(seq, size)),
                            None => {
                                live.free(0x10, seq);
                            }
                        }
                    }
                };
                let (mut one_by_one, mut at_once) = (LiveSet::new(), LiveSet::new());
                replay(&mut one_by_one);
                replay(&mut at_once);
                one_by_one.alloc(0x10, block(alloc_seq, 32));
                one_by_one.free(0x10, free_seq);
                at_once.alloc_and_free(0x10, block(alloc_seq, 32), free_seq);
                let case = format!("history {history:?}, pair {alloc_seq}/{free_seq}");
                assert_eq!(at_once.live_blocks(), one_by_one.live_blocks(), "{case}");
                assert_eq!(at_once.totals(), one_by_one.totals(), "{case}");
                // Later events see the same latest event for the address.
                one_by_one.alloc(0x10, block(40, 2));
                at_once.alloc(0x10, block(40, 2));
                one_by_one.free(0x10, 12);
                at_once.free(0x10, 12);
                assert_eq!(at_once.live_blocks(), one_by_one.live_blocks(), "{case}, then more");
                assert_eq!(at_once.totals(), one_by_one.totals(), "{case}, then more");
            }
        }
    }

    #[test]
    fn in_order_pairs_cancel() {
        let mut live = LiveSet::new();
        live.alloc(0x10, block(1, 8));
        live.free(0x10, 2);
        live.alloc(0x10, block(3, 16));
        assert_eq!(live.live_blocks(), vec![(0x10, block(3, 16))]);
        let totals = live.totals();
        assert_eq!(
            (totals.allocations, totals.frees, totals.live_bytes, totals.peak_bytes),
            (2, 1, 16, 16)
        );
    }

    #[test]
    fn reuse_across_threads_arriving_out_of_order() {
        // Thread B's reuse of 0x10 (seq 5) arrives before thread A's free (seq 4) and even
        // before A's original allocation (seq 1).
        let mut live = LiveSet::new();
        live.alloc(0x10, block(5, 32));
        live.free(0x10, 4);
        live.alloc(0x10, block(1, 8));
        assert_eq!(live.live_blocks(), vec![(0x10, block(5, 32))]);
        assert_eq!(live.totals().frees, 1);
        assert_eq!(live.totals().unmatched_frees, 0);
    }

    #[test]
    fn late_free_of_the_second_block() {
        let mut live = LiveSet::new();
        live.alloc(0x10, block(1, 8));
        live.alloc(0x10, block(3, 8));
        live.free(0x10, 4);
        live.free(0x10, 2);
        assert!(live.live_blocks().is_empty());
        assert_eq!(live.totals().live_bytes, 0);
    }

    #[test]
    fn a_pair_still_to_arrive_between_two_seen_events() {
        // True order: A1 F2 A3 F4. Thread B's free (4) arrives before thread A's batch
        // holding 2 and 3: 1 and 4 are adjacent among the events seen, but not a pair.
        let mut live = LiveSet::new();
        live.alloc(0x10, block(1, 8));
        live.free(0x10, 4);
        live.free(0x10, 2);
        live.alloc(0x10, block(3, 8));
        assert!(live.live_blocks().is_empty());
        let totals = live.totals();
        assert_eq!((totals.allocations, totals.frees, totals.unmatched_frees), (2, 2, 0));
        assert_eq!((totals.live_blocks, totals.live_bytes), (0, 0));
    }

    #[test]
    fn every_live_block_and_only_those_can_be_changed_in_place() {
        let mut live = LiveSet::new();
        live.alloc(0x10, block(1, 8));
        live.alloc(0x20, block(2, 8));
        live.alloc(0x30, block(3, 8));
        live.free(0x20, 4);
        live.alloc(0x20, block(5, 8));
        live.free(0x10, 6);
        live.alloc(0x40, block(7, 8));
        live.free(0x40, 8);
        let mut seen = Vec::new();
        live.for_each_live_mut(|block| {
            seen.push(block.seq);
            block.size = 9;
        });
        seen.sort_unstable();
        assert_eq!(seen, [3, 5]);
        assert_eq!(live.live_blocks(), vec![(0x30, block(3, 9)), (0x20, block(5, 9))]);
    }

    #[test]
    fn frees_of_unknown_blocks_are_kept_apart() {
        let mut live = LiveSet::new();
        live.free(0x20, 1);
        live.alloc(0x20, block(2, 4));
        assert_eq!(live.live_blocks(), vec![(0x20, block(2, 4))]);
        assert_eq!(live.totals().unmatched_frees, 1);
    }
}
