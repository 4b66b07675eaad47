//! Fork children reported together with their parent: a leak each child inherited unchanged is
//! one row, the parent's, naming the children it also appears in; a child's own leak and an
//! inherited block only the children leak stay in the children's reports, marked. The exact
//! counts are asserted, so a leak shown once per child (or not at all) fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use libleak_tests::*;
use serde_json::Value;

const SOURCE: &str = "forks/five_children.c";
const CHILDREN: usize = 5;

/// Builds and runs the fixture under libleak, every process tracing into one directory;
/// returns that directory (the parent waits for its children, so every trace is finished).
fn traced_run(scratch: &Scratch) -> PathBuf {
    traced_run_of(scratch, SOURCE, CHILDREN + 1)
}

/// Builds the C fixture `source`, runs it under libleak with every process tracing into one
/// directory, checks it exits 0 leaving `processes` traces, and returns the directory.
fn traced_run_of(scratch: &Scratch, source: &str, processes: usize) -> PathBuf {
    let exe = scratch.join("fixture");
    compile("gcc", &[source], &exe, &[]);
    let directory = scratch.join("traces");
    std::fs::create_dir_all(&directory).unwrap();
    let output = run(Command::new(&exe)
        .env("LD_PRELOAD", libleak_so())
        .env("LIBLEAK_OUTPUT", format!("{}/", directory.display())));
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        std::fs::read_dir(&directory).unwrap().count(),
        processes,
        "a trace per process"
    );
    directory
}

/// `libleak report ARGS… DIRECTORY`'s stdout (the command must succeed).
fn report(directory: &Path, args: &[&str]) -> String {
    let out = run(Command::new(libleak_bin()).arg("report").args(args).arg(directory));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Every row of every process with `bytes`, as (pid, row).
fn rows_of(processes: &[Value], bytes: u64) -> Vec<(u64, &Value)> {
    processes
        .iter()
        .flat_map(|p| {
            let pid = p["process"]["pid"].as_u64().unwrap();
            p["leaks"].as_array().unwrap().iter().map(move |row| (pid, row))
        })
        .filter(|(_, row)| row["bytes"] == bytes)
        .collect()
}

fn pid(process: &Value) -> u64 {
    process["process"]["pid"].as_u64().unwrap()
}

#[test]
fn an_inherited_leak_is_reported_once_with_the_children_it_is_in() {
    let scratch = Scratch::new("fork-reports");
    let directory = traced_run(&scratch);
    let document: Value = serde_json::from_str(&report(&directory, &["--json", "--limit", "0"])).unwrap();
    let processes = document["processes"].as_array().unwrap();
    assert_eq!(processes.len(), CHILDREN + 1, "{document:#}");
    let parent = processes.iter().find(|p| p["fork"].is_null()).unwrap();
    let children: Vec<&Value> = processes.iter().filter(|p| !p["fork"].is_null()).collect();
    assert_eq!(children.len(), CHILDREN);
    let mut child_pids: Vec<u64> = children.iter().map(|c| pid(c)).collect();
    for child in &children {
        assert_eq!(child["fork"]["parent_pid"].as_u64(), Some(pid(parent)));
        assert_eq!(child["exit"]["status"], 0);
    }

    // The 777-byte leak: one row in the whole document, the parent's, naming all five children
    // (in start order, which is fork order).
    let leak_777 = rows_of(processes, 777);
    assert_eq!(leak_777.len(), 1, "{document:#}");
    let (owner, row) = leak_777[0];
    assert_eq!(owner, pid(parent));
    assert_leak(parent, "parent_leak", SOURCE, line_of(SOURCE, "@parent_leak"), 777, 1);
    assert_eq!(row["kind"], "definitely-lost");
    assert!(row.get("inherited").is_none(), "the parent's own leak: {row:#}");
    let also_in: Vec<u64> = row["also_in"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_u64().unwrap())
        .collect();
    child_pids.sort();
    let mut listed = also_in.clone();
    listed.sort();
    assert_eq!(listed, child_pids, "{row:#}");
    assert_eq!(parent["leaks"].as_array().unwrap().len(), 1, "the parent's only leak");
    assert!(parent.get("inherited_shown_elsewhere").is_none());

    // Each child: the 777-byte row counted as shown elsewhere, still in its summary.
    for child in &children {
        assert_eq!(
            child["inherited_shown_elsewhere"],
            serde_json::json!({"leaks": 1, "bytes": 777, "blocks": 1, "shown_in": [pid(parent)]}),
            "{child:#}"
        );
        assert!(child["summary"]["definitely_lost"]["bytes"].as_u64().unwrap() >= 777 + 333);
    }

    // The 555-byte leak is one child's own: once, not inherited.
    let leak_555 = rows_of(processes, 555);
    assert_eq!(leak_555.len(), 1, "{document:#}");
    let (leaker, row) = leak_555[0];
    assert!(child_pids.contains(&leaker));
    assert!(
        row.get("inherited").is_none() && row.get("also_in").is_none(),
        "{row:#}"
    );
    let leaker = children.iter().find(|c| pid(c) == leaker).unwrap();
    assert_leak(leaker, "child_leak", SOURCE, line_of(SOURCE, "@child_leak"), 555, 1);

    // The 333-byte block the parent freed but every child dropped: in each child, inherited.
    let leak_333 = rows_of(processes, 333);
    assert_eq!(leak_333.len(), CHILDREN, "{document:#}");
    for (pid, row) in &leak_333 {
        assert!(child_pids.contains(pid));
        assert_eq!(row["inherited"], true, "{row:#}");
        assert!(row.get("also_in").is_none());
    }
    // Nothing else: 1 row in the parent, 1 per child plus the 555.
    let rows: usize = processes.iter().map(|p| p["leaks"].as_array().unwrap().len()).sum();
    assert_eq!(rows, 1 + CHILDREN + 1, "{document:#}");

    // The text report says the same: one 777-byte row, naming the children in start order.
    let text = report(&directory, &["--limit", "0"]);
    let rows_777: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with('#') && l.contains(" 777 bytes in 1 block "))
        .collect();
    assert_eq!(rows_777, ["#1 777 bytes in 1 block definitely-lost (malloc)"], "{text}");
    let pids: Vec<String> = also_in.iter().map(u64::to_string).collect();
    let also = format!(
        "  also in 5 forked processes (inherited, not repeated): pid {}\n",
        pids.join(", ")
    );
    assert_eq!(text.matches(&also).count(), 1, "{text}");
    let folded = format!(
        "\n1 inherited row (777 bytes in 1 block) not repeated: shown in the report of pid {}, whose row names this process\n",
        pid(parent)
    );
    assert_eq!(text.matches(&folded).count(), CHILDREN, "{text}");
    let inherited_333 = format!(
        " 333 bytes in 1 block definitely-lost, inherited from pid {} at the fork (malloc)",
        pid(parent)
    );
    assert_eq!(text.matches(&inherited_333).count(), CHILDREN, "{text}");
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with('#') && l.contains(" 555 bytes"))
            .count(),
        1,
        "{text}"
    );
    assert!(!text.contains("no leaks"), "every process leaked: {text}");
}

#[test]
fn a_child_reported_alone_shows_its_inherited_leaks_marked() {
    let scratch = Scratch::new("fork-report-alone");
    let directory = traced_run(&scratch);
    let child = std::fs::read_dir(&directory)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|path| !report_json(path)["fork"].is_null())
        .unwrap();
    let alone = report_json(&child);
    let parent_pid = alone["fork"]["parent_pid"].as_u64().unwrap();
    let rows_777 = leaks_in(&alone, "parent_leak");
    assert_eq!(rows_777.len(), 1, "{alone:#}");
    assert_eq!(rows_777[0]["inherited"], true);
    assert!(rows_777[0].get("also_in").is_none());
    assert!(alone.get("inherited_shown_elsewhere").is_none());
    let text = report(&child, &[]);
    assert_eq!(
        text.matches(&format!(
            "777 bytes in 1 block definitely-lost, inherited from pid {parent_pid} at the fork (malloc)"
        ))
        .count(),
        1,
        "{text}"
    );
}

/// `with multiprocessing.Pool(4)` ends by terminating its workers, often before their first
/// flush: each worker's trace must still be readable (cut short, saying which process it was),
/// and `libleak run --fail-on-leak` must exit as the program did, with every process in the
/// report: a terminated worker judged nothing, so it lists no row.
#[test]
fn pool_workers_terminated_early_leave_readable_traces_and_run_exits_like_the_program() {
    const POOL: &str = "import multiprocessing\n\
def square(x):\n    return x * x\n\
if __name__ == '__main__':\n    with multiprocessing.Pool(4) as pool:\n        print(sum(pool.map(square, range(100))))\n";
    for python in pythons() {
        let scratch = Scratch::new(&format!("pool-{}.{}", python.version.0, python.version.1));
        std::fs::write(scratch.join("pool.py"), POOL).unwrap();
        for attempt in 0..3 {
            let report_file = scratch.join(&format!("report{attempt}.json"));
            let out = run(Command::new(libleak_bin())
                .args(["run", "--json", "--fail-on-leak", "--report-file"])
                .arg(&report_file)
                .arg("--")
                .arg(&python.path)
                .arg("pool.py")
                .current_dir(&scratch.path)
                .env("LIBLEAK_SO", libleak_so()));
            let label = python.label();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(0), "{label}: {stderr}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), "328350\n", "{label}");
            let document: Value = serde_json::from_slice(&std::fs::read(&report_file).unwrap()).unwrap();
            assert_eq!(document["unreadable"], Value::Array(vec![]), "{label}: {document}");
            let processes = document["processes"].as_array().unwrap();
            assert_eq!(processes.len(), 5, "{label}: the parent and 4 workers");
            let parent = processes.iter().find(|p| p["fork"].is_null() && p["complete"] == true);
            let parent_pid = parent.expect("the parent's complete trace")["process"]["pid"].clone();
            let workers: Vec<&Value> = processes
                .iter()
                .filter(|p| p["process"]["parent_pid"] == parent_pid)
                .collect();
            assert_eq!(workers.len(), 4, "{label}: every worker names the parent");
            for worker in workers {
                // A worker terminated before its exit scan judged none of what it inherited:
                // those blocks are its parent's, counted apart and never listed as its own.
                if worker["reachability"].is_null() {
                    // (A worker killed before its FORK record was written knows of no inheritance.)
                    // Those it freed before it was killed (when it flushed them) are gone.
                    let inherited = worker["fork"]["inherited_blocks"].as_u64().unwrap_or(0);
                    let frees = worker["totals"]["frees"].as_u64().unwrap();
                    let unjudged = worker["summary"]["inherited_unjudged"]["blocks"].as_u64().unwrap_or(0);
                    assert!(
                        unjudged <= inherited && unjudged + frees >= inherited,
                        "{label}: {unjudged} unjudged of {inherited} inherited, {frees} frees: {worker:#}"
                    );
                    // What it allocated itself was never judged either: counted, not listed.
                    assert_eq!(worker["leaks"], Value::Array(vec![]), "{label}: {worker:#}");
                    assert_eq!(worker["summary"]["unclassified"]["blocks"], 0, "{label}: {worker:#}");
                }
            }
        }
    }
}

/// Workers that `spawn` and `forkserver` start are no fork children, but their parent was
/// traced: terminated by `with Pool()` before their exit scan, they list nothing either
/// (every block a fresh interpreter holds, 800 rows a worker that imported numpy).
#[test]
fn spawned_pool_workers_terminated_early_list_nothing() {
    const POOL: &str = "import multiprocessing, sys\n\
def square(x):\n    return x * x\n\
if __name__ == '__main__':\n    with multiprocessing.get_context(sys.argv[1]).Pool(2) as pool:\n        print(sum(pool.map(square, range(100))))\n";
    let Some(python) = pythons().pop() else {
        panic!("no usable Python interpreter found");
    };
    let label = python.label();
    let scratch = Scratch::new(&format!("spawned-pool-{}.{}", python.version.0, python.version.1));
    std::fs::write(scratch.join("pool.py"), POOL).unwrap();
    for method in ["spawn", "forkserver"] {
        let report_file = scratch.join(&format!("{method}.json"));
        let out = run(Command::new(libleak_bin())
            .args(["run", "--json", "--fail-on-leak", "--report-file"])
            .arg(&report_file)
            .arg("--")
            .arg(&python.path)
            .args(["pool.py", method])
            .current_dir(&scratch.path)
            .env("LIBLEAK_SO", libleak_so()));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{label} {method}: {stderr}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "328350\n", "{label} {method}");
        let document: Value = serde_json::from_slice(&std::fs::read(&report_file).unwrap()).unwrap();
        let processes = document["processes"].as_array().unwrap();
        let mut killed = 0;
        for process in processes.iter().filter(|p| p["reachability"].is_null()) {
            killed += 1;
            assert_eq!(process["leaks"], Value::Array(vec![]), "{label} {method}: {process:#}");
            assert_eq!(
                process["summary"]["unclassified"]["blocks"], 0,
                "{label} {method}: {process:#}"
            );
        }
        eprintln!(
            "{label} {method}: {} processes, {killed} ended before their exit scan",
            processes.len()
        );
    }
}

/// Runs `script` (which imports the `frames` extension, forks `children` times and prints
/// `forked N`) under libleak on `python`, every process tracing into one directory, checks it
/// ran as it should, and returns `libleak report --json --limit 0` over that directory.
fn python_forks_traced(python: &Python, scratch_label: &str, script: &str, children: usize) -> Value {
    python_forks_traced_with(python, scratch_label, script, children, &[])
}

/// [`python_forks_traced`] with more environment variables.
fn python_forks_traced_with(
    python: &Python,
    scratch_label: &str,
    script: &str,
    children: usize,
    environment: &[(&str, &str)],
) -> Value {
    let label = python.label();
    let scratch = Scratch::new(&format!("{scratch_label}-{}.{}", python.version.0, python.version.1));
    python.build_extension(&fixtures_dir().join("pyframes/frames.c"), "frames", &scratch.path);
    std::fs::write(scratch.join("forks.py"), script).unwrap();
    let directory = scratch.join("traces");
    std::fs::create_dir_all(&directory).unwrap();
    let out = run(Command::new(&python.real_path)
        .arg("forks.py")
        .current_dir(&scratch.path)
        .env("PYTHONPATH", &scratch.path)
        .env("LD_PRELOAD", libleak_so())
        .env("LIBLEAK_OUTPUT", format!("{}/", directory.display()))
        .envs(environment.iter().copied()));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{label}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("forked {children}\n"),
        "{label}"
    );
    serde_json::from_str(&report(&directory, &["--json", "--limit", "0"])).unwrap()
}

/// The same from Python: a C extension's 777-byte leak made before five `os.fork()`s is one row,
/// the parent's, whether the children end by `os._exit` or by returning; the 555 bytes one
/// child leaks itself stay its own. A CPython child inherits more than 10,000 blocks, so by
/// default it judges only what it allocated and leaves the 777 bytes to the parent's report;
/// judging everything (`LIBLEAK_CHILD_SCAN=all`, on the first interpreter), each child finds
/// them too and the parent's row names the five.
#[test]
fn python_fork_children_do_not_repeat_the_parents_leak() {
    const SCRIPT: &str = "import os, sys\nimport frames\n\
frames.alloc(777)\n\
children = []\n\
for i in range(5):\n    pid = os.fork()\n    if pid == 0:\n        if i == 2:\n            frames.alloc(555)\n        if i % 2:\n            os._exit(0)\n        sys.exit(0)\n    children.append(pid)\n\
for pid in children:\n    assert os.waitpid(pid, 0)[1] == 0\n\
print('forked', len(children))\n";
    for (number, python) in pythons().into_iter().enumerate() {
        let label = python.label();
        let modes: &[&str] = if number == 0 { &["own", "all"] } else { &["own"] };
        for &mode in modes {
            // Under load, a child that leaves by `os._exit` (no finalisation) has been seen to
            // find the 777 bytes possibly lost: a stale pointer to an object freed long before,
            // left in large live blocks, points into the middle of the block that took its
            // memory (the heap's layout shifts when libleak's batches are made afresh for a
            // collector behind).
            with_one_retry(&format!("{label}, {mode}"), || {
                let environment: &[(&str, &str)] = if mode == "all" {
                    &[("LIBLEAK_CHILD_SCAN", "all")]
                } else {
                    &[]
                };
                let document = python_forks_traced_with(&python, "pyfork", SCRIPT, 5, environment);
                let processes = document["processes"].as_array().unwrap();
                assert_eq!(processes.len(), 6, "{label}: {document:#}");
                let parent = processes.iter().find(|p| p["fork"].is_null()).unwrap();
                let children: Vec<&Value> = processes.iter().filter(|p| !p["fork"].is_null()).collect();
                let mut child_pids: Vec<u64> = children.iter().map(|c| pid(c)).collect();
                child_pids.sort();
                let leak_777 = rows_of(processes, 777);
                assert_eq!(leak_777.len(), 1, "{label}, {mode}: {document:#}");
                let (owner, row) = leak_777[0];
                assert_eq!(owner, pid(parent), "{label}, {mode}");
                assert_eq!(row["blocks"], 1, "{label}, {mode}");
                let mut also_in: Vec<u64> = row["also_in"]
                    .as_array()
                    .map(|pids| pids.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_default();
                also_in.sort();
                if mode == "all" {
                    assert_eq!(also_in, child_pids, "{label}: {row:#}");
                } else {
                    assert!(also_in.is_empty(), "{label}: {row:#}");
                    // Decided at the first scan (finalisation's, for those that return); the
                    // exit scan's count is what is left then.
                    for child in &children {
                        let unjudged = child["reachability"]["inherited_unjudged"].as_u64().unwrap_or(0);
                        assert!(unjudged > 0, "{label}: {:#}", child["reachability"]);
                    }
                }
                let leak_555 = rows_of(processes, 555);
                assert_eq!(leak_555.len(), 1, "{label}, {mode}: {document:#}");
                assert!(child_pids.contains(&leak_555[0].0), "{label}, {mode}");
                assert!(leak_555[0].1.get("inherited").is_none(), "{label}, {mode}");
            });
        }
    }
}

/// A parent with a large heap forks children that each leak their own amount: each child's
/// trace holds its own work only (a small fraction of the parent's), the inherited blocks are
/// read from the parent's trace (every free of one matched), every child's own leak is exact,
/// the blocks a child keeps through the parent's structures are no leak, and the parent's leak
/// is shown once. Past 10,000 inherited blocks a child judges only what it allocated: its scan
/// reads the inherited blocks on pages it wrote to since the fork, not the 200,000 others, and
/// counts the inherited blocks as not judged. With the parent's trace gone, a child still
/// reports its own leak exactly and says why its inherited blocks are unknown.
#[test]
fn children_of_a_large_parent_record_only_their_own_work() {
    const BIG: &str = "forks/big_parent.c";
    let scratch = Scratch::new("fork-big-parent");
    let directory = traced_run_of(&scratch, BIG, 4);
    let traces: Vec<PathBuf> = std::fs::read_dir(&directory)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let reports: Vec<(PathBuf, Value)> = traces.iter().map(|t| (t.clone(), report_json(t))).collect();
    let (parent_path, parent) = reports.iter().find(|(_, r)| r["fork"].is_null()).unwrap();
    let parent_size = std::fs::metadata(parent_path).unwrap().len();
    let mut children: Vec<&(PathBuf, Value)> = reports.iter().filter(|(_, r)| !r["fork"].is_null()).collect();
    children.sort_by_key(|(_, r)| r["process"]["start_time_unix_ns"].as_u64());
    assert_eq!(children.len(), 3);

    assert_leak(parent, "parent_leak", BIG, line_of(BIG, "@parent_leak"), 4321, 1);
    assert_eq!(parent["leaks"].as_array().unwrap().len(), 1, "{parent:#}");
    for (number, (path, child)) in children.iter().enumerate() {
        let size = std::fs::metadata(path).unwrap().len();
        assert!(
            size * 5 < parent_size,
            "{}: {size} bytes, the parent's {parent_size}: a child's trace must not repeat the parent's heap",
            path.display()
        );
        let fork = &child["fork"];
        assert_eq!(fork["inherited_read"], true, "{fork:#}");
        assert_eq!(fork["parent_trace"], parent_path.display().to_string());
        let inherited = fork["inherited_blocks"].as_u64().unwrap();
        assert!(inherited > 200_000, "{fork:#}");
        // The eleven inherited blocks each child freed were read from the parent's trace.
        assert_eq!(child["totals"]["unmatched_frees"], 0, "{:#}", child["totals"]);
        let own = 1001 * (number as u64 + 1);
        assert_leak(child, "child_leak", BIG, line_of(BIG, "@child_leak"), own, 1);
        // Named only by a page the child never wrote to: lost.
        assert_leak(child, "reborn_leak", BIG, line_of(BIG, "@reborn_leak"), 999, 1);
        assert!(
            leaks_in(child, "kept").is_empty(),
            "kept through the parent's blocks: {child:#}"
        );
        assert_eq!(child["leaks"].as_array().unwrap().len(), 2, "{child:#}");
        // Its own blocks judged; the inherited ones left to the parent, only those on pages
        // written since the fork read.
        let scan = &child["reachability"];
        assert_eq!(scan["outcome"], "complete", "{child:#}");
        let still_inherited = inherited - 11;
        assert_eq!(scan["inherited_unjudged"].as_u64(), Some(still_inherited), "{scan:#}");
        let read = scan["inherited_scanned"].as_u64().unwrap();
        assert!(
            read > 0 && read < 20_000,
            "{read} of {still_inherited} inherited blocks read: {scan:#}"
        );
        assert!(scan["blocks"].as_u64().unwrap() < 20_000, "{scan:#}");
        assert_eq!(
            child["summary"]["inherited_unjudged"]["blocks"].as_u64(),
            Some(still_inherited),
            "{:#}",
            child["summary"]
        );
        let kept = &child["summary"]["reachable"];
        assert!(kept["bytes"].as_u64().unwrap() >= 5005 + 6006, "{:#}", child["summary"]);
    }

    // Together: the parent's leak once; each child's own once.
    let together: Value = serde_json::from_str(&report(&directory, &["--json", "--limit", "0"])).unwrap();
    let processes = together["processes"].as_array().unwrap();
    let parent_rows = rows_of(processes, 4321);
    assert_eq!(parent_rows.len(), 1, "{together:#}");
    for own in [1001, 2002, 3003] {
        assert_eq!(rows_of(processes, own).len(), 1, "{own}: {together:#}");
    }
    for kept in [5005, 6006] {
        assert!(rows_of(processes, kept).is_empty(), "{kept}: {together:#}");
    }

    // Judging everything (`LIBLEAK_CHILD_SCAN=all`): the parent's leak is found in each child
    // too, inherited, and shown once, naming the three children.
    let all = scratch.join("all");
    std::fs::create_dir_all(&all).unwrap();
    let output = run(Command::new(scratch.join("fixture"))
        .env("LD_PRELOAD", libleak_so())
        .env("LIBLEAK_CHILD_SCAN", "all")
        .env("LIBLEAK_OUTPUT", format!("{}/", all.display())));
    assert_eq!(output.status.code(), Some(0));
    let judged: Value = serde_json::from_str(&report(&all, &["--json", "--limit", "0"])).unwrap();
    let processes = judged["processes"].as_array().unwrap();
    let parent_rows = rows_of(processes, 4321);
    assert_eq!(parent_rows.len(), 1, "{judged:#}");
    assert_eq!(parent_rows[0].1["also_in"].as_array().map(Vec::len), Some(3));
    for process in processes.iter().filter(|p| !p["fork"].is_null()) {
        assert_eq!(process["reachability"]["inherited_unjudged"], 0, "{process:#}");
        assert!(
            process["reachability"]["blocks"].as_u64().unwrap() > 190_000,
            "{process:#}"
        );
        assert!(leaks_in(process, "kept").is_empty(), "{process:#}");
    }

    // The parent's trace renamed (as `libleak run` delivers traces): still found, by its
    // process, beside the child's.
    let renamed = directory.join("renamed-parent.trace");
    std::fs::rename(parent_path, &renamed).unwrap();
    let (first_child, _) = children[0];
    let found = report_json(first_child);
    assert_eq!(found["fork"]["inherited_read"], true, "{:#}", found["fork"]);
    assert_eq!(found["totals"]["unmatched_frees"], 0);

    // The parent's trace gone: each child's own leak still exact, the loss said.
    std::fs::remove_file(&renamed).unwrap();
    let (path, _) = children[1];
    let alone = report_json(path);
    assert_leak(&alone, "child_leak", BIG, line_of(BIG, "@child_leak"), 2002, 1);
    assert_leak(&alone, "reborn_leak", BIG, line_of(BIG, "@reborn_leak"), 999, 1);
    assert_eq!(alone["leaks"].as_array().unwrap().len(), 2, "{alone:#}");
    assert_eq!(alone["fork"]["inherited_read"], false);
    let why = alone["fork"]["inherited_unknown"].as_str().unwrap();
    assert!(why.contains("cannot be opened"), "{why}");
    let text = report(path, &[]);
    assert!(text.contains("INHERITED BLOCKS UNKNOWN: the parent's trace"), "{text}");
}

/// Python children of a parent with more than 100,000 live blocks judge only what they
/// allocated: what a child keeps through the parent's objects (appended to an inherited
/// list, set in an inherited dict and on an inherited instance, all on pages written after
/// the fork) is no leak, and the block a C extension leaks in the child is its only row, exact,
/// whether it ends by `os._exit` or by `sys.exit` (which scans at finalisation too).
#[test]
fn python_children_of_a_large_parent_judge_their_own_blocks() {
    const SCRIPT: &str = r#"import os, sys
import frames
big = [{'k': i, 'v': [i, str(i)]} for i in range(60000)]
holder = {'items': []}
class Box:
    pass
box = Box()
children = []
for i in range(2):
    pid = os.fork()
    if pid == 0:
        holder['items'].append([i] * 10)
        big[30000]['new'] = {'child': i}
        big[-1]['v'].append('x' * 100)
        box.attr = bytearray(4096 + i)
        frames.alloc(1000 + i)
        if i == 0:
            os._exit(0)
        sys.exit(0)
    children.append(pid)
for pid in children:
    assert os.waitpid(pid, 0)[1] == 0
print('forked', len(children))
"#;
    for python in pythons() {
        let label = python.label();
        let document = python_forks_traced(&python, "pyfork-big", SCRIPT, 2);
        let processes = document["processes"].as_array().unwrap();
        assert_eq!(processes.len(), 3, "{label}: {document:#}");
        // Child 0 leaves by `os._exit`, child 1 by `sys.exit` (their traces may start in
        // either order: a child's writer starts at its first event).
        let mut children: Vec<&Value> = processes.iter().filter(|p| !p["fork"].is_null()).collect();
        children.sort_by_key(|c| c["exit"]["kind"] != "_exit");
        assert_eq!(children[0]["exit"]["kind"], "_exit", "{label}: {document:#}");
        for (number, child) in children.iter().enumerate() {
            let inherited = child["fork"]["inherited_blocks"].as_u64().unwrap();
            assert!(inherited > 100_000, "{label}: {:#}", child["fork"]);
            // The child that leaves by `sys.exit` frees most of what it inherited while the
            // interpreter shuts down: its scan at finalisation is the one made with them all.
            let scan = &child[if number == 0 {
                "reachability"
            } else {
                "reachability_at_finalization"
            }];
            assert_eq!(scan["outcome"], "complete", "{label}: {child:#}");
            assert!(
                scan["inherited_unjudged"].as_u64().unwrap() > 100_000,
                "{label}: {scan:#}"
            );
            assert!(
                scan["inherited_scanned"].as_u64().unwrap() < inherited / 2,
                "{label}: {scan:#}"
            );
            let rows = child["leaks"].as_array().unwrap();
            assert_eq!(rows.len(), 1, "{label}: child {number}: {child:#}");
            assert_eq!(rows[0]["bytes"], 1000 + number as u64, "{label}: {child:#}");
            assert_eq!(rows[0]["blocks"], 1, "{label}");
            assert_eq!(rows[0]["frames"][0]["function"], "keep_alive", "{label}: {child:#}");
            if number == 0 {
                // What it kept through inherited objects (the 4 KiB bytearray above all) is
                // reachable, not lost memory of the interpreter's.
                let summary = &child["summary"];
                assert!(
                    summary["reachable"]["bytes"].as_u64().unwrap() > 4096,
                    "{label}: {summary:#}"
                );
                assert!(
                    summary["runtime_leftovers"]["bytes"].as_u64().unwrap() < 4096,
                    "{label}: {summary:#}"
                );
            }
        }
    }
}
