//! Programs made of several processes: fork (C, Python), multiprocessing with each start
//! method, subprocess, shell pipelines and exec chains. Each is run plainly and under libleak
//! with every process tracing into one directory; the tests assert the program behaved the
//! same and that every process's trace accounts exactly for its own and its inherited blocks.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use libleak_tests::*;
use serde_json::Value;

/// One process's trace and reports.
struct ProcessTrace {
    path: PathBuf,
    /// Every block live at exit, one row per stack (process, exit, fork and totals too).
    all: Value,
}

impl ProcessTrace {
    /// The default report: leaks only, by site.
    fn leak_report(&self) -> Value {
        report_json(&self.path)
    }

    fn pid(&self) -> u64 {
        self.all["process"]["pid"].as_u64().unwrap()
    }

    fn forked_from(&self) -> Option<u64> {
        self.all["fork"]["parent_pid"].as_u64()
    }

    fn exit_kind(&self) -> Option<&str> {
        self.all["exit"]["kind"].as_str()
    }

    fn argv(&self) -> Vec<String> {
        self.all["process"]["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    }

    /// Every free in the trace matched a recorded allocation (frees are counted as
    /// allocations no longer live, so a lost or misordered event shows up here): for programs
    /// that allocate nothing before libleak starts (an interpreter does, while loading).
    fn assert_every_free_matched(&self) {
        let totals = &self.all["totals"];
        assert_eq!(totals["unmatched_frees"], 0, "{}: {totals}", self.path.display());
    }
}

/// Runs `command` plainly and then under libleak with `LIBLEAK_OUTPUT=<dir>/` (plus `env`),
/// asserts the program's output and status did not change, waits until every trace in the
/// directory is finished, and returns the traced run's output and its traces by pid.
fn run_all_traced(
    scratch: &Scratch,
    command: impl Fn() -> Command,
    env: &[(&str, &str)],
) -> (Output, Vec<ProcessTrace>) {
    let plain = run(&mut command());
    let directory = scratch.join("traces");
    std::fs::create_dir_all(&directory).unwrap();
    let mut traced_command = command();
    traced_command
        .env("LD_PRELOAD", libleak_so())
        .env("LIBLEAK_OUTPUT", format!("{}/", directory.display()));
    for (name, value) in env {
        traced_command.env(name, value);
    }
    let traced = run(&mut traced_command);
    assert_eq!(
        String::from_utf8_lossy(&traced.stdout),
        String::from_utf8_lossy(&plain.stdout),
        "stdout changed"
    );
    assert_eq!(program_stderr(&traced), program_stderr(&plain), "stderr changed");
    assert_eq!(traced.status.code(), plain.status.code(), "exit status changed");
    let traces = finished_traces(&directory);
    (traced, traces)
}

/// Reads every trace in `directory`, waiting (up to a minute) for processes that outlive the
/// one the test started (a forkserver, a resource tracker) to finish theirs.
fn finished_traces(directory: &Path) -> Vec<ProcessTrace> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut traces = Vec::new();
        let mut unfinished = Vec::new();
        for entry in std::fs::read_dir(directory).unwrap() {
            let path = entry.unwrap().path();
            let all = all_live_blocks_json(&path);
            if all["exit"].is_null() {
                unfinished.push(path.display().to_string());
            }
            let trace = ProcessTrace { path, all };
            traces.push(trace);
        }
        if unfinished.is_empty() {
            return traces;
        }
        assert!(Instant::now() < deadline, "traces never finished: {unfinished:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Asserts `report` lists exactly the given (function, bytes) leaks, one block each, each
/// definitely lost at its marked line of `source`.
fn assert_exact_leaks(report: &Value, source: &str, expected: &[(&str, &str, u64)]) {
    let listed = report["leaks"].as_array().unwrap();
    assert_eq!(listed.len(), expected.len(), "{report:#}");
    for (function, marker, bytes) in expected {
        assert_leak(report, function, source, line_of(source, marker), *bytes, 1);
        assert_eq!(leaks_in(report, function)[0]["kind"], "definitely-lost", "{report:#}");
    }
}

#[test]
fn fork_children_trace_their_own_and_their_inherited_blocks() {
    let scratch = Scratch::new("fork");
    let exe = scratch.join("fork");
    compile("gcc", &["processes/fork.c"], &exe, &[]);
    let (output, traces) = run_all_traced(&scratch, || Command::new(&exe), &[]);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "child ended with 3\n");
    assert_eq!(traces.len(), 3, "one trace per process");
    let parent = traces.iter().find(|t| t.forked_from().is_none()).unwrap();
    let child = traces.iter().find(|t| t.forked_from() == Some(parent.pid())).unwrap();
    let grandchild = traces.iter().find(|t| t.forked_from() == Some(child.pid())).unwrap();
    let src = "processes/fork.c";
    let (parent_leaks, child_leaks, grandchild_leaks) =
        (parent.leak_report(), child.leak_report(), grandchild.leak_report());
    for trace in [parent, child, grandchild] {
        trace.assert_every_free_matched();
        assert_eq!(
            trace.all["reachability"]["outcome"],
            "complete",
            "{}",
            trace.path.display()
        );
    }

    // The parent: its own leak; the block the child freed is still its own to free.
    assert_eq!(parent.all["complete"], true);
    assert_exact_leaks(&parent_leaks, src, &[("parent_leak", "@parent_leak", 1111)]);
    assert_eq!(
        parent.all["totals"]["allocations"], 4,
        "1111, 300, 444 and stdout's buffer"
    );

    // The child inherited three blocks, freed one of them, leaked its own and exited with 3.
    assert_eq!(child.all["exit"]["status"], 3);
    let fork = &child.all["fork"];
    assert_eq!(
        (fork["inherited_blocks"].as_u64(), fork["inherited_bytes"].as_u64()),
        (Some(3), Some(1855))
    );
    assert_eq!(fork["threads_cut"], 0);
    assert_eq!(child.all["totals"]["allocations"], 3 + 1 + 1000);
    assert_eq!(child.all["totals"]["frees"], 1 + 1000);
    assert_exact_leaks(
        &child_leaks,
        src,
        &[
            ("child_leak", "@child_leak", 2222),
            ("parent_leak", "@parent_leak", 1111),
        ],
    );
    // The inherited block keeps the parent's stack, down to main.
    let inherited = &leaks_in(&child.all, "parent_leak")[0]["frames"];
    assert_eq!(inherited[1]["function"], "main", "{inherited:#}");

    // The grandchild ended through _exit(5): still scanned, still exact.
    assert_eq!(grandchild.exit_kind(), Some("_exit"));
    assert_eq!(grandchild.all["exit"]["status"], 5);
    assert_eq!(grandchild.all["fork"]["inherited_blocks"], 3);
    assert_exact_leaks(
        &grandchild_leaks,
        src,
        &[
            ("grandchild_leak", "@grandchild_leak", 3333),
            ("child_leak", "@child_leak", 2222),
            ("parent_leak", "@parent_leak", 1111),
        ],
    );
}

/// The one live-block row of `trace` holding exactly one block of `bytes`, allocated at
/// workers.py's leak line.
fn python_leak_of(trace: &ProcessTrace, bytes: u64) -> Option<&Value> {
    let line = line_of("processes/workers.py", "@py_leak");
    trace.all["leaks"].as_array().unwrap().iter().find(|row| {
        row["bytes"].as_u64() == Some(bytes)
            && row["blocks"].as_u64() == Some(1)
            && row["frames"].as_array().unwrap().iter().any(|frame| {
                frame["kind"] == "python" && frame["function"] == "leak" && frame["line"].as_u64() == Some(line)
            })
    })
}

#[test]
fn python_fork_and_every_multiprocessing_start_method_are_traced() {
    // The oldest and the newest interpreter: the fork paths differ between them (3.12 added
    // the multi-threaded fork warning), and each run starts seven traced interpreters.
    let all = pythons();
    let mut chosen: Vec<Python> = all.first().into_iter().chain(all.last()).cloned().collect();
    chosen.dedup_by_key(|p| p.real_path.clone());
    for skipped in all
        .iter()
        .filter(|p| !chosen.iter().any(|c| c.real_path == p.real_path))
    {
        eprintln!(
            "SKIP {}: multiprocessing is covered by the oldest and newest interpreters",
            skipped.label()
        );
    }
    for python in chosen {
        let label = python.label();
        let scratch = Scratch::new(&format!("workers-{}.{}", python.version.0, python.version.1));
        let script = fixtures_dir().join("processes/workers.py");
        let (output, traces) = run_all_traced(
            &scratch,
            || {
                let mut command = Command::new(&python.real_path);
                command
                    .arg("-W")
                    .arg("always")
                    .arg(&script)
                    .args(["fork", "forkserver", "spawn"])
                    .current_dir(&scratch.path);
                command
            },
            &[],
        );
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "fork 0\nforkserver 0\nspawn 0\n",
            "{label}"
        );
        let holder = |bytes: u64| -> &ProcessTrace {
            let holders: Vec<&ProcessTrace> = traces.iter().filter(|t| python_leak_of(t, bytes).is_some()).collect();
            assert!(!holders.is_empty(), "{label}: no process holds the {bytes}-byte leak");
            holders
                .into_iter()
                .min_by_key(|t| t.all["process"]["start_time_unix_ns"].as_u64())
                .unwrap()
        };
        let main = holder(5000);
        assert!(main.forked_from().is_none(), "{label}");
        assert_eq!(main.all["complete"], true, "{label}");
        // os.fork's child ended through os._exit, with its parent's leak inherited.
        let forked = holder(5001);
        assert_eq!(forked.forked_from(), Some(main.pid()), "{label}");
        assert_eq!(forked.exit_kind(), Some("_exit"), "{label}");
        // A CPython child inherits more than 10,000 blocks: it judges only its own and leaves
        // the parent's leak, read from the parent's trace, to the parent's report.
        assert_eq!(forked.all["fork"]["inherited_read"], true, "{label}");
        let unjudged = &forked.all["summary"]["inherited_unjudged"];
        assert!(unjudged["bytes"].as_u64().unwrap_or(0) >= 5000, "{label}: {unjudged:#}");
        assert!(python_leak_of(forked, 5000).is_none(), "{label}: inherited leak judged");
        // multiprocessing: fork workers are forked from the main process, forkserver workers
        // from the server (a process of its own), spawn workers start afresh.
        let fork_worker = holder(6000);
        assert_eq!(fork_worker.forked_from(), Some(main.pid()), "{label}");
        let forkserver_worker = holder(6001);
        let server = forkserver_worker.forked_from().expect("forkserver workers are forked");
        assert_ne!(server, main.pid(), "{label}");
        let spawn_worker = holder(6002);
        assert!(spawn_worker.forked_from().is_none(), "{label}");
        for worker in [forked, fork_worker, forkserver_worker, spawn_worker] {
            assert!(worker.exit_kind().is_some(), "{label}: {} ended", worker.path.display());
        }
    }
}

#[test]
fn subprocesses_pipelines_and_exec_are_followed_and_reported_together() {
    let scratch = Scratch::new("pipeline");
    let tool = scratch.join("leaky_tool");
    compile("gcc", &["processes/leaky_tool.c"], &tool, &[]);
    let Some(python) = pythons().into_iter().next() else {
        eprintln!("SKIP: no Python interpreter found");
        return;
    };
    let script = fixtures_dir().join("processes/pipeline.py");
    let command = || {
        let mut command = Command::new(&python.real_path);
        command.arg(&script).arg(&tool).current_dir(&scratch.path);
        command
    };
    let (output, traces) = run_all_traced(&scratch, command, &[]);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "tool ran with 1 arguments\n1\ntool ran with 3 arguments\n"
    );
    let src = "processes/leaky_tool.c";
    let tools: Vec<&ProcessTrace> = traces
        .iter()
        .filter(|t| t.argv().first().is_some_and(|a| a.ends_with("leaky_tool")))
        .collect();
    let mut tool_arguments: Vec<String> = tools.iter().map(|t| t.argv()[1..].join(" ")).collect();
    tool_arguments.sort();
    assert_eq!(tool_arguments, ["a", "b c", "x y z"]);
    for tool in &tools {
        tool.assert_every_free_matched();
        assert_eq!(tool.all["complete"], true);
        assert_exact_leaks(&tool.leak_report(), src, &[("tool_leak", "@tool_leak", 4321)]);
    }
    // The Python image was replaced by exec (its trace ends there), and the shells ran too.
    let python_image = traces
        .iter()
        .find(|t| t.argv().iter().any(|a| a.ends_with("pipeline.py")))
        .unwrap();
    assert_eq!(python_image.exit_kind(), Some("exec"));
    // Its memory went with the image: nothing listed, all of it counted as released.
    let replaced = python_image.leak_report();
    assert_eq!(replaced["leaks"], serde_json::json!([]), "{replaced:#}");
    let summary = &replaced["summary"];
    assert!(
        summary["released_by_exec"]["blocks"].as_u64().unwrap() > 1000,
        "{summary:#}"
    );
    assert_eq!(summary["unclassified"]["blocks"], 0, "{summary:#}");
    assert!(
        traces
            .iter()
            .filter(|t| t.argv().first().is_some_and(|a| a.ends_with("sh")))
            .count()
            >= 2
    );
    let wc = traces
        .iter()
        .filter(|t| t.argv().first().is_some_and(|a| a.ends_with("wc")));
    assert_eq!(wc.count(), 1);

    // One command reports them all: a summary line per process, then each report.
    let report = run(Command::new(libleak_bin()).arg("report").arg(scratch.join("traces")));
    assert!(report.status.success(), "{}", String::from_utf8_lossy(&report.stderr));
    let text = String::from_utf8_lossy(&report.stdout);
    let mut lines = text.lines();
    assert_eq!(
        lines.next(),
        Some(format!("libleak: {} processes", traces.len()).as_str())
    );
    let summaries: Vec<&str> = lines.take_while(|l| l.starts_with("  pid ")).collect();
    assert_eq!(summaries.len(), traces.len(), "{text}");
    assert_eq!(
        summaries
            .iter()
            .filter(|l| l.contains(" leaky_tool: exited; leaked 4,321 bytes in 1 blocks"))
            .count(),
        3,
        "{text}"
    );

    // LIBLEAK_FOLLOW=0: only the process started under libleak is traced.
    let quiet = Scratch::new("pipeline-nofollow");
    let (_, traces) = run_all_traced(&quiet, command, &[("LIBLEAK_FOLLOW", "0")]);
    assert_eq!(
        traces.len(),
        1,
        "{:?}",
        traces.iter().map(|t| t.argv()).collect::<Vec<_>>()
    );
}

#[test]
fn the_trace_keeps_out_of_the_programs_descriptors() {
    let scratch = Scratch::new("descriptors");
    let exe = scratch.join("fixture");
    compile("gcc", &["processes/descriptors.c"], &exe, &[]);
    let output_file = scratch.join("written.txt");
    // Started with standard error closed; the shell execs the fixture.
    let command = || {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("exec 2>&- {} {}", exe.display(), output_file.display()));
        command
    };
    let (traced, traces) = run_all_traced(&scratch, command, &[]);
    assert_eq!(String::from_utf8_lossy(&traced.stdout), "first descriptor: 2\n");
    assert_eq!(
        std::fs::read_to_string(&output_file).unwrap(),
        "the program's own bytes\n"
    );
    let fixture = traces
        .iter()
        .find(|t| t.all["process"]["program"] == "fixture")
        .expect("the fixture's trace");
    assert_eq!(fixture.all["complete"], true, "{:#}", fixture.all);
    fixture.assert_every_free_matched();
    assert_exact_leaks(
        &fixture.leak_report(),
        "processes/descriptors.c",
        &[
            ("leak_before_closing", "@before_closing", 111),
            ("leak_after_closing", "@after_closing", 222),
        ],
    );
}
