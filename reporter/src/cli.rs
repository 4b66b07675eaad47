//! The `libleak` command line: subcommands and flags, whose doc comments are the help text.
//!
//! Declarations only: this module must never run, read or print anything beyond turning
//! flags into [`Options`].

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};
use libleak_reporter::attribute::suppress;
use libleak_reporter::model::GroupBy;
use libleak_reporter::Options;

/// Find memory leaks in programs and the native extensions they load.
#[derive(Parser)]
#[command(name = "libleak", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// How to report: the options every subcommand that reports shares.
#[derive(clap::Args, Clone)]
pub struct ReportArgs {
    /// Print the report as one JSON document (schema: docs/report-schema.md).
    #[arg(long)]
    pub json: bool,
    /// List at most this many leaks, largest first; 0 lists all.
    #[arg(long, default_value_t = 25)]
    pub limit: usize,
    /// Keep CPython's own native frames (the eval loop and call plumbing) in stacks that
    /// show Python frames.
    #[arg(long)]
    pub show_interpreter_frames: bool,
    /// Group leaks by allocation site (the innermost frame outside the allocator), by whole
    /// stack, or by the innermost N frames; each row lists the distinct stacks under it.
    #[arg(long, default_value = "site", value_name = "site|stack|N")]
    pub group_by: GroupBy,
    /// Also list blocks still reachable at exit (by default one summary line).
    #[arg(long)]
    pub show_reachable: bool,
    /// Also list what the C runtime or the interpreter alone allocated and left at exit (by
    /// default one summary line).
    #[arg(long)]
    pub show_leftovers: bool,
    /// Suppress leaks matching this file's `leak:PATTERN` lines (LeakSanitizer's syntax);
    /// may be given several times.
    #[arg(long, value_name = "FILE")]
    pub suppressions: Vec<PathBuf>,
    /// Do not apply libleak's built-in suppressions (see `libleak suppressions`).
    #[arg(long)]
    pub no_builtin_suppressions: bool,
    /// Exit with status 23 when definitely and indirectly lost bytes exceed BYTES (default 0).
    #[arg(long, value_name = "BYTES", num_args = 0..=1, require_equals = true, default_missing_value = "0")]
    pub fail_on_leak: Option<u64>,
}

impl ReportArgs {
    /// The report options these flags ask for, suppression files read.
    pub fn options(&self) -> Result<Options> {
        let mut suppressions = if self.no_builtin_suppressions {
            Vec::new()
        } else {
            suppress::builtin()
        };
        for path in &self.suppressions {
            suppressions.extend(suppress::load(path)?);
        }
        Ok(Options {
            limit: self.limit,
            show_interpreter_frames: self.show_interpreter_frames,
            group_by: self.group_by,
            show_reachable: self.show_reachable,
            show_leftovers: self.show_leftovers,
            suppressions,
        })
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Report what a traced process left allocated at exit, ranked by bytes. Given several
    /// traces, or a directory (every `*.trace` in it), reports each process after a one-line
    /// summary per process.
    Report {
        /// Trace files written by libleak.so, or directories holding them.
        #[arg(required = true, value_name = "TRACE|DIR")]
        traces: Vec<PathBuf>,
        #[command(flatten)]
        report: ReportArgs,
    },
    /// Run a command with libleak.so preloaded, then report on its trace. Exits with the
    /// command's status.
    Run {
        /// Where to write the trace (`%p` becomes the pid).
        #[arg(long = "output", value_name = "OUTPUT")]
        trace_template: Option<String>,
        #[command(flatten)]
        report: ReportArgs,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// List libleak's built-in suppressions and why each exists.
    Suppressions,
}
