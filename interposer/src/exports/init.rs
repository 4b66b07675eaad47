//! The library's constructor: the one entry the loader calls by itself, which starts the
//! recorder. Everything the recorder registers later (fork, exit and thread-exit handlers,
//! the collector thread) goes through [`crate::sys::threads`], not through this layer.

/// Runs once the library is loaded, before the program's `main`. Not in the crate's own
/// unit-test binary: its hooks then pass every call through, so the tests neither trace
/// themselves nor leave trace files in the crate's directory.
extern "C" fn constructor() {
    if !cfg!(test) {
        crate::python::constructors::set_replacements(super::constructors::replacements());
        crate::recorder::start();
    }
}

#[used]
#[link_section = ".init_array"]
static CONSTRUCTOR: extern "C" fn() = constructor;
