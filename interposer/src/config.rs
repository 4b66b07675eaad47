//! The `LIBLEAK_*` environment variables, read once at start-up ([`Config::from_env`], then
//! [`install`]ed for the rest of the process, forked children included). This is the only
//! place that reads them; the `exec` check reads the program's `PATH` as of the call.
//!
//! - `LIBLEAK_OUTPUT`: trace path template; `%p` becomes the pid; a template ending in `/`
//!   is a directory for the default names. Default `libleak.<program>.<pid>.trace` in the
//!   current directory.
//! - `LIBLEAK_FOLLOW=0`: do not trace the programs this one starts. By default they inherit
//!   `LD_PRELOAD` and are traced too; libleak then also exports `LIBLEAK_OUTPUT` (the
//!   starting directory, when unset) so that a child started elsewhere writes beside it.
//! - `LIBLEAK_DISABLE=1`: load but record nothing.
//! - `LIBLEAK_REDACT_ARGS=1`: keep the command line's arguments out of the trace: `argv[0]`
//!   is recorded and every argument after it as `…`. Even without it, the value of a long
//!   option whose name ends with `password`, `passwd`, `token`, `secret`, `api-key` or
//!   `apikey` (any case; `--name=VALUE` or `--name VALUE`) is recorded as `***`. The trace's
//!   file name is derived from the whole command line either way.
//! - `LIBLEAK_PYTHONMALLOC=keep`: leave CPython's allocator alone. By default, when the
//!   process runs CPython and `PYTHONMALLOC` is unset, the interpreter is made to read
//!   `PYTHONMALLOC=malloc` (libleak's `getenv` answers it; the environment, which children
//!   inherit, is not changed), so that Python objects are allocated (and seen) through
//!   malloc instead of pymalloc's arenas.
//! - `LIBLEAK_SCAN=0`: skip the reachability scan at exit (blocks stay unclassified).
//! - `LIBLEAK_SCAN_SECONDS`: time limit of that scan (default 30); past it the trace says
//!   the scan was cut short.
//! - `LIBLEAK_CHILD_SCAN=all|own`: what a forked child's exit scan judges. `all`: every block
//!   it holds, those inherited from its parent too, reading all of them. `own`: the blocks it
//!   allocated itself, leaving the inherited ones to its parent's trace and reading only those
//!   on pages it wrote to since the fork (as roots): its exit then costs what its own work
//!   costs, not what its parent holds. Default: `all` for a child that inherited up to
//!   10,000 blocks (a small C program's heap: a few milliseconds of scan), `own` past that
//!   (every CPython child: the interpreter holds some 35,000 blocks once started).
//! - `LIBLEAK_QUIET=1`: say nothing on stderr at exit (the "trace written to" line a terminal
//!   otherwise gets).
//! - `LIBLEAK_CHECK_UNWIND=N`: also unwind every Nth allocation with libgcc's unwinder and
//!   compare; at exit, one line on stderr gives the counts (a check of libleak itself).

use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use libleak_format::TraceTemplate;

const DEFAULT_SCAN_SECONDS: f64 = 30.0;

pub struct Config {
    pub output_template: Option<String>,
    pub disabled: bool,
    /// `LIBLEAK_REDACT_ARGS=1`: record `argv[0]` only, each argument as `…`.
    pub redact_args: bool,
    /// Trace the processes this one starts (`LIBLEAK_FOLLOW`, on unless `0`).
    pub follow: bool,
    pub python_malloc: PythonMalloc,
    /// Time limit of the exit-time reachability scan; `None` when it is turned off.
    pub scan_time_limit: Option<Duration>,
    /// `LIBLEAK_CHILD_SCAN`: what a forked child's exit scan judges.
    pub child_scan: ChildScan,
    /// Compare every Nth stack with libgcc's (`LIBLEAK_CHECK_UNWIND`); 0: never.
    pub check_unwind_every: u64,
    /// `LIBLEAK_SLOT_LOCKS=1`: per-thread buffers take a spin lock per append even where
    /// `membarrier` is available (what happens where it is not; for diagnosis and tests).
    pub slot_locks: bool,
    /// `LIBLEAK_QUIET=1`: no "trace written to" line at exit, even on a terminal (`libleak
    /// run` sets it: it moves the traces and names them itself).
    pub quiet: bool,
}

/// What a forked child's exit scan judges (`LIBLEAK_CHILD_SCAN`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildScan {
    /// Every live block, inherited ones too.
    All,
    /// Only the blocks the child allocated.
    Own,
    /// `All` up to [`ChildScan::ALL_UP_TO`] inherited blocks, `Own` past that.
    BySize,
}

impl ChildScan {
    /// Inherited blocks a child judges by default: judging them means reading and flooding
    /// them all, about 0.9 µs each (a pool worker of a small Python program: 38,600 blocks,
    /// 36 ms of its exit, against 12 ms judging its own).
    pub const ALL_UP_TO: u64 = 10_000;

    /// Whether a child that inherited `blocks` (still live) judges them.
    pub fn judges_inherited(self, blocks: u64) -> bool {
        match self {
            ChildScan::All => true,
            ChildScan::Own => false,
            ChildScan::BySize => blocks <= Self::ALL_UP_TO,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PythonMalloc {
    /// Set `PYTHONMALLOC=malloc` when the variable is unset.
    SetMalloc,
    /// `LIBLEAK_PYTHONMALLOC=keep`, or the user set `PYTHONMALLOC` themselves.
    Keep,
}

impl Config {
    pub fn from_env() -> Config {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Config {
            output_template: var("LIBLEAK_OUTPUT"),
            disabled: var("LIBLEAK_DISABLE").is_some_and(|v| v != "0"),
            redact_args: var("LIBLEAK_REDACT_ARGS").is_some_and(|v| v != "0"),
            follow: var("LIBLEAK_FOLLOW").is_none_or(|v| v != "0"),
            python_malloc: if var("LIBLEAK_PYTHONMALLOC").is_some_and(|v| v == "keep") || var("PYTHONMALLOC").is_some()
            {
                PythonMalloc::Keep
            } else {
                PythonMalloc::SetMalloc
            },
            scan_time_limit: if var("LIBLEAK_SCAN").is_some_and(|v| v == "0") {
                None
            } else {
                let seconds = var("LIBLEAK_SCAN_SECONDS")
                    .and_then(|v| v.parse::<f64>().ok())
                    .filter(|s| s.is_finite() && *s > 0.0)
                    .unwrap_or(DEFAULT_SCAN_SECONDS);
                Some(Duration::from_secs_f64(seconds.min(86_400.0)))
            },
            child_scan: match var("LIBLEAK_CHILD_SCAN").as_deref() {
                Some("all") => ChildScan::All,
                Some("own") => ChildScan::Own,
                _ => ChildScan::BySize,
            },
            check_unwind_every: var("LIBLEAK_CHECK_UNWIND").and_then(|v| v.parse().ok()).unwrap_or(0),
            slot_locks: var("LIBLEAK_SLOT_LOCKS").is_some_and(|v| v != "0"),
            quiet: var("LIBLEAK_QUIET").is_some_and(|v| v != "0"),
        }
    }
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// Makes `config` the process's configuration (the first call wins) and returns it.
pub fn install(config: Config) -> &'static Config {
    CONFIG.get_or_init(move || config)
}

/// The configuration, once start-up has installed it.
pub fn get() -> Option<&'static Config> {
    CONFIG.get()
}

/// Whether `getenv("PYTHONMALLOC")` is answered `malloc` (see [`set_pythonmalloc_malloc`]).
static ANSWER_PYTHONMALLOC: AtomicBool = AtomicBool::new(false);

/// Makes CPython in this process read `PYTHONMALLOC=malloc` unless the variable is set; true
/// when libleak supplies it. The environment is not changed: the exported `getenv` answers
/// for the missing variable ([`answer_for_unset`]), so that the programs this process starts
/// inherit the environment as it was (with `LIBLEAK_FOLLOW=0` they must not run on malloc
/// for libleak's sake; followed, their own libleak answers them). Called from the library
/// constructor (before the interpreter reads its configuration) or right after the `dlopen`
/// that loaded an interpreter.
pub fn set_pythonmalloc_malloc() -> bool {
    if ANSWER_PYTHONMALLOC.load(Ordering::Relaxed) {
        return true;
    }
    if std::env::var_os("PYTHONMALLOC").is_some() {
        return false;
    }
    ANSWER_PYTHONMALLOC.store(true, Ordering::Relaxed);
    true
}

/// What `getenv` answers for `name` when the environment does not have it: `malloc` for
/// `PYTHONMALLOC` once [`set_pythonmalloc_malloc`] chose it, otherwise nothing.
pub fn answer_for_unset(name: &CStr) -> Option<&'static CStr> {
    (name.to_bytes() == b"PYTHONMALLOC" && ANSWER_PYTHONMALLOC.load(Ordering::Relaxed)).then_some(c"malloc")
}

/// Applies `LIBLEAK_FOLLOW` to what child processes inherit. Following: a relative or unset
/// output template becomes absolute, here (for forked children, which keep this
/// configuration) and in `LIBLEAK_OUTPUT` (for programs started by `exec`), so that a child
/// started in another directory writes beside this process's trace. Not following:
/// `own_library` leaves `LD_PRELOAD`. Called from the library constructor, before any thread
/// of the program exists.
pub fn prepare_children(config: &mut Config, own_library: &str, cwd: &str) {
    if config.follow {
        if config.output_template.as_deref().is_some_and(|t| t.starts_with('/')) {
            return;
        }
        let absolute = TraceTemplate::new(config.output_template.as_deref(), "")
            .relative_to(cwd)
            .to_string();
        std::env::set_var("LIBLEAK_OUTPUT", &absolute);
        config.output_template = Some(absolute);
        return;
    }
    let Some(preload) = std::env::var_os("LD_PRELOAD") else {
        return;
    };
    let own_name = std::path::Path::new(own_library).file_name();
    let preload = preload.to_string_lossy().into_owned();
    let kept: Vec<&str> = preload
        .split([':', ' '])
        .filter(|entry| !entry.is_empty())
        .filter(|entry| {
            let path = std::path::Path::new(entry);
            let same = std::fs::canonicalize(path).is_ok_and(|p| p == std::path::Path::new(own_library))
                || (own_name.is_some() && path.file_name() == own_name);
            !same
        })
        .collect();
    if kept.is_empty() {
        std::env::remove_var("LD_PRELOAD");
    } else {
        std::env::set_var("LD_PRELOAD", kept.join(":"));
    }
}
