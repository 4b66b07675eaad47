//! Start-up, from the library constructor: read the configuration once, create the trace,
//! describe the process and its modules, find CPython, start the collector, and register
//! the fork, exit and thread-exit handlers. On any failure, say so once and let the program
//! run unrecorded.
//!
//! Must never leave the process half set up: recording starts only once everything is.

use std::sync::atomic::Ordering;

use libleak_format::PythonRuntime;

use super::channel::{self, SOURCE};
use super::collector_thread::{self, note_trace_path, PARKED_COLLECTOR, TRACE_OPEN};
use super::finish;
use super::fork;
use super::phase::set_scrub_freed;
use super::seq;
use super::state::{self, State};
use super::stats;
use super::thread::{self, as_own_work, EXIT_KEY};
use super::trace_open::{open_trace, process_info, set_redact_all_args};
use crate::collector::{Collector, CollectorStart, ScanSettings};
use crate::config::{self, Config, PythonMalloc};
use crate::python;
use crate::sys::threads::{self, ThreadExitKey};
use crate::sys::{self, loader, real, signals, slots};

/// The library constructor's work: set everything up, then start recording.
pub fn start() {
    as_own_work(|| match start_recording() {
        Ok(()) => state::set(State::Recording),
        Err(reason) => {
            state::set(State::Off);
            if !reason.is_empty() {
                sys::write_stderr(format!("libleak: {reason}; not recording\n").as_bytes());
            }
        }
    });
}

fn start_recording() -> Result<(), String> {
    real::get().ok_or("cannot find the real allocator")?;
    let mut config = Config::from_env();
    if config.disabled {
        return Err(String::new());
    }
    // Before any event: no other thread appends yet.
    slots::choose_fences(config.slot_locks);
    seq::allow_one_thread_alone(slots::uses_fences());
    set_redact_all_args(config.redact_args);
    let info = process_info();
    let file = open_trace(&config, &info)?;
    let path = file.path().to_string();
    stats::check_unwind_every(config.check_unwind_every);
    signals::init();
    let modules = loader::loaded_modules(&info.exe);
    let python_runtime = detect_python(&config);
    let own_address = start as *const () as usize;
    if let Some(own) = modules.iter().find(|m| m.contains(own_address as u64)) {
        config::prepare_children(&mut config, &own.path, &info.cwd);
        let start = own.segments.iter().map(|s| own.bias + s.vaddr).min().unwrap_or(0);
        let end = own
            .segments
            .iter()
            .map(|s| own.bias + s.vaddr + s.memsz)
            .max()
            .unwrap_or(0);
        state::set_own_code(start as usize, end as usize);
    }
    let config = config::install(config);
    let (events, spare_batches) = channel::open(0);
    let key = ThreadExitKey::create(thread::exited).ok_or("cannot create a thread key")?;
    let _ = EXIT_KEY.set(key);
    let collector = Collector::new(CollectorStart {
        file,
        info,
        modules,
        python_runtime,
        events,
        spare_batches,
        source: &SOURCE,
        scan: ScanSettings {
            own_code: state::own_code_start() as u64,
            time_limit: config.scan_time_limit,
            child_scan: config.child_scan,
        },
    })
    .map_err(|e| format!("cannot write {path}: {e}"))?;
    set_scrub_freed(config.scan_time_limit.is_some());
    *PARKED_COLLECTOR.lock().map_err(|_| "start-up lock poisoned")? = Some(Box::new(collector));
    note_trace_path(&path);
    TRACE_OPEN.store(true, Ordering::Relaxed);
    state::set_recorded_process(sys::getpid());
    if !collector_thread::spawn() {
        return Err("cannot start the writer thread".into());
    }
    fork::register();
    threads::register_exit_handler(finish::at_exit);
    Ok(())
}

/// Looks for a CPython interpreter; when found (the first time), makes Python objects visible
/// to the hooks by selecting the malloc allocator for them, unless the user chose otherwise.
pub fn detect_python(config: &Config) -> Option<PythonRuntime> {
    let mut runtime = python::detect()?;
    if !runtime.note.is_empty() {
        sys::write_stderr(format!("libleak: {}; recording native stacks only\n", runtime.note).as_bytes());
    }
    runtime.pythonmalloc_set = config.python_malloc == PythonMalloc::SetMalloc && config::set_pythonmalloc_malloc();
    Some(runtime)
}
