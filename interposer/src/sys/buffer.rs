//! Fixed-capacity stacks of values that live on the caller's stack and are never zeroed:
//! the hooks fill them on every allocation, where clearing a few kilobytes would show.

use std::mem::MaybeUninit;

pub type WordBuffer<const N: usize> = StackBuffer<u64, N>;

/// A fixed-capacity stack of plain values, uninitialised beyond its length.
pub struct StackBuffer<T: Copy, const N: usize> {
    items: [MaybeUninit<T>; N],
    len: usize,
}

impl<T: Copy, const N: usize> StackBuffer<T, N> {
    #[inline(always)]
    pub fn new() -> Self {
        StackBuffer {
            items: [const { MaybeUninit::uninit() }; N],
            len: 0,
        }
    }

    /// Appends `item`; a full buffer drops it (callers check [`Self::is_full`]).
    #[inline(always)]
    pub fn push(&mut self, item: T) {
        if let Some(slot) = self.items.get_mut(self.len) {
            slot.write(item);
            self.len += 1;
        }
    }

    /// Appends `items` while there is room (callers check [`Self::has_room`] first): one
    /// length update for the run, not one per item.
    #[inline(always)]
    pub fn extend(&mut self, items: impl Iterator<Item = T>) {
        let mut added = 0;
        for (slot, item) in self.items[self.len..].iter_mut().zip(items) {
            slot.write(item);
            added += 1;
        }
        self.len += added;
    }

    #[inline(always)]
    pub fn is_full(&self) -> bool {
        self.len == N
    }

    /// Keeps the first `len` items.
    #[inline(always)]
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Room for `free` more items.
    #[inline(always)]
    pub fn has_room(&self, free: usize) -> bool {
        N - self.len >= free
    }

    #[inline(always)]
    pub fn as_slice(&self) -> &[T] {
        // SAFETY: the first `len` items were written by `push`.
        unsafe { std::slice::from_raw_parts(self.items.as_ptr() as *const T, self.len) }
    }
}

/// `n` atomic words, all zero, from zeroed memory: a large table costs only the pages that
/// are later written.
pub fn zeroed_atomic_words(n: usize) -> Box<[std::sync::atomic::AtomicU64]> {
    let words = Box::<[std::sync::atomic::AtomicU64]>::new_zeroed_slice(n);
    // SAFETY: an all-zero bit pattern is a valid AtomicU64 (zero).
    unsafe { words.assume_init() }
}

/// Asks the core to fetch, for writing, the cache lines at `from`, `from + 64`, … below `to`
/// bytes past the start of `words`' buffer (at least the one at `from`): a hint, which never
/// faults and changes nothing visible. Called with consecutive ranges, it reaches every line:
/// one ending mid-line is fetched by the next call, which starts there, so no range needs
/// aligning (see docs/benchmarks.md, "Batch prefetch").
#[inline(always)]
pub fn prefetch_for_write(words: &[u64], from: usize, to: usize) {
    const LINE: usize = 64;
    let start = words.as_ptr() as usize;
    let mut offset = from;
    loop {
        let target = start.wrapping_add(offset);
        // SAFETY: `prefetchw` only hints the cache; it never faults, even on an unmapped
        // address, and changes no register or memory the program can see.
        unsafe {
            std::arch::asm!("prefetchw byte ptr [{0}]", in(reg) target, options(nostack, preserves_flags, readonly));
        }
        offset += LINE;
        if offset >= to {
            break;
        }
    }
}
