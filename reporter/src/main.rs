//! The `libleak` command: a thin CLI over the reporter library. It parses flags ([`cli`]),
//! calls the library, prints what it returns and maps the outcome to an exit status.
//!
//! Must never hold report logic: deciding, grouping and formatting belong to the library.

mod cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use libleak_reporter::model::Report;
use libleak_reporter::options::BUILTIN;
use libleak_reporter::render::{json, text};
use libleak_reporter::symbolize::Symbolizer;
use libleak_reporter::{Options, ReadProgress};

use cli::{Cli, Command, ReportArgs};

/// The exit status of `--fail-on-leak` when leaks exceed the threshold (LeakSanitizer's).
const LEAK_EXIT_STATUS: u8 = 23;
/// The exit status when libleak itself fails (a trace unreadable, a command not run).
const FAILURE_EXIT_STATUS: u8 = 2;

/// Prints the report; false when `--fail-on-leak` was given and leaks exceed its threshold.
fn print_report(path: &Path, args: &ReportArgs) -> Result<bool> {
    let options = args.options()?;
    let report = read_report(path, &options, &mut Symbolizer::default())?;
    if args.json {
        println!("{}", json::to_json(&report));
    } else {
        print!("{}", text::to_text(&report));
    }
    Ok(within_limit(&report, args))
}

fn read_report(path: &Path, options: &Options, symbolizer: &mut Symbolizer) -> Result<Report> {
    libleak_reporter::report(path, options, symbolizer, &mut Progress::new(path))
        .with_context(|| path.display().to_string())
}

/// A progress bar on stderr while a trace is read, when stderr is a terminal and the read
/// takes long enough to be worth one (never in pipes, files or CI logs).
struct Progress {
    name: String,
    started: Instant,
    terminal: bool,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// Reads quicker than this show no bar at all.
    const AFTER: Duration = Duration::from_millis(500);

    fn new(path: &Path) -> Progress {
        use std::io::IsTerminal;
        Progress {
            name: path
                .file_name()
                .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned()),
            started: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            bar: None,
        }
    }
}

impl ReadProgress for Progress {
    fn advance(&mut self, read: u64, size: u64) {
        if !self.terminal || self.started.elapsed() < Self::AFTER {
            return;
        }
        let name = &self.name;
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(Some(size), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "libleak: reading {msg} [{bar:30}] {percent:>3}% ({bytes} of {total_bytes})",
            )
            .map(|style| style.progress_chars("## "))
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_message(name.clone());
            bar
        });
        bar.set_position(read.min(size));
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn within_limit(report: &Report, args: &ReportArgs) -> bool {
    args.fail_on_leak
        .is_none_or(|limit| report.summary.leaked_bytes() <= limit)
}

/// The trace files named by `inputs`: files as given, directories expanded to their
/// `*.trace` files in name order.
fn trace_files(inputs: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for input in inputs {
        if !input.is_dir() {
            files.push(input.clone());
            continue;
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(input)
            .with_context(|| format!("cannot list {}", input.display()))?
            .filter_map(|entry| Some(entry.ok()?.path()))
            .filter(|path| path.extension().is_some_and(|e| e == "trace") && path.is_file())
            .collect();
        if found.is_empty() {
            bail!("{}: no .trace files in this directory", input.display());
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

/// Reports every process: a summary line each (in start order), then each report. A trace
/// that cannot be read gets a one-line error in the summary and makes the command fail.
fn print_reports(inputs: &[PathBuf], args: &ReportArgs) -> Result<ExitCode> {
    let files = trace_files(inputs)?;
    if let [single] = files.as_slice() {
        return print_report(single, args).map(exit_for_limit);
    }
    let options = args.options()?;
    let mut symbolizer = Symbolizer::default();
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for path in &files {
        match read_report(path, &options, &mut symbolizer) {
            Ok(report) => reports.push(report),
            Err(error) => failures.push(format!("{error:#}")),
        }
    }
    reports.sort_by_key(|r| (r.header.process.start_time_unix_ns, r.header.process.pid));
    if args.json {
        println!("{}", json::to_json_many(&reports));
    } else {
        println!("libleak: {} processes", reports.len() + failures.len());
        for report in &reports {
            println!("  {}", text::summary_line(report));
        }
        for failure in &failures {
            println!("  unreadable: {failure}");
        }
        for report in &reports {
            println!();
            print!("{}", text::to_text(report));
        }
    }
    for failure in &failures {
        eprintln!("libleak: {failure}");
    }
    if !failures.is_empty() {
        return Ok(ExitCode::from(FAILURE_EXIT_STATUS));
    }
    Ok(exit_for_limit(reports.iter().all(|r| within_limit(r, args))))
}

fn exit_for_limit(within_limit: bool) -> ExitCode {
    if within_limit {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(LEAK_EXIT_STATUS)
    }
}

fn print_builtin_suppressions() {
    println!("# libleak's built-in suppressions (--no-builtin-suppressions turns them off)");
    for builtin in BUILTIN {
        println!("# {}\nleak:{}", builtin.reason, builtin.pattern);
    }
}

/// Runs the command, reports on its traces, and exits with the command's status (or the
/// report's, when the command succeeded).
fn run(trace_template: Option<String>, args: &ReportArgs, command: &[String]) -> Result<ExitCode> {
    let run = libleak_reporter::run::run(command, trace_template.as_deref())?;
    let report_status = print_reports(&run.traces, args)?;
    use std::os::unix::process::ExitStatusExt;
    let code = run
        .status
        .code()
        .unwrap_or_else(|| 128 + run.status.signal().unwrap_or(0));
    if code == 0 && report_status != ExitCode::SUCCESS {
        return Ok(report_status);
    }
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Report { traces, report } => print_reports(&traces, &report),
        Command::Suppressions => {
            print_builtin_suppressions();
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            trace_template,
            report,
            command,
        } => run(trace_template, &report, &command),
    };
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("libleak: {error:#}");
            ExitCode::from(FAILURE_EXIT_STATUS)
        }
    }
}
