//! Who is responsible for a leak: each native module gets a role (the C runtime, the
//! interpreter, libleak, a system library, or the program and its extensions), and a stack's
//! owner is its innermost frame outside the C runtime, the interpreter and libleak — the
//! extension (its .so) and function that asked for the memory — with the Python line that
//! called into it. The module's frames that only allocate for their caller (`Box::new`,
//! `std::vector`'s allocator, `CRYPTO_malloc`) pass the ownership on to it.
//!
//! A block whose stack has no frame of the program, an extension or another library was
//! allocated by the runtime itself (the interpreter's caches, the loader's thread-local
//! storage): left at exit by the runtime, it is not the user's leak. Python code alone cannot
//! lose memory; what it allocates through the interpreter and nobody frees is the
//! interpreter's leftover. Nor does a module's body, run at its import, allocate on behalf of
//! whoever imported it: frames outside a `<module>` frame own nothing inside it (an
//! extension whose module init imports numpy does not own numpy's docstrings, which numpy
//! keeps by a pointer into their middle; a program embedding Python does not own what its
//! script allocates).
//!
//! Must stay pure: decisions from paths and frames only.

use super::wrappers::allocates_for_caller;
use crate::model::{Frame, FrameKind, TraceHeader};
use crate::replay::is_libleak;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// libc, the dynamic loader, libm, libgcc, the C++ runtime.
    CRuntime,
    /// libpython, the python executable, the standard library's extension modules.
    Interpreter,
    Libleak,
    /// Other libraries installed with the system (libffi, libssl, libz, …).
    System,
    /// The program's executable, extension modules, and every other library.
    Program,
}

/// Base-name prefixes of the C and C++ runtime libraries.
const C_RUNTIME: &[&str] = &[
    "libc.so",
    "libc-",
    "ld-linux",
    "ld64.so",
    "ld.so",
    "libm.so",
    "libmvec.so",
    "libpthread.so",
    "libdl.so",
    "librt.so",
    "libutil.so",
    "libanl.so",
    "libresolv.so",
    "libnss_",
    "libgcc_s.so",
    "libstdc++.so",
    "libc++.so",
    "libc++abi.so",
    "libatomic.so",
    "libunwind.so",
];

const SYSTEM_DIRECTORIES: &[&str] = &["/lib/", "/lib64/", "/usr/lib/", "/usr/lib64/", "/usr/libexec/"];

/// What the roles are judged against: the process's executable, and whether it ran CPython.
#[derive(Clone, Debug)]
pub struct Roles {
    pub executable: String,
    pub python: bool,
}

impl Roles {
    /// The roles in the process `header` describes.
    pub fn of(header: &TraceHeader) -> Roles {
        Roles {
            executable: header.process.exe.clone(),
            python: header.python.is_some(),
        }
    }

    pub fn of_module(&self, path: &str) -> Role {
        let name = path.rsplit('/').next().unwrap_or(path);
        if is_libleak(path) {
            return Role::Libleak;
        }
        if C_RUNTIME.iter().any(|prefix| name.starts_with(prefix)) {
            return Role::CRuntime;
        }
        if name.starts_with("libpython") || path.contains("/lib-dynload/") || (self.python && path == self.executable) {
            return Role::Interpreter;
        }
        let in_packages = path.contains("/site-packages/") || path.contains("/dist-packages/");
        if !in_packages && path != self.executable && SYSTEM_DIRECTORIES.iter().any(|dir| path.starts_with(dir)) {
            return Role::System;
        }
        Role::Program
    }

    fn of_frame(&self, frame: &Frame) -> Option<Role> {
        match frame.kind {
            FrameKind::Native => Some(frame.module.as_deref().map_or(Role::Program, |m| self.of_module(m))),
            FrameKind::Python => None,
        }
    }

    /// The index of the owning frame in `frames` (innermost first): the first native frame
    /// outside the runtimes, the interpreter and libleak, inside any module body's frame.
    /// Within that frame's module, frames that only allocate for their caller (a language's
    /// standard library, a library's allocation wrapper) pass the ownership on to the
    /// module's code that called them.
    pub fn owner(&self, frames: &[Frame]) -> Option<usize> {
        let first = frames
            .iter()
            .take_while(|f| !is_module_body(f))
            .position(|f| matches!(self.of_frame(f), Some(Role::System | Role::Program)))?;
        let module = &frames[first].module;
        let caller = frames[first..]
            .iter()
            .take_while(|f| f.kind == FrameKind::Native && &f.module == module)
            .position(|f| !allocates_for_caller(f));
        Some(first + caller.unwrap_or(0))
    }

    /// The innermost Python frame outside the owner: the line that called into it.
    pub fn calling_python_line(&self, frames: &[Frame], owner: Option<usize>) -> Option<usize> {
        let from = owner.unwrap_or(0);
        frames[from..]
            .iter()
            .position(|f| f.kind == FrameKind::Python)
            .map(|i| i + from)
    }

    /// Whether only the runtime (C runtime, interpreter, libleak) allocated the block. A block
    /// recorded without a stack (allocated by a signal handler that interrupted the recording
    /// of another event) could be anyone's: it is not a leftover.
    pub fn is_runtime_leftover(&self, frames: &[Frame]) -> bool {
        !frames.is_empty() && self.owner(frames).is_none()
    }
}

/// A Python frame running a module's body from its file (at its import, or a script's).
/// Code compiled from a string (`PyRun_String`, `exec`, pybind11's `py::eval`) is named
/// `<module>` too, but its file is a pseudo-name such as `<string>`: what it returns to the
/// native code that ran it is that code's to release.
fn is_module_body(frame: &Frame) -> bool {
    frame.kind == FrameKind::Python
        && frame.function.as_deref() == Some("<module>")
        && frame.file.as_deref().is_some_and(|file| !file.starts_with('<'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_get_roles_by_path() {
        let roles = Roles {
            executable: "/usr/bin/python3.11".into(),
            python: true,
        };
        assert_eq!(roles.of_module("/lib/x86_64-linux-gnu/libc.so.6"), Role::CRuntime);
        assert_eq!(
            roles.of_module("/usr/lib/x86_64-linux-gnu/libstdc++.so.6"),
            Role::CRuntime
        );
        assert_eq!(roles.of_module("/usr/bin/python3.11"), Role::Interpreter);
        assert_eq!(
            roles.of_module("/usr/lib/python3.11/lib-dynload/_decimal.cpython-311-x86_64-linux-gnu.so"),
            Role::Interpreter
        );
        assert_eq!(roles.of_module("/opt/py/lib/libpython3.12.so.1.0"), Role::Interpreter);
        assert_eq!(roles.of_module("/usr/lib/x86_64-linux-gnu/libffi.so.8"), Role::System);
        assert_eq!(
            roles.of_module("/usr/lib/python3/dist-packages/numpy/core/_multiarray_umath.so"),
            Role::Program
        );
        assert_eq!(
            roles.of_module("/home/me/ext.cpython-311-x86_64-linux-gnu.so"),
            Role::Program
        );
        let native = Roles {
            executable: "/usr/bin/myprog".into(),
            python: false,
        };
        assert_eq!(native.of_module("/usr/bin/myprog"), Role::Program);
    }

    fn native(function: &str, module: &str) -> Frame {
        Frame::native_in(function, module)
    }

    fn python(function: &str) -> Frame {
        Frame {
            kind: FrameKind::Python,
            function: Some(function.into()),
            file: Some("/app/mod.py".into()),
            line: Some(3),
            module: None,
            inlined: false,
            address: None,
            build_id_mismatch: false,
        }
    }

    #[test]
    fn an_importer_owns_nothing_the_imported_modules_body_allocates() {
        let roles = Roles {
            executable: "/usr/bin/python3.12".into(),
            python: true,
        };
        let libpython = "/usr/lib/libpython3.12.so.1.0";
        let extension = "/venv/site-packages/pyarrow/lib.so";
        // numpy's docstrings, numpy imported by an extension's module init.
        let imported = [
            native("PyUnicode_New", libpython),
            python("cleandoc"),
            python("<module>"),
            native("PyImport_ImportModule", libpython),
            native("PyInit_lib", extension),
            python("<module>"),
        ];
        assert_eq!(roles.owner(&imported), None);
        assert!(roles.is_runtime_leftover(&imported));
        // An extension called from a module's body owns what it allocates.
        let called = [
            native("malloc", "/lib/x86_64-linux-gnu/libc.so.6"),
            native("leak", extension),
            python("<module>"),
        ];
        assert_eq!(roles.owner(&called), Some(1));
        // An extension calling back into Python owns what the callback gave it.
        let callback = [
            native("PyList_New", libpython),
            python("make"),
            native("PyObject_Call", libpython),
            native("call_back", extension),
            python("<module>"),
        ];
        assert_eq!(roles.owner(&callback), Some(3));
        // Code an extension compiled from a string and ran: what it made is the extension's.
        let evaluated = [
            native("PyList_New", libpython),
            Frame {
                file: Some("<string>".into()),
                ..python("<module>")
            },
            native("PyRun_StringFlags", libpython),
            native("evaluate", extension),
            python("<module>"),
        ];
        assert_eq!(roles.owner(&evaluated), Some(3));
    }

    #[test]
    fn a_modules_code_owns_what_its_language_library_allocated_for_it() {
        let roles = Roles {
            executable: "/usr/bin/python3.12".into(),
            python: true,
        };
        let extension = "/venv/site-packages/rleak.so";
        let boxed = Frame {
            file: Some("/rustc/abc/library/alloc/src/boxed.rs".into()),
            ..native("alloc::boxed::box_new_uninit", extension)
        };
        let leaked = [
            native("malloc", "/lib/x86_64-linux-gnu/libc.so.6"),
            boxed.clone(),
            native("rleak::make_record", extension),
            python("handle"),
        ];
        assert_eq!(roles.owner(&leaked), Some(2));
        // Ownership does not leave the module: a library frame called from another module
        // stays the owner, as does one with no caller of its own module.
        let crossing = [boxed.clone(), native("caller", "/venv/site-packages/other.so")];
        assert_eq!(roles.owner(&crossing), Some(0));
        let wrapper = [
            native("CRYPTO_malloc", "/usr/lib/libcrypto.so.3"),
            native("EVP_PKEY_new", "/usr/lib/libcrypto.so.3"),
            native("make_key", extension),
        ];
        assert_eq!(roles.owner(&wrapper), Some(1));
    }
}
