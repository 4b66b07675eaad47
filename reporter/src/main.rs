//! The `libleak` command: a thin CLI over the reporter library. It parses flags ([`cli`]),
//! calls the library, prints what it returns and maps the outcome to an exit status.
//!
//! Must never hold report logic: deciding, grouping and formatting belong to the library.

mod cli;

use std::fs::File;
use std::io::{BufWriter, ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use libleak_reporter::diff;
use libleak_reporter::growth::GrowthReport;
use libleak_reporter::model::Report;
use libleak_reporter::options::{GrowthOptions, BUILTIN};
use libleak_reporter::render::json::{self, Unreadable};
use libleak_reporter::render::{folded, growth, html, pprof, text};
use libleak_reporter::replay::parents::ParentTraces;
use libleak_reporter::symbolize::Symbolizer;
use libleak_reporter::{Options, ReadProgress};

use cli::{Cli, Command, DiffArgs, Format, ReportArgs};

/// The exit status of `--fail-on-leak` when leaks exceed the threshold (LeakSanitizer's).
const LEAK_EXIT_STATUS: u8 = 23;
/// The exit status of `--fail-on-growth` when a growing site exceeds the threshold (the leak
/// gate's plus one, so that a script can tell them apart).
const GROWTH_EXIT_STATUS: u8 = 24;
/// The exit status when libleak itself fails (a trace unreadable, a command not run).
const FAILURE_EXIT_STATUS: u8 = 2;

/// Writes the leak report of `reports` to `out` in the format asked for, and the HTML page
/// when `--html` asks for one. `single`: one trace was given (its document is not wrapped).
fn write_leak_report(
    reports: &[Report],
    failures: &[Unreadable],
    single: bool,
    args: &ReportArgs,
    out: &mut dyn Write,
) -> Result<()> {
    let document = || match reports {
        [report] if single => json::to_json(report),
        _ => json::to_json_many(reports, failures),
    };
    if let Some(path) = &args.html {
        write_html(path, &document())?;
    }
    match args.output_format() {
        Format::Json => writeln!(out, "{}", document())?,
        Format::Folded => write!(out, "{}", folded::to_folded(reports))?,
        Format::Pprof => out.write_all(&pprof::to_pprof(reports).context("cannot compress the pprof profile")?)?,
        Format::Text if single => {
            for report in reports {
                write!(out, "{}", text::to_text(report))?;
            }
        }
        Format::Text => {
            writeln!(out, "libleak: {} processes", reports.len() + failures.len())?;
            for report in reports {
                writeln!(out, "  {}", text::summary_line(report))?;
            }
            for failure in failures {
                writeln!(out, "  unreadable: {}", failure.error)?;
            }
            for report in reports {
                writeln!(out)?;
                write!(out, "{}", text::to_text(report))?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

fn write_html(path: &Path, document: &serde_json::Value) -> Result<()> {
    std::fs::write(path, html::page(document))
        .with_context(|| format!("cannot write the HTML report to {}", path.display()))
}

fn read_report(
    path: &Path,
    options: &Options,
    symbolizer: &mut Symbolizer,
    parents: &mut ParentTraces,
) -> Result<Report> {
    libleak_reporter::report_in_family(path, options, symbolizer, &mut Progress::new(path), parents)
        .with_context(|| path.display().to_string())
}

/// Reads the reports of many traces on as many threads as there are cores (at most
/// [`READERS`]), each with its own symbolizer and parents' traces: each thread takes the next
/// trace of the list when it is done with one, so that a family's children, listed in the
/// order they were forked, come to each thread in that order and each thread reads their
/// parent's trace once, up to each fork. Returns the reports and, for the traces that could not be read,
/// why; a bar on a terminal counts the traces read.
fn read_many<T: Send, E: std::error::Error + Send + Sync + 'static>(
    files: &[PathBuf],
    read: impl Fn(&Path, &mut Symbolizer, &mut ParentTraces) -> Result<T, E> + Sync,
) -> (Vec<T>, Vec<Unreadable>) {
    use std::io::IsTerminal;
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, READERS)
        .min(files.len().max(1));
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::with_draw_target(Some(files.len() as u64), ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template("libleak: reading traces [{bar:30}] {pos} of {len}") {
            bar.set_style(style.progress_chars("## "));
        }
        bar
    });
    let read = &read;
    let bar = &bar;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let next = &next;
    let next_file = |next: &std::sync::atomic::AtomicUsize| {
        let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        files.get(index).map(|path| (index, path))
    };
    let results: Vec<(usize, Result<T, Unreadable>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(move || {
                    let mut symbolizer = Symbolizer::default();
                    let mut parents = ParentTraces::default();
                    let mut done = Vec::new();
                    while let Some((index, path)) = next_file(next) {
                        let result = read(path, &mut symbolizer, &mut parents).map_err(|error| Unreadable {
                            trace: path.display().to_string(),
                            error: format!("{:#}", anyhow::Error::new(error).context(path.display().to_string())),
                        });
                        done.push((index, result));
                        if let Some(bar) = bar {
                            bar.inc(1);
                        }
                    }
                    done
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|worker| worker.join().unwrap_or_default())
            .collect()
    });
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let mut results = results;
    results.sort_by_key(|(index, _)| *index);
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for (_, result) in results {
        match result {
            Ok(report) => reports.push(report),
            Err(unreadable) => failures.push(unreadable),
        }
    }
    (reports, failures)
}

/// Most threads reading traces at once.
const READERS: usize = 8;

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

/// Reports every process to `out`: a summary line each (in start order), then each report.
/// A trace that cannot be read gets a one-line error in the summary (an `unreadable` entry in
/// JSON) and makes the command fail.
fn print_reports(files: &[PathBuf], args: &ReportArgs, out: &mut dyn Write) -> Result<ExitCode> {
    if args.growth_mode() {
        return print_growth_reports(files, args, out);
    }
    let options = args.options()?;
    if let [single] = files {
        let report = read_report(
            single,
            &options,
            &mut Symbolizer::default(),
            &mut ParentTraces::default(),
        )?;
        write_leak_report(std::slice::from_ref(&report), &[], true, args, out)?;
        return Ok(exit_for_limit(within_limit(&report, args)));
    }
    let (mut reports, failures) = read_many(files, |path, symbolizer, parents| {
        libleak_reporter::report_in_family(path, &options, symbolizer, &mut (), parents)
    });
    reports.sort_by_key(|r| (r.header.process.start_time_unix_ns, r.header.process.pid));
    // A leak 50 fork children inherited is one leak: shown once, on the parent's row.
    libleak_reporter::processes::fold_inherited(&mut reports);
    write_leak_report(&reports, &failures, false, args, out)?;
    for failure in &failures {
        warn(&failure.error);
    }
    if !failures.is_empty() {
        return Ok(ExitCode::from(FAILURE_EXIT_STATUS));
    }
    Ok(exit_for_limit(reports.iter().all(|r| within_limit(r, args))))
}

/// Refuses what cannot be drawn, before any trace is read or command run.
fn check_format(args: &ReportArgs) -> Result<()> {
    let format = args.output_format();
    if args.growth_mode() && matches!(format, Format::Folded | Format::Pprof) {
        bail!("--format folded and pprof draw the leak report; the growth report is text, JSON (--json) or --html");
    }
    Ok(())
}

/// `libleak report`: to stdout, or into `--output`'s file once the report is made (so that
/// an unreadable trace leaves no empty file behind).
fn report_command(inputs: &[PathBuf], output: Option<&Path>, args: &ReportArgs) -> Result<ExitCode> {
    check_format(args)?;
    let binary = args.output_format() == Format::Pprof;
    if output.is_none() && binary && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        bail!("--format pprof is binary and stdout is a terminal: give --output FILE or redirect stdout");
    }
    let files = trace_files(inputs)?;
    let Some(path) = output else {
        return print_reports(&files, args, &mut std::io::stdout().lock());
    };
    let mut buffer = Vec::new();
    let status = print_reports(&files, args, &mut buffer)?;
    std::fs::write(path, buffer).with_context(|| format!("cannot write the report to {}", path.display()))?;
    Ok(status)
}

/// `libleak diff`: both traces reported with every row, compared by site.
fn diff_command(args: &DiffArgs) -> Result<ExitCode> {
    let options = args.options()?;
    for path in [&args.before, &args.after] {
        if path.is_dir() {
            bail!("{}: a directory; libleak diff compares two trace files", path.display());
        }
    }
    let mut symbolizer = Symbolizer::default();
    let mut parents = ParentTraces::default();
    let before = read_report(&args.before, &options, &mut symbolizer, &mut parents)?;
    let after = read_report(&args.after, &options, &mut symbolizer, &mut parents)?;
    let comparison = diff::diff(&before, &after);
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", diff::to_json(&comparison))?;
    } else {
        write!(out, "{}", diff::to_text(&comparison))?;
    }
    out.flush()?;
    Ok(exit_for_limit(!(args.fail_on_new && comparison.worse())))
}

fn read_growth_report(path: &Path, options: &GrowthOptions, symbolizer: &mut Symbolizer) -> Result<GrowthReport> {
    libleak_reporter::growth::report(path, options, symbolizer, &mut Progress::new(path))
        .with_context(|| path.display().to_string())
}

fn growth_within_limit(report: &GrowthReport, args: &ReportArgs) -> bool {
    args.fail_on_growth.is_none_or(|limit| report.largest_growth() <= limit)
}

/// The growth report of every process to `out`, as [`print_reports`] does for leaks.
fn print_growth_reports(files: &[PathBuf], args: &ReportArgs, out: &mut dyn Write) -> Result<ExitCode> {
    let options = args.growth_options();
    if let [single] = files {
        let report = read_growth_report(single, &options, &mut Symbolizer::default())?;
        if let Some(path) = &args.html {
            write_html(path, &growth::json::to_json(&report))?;
        }
        if args.output_format() == Format::Json {
            writeln!(out, "{}", growth::json::to_json(&report))?;
        } else {
            write!(out, "{}", growth::to_text(&report))?;
        }
        out.flush()?;
        return Ok(exit_for_growth(growth_within_limit(&report, args)));
    }
    let (mut reports, failures) = read_many(files, |path, symbolizer, _| {
        libleak_reporter::growth::report(path, &options, symbolizer, &mut ())
    });
    reports.sort_by_key(|r| (r.header.process.start_time_unix_ns, r.header.process.pid));
    if let Some(path) = &args.html {
        write_html(path, &growth::json::to_json_many(&reports, &failures))?;
    }
    if args.output_format() == Format::Json {
        writeln!(out, "{}", growth::json::to_json_many(&reports, &failures))?;
    } else {
        writeln!(out, "libleak: {} processes", reports.len() + failures.len())?;
        for failure in &failures {
            writeln!(out, "  unreadable: {}", failure.error)?;
        }
        for report in &reports {
            writeln!(out)?;
            write!(out, "{}", growth::to_text(report))?;
        }
    }
    out.flush()?;
    for failure in &failures {
        warn(&failure.error);
    }
    if !failures.is_empty() {
        return Ok(ExitCode::from(FAILURE_EXIT_STATUS));
    }
    Ok(exit_for_growth(reports.iter().all(|r| growth_within_limit(r, args))))
}

fn exit_for_growth(within_limit: bool) -> ExitCode {
    if within_limit {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(GROWTH_EXIT_STATUS)
    }
}

fn exit_for_limit(within_limit: bool) -> ExitCode {
    if within_limit {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(LEAK_EXIT_STATUS)
    }
}

fn print_builtin_suppressions(out: &mut dyn Write) -> Result<ExitCode> {
    writeln!(
        out,
        "# libleak's built-in suppressions (--no-builtin-suppressions turns them off)"
    )?;
    for builtin in BUILTIN {
        writeln!(out, "# {}\nleak:{}", builtin.reason, builtin.pattern)?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// One line on stderr. A stderr that cannot be written to is no reason to stop (or panic, as
/// `eprintln!` would): the exit status still tells.
fn warn(message: &str) {
    let _ = writeln!(std::io::stderr(), "libleak: {message}");
}

/// Whether `error` comes from writing into a pipe whose reader has gone (`libleak report T |
/// head -1`): not a failure of libleak, which then stops quietly, as `cat` and ripgrep do.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == ErrorKind::BrokenPipe)
    })
}

/// Runs the command, reports on its traces (on stderr, or into `--report-file`), and exits
/// with the command's status, or the report's when the command succeeded. A report that
/// cannot be made never hides the command's own failure.
fn run(
    trace_template: Option<String>,
    report_file: Option<PathBuf>,
    args: &ReportArgs,
    command: &[String],
) -> Result<ExitCode> {
    // Options and the report files are checked before the command runs, not after.
    args.options()?;
    check_format(args)?;
    if args.output_format() == Format::Pprof && report_file.is_none() {
        bail!("--format pprof is binary: give --report-file FILE (the report would go to stderr)");
    }
    if let Some(path) = &args.html {
        File::create(path).with_context(|| format!("cannot write the HTML report to {}", path.display()))?;
    }
    let mut out: Box<dyn Write> = match &report_file {
        Some(path) => Box::new(BufWriter::new(
            File::create(path).with_context(|| format!("cannot write the report to {}", path.display()))?,
        )),
        None => Box::new(std::io::stderr()),
    };
    let run = libleak_reporter::run::run(command, trace_template.as_deref())?;
    for warning in &run.warnings {
        warn(warning);
    }
    // On a terminal each process's libleak.so named the private file it wrote; where the
    // trace is now is what the user can use (pipes and files get the report alone).
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        for trace in &run.traces {
            warn(&format!("trace written to {}", trace.display()));
        }
    }
    use std::os::unix::process::ExitStatusExt;
    let code = run
        .status
        .code()
        .unwrap_or_else(|| 128 + run.status.signal().unwrap_or(0));
    let command_status = ExitCode::from(code.clamp(0, 255) as u8);
    let report_status = if run.traces.is_empty() {
        warn("the command left no trace (was libleak.so loaded? a static or set-uid program ignores LD_PRELOAD)");
        ExitCode::from(FAILURE_EXIT_STATUS)
    } else {
        match print_reports(&run.traces, args, &mut out) {
            Ok(status) => status,
            Err(error) => {
                if !is_broken_pipe(&error) {
                    warn(&format!("{error:#}"));
                }
                ExitCode::from(FAILURE_EXIT_STATUS)
            }
        }
    };
    if code == 0 {
        return Ok(report_status);
    }
    Ok(command_status)
}

fn main() -> ExitCode {
    let args = cli::attach_fail_on_leak_values(std::env::args_os().collect());
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(error) => {
            // Help and version go to stdout, which may be a closed pipe: never panic on it.
            let _ = error.print();
            return ExitCode::from(error.exit_code().clamp(0, 255) as u8);
        }
    };
    let result = match cli.command {
        Command::Report { traces, output, report } => report_command(&traces, output.as_deref(), &report),
        Command::Diff(args) => diff_command(&args),
        Command::Suppressions => print_builtin_suppressions(&mut std::io::stdout().lock()),
        Command::Run {
            trace_template,
            report_file,
            report,
            command,
        } => run(trace_template, report_file, &report, &command),
    };
    match result {
        Ok(code) => code,
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            warn(&format!("{error:#}"));
            ExitCode::from(FAILURE_EXIT_STATUS)
        }
    }
}
