//! Who this process is and where its trace goes: the process record (with its command line
//! redacted, see [`redact_argv`]), and creating the trace file from the `LIBLEAK_OUTPUT`
//! template, readable by its owner only.
//!
//! Must never overwrite an existing file, follow a symlink, or let other users read a trace
//! (it holds the command line and the program's memory layout).

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// `LIBLEAK_REDACT_ARGS`, as start-up found it; a forked child's record follows its parent's.
static REDACT_ALL_ARGS: AtomicBool = AtomicBool::new(false);

/// Called once at start-up, before the first [`process_info`].
pub fn set_redact_all_args(redact: bool) {
    REDACT_ALL_ARGS.store(redact, Ordering::Relaxed);
}

/// Long options whose value is taken for a secret: an option whose name (after `--`, any
/// case) ends with one of these.
const SECRET_OPTIONS: [&str; 6] = ["password", "passwd", "token", "secret", "api-key", "apikey"];
const REDACTED: &str = "***";
/// What each argument becomes under `LIBLEAK_REDACT_ARGS=1`.
const DROPPED: &str = "…";

/// The command line as the trace records it. `argv[0]` is always kept. With `all`, every
/// argument after it becomes `…` (their number stays visible, their text does not).
/// Otherwise the value of a secret-looking long option (see [`SECRET_OPTIONS`]) becomes
/// `***`, whether given as `--password=VALUE` or as `--password VALUE`.
pub fn redact_argv(argv: &[String], all: bool) -> Vec<String> {
    let is_secret_option = |name: &str| {
        let name = name.to_ascii_lowercase();
        SECRET_OPTIONS.iter().any(|secret| name.ends_with(secret))
    };
    let mut redacted = Vec::with_capacity(argv.len());
    let mut value_follows = false;
    for (index, arg) in argv.iter().enumerate() {
        let kept = if index == 0 {
            arg.clone()
        } else if all {
            DROPPED.to_string()
        } else if std::mem::take(&mut value_follows) {
            REDACTED.to_string()
        } else if let Some(option) = arg.strip_prefix("--").filter(|o| !o.is_empty()) {
            match option.split_once('=') {
                Some((name, _)) if is_secret_option(name) => format!("--{name}={REDACTED}"),
                Some(_) => arg.clone(),
                None => {
                    value_follows = is_secret_option(option);
                    arg.clone()
                }
            }
        } else {
            arg.clone()
        };
        redacted.push(kept);
    }
    redacted
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
        // From the whole command line, so that redaction never changes the trace's name.
        program: program_name(&argv),
        cwd: std::env::current_dir()
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default(),
        argv: redact_argv(&argv, REDACT_ALL_ARGS.load(Ordering::Relaxed)),
    }
}

/// Creates the trace file, mode 0600: never overwrites an existing file and never follows a symlink; a
/// taken name gets a numeric suffix before `.trace`.
pub fn open_trace(config: &Config, info: &ProcessInfo) -> Result<TraceFile, String> {
    let template = TraceTemplate::new(config.output_template.as_deref(), &info.program).relative_to(&info.cwd);
    for attempt in 0..1000 {
        let path = template.expand(info.pid, attempt);
        let opened = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
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

#[cfg(test)]
mod tests {
    use super::redact_argv;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn secret_option_values_are_replaced() {
        let argv = strings(&[
            "prog",
            "--password=hunter2",
            "--API-KEY=k",
            "--db-token",
            "t0k",
            "--user=bob",
            "-p",
            "x",
            "--secret",
        ]);
        assert_eq!(
            redact_argv(&argv, false),
            strings(&[
                "prog",
                "--password=***",
                "--API-KEY=***",
                "--db-token",
                "***",
                "--user=bob",
                "-p",
                "x",
                "--secret"
            ])
        );
    }

    #[test]
    fn all_arguments_can_be_dropped() {
        let argv = strings(&["python3", "app.py", "--password=hunter2"]);
        assert_eq!(redact_argv(&argv, true), strings(&["python3", "…", "…"]));
        assert_eq!(redact_argv(&[], true), Vec::<String>::new());
    }
}
