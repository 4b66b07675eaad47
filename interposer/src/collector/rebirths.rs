//! Python objects taken off a free list ("rebirths"): the object's block (the recorder knows
//! where it starts, the object's header before it) is freed and allocated again with the
//! stack of the constructor's caller. Only a live block starting there is the one: a block
//! under the object that starts elsewhere is a predecessor whose free is not taken in yet,
//! gone before the object's block took its memory.
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

/// The most free-list slots remembered (see [`Collector::stale_references`]).
const MAX_STALE_SLOTS: usize = 4096;

/// What became of a rebirth.
enum Outcome {
    Applied,
    /// No live block starts where the object's block does (yet).
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

    /// The free-list slots that handed out an object still live (the same allocation), as
    /// (slot, block): a scan does not read a reference in such a slot (see
    /// [`crate::python::free_lists`]).
    pub(super) fn stale_references(&self) -> Vec<(u64, u64)> {
        let mut stale: Vec<(u64, u64)> = self
            .stale_slots
            .iter()
            .filter(|(_, &(block, seq))| self.live.live_at(block).is_some_and(|live| live.seq == seq))
            .map(|(&slot, &(block, _))| (slot, block))
            .collect();
        stale.sort_unstable();
        stale
    }

    /// The rebirth's block, live where the recorder said it starts: freed and allocated again
    /// with the rebirth's stack, keeping its requested size.
    fn apply_rebirth(&mut self, rebirth: Rebirth) -> Outcome {
        let address = rebirth.block;
        let Some(block) = self.live_block_at(address) else {
            return Outcome::NoBlock;
        };
        // A block allocated after the rebirth (its free already taken in from another
        // thread's batch) is not the one reborn.
        if block.seq >= rebirth.free_seq {
            return Outcome::Stale;
        }
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
        for slot in rebirth.stale.addresses() {
            // A few hundred slots at most (CPython's arrays hold 80); a bound all the same.
            if self.stale_slots.len() >= MAX_STALE_SLOTS {
                self.stale_slots.clear();
            }
            self.stale_slots.insert(slot as u64, (address, rebirth.alloc_seq));
        }
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

    /// Threads whose partial batches are those put in it.
    struct Threads(std::sync::Mutex<Vec<Vec<u64>>>);

    impl EventSource for Threads {
        fn take_partial_batches(&self, each: &mut dyn FnMut(Vec<u64>)) {
            let taken = std::mem::take(&mut *self.0.lock().unwrap());
            taken.into_iter().for_each(each);
        }
        fn stats(&self) -> Stats {
            Stats::default()
        }
    }

    static NO_THREADS: Threads = Threads(std::sync::Mutex::new(Vec::new()));

    fn collector(name: &str) -> Box<Collector> {
        collector_with(name, &NO_THREADS, crossbeam_channel::bounded(1).1)
    }

    fn collector_with(
        name: &str,
        source: &'static Threads,
        events: crossbeam_channel::Receiver<super::super::Message>,
    ) -> Box<Collector> {
        let path = std::env::temp_dir().join(format!("libleak-rebirths-{}-{name}.trace", std::process::id()));
        let file = std::fs::File::create(&path).unwrap();
        let file = super::super::TraceFile::new(file, path.display().to_string()).unwrap();
        let (spare_batches, _spare_rx) = crossbeam_channel::bounded(1);
        let collector = Collector::new(CollectorStart {
            file,
            info: ProcessInfo::default(),
            modules: Vec::new(),
            python_runtime: None,
            events,
            spare_batches,
            source,
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

    fn free(seq: u64, address: usize) -> Vec<u64> {
        let mut batch = Vec::new();
        crate::batch::push_free(&mut batch, 1, seq, address);
        batch
    }

    fn rebirth(free_seq: u64, block: usize) -> Vec<u64> {
        let mut batch = Vec::new();
        let header = header(BatchTag::Reborn, AllocKind::FreeListReuse);
        push_reborn(&mut batch, header, (free_seq, free_seq + 1), block, Default::default());
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
        collector.process_batch(rebirth(10, 0x5000));
        assert_eq!(live_seq(&collector, 0x5000), None);
        collector.process_batch(alloc(5, 0x5000, 56));
        assert_eq!(live_seq(&collector, 0x5000), Some(11));
        assert_eq!(collector.live.live_at(0x5000).map(|block| block.size), Some(56));
        assert!(collector.rebirths.is_empty());
    }

    #[test]
    fn a_rebirth_older_than_the_block_live_under_it_is_dropped() {
        let mut collector = collector("stale");
        collector.process_batch(rebirth(10, 0x5000));
        collector.process_batch(alloc(20, 0x5000, 56));
        assert_eq!(live_seq(&collector, 0x5000), Some(20));
        assert!(collector.rebirths.is_empty());
    }

    #[test]
    fn a_rebirth_whose_block_never_comes_is_dropped_after_a_whole_sweep_or_at_the_end() {
        let mut collector = collector("never");
        collector.process_batch(rebirth(10, 0x5000));
        collector.rebirths.sweep_done();
        collector.process_batch(Vec::new());
        assert!(!collector.rebirths.is_empty(), "kept through the sweep under way");
        collector.rebirths.sweep_done();
        collector.process_batch(Vec::new());
        assert!(collector.rebirths.is_empty());

        collector.process_batch(rebirth(30, 0x6000));
        assert!(!collector.rebirths.is_empty());
        collector.take_in_everything();
        assert!(collector.rebirths.is_empty());
        collector.process_batch(alloc(25, 0x6000, 56));
        assert_eq!(live_seq(&collector, 0x6000), Some(25));
    }

    /// The object's block took the memory of a predecessor whose free another thread's
    /// batch has not brought yet: the rebirth is the block where the recorder said, not the
    /// predecessor under the object.
    #[test]
    fn a_rebirth_is_the_block_where_the_recorder_said_not_a_predecessor_still_live() {
        let mut collector = collector("predecessor");
        collector.process_batch(alloc(3, 0x5010, 56));
        collector.process_batch(alloc(5, 0x5000, 64));
        collector.process_batch(rebirth(10, 0x5000));
        assert_eq!(live_seq(&collector, 0x5000), Some(11));
        collector.process_batch(free(4, 0x5010));
        assert_eq!(live_seq(&collector, 0x5010), None);
        assert_eq!(live_seq(&collector, 0x5000), Some(11));
    }

    static ONE_THREAD: Threads = Threads(std::sync::Mutex::new(Vec::new()));

    /// A thread's partial batch is taken in after the full batches it sent before, still
    /// in the channel: its rebirth then meets the block it reused, not the one before.
    #[test]
    fn a_sweep_takes_in_a_threads_partial_batch_after_its_batches_in_the_channel() {
        let (sender, events) = crossbeam_channel::bounded(4);
        let mut collector = collector_with("sweep-order", &ONE_THREAD, events);
        collector.process_batch(alloc(3, 0x5010, 56));
        let mut sent = free(4, 0x5010);
        sent.extend(alloc(5, 0x5000, 64));
        sender.send(super::super::Message::Batch(sent)).unwrap();
        ONE_THREAD.0.lock().unwrap().push(rebirth(10, 0x5000));
        collector.sweep();
        assert_eq!(live_seq(&collector, 0x5010), None);
        assert_eq!(live_seq(&collector, 0x5000), Some(11));
        assert!(collector.held_back.is_empty());
        assert!(collector.rebirths.is_empty());
    }
}
