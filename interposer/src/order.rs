//! Sequence numbers for events: what orders the events of each block.
//!
//! The live set needs, for every address, its events in true order: an allocation and a free
//! of the same address (on the same or another thread) must get increasing numbers when one
//! happens before the other. A single process-wide counter gives that, but every event of
//! every thread then writes one cache line: with four allocating threads that line's
//! transfers between cores were most of the cost inside the hooks.
//!
//! Instead each thread keeps a clock, and a table of clocks indexed by a hash of the address
//! carries order from one thread to another: an event reads its address's entry, takes a
//! number above both that entry and its thread's clock, and raises the entry to it. Whatever
//! makes one event on an address happen before another (malloc's own synchronisation between
//! a free and the reuse of the block, or the program's between an allocation and a free on
//! another thread) also makes the second event read an entry at least as high as the first
//! one's number: so per address, numbers follow the true order. Addresses sharing an entry
//! only raise each other's numbers. Events on different addresses may get equal or inverted
//! numbers, which nothing depends on.
//!
//! A free takes its number before the real free, an allocation after the real allocation.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

const ENTRIES: usize = 1 << 16;

static CLOCKS: [AtomicU64; ENTRIES] = [const { AtomicU64::new(0) }; ENTRIES];

thread_local! {
    // Const-initialised and without Drop: accessing it never allocates.
    static CLOCK: Cell<u64> = const { Cell::new(0) };
}

#[inline(always)]
fn entry(address: usize) -> &'static AtomicU64 {
    // Blocks are at least 16-byte aligned; the multiply spreads neighbouring blocks.
    let hash = (address as u64 >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 48;
    &CLOCKS[hash as usize % ENTRIES]
}

/// The sequence number of an event on the block at `address`.
#[inline(always)]
pub fn next(address: usize) -> u64 {
    let entry = entry(address);
    CLOCK.with(|clock| {
        let seq = clock.get().max(entry.load(Ordering::Acquire)) + 1;
        entry.fetch_max(seq, Ordering::AcqRel);
        clock.set(seq);
        seq
    })
}

/// A number above every one given out so far (in a forked child: by any thread of the
/// parent). Reads the whole table: for forks and execs, not for events.
pub fn above_all() -> u64 {
    CLOCKS
        .iter()
        .map(|entry| entry.load(Ordering::Acquire))
        .max()
        .unwrap_or(0)
        + 1
}

/// Starts the calling thread's clock at `seq`: its next number is above it.
pub fn start_thread_at(seq: u64) {
    CLOCK.with(|clock| clock.set(clock.get().max(seq)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_event_on_the_same_block_gets_a_higher_number_on_another_thread() {
        // This thread's clock runs far ahead of the fresh thread's.
        for address in (0x10_0000..0x20_0000).step_by(16) {
            next(address);
        }
        let block = 0x7f00_1234_5670;
        let freed = next(block);
        let reused = std::thread::spawn(move || next(block)).join().unwrap();
        assert!(reused > freed, "{reused} <= {freed}");
        // No shared counter: a fresh thread's first number on a block whose slot nothing
        // raised yet is 1, however far other threads' clocks ran.
        let untouched = (0x5555_0000_0000usize..)
            .step_by(16)
            .find(|&address| entry(address).load(Ordering::Acquire) == 0)
            .unwrap();
        let elsewhere = std::thread::spawn(move || next(untouched)).join().unwrap();
        assert_eq!(elsewhere, 1);
        assert!(above_all() > reused);
    }

    #[test]
    fn a_thread_started_above_everything_numbers_above_everything() {
        let fork_seq = above_all();
        let first = std::thread::spawn(move || {
            start_thread_at(fork_seq - 1);
            next(0x6666_0000_0020)
        })
        .join()
        .unwrap();
        assert!(first >= fork_seq);
    }
}
