//! The dynamic loader's view of the process: every loaded object with its segments and
//! build-id, the loader's generation counters, and the unwind tables of the object holding a
//! code address, found under the loader's lock. Raw reads only: parsing DWARF is the
//! unwinder's job ([`crate::unwind`] is above this layer and hands nothing down).
//!
//! Must never hold on to an object's memory after the loader's lock is released (a `dlclose`
//! may unmap it).

use std::ffi::{c_int, c_void, CStr};

use libleak_format::{Module, Segment};

/// The load generation counters of the dynamic loader (objects added, removed).
pub fn loader_generation() -> (u64, u64) {
    extern "C" fn first(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> c_int {
        // SAFETY: the loader passes a valid info for the duration of the call; `data` is the
        // `&mut (u64, u64)` given below.
        unsafe {
            let out = &mut *(data as *mut (u64, u64));
            *out = ((*info).dlpi_adds, (*info).dlpi_subs);
        }
        1
    }
    let mut generation = (0u64, 0u64);
    // SAFETY: the callback only reads the info and writes through the pointer we pass.
    unsafe { libc::dl_iterate_phdr(Some(first), &mut generation as *mut (u64, u64) as *mut c_void) };
    generation
}

/// Every loaded object with its load bias, PT_LOAD segments and GNU build-id. Module ids
/// are left 0 for the caller to assign. The main program (empty loader name) is given the
/// path `main_exe`.
pub fn loaded_modules(main_exe: &str) -> Vec<Module> {
    struct Scan<'a> {
        main_exe: &'a str,
        modules: Vec<Module>,
    }
    extern "C" fn each(info: *mut libc::dl_phdr_info, _size: usize, data: *mut c_void) -> c_int {
        // SAFETY: the loader passes a valid info whose dlpi_phdr array has dlpi_phnum entries
        // and whose segments are mapped while the callback runs; `data` is `&mut Scan`.
        unsafe {
            let scan = &mut *(data as *mut Scan);
            let info = &*info;
            let name = if info.dlpi_name.is_null() {
                c""
            } else {
                CStr::from_ptr(info.dlpi_name)
            };
            let path = match name.to_bytes() {
                b"" => scan.main_exe.to_string(),
                bytes => String::from_utf8_lossy(bytes).into_owned(),
            };
            let headers = std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum));
            let mut module = Module {
                path,
                bias: info.dlpi_addr,
                ..Module::default()
            };
            for header in headers {
                match header.p_type {
                    libc::PT_LOAD => module.segments.push(Segment {
                        vaddr: header.p_vaddr,
                        memsz: header.p_memsz,
                        flags: header.p_flags,
                    }),
                    libc::PT_NOTE if module.build_id.is_empty() => {
                        let start = info.dlpi_addr.wrapping_add(header.p_vaddr) as *const u8;
                        let notes = std::slice::from_raw_parts(start, header.p_memsz as usize);
                        module.build_id = gnu_build_id(notes).unwrap_or_default();
                    }
                    _ => {}
                }
            }
            if !module.segments.is_empty() {
                scan.modules.push(module);
            }
        }
        0
    }
    let mut scan = Scan {
        main_exe,
        modules: Vec::new(),
    };
    // SAFETY: the callback only reads loader data and pushes to the Scan we pass.
    unsafe { libc::dl_iterate_phdr(Some(each), &mut scan as *mut Scan as *mut c_void) };
    scan.modules
}

/// Finds the NT_GNU_BUILD_ID descriptor in a PT_NOTE segment's bytes.
fn gnu_build_id(mut notes: &[u8]) -> Option<Vec<u8>> {
    let word = |b: &[u8], at: usize| -> Option<usize> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?) as usize)
    };
    while notes.len() >= 12 {
        let (name_len, desc_len, kind) = (word(notes, 0)?, word(notes, 4)?, word(notes, 8)?);
        let name_end = 12 + name_len.next_multiple_of(4);
        let desc_end = name_end.checked_add(desc_len.next_multiple_of(4))?;
        if desc_end > notes.len() {
            return None;
        }
        if kind == 3 && notes.get(12..12 + name_len)? == b"GNU\0" {
            return Some(notes[name_end..name_end + desc_len].to_vec());
        }
        notes = &notes[desc_end..];
    }
    None
}

/// A loaded object as the loader describes it while its lock is held: its load bias and
/// program headers, and the bytes of its mapped segments.
pub struct LoadedObject<'a> {
    bias: usize,
    headers: &'a [libc::Elf64_Phdr],
}

impl<'a> LoadedObject<'a> {
    /// The PT_LOAD segment holding `address`, as (start, length) in memory.
    pub fn segment_containing(&self, address: usize) -> Option<(usize, usize)> {
        self.headers.iter().find_map(|h| {
            let start = self.bias.wrapping_add(h.p_vaddr as usize);
            let len = h.p_memsz as usize;
            (h.p_type == libc::PT_LOAD && address >= start && address - start < len).then_some((start, len))
        })
    }

    /// The `.eh_frame_hdr` section (the PT_GNU_EH_FRAME segment) and its address.
    pub fn eh_frame_hdr(&self) -> Option<(&'a [u8], usize)> {
        let header = self.headers.iter().find(|h| h.p_type == libc::PT_GNU_EH_FRAME)?;
        let address = self.bias.wrapping_add(header.p_vaddr as usize);
        let (start, len) = self.segment_containing(address)?;
        let size = (header.p_memsz as usize).min(start + len - address);
        // SAFETY: the bytes lie inside a PT_LOAD segment of an object the loader keeps mapped
        // while its lock is held, which outlives `'a` (the visitor's borrow).
        Some((
            unsafe { std::slice::from_raw_parts(address as *const u8, size) },
            address,
        ))
    }

    /// The bytes from `address` to the end of the PT_LOAD segment holding it.
    pub fn bytes_to_segment_end(&self, address: usize) -> Option<&'a [u8]> {
        let (start, len) = self.segment_containing(address)?;
        // SAFETY: as in `eh_frame_hdr`: mapped and readable while the loader's lock is held.
        Some(unsafe { std::slice::from_raw_parts(address as *const u8, start + len - address) })
    }
}

/// Calls `visit` with the loaded object whose segments hold `address` (None when none does).
/// Runs under the loader's lock, so the object stays mapped while `visit` runs; `visit` must
/// not call into the loader.
pub fn with_object_containing(address: usize, visit: &mut dyn FnMut(Option<&LoadedObject<'_>>)) {
    struct Search<'f> {
        address: usize,
        visit: &'f mut dyn FnMut(Option<&LoadedObject<'_>>),
        found: bool,
    }
    extern "C" fn each(info: *mut libc::dl_phdr_info, _size: libc::size_t, data: *mut c_void) -> c_int {
        // SAFETY: `data` is the `Search` passed below, alive for the call.
        let search = unsafe { &mut *(data as *mut Search) };
        // SAFETY: the loader passes a valid `dl_phdr_info` for the duration of the callback.
        let info = unsafe { &*info };
        if info.dlpi_phdr.is_null() {
            return 0;
        }
        // SAFETY: the loader's program header table for this object, `dlpi_phnum` entries.
        let headers = unsafe { std::slice::from_raw_parts(info.dlpi_phdr, usize::from(info.dlpi_phnum)) };
        let object = LoadedObject {
            bias: info.dlpi_addr as usize,
            headers,
        };
        if object.segment_containing(search.address).is_none() {
            return 0;
        }
        search.found = true;
        (search.visit)(Some(&object));
        1
    }
    let mut search = Search {
        address,
        visit,
        found: false,
    };
    // SAFETY: the callback receives `search` back as its data pointer, used only during the
    // call.
    unsafe { libc::dl_iterate_phdr(Some(each), &mut search as *mut Search as *mut c_void) };
    if !search.found {
        (search.visit)(None);
    }
}
