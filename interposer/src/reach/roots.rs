//! Where the exit-time scan starts: the memory the program can still name without going
//! through a heap block. That is the writable segments of every loaded module, the live part
//! of every thread's stack (and the registers the kernel shows for a thread blocked in a
//! system call), and anonymous mappings the program made itself (arenas of other allocators,
//! `mmap`'d buffers).
//!
//! Excluded, because they would make leaked blocks look reachable: libleak's own module,
//! thread stack and mappings; malloc's own memory (the brk heap, arena heaps, `mmap`'d chunks — their live
//! blocks are scanned only once reached); and the stacks glibc keeps cached for exited
//! threads, which are full of stale pointers.
//!
//! glibc's malloc layout (arena heaps aligned to 64 MiB that start with a `heap_info`;
//! `mmap`'d chunks whose size word has `IS_MMAPPED` set), with its constants from
//! [`crate::sys::glibc`], is the only allocator knowledge here.

use std::time::Duration;

use libleak_format::Module;

use crate::sys::glibc::{ARENA_HEAP_ALIGN, CHUNK_FLAGS, CHUNK_IS_MMAPPED, CHUNK_NON_MAIN_ARENA};
use crate::sys::memory::MemoryReader;
use crate::sys::{self, maps};

const PAGE: u64 = 4096;
/// The x86-64 red zone: a leaf function may keep data this far below the stack pointer.
const RED_ZONE: u64 = 128;
const PF_W: u32 = 2;

/// A line of `/proc/self/maps`.
#[derive(Clone, Debug)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub perms: [u8; 4],
    pub path: String,
}

impl Mapping {
    fn readable_writable(&self) -> bool {
        self.perms[0] == b'r' && self.perms[1] == b'w'
    }

    fn is_guard(&self) -> bool {
        &self.perms[..3] == b"---"
    }

    fn anonymous(&self) -> bool {
        self.path.is_empty() || self.path.starts_with("[anon:")
    }

    fn contains(&self, address: u64) -> bool {
        address >= self.start && address < self.end
    }
}

pub fn read_maps() -> Vec<Mapping> {
    let mut mappings = Vec::new();
    maps::for_each_mapping(&mut |line| {
        mappings.push(Mapping {
            start: line.start,
            end: line.end,
            perms: line.perms,
            path: String::from_utf8_lossy(line.path).into_owned(),
        });
        true
    });
    mappings
}

/// The thread that called `exit`, seen from libleak's exit handler.
#[derive(Clone, Debug)]
pub struct ExitingThread {
    pub tid: u32,
    /// Taken in libleak's exit path: a fallback start for the scan of this stack.
    pub stack_pointer: u64,
    /// (return address, canonical frame address) of its frames, innermost first.
    pub frames: Vec<(u64, u64)>,
    /// Whether its stack holds roots. Not for the thread finalising CPython: the program's
    /// code on it has returned, and the interpreter's shutdown frames lie where the program's
    /// deepest calls once ran, their unused slots full of stale pointers.
    pub stack_is_root: bool,
}

impl ExitingThread {
    /// Where the live part of the exiting thread's stack starts: the frame of the code that
    /// called `exit` (the program, or `_start` when `main` returned). The frames below it are
    /// libc's and libleak's exit path, whose unused slots still hold stale values from
    /// deeper calls made while the program ran; they are not roots.
    fn live_stack_start(&self, modules: &[Module]) -> u64 {
        let exit_path = |address: u64| {
            modules.iter().find(|m| m.contains(address)).is_none_or(|m| {
                let name = m.path.rsplit('/').next().unwrap_or(&m.path);
                name == "libleak.so" || name.starts_with("libc.so") || name.starts_with("ld-linux")
            })
        };
        match self.frames.iter().position(|&(ip, _)| !exit_path(ip.saturating_sub(1))) {
            // The callee's canonical frame address is where the caller's frame ends.
            Some(caller) if caller > 0 => self.frames[caller - 1].1,
            _ => self.stack_pointer,
        }
    }
}

#[derive(Default)]
pub struct Roots {
    /// Address ranges to scan word by word.
    pub ranges: Vec<(u64, u64)>,
    /// Values seen in registers (system call arguments of blocked threads).
    pub words: Vec<u64>,
    pub threads: u64,
    pub threads_unknown: u64,
}

impl Roots {
    pub fn bytes(&self) -> u64 {
        self.ranges.iter().map(|(start, end)| end - start).sum()
    }
}

/// A thread's stack pointer as the kernel shows it: known when the thread is blocked in a
/// system call (with that call's arguments), unknown while it runs.
fn blocked_thread_registers(tid: u32) -> Option<(u64, Vec<u64>)> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/syscall")).ok()?;
    let fields: Vec<&str> = text.split_whitespace().collect();
    if fields.first() == Some(&"running") || fields.len() < 3 {
        return None;
    }
    let hex = |field: &str| u64::from_str_radix(field.trim_start_matches("0x"), 16).ok();
    let stack_pointer = hex(fields[fields.len() - 2])?;
    let arguments = if fields.len() == 9 {
        fields[1..7].iter().filter_map(|f| hex(f)).collect()
    } else {
        Vec::new()
    };
    Some((stack_pointer, arguments))
}

fn thread_ids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Collects the roots. `own_module` is libleak's; `exiting` the thread that called exit.
pub fn collect(
    maps: &[Mapping],
    modules: &[Module],
    own_module: Option<&Module>,
    exiting: Option<&ExitingThread>,
    memory: &mut MemoryReader,
) -> Roots {
    let mut roots = Roots::default();
    let mut excluded: Vec<(u64, u64)> = Vec::new();
    if let Some(own) = own_module {
        excluded.extend(writable_segments(own));
    }
    excluded.extend(crate::sys::real::own_mappings());
    let own_stack_pointer = crate::sys::memory::stack_pointer();
    let mut stack_mappings: Vec<usize> = Vec::new();
    if let Some(index) = maps.iter().position(|m| m.contains(own_stack_pointer)) {
        stack_mappings.push(index);
    }

    // Thread stacks, from each thread's stack pointer up.
    let own_tid = sys::gettid();
    for tid in thread_ids().into_iter().filter(|&tid| tid != own_tid) {
        let stack_pointer = match exiting {
            Some(thread) if thread.tid == tid && !thread.stack_is_root => {
                roots.threads += 1;
                if let Some(index) = maps.iter().position(|m| m.contains(thread.stack_pointer)) {
                    stack_mappings.push(index);
                }
                continue;
            }
            Some(thread) if thread.tid == tid => Some(thread.live_stack_start(modules)),
            _ => registers_with_retry(tid).map(|(stack_pointer, arguments)| {
                roots.words.extend(arguments);
                stack_pointer
            }),
        };
        let Some(stack_pointer) = stack_pointer else {
            roots.threads_unknown += 1;
            continue;
        };
        roots.threads += 1;
        if let Some(index) = maps.iter().position(|m| m.contains(stack_pointer)) {
            let mapping = &maps[index];
            stack_mappings.push(index);
            let red_zone = if exiting.is_some_and(|t| t.tid == tid) {
                0
            } else {
                RED_ZONE
            };
            let start = stack_pointer.saturating_sub(red_zone).max(mapping.start);
            push_range(&mut roots.ranges, &excluded, start, mapping.end);
        }
    }

    // Module data.
    for module in modules {
        if own_module.is_some_and(|own| own.path == module.path && own.bias == module.bias) {
            continue;
        }
        for (start, end) in writable_segments(module) {
            push_range(&mut roots.ranges, &excluded, start, end);
        }
    }

    // Anonymous mappings that are neither malloc's nor a stack.
    for (index, mapping) in maps.iter().enumerate() {
        if !mapping.readable_writable() || stack_mappings.contains(&index) || mapping.path == "[heap]" {
            continue;
        }
        let below_is_guard = index > 0 && maps[index - 1].end == mapping.start && maps[index - 1].is_guard();
        if mapping.path == "[stack]"
            || (mapping.anonymous()
                && below_is_guard
                && !is_arena_heap(memory, mapping)
                && ends_in_thread(memory, mapping))
        {
            // A stack no live thread is known to use: a cached stack of an exited thread,
            // unless some thread's stack pointer could not be read.
            if roots.threads_unknown > 0 {
                push_range(&mut roots.ranges, &excluded, mapping.start, mapping.end);
            }
            continue;
        }
        if mapping.anonymous() {
            // libleak's own mappings are left out before the page walk, which reads a word
            // of every page (6 MB of code table alone: 1,536 reads).
            for (start, end) in without_excluded(&excluded, mapping.start, mapping.end) {
                // A piece may start inside a page (after libleak's own data segment): the
                // walk looks for malloc's chunks at page starts only.
                let first_page = start.next_multiple_of(PAGE).min(end);
                if start < first_page {
                    roots.ranges.push((start, first_page));
                }
                let populated = populated(first_page, end);
                roots
                    .ranges
                    .extend(non_malloc_pages(memory, first_page, end, &populated));
            }
        }
    }
    roots
}

/// Mappings up to this size are read whole: asking which of their pages hold anything costs
/// more than reading them.
const READ_WHOLE_UP_TO: u64 = 64 * PAGE;

/// The runs of `[start, end)` (page-aligned, in a private anonymous mapping) that hold
/// anything, in address order: a page never touched reads as zeros, which hold no pointer
/// (an allocator's reserved address space was most of a pyarrow program's 1.16 GB of roots),
/// nor a malloc chunk's header.
fn populated(start: u64, end: u64) -> Vec<(u64, u64)> {
    if end.saturating_sub(start) <= READ_WHOLE_UP_TO {
        return vec![(start, end)];
    }
    sys::pagemap::populated_runs(start, end).unwrap_or_else(|| vec![(start, end)])
}

fn registers_with_retry(tid: u32) -> Option<(u64, Vec<u64>)> {
    for attempt in 0..10 {
        if let Some(found) = blocked_thread_registers(tid) {
            return Some(found);
        }
        if attempt < 9 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    None
}

/// The writable segments (data and bss) of a loaded module, as address ranges.
pub fn writable_segments(module: &Module) -> impl Iterator<Item = (u64, u64)> + '_ {
    module.segments.iter().filter(|s| s.flags & PF_W != 0).map(|s| {
        let start = module.bias.wrapping_add(s.vaddr);
        (start, start + s.memsz)
    })
}

/// A reader of the memory readable now (see [`MemoryReader::keep_pages_shared`] for
/// `pages_shared`). When `waiting` (the thread that asked for the scan and waits for it) is
/// the program's only thread left, none can unmap anything while the scan runs: reads
/// within private anonymous mappings (but libleak's own and those with a protection key)
/// then copy the memory directly.
pub(super) fn reader(pages_shared: bool, waiting: Option<u32>) -> MemoryReader {
    let mut memory = MemoryReader::new();
    memory.keep_pages_shared(pages_shared);
    let maps = read_maps();
    memory.set_readable(
        maps.iter()
            .filter(|m| m.perms[0] == b'r')
            .map(|m| (m.start, m.end))
            .collect(),
    );
    // libleak's own mappings may be unmapped during the scan, and a page with a protection key
    // may not be readable by this thread.
    let excluded = waiting
        .filter(|&tid| program_stopped(tid))
        .and_then(|_| crate::sys::protection_keys::keyed_mappings())
        .map(|mut keyed| {
            keyed.extend(crate::sys::real::own_mappings());
            keyed
        });
    if let Some(excluded) = excluded {
        memory.copy_directly_within(
            maps.iter()
                .filter(|m| m.perms[0] == b'r' && m.perms[3] == b'p')
                .filter(|m| m.anonymous() || m.path == "[heap]" || m.path == "[stack]")
                .flat_map(|m| without_excluded(&excluded, m.start, m.end))
                .collect(),
        );
    }
    memory
}

/// Whether the threads of the process are this one and `waiting`, and no other.
fn program_stopped(waiting: u32) -> bool {
    let own = sys::gettid();
    let mut threads = thread_ids();
    threads.sort_unstable();
    let mut expected = vec![own, waiting];
    expected.sort_unstable();
    expected.dedup();
    threads == expected
}

/// Adds `[start, end)` minus the excluded ranges.
fn push_range(ranges: &mut Vec<(u64, u64)>, excluded: &[(u64, u64)], start: u64, end: u64) {
    ranges.extend(without_excluded(excluded, start & !7, end));
}

/// The pieces of `[start, end)` outside the excluded ranges.
pub fn without_excluded(excluded: &[(u64, u64)], start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut pieces = vec![(start, end)];
    for &(ex_start, ex_end) in excluded {
        pieces = pieces
            .into_iter()
            .flat_map(|(s, e)| {
                if ex_end <= s || ex_start >= e {
                    vec![(s, e)]
                } else {
                    [(s, ex_start.max(s)), (ex_end.min(e), e)]
                        .into_iter()
                        .filter(|(a, b)| a < b)
                        .collect()
                }
            })
            .collect();
    }
    pieces.retain(|(s, e)| s < e);
    pieces
}

/// How far below a thread stack's end its thread descriptor may start: glibc puts the
/// descriptor (about 2.3 KiB) at the very top of the stack's mapping, aligned down.
const DESCRIPTOR_WITHIN: u64 = 2 * PAGE;

/// Whether `mapping` ends in a thread's descriptor, as glibc lays out the stacks it makes
/// (the guard below, the descriptor at the top): its first words name the descriptor itself
/// (`tcb` and `self` of the TLS header). A mapping merely above a no-access one is not
/// enough: an arena's reserved tail or an allocator's reservation sits below ordinary memory
/// too, and skipping that memory lost what it held (CPython's frame stack chunk, gevent on
/// 3.11: a worker's `Queue.get` locals reported lost).
fn ends_in_thread(memory: &mut MemoryReader, mapping: &Mapping) -> bool {
    let start = mapping.end.saturating_sub(DESCRIPTOR_WITHIN).max(mapping.start);
    let bytes = memory.bytes(start, (mapping.end - start) as usize);
    let word = |at: usize| {
        bytes
            .get(at..at + 8)
            .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or_default()))
    };
    (0..=bytes.len().saturating_sub(24)).step_by(8).any(|at| {
        let address = start + at as u64;
        word(at) == Some(address) && word(at + 16) == Some(address)
    })
}

/// The first heap of a glibc arena, or a later heap of one: 64 MiB aligned, starting with a
/// `heap_info` whose fields are consistent.
fn is_arena_heap(memory: &mut MemoryReader, mapping: &Mapping) -> bool {
    mapping.start.is_multiple_of(ARENA_HEAP_ALIGN) && arena_heap_size(memory, mapping.start, mapping.end).is_some()
}

/// The bytes from `start` that a glibc arena heap owns, when one starts there.
fn arena_heap_size(memory: &mut MemoryReader, start: u64, end: u64) -> Option<u64> {
    let arena = memory.word(start)?;
    let previous = memory.word(start + 8)?;
    let size = memory.word(start + 16)?;
    let protected = memory.word(start + 24)?;
    let arena_heap = arena & !(ARENA_HEAP_ALIGN - 1);
    let plausible = arena != 0
        && arena - arena_heap < PAGE
        && previous.is_multiple_of(ARENA_HEAP_ALIGN)
        && size.is_multiple_of(PAGE)
        && size > 0
        && size <= ARENA_HEAP_ALIGN
        && protected >= size
        && protected <= ARENA_HEAP_ALIGN;
    // Pages past `size` up to `mprotect_size` stay readable after the heap shrank; they are
    // still malloc's, holding whatever the arena's freed chunks held. The sizes may be ahead
    // of the mapping read earlier: the collector's own arena grows during the scan.
    plausible.then_some(protected.min(end.saturating_sub(start)))
}

/// Where the arena heap that `start` lies inside (past its first page) ends, when it does: a
/// heap's pages can be two lines of `/proc/self/maps`, since a forked child's kernel does not
/// merge the part it grew with the part it inherited, and the second line starts at no
/// heap's aligned base.
fn arena_heap_continued(memory: &mut MemoryReader, start: u64) -> Option<u64> {
    let base = start & !(ARENA_HEAP_ALIGN - 1);
    if base == start {
        return None;
    }
    let heap_end = base + arena_heap_size(memory, base, base + ARENA_HEAP_ALIGN)?;
    (heap_end > start).then_some(heap_end)
}

/// Where, inside a live block of glibc's heap, the header of the next chunk starts: malloc's
/// own pointers to that chunk (the arena's top, bins and last remainder) land there, and
/// must not be taken for references into the block. `None` for `mmap`'d chunks and
/// anything that does not look like a chunk.
pub fn next_chunk_offset(memory: &mut MemoryReader, block: u64) -> Option<u64> {
    let size_word = memory.word(block.checked_sub(8)?)?;
    let size = size_word & !CHUNK_FLAGS;
    if size_word & CHUNK_IS_MMAPPED != 0 || size < 32 || !size.is_multiple_of(16) || size > 1 << 40 {
        return None;
    }
    Some(size - 16)
}

/// If a glibc `mmap`'d chunk starts at `page` (a chunk whose size word marks it as mapped and
/// that fills its pages exactly), its length in bytes including the alignment padding.
fn mmapped_chunk_len(memory: &mut MemoryReader, page: u64, end: u64) -> Option<u64> {
    let padding = memory.word(page)?;
    if !padding.is_multiple_of(16) || padding >= PAGE * 16 {
        return None;
    }
    let size_word = memory.word(page + padding + 8)?;
    if size_word & CHUNK_IS_MMAPPED == 0 || size_word & CHUNK_NON_MAIN_ARENA != 0 {
        return None;
    }
    let total = padding + (size_word & !CHUNK_FLAGS);
    (total >= PAGE && total.is_multiple_of(PAGE) && page + total <= end).then_some(total)
}

/// The pages of `[start, end)` in an anonymous mapping that are not malloc's: several
/// mappings merged into one line of `/proc/self/maps` are told apart by their headers. Pages
/// outside the `populated` runs (in address order) hold nothing and are left out; a chunk's
/// header page is never among them, so no chunk is entered past its header.
fn non_malloc_pages(memory: &mut MemoryReader, start: u64, end: u64, populated: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut pages = Vec::new();
    let mut at = arena_heap_continued(memory, start).map_or(start, |heap_end| heap_end.min(end));
    let mut run_start = None;
    let mut next_run = 0;
    while at < end {
        while next_run < populated.len() && populated[next_run].1 <= at {
            next_run += 1;
        }
        match populated.get(next_run) {
            Some(&(populated_start, _)) if populated_start > at => {
                if let Some(start) = run_start.take() {
                    pages.push((start, at));
                }
                at = populated_start.min(end);
                continue;
            }
            None => break,
            Some(_) => {}
        }
        let malloc_owned = if at.is_multiple_of(ARENA_HEAP_ALIGN) {
            arena_heap_size(memory, at, end).or_else(|| mmapped_chunk_len(memory, at, end))
        } else {
            mmapped_chunk_len(memory, at, end)
        };
        match malloc_owned {
            Some(len) => {
                if let Some(start) = run_start.take() {
                    pages.push((start, at));
                }
                at = (at + len).min(end);
            }
            None => {
                run_start.get_or_insert(at);
                at += PAGE;
            }
        }
    }
    if let Some(run_start) = run_start {
        pages.push((run_start, at.min(end)));
    }
    pages
}
