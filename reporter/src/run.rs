//! `libleak run`: runs a command with `libleak.so` preloaded and finds the traces that it and
//! every process it started wrote, by the naming rule they followed
//! ([`TraceTemplate::matches`]).
//!
//! Must never read or report a trace: it returns their paths, and the caller reports.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, SystemTime};

use libleak_format::{program_name, TraceTemplate};

/// Why a command could not be run under libleak.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot locate the libleak executable")]
    OwnPath(#[source] std::io::Error),
    #[error("libleak.so not found next to {0} (set LIBLEAK_SO)")]
    NoInterposer(String),
    #[error("cannot read the current directory")]
    CurrentDirectory(#[source] std::io::Error),
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("waiting for the command")]
    Wait(#[source] std::io::Error),
    #[error("the command left no trace (expected {0})")]
    NoTrace(String),
}

/// What a run left: how the command ended and the traces written, in name order.
#[derive(Debug)]
pub struct Run {
    pub status: ExitStatus,
    pub traces: Vec<PathBuf>,
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

/// Runs `command` (program and arguments) under libleak, its traces named by `output` (a
/// `LIBLEAK_OUTPUT` template; by default `libleak.<program>.%p.trace` in the current
/// directory), and waits for it.
pub fn run(command: &[String], output: Option<&str>) -> Result<Run, RunError> {
    let interposer = find_interposer()?;
    let program = program_name(command);
    let template = match output {
        Some(template) => TraceTemplate::new(Some(template), &program),
        None => {
            let cwd = std::env::current_dir().map_err(RunError::CurrentDirectory)?;
            TraceTemplate::for_program(&program).relative_to(&cwd.display().to_string())
        }
    };
    let preload = match std::env::var("LD_PRELOAD") {
        Ok(existing) if !existing.is_empty() => format!("{}:{existing}", interposer.display()),
        _ => interposer.display().to_string(),
    };
    // File times have a coarser clock than SystemTime::now: allow for it.
    let started = SystemTime::now() - Duration::from_secs(1);
    let mut child = std::process::Command::new(&command[0])
        .args(&command[1..])
        .env("LD_PRELOAD", preload)
        .env("LIBLEAK_OUTPUT", template.to_string())
        .spawn()
        .map_err(|source| RunError::Spawn {
            program: command[0].clone(),
            source,
        })?;
    let status = child.wait().map_err(RunError::Wait)?;
    let traces = traces_since(&template, started);
    if traces.is_empty() {
        return Err(RunError::NoTrace(template.to_string()));
    }
    Ok(Run { status, traces })
}

/// The traces named by `template` and written since `started`: every process of the run
/// (exec'd images, forked and spawned children inherit the template) writes one, with its
/// pid for `%p` and a numeric suffix when the name was taken.
fn traces_since(template: &TraceTemplate, started: SystemTime) -> Vec<PathBuf> {
    let directory = template.directory();
    let directory = if directory.is_empty() {
        Path::new(".")
    } else {
        Path::new(&directory)
    };
    let Ok(entries) = std::fs::read_dir(directory) else {
        return Vec::new();
    };
    let mut traces: Vec<PathBuf> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let fresh = entry.metadata().ok()?.modified().ok()? >= started;
            (fresh && template.matches(&entry.file_name().to_string_lossy())).then(|| entry.path())
        })
        .collect();
    traces.sort();
    traces
}
