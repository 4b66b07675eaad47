//! Names for what running threads hold in their frames, read by the scan made when
//! finalisation begins: each local variable (fast locals, cells and free variables) of each
//! frame of each thread still running then — daemon threads, the only ones left at that
//! point — named `module.function.<locals>.name`, the way Python names what a function
//! defines. The scan floods from them after the module globals (see [`crate::reach`]), so a
//! block a global also reaches keeps the global's name.
//!
//! Reads go through the caller's reader (the scan's safe reader): nothing here dereferences
//! memory itself; counts read from memory are bounded before they are trusted, and a chain
//! that loops or leads nowhere ends the walk. Per-version facts come from [`super::layouts`].

use super::holders::{Namer, Read};
use super::layouts::{
    CurrentFrame, FrameChain, LocalNames, OBJECT_TYPE, OWNED_BY_C_STACK, THREAD_INTERPRETER, THREAD_NEXT, TUPLE_ITEMS,
    VAR_OBJECT_SIZE,
};

/// Threads, frames per thread and variables per frame read at most.
const MAX_THREADS: usize = 4096;
const MAX_FRAMES: usize = 1024;
const MAX_VARIABLES: u64 = 4096;

/// The thread states of the main interpreter, `(interpreter, first)`: those of its list from
/// `first`, then those among `blocks` (live blocks of a thread state's size) whose
/// interpreter it is.
fn thread_states(read: &mut Read<'_>, (interpreter, first): (u64, u64), blocks: &[u64]) -> Vec<u64> {
    let mut threads = Vec::new();
    let mut thread = first;
    while thread != 0 && threads.len() < MAX_THREADS && !threads.contains(&thread) {
        threads.push(thread);
        thread = read(thread + THREAD_NEXT).unwrap_or(0);
    }
    if interpreter != 0 {
        for &block in blocks {
            if threads.len() < MAX_THREADS
                && read(block + THREAD_INTERPRETER) == Some(interpreter)
                && !threads.contains(&block)
            {
                threads.push(block);
            }
        }
    }
    threads
}

/// The size of the blocks that may be thread states of the interpreter in the process.
pub fn thread_state_size() -> Option<u64> {
    Some(super::interpreter()?.layout.locals.thread_state_size)
}

impl Namer {
    /// The named roots of the frames of every thread of the main interpreter: (object,
    /// name) pairs, innermost frame first within a thread. The threads are those of the
    /// interpreter's list and, among `blocks` (live blocks of [`thread_state_size`]),
    /// those whose interpreter is the main one: finalisation takes the threads still running
    /// off the list before anything else, and clears them right after.
    pub fn frame_roots(&self, read: &mut Read<'_>, blocks: &[u64]) -> Vec<(u64, String)> {
        let mut roots = Vec::new();
        for thread in thread_states(read, (self.interpreter, self.first_thread), blocks) {
            self.thread_roots(read, thread, &mut roots);
        }
        roots
    }

    fn thread_roots(&self, read: &mut Read<'_>, thread: u64, roots: &mut Vec<(u64, String)>) {
        let (mut frame, back, code_field, owner) = match self.layout.frames {
            FrameChain::FrameObjects { first, back, code, .. } => {
                (read(thread + first as u64), back as u64, code as u64, None)
            }
            FrameChain::InterpreterFrames {
                ref current,
                previous,
                code,
                owner,
                ..
            } => {
                let first = match *current {
                    CurrentFrame::ThroughCFrame { cframe, current_frame } => {
                        read(thread + cframe as u64).and_then(|cframe| read(cframe + current_frame as u64))
                    }
                    CurrentFrame::InThreadState(field) => read(thread + field as u64),
                };
                (first, previous as u64, code as u64, Some(owner as u64))
            }
        };
        for _ in 0..MAX_FRAMES {
            let Some(at) = frame.filter(|&f| f != 0) else {
                return;
            };
            let shim = owner.is_some_and(|owner| read(at + owner).map(|w| w as u8) == Some(OWNED_BY_C_STACK));
            if !shim {
                self.frame_roots_of(read, at, code_field, roots);
            }
            frame = read(at + back).filter(|&next| next != at);
        }
    }

    /// The variables of the frame at `frame`, named after its code and module.
    fn frame_roots_of(&self, read: &mut Read<'_>, frame: u64, code_field: u64, roots: &mut Vec<(u64, String)>) {
        let Some(code) = read(frame + code_field).filter(|&c| c != 0) else {
            return;
        };
        if read(code + OBJECT_TYPE as u64) != Some(self.code_type) {
            return;
        }
        let Some(function) = read(code + self.layout.code.name as u64).and_then(|name| self.ascii(read, name)) else {
            return;
        };
        let locals = self.layout.locals;
        let module = read(frame + locals.frame_globals)
            .and_then(|globals| self.dict_value(read, globals, "__name__"))
            .and_then(|name| self.ascii(read, name));
        let prefix = match module {
            Some(module) => format!("{module}.{function}.<locals>."),
            None => format!("{function}.<locals>."),
        };
        let values = frame + locals.frame_locals;
        let mut slot = 0;
        let mut name_slots = |read: &mut Read<'_>, names: u64, count: u64, roots: &mut Vec<(u64, String)>| {
            for index in 0..count.min(MAX_VARIABLES) {
                let value = read(values + 8 * (slot + index)).unwrap_or(0);
                let name = read(names + TUPLE_ITEMS + 8 * index).and_then(|name| self.ascii(read, name));
                if let (true, Some(name)) = (value != 0, name) {
                    roots.push((value, format!("{prefix}{name}")));
                }
            }
            slot += count;
        };
        let count_at = |read: &mut Read<'_>, field: u64| read(code + field).map(|word| word as u32 as i32);
        let tuple_size =
            |read: &mut Read<'_>, tuple: u64| read(tuple + VAR_OBJECT_SIZE as u64).filter(|&n| n <= MAX_VARIABLES);
        match locals.names {
            LocalNames::ByKind {
                count,
                locals: local_names,
                cells,
                free,
            } => {
                let Some(fast) = count_at(read, count).filter(|&n| (0..=MAX_VARIABLES as i32).contains(&n)) else {
                    return;
                };
                for (names, count) in [(local_names, Some(fast as u64)), (cells, None), (free, None)] {
                    let Some(names) = read(code + names) else {
                        return;
                    };
                    let Some(count) = count.or_else(|| tuple_size(read, names)) else {
                        return;
                    };
                    name_slots(read, names, count, roots);
                }
            }
            LocalNames::Combined { count, names } => {
                let Some(all) = count_at(read, count).filter(|&n| (0..=MAX_VARIABLES as i32).contains(&n)) else {
                    return;
                };
                if let Some(names) = read(code + names) {
                    name_slots(read, names, all as u64, roots);
                }
            }
        }
    }
}
