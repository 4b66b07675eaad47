//! The `LIBLEAK_*` environment variables, read once at start-up. This is the only place that
//! reads the environment.
//!
//! - `LIBLEAK_OUTPUT`: trace path template; `%p` becomes the pid. Default
//!   `libleak.<program>.<pid>.trace` in the current directory.
//! - `LIBLEAK_DISABLE=1`: load but record nothing.
//! - `LIBLEAK_PYTHONMALLOC=keep`: leave CPython's allocator alone. By default, when the
//!   process runs CPython and `PYTHONMALLOC` is unset, libleak sets `PYTHONMALLOC=malloc`
//!   before the interpreter starts, so that Python objects are allocated (and seen) through
//!   malloc instead of pymalloc's arenas.
//! - `LIBLEAK_SCAN=0`: skip the reachability scan at exit (blocks stay unclassified).
//! - `LIBLEAK_SCAN_SECONDS`: time limit of that scan (default 30); past it the trace says
//!   the scan was cut short.

use std::time::Duration;

const DEFAULT_SCAN_SECONDS: f64 = 30.0;

pub struct Config {
    pub output_template: Option<String>,
    pub disabled: bool,
    pub python_malloc: PythonMalloc,
    /// Time limit of the exit-time reachability scan; `None` when it is turned off.
    pub scan_time_limit: Option<Duration>,
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
        }
    }
}

/// Sets `PYTHONMALLOC=malloc` unless it is set; true when it was set here. Called from the
/// library constructor (before the interpreter reads its configuration, and before any
/// thread of the program exists) or right after the `dlopen` that loaded an interpreter.
pub fn set_pythonmalloc_malloc() -> bool {
    if std::env::var_os("PYTHONMALLOC").is_some() {
        return false;
    }
    std::env::set_var("PYTHONMALLOC", "malloc");
    true
}
