//! The marking's reader: block and word reads through the scan's [`MemoryReader`], the
//! deadline, and the states a block goes through (shared by the flood from the roots and the
//! structure of lost memory).
//!
//! Must never write to the program's memory: every read goes through the reader.

use std::time::Instant;

use super::blocks::Blocks;
use crate::python::gc::gc_header;
use crate::sys::memory::{MemoryReader, MAX_WINDOW};

/// Bytes read from memory at a time.
const WINDOW: usize = MAX_WINDOW;
/// The shortest run of blocks read into the window at once; shorter ones are read through
/// the reader's page cache.
const MIN_RUN: u64 = 2 * 4096;
/// How often the deadline is checked, in blocks or windows processed.
const DEADLINE_CHECK_EVERY: u32 = 1024;

/// A block's state in the flood from the roots: not reached (yet), reached only through
/// pointers into its middle, reached through a pointer to its start.
pub(super) const UNREACHED: u8 = 0;
pub(super) const POSSIBLY: u8 = 1;
pub(super) const REACHABLE: u8 = 2;

/// Reads the blocks for one scan, within its deadline, and counts the heap bytes read.
pub(super) struct Marker<'a> {
    pub(super) blocks: &'a Blocks,
    pub(super) memory: &'a mut MemoryReader,
    pub(super) deadline: Instant,
    pub(super) ticks: u32,
    pub(super) out_of_time: bool,
    pub(super) heap_bytes: u64,
}

impl Marker<'_> {
    pub(super) fn tick(&mut self) -> bool {
        self.ticks += 1;
        if self.ticks.is_multiple_of(DEADLINE_CHECK_EVERY) && Instant::now() >= self.deadline {
            self.out_of_time = true;
        }
        !self.out_of_time
    }

    /// Calls `each` with the address and value of every aligned word in `[start, end)`,
    /// skipping `[skip_start, skip_end)`.
    pub(super) fn words(&mut self, start: u64, end: u64, skip: (u64, u64), mut each: impl FnMut(u64, u64)) {
        let mut at = start & !7;
        while at < end && !self.out_of_time {
            let len = ((end - at) as usize).min(WINDOW);
            let bytes = self.memory.bytes(at, len);
            let read = bytes.len();
            for (i, chunk) in bytes.chunks_exact(8).enumerate() {
                let address = at + (i as u64) * 8;
                if address >= skip.0 && address < skip.1 {
                    continue;
                }
                each(address, u64::from_ne_bytes(chunk.try_into().unwrap_or_default()));
            }
            if read < len {
                // An unmapped page: skip to the next one.
                at = (at + read as u64 + 4096) & !4095;
            } else {
                at += len as u64;
            }
            self.tick();
        }
    }

    /// Before reading block `index`: unless the reader's window holds it, reads it together
    /// with the blocks of `rest` (those to be read next, in address order) that follow it
    /// closely.
    pub(super) fn prefetch(&mut self, index: usize, rest: impl Iterator<Item = usize>, wanted: impl Fn(usize) -> bool) {
        let start = self.blocks.addresses[index];
        let end = start + self.blocks.scan_limits[index];
        if end - start >= MAX_WINDOW as u64 || self.memory.holds(start & !7, end) {
            return;
        }
        let (start, end) = self
            .blocks
            .run(index, rest, wanted, (0, u64::MAX), &self.blocks.scan_limits);
        // A short run is left to the reader's page cache: a walk down a linked list (a block
        // per level, or the lost blocks of a chain read backwards) would otherwise read a
        // window per block, where a page serves the neighbours too.
        if end - start >= MIN_RUN {
            self.memory.prefetch(start & !7, end);
        }
    }

    /// The words of block `index`, without its GC header.
    pub(super) fn block_words(&mut self, index: usize, each: impl FnMut(u64, u64)) {
        let start = self.blocks.addresses[index];
        let end = start + self.blocks.scan_limits[index];
        let object = u64::from(self.blocks.object_offsets[index]);
        let skip = if object != 0 {
            (start + gc_header(object).start, start + object)
        } else {
            (0, 0)
        };
        self.heap_bytes += end - start;
        self.words(start, end, skip, each);
    }
}
