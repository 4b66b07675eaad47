//! Which stand-in roots a scan needs: a forked child judging only the blocks it allocated
//! reads as roots the inherited blocks that may point into one of them (see
//! `collector::inheritance`). A stand-in is a root whatever points to it, so only the
//! inherited blocks holding a word that falls in a judged block matter, and only words on
//! pages written since the fork: a word the child never wrote holds what it held at the fork,
//! before any of the child's blocks existed (an address it names was reused since, as a stale
//! global's is in `forks/big_parent.c`).
//!
//! So the scan reads the written pages themselves (a pool worker wrote about 600 of them, most
//! by reference counting), word by word, and looks up the inherited block holding each word
//! that points into a judged block: there are few. It used to read every inherited block on
//! those pages (11,000 for a pool worker judging 60 blocks of its own), found by going through
//! every inherited block.
//!
//! Must never write to the program's memory: every read goes through the reader.

use super::index::AddressIndex;
use super::sort;
use crate::sys::memory::{MemoryReader, MAX_WINDOW};

/// A forked child's memory written since the fork, where inherited blocks lie.
pub struct WrittenInheritance<'a> {
    /// `[start, end)` runs of pages written since the fork, in address order, where
    /// inherited blocks can lie.
    pub written: Vec<(u64, u64)>,
    /// The inherited block still live holding an address, as (address, size); `None` when
    /// the address lies in no inherited block (in one of the child's own, or in free memory).
    /// Called in address order within each run; it may remember its last answer.
    pub holding: &'a mut dyn FnMut(u64) -> Option<(u64, u64)>,
}

/// The judged `blocks` with the inherited blocks that hold, on a page written since the fork,
/// an aligned word pointing into a judged block; and the addresses of those stand-ins.
pub(super) fn with_needed_stand_ins(
    mut judged: Vec<(u64, u64)>,
    inheritance: Option<WrittenInheritance<'_>>,
    memory: &mut MemoryReader,
) -> (Vec<(u64, u64)>, Vec<u64>) {
    let Some(inheritance) = inheritance else {
        return (judged, Vec::new());
    };
    if judged.is_empty() || inheritance.written.is_empty() {
        return (judged, Vec::new());
    }
    sort::by_address(&mut judged);
    let addresses: Vec<u64> = judged.iter().map(|&(address, _)| address).collect();
    let end = |i: usize| judged[i].0 + judged[i].1.max(1);
    let index = AddressIndex::new(&addresses, end);
    let (lowest, highest_end) = (addresses[0], (0..judged.len()).map(end).max().unwrap_or(0));
    let pages = JudgedPages::new(lowest, highest_end, (0..judged.len()).map(|i| (judged[i].0, end(i))));
    let in_judged = |value: u64| {
        value >= lowest
            && value < highest_end
            && pages.may_hold(value)
            && index
                .last_at_or_below(&addresses, value)
                .is_some_and(|i| value < end(i))
    };
    let mut kept: Vec<(u64, u64)> = Vec::new();
    for (run_start, run_end) in inheritance.written {
        each_word(memory, run_start, run_end, |at, value| {
            if !in_judged(value) || in_judged(at) {
                return;
            }
            if kept
                .last()
                .is_some_and(|&(start, size)| at >= start && at < start + size)
            {
                return;
            }
            if let Some(block) = (inheritance.holding)(at) {
                if kept.last() != Some(&block) {
                    kept.push(block);
                }
            }
        });
    }
    // A block reaching across runs was found from each.
    sort::by_address(&mut kept);
    kept.dedup();
    let kept_addresses = kept.iter().map(|&(address, _)| address).collect();
    judged.extend(kept);
    (judged, kept_addresses)
}

/// Which stretches of `[lowest, highest_end)` judged blocks overlap, a bit per stretch: the
/// judged blocks of a child lie scattered over its parent's heap, so most words that fall
/// between the lowest and the highest fall in none, and a bit is cheaper to test than a
/// look-up in the index.
struct JudgedPages {
    lowest: u64,
    /// A bit stands for `1 << shift` bytes: a page, or more where the span is very wide.
    shift: u32,
    bits: Vec<u64>,
}

/// Most bits a [`JudgedPages`] holds: 128 KiB of them.
const MOST_STRETCHES: u64 = 1 << 20;

impl JudgedPages {
    fn new(lowest: u64, highest_end: u64, blocks: impl Iterator<Item = (u64, u64)>) -> JudgedPages {
        let span = highest_end.saturating_sub(lowest);
        let mut shift = 12;
        while (span >> shift) >= MOST_STRETCHES {
            shift += 1;
        }
        let mut bits = vec![0u64; ((span >> shift) / 64 + 1) as usize];
        for (start, end) in blocks {
            let (first, last) = ((start - lowest) >> shift, (end.max(start + 1) - 1 - lowest) >> shift);
            for stretch in first..=last {
                bits[(stretch / 64) as usize] |= 1 << (stretch % 64);
            }
        }
        JudgedPages { lowest, shift, bits }
    }

    /// False when no judged block overlaps the stretch of `value` (which is at least
    /// `lowest` and below the highest end).
    #[inline]
    fn may_hold(&self, value: u64) -> bool {
        let stretch = (value - self.lowest) >> self.shift;
        self.bits[(stretch / 64) as usize] & (1 << (stretch % 64)) != 0
    }
}

/// Calls `each(address, value)` for every aligned word of `[start, end)` that can be read.
fn each_word(memory: &mut MemoryReader, start: u64, end: u64, mut each: impl FnMut(u64, u64)) {
    let mut at = start & !7;
    while at < end {
        let len = ((end - at) as usize).min(MAX_WINDOW);
        let bytes = memory.bytes(at, len);
        let read = bytes.len() & !7;
        for (index, chunk) in bytes[..read].chunks_exact(8).enumerate() {
            each(
                at + 8 * index as u64,
                u64::from_ne_bytes(chunk.try_into().unwrap_or_default()),
            );
        }
        if read < len {
            // An unmapped page: the next one.
            at = (at + read as u64 + 4096) & !4095;
        } else {
            at += len as u64;
        }
    }
}
