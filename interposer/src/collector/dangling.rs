//! Words of the interpreter's static data that still point inside a block freed since: a
//! cache CPython never clears (3.9–3.11's parser keeps, in a static, a `Name` node of an AST
//! arena it frees after each compile). Once malloc hands that memory out again, the word
//! lands inside a new block, at its very start now and then, and a scan took it for a
//! reference: a leaked block looked reachable in about one run of a hundred.
//!
//! The collector notes the large blocks freed (an arena's are 8 KiB) and, at most every
//! [`CHECK_INTERVAL`] after such a free, reads the interpreter's writable segments for words
//! pointing inside one, past where a pointer to the block or to an object heading it would
//! point. Such a word names nothing allocated there since for as long as it keeps that value
//! (see `reach/stale.rs`). A word that points at the start of a block live again is left
//! alone: the program may have stored it since (a cache naming a new object). That is judged
//! after the collector took in every event recorded before the read: its view of the live
//! blocks otherwise lags the program's memory.
//!
//! Must stay off the collector's hot path: one comparison per free; a read of the static
//! data only after large frees, and never more often than [`CHECK_INTERVAL`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libleak_format::Module;

use super::large::LARGE;
use crate::sys::memory::OwnMemory;

/// Checks after large frees are at least this far apart.
const CHECK_INTERVAL: Duration = Duration::from_millis(20);
/// Large frees remembered between two checks; those past this many are not checked.
const MOST_FREED: usize = 1 << 16;
/// Dangling words remembered.
const MOST_WORDS: usize = 1024;
/// How far into a block a pointer to the block, or to the object it holds, points: a GC
/// header's length. A word pointing further in was no pointer to a new block's start.
const OBJECT_WITHIN: u64 = 16;
/// The static data is read this many bytes at a time.
const READ_BYTES: usize = 64 * 1024;

#[derive(Default)]
pub(super) struct DanglingStatics {
    /// (start, end) of the large blocks freed since the last check.
    freed: Vec<(u64, u64)>,
    /// Where → value: words that pointed inside a freed block, still holding that value at
    /// the last check.
    words: HashMap<u64, u64>,
    /// The interpreter's writable segments, once an interpreter is found.
    segments: Option<Vec<(u64, u64)>>,
    last_check: Option<Instant>,
    /// Reads that leave the static data shared with forked children (or the parent): a fork
    /// child read its 1.7 MB (CPython 3.11) by copying every page it still shared.
    memory: OwnMemory,
    /// A check ran right before a fork (see [`DanglingStatics::checked_before_fork`]).
    checked_before_fork: bool,
}

impl DanglingStatics {
    /// After the free of a block of `size` bytes at `address`.
    #[inline]
    pub(super) fn note_free(&mut self, address: u64, size: u64) {
        if size > LARGE && self.freed.len() < MOST_FREED {
            self.freed.push((address, address + size));
        }
    }

    /// A check just ran and the process forks (parent and child both keep this state): from
    /// then on a check reads only the pages written since the fork. A page neither process
    /// wrote holds what it held at that check, and its words were judged against the blocks
    /// freed until then. What it misses: a word stored before the fork pointing inside a
    /// block live then and freed since, its page never written again (the parser's static is
    /// written during the compile whose arena it then points into). A child read its static
    /// data three times, 1.7 MB each, in CPython 3.11.
    pub(super) fn checked_before_fork(&mut self) {
        self.checked_before_fork = true;
    }

    pub(super) fn check_due(&self) -> bool {
        !self.freed.is_empty() && self.last_check.is_none_or(|at| at.elapsed() >= CHECK_INTERVAL)
    }

    /// Reads the interpreter's static data for words pointing inside the blocks freed since
    /// the last check: (where, value). The caller takes in every event recorded before this
    /// read, then passes them to [`DanglingStatics::keep`].
    pub(super) fn read_candidates(&mut self, modules: &[Module]) -> Vec<(u64, u64)> {
        self.last_check = Some(Instant::now());
        let freed = std::mem::take(&mut self.freed);
        let memory = &mut self.memory;
        self.words.retain(|&at, &mut value| word_at(memory, at) == Some(value));
        let mut candidates = Vec::new();
        if freed.is_empty() {
            return candidates;
        }
        let Some(mut segments) = self.interpreter_segments(modules) else {
            return candidates;
        };
        if self.checked_before_fork {
            if let Some(written) = crate::sys::pagemap::written_parts(&segments) {
                segments = written;
            }
        }
        let freed = FreedBlocks::new(freed);
        let (lowest, highest) = (freed.lowest(), freed.highest());
        let mut buffer = vec![0u8; READ_BYTES];
        for (start, end) in segments {
            let mut at = start.next_multiple_of(8);
            while at < end && candidates.len() < MOST_WORDS {
                let len = (READ_BYTES as u64).min(end - at) as usize & !7;
                if len == 0 {
                    break;
                }
                let read = self.memory.read(at, &mut buffer[..len]) & !7;
                for (index, word) in buffer[..read].chunks_exact(8).enumerate() {
                    let value = u64::from_ne_bytes(word.try_into().unwrap_or_default());
                    if value >= lowest && value < highest && freed.holds_inside(value) {
                        candidates.push((at + 8 * index as u64, value));
                    }
                }
                if read < len {
                    break;
                }
                at += len as u64;
            }
        }
        candidates
    }

    /// Keeps the candidates that name no live block's start (nor the object heading one):
    /// with every block allocated before the read taken in, such a word was stored before its
    /// block was freed. One that does may have been stored since; it is left alone.
    /// `is_block_start(address)`: a live block starts at `address`.
    pub(super) fn keep(&mut self, candidates: Vec<(u64, u64)>, is_block_start: &dyn Fn(u64) -> bool) {
        for (at, value) in candidates {
            if self.words.len() >= MOST_WORDS {
                break;
            }
            if !is_block_start(value) && !is_block_start(value - OBJECT_WITHIN) {
                self.words.insert(at, value);
            }
        }
    }

    /// (where, value) of the dangling words known.
    pub(super) fn words(&self) -> Vec<(u64, u64)> {
        self.words.iter().map(|(&at, &value)| (at, value)).collect()
    }

    fn interpreter_segments(&mut self, modules: &[Module]) -> Option<Vec<(u64, u64)>> {
        if self.segments.is_none() {
            let runtime = crate::python::runtime_address()?;
            let module = modules.iter().find(|m| m.contains(runtime))?;
            self.segments = Some(crate::reach::roots::writable_segments(module).collect());
        }
        self.segments.clone()
    }
}

/// The blocks freed since the last check, sorted by start.
struct FreedBlocks {
    blocks: Vec<(u64, u64)>,
    /// Per block, the furthest end of it and of those before it: blocks overlap (memory
    /// freed, allocated again a little further on, freed again), and this bounds the walk back.
    ends_so_far: Vec<u64>,
}

impl FreedBlocks {
    fn new(mut blocks: Vec<(u64, u64)>) -> FreedBlocks {
        blocks.sort_unstable();
        let ends_so_far = blocks
            .iter()
            .scan(0, |furthest, &(_, end)| {
                *furthest = end.max(*furthest);
                Some(*furthest)
            })
            .collect();
        FreedBlocks { blocks, ends_so_far }
    }

    fn lowest(&self) -> u64 {
        self.blocks.first().map_or(u64::MAX, |b| b.0)
    }

    fn highest(&self) -> u64 {
        self.ends_so_far.last().copied().unwrap_or(0)
    }

    /// Whether `value` points inside a freed block, past where a pointer to the block or to
    /// an object heading it would point.
    fn holds_inside(&self, value: u64) -> bool {
        let after = self.blocks.partition_point(|&(start, _)| start <= value);
        (0..after)
            .rev()
            .take_while(|&index| self.ends_so_far[index] > value)
            .any(|index| value - self.blocks[index].0 > OBJECT_WITHIN && value < self.blocks[index].1)
    }
}

fn word_at(memory: &mut OwnMemory, address: u64) -> Option<u64> {
    let mut bytes = [0u8; 8];
    (memory.read(address, &mut bytes) == 8).then(|| u64::from_ne_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::FreedBlocks;

    #[test]
    fn a_value_inside_any_of_overlapping_freed_blocks_is_inside() {
        let freed = FreedBlocks::new(vec![(0x1020, 0x3040), (0x1000, 0x3020), (0x8000, 0x9000)]);
        assert!(
            freed.holds_inside(0x1028),
            "0x28 into the first, though 8 into the second"
        );
        assert!(freed.holds_inside(0x3030));
        assert!(
            !freed.holds_inside(0x1010),
            "where a pointer to the first block's object points"
        );
        assert!(!freed.holds_inside(0x3040));
        assert!(!freed.holds_inside(0x5000));
        assert!(freed.holds_inside(0x8f00));
        assert_eq!((freed.lowest(), freed.highest()), (0x1000, 0x9000));
    }
}
