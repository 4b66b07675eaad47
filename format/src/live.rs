//! The live set: which blocks are allocated at the end of an event stream. Shared by the
//! interposer's writer (which needs the live set at exit for the reachability scan) and the
//! reporter (which rebuilds it from the trace), so that both agree block for block.
//!
//! Events reach the trace in batch order, not in program order: a free on one thread can
//! appear after a later allocation of the same address on another. Sequence numbers give
//! the true order (the tracker takes a free's number before the real free and an
//! allocation's after the real allocation). Per address, true order alternates
//! alloc, free, alloc, …; so an alloc immediately followed by a free in sequence order among
//! the events seen so far is a matched pair, whatever arrives later, and both can be
//! forgotten. What remains per address is tiny, so memory follows the live set, not the
//! trace length.
//!
//! Must stay pure (no I/O) so that it can be tested on synthetic events.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use smallvec::SmallVec;

/// What the live set needs to know of a block; the rest is the caller's payload.
pub trait LiveBlock: Copy {
    fn seq(&self) -> u64;
    fn size(&self) -> u64;
}

/// A block known by its sequence number and size only (the writer's view, and tests').
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizedBlock {
    pub seq: u64,
    pub size: u64,
}

impl LiveBlock for SizedBlock {
    fn seq(&self) -> u64 {
        self.seq
    }

    fn size(&self) -> u64 {
        self.size
    }
}

#[derive(Clone, Copy, Debug)]
enum Pending<B> {
    Alloc(B),
    Free { seq: u64 },
}

impl<B: LiveBlock> Pending<B> {
    fn seq(&self) -> u64 {
        match self {
            Pending::Alloc(block) => block.seq(),
            Pending::Free { seq } => *seq,
        }
    }
}

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
}

pub struct LiveSet<B> {
    by_address: HashMap<u64, SmallVec<[Pending<B>; 1]>, BuildHasherDefault<AddressHasher>>,
    totals: Totals,
}

impl<B: LiveBlock> Default for LiveSet<B> {
    fn default() -> Self {
        LiveSet {
            by_address: HashMap::default(),
            totals: Totals::default(),
        }
    }
}

impl<B: LiveBlock> LiveSet<B> {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn alloc(&mut self, address: u64, block: B) {
        self.totals.allocations += 1;
        self.totals.live_bytes += block.size();
        self.totals.live_blocks += 1;
        self.totals.peak_bytes = self.totals.peak_bytes.max(self.totals.live_bytes);
        self.insert(address, Pending::Alloc(block));
    }

    pub fn free(&mut self, address: u64, seq: u64) {
        self.insert(address, Pending::Free { seq });
    }

    fn insert(&mut self, address: u64, event: Pending<B>) {
        let events = self.by_address.entry(address).or_default();
        let at = events.partition_point(|e| e.seq() < event.seq());
        events.insert(at, event);
        // The new event can only complete a pair with its immediate neighbours.
        let pair_start = match event {
            Pending::Alloc(_) => (matches!(events.get(at + 1), Some(Pending::Free { .. }))).then_some(at),
            Pending::Free { .. } => (at > 0 && matches!(events.get(at - 1), Some(Pending::Alloc(_)))).then(|| at - 1),
        };
        if let Some(start) = pair_start {
            if let Pending::Alloc(block) = events[start] {
                self.totals.live_bytes -= block.size();
                self.totals.live_blocks -= 1;
                self.totals.frees += 1;
            }
            events.drain(start..start + 2);
        }
        if events.is_empty() {
            self.by_address.remove(&address);
        }
    }

    /// Totals so far, counting frees that matched nothing as unmatched.
    pub fn totals(&self) -> Totals {
        let mut totals = self.totals;
        totals.unmatched_frees = self
            .by_address
            .values()
            .flatten()
            .filter(|e| matches!(e, Pending::Free { .. }))
            .count() as u64;
        totals
    }

    /// Every block still live with its address, in sequence order.
    pub fn live_blocks(&self) -> Vec<(u64, B)> {
        let mut blocks: Vec<(u64, B)> = self
            .by_address
            .iter()
            .flat_map(|(&address, events)| {
                events.iter().filter_map(move |e| match e {
                    Pending::Alloc(block) => Some((address, *block)),
                    Pending::Free { .. } => None,
                })
            })
            .collect();
        blocks.sort_by_key(|(_, b)| b.seq());
        blocks
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(seq: u64, size: u64) -> SizedBlock {
        SizedBlock { seq, size }
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
    fn frees_of_unknown_blocks_are_kept_apart() {
        let mut live = LiveSet::new();
        live.free(0x20, 1);
        live.alloc(0x20, block(2, 4));
        assert_eq!(live.live_blocks(), vec![(0x20, block(2, 4))]);
        assert_eq!(live.totals().unmatched_frees, 1);
    }
}
