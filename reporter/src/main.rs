//! The `libleak` command: a thin CLI over the reporter library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use libleak_reporter::replay::Trace;
use libleak_reporter::report::{self, GroupBy, ReportOptions};
use libleak_reporter::suppress;
use libleak_reporter::symbolize::Symbolizer;

/// Find memory leaks in programs and the native extensions they load.
#[derive(Parser)]
#[command(name = "libleak", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The exit status of `--fail-on-leak` when leaks exceed the threshold (LeakSanitizer's).
const LEAK_EXIT_STATUS: u8 = 23;

#[derive(clap::Args, Clone)]
struct OutputArgs {
    /// Print the report as one JSON document (schema: docs/report-schema.md).
    #[arg(long)]
    json: bool,
    /// List at most this many leaks, largest first; 0 lists all.
    #[arg(long, default_value_t = 25)]
    limit: usize,
    /// Keep CPython's own native frames (the eval loop and call plumbing) in stacks that
    /// show Python frames.
    #[arg(long)]
    show_interpreter_frames: bool,
    /// Group leaks by allocation site (the innermost frame outside the allocator), by whole
    /// stack, or by the innermost N frames; each row lists the distinct stacks under it.
    #[arg(long, default_value = "site", value_name = "site|stack|N")]
    group_by: GroupBy,
    /// Also list blocks still reachable at exit (by default one summary line).
    #[arg(long)]
    show_reachable: bool,
    /// Also list what the C runtime or the interpreter alone allocated and left at exit (by
    /// default one summary line).
    #[arg(long)]
    show_leftovers: bool,
    /// Suppress leaks matching this file's `leak:PATTERN` lines (LeakSanitizer's syntax);
    /// may be given several times.
    #[arg(long, value_name = "FILE")]
    suppressions: Vec<PathBuf>,
    /// Do not apply libleak's built-in suppressions (see `libleak suppressions`).
    #[arg(long)]
    no_builtin_suppressions: bool,
    /// Exit with status 23 when definitely and indirectly lost bytes exceed BYTES (default 0).
    #[arg(long, value_name = "BYTES", num_args = 0..=1, require_equals = true, default_missing_value = "0")]
    fail_on_leak: Option<u64>,
}

impl OutputArgs {
    fn options(&self) -> Result<ReportOptions> {
        let mut suppressions = if self.no_builtin_suppressions {
            Vec::new()
        } else {
            suppress::builtin()
        };
        for path in &self.suppressions {
            suppressions.extend(suppress::load(path)?);
        }
        Ok(ReportOptions {
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
enum Command {
    /// Report what a traced process left allocated at exit, ranked by bytes.
    Report {
        /// A trace file written by libleak.so.
        trace: PathBuf,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Run a command with libleak.so preloaded, then report on its trace. Exits with the
    /// command's status.
    Run {
        /// Where to write the trace (`%p` becomes the pid).
        #[arg(long)]
        output: Option<String>,
        #[command(flatten)]
        report: OutputArgs,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// List libleak's built-in suppressions and why each exists.
    Suppressions,
}

/// Prints the report; false when `--fail-on-leak` was given and leaks exceed its threshold.
fn print_report(path: &Path, output: &OutputArgs) -> Result<bool> {
    let options = output.options()?;
    let trace = Trace::open(path).with_context(|| path.display().to_string())?;
    let mut symbolizer = Symbolizer::default();
    let report = report::build(&trace, &path.display().to_string(), &mut symbolizer, &options);
    if output.json {
        println!("{}", report::to_json(&report));
    } else {
        print!("{}", report::to_text(&report));
    }
    Ok(output
        .fail_on_leak
        .is_none_or(|limit| report.summary.leaked_bytes() <= limit))
}

fn print_builtin_suppressions() {
    println!("# libleak's built-in suppressions (--no-builtin-suppressions turns them off)");
    for builtin in suppress::BUILTIN {
        println!("# {}\nleak:{}", builtin.reason, builtin.pattern);
    }
}

fn find_interposer() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("LIBLEAK_SO").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().context("cannot locate the libleak executable")?;
    let beside = exe.with_file_name("libleak.so");
    if beside.is_file() {
        return Ok(beside);
    }
    bail!("libleak.so not found next to {} (set LIBLEAK_SO)", exe.display())
}

fn run(output: Option<String>, report_args: OutputArgs, command: Vec<String>) -> Result<ExitCode> {
    let interposer = find_interposer()?;
    let template = match output {
        Some(path) => path,
        None => {
            let cwd = std::env::current_dir().context("cannot read the current directory")?;
            let program = libleak_format::program_name(&command);
            cwd.join(format!("libleak.{program}.%p.trace")).display().to_string()
        }
    };
    let preload = match std::env::var("LD_PRELOAD") {
        Ok(existing) if !existing.is_empty() => format!("{}:{existing}", interposer.display()),
        _ => interposer.display().to_string(),
    };
    let mut child = std::process::Command::new(&command[0])
        .args(&command[1..])
        .env("LD_PRELOAD", preload)
        .env("LIBLEAK_OUTPUT", &template)
        .spawn()
        .with_context(|| format!("cannot run {}", command[0]))?;
    let pid = child.id();
    let status = child.wait().context("waiting for the command")?;
    let trace = last_trace_of_exec_chain(&template.replace("%p", &pid.to_string()));
    let within_limit = print_report(&trace, &report_args)?;
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    if code == 0 && !within_limit {
        return Ok(ExitCode::from(LEAK_EXIT_STATUS));
    }
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// A program that execs keeps its pid, and each image writes its own trace: the first at
/// `path`, the next ones with numbered suffixes. The last one is the program that ran last.
fn last_trace_of_exec_chain(path: &str) -> PathBuf {
    let numbered = |n: u32| match path.strip_suffix(".trace") {
        Some(stem) => PathBuf::from(format!("{stem}.{n}.trace")),
        None => PathBuf::from(format!("{path}.{n}")),
    };
    let mut last = PathBuf::from(path);
    for n in 1.. {
        let next = numbered(n);
        if !next.is_file() {
            break;
        }
        last = next;
    }
    last
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Report { trace, output } => print_report(&trace, &output).map(|within_limit| {
            if within_limit {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(LEAK_EXIT_STATUS)
            }
        }),
        Command::Suppressions => {
            print_builtin_suppressions();
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            output,
            report,
            command,
        } => run(output, report, command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("libleak: {error:#}");
            ExitCode::from(2)
        }
    }
}
