//! Where a Python object is born. CPython keeps free lists (lists, dicts, floats, tuples):
//! a dropped object is kept without `free`, and the next constructor call hands the same
//! memory out without `malloc`, so the hooks alone would credit the object to whoever first
//! allocated that memory. The constructors C extensions call most are therefore redirected,
//! in each extension loaded, to libleak's replacements (`crate::exports`), which call the
//! real constructor and record an object that came off a free list as born again there.
//!
//! This file knows which constructors are watched, where their objects' blocks start, and
//! which loaded objects are extensions; it keeps the real constructors. Only extensions are
//! redirected: never the executable, libpython, the C library, the loader or libleak, whose
//! own calls stay direct (the interpreter's internal use of its free lists is not an
//! extension's doing).
//!
//! A redirected extension that compares a constructor's address with one found another way
//! (`dlsym`) sees them differ; no extension is known to do so.
//!
//! Must never redirect before the real constructor is known, nor read an object the
//! constructor did not just return.

use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::layouts::GC_HEADER_SIZE;
use crate::sys::imports::{self, Redirect};
use crate::sys::python_raw;

/// A watched constructor. Every one of them returns a new reference to an object whose type
/// has a free list in CPython 3.9–3.13 (`Objects/listobject.c`, `dictobject.c`,
/// `floatobject.c`, `tupleobject.c`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Constructor {
    ListNew = 0,
    DictNew = 1,
    FloatFromDouble = 2,
    TupleNew = 3,
    /// Variadic: its replacement builds the tuple as `PyTuple_Pack` does, from `PyTuple_New`
    /// (see [`tuple_filling`]).
    TuplePack = 4,
}

pub const CONSTRUCTORS: usize = 5;

impl Constructor {
    pub const ALL: [Constructor; CONSTRUCTORS] = [
        Constructor::ListNew,
        Constructor::DictNew,
        Constructor::FloatFromDouble,
        Constructor::TupleNew,
        Constructor::TuplePack,
    ];

    pub fn symbol(self) -> &'static CStr {
        match self {
            Constructor::ListNew => c"PyList_New",
            Constructor::DictNew => c"PyDict_New",
            Constructor::FloatFromDouble => c"PyFloat_FromDouble",
            Constructor::TupleNew => c"PyTuple_New",
            Constructor::TuplePack => c"PyTuple_Pack",
        }
    }

    /// Which of CPython's array free lists this constructor takes from, as
    /// [`super::free_lists::stale_slots`] numbers them: lists' and dicts' (3.9–3.13); tuples
    /// and floats are linked through their dead objects.
    pub fn free_list_array(self) -> Option<usize> {
        match self {
            Constructor::ListNew => Some(0),
            Constructor::DictNew => Some(1),
            Constructor::FloatFromDouble | Constructor::TupleNew | Constructor::TuplePack => None,
        }
    }

    /// Bytes from the start of the object's block to the object: the GC header for the
    /// garbage-collected types (none of which has a pre-header in any supported version).
    pub fn header_bytes(self) -> usize {
        match self {
            Constructor::FloatFromDouble => 0,
            Constructor::ListNew | Constructor::DictNew | Constructor::TupleNew | Constructor::TuplePack => {
                GC_HEADER_SIZE as usize
            }
        }
    }
}

/// The real constructors, found by name; 0 until known.
static REAL: [AtomicUsize; CONSTRUCTORS] = [const { AtomicUsize::new(0) }; CONSTRUCTORS];
/// libleak's replacements, given by the exports layer at start-up; 0 when not given.
static REPLACEMENTS: [AtomicUsize; CONSTRUCTORS] = [const { AtomicUsize::new(0) }; CONSTRUCTORS];
/// Redirection failed once (said on stderr): never tried again.
static GAVE_UP: AtomicBool = AtomicBool::new(false);
/// `Py_IncRef` and `PyTuple_SetItem`, with which `PyTuple_Pack`'s replacement fills the
/// tuple `PyTuple_New` made; 0 until known.
static TUPLE_FILLING: [AtomicUsize; 2] = [const { AtomicUsize::new(0) }; 2];

/// `Py_IncRef` and `PyTuple_SetItem` (non-zero once a slot was redirected to `PyTuple_Pack`'s
/// replacement). `PyTuple_Pack(n, ...)` is, in CPython 3.9–3.13, a new tuple of `n` items
/// each given a new reference; a variadic function cannot pass its arguments on in stable
/// Rust, so the replacement makes it so itself, through the public API.
#[inline(always)]
pub fn tuple_filling() -> (usize, usize) {
    (
        TUPLE_FILLING[0].load(Ordering::Acquire),
        TUPLE_FILLING[1].load(Ordering::Acquire),
    )
}

/// The real constructor a replacement calls (non-zero once any slot was redirected to it).
#[inline(always)]
pub fn real(constructor: Constructor) -> usize {
    REAL[constructor as usize].load(Ordering::Acquire)
}

/// Sets the replacement functions, in [`Constructor::ALL`]'s order.
pub fn set_replacements(replacements: [usize; CONSTRUCTORS]) {
    for (slot, address) in REPLACEMENTS.iter().zip(replacements) {
        slot.store(address, Ordering::Release);
    }
}

/// Whether `object`, just returned by a watched constructor, is a new object of its own
/// (one reference, the caller's) rather than a shared one (an immortal or cached singleton,
/// such as the empty tuple).
#[inline(always)]
pub fn is_new_object(object: usize) -> bool {
    python_raw::new_object_refcount(object) == 1
}

/// Redirects the watched constructors in every extension loaded that was not redirected
/// yet, once an interpreter with a supported layout was found whose objects are malloc
/// blocks; the object holding
/// `own_address` (libleak) is left alone. Returns a message to show once when redirection
/// failed (the extensions' objects then keep the owner of their memory's first allocation).
pub fn redirect_in_extensions(own_address: usize) -> Option<&'static str> {
    let interpreter = super::interpreter()?;
    // Objects in pymalloc's arenas (`LIBLEAK_PYTHONMALLOC=keep`, `python -I`) are no blocks
    // of their own: a rebirth would find none, after paying for its stack.
    if GAVE_UP.load(Ordering::Relaxed) || !interpreter.symbols.objects_use_raw_allocator() {
        return None;
    }
    let mut redirects: [Option<Redirect<'static>>; CONSTRUCTORS] = [const { None }; CONSTRUCTORS];
    for constructor in Constructor::ALL {
        let index = constructor as usize;
        let replacement = REPLACEMENTS[index].load(Ordering::Acquire);
        let mut expected = REAL[index].load(Ordering::Acquire);
        if expected == 0 {
            expected = python_raw::function_address(constructor.symbol());
            REAL[index].store(expected, Ordering::Release);
        }
        if constructor == Constructor::TuplePack && !knows_tuple_filling() {
            continue;
        }
        if replacement != 0 && expected != 0 {
            redirects[index] = Some(Redirect {
                name: constructor.symbol(),
                replacement,
                expected,
            });
        }
    }
    let redirects: Vec<Redirect<'static>> = redirects.into_iter().flatten().collect();
    if redirects.is_empty() {
        return None;
    }
    let result = imports::redirect_imports(&redirects, own_address, &is_extension);
    if result.failed {
        GAVE_UP.store(true, Ordering::Relaxed);
        return Some(
            "cannot redirect an extension's object constructors; objects reused from CPython's free lists keep their first owner",
        );
    }
    None
}

/// Whether `PyTuple_Pack`'s replacement has all it calls: `PyTuple_New` (found before it in
/// [`Constructor::ALL`]), `Py_IncRef` and `PyTuple_SetItem`.
fn knows_tuple_filling() -> bool {
    for (slot, name) in TUPLE_FILLING.iter().zip([c"Py_IncRef", c"PyTuple_SetItem"]) {
        if slot.load(Ordering::Acquire) == 0 {
            slot.store(python_raw::function_address(name), Ordering::Release);
        }
    }
    real(Constructor::TupleNew) != 0 && tuple_filling().0 != 0 && tuple_filling().1 != 0
}

/// An object may have been unloaded (`dlclose`): objects are looked at again at the next
/// redirection, so that one loaded where it was is not taken for it.
pub fn forget_redirected() {
    imports::forget_scanned();
}

/// Whether the loaded object named `path` may be an extension: not the executable (empty
/// name), libpython, the C library or the dynamic loader.
fn is_extension(path: &CStr) -> bool {
    let path = path.to_bytes();
    let file = path.rsplit(|&b| b == b'/').next().unwrap_or(path);
    !(file.is_empty()
        || file.starts_with(b"libpython")
        || file.starts_with(b"libc.so")
        || file.starts_with(b"ld-linux")
        || file.starts_with(b"linux-vdso"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_extensions_are_redirected() {
        for path in [
            "/tmp/x/births.cpython-311-x86_64-linux-gnu.so",
            "/usr/lib/python3/dist-packages/numpy/core/_multiarray_umath.so",
            "libfoo.so",
        ] {
            assert!(is_extension(&std::ffi::CString::new(path).unwrap()), "{path}");
        }
        for path in [
            "",
            "/root/.pyenv/versions/3.12.1/lib/libpython3.12.so.1.0",
            "/lib/x86_64-linux-gnu/libc.so.6",
            "/lib64/ld-linux-x86-64.so.2",
            "linux-vdso.so.1",
        ] {
            assert!(!is_extension(&std::ffi::CString::new(path).unwrap()), "{path}");
        }
    }
}
