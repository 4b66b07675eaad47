//! What a hook does once it has the real result: enter (is this call to be recorded?),
//! record the event into the thread's batch (stack, Python frames, sequence number), leave.
//! A signal handler's allocator call that interrupts the recording of another event is kept
//! aside without a stack and recorded when the interrupted hook leaves.
//!
//! Must never panic, block while holding a slot, or allocate except through the real
//! allocator.

use std::sync::atomic::{AtomicBool, Ordering};

use libleak_format::AllocKind;

use super::channel::{push_event, send_message};
use super::finalization;
use super::seq;
use super::state::{self, without_own_frames};
use super::stats::{self, REENTRANT_CALLS, TRUNCATED_STACKS};
use super::thread::{Phase, ThreadState, PENDING_EVENTS, RECENT_ALLOCATIONS, THREAD};
use crate::batch::{self, BatchTag, DeferredEvent, Header, DEFERRED_WORDS};
use crate::collector::Message;
use crate::python;
use crate::python::constructors::Constructor;
use crate::python::free_lists;
use crate::stack_words;
use crate::sys::buffer::WordBuffer;
use crate::sys::signals;
use crate::unwind::{self, Registers};

/// Larger freed blocks are not zeroed: they are rare, costly to clear, and mostly returned
/// to the system rather than reused.
pub const MAX_SCRUB_BYTES: usize = 64 << 10;

/// Freed blocks are zeroed before the real free: set when the exit scan will run.
static SCRUB_FREED: AtomicBool = AtomicBool::new(false);

pub fn set_scrub_freed(scrub: bool) {
    SCRUB_FREED.store(scrub, Ordering::Relaxed);
}

/// Whether freed blocks are zeroed before the real free: when the exit scan will run.
#[inline(always)]
pub fn scrub_freed() -> bool {
    SCRUB_FREED.load(Ordering::Relaxed)
}

/// The sequence number of an event on the block at `address` (see [`seq`]).
#[inline(always)]
pub fn next_seq(address: usize) -> u64 {
    seq::next(address)
}

/// The thread's count of recorded allocations, taken before a Python constructor's real
/// call (made outside any hook) for [`Hook::record_if_reborn`].
#[inline(always)]
pub fn allocation_mark() -> u64 {
    THREAD.with(|t| t.allocations.get())
}

/// A hook's permission to record, from [`enter`] to [`Hook::leave`].
pub struct Hook {
    /// The phase the hook was entered in. [`Phase::Recording`]: a signal handler interrupted
    /// the recording of another event on this thread, so this hook's events are deferred.
    outer: Phase,
}

/// Enters a hook: `Some` when the call is to be recorded (the caller makes the real call,
/// records through the returned [`Hook`], then leaves it); `None` when not recording, or when
/// the call is libleak's own.
#[inline(always)]
pub fn enter() -> Option<Hook> {
    if !state::is_recording() {
        return None;
    }
    THREAD.with(|t| match t.phase.get() {
        Phase::Outside => {
            t.phase.set(Phase::AroundRealCall);
            Some(Hook { outer: Phase::Outside })
        }
        Phase::AroundRealCall => Some(Hook {
            outer: Phase::AroundRealCall,
        }),
        Phase::Recording if in_signal_handler(t) => Some(Hook {
            outer: Phase::Recording,
        }),
        Phase::Recording | Phase::OwnWork => {
            stats::count(&REENTRANT_CALLS);
            None
        }
    })
}

impl Hook {
    /// Records a new block, after the real allocation; the stack is unwound from `caller`,
    /// the hook's caller at the call.
    #[inline(always)]
    pub fn record_alloc(&self, address: usize, size: usize, kind: AllocKind, caller: Registers) {
        let seq = next_seq(address);
        if self.outer == Phase::Recording {
            defer(DeferredEvent {
                tag: BatchTag::Alloc,
                kind,
                seq,
                address,
                size,
            });
        } else {
            recording(|t| record_alloc(t, seq, address, size, kind, caller));
        }
    }

    /// Records a free that was given `seq` before the real free ran.
    #[inline(always)]
    pub fn record_free(&self, address: usize, seq: u64) {
        if self.outer == Phase::Recording {
            defer(DeferredEvent {
                tag: BatchTag::Free,
                kind: AllocKind::Malloc,
                seq,
                address,
                size: 0,
            });
        } else {
            recording(|t| push_event(t, |batch, thread_id| batch::push_free(batch, thread_id, seq, address)));
        }
    }

    /// `constructor` returned the new object `object`, whose block starts its header bytes
    /// before it. When that block was not allocated during the call (since `mark`), the
    /// object came off a free list: it is recorded as reborn, with the stack unwound from
    /// `caller` and the free-list slot that still names it. Nothing is recorded when the calls since `mark` were too many
    /// to tell, nor from a signal handler.
    pub fn record_if_reborn(&self, object: usize, constructor: Constructor, mark: u64, caller: Registers) {
        if self.outer != Phase::Outside {
            return;
        }
        let block = object.wrapping_sub(constructor.header_bytes());
        let reborn = THREAD.with(|t| {
            let recent = t.recent_allocations.each_ref().map(|cell| cell.get());
            allocated_since(&recent, t.allocations.get(), mark, block) == Some(false)
        });
        if !reborn {
            return;
        }
        // Numbered on the block, as its own free and allocation would be.
        let free_seq = next_seq(block);
        let alloc_seq = next_seq(block);
        let stale = constructor
            .free_list_array()
            .map(|array| free_lists::stale_slots(array, object))
            .unwrap_or_default();
        recording(|t| {
            record_with_stack(
                t,
                BatchTag::Reborn,
                AllocKind::FreeListReuse,
                caller,
                |batch, header| batch::push_reborn(batch, header, (free_seq, alloc_seq), block, stale),
            )
        });
    }

    #[inline(always)]
    pub fn leave(self) {
        THREAD.with(|t| {
            t.phase.set(self.outer);
            if self.outer == Phase::Outside && t.pending_len.load(Ordering::Acquire) != 0 {
                hand_on_pending(t);
            }
        });
        if self.outer == Phase::Outside && finalization::due() {
            finalization::scan_now();
        }
    }
}

/// Whether `block` is among the allocations numbered from `mark` up to `count` (excluded),
/// given the thread's ring of recent ones (inverted addresses, the one numbered `n` at
/// `n % RECENT_ALLOCATIONS`); `None` when they were too many for the ring to tell.
fn allocated_since(recent: &[usize; RECENT_ALLOCATIONS], count: u64, mark: u64, block: usize) -> Option<bool> {
    let new = count.wrapping_sub(mark);
    let seen = new.min(RECENT_ALLOCATIONS as u64);
    let found = (0..seen).any(|back| {
        let number = count.wrapping_sub(1 + back);
        recent[number as usize % RECENT_ALLOCATIONS] == !block
    });
    (found || new <= RECENT_ALLOCATIONS as u64).then_some(found)
}

/// Runs `record` in [`Phase::Recording`].
#[inline(always)]
fn recording(record: impl FnOnce(&ThreadState)) {
    THREAD.with(|t| {
        let frame = 0u8;
        t.recording_frame
            .set(std::hint::black_box(&frame) as *const u8 as usize);
        t.phase.set(Phase::Recording);
        record(t);
        t.phase.set(Phase::AroundRealCall);
    });
}

/// A hook entered while this thread records an event: is it a signal handler's?
#[cold]
fn in_signal_handler(t: &ThreadState) -> bool {
    let here = 0u8;
    signals::handler_between(
        std::hint::black_box(&here) as *const u8 as usize,
        t.recording_frame.get(),
    )
}

/// Keeps a signal handler's event for the interrupted hook to record when it leaves.
#[cold]
fn defer(event: DeferredEvent) {
    THREAD.with(|t| {
        let index = t.pending_len.fetch_add(1, Ordering::AcqRel);
        if index >= PENDING_EVENTS {
            stats::count(&REENTRANT_CALLS);
            return;
        }
        for (cell, word) in t.pending[index * DEFERRED_WORDS..].iter().zip(event.pack()) {
            cell.store(word, Ordering::Relaxed);
        }
    });
}

/// Records the events signal handlers left while this thread was recording. Runs as the
/// outermost hook leaves; a handler that interrupts this defers again, and is taken in the
/// next round.
#[cold]
fn hand_on_pending(t: &ThreadState) {
    loop {
        let reserved = t.pending_len.load(Ordering::Acquire);
        if reserved == 0 {
            return;
        }
        // A handler interrupting from here on is told apart by a signal frame below this
        // one (not below the frame of the last event recorded, which lies deeper).
        let frame = 0u8;
        t.recording_frame
            .set(std::hint::black_box(&frame) as *const u8 as usize);
        t.phase.set(Phase::Recording);
        let count = reserved.min(PENDING_EVENTS);
        let mut events = [[0u64; DEFERRED_WORDS]; PENDING_EVENTS];
        for (index, event) in events[..count].iter_mut().enumerate() {
            for (word, cell) in event.iter_mut().zip(&t.pending[index * DEFERRED_WORDS..]) {
                *word = cell.load(Ordering::Relaxed);
            }
        }
        // A handler that appended while we copied makes this fail; copy again.
        if t.pending_len
            .compare_exchange(reserved, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            for event in events[..count].iter().filter_map(|&words| DeferredEvent::unpack(words)) {
                push_event(t, |batch, thread_id| event.push(batch, thread_id));
            }
        }
        t.phase.set(Phase::Outside);
    }
}

#[inline(always)]
fn record_alloc(t: &ThreadState, seq: u64, address: usize, size: usize, kind: AllocKind, caller: Registers) {
    let count = t.allocations.get();
    t.recent_allocations[count as usize % RECENT_ALLOCATIONS].set(!address);
    t.allocations.set(count.wrapping_add(1));
    record_with_stack(t, BatchTag::Alloc, kind, caller, |batch, header| {
        batch::push_alloc(batch, header, seq, address, size)
    });
}

/// Stacks of at least this many words are sent without the outer words they share with the
/// thread's previous one (see [`crate::batch`]): an import chain's, not a loop's (see
/// docs/benchmarks.md, "Shared outer frames").
const SHARED_FROM_WORDS: usize = 64;

/// Records an event whose fixed fields `push_fixed` appends after its header, followed by the
/// stack unwound from `caller` and the thread's Python frames.
#[inline(always)]
fn record_with_stack(
    t: &ThreadState,
    tag: BatchTag,
    kind: AllocKind,
    caller: Registers,
    push_fixed: impl FnOnce(&mut Vec<u64>, Header),
) {
    let mut stack = unwind::Stack::new();
    let from_caller = cfg!(feature = "bench-skip-native-stacks") || unwind::capture_from_caller(&mut stack, caller);
    if stack.is_full() {
        stats::count(&TRUNCATED_STACKS);
    }
    let frames = if from_caller {
        stack.as_slice()
    } else {
        without_own_frames(stack.as_slice())
    };
    if stats::checking_unwind() {
        stats::check_unwind(frames, stack.is_full());
    }
    let mut python_words = WordBuffer::<{ python::MAX_WORDS }>::new();
    if !cfg!(feature = "bench-skip-python-stacks") {
        python::capture(&mut python_words, &mut |code| {
            send_message(Message::PythonCode(Box::new(code)))
        });
    }
    let python_words = python_words.as_slice();
    push_event(t, |batch, thread_id| {
        let mut header = Header {
            tag,
            kind,
            frame_count: 0,
            shared_frames: 0,
            thread_id,
        };
        let header_at = batch.len();
        push_fixed(batch, header);
        let words_at = batch.len();
        stack_words::interleave(batch, frames, python_words, python::eval_loop());
        // The shared outer words are the event's last: dropped in place, the header then told.
        // A short stack is sent whole: finding its shared words would cost this thread more
        // than their copy costs the collector, whose own comparison runs on another core.
        header.shared_frames = if batch.len() - words_at >= SHARED_FROM_WORDS {
            t.previous_stack.share(&batch[words_at..])
        } else {
            t.previous_stack.forget();
            0
        };
        batch.truncate(batch.len() - header.shared_frames);
        header.frame_count = batch.len() - words_at;
        batch[header_at] = header.pack();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_is_new_when_allocated_since_the_mark_and_unknown_past_the_ring() {
        // Allocations 0 to 5 were of 0x100, 0x200, …, 0x600: the ring keeps 2 to 5.
        let mut recent = [0usize; RECENT_ALLOCATIONS];
        for number in 0..6u64 {
            recent[number as usize % RECENT_ALLOCATIONS] = !(0x100 * (number as usize + 1));
        }
        // Nothing allocated during the call: not new (taken off a free list).
        assert_eq!(allocated_since(&recent, 6, 6, 0x600), Some(false));
        // Allocated during the call, last or before another allocation.
        assert_eq!(allocated_since(&recent, 6, 5, 0x600), Some(true));
        assert_eq!(allocated_since(&recent, 6, 4, 0x500), Some(true));
        // Allocated before the call: not new.
        assert_eq!(allocated_since(&recent, 6, 5, 0x500), Some(false));
        // More allocations during the call than the ring holds: new if seen, else unknown.
        assert_eq!(allocated_since(&recent, 6, 1, 0x300), Some(true));
        assert_eq!(allocated_since(&recent, 6, 1, 0x200), None);
    }
}
