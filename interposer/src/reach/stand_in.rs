//! Which stand-in roots a scan needs: a forked child reads as roots the inherited blocks on
//! pages it wrote to since the fork (see `collector::inheritance`), but each of them matters
//! only if it can point into a block the scan judges. A stand-in is a root whatever points
//! to it, so one holding no word that falls in a judged block changes no judgement, and the
//! scan leaves it out: no object recognition, no place in the block table, no flood through
//! it. A pool worker judging its 60 own blocks read 11,000 inherited ones that way.
//!
//! The test is every aligned word of the whole block, a superset of the words the flood
//! would read in it (which skips parts of Python objects): a stand-in left out could have
//! kept nothing.
//!
//! Must never write to the program's memory: every read goes through the reader.

use super::index::AddressIndex;
use super::sort;
use crate::sys::memory::{MemoryReader, MAX_WINDOW};

/// The judged `blocks` with the `stand_ins` (blocks not among them) that hold an aligned word
/// pointing into a judged block; and the addresses of the stand-ins kept.
pub(super) fn with_needed_stand_ins(
    mut judged: Vec<(u64, u64)>,
    mut stand_ins: Vec<(u64, u64)>,
    memory: &mut MemoryReader,
) -> (Vec<(u64, u64)>, Vec<u64>) {
    if stand_ins.is_empty() || judged.is_empty() {
        return (judged, Vec::new());
    }
    sort::by_address(&mut judged);
    sort::by_address(&mut stand_ins);
    let addresses: Vec<u64> = judged.iter().map(|&(address, _)| address).collect();
    let end = |i: usize| judged[i].0 + judged[i].1.max(1);
    let index = AddressIndex::new(&addresses, end);
    let (lowest, highest_end) = (addresses[0], (0..judged.len()).map(end).max().unwrap_or(0));
    let points_into_judged = |value: u64| {
        value >= lowest
            && value < highest_end
            && index
                .last_at_or_below(&addresses, value)
                .is_some_and(|i| value < end(i))
    };
    // In address order, through the reader's page cache: the stand-ins lie on scattered
    // written pages, and a window would copy the pages between them too.
    let kept: Vec<(u64, u64)> = stand_ins
        .into_iter()
        .filter(|&(address, size)| holds_any(memory, address, address.saturating_add(size), &points_into_judged))
        .collect();
    let kept_addresses = kept.iter().map(|&(address, _)| address).collect();
    judged.extend(kept);
    (judged, kept_addresses)
}

/// Whether an aligned word of `[start, end)` satisfies `wanted`.
fn holds_any(memory: &mut MemoryReader, start: u64, end: u64, wanted: &impl Fn(u64) -> bool) -> bool {
    let mut at = start & !7;
    while at < end {
        let len = ((end - at) as usize).min(MAX_WINDOW);
        let bytes = memory.bytes(at, len);
        let read = bytes.len();
        if bytes
            .chunks_exact(8)
            .any(|chunk| wanted(u64::from_ne_bytes(chunk.try_into().unwrap_or_default())))
        {
            return true;
        }
        if read < len {
            // An unmapped page: the next one.
            at = (at + read as u64 + 4096) & !4095;
        } else {
            at += len as u64;
        }
    }
    false
}
