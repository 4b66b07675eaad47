//! Where CPython's array free lists leave a stale copy of the objects they hand out. In
//! 3.9–3.13 dropped lists and dicts are kept in arrays (`free_list[numfree++] = op`, in
//! `listobject.c` and `dictobject.c`: statics in 3.9, the interpreter state's `list` and
//! `dict_state` in 3.10–3.12, its `object_state.freelists` in 3.13), and taking one
//! (`op = free_list[--numfree]`) leaves its address in the slot. Until another object is
//! dropped into that slot, the conservative scan would read it as a reference: a list an
//! extension leaks right after taking it would look reachable. Tuples and floats are linked
//! through their dead objects instead: taking one overwrites the head with the next.
//!
//! For an object an extension just took off such a list, this finds the slot that held it: the
//! first time by searching the interpreter's writable data (where `_PyRuntime`, the statics
//! and, from 3.12, the main interpreter's state lie) and the main interpreter's state (a heap
//! block in 3.10 and 3.11); then next to the slot found last, where the same array is. The
//! scans skip a recorded slot that still names its object.
//!
//! Reads only through `process_vm_readv` (never faults); never writes; a search that finds no
//! single slot gives up after a few tries.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::sys::memory::copy_own;

/// Slots either side of the last slot found that a later search reads: a free list holds 80.
const WINDOW_SLOTS: usize = 96;
/// How much of the main interpreter's state a first search reads.
const INTERPRETER_SPAN: usize = 512 << 10;
/// Bytes a first search reads at a time.
const CHUNK: usize = 64 << 10;
/// First searches tried per array before giving up.
const MAX_SEARCHES: u32 = 8;

/// The arrays: lists' (0), dicts' (1).
pub const ARRAYS: usize = 2;
static LAST_SLOT: [AtomicUsize; ARRAYS] = [const { AtomicUsize::new(0) }; ARRAYS];
static SEARCHES: [AtomicU32; ARRAYS] = [const { AtomicU32::new(0) }; ARRAYS];
/// Where a first search looks: the writable segment holding `_PyRuntime` (start, length),
/// and the main interpreter's state.
static DATA_START: AtomicUsize = AtomicUsize::new(0);
static DATA_LEN: AtomicUsize = AtomicUsize::new(0);
static INTERPRETER_STATE: AtomicUsize = AtomicUsize::new(0);
/// Gives the main interpreter's state (0: none yet), asked at the first search.
static MAIN_INTERPRETER: OnceLock<fn() -> usize> = OnceLock::new();

/// Sets where a first search looks, once the interpreter is found: the writable segment
/// holding `_PyRuntime`, and how to find the main interpreter's state.
pub fn set_search_space(data_segment: (usize, usize), main_interpreter: fn() -> usize) {
    DATA_START.store(data_segment.0, Ordering::Relaxed);
    DATA_LEN.store(data_segment.1, Ordering::Relaxed);
    let _ = MAIN_INTERPRETER.set(main_interpreter);
}

/// Free-list slots that still name an object: the first, and a mask of the next 63 (bit `i`:
/// the slot `8 * i` bytes after it). Slots past the list's count keep what they last held,
/// so the object taken can be named by more than one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StaleSlots {
    pub first: usize,
    pub more: u64,
}

impl StaleSlots {
    /// The slots of `found` (sorted addresses), when they lie within 64 slots.
    fn of(mut found: impl Iterator<Item = usize>) -> Option<StaleSlots> {
        let first = found.next()?;
        let mut more = 0u64;
        for slot in found {
            let index = (slot - first) / 8;
            if index >= 64 {
                return None;
            }
            more |= 1 << index;
        }
        Some(StaleSlots { first, more })
    }

    /// Every slot's address.
    pub fn addresses(self) -> impl Iterator<Item = usize> {
        let first = (self.first != 0).then_some(self.first);
        first.into_iter().chain(
            (1..64)
                .filter(move |i| self.more >> i & 1 != 0)
                .map(move |i| self.first + 8 * i),
        )
    }
}

/// The free-list slots that still hold `object`, which a constructor just took off array
/// free list `array` (see [`ARRAYS`]) for an extension; none when not found.
pub fn stale_slots(array: usize, object: usize) -> StaleSlots {
    if array >= ARRAYS {
        return StaleSlots::default();
    }
    let last = LAST_SLOT[array].load(Ordering::Relaxed);
    if last != 0 {
        let start = last.saturating_sub(WINDOW_SLOTS * 8);
        let mut window = [0u8; 2 * WINDOW_SLOTS * 8 + 8];
        let read = copy_own(start as u64, &mut window);
        let found = StaleSlots::of(matches(&window[..read], start, object));
        // No copy of the free list's addresses stays behind on the stack.
        window.fill(0);
        std::hint::black_box(&window);
        if let Some(slots) = found {
            LAST_SLOT[array].store(slots.first, Ordering::Relaxed);
            return slots;
        }
    }
    if SEARCHES[array].fetch_add(1, Ordering::Relaxed) >= MAX_SEARCHES {
        return StaleSlots::default();
    }
    if INTERPRETER_STATE.load(Ordering::Relaxed) == 0 {
        let state = MAIN_INTERPRETER.get().map_or(0, |main| main());
        INTERPRETER_STATE.store(state, Ordering::Relaxed);
    }
    let (data, interpreter) = (
        DATA_START.load(Ordering::Relaxed),
        INTERPRETER_STATE.load(Ordering::Relaxed),
    );
    let data_len = DATA_LEN.load(Ordering::Relaxed);
    // In 3.12+ the main interpreter's state lies in the data segment: one region then.
    let interpreter = if interpreter >= data && interpreter < data + data_len {
        0
    } else {
        interpreter
    };
    let regions = [(data, data_len), (interpreter, INTERPRETER_SPAN)];
    let mut found = Vec::new();
    let mut chunk = vec![0u8; CHUNK];
    for (start, len) in regions.into_iter().filter(|&(start, len)| start != 0 && len != 0) {
        let mut at = start;
        while at < start + len && found.len() <= 64 {
            let want = CHUNK.min(start + len - at);
            let read = copy_own(at as u64, &mut chunk[..want]);
            found.extend(matches(&chunk[..read], at, object));
            if read < want {
                break;
            }
            at += want;
        }
    }
    found.sort_unstable();
    match StaleSlots::of(found.into_iter()) {
        Some(slots) => {
            LAST_SLOT[array].store(slots.first, Ordering::Relaxed);
            slots
        }
        None => StaleSlots::default(),
    }
}

/// The addresses of the aligned words of `bytes` (read at `start`) equal to `value`.
fn matches(bytes: &[u8], start: usize, value: usize) -> impl Iterator<Item = usize> + '_ {
    let skip = start.next_multiple_of(8) - start;
    bytes
        .get(skip..)
        .unwrap_or_default()
        .chunks_exact(8)
        .enumerate()
        .filter(move |(_, word)| usize::from_ne_bytes((*word).try_into().unwrap_or_default()) == value)
        .map(move |(index, _)| start + skip + index * 8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slots_are_the_words_naming_the_object_within_an_array() {
        let value = 0x5555_0000_1010usize;
        let mut words = [0usize; 80];
        words[5] = value;
        words[7] = value;
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let found: Vec<usize> = matches(&bytes, 0x1000, value).collect();
        assert_eq!(found, [0x1028, 0x1038]);
        let slots = StaleSlots::of(found.into_iter()).unwrap();
        assert_eq!(slots.addresses().collect::<Vec<_>>(), [0x1028, 0x1038]);
        // Read from an unaligned start: only aligned words count.
        assert_eq!(
            matches(&bytes[3..], 0x1003, value).collect::<Vec<_>>(),
            [0x1028, 0x1038]
        );
        // Too far apart for one array.
        words[75] = value;
        let far: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(StaleSlots::of(matches(&far, 0x1000, value)), None);
    }

    #[test]
    fn the_slot_of_an_object_in_our_own_array_is_found() {
        let objects: Vec<usize> = (0..80).map(|i| 0x7000_0000_0000 + i * 0x40).collect();
        let array: Box<[usize; 80]> = Box::new(objects.clone().try_into().unwrap());
        let base = array.as_ptr() as usize;
        set_search_space((base, 80 * 8), || 0);
        let first = |slots: StaleSlots| slots.addresses().collect::<Vec<_>>();
        assert_eq!(first(stale_slots(0, objects[17])), [base + 17 * 8]);
        // Next to it, without a first search.
        assert_eq!(first(stale_slots(0, objects[16])), [base + 16 * 8]);
        assert_eq!(first(stale_slots(ARRAYS, objects[16])), []);
        std::hint::black_box(&array);
    }
}
