//! Who this process is and where its trace goes: the process record, and creating the trace
//! file from the `LIBLEAK_OUTPUT` template.
//!
//! Must never overwrite an existing file or follow a symlink.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{SystemTime, UNIX_EPOCH};

use libleak_format::{program_name, ProcessInfo, TraceTemplate};

use crate::collector::trace_file::TraceFile;
use crate::config::Config;
use crate::sys;

pub fn exe_path() -> String {
    std::fs::read_link("/proc/self/exe")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

pub fn process_info() -> ProcessInfo {
    let argv: Vec<String> = std::fs::read("/proc/self/cmdline")
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|arg| !arg.is_empty())
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect()
        })
        .unwrap_or_default();
    ProcessInfo {
        pid: sys::getpid(),
        parent_pid: sys::getppid(),
        start_time_unix_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        exe: exe_path(),
        program: program_name(&argv),
        cwd: std::env::current_dir()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        argv,
    }
}

/// Creates the trace file: never overwrites an existing file and never follows a symlink; a
/// taken name gets a numeric suffix before `.trace`.
pub fn open_trace(config: &Config, info: &ProcessInfo) -> Result<TraceFile, String> {
    let template = TraceTemplate::new(config.output_template.as_deref(), &info.program).relative_to(&info.cwd);
    for attempt in 0..1000 {
        let path = template.expand(info.pid, attempt);
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path);
        match opened {
            Ok(file) => {
                return TraceFile::new(file, path.clone()).map_err(|e| format!("cannot use trace file {path}: {e}"));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("cannot create trace file {path}: {e}")),
        }
    }
    Err(format!(
        "cannot find a free trace file name near {}",
        template.expand(info.pid, 0)
    ))
}
