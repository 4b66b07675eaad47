//! The real `dlsym` and `dlvsym`. libleak exports both (see `exports::symbols`), so any call
//! it makes to them by name, versioned or not, binds back to its own: the loader accepts an
//! unversioned definition for a versioned reference, and no other glibc 2.34+ symbol (public
//! or private) reaches the lookup. They are found here as `RTLD_NEXT` would find them, without
//! calling the loader: the first object loaded after libleak whose dynamic symbol table
//! defines the name (libc.so.6 on glibc 2.34 and later, libdl.so.2 before), read from its
//! file mapped read-only, its default version preferred; if no object after libleak defines
//! it (libleak was itself `dlopen`ed), the first other object that does.
//!
//! Must never allocate (the real allocator may itself be being looked up, through these),
//! call `dlsym`, or keep the file mapped or open after the lookup.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

const UNRESOLVED: u8 = 0;
const RESOLVING: u8 = 1;
const DONE: u8 = 2;

static STATE: AtomicU8 = AtomicU8::new(UNRESOLVED);
static DLSYM: AtomicUsize = AtomicUsize::new(0);
static DLVSYM: AtomicUsize = AtomicUsize::new(0);

/// The addresses of the real `dlsym` and `dlvsym` (0 where not found), looking them up on
/// first use. None while another thread is looking them up.
pub fn real_dl() -> Option<(usize, usize)> {
    if STATE.load(Ordering::Acquire) != DONE {
        if STATE
            .compare_exchange(UNRESOLVED, RESOLVING, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return (STATE.load(Ordering::Acquire) == DONE)
                .then(|| (DLSYM.load(Ordering::Acquire), DLVSYM.load(Ordering::Acquire)));
        }
        let mut found = find_other(&[b"dlsym", b"dlvsym"], false);
        if found.contains(&0) {
            found = find_other(&[b"dlsym", b"dlvsym"], true);
        }
        DLSYM.store(found[0], Ordering::Release);
        DLVSYM.store(found[1], Ordering::Release);
        STATE.store(DONE, Ordering::Release);
    }
    Some((DLSYM.load(Ordering::Acquire), DLVSYM.load(Ordering::Acquire)))
}

/// The absolute address of each name in the first object after ours (with `anywhere`, the
/// first object but ours) that defines it; 0 where none does.
fn find_other<const N: usize>(names: &[&[u8]; N], anywhere: bool) -> [usize; N] {
    struct Walk<'a, const N: usize> {
        own: usize,
        past_own: bool,
        names: &'a [&'a [u8]; N],
        found: [usize; N],
    }
    extern "C" fn each<const N: usize>(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> c_int {
        // SAFETY: the loader passes a valid info (its name and program headers live while the
        // callback runs); `data` is the `&mut Walk` given below.
        let (walk, info) = unsafe { (&mut *(data as *mut Walk<N>), &*info) };
        // SAFETY: as above, `dlpi_phdr` holds `dlpi_phnum` headers.
        let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
        let contains_own = headers.iter().any(|h| {
            let start = info.dlpi_addr.wrapping_add(h.p_vaddr) as usize;
            h.p_type == libc::PT_LOAD && (start..start.wrapping_add(h.p_memsz as usize)).contains(&walk.own)
        });
        if contains_own {
            walk.past_own = true;
            return 0;
        }
        if !walk.past_own || info.dlpi_name.is_null() {
            return 0;
        }
        // SAFETY: a non-null loader name is a NUL-terminated path.
        let path = unsafe { CStr::from_ptr(info.dlpi_name) };
        with_mapped_file(path, &mut |file| {
            for (slot, name) in walk.found.iter_mut().zip(walk.names) {
                if *slot == 0 {
                    // Only an address in the object's mapped code: the file on disk may have
                    // been replaced since it was loaded.
                    let in_code = |value: u64| {
                        headers.iter().any(|h| {
                            h.p_type == libc::PT_LOAD
                                && h.p_flags & libc::PF_X != 0
                                && (h.p_vaddr..h.p_vaddr.saturating_add(h.p_memsz)).contains(&value)
                        })
                    };
                    if let Some(value) = defined_symbol(file, name).filter(|&v| in_code(v)) {
                        *slot = (info.dlpi_addr as usize).wrapping_add(value as usize);
                    }
                }
            }
        });
        c_int::from(walk.found.iter().all(|&f| f != 0))
    }
    let mut walk = Walk {
        own: find_other::<N> as *const () as usize,
        past_own: anywhere,
        names,
        found: [0; N],
    };
    // SAFETY: the callback only reads the info and writes through the pointer we pass.
    unsafe { libc::dl_iterate_phdr(Some(each::<N>), &mut walk as *mut Walk<N> as *mut c_void) };
    walk.found
}

/// Maps `path` read-only for the duration of `visit`; nothing happens if it cannot be opened.
fn with_mapped_file(path: &CStr, visit: &mut dyn FnMut(&[u8])) {
    // SAFETY: a NUL-terminated path; a descriptor of our own, closed below.
    let fd = unsafe { libc::open(path.as_ptr() as *const c_char, libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return;
    }
    let mut stat = std::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstat writes into the struct we own.
    let size = if unsafe { libc::fstat(fd, stat.as_mut_ptr()) } == 0 {
        // SAFETY: fstat succeeded and filled it.
        unsafe { stat.assume_init() }.st_size as usize
    } else {
        0
    };
    // SAFETY: a fresh private read-only mapping of the whole file; nothing else refers to it.
    let start = unsafe { libc::mmap(std::ptr::null_mut(), size, libc::PROT_READ, libc::MAP_PRIVATE, fd, 0) };
    // SAFETY: closing the descriptor opened above (the mapping stays valid).
    unsafe { libc::close(fd) };
    if size == 0 || start == libc::MAP_FAILED {
        return;
    }
    // SAFETY: `size` readable bytes are mapped at `start` until the munmap below. A file
    // truncated meanwhile would fault, as it would for the loader itself.
    visit(unsafe { std::slice::from_raw_parts(start as *const u8, size) });
    // SAFETY: unmapping the mapping made above, no longer referred to.
    unsafe { libc::munmap(start, size) };
}

fn u16_at(bytes: &[u8], at: usize) -> Option<usize> {
    Some(u16::from_le_bytes(bytes.get(at..at.checked_add(2)?)?.try_into().ok()?).into())
}
fn u32_at(bytes: &[u8], at: usize) -> Option<usize> {
    Some(u32::from_le_bytes(bytes.get(at..at.checked_add(4)?)?.try_into().ok()?) as usize)
}
fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at.checked_add(8)?)?.try_into().ok()?))
}

const SHT_DYNSYM: usize = 11;
const SHT_GNU_VERSYM: usize = 0x6fff_ffff;
const STT_FUNC: u8 = 2;
const VERSYM_HIDDEN: usize = 0x8000;
const SYM_BYTES: usize = 24;

/// The value of the function `name` defined in the dynamic symbol table of the ELF64 file
/// `file`, at its default version when it has several; None if it has none or is not ELF64.
fn defined_symbol(file: &[u8], name: &[u8]) -> Option<u64> {
    if file.get(..5)? != b"\x7fELF\x02" {
        return None;
    }
    let section_offset = u64_at(file, 0x28)? as usize;
    let section_size = u16_at(file, 0x3a)?;
    let sections = u16_at(file, 0x3c)?;
    // (type, offset, size, link) of section `index`.
    let section = |index: usize| {
        let at = section_offset.checked_add(index.checked_mul(section_size)?)?;
        Some((
            u32_at(file, at.wrapping_add(4))?,
            u64_at(file, at.wrapping_add(0x18))? as usize,
            u64_at(file, at.wrapping_add(0x20))? as usize,
            u32_at(file, at.wrapping_add(0x28))?,
        ))
    };
    let find = |wanted: usize| (0..sections).find_map(|i| section(i).filter(|s| s.0 == wanted));
    let (_, symbols_at, symbols_size, strings_index) = find(SHT_DYNSYM)?;
    let (_, strings_at, strings_size, _) = section(strings_index)?;
    let strings = file.get(strings_at..strings_at.checked_add(strings_size)?)?;
    let versions = find(SHT_GNU_VERSYM).map(|(_, at, _, _)| at);
    let mut fallback = None;
    for index in 0..symbols_size / SYM_BYTES {
        let at = symbols_at.wrapping_add(index * SYM_BYTES);
        let (name_at, info, section_index) = (
            u32_at(file, at)?,
            *file.get(at.wrapping_add(4))?,
            u16_at(file, at.wrapping_add(6))?,
        );
        if info & 0xf != STT_FUNC || section_index == 0 {
            continue;
        }
        let symbol_name = strings.get(name_at..)?.split(|&b| b == 0).next()?;
        if symbol_name != name {
            continue;
        }
        let value = u64_at(file, at.wrapping_add(8))?;
        let hidden = versions
            .and_then(|v| u16_at(file, v.wrapping_add(2 * index)))
            .is_some_and(|v| v & VERSYM_HIDDEN != 0);
        if !hidden {
            return Some(value);
        }
        fallback.get_or_insert(value);
    }
    fallback
}

#[cfg(test)]
mod tests {
    use super::*;

    fn libc_file() -> Vec<u8> {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
        let path = maps
            .lines()
            .filter_map(|line| line.split_whitespace().nth(5))
            .find(|path| path.contains("/libc.so"))
            .expect("libc is mapped");
        std::fs::read(path).expect("read libc")
    }

    #[test]
    fn finds_the_real_lookup_functions() {
        let libc = libc_file();
        assert!(defined_symbol(&libc, b"dlsym").is_some());
        assert!(defined_symbol(&libc, b"dlvsym").is_some());
        assert_eq!(defined_symbol(&libc, b"no_such_function"), None);
        let (dlsym, dlvsym) = real_dl().expect("looked up");
        assert!(dlsym != 0 && dlvsym != 0 && dlsym != dlvsym);
    }

    #[test]
    fn never_panics_on_a_cut_or_foreign_file() {
        let libc = libc_file();
        for cut in [0, 4, 5, 0x3e, 0x40, 4096, libc.len() / 2, libc.len() - 1] {
            let _ = defined_symbol(&libc[..cut], b"dlsym");
        }
        assert_eq!(defined_symbol(b"#!/bin/sh\n", b"dlsym"), None);
    }
}
