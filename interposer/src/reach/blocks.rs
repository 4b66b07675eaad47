//! The live blocks as the scan sees them: sorted by address, with what it learnt of each
//! (the Python object inside, where references to it point, where the next heap chunk's
//! header falls), and the look-up of the block a word points into.
//!
//! Must never read memory but through the [`MemoryReader`] it is given.

use super::index::AddressIndex;
use super::{roots, sort};
use crate::python::gc::gc_header;
use crate::sys::memory::{MemoryReader, MAX_WINDOW};

/// Blocks read one after another are read together, with one system call, when no more
/// than this lies between them: a system call costs about as much as copying this much.
const GAP: u64 = 4096;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Pointer {
    Start,
    Interior,
}

pub(super) struct Blocks {
    pub(super) addresses: Vec<u64>,
    pub(super) sizes: Vec<u64>,
    /// Offset of the Python object inside a garbage-collected object's block; 0 otherwise.
    pub(super) object_offsets: Vec<u8>,
    /// Where references to a block that holds no object point, when not at its start (a
    /// managed dict's values, past their prefix, or a byte before as 3.12 tags them); 0: at
    /// its start only.
    pub(super) reference_offsets: Vec<u8>,
    /// Offset of the next heap chunk's header when it falls inside the block (see
    /// [`roots::next_chunk_offset`]); `u64::MAX` otherwise.
    pub(super) next_chunks: Vec<u64>,
    /// Bytes of the block worth scanning (a list's item array: the items in use).
    pub(super) scan_limits: Vec<u64>,
    pub(super) index: AddressIndex,
    pub(super) lowest: u64,
    pub(super) highest_end: u64,
}

impl Blocks {
    pub(super) fn new(mut blocks: Vec<(u64, u64)>) -> Blocks {
        sort::by_address(&mut blocks);
        let lowest = blocks.first().map_or(u64::MAX, |b| b.0);
        let highest_end = blocks.iter().map(|(a, s)| a + (*s).max(1)).max().unwrap_or(0);
        let addresses: Vec<u64> = blocks.iter().map(|b| b.0).collect();
        Blocks {
            index: AddressIndex::new(&addresses, |i| blocks[i].0 + blocks[i].1.max(1)),
            addresses,
            sizes: blocks.iter().map(|b| b.1).collect(),
            object_offsets: vec![0; blocks.len()],
            reference_offsets: vec![0; blocks.len()],
            next_chunks: vec![u64::MAX; blocks.len()],
            scan_limits: blocks.iter().map(|b| b.1).collect(),
            lowest,
            highest_end,
        }
    }

    /// The block `value` points into, and how.
    #[inline]
    pub(super) fn find(&self, value: u64) -> Option<(usize, Pointer)> {
        if value < self.lowest || value >= self.highest_end {
            return None;
        }
        let index = self.index.last_at_or_below(&self.addresses, value)?;
        let offset = value - self.addresses[index];
        if offset >= self.sizes[index].max(1) || offset == self.next_chunks[index] {
            return None;
        }
        let object = u64::from(self.object_offsets[index]);
        if object != 0 {
            if gc_header(object).contains(&offset) {
                // A generation-list link; the collector keeps flags in the low bits of its
                // `_gc_prev` words, so the link may point a few bytes in.
                return None;
            }
            if offset == object {
                return Some((index, Pointer::Start));
            }
        } else if offset != 0 && {
            // 3.12 tags a managed dict's values pointer by subtracting one.
            let reference = u64::from(self.reference_offsets[index]);
            offset == reference || offset + 1 == reference
        } {
            return Some((index, Pointer::Start));
        }
        let start = offset == 0 || (object == 0 && is_hash_table_control(offset, self.sizes[index]));
        Some((index, if start { Pointer::Start } else { Pointer::Interior }))
    }
}

impl Blocks {
    /// In a process without Python objects to recognise: where each block's next chunk
    /// starts, and where references to it point (see [`native_reference_offset`]), read in
    /// address order.
    pub(super) fn read_native_facts(&mut self, memory: &mut MemoryReader) {
        for index in 0..self.addresses.len() {
            let (address, size) = (self.addresses[index], self.sizes[index]);
            if !memory.holds(address.saturating_sub(8), address + size.min(NATIVE_HEAD)) {
                let (start, end) = self.run(
                    index,
                    index + 1..self.addresses.len(),
                    |_| true,
                    (8, NATIVE_HEAD),
                    &self.sizes,
                );
                memory.prefetch(start, end);
            }
            self.next_chunks[index] = next_chunk(memory, address, size);
            self.reference_offsets[index] = native_reference_offset(&mut |at| memory.word(at), address, size);
        }
    }

    /// The stretch of memory to read at once before reading `[address - lead, address +
    /// min(limit, head))` of block `first`: the same parts of the blocks in `rest` (in address
    /// order) that follow it closely and are `wanted`, up to [`MAX_WINDOW`] bytes.
    pub(super) fn run(
        &self,
        first: usize,
        rest: impl Iterator<Item = usize>,
        wanted: impl Fn(usize) -> bool,
        (lead, head): (u64, u64),
        limits: &[u64],
    ) -> (u64, u64) {
        let part = |index: usize| {
            let address = self.addresses[index];
            (address.saturating_sub(lead), address + limits[index].min(head))
        };
        let (start, mut end) = part(first);
        for index in rest {
            let (next_start, next_end) = part(index);
            if next_start > end.saturating_add(GAP) || next_end - start > MAX_WINDOW as u64 {
                break;
            }
            if wanted(index) {
                end = end.max(next_end);
            }
        }
        (start, end)
    }
}

/// The control-byte group width of hashbrown's tables: 16 with SSE2, 8 elsewhere.
const HASH_TABLE_GROUP: u64 = if cfg!(any(target_arch = "x86", target_arch = "x86_64")) {
    16
} else {
    8
};

/// Whether `offset` into a block of `size` bytes is where a hashbrown table (Rust's `HashMap`
/// and `HashSet`, `indexmap`, pyo3 and pydantic-core's maps) keeps its control bytes. Such a
/// table holds no pointer to its allocation's start, only one to the control bytes: after
/// `buckets` entries (rounded up to the group's alignment), a byte per bucket and a group's
/// width more. Its buckets are a power of two, at least 4. Read as a pointer to the start, as
/// a C++ array's cookie is by memcheck's heuristics, else every table alive at exit reads as
/// possibly lost.
fn is_hash_table_control(offset: u64, size: u64) -> bool {
    let Some(buckets) = size.checked_sub(offset + HASH_TABLE_GROUP) else {
        return false;
    };
    offset.is_multiple_of(HASH_TABLE_GROUP)
        && buckets >= 4
        && buckets.is_power_of_two()
        && offset >= buckets
        // Entries of a whole group or more fill whole groups: no rounding up.
        && (buckets < HASH_TABLE_GROUP || offset.is_multiple_of(buckets))
}

/// The bytes of a block [`native_reference_offset`] reads.
const NATIVE_HEAD: u64 = 24;

/// Where references to a block that holds no Python object point, when a layout of a common
/// C++ runtime says they point past its start (0: at its start). Read as references to the
/// start, as memcheck's leak heuristics read them, else each such block alive at exit reads as
/// possibly lost:
/// - a `std::string` of the old, copy-on-write ABI (`_GLIBCXX_USE_CXX11_ABI=0`, wheels built
///   for manylinux2014 and older): its length, capacity and reference count, then the
///   characters, which the strings point to: the capacity fits the block and the length the
///   capacity;
/// - an array made by `new[]` of elements with a destructor: the element count, then the
///   elements, which the array's pointer points to: the count divides the rest of the block.
pub(super) fn native_reference_offset(read: &mut dyn FnMut(u64) -> Option<u64>, address: u64, size: u64) -> u8 {
    const STRING_REP: u64 = 24;
    const ARRAY_COOKIE: u64 = 8;
    let Some(first) = read(address) else { return 0 };
    if size > STRING_REP {
        let capacity = read(address + 8).unwrap_or(u64::MAX);
        let references = read(address + 16).map(|word| word as u32 as i32);
        if first <= capacity
            && STRING_REP + capacity + 1 == size
            && references.is_some_and(|count| (-1..1 << 20).contains(&count))
        {
            return STRING_REP as u8;
        }
    }
    let elements = size.saturating_sub(ARRAY_COOKIE);
    if first > 0 && elements > 0 && elements.is_multiple_of(first) && elements / first <= 1 << 12 {
        return ARRAY_COOKIE as u8;
    }
    0
}

/// Where the next heap chunk's header starts inside the block at `address` (see
/// [`roots::next_chunk_offset`]); `u64::MAX` when not inside it.
pub(super) fn next_chunk(memory: &mut MemoryReader, address: u64, size: u64) -> u64 {
    roots::next_chunk_offset(memory, address)
        .filter(|&offset| offset < size)
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::{is_hash_table_control, native_reference_offset};

    #[test]
    fn old_abi_strings_and_array_cookies_are_told_by_their_first_words() {
        let block = |words: [u64; 3]| move |address: u64| words.get(((address - 0x1000) / 8) as usize).copied();
        // A 5-character string of capacity 5, unshared: 24 + 5 + 1 bytes.
        assert_eq!(native_reference_offset(&mut block([5, 5, 0]), 0x1000, 30), 24);
        // Its capacity disagrees with the block: no string.
        assert_eq!(native_reference_offset(&mut block([5, 5, 0]), 0x1000, 64), 0);
        // Four 16-byte elements after their count.
        assert_eq!(native_reference_offset(&mut block([4, 0, 0]), 0x1000, 8 + 4 * 16), 8);
        // A first word that counts no elements of the block.
        assert_eq!(native_reference_offset(&mut block([7, 0, 0]), 0x1000, 40), 0);
        assert_eq!(
            native_reference_offset(&mut block([0x5555_0000_1000, 0, 0]), 0x1000, 40),
            0
        );
        assert_eq!(native_reference_offset(&mut block([0, 0, 0]), 0x1000, 40), 0);
    }

    #[test]
    fn hash_table_control_bytes_are_told_from_other_interior_addresses() {
        // (entries, entry size) of tables seen in wheels: cryptography's OID names, pydantic-core.
        for (buckets, entry) in [(256u64, 80u64), (64, 16), (16, 24), (4, 24), (4, 32), (8, 1)] {
            let control = (buckets * entry).next_multiple_of(16);
            let size = control + buckets + 16;
            assert!(is_hash_table_control(control, size), "{buckets} x {entry}");
            assert!(!is_hash_table_control(control + 16, size), "{buckets} x {entry}");
            assert!(!is_hash_table_control(control, size + 24), "{buckets} x {entry}");
        }
        assert!(!is_hash_table_control(1000, 4096));
        assert!(!is_hash_table_control(48, 48 + 2 + 16));
        assert!(!is_hash_table_control(16, 8));
    }
}
