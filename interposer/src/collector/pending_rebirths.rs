//! The rebirths the collector keeps until their block's allocation is taken in (see
//! `rebirths.rs`), and when it gives up on each.
//!
//! Must never keep more than [`MOST_PENDING`]: the memory is the program's.

/// Rebirths kept at most; more are dropped at once, as before they were kept at all.
const MOST_PENDING: usize = 1024;

use crate::python::free_lists::StaleSlots;

/// A rebirth as recorded: `free_seq` and `alloc_seq` number the free and allocation of the
/// object's block, `stack` is the interned stack of the constructor's caller.
#[derive(Clone, Copy)]
pub(super) struct Rebirth {
    pub(super) thread_id: u32,
    pub(super) free_seq: u64,
    pub(super) alloc_seq: u64,
    /// Where the object's block starts.
    pub(super) block: u64,
    /// The free-list slots that still name the object.
    pub(super) stale: StaleSlots,
    pub(super) stack: u64,
}

/// A rebirth kept, and until when.
pub(super) struct Pending {
    pub(super) rebirth: Rebirth,
    /// Kept until this many messages have been handled...
    until_message: u64,
    /// ...and this many sweeps have been completed.
    until_sweep: u64,
}

/// Rebirths whose block the collector has not seen yet, and the counts that tell when to give
/// up on each.
#[derive(Default)]
pub(super) struct PendingRebirths {
    pending: Vec<Pending>,
    messages_handled: u64,
    sweeps_done: u64,
}

impl PendingRebirths {
    pub(super) fn message_handled(&mut self) {
        self.messages_handled += 1;
    }

    pub(super) fn sweep_done(&mut self) {
        self.sweeps_done += 1;
    }

    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Every rebirth kept, for another try; those still waiting are [put back](Self::put_back).
    pub(super) fn take(&mut self) -> Vec<Pending> {
        std::mem::take(&mut self.pending)
    }

    pub(super) fn put_back(&mut self, pending: Pending) {
        self.pending.push(pending);
    }

    /// Keeps `rebirth` until the `queued` messages now in the channel have been handled and
    /// a whole sweep has run after this one.
    pub(super) fn keep(&mut self, rebirth: Rebirth, queued: usize) {
        if self.pending.len() < MOST_PENDING {
            self.pending.push(Pending {
                rebirth,
                until_message: self.messages_handled + queued as u64,
                // The sweep under way, if any, may have taken its slot after the block's.
                until_sweep: self.sweeps_done + 2,
            });
        }
    }

    pub(super) fn expired(&self, pending: &Pending) -> bool {
        self.messages_handled >= pending.until_message && self.sweeps_done >= pending.until_sweep
    }
}
