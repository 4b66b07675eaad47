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
//! alone: the program may have stored it since.
//!
//! Must stay off the collector's hot path: one comparison per free; a read of the static
//! data only after large frees, and never more often than [`CHECK_INTERVAL`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libleak_format::Module;

use super::large::LARGE;
use crate::sys::memory::copy_own;

/// Checks after large frees are at least this far apart.
const CHECK_INTERVAL: Duration = Duration::from_millis(20);
/// Large frees remembered between two checks; past this, the oldest are not checked.
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
}

impl DanglingStatics {
    /// After the free of a block of `size` bytes at `address`.
    #[inline]
    pub(super) fn note_free(&mut self, address: u64, size: u64) {
        if size > LARGE && self.freed.len() < MOST_FREED {
            self.freed.push((address, address + size));
        }
    }

    pub(super) fn check_due(&self) -> bool {
        !self.freed.is_empty() && self.last_check.is_none_or(|at| at.elapsed() >= CHECK_INTERVAL)
    }

    /// Reads the interpreter's static data for words pointing inside the blocks freed since
    /// the last check. `is_block_start(address)`: a live block starts at `address`.
    pub(super) fn check(&mut self, modules: &[Module], is_block_start: &dyn Fn(u64) -> bool) {
        self.last_check = Some(Instant::now());
        let mut freed = std::mem::take(&mut self.freed);
        self.words.retain(|&at, &mut value| word_at(at) == Some(value));
        if freed.is_empty() {
            return;
        }
        let Some(segments) = self.interpreter_segments(modules) else {
            return;
        };
        freed.sort_unstable();
        let lowest = freed.first().map_or(u64::MAX, |f| f.0);
        let highest = freed.iter().map(|f| f.1).max().unwrap_or(0);
        let inside_freed = |value: u64| {
            let after = freed.partition_point(|&(start, _)| start <= value);
            after > 0 && {
                let (start, end) = freed[after - 1];
                value - start > OBJECT_WITHIN && value < end
            }
        };
        let mut buffer = vec![0u8; READ_BYTES];
        for (start, end) in segments {
            let mut at = start.next_multiple_of(8);
            while at < end && self.words.len() < MOST_WORDS {
                let len = (READ_BYTES as u64).min(end - at) as usize & !7;
                if len == 0 {
                    break;
                }
                let read = copy_own(at, &mut buffer[..len]) & !7;
                for (index, word) in buffer[..read].chunks_exact(8).enumerate() {
                    let value = u64::from_ne_bytes(word.try_into().unwrap_or_default());
                    if value < lowest || value >= highest || !inside_freed(value) {
                        continue;
                    }
                    if !is_block_start(value) && !is_block_start(value - OBJECT_WITHIN) {
                        self.words.insert(at + 8 * index as u64, value);
                    }
                }
                if read < len {
                    break;
                }
                at += len as u64;
            }
        }
    }

    /// (where, value) of the dangling words known, sorted.
    pub(super) fn words(&self) -> Vec<(u64, u64)> {
        let mut words: Vec<(u64, u64)> = self.words.iter().map(|(&at, &value)| (at, value)).collect();
        words.sort_unstable();
        words
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

fn word_at(address: u64) -> Option<u64> {
    let mut bytes = [0u8; 8];
    (copy_own(address, &mut bytes) == 8).then(|| u64::from_ne_bytes(bytes))
}
