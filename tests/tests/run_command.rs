//! End-to-end tests of the `libleak` command around the program it runs: which traces `run`
//! reports (only its own), where they and the report go (the program's stdout stays its own),
//! signals sent to `libleak run`, `--output` forms, `--fail-on-leak N`, the write check made
//! before the program runs, and a reader that closes the pipe early.
//!
//! The program is a small C fixture written by the tests themselves: it leaks a given number of
//! bytes, and either sleeps a given time or waits for a signal and says which it got.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use libleak_tests::*;
use serde_json::Value;

/// `leaky BYTES MS`: leaks BYTES (one block), sleeps MS milliseconds, prints `leaked BYTES`.
/// `leaky BYTES wait`: leaks, prints `ready`, waits for SIGINT, SIGTERM, SIGHUP or SIGQUIT,
/// prints `got SIGNAL COUNT` and exits with status 40+SIGNAL. `leaky BYTES die`: leaks, prints
/// `ready` and sleeps until killed.
const LEAKY_C: &str = r#"
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t last, count;
static void on_signal(int signal) { last = signal; count++; }

__attribute__((noinline)) static void leak(size_t n) {
    char *volatile p = malloc(n);
    memset(p, 1, n);
    p = 0;
}

int main(int argc, char **argv) {
    size_t n = strtoul(argv[1], 0, 10);
    if (n) leak(n);
    if (strcmp(argv[2], "wait") == 0) {
        int signals[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT};
        sigset_t blocked, none;
        sigemptyset(&blocked);
        sigemptyset(&none);
        struct sigaction action;
        memset(&action, 0, sizeof action);
        action.sa_handler = on_signal;
        for (int i = 0; i < 4; i++) {
            sigaction(signals[i], &action, 0);
            sigaddset(&blocked, signals[i]);
        }
        sigprocmask(SIG_BLOCK, &blocked, 0);
        printf("ready\n");
        fflush(stdout);
        while (!last) sigsuspend(&none);
        /* Any second delivery of the same signal would arrive meanwhile. */
        sigprocmask(SIG_UNBLOCK, &blocked, 0);
        usleep(200 * 1000);
        printf("got %d %d\n", (int)last, (int)count);
        return 40 + last;
    }
    if (strcmp(argv[2], "die") == 0) {
        printf("ready\n");
        fflush(stdout);
        for (;;) pause();
    }
    usleep(atoi(argv[2]) * 1000);
    printf("leaked %zu\n", n);
    return 0;
}
"#;

/// Builds the fixture into `scratch` as `leaky`.
fn build_leaky(scratch: &Scratch) -> PathBuf {
    let source = scratch.join("leaky.c");
    std::fs::write(&source, LEAKY_C).unwrap();
    let exe = scratch.join("leaky");
    compile("gcc", &[source.to_str().unwrap()], &exe, &[]);
    exe
}

/// `libleak run ARGS…` from `dir`, with this build's libleak.so.
fn libleak_run(dir: &Path) -> Command {
    let mut command = Command::new(libleak_bin());
    command.arg("run").current_dir(dir).env("LIBLEAK_SO", libleak_so());
    command
}

fn parse(bytes: &[u8], what: &str) -> Value {
    serde_json::from_slice(bytes).unwrap_or_else(|e| {
        panic!(
            "{what} is not one JSON document ({e}): {}",
            String::from_utf8_lossy(bytes)
        )
    })
}

/// The single-process reports in a `libleak run --json` document.
fn processes(report: &Value) -> Vec<Value> {
    match report["format"].as_str() {
        Some("libleak-report") => vec![report.clone()],
        Some("libleak-reports") => report["processes"].as_array().unwrap().clone(),
        other => panic!("not a report ({other:?}): {report}"),
    }
}

fn leaked_bytes(process: &Value) -> u64 {
    let summary = &process["summary"];
    ["definitely_lost", "indirectly_lost", "unclassified"]
        .iter()
        .map(|class| summary[class]["bytes"].as_u64().unwrap())
        .sum()
}

/// The `.trace` files in `dir`, by name.
fn traces_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".trace"))
        .collect();
    names.sort();
    names
}

fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn run_reports_its_own_process_only_after_earlier_and_beside_concurrent_runs() {
    let scratch = Scratch::new("run-own");
    let leaky = build_leaky(&scratch);
    // Three quick runs in a row, in one directory: each reports one process, its own.
    for (round, bytes) in [1111u64, 2222, 3333].into_iter().enumerate() {
        let out = run(libleak_run(&scratch.path)
            .args(["--json", "--"])
            .arg(&leaky)
            .args([&bytes.to_string(), "0"]));
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        let reports = processes(&parse(&out.stderr, "the report on stderr"));
        assert_eq!(reports.len(), 1, "round {round}: {}", describe(&out));
        assert_eq!(leaked_bytes(&reports[0]), bytes, "round {round}");
        let pid = reports[0]["process"]["pid"].as_u64().unwrap();
        assert_eq!(reports[0]["trace"], format!("libleak.leaky.{pid}.trace"));
        assert_eq!(traces_in(&scratch.path).len(), round + 1);
    }
    // A clean run after leaky ones passes --fail-on-leak: their leaks are not its own.
    let clean = run(libleak_run(&scratch.path)
        .args(["--fail-on-leak", "--"])
        .arg(&leaky)
        .args(["0", "0"]));
    assert_eq!(clean.status.code(), Some(0), "{}", describe(&clean));

    // Two runs at once in one directory: neither sees the other's trace.
    let spawn = |bytes: &str, ms: &str, report: &str| {
        libleak_run(&scratch.path)
            .args(["--json", "--report-file", report, "--"])
            .arg(&leaky)
            .args([bytes, ms])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let long = spawn("4444", "1500", "long.json");
    std::thread::sleep(Duration::from_millis(200));
    let short = spawn("5555", "100", "short.json");
    for (child, report, bytes) in [(short, "short.json", 5555), (long, "long.json", 4444)] {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
        let reports = processes(&parse(&std::fs::read(scratch.join(report)).unwrap(), report));
        assert_eq!(reports.len(), 1, "{report}: {reports:#?}");
        assert_eq!(leaked_bytes(&reports[0]), bytes, "{report}");
    }
    assert_eq!(traces_in(&scratch.path).len(), 6);
    // No private directory is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(&scratch.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(".libleak-run"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn signals_sent_to_libleak_run_reach_the_command_once_and_the_report_follows() {
    let scratch = Scratch::new("run-signals");
    let leaky = build_leaky(&scratch);
    for (name, number) in [("TERM", 15), ("INT", 2), ("HUP", 1), ("QUIT", 3)] {
        let report = format!("report.{name}.json");
        let mut child = libleak_run(&scratch.path)
            .args(["--json", "--report-file", &report, "--"])
            .arg(&leaky)
            .args(["4242", "wait"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert_eq!(line, "ready\n", "SIG{name}");
        let kill = run(Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()));
        assert!(kill.status.success(), "kill: {}", describe(&kill));
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
        let status = child.wait().unwrap();
        // The command got the signal exactly once, and libleak exits with its status.
        assert_eq!(rest, format!("got {number} 1\n"), "SIG{name}");
        assert_eq!(status.code(), Some(40 + number), "SIG{name}: {status:?}");
        let reports = processes(&parse(&std::fs::read(scratch.join(&report)).unwrap(), &report));
        assert_eq!(reports.len(), 1, "SIG{name}");
        assert_eq!(leaked_bytes(&reports[0]), 4242, "SIG{name}");
    }

    // A command that dies of the signal: libleak waits for it, reports, and exits 128+15.
    let started = Instant::now();
    let mut child = libleak_run(&scratch.path)
        .args(["--report-file", "killed.txt", "--"])
        .arg(&leaky)
        .args(["4242", "die"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ready\n");
    // Past the trace writer's first flush: a process killed before it leaves an empty trace
    // (a matter of the interposer, not of `run`).
    std::thread::sleep(Duration::from_millis(500));
    run(Command::new("kill").arg("-TERM").arg(child.id().to_string()));
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 15), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    let text = std::fs::read_to_string(scratch.join("killed.txt")).unwrap();
    assert!(text.contains("4,242 bytes in 1 block"), "{text}");
    assert!(text.contains("trace INCOMPLETE"), "{text}");
}

/// Runs `argv` on a new terminal, types Ctrl-C once `ready` has been printed, and prints what
/// the terminal showed, then `status N`.
const CTRL_C_ON_A_TERMINAL_PY: &str = r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
out = b""
while b"ready" not in out:
    out += os.read(fd, 1024)
os.write(fd, b"\x03")
while True:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
print("status", os.waitstatus_to_exitcode(status))
"#;

#[test]
fn ctrl_c_on_a_terminal_reaches_the_command_once_and_libleak_reports() {
    let scratch = Scratch::new("run-ctrl-c");
    let leaky = build_leaky(&scratch);
    let python = pythons()
        .into_iter()
        .next()
        .expect("a Python interpreter to drive a terminal");
    let script = scratch.join("ctrl_c.py");
    std::fs::write(&script, CTRL_C_ON_A_TERMINAL_PY).unwrap();
    let out = run(Command::new(&python.real_path)
        .arg(&script)
        .arg(libleak_bin())
        .args(["run", "--json", "--report-file", "report.json", "--"])
        .arg(&leaky)
        .args(["4242", "wait"])
        .current_dir(&scratch.path)
        .env("LIBLEAK_SO", libleak_so()));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", describe(&out));
    // The terminal sent SIGINT to the whole foreground group: libleak did not send it again.
    assert!(shown.contains("got 2 1\r\n"), "{shown}");
    assert!(shown.ends_with("status 42\n"), "{shown}");
    let reports = processes(&parse(&std::fs::read(scratch.join("report.json")).unwrap(), "report"));
    // On a terminal, libleak says where the trace is now.
    let pid = reports[0]["process"]["pid"].as_u64().unwrap();
    assert!(
        shown.contains(&format!("libleak: trace written to libleak.leaky.{pid}.trace\r\n")),
        "{shown}"
    );
    assert_eq!(reports.len(), 1);
    assert_eq!(leaked_bytes(&reports[0]), 4242);
}

#[test]
fn the_report_never_goes_into_the_programs_stdout() {
    let pythons = pythons();
    assert!(!pythons.is_empty(), "no Python interpreter to test with");
    for python in pythons {
        let label = python.label();
        let scratch = Scratch::new("run-stdout");
        let json = run(libleak_run(&scratch.path)
            .args(["--json", "--"])
            .arg(&python.real_path)
            .args(["-c", "print(1)"]));
        assert_eq!(json.status.code(), Some(0), "{label}: {}", describe(&json));
        assert_eq!(json.stdout, b"1\n", "{label}");
        assert_eq!(processes(&parse(&json.stderr, "stderr")).len(), 1, "{label}");

        let text = run(libleak_run(&scratch.path)
            .arg("--")
            .arg(&python.real_path)
            .args(["-c", "print(1)"]));
        assert_eq!(text.stdout, b"1\n", "{label}");
        assert!(
            String::from_utf8_lossy(&text.stderr).contains("trace complete"),
            "{label}: {}",
            describe(&text)
        );

        let to_file = run(libleak_run(&scratch.path)
            .args(["--json", "--report-file", "report.json", "--"])
            .arg(&python.real_path)
            .args(["-c", "print(1)"]));
        assert_eq!(to_file.stdout, b"1\n", "{label}");
        assert_eq!(to_file.stderr, b"", "{label}");
        let report = parse(&std::fs::read(scratch.join("report.json")).unwrap(), "--report-file");
        assert_eq!(report["format"], "libleak-report", "{label}");
    }
}

#[test]
fn every_form_of_output_names_the_trace_as_asked() {
    let scratch = Scratch::new("run-output");
    let leaky = build_leaky(&scratch);
    std::fs::create_dir(scratch.join("sub")).unwrap();
    let traced = |output: &str| -> (String, u64) {
        let out = run(libleak_run(&scratch.path)
            .args(["--json", "--output", output, "--"])
            .arg(&leaky)
            .args(["777", "0"]));
        assert_eq!(out.status.code(), Some(0), "--output {output}: {}", describe(&out));
        let reports = processes(&parse(&out.stderr, "stderr"));
        assert_eq!(reports.len(), 1, "--output {output}");
        assert_eq!(leaked_bytes(&reports[0]), 777, "--output {output}");
        let trace = reports[0]["trace"].as_str().unwrap().to_string();
        assert!(scratch.join(&trace).is_file(), "--output {output}: no {trace}");
        (trace, reports[0]["process"]["pid"].as_u64().unwrap())
    };
    let (trace, pid) = traced("out.%p.trace");
    assert_eq!(trace, format!("out.{pid}.trace"));
    assert_eq!(traced("mytrace").0, "mytrace");
    // A name taken is never overwritten.
    assert_eq!(traced("mytrace").0, "mytrace.1");
    let (trace, pid) = traced("sub/");
    assert_eq!(trace, format!("sub/libleak.leaky.{pid}.trace"));
    let absolute = scratch.join("abs.%p.trace");
    let (trace, pid) = traced(absolute.to_str().unwrap());
    assert_eq!(trace, scratch.join(&format!("abs.{pid}.trace")).to_str().unwrap());
}

#[test]
fn a_reader_closing_the_pipe_early_ends_libleak_quietly() {
    let scratch = Scratch::new("run-pipe");
    let leaky = build_leaky(&scratch);
    let out = run(libleak_run(&scratch.path)
        .args(["--output", "t.trace", "--"])
        .arg(&leaky)
        .args(["100", "0"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    // `libleak … | head -0`: the reader is gone before libleak writes a byte.
    let closed_reader = |args: &[&str]| {
        let mut child = Command::new(libleak_bin())
            .args(args)
            .current_dir(&scratch.path)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", describe(&out));
        assert_eq!(String::from_utf8_lossy(&out.stderr), "", "{args:?}");
    };
    closed_reader(&["report", "t.trace"]);
    closed_reader(&["report", "--json", "t.trace"]);
    closed_reader(&["report", "t.trace", "t.trace"]);
    closed_reader(&["suppressions"]);
    closed_reader(&["--help"]);
}

#[test]
fn fail_on_leak_takes_a_separate_value_and_the_output_is_checked_before_the_program_runs() {
    let scratch = Scratch::new("run-fail-on-leak");
    let leaky = build_leaky(&scratch);
    let status = |flags: &[&str]| {
        let out = run(libleak_run(&scratch.path).args(flags).arg(&leaky).args(["4242", "0"]));
        assert_eq!(out.stdout, b"leaked 4242\n", "{flags:?}: {}", describe(&out));
        out.status.code()
    };
    assert_eq!(status(&["--fail-on-leak", "1000", "--"]), Some(23));
    assert_eq!(status(&["--fail-on-leak", "5000", "--"]), Some(0));
    assert_eq!(status(&["--fail-on-leak", "5000"]), Some(0));
    assert_eq!(status(&["--fail-on-leak=4241", "--"]), Some(23));
    assert_eq!(status(&["--fail-on-leak", "--"]), Some(23));
    assert_eq!(status(&["--fail-on-leak"]), Some(23));
    let trace = traces_in(&scratch.path).pop().unwrap();
    let report = |flags: &[&str]| {
        run(Command::new(libleak_bin())
            .arg("report")
            .args(flags)
            .arg(&trace)
            .current_dir(&scratch.path))
        .status
        .code()
    };
    assert_eq!(report(&["--fail-on-leak", "5000"]), Some(0));
    assert_eq!(report(&["--fail-on-leak", "4241"]), Some(23));
    assert_eq!(report(&["--fail-on-leak"]), Some(23));
    let help = run(Command::new(libleak_bin()).args(["run", "--help"]));
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("definitely lost") && help.contains("indirectly lost") && help.contains("unclassified"),
        "{help}"
    );

    // An output location that cannot be written: one line, status 2, the program never ran.
    std::fs::write(scratch.join("a-file"), "").unwrap();
    for output in ["missing/", "missing/t.%p.trace", "a-file/"] {
        let out = run(libleak_run(&scratch.path)
            .args(["--output", output, "--"])
            .arg(&leaky)
            .args(["1", "0"]));
        assert_eq!(out.status.code(), Some(2), "{output}: {}", describe(&out));
        assert_eq!(out.stdout, b"", "{output}: the program ran");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.lines().count(), 1, "{output}: {stderr}");
        assert!(stderr.starts_with("libleak: cannot write traces to "), "{stderr}");
    }
}

#[test]
fn an_unreadable_trace_is_listed_in_the_multi_process_json() {
    let scratch = Scratch::new("run-unreadable");
    let leaky = build_leaky(&scratch);
    let out = run(libleak_run(&scratch.path)
        .args(["--output", "good.trace", "--"])
        .arg(&leaky)
        .args(["100", "0"]));
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    std::fs::write(scratch.join("bad.trace"), b"not a trace at all").unwrap();
    let out = run(Command::new(libleak_bin())
        .args(["report", "--json", "good.trace", "bad.trace"])
        .current_dir(&scratch.path));
    assert_eq!(out.status.code(), Some(2), "{}", describe(&out));
    let document = parse(&out.stdout, "stdout");
    assert_eq!(document["format"], "libleak-reports");
    assert_eq!(document["processes"].as_array().unwrap().len(), 1);
    let unreadable = document["unreadable"].as_array().unwrap();
    assert_eq!(unreadable.len(), 1, "{document}");
    assert_eq!(unreadable[0]["trace"], "bad.trace");
    assert!(
        unreadable[0]["error"].as_str().unwrap().starts_with("bad.trace: "),
        "{document}"
    );
}
