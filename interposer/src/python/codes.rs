//! Code ids: each code object gets an id the first time a stack shows it, and its metadata
//! is copied then, while the frame on the stack keeps it alive.
//!
//! The cache is a fixed open-addressing table shared by all threads, lock-free: a slot is
//! claimed by compare-and-swap on its key (the code object's address) and published by its
//! id. A code object freed and another allocated at the same address is told apart by a
//! fingerprint of the fields that identify it. Two threads meeting the same new code object
//! at once may each define it under its own id; the copies are identical and the reporter
//! treats them alike. When the table is full, a new code object is defined again at each
//! sighting: correct, only larger.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

use super::layouts::{CodeLayout, VAR_OBJECT_SIZE};
use crate::ffi::buffer::zeroed_atomic_words;
use crate::ffi::python as raw;
use crate::stack_words::MAX_CODE_ID;

const SLOTS: usize = 1 << 18;
const MAX_PROBES: usize = 32;

/// A slot is three consecutive words: key (the code object's address, 0 = free),
/// fingerprint hash, and id (0 until the slot is published).
const SLOT_WORDS: usize = 3;

static TABLE: OnceLock<Box<[AtomicU64]>> = OnceLock::new();
static NEXT_ID: AtomicU32 = AtomicU32::new(1);

pub fn init() {
    TABLE.get_or_init(|| zeroed_atomic_words(SLOTS * SLOT_WORDS));
}

struct Slot<'a> {
    key: &'a AtomicU64,
    fingerprint: &'a AtomicU64,
    id: &'a AtomicU64,
}

fn slot(table: &[AtomicU64], index: usize) -> Slot<'_> {
    let at = (index % SLOTS) * SLOT_WORDS;
    Slot {
        key: &table[at],
        fingerprint: &table[at + 1],
        id: &table[at + 2],
    }
}

/// What identifies a code object beyond its address, read from the object itself.
pub struct Fingerprint {
    pub filename: usize,
    pub name: usize,
    pub line_table: usize,
    pub first_line: i32,
    /// Length of the bytecode, which bounds instruction offsets.
    pub instruction_bytes: usize,
}

impl Fingerprint {
    pub fn read(code_object: usize, layout: &CodeLayout) -> Option<Fingerprint> {
        let instruction_bytes = match layout.code_bytes {
            Some(field) => raw::read::<usize>(raw::read::<usize>(code_object + field)? + VAR_OBJECT_SIZE)?,
            None => 2 * raw::read::<usize>(code_object + VAR_OBJECT_SIZE)?,
        };
        Some(Fingerprint {
            filename: raw::read(code_object + layout.filename)?,
            name: raw::read(code_object + layout.name)?,
            line_table: raw::read(code_object + layout.line_table)?,
            first_line: raw::read(code_object + layout.first_line)?,
            instruction_bytes,
        })
    }

    /// Independent rotations combined by one multiply: a chain of five multiply-rotate
    /// rounds (one per field) stalled every Python frame of every stack walk.
    fn hash(&self) -> u64 {
        let mixed = self.filename as u64
            ^ (self.name as u64).rotate_left(17)
            ^ (self.line_table as u64).rotate_left(34)
            ^ (self.first_line as u32 as u64).rotate_left(51)
            ^ (self.instruction_bytes as u64).rotate_left(5);
        (mixed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ mixed >> 29) | 1
    }
}

fn home(code_object: usize) -> usize {
    ((code_object as u64 >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize % SLOTS
}

/// The id of this code object if it was defined before.
#[inline]
pub fn lookup(code_object: usize, fingerprint: &Fingerprint) -> Option<u32> {
    let table = TABLE.get()?;
    let wanted = fingerprint.hash();
    let start = home(code_object);
    for probe in 0..MAX_PROBES {
        let slot = slot(table, start + probe);
        match slot.key.load(Ordering::Acquire) {
            0 => return None,
            key if key == code_object as u64 => {
                let id = slot.id.load(Ordering::Acquire);
                if id != 0 && slot.fingerprint.load(Ordering::Relaxed) == wanted {
                    return Some(id as u32);
                }
            }
            _ => {}
        }
    }
    None
}

/// Gives a code object a new id and remembers it when the table has room.
pub fn insert(code_object: usize, fingerprint: &Fingerprint) -> u32 {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed).min(MAX_CODE_ID);
    let Some(table) = TABLE.get() else { return id };
    let start = home(code_object);
    for probe in 0..MAX_PROBES {
        let slot = slot(table, start + probe);
        if slot
            .key
            .compare_exchange(0, code_object as u64, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            slot.fingerprint.store(fingerprint.hash(), Ordering::Relaxed);
            slot.id.store(id.into(), Ordering::Release);
            return id;
        }
    }
    id
}
