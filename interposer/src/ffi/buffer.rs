//! A fixed-capacity stack of words that lives on the caller's stack and is never zeroed:
//! the hooks fill it on every allocation, where clearing a few kilobytes would show.

use std::mem::MaybeUninit;

pub struct WordBuffer<const N: usize = 256> {
    words: [MaybeUninit<u64>; N],
    len: usize,
}

impl<const N: usize> WordBuffer<N> {
    #[inline(always)]
    pub fn new() -> Self {
        WordBuffer {
            words: [MaybeUninit::uninit(); N],
            len: 0,
        }
    }

    /// Appends `word`; a full buffer drops it (callers check [`Self::is_full`]).
    #[inline(always)]
    pub fn push(&mut self, word: u64) {
        if let Some(slot) = self.words.get_mut(self.len) {
            slot.write(word);
            self.len += 1;
        }
    }

    #[inline(always)]
    pub fn is_full(&self) -> bool {
        self.len == N
    }

    #[inline(always)]
    pub fn as_slice(&self) -> &[u64] {
        // SAFETY: the first `len` words were written by `push`.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u64, self.len) }
    }
}

/// `n` atomic words, all zero, from zeroed memory: a large table costs only the pages that
/// are later written.
pub fn zeroed_atomic_words(n: usize) -> Box<[std::sync::atomic::AtomicU64]> {
    let words = Box::<[std::sync::atomic::AtomicU64]>::new_zeroed_slice(n);
    // SAFETY: an all-zero bit pattern is a valid AtomicU64 (zero).
    unsafe { words.assume_init() }
}
