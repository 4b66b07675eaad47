//! How a stack frame travels from a hook to the collector: one `u64` per frame.
//!
//! A native return address is stored as is (user-space addresses are below 2^47). A word
//! with the top bit set is a Python frame: the code id in bits 32..63 and the signed
//! instruction offset in the low 32 bits; code id 0 is the end of an eval-loop activation.
//!
//! An event's words interleave the two stacks: each activation's Python frames sit right
//! inside the eval-loop native frame that ran them. Readers only rely on the order within
//! each kind (`format/SPEC.md`); the interleaving is what lets consecutive stacks share
//! nodes of the collector's prefix tree: were every Python frame after the native stack, a
//! new instruction offset in the innermost Python frame would make the whole native stack
//! new again.

use std::cell::Cell;

use libleak_format::Frame;

const PYTHON_BIT: u64 = 1 << 63;
pub const PYTHON_ENTRY: u64 = PYTHON_BIT;
/// Largest code id a word can carry.
pub const MAX_CODE_ID: u32 = (1 << 31) - 1;

#[inline]
pub fn python_frame(code_id: u32, instruction_offset: i32) -> u64 {
    PYTHON_BIT | u64::from(code_id & MAX_CODE_ID) << 32 | u64::from(instruction_offset as u32)
}

#[inline]
pub fn to_frame(word: u64) -> Frame {
    if word & PYTHON_BIT == 0 {
        Frame::Native { address: word }
    } else if word == PYTHON_ENTRY {
        Frame::PythonEntry
    } else {
        Frame::Python {
            code_id: (word & !PYTHON_BIT) >> 32,
            instruction_offset: i64::from(word as u32 as i32),
        }
    }
}

#[inline]
pub fn is_native(word: u64) -> bool {
    word & PYTHON_BIT == 0
}

/// Appends `native` (return addresses, innermost first) and `python` (Python words,
/// innermost first, each activation closed by [`PYTHON_ENTRY`]) to `out`, each activation's
/// words placed just before (inside) the next native frame whose call site lies in
/// `eval_loop` (start..end). Activations left over (an eval frame not recognised, a native
/// unwind cut short) go after the last native frame.
#[inline]
pub fn interleave(out: &mut Vec<u64>, native: &[usize], python: &[u64], eval_loop: (usize, usize)) {
    let is_eval_frame = |&address: &usize| (eval_loop.0..eval_loop.1).contains(&address.wrapping_sub(1));
    out.reserve(native.len() + python.len());
    // Copied in runs between eval frames: the batch's length is updated once per run.
    let mut native = native;
    let mut rest = python;
    while !rest.is_empty() {
        let Some(eval_frame) = native.iter().position(is_eval_frame) else {
            break;
        };
        let end = rest
            .iter()
            .position(|&word| word == PYTHON_ENTRY)
            .map_or(rest.len(), |i| i + 1);
        out.extend(native[..eval_frame].iter().map(|&address| address as u64));
        out.extend_from_slice(&rest[..end]);
        out.push(native[eval_frame] as u64);
        rest = &rest[end..];
        native = &native[eval_frame + 1..];
    }
    out.extend(native.iter().map(|&address| address as u64));
    out.extend_from_slice(rest);
}

/// A thread's previous stack (of at most `N` words), outermost word first: the next stack is
/// sent without the outer words it shares with it (see [`crate::batch`]). Cells, so that it
/// can sit in the thread's const-initialised thread-local.
pub struct PreviousStack<const N: usize> {
    words: [Cell<u64>; N],
    len: Cell<usize>,
}

impl<const N: usize> PreviousStack<N> {
    pub const fn new() -> PreviousStack<N> {
        PreviousStack {
            words: [const { Cell::new(0) }; N],
            len: Cell::new(0),
        }
    }

    /// The next stack shares nothing (it goes into a batch that does not hold this one).
    #[inline(always)]
    pub fn forget(&self) {
        self.len.set(0);
    }

    /// How many outer words `stack` (innermost first) shares with the previous stack, which
    /// it then replaces.
    #[inline(always)]
    pub fn share(&self, stack: &[u64]) -> usize {
        let previous = &self.words[..self.len.get().min(N)];
        let shared = stack
            .iter()
            .rev()
            .zip(previous)
            .take_while(|(word, cell)| **word == cell.get())
            .count();
        let new_outer_first = stack[..stack.len() - shared].iter().rev();
        for (cell, &word) in self.words[shared..].iter().zip(new_outer_first) {
            cell.set(word);
        }
        self.len.set(stack.len().min(N));
        shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_activation_goes_inside_its_eval_frame_and_leftovers_go_last() {
        let eval = (0x1000, 0x2000);
        let (a, b, c) = (python_frame(1, 10), python_frame(2, 20), python_frame(3, 30));
        let native = [0x500, 0x1010, 0x600, 0x1800, 0x700];
        let python = [a, PYTHON_ENTRY, b, c, PYTHON_ENTRY, a, PYTHON_ENTRY];
        let mut out = Vec::new();
        interleave(&mut out, &native, &python, eval);
        assert_eq!(
            out,
            [
                0x500,
                a,
                PYTHON_ENTRY,
                0x1010,
                0x600,
                b,
                c,
                PYTHON_ENTRY,
                0x1800,
                0x700,
                a,
                PYTHON_ENTRY
            ]
        );
    }

    #[test]
    fn a_return_address_just_past_the_eval_loop_is_not_in_it() {
        let mut out = Vec::new();
        let a = python_frame(1, 10);
        interleave(&mut out, &[0x2001, 0x1001], &[a], (0x1000, 0x2000));
        assert_eq!(out, [0x2001, a, 0x1001]);
    }

    #[test]
    fn without_an_interpreter_the_words_are_the_native_frames() {
        let mut out = Vec::new();
        interleave(&mut out, &[0x10, 0x20], &[], (0, 0));
        assert_eq!(out, [0x10, 0x20]);
    }

    #[test]
    fn a_stack_shares_the_outer_words_it_has_in_common_with_the_previous_one() {
        let previous = PreviousStack::<8>::new();
        // Innermost first.
        assert_eq!(previous.share(&[3, 2, 1]), 0, "nothing before");
        assert_eq!(previous.share(&[4, 2, 1]), 2);
        assert_eq!(previous.share(&[6, 5, 4, 2, 1]), 3, "deeper");
        assert_eq!(previous.share(&[1]), 1, "shallower");
        assert_eq!(previous.share(&[9, 8]), 0, "another outermost frame");
        assert_eq!(previous.share(&[9, 8]), 2, "the same stack");
        previous.forget();
        assert_eq!(previous.share(&[9, 8]), 0, "forgotten");
        assert_eq!(previous.share(&[]), 0);
        assert_eq!(previous.share(&[9, 8]), 0, "after an empty stack");
    }
}
