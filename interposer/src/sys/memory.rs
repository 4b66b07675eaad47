//! Reading the process's own memory where it may change or disappear while we read it: the
//! exit-time scan runs while other threads (daemon threads) may still free and unmap. Reads
//! larger than a page go through `/proc/self/mem`, which fails cleanly on an unmapped page,
//! and fall back to `process_vm_readv` on ourselves where that file cannot be opened:
//! `process_vm_readv` pins the pages it reads, and pinning a page a forked child still
//! shares with its parent copies it, so a worker's scan at exit copied the whole heap it
//! inherited, at a third of the speed. Reading the file leaves shared pages shared. Reads
//! of a page or less use `process_vm_readv` (falling back to the file where it is refused):
//! its fixed cost is a third of the file's. In a process whose pages may be shared with
//! another ([`MemoryReader::keep_pages_shared`]) every read goes through the file: a pool
//! worker's scan spent more on copying the pages it read one at a time than on the calls.
//!
//! Two caches keep system calls few (see docs/benchmarks.md, "Exit scan"):
//! - a window: one contiguous stretch of up to [`MAX_WINDOW`] bytes, read with one system
//!   call when the caller asks for it ([`MemoryReader::prefetch`]: the run of blocks it is
//!   about to read) or for a read larger than a page. Reading the heap a window at a time
//!   runs at memory speed; reading it a page at a time made the system calls most of the
//!   scan's time;
//! - a few direct-mapped pages for small reads elsewhere (type objects, chunk headers).
//!
//! A cached byte is a snapshot from a moment of the scan, as any read is. Given the readable
//! mappings of the moment the scan began ([`MemoryReader::set_readable`]), a small read
//! outside all of them fails without a system call: the Python object recognition tries
//! many words that are no address at all.
//!
//! When no thread of the program can run (the scan's caller established that the only one
//! left waits for the scan, [`MemoryReader::copy_directly_within`]), reads within private
//! anonymous mappings copy the memory itself, without a system call: `/proc/self/mem`
//! costs a kernel page walk per page, most of a pool worker's exit scan. Each such read
//! first asks `/proc/self/pagemap` which of its pages are there (in memory or elsewhere) and
//! copies only those in memory; a page with no entry reads as zeros, as it would (never
//! touched, discarded, or unmapped since by libleak's own allocator), and one swapped out
//! (or migrating, poisoned, a guard region) is read by system call: no copy can fault.
//!
//! Never dereferences an address it was given, but for those copies.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

use super::pagemap::PageState;

const PAGE: usize = 4096;
/// 256 KiB of direct-mapped pages, for small reads outside the window.
const CACHED_PAGES: usize = 64;
/// The most bytes one window holds: 1 MiB, a system call per MiB at most.
pub const MAX_WINDOW: usize = 1 << 20;

pub struct MemoryReader {
    pid: libc::pid_t,
    /// Bytes read from `window_start` on, `window_len` of them valid.
    window: Vec<u8>,
    window_start: u64,
    window_len: usize,
    /// A small read across two pages.
    scratch: Vec<u8>,
    /// `CACHED_PAGES` pages, direct-mapped by page number.
    pages: Vec<u8>,
    /// Per cached page: its address (`u64::MAX`: none) and how many of its bytes were read.
    page_tags: Vec<(u64, usize)>,
    /// Sorted, disjoint readable ranges; empty: not known, try every read.
    readable: Vec<(u64, u64)>,
    /// Opened at the first read larger than a page.
    proc_mem: Option<File>,
    /// Set when `/proc/self/mem` cannot be opened.
    proc_mem_refused: bool,
    /// Set when `process_vm_readv` is refused (seccomp, no such system call).
    vm_readv_refused: bool,
    /// Small reads go through `/proc/self/mem` too (see [`MemoryReader::keep_pages_shared`]).
    pages_shared: bool,
    /// Sorted, disjoint ranges read by copying (see the module's doc); empty: none.
    direct: Vec<(u64, u64)>,
    /// `/proc/self/pagemap`, for the copies; `None` until the first (and after it failed).
    pagemap: Option<File>,
    /// Bytes copied straight from memory (see the module's doc).
    pub copied_directly: u64,
    /// This reader set [`DIRECT_READER`].
    announced_direct: bool,
    /// Entries of [`PAGEMAP_SPAN`] pages from `.0` on, read when libleak had given back
    /// `.1` blocks (see [`super::real::blocks_given_back`]): valid while that count holds.
    pagemap_span: (u64, usize, Vec<u64>),
}

/// Set for good when a thread that waited for a scan stopped waiting (its time ran out): the
/// program runs again, so no reader copies memory any more (see [`refuse_copies`]).
static COPIES_REFUSED: AtomicBool = AtomicBool::new(false);
/// A reader is copying a page.
static COPYING: AtomicBool = AtomicBool::new(false);
/// A reader that copies memory directly exists (see [`MemoryReader::copy_directly_within`]).
static DIRECT_READER: AtomicBool = AtomicBool::new(false);

/// Whether a reader that copies memory directly exists: only then do frees made outside
/// libleak's allocator need counting (see [`super::real::note_given_back`]).
#[inline]
pub fn direct_reader_exists() -> bool {
    DIRECT_READER.load(Ordering::Relaxed)
}

/// Called by a thread that waited for a scan and gives up waiting, before it returns to the
/// program: from then on readers read by system call, and this returns once no copy is
/// under way (a copy is one page). Either the reader sees the refusal before it copies, or
/// this sees its copy and waits for it to end.
pub fn refuse_copies() {
    COPIES_REFUSED.store(true, Ordering::SeqCst);
    while COPYING.load(Ordering::SeqCst) {
        std::hint::spin_loop();
    }
}

/// Pagemap entries read at once for the direct copies: 256 KiB of address space.
const PAGEMAP_SPAN: usize = 64;
/// Pagemap entries read again around a page when libleak gave a block back since.
const PAGEMAP_RECHECK: usize = 16;

impl MemoryReader {
    pub fn new() -> MemoryReader {
        MemoryReader {
            // SAFETY: getpid has no preconditions.
            pid: unsafe { libc::getpid() },
            window: Vec::new(),
            window_start: 0,
            window_len: 0,
            scratch: Vec::new(),
            pages: Vec::new(),
            page_tags: Vec::new(),
            readable: Vec::new(),
            proc_mem: None,
            proc_mem_refused: false,
            vm_readv_refused: false,
            pages_shared: false,
            direct: Vec::new(),
            pagemap: None,
            pagemap_span: (u64::MAX, 0, Vec::new()),
            copied_directly: 0,
            announced_direct: false,
        }
    }

    /// Reads within `ranges` (private anonymous mappings, none of them libleak's own) copy
    /// the memory directly. Only for a caller that knows no thread of the program can run
    /// until the reader is dropped: none could unmap or protect those mappings meanwhile.
    pub fn copy_directly_within(&mut self, ranges: Vec<(u64, u64)>) {
        if COPIES_REFUSED.load(Ordering::SeqCst) {
            return;
        }
        DIRECT_READER.store(true, Ordering::SeqCst);
        self.announced_direct = true;
        self.pagemap = File::open("/proc/self/pagemap").ok();
        self.direct = match self.pagemap {
            Some(_) => super::maps::merged_ranges(ranges),
            None => Vec::new(),
        };
    }

    /// Where the direct range holding `address` ends, if one does; else where the next
    /// begins (`None`: none).
    fn direct_range_at(&self, address: u64) -> (Option<u64>, Option<u64>) {
        let after = self.direct.partition_point(|&(start, _)| start <= address);
        let holding = after
            .checked_sub(1)
            .map(|index| self.direct[index].1)
            .filter(|&end| address < end);
        (holding, self.direct.get(after).map(|&(start, _)| start))
    }

    /// With `shared`, the process forked or was forked: its pages may be shared with another
    /// process, and `process_vm_readv` would copy each page it reads. Every read then goes
    /// through `/proc/self/mem` (where it can be opened).
    pub fn keep_pages_shared(&mut self, shared: bool) {
        self.pages_shared = shared;
    }

    /// The readable mappings, as `(start, end)`, when the scan began: reads are cut to them,
    /// and those that start outside them fail without a system call. (`/proc/self/mem`
    /// would read pages mapped without read access too.) Memory mapped later holds no block
    /// the scan looks for.
    pub fn set_readable(&mut self, ranges: Vec<(u64, u64)>) {
        self.readable = super::maps::merged_ranges(ranges);
    }

    /// How many of `len` bytes from `address` on lie in readable memory.
    fn readable_len(&self, address: u64, len: usize) -> usize {
        if self.readable.is_empty() {
            return len;
        }
        let after = self.readable.partition_point(|&(start, _)| start <= address);
        match after.checked_sub(1).map(|index| self.readable[index].1) {
            Some(end) if address < end => len.min((end - address).try_into().unwrap_or(usize::MAX)),
            _ => 0,
        }
    }

    /// `[address, address + len)` when the window holds all of it.
    #[inline]
    fn in_window(&self, address: u64, len: usize) -> Option<usize> {
        let offset = address.wrapping_sub(self.window_start);
        (offset <= self.window_len as u64 && len as u64 <= self.window_len as u64 - offset).then_some(offset as usize)
    }

    /// Whether the window holds all of `[start, end)`.
    pub fn holds(&self, start: u64, end: u64) -> bool {
        end >= start && self.in_window(start, (end - start) as usize).is_some()
    }

    /// Reads `[start, end)` (at most [`MAX_WINDOW`] bytes of it) into the window with one
    /// system call, unless the window holds it already: the caller is about to read there.
    pub fn prefetch(&mut self, start: u64, end: u64) {
        if end <= start || self.in_window(start, (end - start) as usize).is_some() {
            return;
        }
        self.load_window(start, ((end - start) as usize).min(MAX_WINDOW));
    }

    fn load_window(&mut self, start: u64, len: usize) {
        // Grown to the largest read asked for, not to MAX_WINDOW at once: zeroing a megabyte
        // cost a fork child judging a few blocks more than its scan.
        if self.window.len() < len {
            self.window.resize(len.next_multiple_of(PAGE), 0);
        }
        let mut window = std::mem::take(&mut self.window);
        let read = self.read_uncached(start, &mut window[..len]);
        self.window = window;
        self.window_start = start;
        self.window_len = read;
    }

    /// Up to `len` bytes from `address` on, as many leading ones as could be read. A read of
    /// more than a page that the window does not hold replaces the window.
    pub fn bytes(&mut self, address: u64, len: usize) -> &[u8] {
        if address.checked_add(len as u64).is_none() {
            return &[];
        }
        if self.in_window(address, len).is_none() {
            if len <= PAGE {
                if (address as usize % PAGE) + len <= PAGE {
                    return self.cached_page(address, len);
                }
                // Across two pages: read on its own, keeping the window.
                let mut scratch = std::mem::take(&mut self.scratch);
                scratch.resize(len, 0);
                let read = self.read_uncached(address, &mut scratch);
                self.scratch = scratch;
                return &self.scratch[..read];
            }
            self.load_window(address, len.min(MAX_WINDOW));
        }
        let offset = (address - self.window_start) as usize;
        let end = self.window_len.min(offset + len);
        &self.window[offset..end]
    }

    /// Fills `out` from `address` onwards; returns how many leading bytes could be read (the
    /// rest of `out` is left as it was).
    pub fn read(&mut self, address: u64, out: &mut [u8]) -> usize {
        if out.is_empty() || address.checked_add(out.len() as u64).is_none() {
            return 0;
        }
        if let Some(offset) = self.in_window(address, out.len()) {
            out.copy_from_slice(&self.window[offset..offset + out.len()]);
            return out.len();
        }
        if (address as usize % PAGE) + out.len() > PAGE {
            return self.read_uncached(address, out);
        }
        let bytes = self.cached_page(address, out.len());
        let read = bytes.len();
        out[..read].copy_from_slice(bytes);
        read
    }

    /// The readable part of `[address, address + len)`, which lies within one page.
    fn cached_page(&mut self, address: u64, len: usize) -> &[u8] {
        if self.readable_len(address, 1) == 0 {
            return &[];
        }
        let page = address & !(PAGE as u64 - 1);
        let offset = (address - page) as usize;
        if self.pages.is_empty() {
            self.pages = vec![0; CACHED_PAGES * PAGE];
            self.page_tags = vec![(u64::MAX, 0); CACHED_PAGES];
        }
        let slot = (page / PAGE as u64) as usize % CACHED_PAGES;
        if self.page_tags[slot].0 != page {
            let mut bytes = std::mem::take(&mut self.pages);
            let read = self.read_uncached(page, &mut bytes[slot * PAGE..(slot + 1) * PAGE]);
            self.pages = bytes;
            self.page_tags[slot] = (page, read);
        }
        let available = self.page_tags[slot].1.saturating_sub(offset).min(len);
        let cached = slot * PAGE + offset;
        &self.pages[cached..cached + available]
    }

    fn read_uncached(&mut self, address: u64, out: &mut [u8]) -> usize {
        let len = self.readable_len(address, out.len());
        let out = &mut out[..len];
        if out.is_empty() {
            return 0;
        }
        if self.direct.is_empty() {
            return self.read_by_system_call(address, out);
        }
        // Piece by piece: copied where a direct range holds it, by system call elsewhere.
        let mut filled = 0;
        while filled < out.len() {
            let at = address + filled as u64;
            let rest = out.len() - filled;
            let read = match self.direct_range_at(at) {
                (Some(end), _) => {
                    let piece = rest.min(usize::try_from(end - at).unwrap_or(usize::MAX));
                    let read = self.copy_present(at, &mut out[filled..filled + piece]);
                    if read < piece && self.direct.is_empty() {
                        // Copying stopped (pagemap unreadable, or refused): the rest by system call.
                        filled += read;
                        continue;
                    }
                    read
                }
                (None, next) => {
                    let piece = next.map_or(rest, |next| rest.min(usize::try_from(next - at).unwrap_or(usize::MAX)));
                    let piece = &mut out[filled..filled + piece];
                    let wanted = piece.len();
                    let read = self.read_by_system_call(at, piece);
                    if read < wanted {
                        return filled + read;
                    }
                    read
                }
            };
            if read == 0 {
                break;
            }
            filled += read;
        }
        filled
    }

    /// What is behind page number `page` now, from `/proc/self/pagemap`; `None` when it
    /// cannot be read.
    fn page_state(&mut self, page: u64) -> Option<PageState> {
        let given_back = super::real::blocks_given_back();
        let (first, read_when, entries) = &mut self.pagemap_span;
        let cached = page.wrapping_sub(*first);
        if *read_when != given_back || cached >= entries.len() as u64 {
            // Given back since: the pages around are likely still those read (libleak gives
            // blocks back throughout a scan), so few are read again.
            let span = if *read_when != given_back && cached < entries.len() as u64 {
                PAGEMAP_RECHECK
            } else {
                PAGEMAP_SPAN
            };
            entries.resize(span, 0);
            let read = super::pagemap::read_entries(self.pagemap.as_ref()?, page, entries);
            entries.truncate(read);
            *first = page;
            *read_when = given_back;
            if read == 0 {
                return None;
            }
        }
        Some(PageState::of(entries[(page - *first) as usize]))
    }

    /// Copies `out.len()` bytes at `address` (within a direct range) into `out`, page by page:
    /// the pages in memory, zeros for those with nothing behind them, and the others by system
    /// call. Stops at a page the pagemap does not describe (then reads stop copying directly)
    /// or the system call cannot read: how many leading bytes were read.
    fn copy_present(&mut self, address: u64, out: &mut [u8]) -> usize {
        let mut copied = 0;
        while copied < out.len() {
            let at = address + copied as u64;
            let page_end = (at / PAGE as u64 + 1) * PAGE as u64;
            let piece_len = (out.len() - copied).min((page_end - at) as usize);
            let piece = &mut out[copied..copied + piece_len];
            match self.page_state(at / PAGE as u64) {
                Some(PageState::InMemory) => {
                    COPYING.store(true, Ordering::SeqCst);
                    if COPIES_REFUSED.load(Ordering::SeqCst) {
                        COPYING.store(false, Ordering::SeqCst);
                        self.direct.clear();
                        return copied;
                    }
                    // SAFETY: `[at, at + piece.len())` lies in one page of a private anonymous
                    // mapping that was readable when the scan began, and the page is in memory
                    // (pagemap, read since libleak last gave a block back); no thread of the
                    // program runs (see `copy_directly_within`: the one that waits has not
                    // given up, or COPIES_REFUSED would be set and it would wait for this copy)
                    // and this thread unmaps nothing but in giving blocks back, so it is still
                    // mapped and readable. `piece` is ours and does not overlap it.
                    unsafe { std::ptr::copy_nonoverlapping(at as *const u8, piece.as_mut_ptr(), piece.len()) };
                    COPYING.store(false, Ordering::SeqCst);
                    self.copied_directly += piece_len as u64;
                }
                Some(PageState::Empty) => piece.fill(0),
                // Swapped out, migrating, poisoned or a guard: the kernel reads it or says no.
                Some(PageState::Elsewhere) => {
                    let read = self.read_by_system_call(at, piece);
                    if read < piece_len {
                        return copied + read;
                    }
                }
                None => {
                    self.direct.clear();
                    self.pagemap = None;
                    return copied;
                }
            }
            copied += piece_len;
        }
        copied
    }

    /// Reads `[address, address + out.len())` with `process_vm_readv` or `/proc/self/mem`,
    /// either of which fails cleanly on a page that is not there.
    fn read_by_system_call(&mut self, address: u64, out: &mut [u8]) -> usize {
        // A page or less: `process_vm_readv` costs a third of a `/proc/self/mem` read, and
        // copies at most the pages it reads when they are shared with a parent.
        let file_usable = !self.proc_mem_refused;
        if out.len() <= PAGE && !self.vm_readv_refused && !(self.pages_shared && file_usable) {
            let read = self.vm_readv(address, out);
            if read >= 0 {
                return read as usize;
            }
            let error = std::io::Error::last_os_error().raw_os_error();
            if !matches!(error, Some(libc::EPERM | libc::ENOSYS | libc::EACCES)) {
                return 0;
            }
            self.vm_readv_refused = true;
        }
        if !self.proc_mem_refused && self.proc_mem.is_none() {
            self.proc_mem = File::open("/proc/self/mem").ok();
            self.proc_mem_refused = self.proc_mem.is_none();
        }
        if let Some(file) = &self.proc_mem {
            let mut filled = 0;
            while filled < out.len() {
                match file.read_at(&mut out[filled..], address + filled as u64) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => filled += n,
                }
            }
            return filled;
        }
        if self.vm_readv_refused {
            return 0;
        }
        self.vm_readv(address, out).max(0) as usize
    }

    /// `process_vm_readv` of `out.len()` bytes at `address` of this process into `out`: the
    /// bytes read, or -1 (errno says why).
    fn vm_readv(&self, address: u64, out: &mut [u8]) -> isize {
        vm_readv(self.pid, address, out)
    }

    pub fn word(&mut self, address: u64) -> Option<u64> {
        let mut bytes = [0u8; 8];
        (self.read(address, &mut bytes) == 8).then(|| u64::from_ne_bytes(bytes))
    }
}

/// Reads of this process's memory, uncached (each sees the memory of its moment), that leave
/// the pages shared with a fork parent or child shared: through `/proc/self/mem`, opened
/// again in a forked child (the file opened in the parent reads the parent's memory), else
/// [`copy_own`]. For repeated reads of the same memory over a process's life: each
/// `process_vm_readv` of a page still shared with another process copies it.
pub struct OwnMemory {
    file: Option<File>,
    /// The process that opened `file` (0: none tried yet).
    opened_in: libc::pid_t,
}

impl OwnMemory {
    pub const fn new() -> OwnMemory {
        OwnMemory {
            file: None,
            opened_in: 0,
        }
    }

    /// Fills `out` from `address` onwards: how many leading bytes could be read.
    pub fn read(&mut self, address: u64, out: &mut [u8]) -> usize {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        if self.opened_in != pid {
            self.file = File::open("/proc/self/mem").ok();
            self.opened_in = pid;
        }
        let Some(file) = &self.file else {
            return copy_own(address, out);
        };
        let mut filled = 0;
        while filled < out.len() {
            match file.read_at(&mut out[filled..], address + filled as u64) {
                Ok(0) | Err(_) => break,
                Ok(n) => filled += n,
            }
        }
        filled
    }
}

impl Default for OwnMemory {
    fn default() -> OwnMemory {
        OwnMemory::new()
    }
}

/// Copies `out.len()` bytes of this process's memory at `address` into `out` with one
/// `process_vm_readv`, which fails on an unmapped page instead of faulting: how many leading
/// bytes were copied (0 when none could be, or the call is refused).
pub fn copy_own(address: u64, out: &mut [u8]) -> usize {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    vm_readv(pid, address, out).max(0) as usize
}

impl Drop for MemoryReader {
    fn drop(&mut self) {
        if self.announced_direct {
            DIRECT_READER.store(false, Ordering::SeqCst);
        }
    }
}

/// `process_vm_readv` of `out.len()` bytes at `address` of process `pid` (this one) into
/// `out`: the bytes read, or -1 (errno says why).
fn vm_readv(pid: libc::pid_t, address: u64, out: &mut [u8]) -> isize {
    let local = libc::iovec {
        iov_base: out.as_mut_ptr().cast(),
        iov_len: out.len(),
    };
    let remote = libc::iovec {
        iov_base: address as *mut libc::c_void,
        iov_len: out.len(),
    };
    // SAFETY: `local` describes `out`, which we own and may write; the kernel checks `remote`
    // against our own address space and returns EFAULT instead of faulting.
    unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) }
}

/// The calling thread's stack pointer, give or take the current frame.
#[inline(never)]
pub fn stack_pointer() -> u64 {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as u64
}

#[cfg(test)]
mod tests {
    use super::{MemoryReader, OwnMemory, PAGE};

    /// `pages` fresh private anonymous pages, never touched.
    fn anonymous_pages(pages: usize) -> u64 {
        // SAFETY: a new mapping at an address of the kernel's choosing; nothing else is touched.
        let start = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                pages * PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(start, libc::MAP_FAILED);
        start as u64
    }

    fn write_byte(address: u64, value: u8) {
        // SAFETY: `address` lies in a mapping this test made readable and writable.
        unsafe { std::ptr::write_volatile(address as *mut u8, value) };
    }

    #[test]
    fn copies_read_what_system_calls_read_and_zeros_where_nothing_is() {
        const PAGES: usize = 300;
        let start = anonymous_pages(PAGES);
        let end = start + (PAGES * PAGE) as u64;
        for (page, value) in [(0, 7u8), (5, 9), (299, 11)] {
            write_byte(start + (page * PAGE + 100) as u64, value);
        }
        let mut by_calls = MemoryReader::new();
        by_calls.set_readable(vec![(start, end)]);
        let mut copying = MemoryReader::new();
        copying.set_readable(vec![(start, end)]);
        copying.copy_directly_within(vec![(start, end)]);
        if copying.direct.is_empty() {
            eprintln!("skipped: /proc/self/pagemap cannot be read here");
            return;
        }
        let mut expected = vec![1u8; PAGES * PAGE];
        let mut copied = vec![2u8; PAGES * PAGE];
        // Copied first: reading by system call maps the zero page where nothing was.
        assert_eq!(copying.read_uncached(start, &mut copied), PAGES * PAGE);
        assert_eq!(by_calls.read_uncached(start, &mut expected), PAGES * PAGE);
        assert!(expected == copied);
        assert_eq!(copied[5 * PAGE + 100], 9);
        assert_eq!(copied.iter().filter(|&&byte| byte != 0).count(), 3);
        // Only the three pages written were copied; the rest has nothing behind it.
        assert_eq!(copying.copied_directly, 3 * PAGE as u64);
        // Small reads and a read across the end of the direct range.
        assert_eq!(copying.word(start + 5 * PAGE as u64 + 96), Some(9 << 32));
        let mut across = [3u8; 64];
        copying.set_readable(vec![(start, end + PAGE as u64)]);
        copying.copy_directly_within(vec![(start, end - 32)]);
        assert_eq!(copying.read_uncached(end - 64, &mut across), 64);
        assert!(across.iter().all(|&byte| byte == 0));
        // SAFETY: the mapping made above, no longer used.
        unsafe { libc::munmap(start as *mut libc::c_void, PAGES * PAGE) };
    }

    #[test]
    fn a_guard_page_or_an_unmapped_one_is_never_copied() {
        const GUARD_INSTALL: libc::c_int = 102; // MADV_GUARD_INSTALL, Linux 6.13
        let start = anonymous_pages(4);
        for page in 0..4 {
            write_byte(start + (page * PAGE) as u64, 1 + page as u8);
        }
        let page = |n: u64| start + n * PAGE as u64;
        // SAFETY: pages of the mapping made above.
        let guarded = unsafe { libc::madvise(page(1) as *mut libc::c_void, PAGE, GUARD_INSTALL) } == 0;
        // SAFETY: as above; nothing refers to the page.
        unsafe { libc::munmap(page(3) as *mut libc::c_void, PAGE) };
        let mut memory = MemoryReader::new();
        // As the scan began: all four pages readable.
        memory.set_readable(vec![(start, page(4))]);
        memory.copy_directly_within(vec![(start, page(4))]);
        if memory.direct.is_empty() {
            eprintln!("skipped: /proc/self/pagemap cannot be read here");
            return;
        }
        let mut bytes = vec![0u8; 4 * PAGE];
        let read = memory.read_uncached(start, &mut bytes);
        if guarded {
            assert_eq!(read, PAGE, "stops at the guard page");
        } else {
            eprintln!("no guard page on this kernel (before 6.13): only the unmapped page is tried");
            assert_eq!(read, 3 * PAGE);
            assert_eq!(bytes[2 * PAGE], 3);
        }
        assert_eq!(bytes[0], 1);
        let mut last = [9u8; 16];
        assert_eq!(
            memory.read_uncached(page(3), &mut last),
            16,
            "unmapped: nothing behind it"
        );
        assert_eq!(last, [0; 16]);
        // SAFETY: the pages of the mapping still mapped.
        unsafe { libc::munmap(start as *mut libc::c_void, 3 * PAGE) };
    }

    /// A forked child reading through the reader its parent used reads its own memory, not
    /// the parent's (the parent's `/proc/self/mem` names the parent's address space).
    #[test]
    fn own_memory_reads_the_childs_memory_after_fork() {
        let page = anonymous_pages(1);
        write_byte(page, 1);
        let mut memory = OwnMemory::new();
        let mut byte = [0u8; 1];
        assert_eq!(memory.read(page, &mut byte), 1);
        assert_eq!(byte[0], 1);
        // SAFETY: the child only writes a byte of its own, reads, and leaves with `_exit`.
        let child = unsafe { libc::fork() };
        assert!(child >= 0);
        if child == 0 {
            write_byte(page, 2);
            let mut seen = [0u8; 1];
            let read = memory.read(page, &mut seen);
            // SAFETY: ends the forked child at once, running no destructor of the test harness.
            unsafe { libc::_exit(if read == 1 { i32::from(seen[0]) } else { 99 }) };
        }
        let mut status = 0;
        // SAFETY: waits for the child this test forked.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert_eq!(libc::WEXITSTATUS(status), 2, "the child read its own byte");
        assert_eq!(memory.read(page, &mut byte), 1);
        assert_eq!(byte[0], 1, "the parent's memory is unchanged");
    }
}
