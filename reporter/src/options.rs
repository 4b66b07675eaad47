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
