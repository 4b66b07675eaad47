//! Helpers for the end-to-end tests: locating the built `libleak.so` and `libleak`,
//! compiling fixtures into a per-test directory, running them plainly and under libleak,
//! reading the JSON report, and finding interpreters; shared assertions (`assert_leak`) too.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

/// The release build that `scripts/test` makes before running the tests.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LIBLEAK_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release")
}

fn built(name: &str) -> PathBuf {
    let path = target_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: build first with `cargo build --release` (scripts/test does)",
        path.display()
    );
    path
}

pub fn libleak_so() -> PathBuf {
    built("libleak.so")
}

pub fn libleak_bin() -> PathBuf {
    built("libleak")
}

pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// A scratch directory removed when dropped (kept if `LIBLEAK_KEEP_TEST_DIRS` is set).
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(label: &str) -> Scratch {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("libleak-test-{}-{label}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create scratch dir");
        Scratch { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("LIBLEAK_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// Runs a command, panicking with its output if it cannot start.
pub fn run(command: &mut Command) -> Output {
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

/// Compiles `sources` (from the fixtures directory) with `compiler` and `flags` into `output`.
pub fn compile(compiler: &str, sources: &[&str], output: &Path, flags: &[&str]) {
    let mut command = Command::new(compiler);
    command.args(["-g", "-O0", "-w"]);
    for source in sources {
        command.arg(fixtures_dir().join(source));
    }
    command.arg("-o").arg(output).args(flags);
    let out = run(&mut command);
    assert!(
        out.status.success(),
        "{compiler} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The 1-based line of `source` (in the fixtures directory) that contains `marker`.
pub fn line_of(source: &str, marker: &str) -> u64 {
    let text = std::fs::read_to_string(fixtures_dir().join(source)).expect("read fixture");
    let hits: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(marker))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(hits.len(), 1, "marker {marker} must appear exactly once in {source}");
    hits[0] as u64
}

/// What a traced run left behind.
pub struct Traced {
    pub output: Output,
    pub trace: PathBuf,
}

/// Runs `command` under `LD_PRELOAD=libleak.so`, writing the trace into `scratch`.
pub fn run_traced(scratch: &Scratch, command: &mut Command) -> Traced {
    let template = scratch.join("trace.%p");
    command
        .env("LD_PRELOAD", libleak_so())
        .env("LIBLEAK_OUTPUT", &template)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let pid = child.id();
    let output = child.wait_with_output().expect("wait for traced command");
    let trace = scratch.join(&format!("trace.{pid}"));
    assert!(
        trace.is_file(),
        "no trace at {} (stderr: {})",
        trace.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    Traced { output, trace }
}

/// Removes libleak's own line from a traced program's stderr.
pub fn program_stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|l| !l.starts_with("libleak: "))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `libleak report --json --limit 0 TRACE`, parsed: the default report, leaks only.
pub fn report_json(trace: &Path) -> Value {
    report_json_with(trace, &[])
}

/// Every block live at exit as a row, whatever its class, grouped by whole stack: for tests
/// of what was recorded rather than of how it is classified.
pub fn all_live_blocks_json(trace: &Path) -> Value {
    report_json_with(
        trace,
        &[
            "--show-reachable",
            "--show-leftovers",
            "--no-builtin-suppressions",
            "--group-by",
            "stack",
        ],
    )
}

/// `libleak report --json --limit 0 EXTRA… TRACE`, parsed.
pub fn report_json_with(trace: &Path, extra: &[&str]) -> Value {
    let out = run(Command::new(libleak_bin())
        .args(["report", "--json", "--limit", "0"])
        .args(extra)
        .arg(trace));
    assert!(
        out.status.success(),
        "libleak report failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("report is JSON")
}

/// The leaks whose innermost shown frame is `function` (exact name, or name before `(`).
pub fn leaks_in<'a>(report: &'a Value, function: &str) -> Vec<&'a Value> {
    report["leaks"]
        .as_array()
        .expect("leaks array")
        .iter()
        .filter(|leak| {
            let name = leak["frames"][0]["function"].as_str().unwrap_or("");
            name == function || name.split('(').next() == Some(function)
        })
        .collect()
}

/// The single leak row for `function`, checked against the expected site and amounts.
pub fn assert_leak(report: &Value, function: &str, file_suffix: &str, line: u64, bytes: u64, blocks: u64) {
    let rows = leaks_in(report, function);
    assert_eq!(rows.len(), 1, "expected one leak row in {function}, report: {report:#}");
    let leak = rows[0];
    let frame = &leak["frames"][0];
    assert!(
        frame["file"].as_str().is_some_and(|f| f.ends_with(file_suffix)),
        "{function}: file {} should end with {file_suffix}",
        frame["file"]
    );
    assert_eq!(frame["line"].as_u64(), Some(line), "{function}: line");
    assert_eq!(frame["kind"], "native");
    assert_eq!(leak["bytes"].as_u64(), Some(bytes), "{function}: bytes");
    assert_eq!(leak["blocks"].as_u64(), Some(blocks), "{function}: blocks");
}

/// Interpreters to test against: `LIBLEAK_TEST_PYTHONS` (paths separated by `:` or spaces),
/// then `python3` on PATH, the pyenv versions, and Debian's `/usr/bin/python3.11`; deduplicated
/// by resolved path, 3.9–3.13 only. Every interpreter left out is printed with the reason.
pub fn pythons() -> Vec<Python> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(list) = std::env::var("LIBLEAK_TEST_PYTHONS") {
        candidates.extend(list.split([':', ' ']).filter(|s| !s.is_empty()).map(PathBuf::from));
    }
    if let Ok(path) = std::env::var("PATH") {
        for dir in path.split(':').filter(|d| !d.contains("/shims")) {
            candidates.push(Path::new(dir).join("python3"));
        }
    }
    let pyenv_root = std::env::var_os("PYENV_ROOT")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pyenv")));
    if let Some(root) = pyenv_root {
        if let Ok(entries) = std::fs::read_dir(root.join("versions")) {
            let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin/python3")).collect();
            versions.sort();
            candidates.extend(versions);
        }
    }
    candidates.push(PathBuf::from("/usr/bin/python3.11"));
    let mut found: Vec<Python> = Vec::new();
    for candidate in candidates {
        let Ok(real) = std::fs::canonicalize(&candidate) else {
            continue;
        };
        if found.iter().any(|p| p.real_path == real) {
            continue;
        }
        let probe = Command::new(&real)
            .args(["-c", "import sys, sysconfig; print(sys.version_info[0], sys.version_info[1]); print(sysconfig.get_paths()['include']); print(sysconfig.get_config_var('EXT_SUFFIX'))"])
            .output();
        let Ok(probe) = probe else { continue };
        let text = String::from_utf8_lossy(&probe.stdout).to_string();
        let lines: Vec<&str> = text.lines().collect();
        if !probe.status.success() || lines.len() < 3 {
            eprintln!("skipping {}: it did not answer the version probe", real.display());
            continue;
        }
        let version: Vec<u32> = lines[0].split(' ').filter_map(|v| v.parse().ok()).collect();
        let python = Python {
            path: candidate.clone(),
            real_path: real.clone(),
            version: (
                version.first().copied().unwrap_or(0),
                version.get(1).copied().unwrap_or(0),
            ),
            include_dir: PathBuf::from(lines[1]),
            ext_suffix: lines[2].to_string(),
        };
        if !(python.version.0 == 3 && (9..=13).contains(&python.version.1)) {
            eprintln!(
                "skipping {}: Python {}.{} is outside the supported 3.9–3.13",
                real.display(),
                python.version.0,
                python.version.1
            );
            found.push(Python {
                include_dir: PathBuf::new(),
                ..python
            });
            continue;
        }
        if !python.include_dir.join("Python.h").is_file() {
            eprintln!(
                "skipping {}: no Python.h in {}",
                real.display(),
                python.include_dir.display()
            );
            found.push(Python {
                include_dir: PathBuf::new(),
                ..python
            });
            continue;
        }
        found.push(python);
    }
    found.retain(|p| !p.include_dir.as_os_str().is_empty());
    for python in &found {
        eprintln!(
            "testing with Python {}.{} at {}",
            python.version.0,
            python.version.1,
            python.real_path.display()
        );
    }
    found
}

#[derive(Clone, Debug)]
pub struct Python {
    pub path: PathBuf,
    pub real_path: PathBuf,
    pub version: (u32, u32),
    pub include_dir: PathBuf,
    pub ext_suffix: String,
}

impl Python {
    /// How assertion messages name this interpreter.
    pub fn label(&self) -> String {
        format!("python {}.{} ({})", self.version.0, self.version.1, self.path.display())
    }

    /// Runs `script` from `scratch` (also on `PYTHONPATH`) plainly and then under libleak;
    /// asserts that both succeed with the same stdout and stderr (libleak's own line aside),
    /// and returns the traced run's trace.
    pub fn run_script_traced(&self, scratch: &Scratch, script: &str, label: &str) -> PathBuf {
        let command = || {
            let mut command = Command::new(&self.real_path);
            command
                .arg(script)
                .current_dir(&scratch.path)
                .env("PYTHONPATH", &scratch.path);
            command
        };
        let plain = run(&mut command());
        assert!(
            plain.status.success(),
            "{label}: {}",
            String::from_utf8_lossy(&plain.stderr)
        );
        let traced = run_traced(scratch, &mut command());
        assert_eq!(traced.output.stdout, plain.stdout, "{label}: stdout changed");
        assert_eq!(
            program_stderr(&traced.output),
            program_stderr(&plain),
            "{label}: stderr changed"
        );
        assert_eq!(traced.output.status.code(), Some(0), "{label}");
        traced.trace
    }

    /// Builds the extension `module` from `fixtures/<dir>/<source>`, runs `fixtures/<dir>/<script>`
    /// beside it under libleak (checking the program behaves as it does untraced), and returns
    /// the report, whose scan at exit must be complete.
    pub fn traced_fixture_report(&self, dir: &str, source: &str, module: &str, script: &str) -> Value {
        let label = self.label();
        let fixtures = fixtures_dir().join(dir);
        let scratch = Scratch::new(&format!("{module}{}{}", self.version.0, self.version.1));
        self.build_extension(&fixtures.join(source), module, &scratch.path);
        std::fs::copy(fixtures.join(script), scratch.join(script)).unwrap();
        let report = report_json(&self.run_script_traced(&scratch, script, &label));
        assert_eq!(report["reachability"]["outcome"], "complete", "{label}");
        report
    }

    /// Builds a single-file C extension module `name` from `source` into `dir`.
    pub fn build_extension(&self, source: &Path, name: &str, dir: &Path) -> PathBuf {
        self.build_extension_with(source, name, dir, &[])
    }

    /// As [`Python::build_extension`], with more compiler and linker `flags`.
    pub fn build_extension_with(&self, source: &Path, name: &str, dir: &Path, flags: &[&str]) -> PathBuf {
        let output = dir.join(format!("{name}{}", self.ext_suffix));
        let out = run(Command::new("gcc")
            .args(["-shared", "-fPIC", "-g", "-O0"])
            .args(flags)
            .arg(format!("-I{}", self.include_dir.display()))
            .arg(source)
            .arg("-o")
            .arg(&output));
        assert!(
            out.status.success(),
            "building {name} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        output
    }
}

/// Runs `check` (a traced run and its assertions); when it fails, prints the failure as
/// FLAKY and runs it once more, failing only when that fails too. For end-to-end checks a
/// conservative scan fails now and then: a stale copy of an address, left where the scan
/// reads roots, holds a leaked block as a reference would.
pub fn with_one_retry(label: &str, check: impl Fn()) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(&check)).is_err() {
        eprintln!("FLAKY (run again): {label}: the failure above");
        check();
    }
}
