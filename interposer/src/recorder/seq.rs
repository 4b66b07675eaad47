//! Sequence numbers for events: what orders the events of each block.
//!
//! The live set needs, for every address, its events in true order: an allocation and a free
//! of the same address (on the same or another thread) must get increasing numbers when one
//! happens before the other. A single process-wide counter gives that, but every event of
//! every thread then writes one cache line, which bounces between the cores of allocating
//! threads (see docs/benchmarks.md, "Sequence numbers").
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
//!
//! While a single thread takes numbers (most Python programs), its clock alone orders
//! everything and the table is left alone: a read-modify-write on a line hashed from the
//! address, per event, is a cost a lone thread need not pay. That thread publishes each number it
//! takes (a plain store). The first other thread to need a number switches the process to the
//! table for good: it announces the switch and runs a process-wide memory barrier
//! (`membarrier`, as the event slots do). After it, the lone thread sees the switch at its
//! next number, and at most one number it took is unpublished: the published one plus one.
//! That is the floor every other thread's clock starts at; the lone thread's clock is above
//! its own numbers already. Without `membarrier` the table is used from the start.

use std::cell::Cell;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicU64, AtomicU8, Ordering};

use crate::sys;

const ENTRIES: usize = 1 << 16;

static CLOCKS: [AtomicU64; ENTRIES] = [const { AtomicU64::new(0) }; ENTRIES];

/// [`MODE`] values.
const ALONE: u8 = 0;
const SWITCHING: u8 = 1;
const TABLE: u8 = 2;

/// Whether one thread alone takes numbers; the table until [`allow_one_thread_alone`].
static MODE: AtomicU8 = AtomicU8::new(TABLE);
/// A thread took the role of the lone thread.
static LONE_CLAIMED: AtomicBool = AtomicBool::new(false);

/// Written by the lone thread at each number, kept off the lines others read per event.
#[repr(align(128))]
struct LoneThread {
    clock: AtomicU64,
}
static LONE: LoneThread = LoneThread {
    clock: AtomicU64::new(0),
};
/// Set by the switch: at least every number the lone thread took; other threads number
/// above it.
static FLOOR: AtomicU64 = AtomicU64::new(0);

/// A thread's part in [`MODE`].
const UNDECIDED: u8 = 0;
const LONE_THREAD: u8 = 1;
const TABLE_USER: u8 = 2;

/// A thread's clock and part, behind one thread-local access (each costs a call in a
/// shared library).
struct ThreadClock {
    seq: Cell<u64>,
    role: Cell<u8>,
}

impl ThreadClock {
    fn raise_to(&self, seq: u64) {
        self.seq.set(self.seq.get().max(seq));
    }
}

thread_local! {
    // Const-initialised and without Drop: accessing it never allocates.
    static CLOCK: ThreadClock = const { ThreadClock { seq: Cell::new(0), role: Cell::new(UNDECIDED) } };
}

/// Lets one thread alone number its events without the table when `fence` (process-wide
/// memory barriers are available). Called before any number is taken, and again in a forked
/// child by the forking thread, alone there, after its clock was set above the parent's.
pub fn allow_one_thread_alone(fence: bool) {
    LONE_CLAIMED.store(false, Ordering::Relaxed);
    let seq = CLOCK.with(|clock| {
        clock.role.set(UNDECIDED);
        clock.seq.get()
    });
    LONE.clock.store(seq, Ordering::Relaxed);
    MODE.store(if fence { ALONE } else { TABLE }, Ordering::SeqCst);
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
    CLOCK.with(|clock| {
        if MODE.load(Ordering::Relaxed) == ALONE {
            if let Some(seq) = next_alone(clock) {
                return seq;
            }
        }
        next_from_table(clock, address)
    })
}

/// A number from the lone thread's clock, or `None` when the calling thread is not the lone
/// thread. The caller saw the mode alone.
#[inline(always)]
fn next_alone(clock: &ThreadClock) -> Option<u64> {
    let role = clock.role.get();
    if role != LONE_THREAD && !(role == UNDECIDED && claim_lone_role(clock)) {
        return None;
    }
    let seq = clock.seq.get() + 1;
    clock.seq.set(seq);
    // Kept from moving above the caller's look at the mode: the switch counts on this
    // number being published by the time the mode could have been seen changed.
    compiler_fence(Ordering::SeqCst);
    LONE.clock.store(seq, Ordering::Relaxed);
    Some(seq)
}

#[cold]
fn claim_lone_role(clock: &ThreadClock) -> bool {
    let claimed = LONE_CLAIMED
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok();
    if claimed {
        clock.role.set(LONE_THREAD);
        clock.raise_to(LONE.clock.load(Ordering::Relaxed));
    }
    claimed
}

/// Switches the process to the table (once), and starts the calling thread's clock above
/// the lone thread's numbers.
#[cold]
fn join_table(clock: &ThreadClock) {
    if MODE
        .compare_exchange(ALONE, SWITCHING, Ordering::SeqCst, Ordering::Relaxed)
        .is_ok()
    {
        // After the barrier the lone thread sees the switch at its next number; at most one
        // number it takes is still unpublished, and that one is the published one plus one.
        if !sys::membarrier() {
            // Registered at start-up, so not expected; a store reaches other cores within
            // microseconds anyway.
            sys::sleep_ms(1);
        }
        FLOOR.store(LONE.clock.load(Ordering::Acquire) + 1, Ordering::Relaxed);
        MODE.store(TABLE, Ordering::Release);
    }
    while MODE.load(Ordering::Acquire) != TABLE {
        std::thread::yield_now();
    }
    clock.raise_to(FLOOR.load(Ordering::Relaxed));
    if clock.role.get() != LONE_THREAD {
        clock.role.set(TABLE_USER);
    }
}

#[inline(always)]
fn next_from_table(clock: &ThreadClock, address: usize) -> u64 {
    if clock.role.get() == UNDECIDED {
        join_table(clock);
    }
    let entry = entry(address);
    let seq = clock.seq.get().max(entry.load(Ordering::Acquire)) + 1;
    entry.fetch_max(seq, Ordering::AcqRel);
    clock.seq.set(seq);
    seq
}

/// A number above every one given out so far (in a forked child: by any thread of the
/// parent). Reads the whole table: for forks and execs, not for events.
pub fn above_all() -> u64 {
    CLOCKS
        .iter()
        .map(|entry| entry.load(Ordering::Acquire))
        .max()
        .unwrap_or(0)
        .max(LONE.clock.load(Ordering::Acquire))
        + 1
}

/// Starts the calling thread's clock at `seq`: its next number is above it.
pub fn start_thread_at(seq: u64) {
    CLOCK.with(|clock| clock.raise_to(seq));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests share the process-wide mode.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_lone_thread_numbers_without_the_table_until_a_second_thread_needs_one() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        if !sys::register_membarrier() {
            println!("skipped: membarrier is not available");
            return;
        }
        let block = 0x7f00_4444_0000_usize;
        let untouched = entry(block).load(Ordering::Acquire);
        let alone_address = 0x10_0000 + 999 * 16;
        let (numbered_alone, lone) = std::thread::spawn(move || {
            allow_one_thread_alone(true);
            let numbers: Vec<u64> = (0..1000).map(|i| next(0x10_0000 + i * 16)).collect();
            assert!(numbers.windows(2).all(|w| w[0] < w[1]));
            let freed = next(block);
            assert_eq!(
                entry(block).load(Ordering::Acquire),
                untouched,
                "the table was left alone"
            );
            assert_eq!(MODE.load(Ordering::Acquire), ALONE);
            // Another thread is handed the block: it switches the process to the table.
            let reused = std::thread::spawn(move || next(block)).join().unwrap();
            assert!(reused > freed, "{reused} <= {freed}");
            assert_eq!(MODE.load(Ordering::Acquire), TABLE);
            let freed_again = next(block);
            assert!(freed_again > reused, "{freed_again} <= {reused}");
            (numbers[999], freed_again)
        })
        .join()
        .unwrap();
        assert!(above_all() > lone);
        // The table never saw the lone thread's numbers: a thread handed one of its blocks
        // after the switch still numbers above them.
        let later = std::thread::spawn(move || next(alone_address)).join().unwrap();
        assert!(
            later > numbered_alone,
            "{later} <= {numbered_alone}: a thread started after the switch numbers a block the lone thread had above it"
        );
    }

    #[test]
    fn a_later_event_on_the_same_block_gets_a_higher_number_on_another_thread() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        // This thread's clock runs far ahead of the fresh thread's.
        for address in (0x10_0000..0x20_0000).step_by(16) {
            next(address);
        }
        let block = 0x7f00_1234_5670;
        let freed = next(block);
        let reused = std::thread::spawn(move || next(block)).join().unwrap();
        assert!(reused > freed, "{reused} <= {freed}");
        // No shared counter: a fresh thread's first number on a block whose slot nothing
        // raised yet is just above the floor (0 unless a lone thread ran before), however far
        // other threads' clocks ran.
        let untouched = (0x5555_0000_0000usize..)
            .step_by(16)
            .find(|&address| entry(address).load(Ordering::Acquire) == 0)
            .unwrap();
        let elsewhere = std::thread::spawn(move || next(untouched)).join().unwrap();
        assert_eq!(elsewhere, FLOOR.load(Ordering::Acquire) + 1);
        assert!(above_all() > reused);
    }

    #[test]
    fn a_thread_started_above_everything_numbers_above_everything() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
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
