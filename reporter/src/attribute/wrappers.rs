//! Frames that allocate on behalf of their caller in the same module: a language's standard
//! library compiled into it (Rust's `alloc`, `core` and `std`; libstdc++'s and libc++'s
//! templates, inlined into the code that uses them; Cython's utility code), and the
//! allocation wrappers of widely used libraries (OpenSSL's `CRYPTO_malloc`, GLib's
//! `g_malloc`, …). A leak's owner is the module's code that called them: `Box::new` at `boxed.rs:248` or `new_allocator.h:137` is
//! where every leak of a Rust or C++ extension would otherwise be owned.
//!
//! Must stay pure: decisions from a frame's function and file only.

use crate::model::{Frame, FrameKind};

/// Source directories of languages' standard libraries, as debug information names them.
const LIBRARY_SOURCES: &[&str] = &[
    // Rust's standard library, as the official toolchains build it (`/rustc/<commit>/library/…`)
    // and as the rust-src component installs it.
    "/library/alloc/",
    "/library/core/",
    "/library/std/",
    // Crates the standard library is built with (hashbrown behind `HashMap`).
    "/rust/deps/",
    // libstdc++'s and libc++'s headers (`/usr/include/c++/12/bits/…`, `…/c++/v1/…`).
    "/include/c++/",
];

/// Name prefixes of the same libraries' functions, for modules with symbols but no lines.
const LIBRARY_FUNCTIONS: &[&str] = &[
    "alloc::",
    "core::",
    "std::",
    "<alloc::",
    "<core::",
    "<std::",
    "__rust_",
    "__rdl_",
    "__rg_",
    "__gnu_cxx::",
    "operator new",
    // Cython's utility code, generated into every Cython module (`__Pyx_AddTraceback` makes
    // the frame and traceback objects of an exception the module's function raised).
    "__Pyx_",
];

/// Functions of widely used libraries that only allocate for their caller.
const ALLOCATION_WRAPPERS: &[&str] = &[
    // OpenSSL
    "CRYPTO_malloc",
    "CRYPTO_zalloc",
    "CRYPTO_realloc",
    "CRYPTO_clear_realloc",
    "CRYPTO_strdup",
    "CRYPTO_strndup",
    "CRYPTO_memdup",
    // GLib
    "g_malloc",
    "g_malloc0",
    "g_malloc_n",
    "g_malloc0_n",
    "g_realloc",
    "g_realloc_n",
    "g_try_malloc",
    "g_try_malloc0",
    "g_try_realloc",
    // zlib, libpng
    "zcalloc",
    "png_malloc",
    "png_malloc_base",
    "png_calloc",
    // SQLite
    "sqlite3MemMalloc",
    "sqlite3MemRealloc",
    "sqlite3Malloc",
    "sqlite3MallocZero",
    "sqlite3Realloc",
    "sqlite3DbMallocRaw",
    "sqlite3DbMallocRawNN",
    "sqlite3DbMallocZero",
    "sqlite3DbRealloc",
    "mallocWithAlarm",
    // NumPy's data allocator
    "PyDataMem_UserNEW",
    "PyDataMem_UserNEW_ZEROED",
    "PyDataMem_UserRENEW",
    "default_malloc",
    "default_calloc",
    "default_realloc",
    "npy_alloc_cache",
    "npy_alloc_cache_zero",
    "_npy_alloc_cache",
];

/// Whether `frame` allocates for its caller in the same module.
pub fn allocates_for_caller(frame: &Frame) -> bool {
    if frame.kind != FrameKind::Native {
        return false;
    }
    let function = frame.function.as_deref().unwrap_or("");
    if let Some(file) = frame.file.as_deref() {
        if LIBRARY_SOURCES.iter().any(|dir| file.contains(dir)) {
            return true;
        }
    }
    LIBRARY_FUNCTIONS.iter().any(|prefix| function.starts_with(prefix)) || ALLOCATION_WRAPPERS.contains(&function)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(function: &str, file: Option<&str>) -> Frame {
        Frame {
            file: file.map(Into::into),
            ..Frame::native_in(function, "/venv/site-packages/ext.so")
        }
    }

    #[test]
    fn language_libraries_and_wrappers_allocate_for_their_callers() {
        let rust = "/rustc/5980761/library/alloc/src/boxed.rs";
        assert!(allocates_for_caller(&at("alloc::boxed::box_new_uninit", Some(rust))));
        assert!(allocates_for_caller(&at(
            "std::__new_allocator<int>::allocate(unsigned long, void const*)",
            Some("/usr/include/c++/12/bits/new_allocator.h")
        )));
        assert!(allocates_for_caller(&at(
            "<alloc::vec::Vec<T> as core::clone::Clone>::clone",
            None
        )));
        assert!(allocates_for_caller(&at("__rdl_alloc", None)));
        assert!(allocates_for_caller(&at("operator new(unsigned long)", None)));
        assert!(allocates_for_caller(&at("CRYPTO_zalloc", Some("crypto/mem.c"))));
        assert!(allocates_for_caller(&at("__Pyx_AddTraceback", Some("_cmsgpack.cpp"))));
        assert!(!allocates_for_caller(&at(
            "__pyx_f_7msgpack_9_cmsgpack_8Unpacker__unpack",
            Some("_cmsgpack.cpp")
        )));
        assert!(!allocates_for_caller(&at(
            "rleak::make_record",
            Some("/src/rleak/src/lib.rs")
        )));
        assert!(!allocates_for_caller(&at("open_session", Some("/src/session.cpp"))));
        assert!(!allocates_for_caller(&at("stdio_like_name", None)));
        assert!(!allocates_for_caller(&at("g_malloc_wrapper_of_mine", None)));
    }
}
