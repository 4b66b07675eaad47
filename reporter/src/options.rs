//! What the user asked of a report: how many rows, how to group them, which kinds of blocks to
//! list, which suppressions apply.
//!
//! Plain settings only: this module must never read files or the environment (the CLI loads
//! suppression files through [`crate::attribute::suppress`] and fills these in).

use crate::model::GroupBy;

/// A built-in suppression and why it exists.
pub struct BuiltinSuppression {
    pub pattern: &'static str,
    pub reason: &'static str,
}

/// libleak's built-in suppressions, printed by `libleak suppressions`.
pub const BUILTIN: &[BuiltinSuppression] = &[
    BuiltinSuppression {
        pattern: "_dl_allocate_tls",
        reason: "glibc thread-local storage of exited threads: glibc keeps their stacks cached and reaches the \
                 storage only through them, and the scan does not treat stale stacks as roots",
    },
    BuiltinSuppression {
        pattern: "_dl_resize_dtv",
        reason: "glibc's per-thread table of dynamic TLS blocks (same reason)",
    },
    BuiltinSuppression {
        pattern: "tls_get_addr_tail",
        reason: "dynamic TLS blocks of libraries loaded with dlopen, per thread (same reason)",
    },
    BuiltinSuppression {
        pattern: "_dlfo_mappings_segment_allocate",
        reason: "glibc's table for _dl_find_object, grown by dlopen: glibc keeps only an aligned pointer \
                 into the middle of the block, so the scan sees it as possibly lost",
    },
    BuiltinSuppression {
        pattern: "lib_build_and_cache_attr",
        reason: "cffi's lib objects, once per attribute (the value is then cached), as cffi's lib_obj.c says \
                 it does on purpose: reading a constant that is no integer copies its value into a buffer \
                 never freed, and reading a function builds its method definition (lib_build_cpython_func, \
                 \"XXX leaks xfunc\")",
    },
    BuiltinSuppression {
        pattern: "traceback_new",
        reason: "tracemalloc's copies of the tracebacks it records (-X tracemalloc, PYTHONTRACEMALLOC, \
                 tracemalloc.start()), made inside whatever allocation it traced, an extension's too: \
                 CPython 3.9-3.12 never free them (their table frees no key), 3.13 does",
    },
];

/// One suppression pattern and where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Suppression {
    pub pattern: String,
    /// Where it came from: `builtin`, or `FILE:LINE`.
    pub origin: String,
}

/// [`BUILTIN`] as suppressions.
pub fn builtin() -> Vec<Suppression> {
    BUILTIN
        .iter()
        .map(|b| Suppression {
            pattern: b.pattern.to_string(),
            origin: "builtin".to_string(),
        })
        .collect()
}

/// Every setting of a report.
#[derive(Clone, Debug)]
pub struct Options {
    /// Most leaks listed; 0 lists all.
    pub limit: usize,
    /// Keep the interpreter's own frames in merged stacks: its native ones (eval loop, call
    /// plumbing) and importlib's Python ones.
    pub show_interpreter_frames: bool,
    pub group_by: GroupBy,
    /// List reachable blocks as rows too (otherwise one summary line).
    pub show_reachable: bool,
    /// List what the runtime itself left at exit as rows too (otherwise one summary line).
    pub show_leftovers: bool,
    /// List what a child of a traced process that ended before its exit scan allocated itself as rows too
    /// (otherwise one summary line; see [`crate::model::Summary::unjudged`]).
    pub show_unjudged: bool,
    pub suppressions: Vec<Suppression>,
}

impl Options {
    /// The defaults of the `libleak` command, with the given suppressions.
    pub fn with_suppressions(suppressions: Vec<Suppression>) -> Options {
        Options {
            limit: 25,
            show_interpreter_frames: false,
            group_by: GroupBy::Site,
            show_reachable: false,
            show_leftovers: false,
            show_unjudged: false,
            suppressions,
        }
    }
}

impl Default for Options {
    /// The defaults of the `libleak` command: 25 rows by site, leaks only, built-in
    /// suppressions on.
    fn default() -> Self {
        Options::with_suppressions(builtin())
    }
}

/// A moment of the run, as `--between` names it: an event sequence number (`seq:1000`),
/// seconds since the trace started (`2.5s`), or a mark the program made with
/// `libleak_mark` (`mark:LABEL`, its first occurrence).
#[derive(Clone, Debug, PartialEq)]
pub enum Moment {
    Seq(u64),
    Seconds(f64),
    Mark(String),
}

impl std::str::FromStr for Moment {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let parsed = if let Some(seq) = text.strip_prefix("seq:") {
            seq.parse().ok().map(Moment::Seq)
        } else if let Some(label) = text.strip_prefix("mark:") {
            Some(Moment::Mark(label.to_string()))
        } else if let Some(seconds) = text.strip_suffix('s') {
            seconds
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .map(Moment::Seconds)
        } else {
            None
        };
        parsed.ok_or_else(|| {
            format!(
                "expected an event number such as `seq:1000`, seconds such as `2.5s` or a mark such as `mark:LABEL`, found `{text}`"
            )
        })
    }
}

/// Every setting of a growth report (`--growth`).
#[derive(Clone, Debug, Default)]
pub struct GrowthOptions {
    /// Most growing sites listed; 0 lists all.
    pub limit: usize,
    /// As [`Options::show_interpreter_frames`].
    pub show_interpreter_frames: bool,
    /// `--between FROM TO`: also count what this window allocated and left live.
    pub between: Option<(Moment, Moment)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_are_event_numbers_or_seconds() {
        assert_eq!("seq:1000".parse::<Moment>(), Ok(Moment::Seq(1000)));
        assert_eq!("2.5s".parse::<Moment>(), Ok(Moment::Seconds(2.5)));
        assert_eq!("7s".parse::<Moment>(), Ok(Moment::Seconds(7.0)));
        assert_eq!(
            "mark:request 10".parse::<Moment>(),
            Ok(Moment::Mark("request 10".into()))
        );
        for bad in ["1000", "seq:", "seq:-1", "-1s", "s", "nans", "2.5"] {
            assert!(bad.parse::<Moment>().is_err(), "{bad}");
        }
    }
}
