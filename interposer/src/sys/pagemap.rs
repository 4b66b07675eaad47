//! Which pages of the heap a forked child may have written to since the fork, from
//! `/proc/self/pagemap`: right after `fork` every private page the child has is shared with
//! its parent; the first write copies it and the copy is the child's alone (the entry's
//! "exclusively mapped" bit, Linux 4.2 and later). A page is counted as written when that bit
//! is set, or when it is swapped out (its sharing is then not known). A page the parent wrote
//! to since the fork is the child's alone too: that can only count more pages as written.
//!
//! Soft-dirty bits would say the same thing directly, but kernels are often built without
//! them (`CONFIG_MEM_SOFT_DIRTY`), and clearing them is a write to the whole process.
//!
//! Reads the file once per scan, for the given address ranges, into a bitmap; never touches
//! the pages themselves. Also answers, page by page, whether memory is there at all
//! ([`PageState`]), for the exit scan's direct reads.
//!
//! Also tells which pages of an anonymous mapping hold anything ([`populated_runs`]): one
//! never touched is zeros when read, and an allocator's reserved address space (jemalloc's
//! and mimalloc's in pyarrow, OpenBLAS's buffers in numpy) is mostly such pages.

use std::fs::File;
use std::os::unix::fs::FileExt;

const PAGE_SHIFT: u32 = 12;
/// The page size `/proc/self/pagemap` counts in (4 KiB on x86-64 and on aarch64's default).
pub const PAGE: u64 = 1 << PAGE_SHIFT;
const PRESENT: u64 = 1 << 63;
const SWAPPED: u64 = 1 << 62;
const EXCLUSIVE: u64 = 1 << 56;
/// Entries read per system call: 4 MiB of entries, 2 GiB of address space.
const ENTRIES_PER_READ: usize = 1 << 19;

/// Reads the entries of `entries.len()` pages from `first_page` (a page number) on: how many
/// were read (0: none could be). Allocates nothing.
pub fn read_entries(pagemap: &File, first_page: u64, entries: &mut [u64]) -> usize {
    let mut bytes = [0u8; 4096];
    let mut done = 0;
    while done < entries.len() {
        let wanted = (entries.len() - done).min(bytes.len() / 8);
        let offset = first_page.saturating_add(done as u64).saturating_mul(8);
        let read = match pagemap.read_at(&mut bytes[..wanted * 8], offset) {
            Ok(read) => read / 8,
            Err(_) => 0,
        };
        for (entry, chunk) in entries[done..done + read].iter_mut().zip(bytes.chunks_exact(8)) {
            *entry = u64::from_ne_bytes(chunk.try_into().unwrap_or_default());
        }
        done += read;
        if read < wanted {
            break;
        }
    }
    done
}

/// What a page's pagemap entry says is behind it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PageState {
    /// A page in memory: reading it cannot fault.
    InMemory,
    /// No page and no swap entry: an anonymous page never touched (or discarded) reads as
    /// zeros.
    Empty,
    /// A swap entry: swapped out, or a migration, poison or guard marker, which the kernel
    /// reads or refuses.
    Elsewhere,
}

impl PageState {
    pub fn of(entry: u64) -> PageState {
        if entry & PRESENT != 0 {
            PageState::InMemory
        } else if entry & SWAPPED != 0 {
            PageState::Elsewhere
        } else {
            PageState::Empty
        }
    }
}

/// Per page of some address ranges: written since the fork (see the module's doc).
pub struct WrittenPages {
    /// Sorted, disjoint: (first page, page after the last, where its bits start).
    ranges: Vec<(u64, u64, usize)>,
    bits: Vec<u64>,
    /// Pages counted as written.
    pub written: u64,
}

impl WrittenPages {
    /// Reads the entries of every page in `ranges` (byte addresses, `[start, end)`). `None`
    /// when the file cannot be read or the kernel does not say which pages are shared.
    pub fn read(ranges: &[(u64, u64)]) -> Option<WrittenPages> {
        let file = File::open("/proc/self/pagemap").ok()?;
        let merged = super::maps::merged_ranges(
            ranges
                .iter()
                .filter(|(start, end)| end > start)
                .map(|&(start, end)| (start >> PAGE_SHIFT, (end + (1 << PAGE_SHIFT) - 1) >> PAGE_SHIFT))
                .collect(),
        );
        let total: u64 = merged.iter().map(|(first, after)| after - first).sum();
        let mut map = WrittenPages {
            ranges: Vec::with_capacity(merged.len()),
            bits: vec![0; usize::try_from(total.div_ceil(64)).ok()?],
            written: 0,
        };
        let mut buffer = vec![0u8; ENTRIES_PER_READ * 8];
        let mut bit = 0usize;
        let mut any_present = false;
        let mut any_exclusive = false;
        for (first, after) in merged {
            map.ranges.push((first, after, bit));
            let mut page = first;
            while page < after {
                let want = usize::try_from(after - page)
                    .unwrap_or(usize::MAX)
                    .min(ENTRIES_PER_READ);
                let read = file.read_at(&mut buffer[..want * 8], page * 8).ok()?;
                let entries = read / 8;
                if entries == 0 {
                    return None;
                }
                for chunk in buffer[..entries * 8].chunks_exact(8) {
                    let entry = u64::from_ne_bytes(chunk.try_into().unwrap_or_default());
                    any_present |= entry & PRESENT != 0;
                    any_exclusive |= entry & (PRESENT | EXCLUSIVE) == PRESENT | EXCLUSIVE;
                    let written = if entry & PRESENT != 0 {
                        entry & EXCLUSIVE != 0
                    } else {
                        entry & SWAPPED != 0
                    };
                    if written {
                        map.bits[bit / 64] |= 1 << (bit % 64);
                        map.written += 1;
                    }
                    bit += 1;
                }
                page += entries as u64;
            }
        }
        // Without the exclusive bit (kernels before 4.2) no present page would ever count as
        // written: say nothing rather than that.
        if any_present && !any_exclusive && !kernel_reports_exclusive() {
            return None;
        }
        Some(map)
    }

    /// The runs of consecutive written pages, as `[start, end)` byte addresses, in address
    /// order.
    pub fn written_runs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().flat_map(move |&(first, after, offset)| {
            let mut page = first;
            std::iter::from_fn(move || {
                let is_written = |page: u64| {
                    let bit = offset + (page - first) as usize;
                    self.bits[bit / 64] & (1 << (bit % 64)) != 0
                };
                while page < after && !is_written(page) {
                    // A word of clean pages at once.
                    let bit = offset + (page - first) as usize;
                    if bit.is_multiple_of(64) && self.bits[bit / 64] == 0 {
                        page += 64;
                    } else {
                        page += 1;
                    }
                }
                if page >= after {
                    return None;
                }
                let start = page;
                while page < after && is_written(page) {
                    page += 1;
                }
                Some((start << PAGE_SHIFT, page << PAGE_SHIFT))
            })
        })
    }
}

/// The parts of `ranges` on pages written since the fork (see the module's doc), in the order
/// of `ranges` (a scan's roots come in the order their holders are named); `None` when that
/// cannot be told.
pub fn written_parts(ranges: &[(u64, u64)]) -> Option<Vec<(u64, u64)>> {
    let pages = WrittenPages::read(ranges)?;
    let runs: Vec<(u64, u64)> = pages.written_runs().collect();
    let mut parts = Vec::new();
    for &(start, end) in ranges.iter().filter(|(start, end)| end > start) {
        let mut at = runs.partition_point(|&(_, run_end)| run_end <= start);
        while let Some(&(run_start, run_end)) = runs.get(at).filter(|(run_start, _)| *run_start < end) {
            parts.push((start.max(run_start), end.min(run_end)));
            at += 1;
        }
    }
    Some(parts)
}

/// The runs of pages of `[start, end)` (page-aligned) that are present or swapped out, as
/// `[start, end)` byte addresses in address order; `None` when `/proc/self/pagemap` cannot be
/// read. In a private anonymous mapping every other page reads as zeros.
pub fn populated_runs(start: u64, end: u64) -> Option<Vec<(u64, u64)>> {
    let file = File::open("/proc/self/pagemap").ok()?;
    let (first, after) = (start >> PAGE_SHIFT, end.div_ceil(PAGE));
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut buffer = vec![0u8; (ENTRIES_PER_READ.min((after - first.min(after)) as usize)).max(1) * 8];
    let mut page = first;
    while page < after {
        let want = usize::try_from(after - page)
            .unwrap_or(usize::MAX)
            .min(buffer.len() / 8);
        let entries = file.read_at(&mut buffer[..want * 8], page * 8).ok()? / 8;
        if entries == 0 {
            return None;
        }
        for (offset, chunk) in buffer[..entries * 8].chunks_exact(8).enumerate() {
            let entry = u64::from_ne_bytes(chunk.try_into().unwrap_or_default());
            if entry & (PRESENT | SWAPPED) == 0 {
                continue;
            }
            let at = (page + offset as u64) << PAGE_SHIFT;
            match runs.last_mut() {
                Some(run) if run.1 == at => run.1 = at + PAGE,
                _ => runs.push((at, at + PAGE)),
            }
        }
        page += entries as u64;
    }
    Some(runs)
}

/// Linux 4.2 and later set the exclusive bit; a heap all of whose present pages are shared
/// is possible (a child that wrote nothing yet), so the kernel's version decides.
fn kernel_reports_exclusive() -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut numbers = release.trim().split(['.', '-']).map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (4, 2)
}

#[cfg(test)]
mod tests {
    use super::{populated_runs, WrittenPages, PAGE};

    #[test]
    fn a_page_written_after_a_fork_is_told_from_one_still_shared() {
        // Pages of our own, present and never shared: all exclusive.
        let memory = vec![1u8; 64 * 4096];
        let start = memory.as_ptr() as u64;
        let end = start + memory.len() as u64;
        let Some(pages) = WrittenPages::read(&[(start, end)]) else {
            eprintln!("skipped: /proc/self/pagemap cannot be read here");
            return;
        };
        let runs: Vec<(u64, u64)> = pages.written_runs().collect();
        assert!(
            runs.iter()
                .any(|&(run_start, run_end)| run_start <= start + 4096 && run_end >= start + 8192),
            "{runs:x?}"
        );
        assert!(pages.written >= 60, "{}", pages.written);
    }

    #[test]
    fn written_parts_keep_the_order_of_the_ranges_and_cut_them_at_pages() {
        // Our own pages, all written: each range whole, in the order given.
        let memory = vec![1u8; 16 * PAGE as usize];
        let start = (memory.as_ptr() as u64).next_multiple_of(PAGE);
        let ranges = [
            (start + 3 * PAGE + 8, start + 5 * PAGE),
            (start + 100, start + 200),
            (start, start),
        ];
        let Some(parts) = super::written_parts(&ranges) else {
            eprintln!("skipped: /proc/self/pagemap cannot be read here");
            return;
        };
        assert_eq!(parts, ranges[..2].to_vec());
        std::hint::black_box(&memory);
    }

    #[test]
    fn pages_never_touched_are_told_from_those_that_hold_something() {
        const PAGES: usize = 64;
        let mut memory = vec![0u8; (PAGES + 1) * PAGE as usize];
        let start = (memory.as_ptr() as u64).next_multiple_of(PAGE);
        let offset = (start - memory.as_ptr() as u64) as usize;
        // A fresh allocation this large is mapped, never touched: only what is written is there.
        for page in [3usize, 4, 10] {
            memory[offset + page * PAGE as usize] = 1;
        }
        let Some(runs) = populated_runs(start, start + PAGES as u64 * PAGE) else {
            eprintln!("skipped: /proc/self/pagemap cannot be read here");
            return;
        };
        let page = |n: u64| start + n * PAGE;
        assert!(runs.contains(&(page(3), page(5))), "{runs:?}");
        assert!(runs.iter().any(|&(s, e)| s <= page(10) && page(11) <= e), "{runs:?}");
        assert!(
            runs.iter()
                .all(|&(s, e)| e <= page(3) || s >= page(5) || (s, e) == (page(3), page(5))),
            "{runs:?}"
        );
        std::hint::black_box(&memory);
    }
}
