//! The recorder's process-wide state: whether it records, which process it records for, and
//! where libleak's own code lies. Read on every hook with one relaxed load.
//!
//! Must never take a lock or allocate.

use std::sync::atomic::{AtomicU32, AtomicU8, AtomicUsize, Ordering};

use crate::sys;

/// Where the recorder is in its life. Only forward: a process that stops recording never
/// records again (a forked child starts from its parent's state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// The constructor has not finished: hooks pass calls through.
    Starting = 0,
    Recording = 1,
    /// The trace is being ended: hooks pass calls through.
    Finishing = 2,
    /// Not recording, for good (disabled, failed, or finished).
    Off = 3,
}

impl State {
    fn from_u8(value: u8) -> State {
        match value {
            0 => State::Starting,
            1 => State::Recording,
            2 => State::Finishing,
            _ => State::Off,
        }
    }
}

static STATE: AtomicU8 = AtomicU8::new(State::Starting as u8);

#[inline(always)]
pub fn is_recording() -> bool {
    STATE.load(Ordering::Relaxed) == State::Recording as u8
}

/// The state as last published (acquire: what was set up before it is visible).
pub fn current() -> State {
    State::from_u8(STATE.load(Ordering::Acquire))
}

pub fn set(state: State) {
    STATE.store(state as u8, Ordering::Release);
}

/// Moves from `from` to `to`; false (and no change) when the state was not `from`.
pub fn transition(from: State, to: State) -> bool {
    STATE
        .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
}

/// Turns recording off; returns the state it was in.
pub fn turn_off() -> State {
    State::from_u8(STATE.swap(State::Off as u8, Ordering::AcqRel))
}

/// The process the recorder records for: a vfork child (sharing our memory) or a child made
/// without fork handlers (clone, `_Fork`) has another pid and must change nothing.
static PID: AtomicU32 = AtomicU32::new(0);

pub fn set_recorded_process(pid: u32) {
    PID.store(pid, Ordering::Relaxed);
}

pub fn recorded_process() -> u32 {
    PID.load(Ordering::Relaxed)
}

pub fn in_recorded_process() -> bool {
    sys::getpid() == PID.load(Ordering::Relaxed)
}

static OWN_CODE_START: AtomicUsize = AtomicUsize::new(0);
static OWN_CODE_END: AtomicUsize = AtomicUsize::new(0);

/// Notes where libleak's own code is loaded.
pub fn set_own_code(start: usize, end: usize) {
    OWN_CODE_START.store(start, Ordering::Relaxed);
    OWN_CODE_END.store(end, Ordering::Relaxed);
}

pub fn own_code_start() -> usize {
    OWN_CODE_START.load(Ordering::Relaxed)
}

/// `frames`, as libgcc unwound them from inside the interposer, without its own innermost
/// frames.
pub fn without_own_frames(frames: &[usize]) -> &[usize] {
    let (start, end) = (
        OWN_CODE_START.load(Ordering::Relaxed),
        OWN_CODE_END.load(Ordering::Relaxed),
    );
    let own = frames.iter().take_while(|&&ip| ip >= start && ip < end).count();
    &frames[own..]
}
