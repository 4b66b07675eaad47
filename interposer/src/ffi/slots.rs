//! Per-thread event batches that the writer can also reach. Each thread appends to the
//! batch of the slot it claimed; the writer periodically takes partial batches so that an
//! idle thread's events are not held back, and takes all of them at exit.
//!
//! Slots are never freed (a thread's slot is released at its exit and reused by a later
//! thread), so a `&'static Slot` stays valid. Each slot's lock is held only for an append or
//! a swap, never across a call that could block, and only the owning thread and the writer
//! take it; a forked child, which has neither, stops recording before touching any slot.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};

pub struct Slot {
    locked: AtomicBool,
    claimed: AtomicBool,
    /// In a forked child: the slot was locked by a thread of the parent at the fork. Its lock
    /// is never released, so nobody may touch it again.
    dead: AtomicBool,
    next: *const Slot,
    batch: UnsafeCell<Vec<u64>>,
}

// SAFETY: `batch` is only touched while `locked` is held (acquire/release), `next` is
// immutable after the slot is published, and the flags are atomics.
unsafe impl Sync for Slot {}

static HEAD: AtomicPtr<Slot> = AtomicPtr::new(std::ptr::null_mut());

/// Claims an unclaimed slot, or publishes a new one. Allocates (through the real allocator)
/// only when every existing slot is in use.
pub fn claim() -> &'static Slot {
    let mut cursor = HEAD.load(Ordering::Acquire) as *const Slot;
    while !cursor.is_null() {
        // SAFETY: published slots are leaked and never freed.
        let slot = unsafe { &*cursor };
        if !slot.claimed.load(Ordering::Relaxed)
            && !slot.dead.load(Ordering::Relaxed)
            && slot
                .claimed
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            return slot;
        }
        cursor = slot.next;
    }
    let slot = Box::leak(Box::new(Slot {
        locked: AtomicBool::new(false),
        claimed: AtomicBool::new(true),
        dead: AtomicBool::new(false),
        next: std::ptr::null(),
        batch: UnsafeCell::new(Vec::new()),
    }));
    let mut head = HEAD.load(Ordering::Acquire);
    loop {
        slot.next = head;
        match HEAD.compare_exchange_weak(head, slot, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return slot,
            Err(actual) => head = actual,
        }
    }
}

/// Calls `f` on every published slot that is still usable.
pub fn for_each(mut f: impl FnMut(&'static Slot)) {
    let mut cursor = HEAD.load(Ordering::Acquire) as *const Slot;
    while !cursor.is_null() {
        // SAFETY: published slots are leaked and never freed.
        let slot = unsafe { &*cursor };
        if !slot.dead.load(Ordering::Relaxed) {
            f(slot);
        }
        cursor = slot.next;
    }
}

/// In a forked child, where only the forking thread lives on: the other threads' slots are
/// released (their batches stay, for the writer to take), except those a thread had locked
/// at the fork, which are retired for good. Returns how many were retired.
pub fn adopt_after_fork(own: Option<&'static Slot>) -> u64 {
    let mut retired = 0;
    for_each(|slot| {
        if own.is_some_and(|own| std::ptr::eq(own, slot)) {
            return;
        }
        if slot.locked.load(Ordering::Acquire) {
            slot.dead.store(true, Ordering::Relaxed);
            retired += 1;
        } else {
            slot.claimed.store(false, Ordering::Release);
        }
    });
    retired
}

impl Slot {
    /// Runs `f` on this slot's batch under the slot's lock.
    #[inline]
    pub fn with_batch<R>(&self, f: impl FnOnce(&mut Vec<u64>) -> R) -> R {
        let mut spins = 0u32;
        while self.locked.swap(true, Ordering::Acquire) {
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        // SAFETY: the lock is held, so this is the only reference to the batch.
        let result = f(unsafe { &mut *self.batch.get() });
        self.locked.store(false, Ordering::Release);
        result
    }

    /// Makes the slot available to a new thread; its batch must have been taken.
    pub fn release(&self) {
        self.claimed.store(false, Ordering::Release);
    }

    pub fn as_ptr(&'static self) -> *const std::ffi::c_void {
        self as *const Slot as *const std::ffi::c_void
    }

    /// # Safety
    /// `ptr` must come from [`Slot::as_ptr`].
    pub unsafe fn from_ptr(ptr: *const std::ffi::c_void) -> &'static Slot {
        // SAFETY: per the contract, `ptr` is a leaked, never-freed slot.
        unsafe { &*(ptr as *const Slot) }
    }
}
