//! The `libleak` command line: subcommands and flags, whose doc comments are the help text.
//!
//! Declarations only: this module must never run, read or print anything beyond turning
//! flags into [`Options`].

use std::ffi::OsString;
use std::path::PathBuf;

use anyhow::Result;
use clap::{CommandFactory, Parser, Subcommand};
use libleak_reporter::attribute::suppress;
use libleak_reporter::model::GroupBy;
use libleak_reporter::options::{GrowthOptions, Moment, Suppression};
use libleak_reporter::Options;

/// Find memory leaks in programs and the native extensions they load.
#[derive(Parser)]
#[command(name = "libleak", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// What the report is printed as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// For people (the default).
    Text,
    /// One JSON document (schema: docs/report-schema.md); `--json` says the same.
    Json,
    /// Brendan Gregg's folded stacks, `frame;frame;...;frame BYTES` per merged stack, outermost
    /// frame first: input for flamegraph.pl, inferno and speedscope.
    Folded,
    /// A gzipped pprof profile (profile.proto) for `go tool pprof`, Pyroscope or Grafana:
    /// binary, so it is never written to a terminal.
    Pprof,
}

/// How to report: the options every subcommand that reports shares.
#[derive(clap::Args, Clone)]
pub struct ReportArgs {
    /// Print the report as one JSON document (schema: docs/report-schema.md); the same as
    /// `--format json`.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
    /// Print the report as text, JSON, folded stacks (flame graph input) or a gzipped pprof
    /// profile. folded and pprof hold the stacks of the rows the report lists, with their
    /// leaked bytes (and blocks, in pprof): `--limit 0` puts every row in. Several traces give
    /// one output; in folded, each stack then starts with a `program (pid N)` frame.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Also write the report as one self-contained HTML page to FILE (no network needed to
    /// view it): summary, flame graph of leaked bytes by stack, rows that open onto their
    /// stacks; with --growth, the live-bytes timeline and the growing sites. What is printed
    /// does not change.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// List at most this many leaks, largest first; 0 lists all.
    #[arg(long, default_value_t = 25)]
    pub limit: usize,
    /// Keep CPython's own frames in stacks that show Python frames: its native ones (the eval
    /// loop and call plumbing) and importlib's Python ones.
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
    /// Also list what a child of a traced process that ended before its exit scan (a pool's
    /// terminated worker) allocated itself, never judged (by default one summary line).
    #[arg(long)]
    pub show_unjudged: bool,
    /// Suppress leaks matching this file's `leak:PATTERN` lines (LeakSanitizer's syntax);
    /// may be given several times.
    #[arg(long, value_name = "FILE")]
    pub suppressions: Vec<PathBuf>,
    /// Do not apply libleak's built-in suppressions (see `libleak suppressions`).
    #[arg(long)]
    pub no_builtin_suppressions: bool,
    /// Exit with status 23 when the leaked bytes exceed BYTES (default 0): definitely lost,
    /// indirectly lost, and unclassified (no complete scan at exit said which, so they may be
    /// either); possibly lost, reachable, runtime leftovers and suppressed blocks do not count.
    /// `--fail-on-leak=1000` or `--fail-on-leak 1000`.
    #[arg(long, value_name = "BYTES", num_args = 0..=1, require_equals = true, default_missing_value = "0")]
    pub fail_on_leak: Option<u64>,
    /// Instead of what leaked, report memory that stays reachable but keeps growing while the
    /// program runs (an unbounded dict, a list of listeners, a cache without eviction): the
    /// sites whose live bytes trend upward until Python's finalisation, most growth first,
    /// each with its Python line, native frames and a sparkline. --limit applies; --group-by,
    /// --show-* and suppressions do not.
    #[arg(long, conflicts_with = "fail_on_leak")]
    pub growth: bool,
    /// With --growth (implied): also list, per site, what was allocated between FROM and TO
    /// and is still live at TO, and (apart) what was freed then of older blocks. FROM and TO
    /// are event numbers, `seq:N` (the JSON timeline gives them), or seconds since the start,
    /// `Ns`, for traces that record times.
    #[arg(long, num_args = 2, value_names = ["FROM", "TO"], conflicts_with = "fail_on_leak")]
    pub between: Vec<Moment>,
    /// With --growth (implied): exit with status 24 when a growing site gained more than BYTES
    /// (default 0: any growing site). `--fail-on-growth=100000` or `--fail-on-growth 100000`.
    #[arg(
        long,
        value_name = "BYTES",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "0",
        conflicts_with = "fail_on_leak"
    )]
    pub fail_on_growth: Option<u64>,
}

/// libleak's built-in suppressions (unless turned off) and those of the files given.
fn suppressions(no_builtin: bool, files: &[PathBuf]) -> Result<Vec<Suppression>> {
    let mut suppressions = if no_builtin { Vec::new() } else { suppress::builtin() };
    for path in files {
        suppressions.extend(suppress::load(path)?);
    }
    Ok(suppressions)
}

impl ReportArgs {
    /// The report options these flags ask for, suppression files read.
    pub fn options(&self) -> Result<Options> {
        let suppressions = suppressions(self.no_builtin_suppressions, &self.suppressions)?;
        Ok(Options {
            limit: self.limit,
            show_interpreter_frames: self.show_interpreter_frames,
            group_by: self.group_by,
            show_reachable: self.show_reachable,
            show_leftovers: self.show_leftovers,
            show_unjudged: self.show_unjudged,
            suppressions,
        })
    }
}

impl ReportArgs {
    /// The format asked for, `--json` read as `--format json`.
    pub fn output_format(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            self.format
        }
    }

    /// Whether the growth report is asked for (`--growth`, or a flag that implies it).
    pub fn growth_mode(&self) -> bool {
        self.growth || !self.between.is_empty() || self.fail_on_growth.is_some()
    }

    /// The growth report options these flags ask for.
    pub fn growth_options(&self) -> GrowthOptions {
        GrowthOptions {
            limit: self.limit,
            show_interpreter_frames: self.show_interpreter_frames,
            // Given twice, the last window counts.
            between: self
                .between
                .rchunks_exact(2)
                .next()
                .map(|pair| (pair[0].clone(), pair[1].clone())),
        }
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Report what a traced process left allocated at exit, ranked by bytes. Given several
    /// traces, or a directory (every `*.trace` in it), reports each process after a one-line
    /// summary per process.
    ///
    /// The report goes to stdout, or to the file `--output` names; `--format pprof` (binary)
    /// is refused when stdout is a terminal: give `--output FILE` or redirect it. `--html
    /// FILE` writes an HTML page besides.
    Report {
        /// Trace files written by libleak.so, or directories holding them.
        #[arg(required = true, value_name = "TRACE|DIR")]
        traces: Vec<PathBuf>,
        /// Write the report to FILE instead of stdout (written once the report is made).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        #[command(flatten)]
        report: ReportArgs,
    },
    /// Run a command with libleak.so preloaded, then report on the traces of exactly the
    /// processes it started, on stderr (or `--report-file`): the command's own output stays
    /// its own. Signals sent to libleak are passed on to the command. Exits with the command's
    /// status (128+N when a signal N killed it), or 23 under `--fail-on-leak` (24 under
    /// `--fail-on-growth`).
    Run {
        /// Where the traces go: a path in which `%p` becomes the pid, or a directory ending in
        /// `/`; by default `libleak.<program>.<pid>.trace` in the current directory. A name
        /// taken gets `.N` before `.trace`.
        #[arg(long = "output", value_name = "OUTPUT")]
        trace_template: Option<String>,
        /// Write the report to this file instead of stderr (needed by `--format pprof`, which is
        /// binary).
        #[arg(long, value_name = "PATH")]
        report_file: Option<PathBuf>,
        #[command(flatten)]
        report: ReportArgs,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// List libleak's built-in suppressions and why each exists.
    Suppressions,
    /// Compare the leaks of two runs ("did my fix work"): sites fixed, new, and changed.
    ///
    /// Both traces are reported with every row (no --limit), and rows are matched by site:
    /// the owner's function, file and line (the innermost frame's when no frame owns the row)
    /// and the Python line that called it; addresses and module paths, which change between
    /// runs, are not compared. Rows of one run on the same site are added up. A site is fixed
    /// when only BEFORE leaks there, new when only AFTER does, changed when both do with other
    /// bytes or blocks, unchanged otherwise.
    ///
    /// Exits 0, or with --fail-on-new 23 when AFTER leaks at a new site or more bytes at an old
    /// one; 2 when a trace cannot be read.
    ///
    /// --json prints one document: {"format": "libleak-diff", "version": 1, "before": {"trace",
    /// "sites", "bytes", "blocks"}, "after": {same}, "fixed": [ROW], "new": [ROW], "changed":
    /// [ROW], "unchanged": N}, where ROW is {"site": {"function", "file", "line", "python":
    /// {"function", "file", "line"} or null}, "kind" (the row's class, as in the leak report),
    /// "before": {"bytes", "blocks"} or null, "after": the same or null, "bytes_delta",
    /// "blocks_delta"}; fixed and new are largest first, changed by the size of the change.
    Diff(DiffArgs),
}

/// The flags of `libleak diff`.
#[derive(clap::Args, Clone)]
pub struct DiffArgs {
    /// The trace of the run before the change.
    #[arg(value_name = "BEFORE.trace")]
    pub before: PathBuf,
    /// The trace of the run after it.
    #[arg(value_name = "AFTER.trace")]
    pub after: PathBuf,
    /// Print the comparison as one JSON document (schema above).
    #[arg(long)]
    pub json: bool,
    /// Exit with status 23 when AFTER leaks at a site BEFORE did not, or more bytes at one it
    /// did.
    #[arg(long)]
    pub fail_on_new: bool,
    /// Suppress leaks matching this file's `leak:PATTERN` lines in both runs; may be given
    /// several times.
    #[arg(long, value_name = "FILE")]
    pub suppressions: Vec<PathBuf>,
    /// Do not apply libleak's built-in suppressions (see `libleak suppressions`).
    #[arg(long)]
    pub no_builtin_suppressions: bool,
}

impl DiffArgs {
    /// The options both runs are reported with: every row, suppression files read.
    pub fn options(&self) -> Result<Options> {
        let suppressions = suppressions(self.no_builtin_suppressions, &self.suppressions)?;
        Ok(Options {
            limit: 0,
            ..Options::with_suppressions(suppressions)
        })
    }
}

/// Flags whose value is optional and a number: `--fail-on-leak N` is spelled for clap as
/// `--fail-on-leak=N`, and so is `--fail-on-growth N`.
const OPTIONAL_NUMBER_FLAGS: &[&str] = &["--fail-on-leak", "--fail-on-growth"];

/// The command line with `--fail-on-leak N` (a separate number) spelled `--fail-on-leak=N`,
/// and `--fail-on-growth N` likewise.
///
/// The flag's value is optional, so clap only takes it when attached with `=`: otherwise
/// `libleak report --fail-on-leak TRACE` would read the trace's name as the value. A word
/// made only of digits right after the flag is its value, never a trace or a program: it is
/// attached here. Reading stops at `--` and, for `run`, at the command, whose words are
/// never touched.
pub fn attach_fail_on_leak_values(args: Vec<OsString>) -> Vec<OsString> {
    let cli = Cli::command();
    let mut out: Vec<OsString> = Vec::with_capacity(args.len());
    let mut words = args.into_iter();
    out.extend(words.next());
    let mut subcommand: Option<clap::Command> = None;
    while let Some(word) = words.next() {
        let text = word.to_string_lossy().into_owned();
        if text == "--" {
            out.push(word);
            break;
        }
        let Some(current) = &subcommand else {
            subcommand = cli.find_subcommand(&text).cloned();
            out.push(word);
            if subcommand.is_none() && !text.starts_with('-') {
                break;
            }
            continue;
        };
        if OPTIONAL_NUMBER_FLAGS.contains(&text.as_str()) {
            let mut rest = words.clone();
            if let Some(value) = rest.next().filter(|v| {
                let v = v.to_string_lossy();
                !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())
            }) {
                out.push(format!("{text}={}", value.to_string_lossy()).into());
                words = rest;
                continue;
            }
            out.push(word);
            continue;
        }
        // An option that takes the next words as its values (`--between` two): pass them all.
        let values = text
            .strip_prefix("--")
            .filter(|t| !t.contains('='))
            .and_then(|long| {
                current.get_arguments().find(|arg| {
                    arg.get_long() == Some(long) && arg.get_action().takes_values() && !arg.is_require_equals_set()
                })
            })
            .map_or(0, |arg| arg.get_num_args().map_or(1, |range| range.min_values().max(1)));
        let positional = !text.starts_with('-');
        out.push(word);
        if values > 0 {
            out.extend(words.by_ref().take(values));
        } else if positional && current.get_name() == "run" {
            break;
        }
    }
    out.extend(words);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached(args: &[&str]) -> Vec<String> {
        attach_fail_on_leak_values(args.iter().map(OsString::from).collect())
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect()
    }

    #[test]
    fn a_number_after_fail_on_leak_is_its_value_and_nothing_else_is() {
        assert_eq!(
            attached(&[
                "libleak",
                "run",
                "--fail-on-leak",
                "1000",
                "--",
                "python3",
                "--fail-on-leak",
                "5"
            ]),
            [
                "libleak",
                "run",
                "--fail-on-leak=1000",
                "--",
                "python3",
                "--fail-on-leak",
                "5"
            ]
        );
        assert_eq!(
            attached(&["libleak", "run", "--fail-on-leak", "prog", "--fail-on-leak", "7"]),
            ["libleak", "run", "--fail-on-leak", "prog", "--fail-on-leak", "7"]
        );
        assert_eq!(
            attached(&["libleak", "report", "--limit", "5", "--fail-on-leak", "9", "t.trace"]),
            ["libleak", "report", "--limit", "5", "--fail-on-leak=9", "t.trace"]
        );
        assert_eq!(
            attached(&["libleak", "report", "--fail-on-leak", "t.trace"]),
            ["libleak", "report", "--fail-on-leak", "t.trace"]
        );
        // `--output 12` takes 12 as its value: the next flag is still read.
        assert_eq!(
            attached(&["libleak", "run", "--output", "12", "--fail-on-leak", "3", "x"]),
            ["libleak", "run", "--output", "12", "--fail-on-leak=3", "x"]
        );
        assert_eq!(attached(&["libleak", "--version"]), ["libleak", "--version"]);
        // `--between` takes two words, and a command after them is still untouched.
        assert_eq!(
            attached(&[
                "libleak",
                "run",
                "--between",
                "seq:1",
                "seq:9",
                "--fail-on-growth",
                "5",
                "prog",
                "--fail-on-growth",
                "6"
            ]),
            [
                "libleak",
                "run",
                "--between",
                "seq:1",
                "seq:9",
                "--fail-on-growth=5",
                "prog",
                "--fail-on-growth",
                "6"
            ]
        );
    }

    #[test]
    fn growth_flags_imply_the_growth_report_and_exclude_the_leak_gate() {
        let parse =
            |args: &[&str]| Cli::try_parse_from(attach_fail_on_leak_values(args.iter().map(OsString::from).collect()));
        let Command::Report { report, .. } = parse(&["libleak", "report", "--between", "seq:10", "seq:20", "t"])
            .unwrap()
            .command
        else {
            panic!("a report command");
        };
        assert!(report.growth_mode());
        assert_eq!(
            report.growth_options().between,
            Some((Moment::Seq(10), Moment::Seq(20)))
        );
        let Command::Report { report, .. } = parse(&["libleak", "report", "--fail-on-growth", "t"]).unwrap().command
        else {
            panic!("a report command");
        };
        assert_eq!(report.fail_on_growth, Some(0));
        assert!(report.growth_mode());
        assert!(parse(&["libleak", "report", "--growth", "--fail-on-leak", "t"]).is_err());
        assert!(parse(&["libleak", "report", "--between", "10", "20", "t"]).is_err());
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
