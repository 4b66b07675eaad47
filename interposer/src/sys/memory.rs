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
//! Never dereferences an address it was given.

use std::fs::File;
use std::os::unix::fs::FileExt;

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
}

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
        }
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
        if self.window.len() < len {
            self.window.resize(len.max(MAX_WINDOW), 0);
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

/// Copies `out.len()` bytes of this process's memory at `address` into `out` with one
/// `process_vm_readv`, which fails on an unmapped page instead of faulting: how many leading
/// bytes were copied (0 when none could be, or the call is refused).
pub fn copy_own(address: u64, out: &mut [u8]) -> usize {
    // SAFETY: getpid has no preconditions.
    let pid = unsafe { libc::getpid() };
    vm_readv(pid, address, out).max(0) as usize
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
