//! Reading the process's own memory where it may change or disappear while we read it: the
//! exit-time scan runs while other threads (daemon threads) may still free and unmap. Reads
//! go through `process_vm_readv` on ourselves, which fails cleanly on an unmapped page, and
//! fall back to `/proc/self/mem` where that system call is refused.
//!
//! Small reads (a word, a small block) are served from a few cached pages: the scan reads
//! every live block and its neighbours' headers, and a system call per read would be most of
//! the scan's time (see docs/benchmarks.md, "Exit scan"). A cached page is a snapshot from a
//! moment of the scan, as any read is.
//!
//! Never dereferences an address it was given.

use std::fs::File;
use std::os::unix::fs::FileExt;

const PAGE: usize = 4096;
/// 2 MiB, a direct mapping that lives as long as a scan: the flood reads blocks all over the
/// heap, and each miss is a system call.
const CACHED_PAGES: usize = 512;

pub struct MemoryReader {
    pid: libc::pid_t,
    /// `CACHED_PAGES` pages, direct-mapped by page number.
    pages: Vec<u8>,
    /// Per cached page: its address (`u64::MAX`: none) and how many of its bytes were read.
    page_tags: Vec<(u64, usize)>,
    /// Opened the first time `process_vm_readv` is refused.
    proc_mem: Option<File>,
    use_proc_mem: bool,
}

impl MemoryReader {
    pub fn new() -> MemoryReader {
        MemoryReader {
            // SAFETY: getpid has no preconditions.
            pid: unsafe { libc::getpid() },
            pages: Vec::new(),
            page_tags: Vec::new(),
            proc_mem: None,
            use_proc_mem: false,
        }
    }

    /// Fills `out` from `address` onwards; returns how many leading bytes could be read (the
    /// rest of `out` is left as it was).
    pub fn read(&mut self, address: u64, out: &mut [u8]) -> usize {
        if out.is_empty() || address.checked_add(out.len() as u64).is_none() {
            return 0;
        }
        let page = address & !(PAGE as u64 - 1);
        let offset = (address - page) as usize;
        if offset + out.len() > PAGE {
            return self.read_uncached(address, out);
        }
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
        let available = self.page_tags[slot].1.saturating_sub(offset).min(out.len());
        let cached = slot * PAGE + offset;
        out[..available].copy_from_slice(&self.pages[cached..cached + available]);
        available
    }

    fn read_uncached(&mut self, address: u64, out: &mut [u8]) -> usize {
        if !self.use_proc_mem {
            let local = libc::iovec {
                iov_base: out.as_mut_ptr().cast(),
                iov_len: out.len(),
            };
            let remote = libc::iovec {
                iov_base: address as *mut libc::c_void,
                iov_len: out.len(),
            };
            // SAFETY: `local` describes `out`, which we own and may write; the kernel checks
            // `remote` against our own address space and returns EFAULT instead of faulting.
            let read = unsafe { libc::process_vm_readv(self.pid, &local, 1, &remote, 1, 0) };
            if read >= 0 {
                return read as usize;
            }
            let error = std::io::Error::last_os_error().raw_os_error();
            if !matches!(error, Some(libc::EPERM | libc::ENOSYS | libc::EACCES)) {
                return 0;
            }
            self.use_proc_mem = true;
        }
        if self.proc_mem.is_none() {
            self.proc_mem = File::open("/proc/self/mem").ok();
        }
        let Some(file) = &self.proc_mem else { return 0 };
        let mut filled = 0;
        while filled < out.len() {
            match file.read_at(&mut out[filled..], address + filled as u64) {
                Ok(0) | Err(_) => break,
                Ok(n) => filled += n,
            }
        }
        filled
    }

    pub fn word(&mut self, address: u64) -> Option<u64> {
        let mut bytes = [0u8; 8];
        (self.read(address, &mut bytes) == 8).then(|| u64::from_ne_bytes(bytes))
    }
}

/// The calling thread's stack pointer, give or take the current frame.
#[inline(never)]
pub fn stack_pointer() -> u64 {
    let marker = 0u8;
    std::hint::black_box(&marker) as *const u8 as u64
}
