//! Native stack capture on every allocation: a stepper over per-address unwind rules
//! ([`rules`]), and a per-thread cache of the previous stack so that only the frames that
//! changed since are stepped.
//!
//! The cache's argument for exactness: one step is a function of the frame's code address,
//! stack pointer and (when its rule uses it) frame pointer, plus the stack words it reads. A
//! frame met again with the same code address, stack pointer and, where it matters, frame
//! pointer, whose outer frames' reads all find the same words again, unwinds to the same
//! outer stack; those reads are checked on every reuse. Stacks that were cut at the frame
//! limit, or that needed libgcc, are not cached; a `dlclose` empties every cache.
//!
//! Must never read outside the live part of the current thread's stack, allocate, or take
//! a lock (the loader's, taken by `dl_iterate_phdr` on a rule-cache miss, is the exception
//! libgcc's own unwinder makes as well).

pub mod rules;

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys::buffer::StackBuffer;
use crate::sys::maps;
pub use crate::sys::stack::Registers;
use crate::sys::stack::{capture_with_libgcc, read_stack_word};
use rules::Rule;

pub use crate::sys::stack::frames_with_cfa;

/// The most frames a stack keeps; deeper stacks are cut (and counted by the caller).
pub const MAX_FRAMES: usize = 256;

/// Captures that libgcc unwound (a frame the stepper does not handle, or a stack outside
/// the thread's own).
pub static LIBGCC_CAPTURES: AtomicU64 = AtomicU64::new(0);

/// One frame of a stepped stack, with what its step read.
#[derive(Clone, Copy)]
struct Frame {
    ip: usize,
    sp: usize,
    bp: usize,
    /// Where the step read the return address (0: the stack ended without a read).
    ra_slot: usize,
    ra: usize,
    /// Where the step read the saved frame pointer (0: not restored from the stack, or, in
    /// the previous stack, not needed by any step outward).
    bp_slot: usize,
    saved_bp: usize,
    /// The step computes the CFA from the frame pointer.
    uses_bp: bool,
    /// This frame's frame pointer decides some step from here outwards.
    bp_matters: bool,
}

impl Frame {
    const EMPTY: Frame = Frame {
        ip: 0,
        sp: 0,
        bp: 0,
        ra_slot: 0,
        ra: 0,
        bp_slot: 0,
        saved_bp: 0,
        uses_bp: false,
        bp_matters: false,
    };

    /// Whether the stack words this frame's step read still hold what they held.
    #[inline(always)]
    fn reads_unchanged(&self) -> bool {
        (self.ra_slot == 0 || read_stack_word(self.ra_slot) == self.ra)
            && (self.bp_slot == 0 || (self.saved_bp != NOT_ON_STACK && read_stack_word(self.bp_slot) == self.saved_bp))
    }
}

/// The thread's previous stack.
struct PreviousStack {
    frames: [Frame; MAX_FRAMES],
    len: usize,
    /// [`rules::generation`] when it was stepped.
    generation: u64,
}

thread_local! {
    // Const-initialised and without Drop: accessing them never allocates.
    static PREVIOUS: RefCell<PreviousStack> = const {
        RefCell::new(PreviousStack { frames: [Frame::EMPTY; MAX_FRAMES], len: 0, generation: 0 })
    };
    /// (lowest, highest) address of the thread's stack; (0, 0) until known, (1, 1) when
    /// unknown.
    static STACK: Cell<(usize, usize)> = const { Cell::new((0, 0)) };
}

/// A captured stack: return addresses, innermost first.
pub type Stack = StackBuffer<usize, MAX_FRAMES>;

/// Fills `out` with return addresses, innermost first, starting at the frame `caller`
/// describes: a hook's caller, at the call (its instruction pointer is the return address).
/// False when the stepper could not go on and libgcc unwound instead, from inside the
/// interposer: the stack then starts with the interposer's own frames.
#[inline(never)]
pub fn capture_from_caller(out: &mut Stack, caller: Registers) -> bool {
    let stepped = stack_top(caller.sp).is_some_and(|top| {
        PREVIOUS.with(|previous| match previous.try_borrow_mut() {
            Ok(mut previous) => step_all(caller, top, out, Some(&mut previous)),
            Err(_) => step_all(caller, top, out, None),
        })
    });
    if !stepped {
        out.truncate(0);
        LIBGCC_CAPTURES.fetch_add(1, Ordering::Relaxed);
        capture_slowly(out);
    }
    stepped
}

/// libgcc's unwinder, from inside the interposer: the reference [`capture_from_caller`] is
/// checked against. Same output shape:
/// libgcc also reports a last frame at address 0 where the outermost frame's return address
/// is zero; the stepper stops before it.
#[inline(never)]
pub fn capture_slowly(out: &mut Stack) {
    capture_with_libgcc(out);
    if !out.is_full() && out.as_slice().last() == Some(&0) {
        out.truncate(out.as_slice().len() - 1);
    }
}

/// The top of the thread's stack when `sp` lies in it.
#[inline(always)]
fn stack_top(sp: usize) -> Option<usize> {
    let (mut low, mut high) = STACK.get();
    if high == 0 {
        (low, high) = stack_around(sp).unwrap_or((1, 1));
        STACK.set((low, high));
    }
    (sp >= low && sp < high).then_some(high)
}

/// The stack `sp` is in, as (lowest, highest) address: its mapping, or for the main
/// thread's stack, which grows, as far down as its size limit lets it.
#[cold]
#[inline(never)]
fn stack_around(sp: usize) -> Option<(usize, usize)> {
    let mut found = None;
    maps::for_each_mapping(&mut |mapping| {
        let (start, end) = (mapping.start as usize, mapping.end as usize);
        if sp < start || sp >= end {
            return true;
        }
        let low = if mapping.path == b"[stack]" {
            const UNLIMITED_STACK: usize = 1 << 30;
            end.saturating_sub(crate::sys::stack::stack_size_limit().unwrap_or(UNLIMITED_STACK))
        } else {
            start
        };
        found = Some((low.min(start), end));
        false
    });
    found
}

/// Steps from `registers` to the outermost frame. False when a frame needs libgcc.
#[inline(always)]
fn step_all(registers: Registers, top: usize, out: &mut Stack, mut previous: Option<&mut PreviousStack>) -> bool {
    if let Some(previous) = previous.as_deref_mut() {
        let generation = rules::generation();
        if previous.generation != generation {
            previous.len = 0;
            previous.generation = generation;
        }
    }
    // The frames stepped here, kept only when they become the thread's previous stack.
    let mut fresh = StackBuffer::<Frame, MAX_FRAMES>::new();
    let mut state = registers;
    let mut cursor = 0;
    loop {
        if out.is_full() {
            if let Some(previous) = previous {
                previous.len = 0;
            }
            return true;
        }
        if let Some(previous) = previous.as_deref_mut() {
            while cursor < previous.len && previous.frames[cursor].sp < state.sp {
                cursor += 1;
            }
            if reuse(previous, cursor, &state, out) {
                adopt(previous, fresh.as_slice(), cursor);
                return true;
            }
        }
        out.push(state.ip);
        // Every frame's address is a return address: its call instruction is one byte back.
        let (frame, next) = match rules::rule_for(state.ip.wrapping_sub(1)) {
            Rule::Unsupported => {
                if let Some(previous) = previous {
                    previous.len = 0;
                }
                return false;
            }
            Rule::End => (ended(&state, false), None),
            Rule::Step {
                cfa_from_bp,
                cfa_offset,
                saved_bp,
            } => step(&state, top, cfa_from_bp, cfa_offset, saved_bp),
        };
        if previous.is_some() {
            fresh.push(frame);
        }
        match next {
            Some(next) => state = next,
            None => {
                if let Some(previous) = previous {
                    let reused_from = previous.len;
                    adopt(previous, fresh.as_slice(), reused_from);
                }
                return true;
            }
        }
    }
}

/// A frame whose step ends the stack.
#[inline(always)]
fn ended(state: &Registers, uses_bp: bool) -> Frame {
    Frame {
        ip: state.ip,
        sp: state.sp,
        bp: NOT_ON_STACK,
        uses_bp,
        ..Frame::EMPTY
    }
}

/// Stands for a frame pointer value that is not an address in the stack: one that is a
/// frame pointer decides steps, any other is whatever the code kept in the register (often
/// a heap pointer, which libleak must not keep: the exit scan would take a stale copy for a
/// reference to the block). Never equal to anything in comparisons.
const NOT_ON_STACK: usize = 1;

#[inline(always)]
fn stack_value(value: usize, sp: usize, top: usize) -> usize {
    if value >= sp && value < top {
        value
    } else {
        NOT_ON_STACK
    }
}

/// One step out of the frame at `state`: the frame as recorded, and the caller's registers
/// (None at the end of the stack, or where a read would leave the frame's stack).
#[inline(always)]
fn step(
    state: &Registers,
    top: usize,
    cfa_from_bp: bool,
    cfa_offset: i32,
    saved_bp: Option<i16>,
) -> (Frame, Option<Registers>) {
    let base = if cfa_from_bp { state.bp } else { state.sp };
    let cfa = base.wrapping_add_signed(cfa_offset as isize);
    let ra_slot = cfa.wrapping_sub(8);
    if cfa <= state.sp || ra_slot < state.sp || cfa > top {
        return (ended(state, cfa_from_bp), None);
    }
    let ra = read_stack_word(ra_slot);
    let (bp_slot, bp) = match saved_bp {
        Some(offset) => {
            let slot = cfa.wrapping_add_signed(offset as isize);
            if slot < state.sp || slot.wrapping_add(8) > top || slot.wrapping_add(8) < slot {
                return (ended(state, cfa_from_bp), None);
            }
            (slot, read_stack_word(slot))
        }
        None => (0, state.bp),
    };
    let frame = Frame {
        ip: state.ip,
        sp: state.sp,
        bp: stack_value(state.bp, state.sp, top),
        ra_slot,
        ra,
        bp_slot,
        saved_bp: stack_value(bp, state.sp, top),
        uses_bp: cfa_from_bp,
        bp_matters: false,
    };
    let next = (ra != 0).then_some(Registers { ip: ra, sp: cfa, bp });
    (frame, next)
}

/// When the previous stack's frame at `cursor` is the frame at `state` and every read
/// outward from it still holds, appends its return addresses and those outward to `out`.
#[inline(always)]
fn reuse(previous: &PreviousStack, cursor: usize, state: &Registers, out: &mut Stack) -> bool {
    let Some(anchor) = previous.frames[..previous.len].get(cursor) else {
        return false;
    };
    if anchor.sp != state.sp
        || anchor.ip != state.ip
        || (anchor.bp_matters && (anchor.bp == NOT_ON_STACK || anchor.bp != state.bp))
    {
        return false;
    }
    let suffix = &previous.frames[cursor..previous.len];
    if !out.has_room(suffix.len()) || !suffix.iter().all(Frame::reads_unchanged) {
        return false;
    }
    out.extend(suffix.iter().map(|frame| frame.ip));
    true
}

/// Makes the stack just captured the thread's previous one: the `fresh` frames, then the
/// previous stack's frames from `reused_from` (none when it equals the length).
///
/// Frame pointer values are kept only where they decide a step (and are then stack
/// addresses): elsewhere they are whatever the code kept in that register, often a heap
/// pointer, which must not outlive the frame here (the exit scan would take it for a live
/// reference to the block).
#[inline(always)]
fn adopt(previous: &mut PreviousStack, fresh: &[Frame], reused_from: usize) {
    let count = fresh.len();
    let reused = previous.len - reused_from;
    if count != reused_from {
        // Most captures step as many fresh frames as they replace: the suffix stays put.
        previous.frames.copy_within(reused_from..previous.len, count);
    }
    let mut caller_bp_matters = reused != 0 && previous.frames[count].bp_matters;
    for (index, frame) in fresh.iter().enumerate().rev() {
        let restores_bp = frame.bp_slot != 0;
        let bp_matters = frame.uses_bp || (!restores_bp && caller_bp_matters);
        let (bp_slot, saved_bp) = if restores_bp && caller_bp_matters {
            (frame.bp_slot, frame.saved_bp)
        } else {
            (0, 0)
        };
        previous.frames[index] = Frame {
            bp: if bp_matters { frame.bp } else { 0 },
            bp_slot,
            saved_bp,
            bp_matters,
            ..*frame
        };
        caller_bp_matters = bp_matters;
    }
    previous.len = count + reused;
}
