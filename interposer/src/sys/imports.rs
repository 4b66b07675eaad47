//! Redirecting a loaded object's imports: rewriting the slots of its global offset table that
//! the dynamic loader filled for a named function (`R_X86_64_JUMP_SLOT` for calls through
//! the PLT, `R_X86_64_GLOB_DAT` for `-fno-plt` calls and address loads), so that the object
//! calls a replacement instead. Unlike `LD_PRELOAD` this reaches calls to functions the
//! executable defines itself (a statically linked libpython), and only the objects chosen.
//!
//! A slot under full RELRO (`PT_GNU_RELRO`, read-only after relocation) is made writable for
//! the one store and read-only again; each store is one aligned word, atomic for threads
//! calling through the slot meanwhile.
//!
//! Each object is scanned once: a lock-free table remembers the objects scanned (by the
//! address of their dynamic section) until [`forget_scanned`] (after a `dlclose`, when a
//! new object could take an old one's place). Without it every `dlopen` would scan every
//! object loaded before (a program importing numpy and pandas loads a hundred).
//!
//! Must never redirect a slot that holds anything but the expected function or the object's
//! own lazy-binding stub (another interposer's choice stands), never allocate, and never call
//! into the loader from inside its iteration.

use std::ffi::{c_int, c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};

/// One function to redirect: its name, the replacement, and the function the loader binds
/// the name to (a slot holding anything else is left alone).
pub struct Redirect<'a> {
    pub name: &'a CStr,
    pub replacement: usize,
    pub expected: usize,
}

/// `Elf64_Rela` (`<elf.h>`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Rela {
    r_offset: u64,
    r_info: u64,
    r_addend: i64,
}

/// `Elf64_Dyn` (`<elf.h>`): a tag and a value or address.
#[repr(C)]
#[derive(Clone, Copy)]
struct Dyn {
    d_tag: i64,
    d_val: u64,
}

/// `R_X86_64_GLOB_DAT` and `R_X86_64_JUMP_SLOT` (the x86-64 psABI).
const R_X86_64_GLOB_DAT: u32 = 6;
const R_X86_64_JUMP_SLOT: u32 = 7;
const PT_GNU_RELRO: u32 = 0x6474_e552;

/// What a scan of every loaded object did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Redirected {
    /// Slots rewritten by this scan.
    pub slots: usize,
    /// Slots of a redirected name that held something unexpected, left alone.
    pub foreign: usize,
    /// A protection change failed (the object was left as it was from there on).
    pub failed: bool,
}

/// Entries of [`SCANNED`]: far more than the objects a process loads. When it is full, objects
/// are simply scanned again (redirection is idempotent).
const SCANNED_ENTRIES: usize = 4096;

/// The dynamic-section addresses of the objects scanned, open-addressed; 0 is empty.
static SCANNED: [AtomicUsize; SCANNED_ENTRIES] = [const { AtomicUsize::new(0) }; SCANNED_ENTRIES];

/// Whether the object with its dynamic section at `dynamic` was scanned; notes it as scanned
/// when `note`.
fn scanned(dynamic: usize, note: bool) -> bool {
    let start = (dynamic >> 3).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52;
    for probe in 0..SCANNED_ENTRIES {
        let entry = &SCANNED[(start + probe) % SCANNED_ENTRIES];
        match entry.load(Ordering::Acquire) {
            found if found == dynamic => return true,
            0 if !note => return false,
            0 => match entry.compare_exchange(0, dynamic, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return false,
                Err(found) if found == dynamic => return true,
                Err(_) => {}
            },
            _ => {}
        }
    }
    false
}

/// Forgets which objects were scanned: after a `dlclose`, a new object may be loaded where
/// a scanned one was.
pub fn forget_scanned() {
    for entry in &SCANNED {
        entry.store(0, Ordering::Release);
    }
}

/// Rewrites, in every loaded object `choose` accepts (given its path) other than the one
/// holding `skip_containing`, the import slots of the `redirects`' names. Slots already
/// redirected are skipped, so calling this again after more objects were loaded only
/// touches the new ones; an object scanned before is not looked at again.
pub fn redirect_imports(
    redirects: &[Redirect<'_>],
    skip_containing: usize,
    choose: &dyn Fn(&CStr) -> bool,
) -> Redirected {
    struct Scan<'r, 'n> {
        redirects: &'r [Redirect<'n>],
        skip_containing: usize,
        choose: &'r dyn Fn(&CStr) -> bool,
        result: Redirected,
    }
    extern "C" fn each(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> c_int {
        // SAFETY: `data` is the `Scan` passed below, alive for the call.
        let scan = unsafe { &mut *(data as *mut Scan) };
        // SAFETY: the loader passes a valid `dl_phdr_info` for the duration of the callback.
        let info = unsafe { &*info };
        if info.dlpi_phdr.is_null() || info.dlpi_name.is_null() {
            return 0;
        }
        // SAFETY: the loader's NUL-terminated name of the object.
        let name = unsafe { CStr::from_ptr(info.dlpi_name) };
        let bias = info.dlpi_addr as usize;
        if !(scan.choose)(name) {
            return 0;
        }
        // SAFETY: the loader's program header table for this object, `dlpi_phnum` entries.
        let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
        if contains(bias, headers, scan.skip_containing) {
            return 0;
        }
        let Some(dynamic) = headers.iter().find(|h| h.p_type == libc::PT_DYNAMIC) else {
            return 0;
        };
        let dynamic = bias.wrapping_add(dynamic.p_vaddr as usize);
        if scanned(dynamic, false) {
            return 0;
        }
        redirect_in_object(bias, headers, dynamic, scan.redirects, &mut scan.result);
        if !scan.result.failed {
            scanned(dynamic, true);
        }
        0
    }
    let mut scan = Scan {
        redirects,
        skip_containing,
        choose,
        result: Redirected::default(),
    };
    // SAFETY: the callback receives `scan` back as its data pointer, used only during the
    // call; it reads the objects' mapped tables and writes only their GOT slots.
    unsafe { libc::dl_iterate_phdr(Some(each), &mut scan as *mut Scan as *mut c_void) };
    scan.result
}

/// The dynamic-section entries a scan needs, as run-time addresses and sizes.
#[derive(Default)]
struct DynamicTables {
    symbols: usize,
    strings: usize,
    strings_size: usize,
    rela: usize,
    rela_size: usize,
    plt_rela: usize,
    plt_rela_size: usize,
}

fn redirect_in_object(
    bias: usize,
    headers: &[libc::Elf64_Phdr],
    dynamic: usize,
    redirects: &[Redirect<'_>],
    result: &mut Redirected,
) {
    let tables = dynamic_tables(bias, dynamic);
    if tables.symbols == 0 || tables.strings == 0 {
        return;
    }
    let relro = headers.iter().find(|h| h.p_type == PT_GNU_RELRO).map(|h| {
        let start = bias.wrapping_add(h.p_vaddr as usize);
        (start, start + h.p_memsz as usize)
    });
    let own = |address: usize| contains(bias, headers, address);
    for (table, size) in [(tables.rela, tables.rela_size), (tables.plt_rela, tables.plt_rela_size)] {
        if table == 0 || size == 0 {
            continue;
        }
        let count = size / std::mem::size_of::<Rela>();
        // SAFETY: DT_RELA/DT_JMPREL and their sizes describe arrays of Elf64_Rela inside the
        // object's mapped segments, kept mapped while the loader's lock is held.
        let relocations = unsafe { std::slice::from_raw_parts(table as *const Rela, count) };
        for relocation in relocations {
            let kind = (relocation.r_info & 0xffff_ffff) as u32;
            if kind != R_X86_64_JUMP_SLOT && kind != R_X86_64_GLOB_DAT {
                continue;
            }
            let Some(redirect) = symbol_name(&tables, (relocation.r_info >> 32) as usize)
                .and_then(|name| redirects.iter().find(|r| r.name.to_bytes() == name))
            else {
                continue;
            };
            let slot = bias.wrapping_add(relocation.r_offset as usize);
            if !writable_segment(bias, headers, slot) || !slot.is_multiple_of(8) {
                continue;
            }
            // SAFETY: the relocation's target is a GOT word inside the object's mapped
            // segments (checked just above).
            let current = unsafe { std::ptr::read_volatile(slot as *const usize) };
            if current == redirect.replacement {
                continue;
            }
            // A JUMP_SLOT not bound yet (lazy binding) points back into the object's PLT.
            if current != redirect.expected && !(kind == R_X86_64_JUMP_SLOT && own(current)) {
                result.foreign += 1;
                continue;
            }
            let read_only = relro.is_some_and(|(start, end)| {
                // glibc protects whole pages from the start page to the end rounded down.
                slot >= start & !(page_size() - 1) && slot < end & !(page_size() - 1)
            });
            if !write_slot(slot, redirect.replacement, read_only) {
                result.failed = true;
                return;
            }
            result.slots += 1;
        }
    }
}

/// Whether a PT_LOAD segment of the object holds `address`.
fn contains(bias: usize, headers: &[libc::Elf64_Phdr], address: usize) -> bool {
    headers.iter().any(|h| {
        let start = bias.wrapping_add(h.p_vaddr as usize);
        h.p_type == libc::PT_LOAD && address >= start && address - start < h.p_memsz as usize
    })
}

/// Whether a writable PT_LOAD segment of the object holds `address` (the GOT lies in one:
/// a slot anywhere else is left alone rather than written).
fn writable_segment(bias: usize, headers: &[libc::Elf64_Phdr], address: usize) -> bool {
    headers.iter().any(|h| {
        let start = bias.wrapping_add(h.p_vaddr as usize);
        h.p_type == libc::PT_LOAD
            && h.p_flags & libc::PF_W != 0
            && address >= start
            && address - start < h.p_memsz as usize
    })
}

fn dynamic_tables(bias: usize, dynamic: usize) -> DynamicTables {
    let mut tables = DynamicTables::default();
    // glibc rewrites these entries to run-time addresses in place; an object whose dynamic
    // section is read-only (the vDSO) keeps them relative to its bias.
    let address = |value: u64| {
        let value = value as usize;
        if value < bias {
            bias.wrapping_add(value)
        } else {
            value
        }
    };
    let mut entry = dynamic as *const Dyn;
    for _ in 0..4096 {
        // SAFETY: PT_DYNAMIC is an array of Elf64_Dyn inside the object's mapped segments,
        // ended by DT_NULL (and bounded here besides).
        let dyn_entry = unsafe { std::ptr::read(entry) };
        let value = dyn_entry.d_val;
        match dyn_entry.d_tag as u64 {
            0 => break, // DT_NULL
            5 => tables.strings = address(value),
            6 => tables.symbols = address(value),
            7 => tables.rela = address(value),
            8 => tables.rela_size = value as usize,
            10 => tables.strings_size = value as usize,
            23 => tables.plt_rela = address(value),
            2 => tables.plt_rela_size = value as usize,
            _ => {}
        }
        entry = entry.wrapping_add(1);
    }
    tables
}

/// The name of dynamic symbol `index`, as bytes without the NUL.
fn symbol_name(tables: &DynamicTables, index: usize) -> Option<&'static [u8]> {
    if index == 0 {
        return None;
    }
    let symbol = (tables.symbols as *const libc::Elf64_Sym).wrapping_add(index);
    // SAFETY: a relocation's symbol index names an entry of the object's dynamic symbol
    // table, mapped while the loader's lock is held.
    let name_offset = unsafe { std::ptr::read(symbol) }.st_name as usize;
    if tables.strings_size != 0 && name_offset >= tables.strings_size {
        return None;
    }
    // SAFETY: st_name is an offset into the dynamic string table (checked against its size),
    // which holds NUL-terminated names.
    let name = unsafe { CStr::from_ptr((tables.strings + name_offset) as *const libc::c_char) };
    Some(name.to_bytes())
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 {
        size as usize
    } else {
        4096
    }
}

/// Stores `value` in the GOT word at `slot`, unprotecting its page around the store when the
/// loader made it read-only. False when the protection could not be changed.
fn write_slot(slot: usize, value: usize, read_only: bool) -> bool {
    let page = slot & !(page_size() - 1);
    if read_only {
        // SAFETY: the page belongs to the object's RELRO segment, mapped; only its protection
        // changes, for the one store below.
        if unsafe { libc::mprotect(page as *mut c_void, page_size(), libc::PROT_READ | libc::PROT_WRITE) } != 0 {
            return false;
        }
    }
    // SAFETY: `slot` is an aligned GOT word of the object, writable now; one aligned store
    // is atomic for threads calling through it.
    unsafe { std::ptr::write_volatile(slot as *mut usize, value) };
    if read_only {
        // SAFETY: as above; the page goes back to the loader's read-only protection.
        unsafe { libc::mprotect(page as *mut c_void, page_size(), libc::PROT_READ) };
    }
    true
}
