//! The `libleak` command: a thin CLI over the reporter library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use libleak_reporter::attribute::suppress;
use libleak_reporter::model::{GroupBy, Report};
use libleak_reporter::render::{json, text};
use libleak_reporter::symbolize::Symbolizer;
use libleak_reporter::Options;

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
    fn options(&self) -> Result<Options> {
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
enum Command {
    /// Report what a traced process left allocated at exit, ranked by bytes. Given several
    /// traces, or a directory (every `*.trace` in it), reports each process after a one-line
    /// summary per process.
    Report {
        /// Trace files written by libleak.so, or directories holding them.
        #[arg(required = true, value_name = "TRACE|DIR")]
        traces: Vec<PathBuf>,
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
    let report = read_report(path, &options, &mut Symbolizer::default())?;
    if output.json {
        println!("{}", json::to_json(&report));
    } else {
        print!("{}", text::to_text(&report));
    }
    Ok(within_limit(&report, output))
}

fn read_report(path: &Path, options: &Options, symbolizer: &mut Symbolizer) -> Result<Report> {
    libleak_reporter::report(path, options, symbolizer, &mut Progress::new(path))
        .with_context(|| path.display().to_string())
}

/// A progress line on stderr while a trace is read, when stderr is a terminal and the read
/// takes long enough to be worth one (never in pipes, files or CI logs).
struct Progress {
    name: String,
    started: std::time::Instant,
    terminal: bool,
    shown: bool,
    last: std::time::Instant,
}

impl Progress {
    const AFTER: std::time::Duration = std::time::Duration::from_millis(500);
    const EVERY: std::time::Duration = std::time::Duration::from_millis(100);

    fn new(path: &Path) -> Progress {
        use std::io::IsTerminal;
        let now = std::time::Instant::now();
        Progress {
            name: path
                .file_name()
                .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned()),
            started: now,
            terminal: std::io::stderr().is_terminal(),
            shown: false,
            last: now,
        }
    }
}

impl libleak_reporter::ReadProgress for Progress {
    fn advance(&mut self, read: u64, size: u64) {
        let now = std::time::Instant::now();
        if !self.terminal || now - self.started < Self::AFTER || (self.shown && now - self.last < Self::EVERY) {
            return;
        }
        self.shown = true;
        self.last = now;
        let percent = (read * 100).checked_div(size).unwrap_or(0).min(100);
        const WIDTH: u64 = 30;
        let filled = (percent * WIDTH / 100) as usize;
        eprint!(
            "\r\x1b[Klibleak: reading {} [{}{}] {percent:>3}% ({} of {} MB)",
            self.name,
            "#".repeat(filled),
            " ".repeat(WIDTH as usize - filled),
            read / 1_000_000,
            size / 1_000_000
        );
    }

    fn finish(&mut self) {
        if self.shown {
            eprint!("\r\x1b[K");
            self.shown = false;
        }
    }
}

fn within_limit(report: &Report, output: &OutputArgs) -> bool {
    output
        .fail_on_leak
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
fn print_reports(inputs: &[PathBuf], output: &OutputArgs) -> Result<ExitCode> {
    let files = trace_files(inputs)?;
    if let [single] = files.as_slice() {
        return print_report(single, output).map(exit_for_limit);
    }
    let options = output.options()?;
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
    if output.json {
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
        return Ok(ExitCode::from(2));
    }
    Ok(exit_for_limit(reports.iter().all(|r| within_limit(r, output))))
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
    // File times have a coarser clock than SystemTime::now: allow for it.
    let started = std::time::SystemTime::now() - std::time::Duration::from_secs(1);
    let mut child = std::process::Command::new(&command[0])
        .args(&command[1..])
        .env("LD_PRELOAD", preload)
        .env("LIBLEAK_OUTPUT", &template)
        .spawn()
        .with_context(|| format!("cannot run {}", command[0]))?;
    let status = child.wait().context("waiting for the command")?;
    let traces = traces_of_run(&template, started);
    if traces.is_empty() {
        bail!("the command left no trace (expected {template})");
    }
    let report_status = print_reports(&traces, &report_args)?;
    use std::os::unix::process::ExitStatusExt;
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    if code == 0 && report_status != ExitCode::SUCCESS {
        return Ok(report_status);
    }
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// The traces written by a run: every process it started (exec'd images, forked and spawned
/// children inherit the template) writes a file named by the template, with its pid for `%p`
/// and a numeric suffix when the name was taken.
fn traces_of_run(template: &str, started: std::time::SystemTime) -> Vec<PathBuf> {
    let template = Path::new(template);
    let directory = template.parent().unwrap_or(Path::new("."));
    let name = template
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let (prefix, suffix) = match name.split_once("%p") {
        Some((prefix, suffix)) => (prefix.to_string(), suffix.to_string()),
        None => match name.strip_suffix(".trace") {
            Some(stem) => (stem.to_string(), ".trace".to_string()),
            None => (name.clone(), String::new()),
        },
    };
    let Ok(entries) = std::fs::read_dir(directory) else {
        return Vec::new();
    };
    let mut traces: Vec<PathBuf> = entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let fresh = entry.metadata().ok()?.modified().ok()? >= started;
            (fresh && file_name.starts_with(&prefix) && file_name.ends_with(&suffix)).then(|| entry.path())
        })
        .collect();
    traces.sort();
    traces
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Report { traces, output } => print_reports(&traces, &output),
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
