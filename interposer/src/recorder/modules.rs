//! `dlopen` and `dlclose` returned: the module list is snapshot in the caller's thread (so a
//! library dlclosed soon after is still described in the trace), unwind rules cached for an
//! unloaded object are dropped, an interpreter loaded late is looked for, and the object
//! constructors of newly loaded Python extensions are redirected (before the extension's
//! initialisation function runs).
//!
//! Must never run inside another hook or in libleak's own work.

use super::channel::{self, offer};
use super::startup::detect_python;
use super::state;
use super::thread::{as_own_work, is_outside};
use super::trace_open::exe_path;
use crate::collector::Message;
use crate::config;
use crate::python;
use crate::sys;
use crate::sys::loader;
use crate::unwind;

/// An object may have been unloaded (dlclose returned): unwind rules cached for its
/// addresses are dropped, then the module list is snapshot.
pub fn module_unloaded() {
    unwind::rules::forget_all();
    python::constructors::forget_redirected();
    modules_changed();
}

/// The module list changed (dlopen/dlclose returned): snapshot it now.
pub fn modules_changed() {
    if !state::is_recording() || !is_outside() {
        return;
    }
    as_own_work(|| {
        if !channel::is_open() {
            return;
        }
        let modules = loader::loaded_modules(&exe_path());
        // Flush this thread's events first, so the collector sees them against the old map.
        channel::flush_this_thread();
        offer(Message::Modules(modules), None);
        // An embedding program may load the interpreter itself.
        if let Some(runtime) = config::get().and_then(detect_python) {
            offer(Message::PythonRuntime(runtime), None);
        }
        if let Some(failure) = python::constructors::redirect_in_extensions(state::own_code_start()) {
            sys::write_stderr(format!("libleak: {failure}\n").as_bytes());
        }
    });
}
