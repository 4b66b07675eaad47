//! `libleak run`: runs a command with `libleak.so` preloaded, forwarding the signals sent to
//! `libleak` to it, and returns exactly the traces that it and every process it started
//! wrote, moved to where the user asked for them.
//!
//! How it knows its own traces: before the command starts, it creates a private directory
//! (mode 0700) beside the place the traces go and hands the interposer `LIBLEAK_OUTPUT=<that
//! directory>/%p.trace`, which every process of the run inherits (forked children keep it,
//! exec'd programs read it). Whatever lands there is this run's and nothing else is: no
//! matching by name pattern or modification time, so an earlier or concurrent run's traces
//! are never taken. Once the command has ended, each trace is moved to its final name
//! ([`TraceTemplate::expand`] of the user's `--output`, or `libleak.<program>.<pid>.trace` in
//! the current directory), never over an existing file.
//!
//! Must never read or report a trace (it returns their paths, and the caller reports), never
//! overwrite a file, and never let `libleak` die of a signal while the command runs.

use std::fs::{DirBuilder, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use libleak_format::{program_name, TraceTemplate};
use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::iterator::SignalsInfo;
use signal_hook::low_level::siginfo::Cause;

/// The signals `libleak run` passes on to the command instead of dying of them.
pub const FORWARDED_SIGNALS: [i32; 4] = [SIGINT, SIGTERM, SIGHUP, SIGQUIT];

/// Why a command could not be run under libleak.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot locate the libleak executable")]
    OwnPath(#[source] std::io::Error),
    #[error("libleak.so not found next to {0} (set LIBLEAK_SO)")]
    NoInterposer(String),
    #[error("cannot read the current directory")]
    CurrentDirectory(#[source] std::io::Error),
    #[error("cannot write traces to {directory} (--output)")]
    OutputLocation {
        directory: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot handle signals")]
    Signals(#[source] std::io::Error),
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for the command")]
    Wait(#[source] std::io::Error),
}

/// What a run left: how the command ended, the traces written (in the order their processes
/// started when they share a pid, else by pid), and what went wrong while moving them.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub traces: Vec<PathBuf>,
    /// Problems that lost nothing (a trace left in the private directory because it could
    /// not be moved, a directory that could not be removed): one line each.
    pub warnings: Vec<String>,
}

/// `libleak.so`: `$LIBLEAK_SO`, else the file beside this executable.
pub fn find_interposer() -> Result<PathBuf, RunError> {
    if let Some(path) = std::env::var_os("LIBLEAK_SO").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(RunError::OwnPath)?;
    let beside = exe.with_file_name("libleak.so");
    if beside.is_file() {
        return Ok(beside);
    }
    Err(RunError::NoInterposer(exe.display().to_string()))
}

/// Where the run's traces go in the end: `output` (a `LIBLEAK_OUTPUT` template, `%p` for the
/// pid, a trailing `/` for a directory of default names), by default
/// `libleak.<program>.%p.trace` in the current directory. The program named is the command's,
/// for every process of the run, as the interposer names them under `libleak run`.
pub fn destination(command: &[String], output: Option<&str>) -> TraceTemplate {
    let program = program_name(command);
    match output {
        Some(template) => TraceTemplate::new(Some(template), &program),
        None => TraceTemplate::for_program(&program),
    }
}

/// Runs `command` (program and arguments) under libleak, its traces finally named by `output`
/// (see [`destination`]); waits for it, forwarding the signals in [`FORWARDED_SIGNALS`].
///
/// Fails before starting the command when the traces could not be written.
pub fn run(command: &[String], output: Option<&str>) -> Result<Run, RunError> {
    let interposer = find_interposer()?;
    let destination = destination(command, output);
    let private = PrivateDirectory::create(&destination)?;
    let preload = match std::env::var("LD_PRELOAD") {
        Ok(existing) if !existing.is_empty() => format!("{}:{existing}", interposer.display()),
        _ => interposer.display().to_string(),
    };
    // Installed before the child exists, so that no signal between spawning and waiting
    // kills libleak; the child's exec resets them to their defaults.
    let mut signals = SignalsInfo::<WithOrigin>::new(FORWARDED_SIGNALS).map_err(RunError::Signals)?;
    let spawned = std::process::Command::new(&command[0])
        .args(&command[1..])
        .env("LD_PRELOAD", preload)
        .env("LIBLEAK_OUTPUT", private.template())
        // Each process would name its trace in the private directory, which is gone by
        // the time the user reads it: run names the traces where it put them.
        .env("LIBLEAK_QUIET", "1")
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(source) => {
            signals.handle().close();
            private.remove();
            return Err(RunError::Spawn {
                program: command[0].clone(),
                source,
            });
        }
    };
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let child_done = Arc::new(AtomicBool::new(false));
    let done = Arc::clone(&child_done);
    std::thread::spawn(move || {
        for origin in signals.forever() {
            if done.load(Ordering::Acquire) {
                // The command has ended: libleak is reporting, and a signal now means
                // what it usually does.
                let _ = signal_hook::low_level::emulate_default_handler(origin.signal);
                continue;
            }
            // A terminal's Ctrl-C, Ctrl-\ or hang-up (sent by the kernel) reaches the whole
            // foreground process group, the command included: sending it again would
            // deliver it twice.
            if origin.cause == Cause::Kernel {
                continue;
            }
            if let Ok(signal) = nix::sys::signal::Signal::try_from(origin.signal) {
                let _ = nix::sys::signal::kill(pid, signal);
            }
        }
    });
    let status = child.wait();
    // Once reaped, the pid may be reused by a stranger: no more forwarding.
    child_done.store(true, Ordering::Release);
    let status = status.map_err(RunError::Wait)?;
    let (traces, warnings) = private.deliver(&destination);
    Ok(Run {
        status,
        traces,
        warnings,
    })
}

/// The directory only this run writes traces into, created 0700 beside the traces' final
/// place (so that moving them is a rename), or in the temporary directory when that place is
/// one directory per process (a `%p` in the directory part of `--output`).
struct PrivateDirectory {
    path: PathBuf,
}

impl PrivateDirectory {
    fn create(destination: &TraceTemplate) -> Result<PrivateDirectory, RunError> {
        let cwd = std::env::current_dir().map_err(RunError::CurrentDirectory)?;
        let written = destination.directory();
        let parent = if written.contains("%p") {
            std::env::temp_dir()
        } else if written.is_empty() {
            cwd.clone()
        } else {
            cwd.join(&written)
        };
        let shown = if written.is_empty() { ".".to_string() } else { written };
        let failed = |source| RunError::OutputLocation {
            directory: shown.clone(),
            source,
        };
        let mut attempt = 0u32;
        loop {
            let path = parent.join(format!(".libleak-run.{}.{attempt}", std::process::id()));
            // Creating it is the check that the traces can be written there at all, made
            // before the command runs rather than after.
            match DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(PrivateDirectory { path }),
                Err(e) if e.kind() == ErrorKind::AlreadyExists && attempt < 1000 => attempt += 1,
                Err(e) => return Err(failed(e)),
            }
        }
    }

    /// The `LIBLEAK_OUTPUT` that puts every process's trace here, named by its pid.
    fn template(&self) -> String {
        format!("{}/%p.trace", self.path.display())
    }

    /// Moves every trace found here to its name under `destination`, in order, and removes
    /// the directory; returns the traces' paths (the private one of a trace that could not
    /// be moved) and a line for each problem.
    fn deliver(self, destination: &TraceTemplate) -> (Vec<PathBuf>, Vec<String>) {
        let mut warnings = Vec::new();
        let mut found: Vec<(u32, u32, PathBuf)> = match std::fs::read_dir(&self.path) {
            Ok(entries) => entries
                .filter_map(|entry| {
                    let entry = entry.ok()?;
                    let (pid, attempt) = pid_and_attempt(&entry.file_name().to_string_lossy())?;
                    Some((pid, attempt, entry.path()))
                })
                .collect(),
            Err(e) => {
                warnings.push(format!("cannot list {}: {e}", self.path.display()));
                Vec::new()
            }
        };
        // The interposer numbers a second trace of the same pid (written after an exec):
        // in that order they keep their order under the final names.
        found.sort();
        let mut traces = Vec::new();
        for (pid, _, path) in found {
            match move_without_overwriting(&path, destination, pid) {
                Ok(moved) => traces.push(moved),
                Err(e) => {
                    warnings.push(format!("{} left where it was written: {e}", path.display()));
                    traces.push(path);
                }
            }
        }
        if warnings.is_empty() {
            // Not empty when a process of the run is still running and wrote since.
            if let Err(e) = std::fs::remove_dir(&self.path) {
                warnings.push(format!("cannot remove {}: {e}", self.path.display()));
            }
        }
        (traces, warnings)
    }

    /// Removes the directory when nothing was written into it.
    fn remove(self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

/// `<pid>.trace` → (pid, 0); `<pid>.<N>.trace` → (pid, N); anything else is not a trace.
fn pid_and_attempt(name: &str) -> Option<(u32, u32)> {
    let stem = name.strip_suffix(".trace")?;
    let (pid, attempt) = match stem.split_once('.') {
        Some((pid, attempt)) => (pid, attempt.parse().ok()?),
        None => (stem, 0),
    };
    Some((pid.parse().ok()?, attempt))
}

/// Moves `from` to the first free name [`TraceTemplate::expand`] gives for `pid`. A hard
/// link claims the name atomically and fails when it is taken, so a file made meanwhile is
/// never overwritten; across file systems (or where links are refused) the trace is copied
/// into a file created new.
fn move_without_overwriting(from: &Path, destination: &TraceTemplate, pid: u32) -> std::io::Result<PathBuf> {
    for attempt in 0..1000 {
        let to = PathBuf::from(destination.expand(pid, attempt));
        match std::fs::hard_link(from, &to) {
            Ok(()) => {
                std::fs::remove_file(from)?;
                return Ok(to);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(e),
            Err(_) => match copy_new(from, &to) {
                Ok(()) => {
                    std::fs::remove_file(from)?;
                    return Ok(to);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            },
        }
    }
    Err(std::io::Error::new(
        ErrorKind::AlreadyExists,
        format!("no free name near {}", destination.expand(pid, 0)),
    ))
}

/// Copies `from` into `to`, which must not exist yet, with `from`'s permissions.
fn copy_new(from: &Path, to: &Path) -> std::io::Result<()> {
    let mode = std::fs::metadata(from)?.permissions().mode() & 0o777;
    let mut source = std::fs::File::open(from)?;
    let mut target = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(to)?;
    if let Err(e) = std::io::copy(&mut source, &mut target) {
        let _ = std::fs::remove_file(to);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_trace_names_give_pid_and_attempt() {
        assert_eq!(pid_and_attempt("123.trace"), Some((123, 0)));
        assert_eq!(pid_and_attempt("123.2.trace"), Some((123, 2)));
        assert_eq!(pid_and_attempt("123.trace.tmp"), None);
        assert_eq!(pid_and_attempt("x.trace"), None);
        assert_eq!(pid_and_attempt("1.x.trace"), None);
    }
}
