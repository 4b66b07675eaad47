//! Code ids: each code object gets an id the first time a stack shows it, and its metadata
//! is copied then, while the frame on the stack keeps it alive.
//!
//! The cache is a set of open-addressing tables shared by all threads, lock-free: a slot is
//! claimed by compare-and-swap on its key (the code object's address) and published by its
//! id. A code object freed and another allocated at the same address is told apart by a
//! fingerprint of the fields that identify it. Two threads meeting the same new code object
//! at once may each define it under its own id; the copies are identical and the reporter
//! treats them alike.
//!
//! The first table is small and each next one twice the size, taken into use when the newest
//! is half full; entries never move, and a lookup probes the newest table first. One large
//! table would touch a fresh page for nearly every new code object (hashed addresses spread
//! over all of it), a start-up cost every Python program would pay. All tables are
//! carved from one zeroed allocation made at start-up, whose untouched pages cost nothing,
//! so that taking a table into use is one atomic store, never a lock (a fork may come at
//! any moment). When every table is full, a new code object is defined again at each
//! sighting: correct, only larger.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;

use super::layouts::{CodeLayout, VAR_OBJECT_SIZE};
use crate::stack_words::MAX_CODE_ID;
use crate::sys::buffer::zeroed_atomic_words;
use crate::sys::python_raw as raw;

/// Slots of the first table (16,384: 384 KiB); table `n` has `FIRST_SLOTS << n`.
const FIRST_SLOTS: usize = 1 << 14;
/// Up to 16,384 · 63 slots in all (1 M code objects, 24 MB).
const TABLE_COUNT: usize = 6;
const MAX_PROBES: usize = 32;

/// A slot is three consecutive words: key (the code object's address, 0 = free),
/// fingerprint hash, and id (0 until the slot is published).
const SLOT_WORDS: usize = 3;

/// Every table's slots, table `n` after those of tables `0..n`.
static WORDS: OnceLock<Box<[AtomicU64]>> = OnceLock::new();
/// Code objects remembered in each table.
static FILLED: [AtomicUsize; TABLE_COUNT] = [const { AtomicUsize::new(0) }; TABLE_COUNT];
/// Index of the newest table in use.
static NEWEST: AtomicUsize = AtomicUsize::new(0);
static NEXT_ID: AtomicU32 = AtomicU32::new(1);

/// Called once, before any walk.
pub fn init() {
    WORDS.get_or_init(|| zeroed_atomic_words(FIRST_SLOTS * ((1 << TABLE_COUNT) - 1) * SLOT_WORDS));
}

struct Table {
    words: &'static [AtomicU64],
    slots: usize,
    filled: &'static AtomicUsize,
}

fn table(index: usize) -> Option<Table> {
    let words = WORDS.get()?;
    let first_slot = FIRST_SLOTS * ((1 << index) - 1);
    let slots = FIRST_SLOTS << index;
    Some(Table {
        words: &words[first_slot * SLOT_WORDS..(first_slot + slots) * SLOT_WORDS],
        slots,
        filled: &FILLED[index],
    })
}

struct Slot<'a> {
    key: &'a AtomicU64,
    fingerprint: &'a AtomicU64,
    id: &'a AtomicU64,
}

impl Table {
    fn slot(&self, index: usize) -> Slot<'_> {
        let at = (index % self.slots) * SLOT_WORDS;
        Slot {
            key: &self.words[at],
            fingerprint: &self.words[at + 1],
            id: &self.words[at + 2],
        }
    }

    fn home(&self, code_object: usize) -> usize {
        ((code_object as u64 >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as usize % self.slots
    }

    fn lookup(&self, code_object: usize, wanted: u64) -> Option<u32> {
        let start = self.home(code_object);
        for probe in 0..MAX_PROBES {
            let slot = self.slot(start + probe);
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

    fn forget(&self, code_object: usize) {
        let start = self.home(code_object);
        for probe in 0..MAX_PROBES {
            let slot = self.slot(start + probe);
            match slot.key.load(Ordering::Acquire) {
                0 => return,
                // No fingerprint hash is 0: the slot never matches again.
                key if key == code_object as u64 => slot.fingerprint.store(0, Ordering::Release),
                _ => {}
            }
        }
    }

    fn insert(&self, code_object: usize, fingerprint: u64, id: u32) -> bool {
        let start = self.home(code_object);
        for probe in 0..MAX_PROBES {
            let slot = self.slot(start + probe);
            if slot
                .key
                .compare_exchange(0, code_object as u64, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                slot.fingerprint.store(fingerprint, Ordering::Relaxed);
                slot.id.store(id.into(), Ordering::Release);
                self.filled.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        false
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

/// The id of this code object if it was defined before.
#[inline]
pub fn lookup(code_object: usize, fingerprint: &Fingerprint) -> Option<u32> {
    let wanted = fingerprint.hash();
    let newest = NEWEST.load(Ordering::Acquire);
    (0..=newest)
        .rev()
        .filter_map(table)
        .find_map(|table| table.lookup(code_object, wanted))
}

/// Forgets the code object at `code_object`, which is being freed: a code object allocated
/// there next must not be taken for it. Without this only the fingerprint tells them apart,
/// and it does not when the new object's file name and line table also took the addresses of
/// the old one's (as when the same source is compiled again and again).
pub fn forget(code_object: usize) {
    let newest = NEWEST.load(Ordering::Acquire);
    for table in (0..=newest).filter_map(table) {
        table.forget(code_object);
    }
}

/// Gives a code object a new id and remembers it when a table has room.
pub fn insert(code_object: usize, fingerprint: &Fingerprint) -> u32 {
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed).min(MAX_CODE_ID);
    let hash = fingerprint.hash();
    let mut index = NEWEST.load(Ordering::Acquire);
    loop {
        let Some(current) = table(index) else { return id };
        let half_full = current.filled.load(Ordering::Relaxed) >= current.slots / 2;
        if !half_full && current.insert(code_object, hash, id) {
            return id;
        }
        if index + 1 == TABLE_COUNT {
            return id;
        }
        index += 1;
        NEWEST.fetch_max(index, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fingerprint(first_line: i32) -> Fingerprint {
        Fingerprint {
            filename: 0x1000,
            name: 0x2000,
            line_table: 0x3000,
            first_line,
            instruction_bytes: 10,
        }
    }

    #[test]
    fn ids_survive_growth_and_a_reused_address_gets_a_new_id() {
        init();
        let count = FIRST_SLOTS * 2;
        let base = 0x7f00_0000_0000_usize;
        let ids: Vec<u32> = (0..count).map(|i| insert(base + i * 256, &fingerprint(1))).collect();
        assert!(NEWEST.load(Ordering::Acquire) >= 2, "tables were added");
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(lookup(base + i * 256, &fingerprint(1)), Some(*id), "code object {i}");
        }
        assert_eq!(
            lookup(base, &fingerprint(2)),
            None,
            "another code object at a known address"
        );
        let again = insert(base, &fingerprint(2));
        assert_ne!(again, ids[0]);
        assert_eq!(lookup(base, &fingerprint(2)), Some(again));
        assert_eq!(lookup(base, &fingerprint(1)), Some(ids[0]));

        // Freed, then another code object with an identical fingerprint at its address.
        let freed = base + 7 * 256;
        forget(freed);
        assert_eq!(lookup(freed, &fingerprint(1)), None);
        let successor = insert(freed, &fingerprint(1));
        assert_ne!(successor, ids[7]);
        assert_eq!(lookup(freed, &fingerprint(1)), Some(successor));
        assert_eq!(lookup(base + 8 * 256, &fingerprint(1)), Some(ids[8]), "neighbours kept");
    }
}
