//! `exec`: the program image is about to be replaced, so the trace ends first, unless the
//! exec would fail anyway. Python's `os.execvp` tries each `PATH` entry in turn, and a
//! failed attempt must leave recording on.
//!
//! Must never change anything in a vfork child (it shares our memory).

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStringExt;

use libleak_format::ExitKind;

use super::finish::finish;
use super::state;
use super::thread::as_own_work;
use crate::sys;

/// The program an `exec` is about to run.
pub enum ExecTarget<'a> {
    Path(&'a CStr),
    /// A name without a slash, looked up along `PATH` (execvp).
    SearchPath(&'a CStr),
    /// A file descriptor (fexecve): assumed to succeed.
    Unknown,
}

/// Called just before an `exec`: ends the trace if the exec will run.
pub fn before_exec(target: ExecTarget) {
    if !state::in_recorded_process() {
        return; // a vfork child: it shares our memory and must change nothing
    }
    if as_own_work(|| will_run(target)) {
        finish(ExitKind::Exec, None);
    }
}

fn will_run(target: ExecTarget) -> bool {
    match target {
        ExecTarget::Path(path) => sys::is_executable(path),
        ExecTarget::SearchPath(name) => {
            // The program's PATH as of this call, which it may have changed since start-up.
            let search = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
            std::env::split_paths(&search).any(|dir| {
                let mut candidate = dir.into_os_string().into_vec();
                candidate.push(b'/');
                candidate.extend_from_slice(name.to_bytes());
                CString::new(candidate).is_ok_and(|path| sys::is_executable(&path))
            })
        }
        ExecTarget::Unknown => true,
    }
}
