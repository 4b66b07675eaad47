//! What libleak knows of glibc malloc's internal layout (glibc 2.26 and later, x86-64), in
//! one place: the free-list links a reused block starts with, the chunk header's flags, and
//! the alignment of non-main arena heaps. Constants only; nothing here reads memory.

/// What glibc's malloc keeps in a free chunk's user area: `fd`, `bk`, `fd_nextsize`,
/// `bk_nextsize` (tcache: `next`, `key`).
pub const MALLOC_LINK_BYTES: usize = 32;
/// `HEAP_MAX_SIZE` on 64-bit targets: every non-main arena heap is aligned to it.
pub const ARENA_HEAP_ALIGN: u64 = 64 << 20;
/// The chunk size word's flag for a chunk that has its own `mmap`.
pub const CHUNK_IS_MMAPPED: u64 = 0x2;
/// The chunk size word's flag for a chunk of a non-main arena.
pub const CHUNK_NON_MAIN_ARENA: u64 = 0x4;
/// Every flag bit of the chunk size word.
pub const CHUNK_FLAGS: u64 = 0x7;
