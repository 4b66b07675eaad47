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
    /// Where references to a block that holds no object point, when not at its start: a
    /// managed dict's values, past their prefix (a multiple of 8), or a byte before as 3.12 tags
    /// them; else a layout of a native runtime (see [`native_layout`]); [`NO_LAYOUT`]: at its
    /// start only.
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
        } else if offset != 0 && (offset < TAGGED_WITHIN || self.references_point_at(index, offset)) {
            return Some((index, Pointer::Start));
        }
        Some((index, if offset == 0 { Pointer::Start } else { Pointer::Interior }))
    }

    /// The index of the block starting at `address`.
    pub(super) fn index_of(&self, address: u64) -> Option<usize> {
        self.addresses.binary_search(&address).ok()
    }

    /// The indices of the blocks at `addresses` (in their order), leaving out addresses that
    /// start no block.
    pub(super) fn indices_of(&self, addresses: &[u64]) -> Vec<usize> {
        addresses.iter().filter_map(|&address| self.index_of(address)).collect()
    }

    /// Per block, whether it is among `addresses`; empty when `addresses` is.
    pub(super) fn marked(&self, addresses: &[u64]) -> Vec<bool> {
        let mut marked = vec![false; if addresses.is_empty() { 0 } else { self.addresses.len() }];
        for index in self.indices_of(addresses) {
            marked[index] = true;
        }
        marked
    }

    /// Whether references to block `index`, which holds no Python object, point `offset`
    /// bytes in (see [`Blocks::reference_offsets`]).
    #[inline]
    fn references_point_at(&self, index: usize, offset: u64) -> bool {
        match self.reference_offsets[index] {
            NO_LAYOUT => false,
            STRING_REP => offset == STRING_REP_BYTES,
            ARRAY_COOKIE => offset == ARRAY_COOKIE_BYTES,
            HASH_TABLE => is_hash_table_control(offset, self.sizes[index]),
            REFERENCE_COUNTS => offset == ARRAY_COOKIE_BYTES || offset == 2 * ARRAY_COOKIE_BYTES,
            TRAILING_HEADER => trailing_header(self.sizes[index]) == Some(offset),
            SIZE_PREFIX => past_size_prefix(offset),
            PREFIXED_TRAILING_HEADER => {
                past_size_prefix(offset)
                    || offset.checked_sub(SIZE_PREFIX_BYTES).is_some_and(|offset| {
                        trailing_header(self.sizes[index].saturating_sub(SIZE_PREFIX_BYTES)) == Some(offset)
                    })
            }
            // 3.12 tags a managed dict's values pointer by subtracting one.
            prefix => offset == u64::from(prefix) || offset + 1 == u64::from(prefix),
        }
    }
}

impl Blocks {
    /// The dead objects at block indices `dead` (no reference left, untracked: on a free list
    /// for reuse, or being freed) are read here once, never by the marking, their words being
    /// stale: per block, the pointers to its object's start found in them (a free list linked
    /// through its members; empty when there is no dead object). Call once the objects are
    /// known.
    pub(super) fn read_dead(&mut self, memory: &mut MemoryReader, dead: &[usize]) -> Vec<u32> {
        if dead.is_empty() {
            return Vec::new();
        }
        let mut links = vec![0u32; self.addresses.len()];
        for &index in dead {
            let words = memory.bytes(self.addresses[index], self.sizes[index] as usize).to_vec();
            for word in words.chunks_exact(8) {
                let word = u64::from_ne_bytes(word.try_into().unwrap_or_default());
                if let Some((target, Pointer::Start)) = self.find(word).filter(|&(target, _)| target != index) {
                    links[target] = links[target].saturating_add(1);
                }
            }
            self.scan_limits[index] = 0;
        }
        links
    }

    /// In a process without Python objects to recognise: where each block's next chunk
    /// starts, and where references to it point (see [`native_layout`]), read in address
    /// order.
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
            self.reference_offsets[index] = native_layout(&mut |at| memory.word(at), address, size);
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

/// A pointer to a block holding no GC object, fewer bytes than this past its start, is one to
/// its start with tag bits set in its low bits (numpy keeps an array's buffer info at the
/// address plus 3); no word-aligned field lies there.
const TAGGED_WITHIN: u64 = 8;

/// The bytes of a block [`native_layout`] reads at its start.
const NATIVE_HEAD: u64 = 24;
/// [`Blocks::reference_offsets`] of a block referenced at its start only.
pub(super) const NO_LAYOUT: u8 = 0;
/// [`Blocks::reference_offsets`] of native layouts: odd, unlike the dict values prefixes.
const STRING_REP: u8 = 1;
const ARRAY_COOKIE: u8 = 3;
const HASH_TABLE: u8 = 5;
const REFERENCE_COUNTS: u8 = 7;
const TRAILING_HEADER: u8 = 9;
const PREFIXED_TRAILING_HEADER: u8 = 11;
const SIZE_PREFIX: u8 = 13;
const STRING_REP_BYTES: u64 = 24;
const ARRAY_COOKIE_BYTES: u64 = 8;
/// An allocator's record of a block's size before it (SQLite's own, where malloc cannot tell
/// a block's size): the size of the rest, which the block's users are handed.
const SIZE_PREFIX_BYTES: u64 = 8;
/// Whether `offset` into a block with a size prefix is where the block its users were handed
/// starts, give or take tag bits ([`TAGGED_WITHIN`]): SQLite's B-tree keeps its scratch page
/// 4 bytes in.
fn past_size_prefix(offset: u64) -> bool {
    (SIZE_PREFIX_BYTES..SIZE_PREFIX_BYTES + TAGGED_WITHIN).contains(&offset)
}

/// The smallest buffer [`trailing_header`] reads a header after: SQLite's smallest page.
const SMALLEST_HEADED_BUFFER: u64 = 512;
/// The largest header [`trailing_header`] reads after a buffer.
const LARGEST_TRAILING_HEADER: u64 = 1024;

/// Where, in a block of `size` bytes, the header after a buffer of a power of two bytes lies
/// (`None`: the size is no such buffer's with a header). SQLite's page cache allocates each
/// page so, the page image then its header (`PgHdr1`, then the pager's `PgHdr` and the
/// B-tree's `MemPage`), and points to the headers only: its hash table and lists of pages.
fn trailing_header(size: u64) -> Option<u64> {
    if size <= SMALLEST_HEADED_BUFFER {
        return None;
    }
    let buffer = 1u64 << (63 - size.leading_zeros());
    let header = size - buffer;
    (header > 0 && header <= LARGEST_TRAILING_HEADER.min(buffer / 2)).then_some(buffer)
}

/// The largest word read as a reference count before what a pointer points to: small, as
/// the counts of shared nodes are, so that an id or a length rarely passes for one.
const MAX_COUNT: u64 = 64;

/// The layout of a common native runtime a block holding no Python object has, whose
/// references point past its start ([`NO_LAYOUT`]: none). Such references are read as
/// references to the start, as memcheck's leak heuristics read them, else each such block
/// alive at exit reads as possibly lost:
/// - a `std::string` of the old, copy-on-write ABI (`_GLIBCXX_USE_CXX11_ABI=0`, wheels built
///   for manylinux2014 and older): its length, capacity and reference count, then the
///   characters, which the strings point to: the capacity fits the block, the length the
///   capacity;
/// - an array made by `new[]` of elements with a destructor: the element count, then the
///   elements, which the array's pointer points to: a count of 2 or more divides the rest;
/// - a Rust hash table (hashbrown's; see [`is_hash_table_control`]) whose first group of
///   control bytes holds only bytes a table writes there;
/// - a reference-counted allocation whose pointers point past its counts: one count (a
///   `triomphe` Arc, as the persistent maps of `rpds` keep their nodes; a C++ or C struct
///   behind an intrusive count), a pointer 8 bytes in; two (Rust's `Arc` or `Rc` after
///   `into_raw`: strong and weak), 8 or 16 bytes in. A first word from 1 to [`MAX_COUNT`] is
///   read so (memcheck's length64 heuristic reads a length there the same way); a C block
///   really held only 8 or 16 bytes in is then reachable, not possibly lost;
/// - an 8-byte prefix holding the size of the rest (SQLite's allocator where malloc cannot
///   tell a block's size, as in Debian's build), pointed past, give or take tag bits;
/// - a buffer of a power of two bytes (512 or more) with a header after it (up to half its
///   size, 1 KiB at most),
///   pointed to at the header (SQLite's page cache; see [`trailing_header`]), perhaps after
///   a size prefix, which moves the header on by 8. Without the prefix only the size tells
///   it: a block of such a size held only at that one offset is reachable, not possibly lost.
pub(super) fn native_layout(read: &mut dyn FnMut(u64) -> Option<u64>, address: u64, size: u64) -> u8 {
    let Some(first) = read(address) else { return NO_LAYOUT };
    if size > STRING_REP_BYTES {
        let capacity = read(address + 8).unwrap_or(u64::MAX);
        let references = read(address + 16).map(|word| word as u32 as i32);
        if first <= capacity
            && capacity.checked_add(STRING_REP_BYTES + 1) == Some(size)
            && references.is_some_and(|count| (-1..1 << 20).contains(&count))
        {
            return STRING_REP;
        }
    }
    // A table's first bucket can hold a small number: tables first.
    if is_hash_table(read, address, size) {
        return HASH_TABLE;
    }
    // Counts before a strict cookie: a Rust `Arc` with a strong count of 2 is pointed to 16
    // bytes in, though 2 divides its size.
    let is_count = |word: u64| (1..=MAX_COUNT).contains(&word);
    if is_count(first) && size > ARRAY_COOKIE_BYTES {
        if size > 2 * ARRAY_COOKIE_BYTES && read(address + 8).is_some_and(is_count) {
            return REFERENCE_COUNTS;
        }
        return ARRAY_COOKIE;
    }
    // A size prefix passes for an array's count too (of one element): told apart first.
    if size > SIZE_PREFIX_BYTES && first == size - SIZE_PREFIX_BYTES {
        return match trailing_header(first) {
            Some(_) => PREFIXED_TRAILING_HEADER,
            None => SIZE_PREFIX,
        };
    }
    let elements = size.saturating_sub(ARRAY_COOKIE_BYTES);
    if first >= 2 && elements > 0 && elements.is_multiple_of(first) && elements / first <= 1 << 12 {
        return ARRAY_COOKIE;
    }
    // Told by the size alone (a page image can begin with anything): last.
    if trailing_header(size).is_some() {
        return TRAILING_HEADER;
    }
    NO_LAYOUT
}

/// Whether the block at `address` is laid out as a hashbrown table: a control offset fits
/// its size (see [`is_hash_table_control`]) and the control bytes there are a table's.
fn is_hash_table(read: &mut dyn FnMut(u64) -> Option<u64>, address: u64, size: u64) -> bool {
    let mut buckets = 4u64;
    while buckets + HASH_TABLE_GROUP < size {
        let control = size - buckets - HASH_TABLE_GROUP;
        if is_hash_table_control(control, size) && control_bytes_fit(read, address + control, buckets) {
            return true;
        }
        let Some(more) = buckets.checked_mul(2) else { break };
        buckets = more;
    }
    false
}

/// Whether the control bytes at `control` are those of a table of `buckets`: only bytes a
/// table writes (empty 0xff, deleted 0x80, or a full bucket's 7-bit hash), not one full hash
/// repeated (a block filled with one byte, or text: `memset` and `memcpy` leave a pointer 32
/// bytes before the end, where a 16-bucket table's control bytes start), and the first group
/// mirrored after the buckets as a table keeps it (for fewer buckets than a group, the rest
/// of the first group empty).
fn control_bytes_fit(read: &mut dyn FnMut(u64) -> Option<u64>, control: u64, buckets: u64) -> bool {
    let group = HASH_TABLE_GROUP as usize;
    let mut bytes_at = |at: u64| -> Option<Vec<u8>> {
        (0..HASH_TABLE_GROUP / 8)
            .map(|word| read(at + word * 8).map(u64::to_ne_bytes))
            .collect::<Option<Vec<[u8; 8]>>>()
            .map(|words| words.concat())
    };
    let (Some(first), Some(mirror)) = (bytes_at(control), bytes_at(control + buckets)) else {
        return false;
    };
    let valid = first.iter().all(|&byte| byte == 0xff || byte == 0x80 || byte < 0x80);
    let one_hash_repeated = first[0] < 0x80 && first.iter().all(|&byte| byte == first[0]);
    if !valid || one_hash_repeated {
        return false;
    }
    let buckets = buckets as usize;
    if buckets >= group {
        mirror == first
    } else {
        first[buckets..].iter().all(|&byte| byte == 0xff) && mirror[group - buckets..] == first[..buckets]
    }
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
    use super::{
        is_hash_table_control, native_layout, trailing_header, ARRAY_COOKIE, HASH_TABLE, NO_LAYOUT,
        PREFIXED_TRAILING_HEADER, REFERENCE_COUNTS, SIZE_PREFIX, STRING_REP, TRAILING_HEADER,
    };

    #[test]
    fn native_layouts_are_told_by_their_words() {
        // A block at 0x1000 of zeros but the words given (at byte offsets), read a word at any
        // byte.
        let block = |words: Vec<(u64, u64)>| {
            let mut bytes = vec![0u8; 2048];
            for (at, word) in words {
                bytes[at as usize..at as usize + 8].copy_from_slice(&word.to_ne_bytes());
            }
            move |address: u64| {
                let at = (address - 0x1000) as usize;
                bytes
                    .get(at..at + 8)
                    .map(|word| u64::from_ne_bytes(word.try_into().unwrap()))
            }
        };
        // A 5-character string of capacity 5, unshared: 24 + 5 + 1 bytes.
        let string = vec![(0, 5), (8, 5), (16, 0)];
        assert_eq!(native_layout(&mut block(string.clone()), 0x1000, 30), STRING_REP);
        // Its capacity disagrees with the block: no string, but two counts.
        assert_eq!(native_layout(&mut block(string), 0x1000, 72), REFERENCE_COUNTS);
        // Four 16-byte elements after their count.
        assert_eq!(
            native_layout(&mut block(vec![(0, 4)]), 0x1000, 8 + 4 * 16),
            ARRAY_COOKIE
        );
        // A count of 1 is a reference-counted allocation's (triomphe's Arc): pointed to after
        // its count; strong and weak counts (Rust's Arc): after either.
        assert_eq!(native_layout(&mut block(vec![(0, 1)]), 0x1000, 8 + 16), ARRAY_COOKIE);
        assert_eq!(native_layout(&mut block(vec![(0, 7)]), 0x1000, 40), ARRAY_COOKIE);
        // An id or a length above the counts shared nodes have: no layout.
        assert_eq!(native_layout(&mut block(vec![(0, 1000)]), 0x1000, 40), NO_LAYOUT);
        assert_eq!(
            native_layout(&mut block(vec![(0, 1), (8, 1), (16, 0x5555_0000_1000)]), 0x1000, 40),
            REFERENCE_COUNTS
        );
        // A strong count of 2 divides the size, yet it is an Arc's.
        assert_eq!(
            native_layout(&mut block(vec![(0, 2), (8, 1), (16, 0x5555_0000_1000)]), 0x1000, 40),
            REFERENCE_COUNTS
        );
        // A count above the counts' bound that divides the rest: a `new[]` cookie.
        assert_eq!(
            native_layout(&mut block(vec![(0, 100)]), 0x1000, 8 + 100 * 16),
            ARRAY_COOKIE
        );
        // A first word that is no count.
        assert_eq!(native_layout(&mut block(vec![(0, 0)]), 0x1000, 40), NO_LAYOUT);
        assert_eq!(native_layout(&mut block(vec![(0, 1 << 40)]), 0x1000, 40), NO_LAYOUT);
        assert_eq!(
            native_layout(&mut block(vec![(0, 0x5555_0000_1000)]), 0x1000, 40),
            NO_LAYOUT
        );
        // 64 buckets of 16-byte entries: control bytes at 1024, empty or full, the first
        // group mirrored after the 64 buckets (at 1088).
        let size = 64 * 16 + 64 + 16;
        let group = [0xffff_ff12_ff80_ff05u64, u64::MAX];
        let table = |first: [u64; 2], mirror: [u64; 2]| {
            vec![
                (0, 0x5555_0000_1000),
                (1024, first[0]),
                (1032, first[1]),
                (1088, mirror[0]),
                (1096, mirror[1]),
            ]
        };
        assert_eq!(native_layout(&mut block(table(group, group)), 0x1000, size), HASH_TABLE);
        // No mirror, bytes no table writes (0x81..=0xfe), one hash repeated, zeros: no table.
        assert_ne!(
            native_layout(&mut block(table(group, [0, 0])), 0x1000, size),
            HASH_TABLE
        );
        let garbage = [0xffff_ff12_ffc0_ff05, u64::MAX];
        assert_ne!(
            native_layout(&mut block(table(garbage, garbage)), 0x1000, size),
            HASH_TABLE
        );
        let repeated = [0x0b0b_0b0b_0b0b_0b0b, 0x0b0b_0b0b_0b0b_0b0b];
        assert_ne!(
            native_layout(&mut block(table(repeated, repeated)), 0x1000, size),
            HASH_TABLE
        );
        assert_ne!(
            native_layout(&mut block(vec![(0, 0x5555_0000_1000)]), 0x1000, size),
            HASH_TABLE
        );
        // 4 buckets of 24 bytes: the rest of the first group empty, the 4 mirrored at 16.
        let small = 4 * 24 + 4 + 16;
        let first = 0xffff_ffff_0512_8033u64;
        let mirrored = vec![(0, 0x5555_0000_1000), (96, first), (104, u64::MAX), (112, 0x0512_8033)];
        assert_eq!(native_layout(&mut block(mirrored), 0x1000, small), HASH_TABLE);
        // SQLite's page cache: a 4096-byte page, then 264 bytes of headers; after the size
        // prefix of SQLite's allocator, or not.
        let page = 4096 + 264;
        assert_eq!(trailing_header(page), Some(4096));
        assert_eq!(
            native_layout(
                &mut block(vec![(0, page), (8, 0x0d00_0000_0000_000d)]),
                0x1000,
                8 + page
            ),
            PREFIXED_TRAILING_HEADER
        );
        assert_eq!(
            native_layout(&mut block(vec![(0, 0x0d00_0000_0000_000d)]), 0x1000, page),
            TRAILING_HEADER
        );
        // A size prefix alone (SQLite's allocator): pointed past it, 4 bytes further in too.
        assert_eq!(
            native_layout(&mut block(vec![(0, 4096)]), 0x1000, 8 + 4096),
            SIZE_PREFIX
        );
        assert!(super::past_size_prefix(12) && super::past_size_prefix(8));
        assert!(!super::past_size_prefix(16) && !super::past_size_prefix(4));
        // A power of two, or a header larger than a 1 KiB or half the buffer: none.
        assert_eq!(trailing_header(4096), None);
        assert_eq!(trailing_header(4096 + 1025), None);
        assert_eq!(trailing_header(512 + 257), None);
        assert_eq!(trailing_header(512), None);
        assert_eq!(
            native_layout(&mut block(vec![(0, 0x0d00_0000_0000_000d)]), 0x1000, 4096 + 2000),
            NO_LAYOUT
        );
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
