//! Per-thread event batches that the collector can also reach. Each thread appends to the
//! batch of the slot it claimed; the collector periodically takes partial batches so that an
//! idle thread's events are not held back, and takes all of them at exit.
//!
//! Slots are never freed (a thread's slot is released at its exit and reused by a later
//! thread), so a `&'static Slot` stays valid.
//!
//! Appends are on every allocation's path, takes by the collector rare (a sweep every few tens
//! of milliseconds). Where the kernel offers `membarrier`, the two sides are ordered by
//! asymmetric fences: the owner marks itself busy with a plain store and checks for a
//! foreign access with a plain load (no atomic read-modify-write, whose full fence would be
//! paid on every event), and the collector, after announcing its
//! access, makes every thread execute a barrier (`membarrier`) before it looks at the busy
//! marks: either it sees the owner busy and waits, or the owner sees the announcement and
//! steps back. Elsewhere each slot has a spin lock, held only for an append or a swap.
//! Neither side ever waits across a call that could block.

use std::cell::UnsafeCell;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicPtr, Ordering};

/// Whether slots are ordered by asymmetric fences rather than their locks. Changes only
/// while a single thread runs (start-up, a forked child).
static ASYMMETRIC: AtomicBool = AtomicBool::new(false);

/// Chooses asymmetric fences when `membarrier` is available, unless `force_locks`. Call
/// before any other thread appends (at start-up, or in a forked child, where the forking
/// thread is alone).
pub fn choose_fences(force_locks: bool) {
    ASYMMETRIC.store(!force_locks && super::register_membarrier(), Ordering::SeqCst);
}

/// In a forked child (alone, before anything appends): registration does not carry over to
/// the child's address space. Keeps the parent's choice, falling back to the locks if the
/// registration is refused now.
pub fn renew_fences_after_fork() {
    if ASYMMETRIC.load(Ordering::Relaxed) && !super::register_membarrier() {
        ASYMMETRIC.store(false, Ordering::SeqCst);
    }
}

/// Whether asymmetric fences were chosen.
pub fn uses_fences() -> bool {
    ASYMMETRIC.load(Ordering::Relaxed)
}

pub struct Slot {
    locked: AtomicBool,
    /// The owner is appending (asymmetric fences).
    busy: AtomicBool,
    /// The collector is taking the batch, or about to (asymmetric fences).
    foreign: AtomicBool,
    claimed: AtomicBool,
    /// In a forked child: a thread of the parent was appending to the slot at the fork (its
    /// lock held or its busy mark set). That is never undone, so nobody may touch it again.
    dead: AtomicBool,
    next: *const Slot,
    batch: UnsafeCell<Vec<u64>>,
}

// SAFETY: `batch` is only touched while `locked` is held (acquire/release), or under the
// busy/foreign protocol (see the module documentation), `next` is immutable after the slot
// is published, and the flags are atomics.
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
        busy: AtomicBool::new(false),
        foreign: AtomicBool::new(false),
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

/// Runs `f` on the batch of every usable slot, from a thread that owns none of them (the
/// collector). `f` must be quick: owners wait while it runs. False (and `f` not run) when the
/// barrier failed, which does not happen once registered.
pub fn for_each_batch(mut f: impl FnMut(&mut Vec<u64>)) -> bool {
    if !ASYMMETRIC.load(Ordering::Relaxed) {
        for_each(|slot| slot.locked(&mut f));
        return true;
    }
    for_each(|slot| slot.foreign.store(true, Ordering::Relaxed));
    let fenced = super::membarrier();
    if fenced {
        for_each(|slot| {
            let mut spins = 0u32;
            while slot.busy.load(Ordering::Acquire) {
                back_off(&mut spins);
            }
            // SAFETY: announced, fenced and the owner not busy: the owner keeps off the batch
            // until `foreign` is cleared (module documentation).
            f(unsafe { &mut *slot.batch.get() });
        });
    }
    for_each(|slot| slot.foreign.store(false, Ordering::Release));
    fenced
}

/// In a forked child, where only the forking thread lives on: the other threads' slots are
/// released (their batches stay, for the collector to take), except those a thread had locked
/// at the fork, which are retired for good. Returns how many were retired.
pub fn adopt_after_fork(own: Option<&'static Slot>) -> u64 {
    let mut retired = 0;
    for_each(|slot| {
        if own.is_some_and(|own| std::ptr::eq(own, slot)) {
            return;
        }
        if slot.locked.load(Ordering::Acquire) || slot.busy.load(Ordering::Acquire) {
            slot.dead.store(true, Ordering::Relaxed);
            retired += 1;
        } else {
            slot.claimed.store(false, Ordering::Release);
        }
    });
    retired
}

impl Slot {
    /// Runs `f` on this slot's batch, as its owner (the thread that claimed it).
    #[inline]
    pub fn with_batch<R>(&self, f: impl FnOnce(&mut Vec<u64>) -> R) -> R {
        if !ASYMMETRIC.load(Ordering::Relaxed) {
            return self.locked(f);
        }
        loop {
            self.busy.store(true, Ordering::Relaxed);
            // The collector's membarrier stands in for the hardware fence here.
            compiler_fence(Ordering::SeqCst);
            if !self.foreign.load(Ordering::Acquire) {
                break;
            }
            self.busy.store(false, Ordering::Release);
            let mut spins = 0u32;
            while self.foreign.load(Ordering::Acquire) {
                back_off(&mut spins);
            }
        }
        // SAFETY: busy and seen no foreign access: the collector keeps off the batch until busy
        // is cleared (module documentation).
        let result = f(unsafe { &mut *self.batch.get() });
        self.busy.store(false, Ordering::Release);
        result
    }

    fn locked<R>(&self, f: impl FnOnce(&mut Vec<u64>) -> R) -> R {
        let mut spins = 0u32;
        while self.locked.swap(true, Ordering::Acquire) {
            back_off(&mut spins);
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

/// One round of waiting for the other side (owner or collector) to finish: spin a little, then
/// yield the core, to the other side if it was preempted mid-access. Only ever on the
/// contended path; the uncontended one never calls it.
#[inline(always)]
fn back_off(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}
