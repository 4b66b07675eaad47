//! Python objects taken off a free list ("rebirths"): the block the object lies in is freed
//! and allocated again with the stack of the constructor's caller.
//!
//! The collector may meet a rebirth before the allocation of its block. A sweep takes a
//! thread's partial batch while the full batch the thread sent just before it may still wait
//! in the channel; another thread's allocation may still wait in that thread's slot. Such a
//! rebirth is kept and tried again after each batch, until its block turns up or every event
//! that could hold the block's allocation has been taken in: the messages queued when it was
//! kept, and the partial batches of a whole sweep after it. Dropping it then is right: the
//! object's memory was no block of its own, or was freed meanwhile.
//!
//! Must never keep more than [`super::pending_rebirths`] allows: the memory is the program's.

use libleak_format::{Alloc, AllocKind, Free};

use super::pending_rebirths::Rebirth;
use super::{Collector, CollectorBlock};

/// Where the block of an object starts, at most: before a GC header and a pre-header.
const HEADER_OFFSETS: [u64; 3] = [0, 16, 32];

/// What became of a rebirth.
enum Outcome {
    Applied,
    /// No live block lies under the object (yet).
    NoBlock,
    /// The block live there was allocated after the rebirth: the rebirth is stale.
    Stale,
}

impl Collector {
    /// A rebirth taken in from a batch: applied now, or kept until its block is taken in.
    pub(super) fn reborn(&mut self, rebirth: Rebirth) {
        if let Outcome::NoBlock = self.apply_rebirth(rebirth) {
            let queued = self.events.len();
            self.rebirths.keep(rebirth, queued);
        }
    }

    /// Tries the kept rebirths again; with `last_chance` (everything recorded has been taken
    /// in), those still without a block are dropped.
    pub(super) fn retry_rebirths(&mut self, last_chance: bool) {
        let pending = self.rebirths.take();
        for kept in pending {
            let done = match self.apply_rebirth(kept.rebirth) {
                Outcome::Applied | Outcome::Stale => true,
                Outcome::NoBlock => last_chance || self.rebirths.expired(&kept),
            };
            if !done {
                self.rebirths.put_back(kept);
            }
        }
    }

    /// The rebirth's block is the live one that starts at the object or a header's size
    /// before it and covers it: freed and allocated again with the rebirth's stack, keeping
    /// its requested size.
    fn apply_rebirth(&mut self, rebirth: Rebirth) -> Outcome {
        let object = rebirth.object;
        let mut stale = false;
        let found = HEADER_OFFSETS.into_iter().find_map(|before| {
            let address = object.checked_sub(before)?;
            let block = self.live_block_at(address)?;
            if address + block.size <= object {
                return None;
            }
            // A block allocated after the rebirth (its free already taken in from another
            // thread's batch) is not the one reborn.
            stale |= block.seq >= rebirth.free_seq;
            (block.seq < rebirth.free_seq).then_some((address, block))
        });
        let Some((address, block)) = found else {
            return if stale { Outcome::Stale } else { Outcome::NoBlock };
        };
        self.live.free(address, rebirth.free_seq);
        self.encoder.free(&Free {
            seq: rebirth.free_seq,
            thread_id: rebirth.thread_id,
            address,
        });
        let reborn = CollectorBlock {
            seq: rebirth.alloc_seq,
            size: block.size,
        };
        self.live.alloc(address, reborn);
        self.large.note(address, reborn, &self.live);
        self.encoder.alloc(&Alloc {
            seq: rebirth.alloc_seq,
            thread_id: rebirth.thread_id,
            address,
            size: block.size,
            stack: rebirth.stack,
            kind: AllocKind::FreeListReuse,
        });
        Outcome::Applied
    }
}

#[cfg(test)]
mod tests {
    use libleak_format::{ProcessInfo, Stats};

    use super::super::{CollectorStart, EventSource, ScanSettings};
    use super::*;
    use crate::batch::{push_alloc, push_reborn, BatchTag, Header};
    use crate::config::ChildScan;

    struct NoThreads;

    impl EventSource for NoThreads {
        fn take_partial_batches(&self, _each: &mut dyn FnMut(Vec<u64>)) {}
        fn stats(&self) -> Stats {
            Stats::default()
        }
    }

    static NO_THREADS: NoThreads = NoThreads;

    fn collector(name: &str) -> Box<Collector> {
        let path = std::env::temp_dir().join(format!("libleak-rebirths-{}-{name}.trace", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let file = super::super::TraceFile::new(file, path.display().to_string()).unwrap();
        let (_events_tx, events) = crossbeam_channel::bounded(1);
        let (spare_batches, _spare_rx) = crossbeam_channel::bounded(1);
        let collector = Collector::new(CollectorStart {
            file,
            info: ProcessInfo::default(),
            modules: Vec::new(),
            python_runtime: None,
            events,
            spare_batches,
            source: &NO_THREADS,
            scan: ScanSettings {
                own_code: 0,
                time_limit: None,
                child_scan: ChildScan::Own,
            },
        })
        .unwrap();
        let _ = std::fs::remove_file(&path);
        Box::new(collector)
    }

    fn header(tag: BatchTag, kind: AllocKind) -> Header {
        Header {
            tag,
            kind,
            frame_count: 1,
            shared_frames: 0,
            thread_id: 1,
        }
    }

    fn alloc(seq: u64, address: usize, size: usize) -> Vec<u64> {
        let mut batch = Vec::new();
        push_alloc(
            &mut batch,
            header(BatchTag::Alloc, AllocKind::Malloc),
            seq,
            address,
            size,
        );
        batch.push(0x4010);
        batch
    }

    fn rebirth(free_seq: u64, object: usize) -> Vec<u64> {
        let mut batch = Vec::new();
        let header = header(BatchTag::Reborn, AllocKind::FreeListReuse);
        push_reborn(&mut batch, header, free_seq, free_seq + 1, object);
        batch.push(0x4020);
        batch
    }

    fn live_seq(collector: &Collector, address: u64) -> Option<u64> {
        collector.live.live_at(address).map(|block| block.seq)
    }

    /// A sweep's batch can come before the batch its thread sent earlier: the rebirth waits
    /// for its block's allocation.
    #[test]
    fn a_rebirth_taken_in_before_its_blocks_allocation_is_applied_when_the_allocation_comes() {
        let mut collector = collector("late");
        collector.process_batch(rebirth(10, 0x5010));
        assert_eq!(live_seq(&collector, 0x5000), None);
        collector.process_batch(alloc(5, 0x5000, 56));
        assert_eq!(live_seq(&collector, 0x5000), Some(11));
        assert_eq!(collector.live.live_at(0x5000).map(|block| block.size), Some(56));
        assert!(collector.rebirths.is_empty());
    }

    #[test]
    fn a_rebirth_older_than_the_block_live_under_it_is_dropped() {
        let mut collector = collector("stale");
        collector.process_batch(rebirth(10, 0x5010));
        collector.process_batch(alloc(20, 0x5000, 56));
        assert_eq!(live_seq(&collector, 0x5000), Some(20));
        assert!(collector.rebirths.is_empty());
    }

    #[test]
    fn a_rebirth_whose_block_never_comes_is_dropped_after_a_whole_sweep_or_at_the_end() {
        let mut collector = collector("never");
        collector.process_batch(rebirth(10, 0x5010));
        collector.rebirths.sweep_done();
        collector.process_batch(Vec::new());
        assert!(!collector.rebirths.is_empty(), "kept through the sweep under way");
        collector.rebirths.sweep_done();
        collector.process_batch(Vec::new());
        assert!(collector.rebirths.is_empty());

        collector.process_batch(rebirth(30, 0x6010));
        assert!(!collector.rebirths.is_empty());
        collector.take_in_everything();
        assert!(collector.rebirths.is_empty());
        collector.process_batch(alloc(25, 0x6000, 56));
        assert_eq!(live_seq(&collector, 0x6000), Some(25));
    }
}
