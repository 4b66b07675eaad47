//! Reachability at exit, against real processes: every class on a C fixture (with threads
//! still running at exit), Python objects leaked from C on every interpreter found, a Python
//! program that leaks nothing (its default report must list no leak), and the report's
//! grouping, suppressions and CI gate.

use std::process::Command;

use libleak_tests::*;
use serde_json::Value;

fn rows(report: &Value) -> &Vec<Value> {
    report["leaks"].as_array().expect("leaks array")
}

/// Rows whose owner is `function`.
fn owned_by<'a>(report: &'a Value, function: &str) -> Vec<&'a Value> {
    rows(report)
        .iter()
        .filter(|row| row["owner"]["function"].as_str() == Some(function))
        .collect()
}

/// The one row owned by `function` at `line` (the owner frame's line), with its amounts.
fn row_at<'a>(report: &'a Value, function: &str, line: u64) -> &'a Value {
    let found: Vec<&Value> = owned_by(report, function)
        .into_iter()
        .filter(|row| row["owner"]["line"].as_u64() == Some(line))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one row owned by {function}:{line} expected in {report:#}"
    );
    found[0]
}

fn amounts(row: &Value) -> (&str, u64, u64) {
    (
        row["kind"].as_str().unwrap(),
        row["bytes"].as_u64().unwrap(),
        row["blocks"].as_u64().unwrap(),
    )
}

fn report_exit_code(trace: &std::path::Path, extra: &[&str]) -> (Option<i32>, String) {
    let out = run(Command::new(libleak_bin()).arg("report").args(extra).arg(trace));
    (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Builds the C fixture `reach/<name>.c` with threads, runs it plainly and traced (same
/// output, exit 0) and returns the traced run's report (its scan complete), trace and output.
fn traced_c_fixture(scratch: &Scratch, name: &str) -> (Value, std::path::PathBuf, String) {
    let exe = scratch.join(name);
    compile("gcc", &[&format!("reach/{name}.c")], &exe, &["-pthread"]);
    let plain = run(&mut Command::new(&exe));
    let traced = run_traced(scratch, &mut Command::new(&exe));
    assert_eq!(traced.output.stdout, plain.stdout);
    assert_eq!(traced.output.status.code(), Some(0));
    let report = report_json(&traced.trace);
    assert_eq!(report["reachability"]["outcome"], "complete", "{report:#}");
    let output = String::from_utf8_lossy(&plain.stdout).into_owned();
    (report, traced.trace, output)
}

#[test]
fn every_class_on_a_c_program_with_threads_running_at_exit() {
    let scratch = Scratch::new("reach");
    let (report, trace, _) = traced_c_fixture(&scratch, "reach");
    let line = |marker: &str| line_of("reach/reach.c", marker);

    assert_eq!(
        amounts(row_at(&report, "drop_block", line("@dropped"))),
        ("definitely-lost", 777, 1)
    );
    // One leak: the owner, with the vector and items it keeps as parts of its row.
    let owner = row_at(&report, "drop_owner", line("@owner"));
    assert_eq!(amounts(owner), ("definitely-lost", 48 + 16 + 800, 3));
    assert_eq!(owner["roots"], serde_json::json!({"blocks": 1, "bytes": 48}));
    let parts: Vec<(u64, &str, u64, u64)> = owner["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["owner"]["line"].as_u64().unwrap(),
                p["kind"].as_str().unwrap(),
                p["bytes"].as_u64().unwrap(),
                p["blocks"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        parts,
        [
            (line("@items"), "indirectly-lost", 800, 1),
            (line("@vec"), "indirectly-lost", 16, 1)
        ]
    );
    assert_eq!(
        amounts(row_at(&report, "keep_middle", line("@middle"))),
        ("possibly-lost", 4096, 1)
    );
    // A Rust hash table's only pointer is to its control bytes, past its buckets: no row.
    assert!(owned_by(&report, "keep_hash_table").is_empty(), "{report:#}");
    // Reference-counted blocks held past their counts, a block held by a tagged pointer: no row.
    assert!(owned_by(&report, "keep_counted").is_empty(), "{report:#}");
    // One site, two callers: one row by site, listing both stacks.
    let twice = row_at(&report, "twice_site", line("@twice"));
    assert_eq!(amounts(twice), ("definitely-lost", 600, 2));
    let callers: Vec<&str> = twice["stacks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["frames"][1]["function"].as_str().unwrap())
        .collect();
    assert_eq!(callers.len(), 2, "{twice:#}");
    assert!(
        callers.contains(&"first_caller") && callers.contains(&"second_caller"),
        "{callers:?}"
    );
    // Nothing else: the cache and the running threads' blocks are reachable.
    assert_eq!(rows(&report).len(), 4, "{report:#}");
    assert_eq!(report["summary"]["definitely_lost"]["bytes"], 777 + 48 + 600);
    assert_eq!(report["summary"]["indirectly_lost"]["bytes"], 816);
    assert!(report["summary"]["reachable"]["blocks"].as_u64().unwrap() >= 6);

    let all = report_json_with(&trace, &["--show-reachable"]);
    for (function, marker, bytes, blocks) in [
        ("fill_cache", "@cache", 4000, 4),
        ("blocked_thread", "@blocked", 5555, 1),
        ("spinning_thread", "@spinning", 6666, 1),
    ] {
        assert_eq!(
            amounts(row_at(&all, function, line(marker))),
            ("reachable", bytes, blocks),
            "{function}"
        );
    }

    let by_stack = report_json_with(&trace, &["--group-by", "stack"]);
    assert_eq!(owned_by(&by_stack, "twice_site").len(), 2);

    // The CI gate: definite and indirect leaks are 2,241 bytes.
    assert_eq!(report_exit_code(&trace, &[]).0, Some(0));
    assert_eq!(report_exit_code(&trace, &["--fail-on-leak"]).0, Some(23));
    assert_eq!(report_exit_code(&trace, &["--fail-on-leak=2240"]).0, Some(23));
    assert_eq!(report_exit_code(&trace, &["--fail-on-leak=2241"]).0, Some(0));

    // A user's suppressions file, in LeakSanitizer's syntax.
    let suppressions = scratch.join("leaks.supp");
    std::fs::write(&suppressions, "# known\nleak:drop_owner\n").unwrap();
    let supp = suppressions.to_str().unwrap();
    let suppressed = report_json_with(&trace, &["--suppressions", supp]);
    assert!(owned_by(&suppressed, "drop_owner").is_empty());
    assert_eq!(rows(&suppressed).len(), 3);
    assert_eq!(rows(&report).len() - 1, rows(&suppressed).len());
    let suppressed_bytes = |r: &Value| r["summary"]["suppressed"]["bytes"].as_u64().unwrap();
    assert_eq!(suppressed_bytes(&suppressed), suppressed_bytes(&report) + 48 + 16 + 800);
    assert_eq!(
        report_exit_code(&trace, &["--suppressions", supp, "--fail-on-leak=1377"]).0,
        Some(0)
    );
    std::fs::write(&suppressions, "race:drop_owner\n").unwrap();
    let (code, stderr) = report_exit_code(&trace, &["--suppressions", supp]);
    assert_eq!(code, Some(2));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("leaks.supp:1"), "{stderr}");

    let listed = run(Command::new(libleak_bin()).arg("suppressions"));
    assert!(listed.status.success());
    assert!(String::from_utf8_lossy(&listed.stdout).contains("\nleak:_dl_allocate_tls\n"));
}

/// An exited thread's cached stack is no root (a block only its dead frame names is lost),
/// but memory right above a no-access reservation is, though it sits where a thread's stack
/// would, above its guard (helper-28's gevent row on 3.11: CPython's frame stack chunk there).
#[test]
fn a_cached_thread_stack_is_no_root_but_memory_above_a_reservation_is() {
    let scratch = Scratch::new("stack-shapes");
    let (report, trace, _) = traced_c_fixture(&scratch, "stack_shapes");
    let line = |marker: &str| line_of("reach/stack_shapes.c", marker);
    assert_eq!(
        amounts(row_at(&report, "exited_thread", line("@exited"))),
        ("definitely-lost", 3333, 1)
    );
    assert!(owned_by(&report, "above_reservation").is_empty(), "{report:#}");
    assert_eq!(rows(&report).len(), 1, "{report:#}");
    let all = report_json_with(&trace, &["--show-reachable"]);
    assert_eq!(
        amounts(row_at(&all, "above_reservation", line("@above"))),
        ("reachable", 4444, 1)
    );
}

/// The exit scan of a program whose only thread waits for it copies memory directly; a guard
/// page (Linux 6.13+) in the middle of a mapping that holds the only pointers to two blocks is
/// read around, never copied: the program exits as it would, both blocks are reachable, the
/// dropped one is lost. (A plain copy of that page faults.)
#[test]
fn a_guard_page_in_a_root_is_read_around() {
    let scratch = Scratch::new("guarded");
    let (report, trace, output) = traced_c_fixture(&scratch, "guarded");
    if output != "guarded\n" {
        eprintln!(
            "no guard page on this kernel: the mapping is read whole ({})",
            output.trim()
        );
    }
    let line = |marker: &str| line_of("reach/guarded.c", marker);
    assert_eq!(
        amounts(row_at(&report, "dropped", line("@dropped"))),
        ("definitely-lost", 7777, 1)
    );
    assert_eq!(rows(&report).len(), 1, "{report:#}");
    let all = report_json_with(&trace, &["--show-reachable"]);
    assert_eq!(
        amounts(row_at(&all, "kept_before", line("@before"))),
        ("reachable", 5555, 1)
    );
    assert_eq!(
        amounts(row_at(&all, "kept_after", line("@after"))),
        ("reachable", 6666, 1)
    );
}

/// A lost cycle of C blocks with no source is led by its oldest block, not by the one at the
/// lowest address: the same program makes the same row run after run (helper-28's pygit2
/// repository cycle came out under 1 to 6 rows, led by different sites).
#[test]
fn a_lost_cycle_is_led_by_its_oldest_block() {
    let scratch = Scratch::new("cycle-order");
    let (report, _, output) = traced_c_fixture(&scratch, "cycle_order");
    assert_eq!(output, "youngest lowest\n", "the fixture's layout");
    let line = |marker: &str| line_of("reach/cycle_order.c", marker);
    let rows = rows(&report);
    assert_eq!(rows.len(), 1, "{report:#}");
    let row = row_at(&report, "first_node", line("@first"));
    assert_eq!(amounts(row), ("definitely-lost", 3 * 128, 3));
    assert_eq!(row["roots"], serde_json::json!({"blocks": 1, "bytes": 128}));
}

#[test]
fn python_objects_leaked_from_c_are_definitely_lost_on_every_interpreter() {
    let pythons = pythons();
    assert!(!pythons.is_empty(), "no usable Python interpreter found");
    let c = |marker: &str| line_of("reach/objects.c", marker);
    let py = |marker: &str| line_of("reach/objects.py", marker);
    for python in pythons {
        let label = python.label();
        let report = python.traced_fixture_report("reach", "objects.c", "reachobj", "objects.py");

        // Listed as a leak, never reachable: definitely lost, or now and then (seen on
        // Debian's 3.11) indirectly lost when a block the interpreter itself lost still refers
        // to it, or possibly lost when a stale interior address survives in memory realloc
        // freed without libleak zeroing it. The classes themselves are pinned down exactly by
        // the C fixture above.
        let lost = |row: &Value| {
            ["definitely-lost", "indirectly-lost", "possibly-lost"].contains(&row["kind"].as_str().unwrap())
        };
        let bytes = row_at(&report, "leak_bytes", c("@leak_bytes"));
        assert!(lost(bytes), "{label}: {bytes:#}");
        assert_eq!((amounts(bytes).1, amounts(bytes).2), (50_033, 1), "{label}");
        assert_eq!(bytes["owner"]["python"]["function"], "make_bytes", "{label}");
        assert_eq!(
            bytes["owner"]["python"]["line"].as_u64(),
            Some(py("@call_bytes")),
            "{label}"
        );

        // A list: its GC header links it to the collector's lists, which are not references.
        let list = row_at(&report, "leak_list", c("@leak_list"));
        assert!(lost(list), "{label}: {list:#}");
        assert_eq!(list["roots"], serde_json::json!({"blocks": 1, "bytes": 56}), "{label}");
        assert_eq!(list["owner"]["python"]["function"], "make_list", "{label}");
        assert_eq!(
            list["owner"]["python"]["line"].as_u64(),
            Some(py("@call_list")),
            "{label}"
        );
        assert_eq!(list["leaked_references"]["leaked"], 1, "{label}: {list:#}");
        // Its item array and its int go with it, as parts of its row: indirectly lost, or
        // possibly lost when a stale copy of an interior address survives somewhere (the
        // interpreter reallocates item arrays, and realloc frees the old array without
        // libleak zeroing it).
        let parts = list["parts"].as_array().unwrap();
        for part in parts {
            assert!(
                ["indirectly-lost", "possibly-lost"].contains(&part["kind"].as_str().unwrap()),
                "{label}: {part:#}"
            );
        }
        let blocks: u64 = parts.iter().map(|p| p["blocks"].as_u64().unwrap()).sum();
        assert_eq!(blocks, 2, "{label}: {list:#}");
        assert_eq!(amounts(list).2, 3, "{label}: {list:#}");
        assert_eq!(rows(&report).len(), 2, "{label}: only the planted leaks: {report:#}");
    }
}

/// A static of the interpreter left pointing inside a block since freed (CPython 3.9–3.11's
/// parser keeps one into each AST arena it frees) names nothing allocated there later: the
/// leaked block in that memory is definitely lost, not possibly lost through the stale word.
#[test]
fn a_stale_interpreter_static_pointing_into_reused_memory_holds_no_leak() {
    let pythons = pythons();
    assert!(!pythons.is_empty(), "no usable Python interpreter found");
    let c = |marker: &str| line_of("reach/dangling_static.c", marker);
    for python in pythons {
        let label = python.label();
        let report =
            python.traced_fixture_report("reach", "dangling_static.c", "dangling_static", "dangling_static.py");
        let row = row_at(&report, "reuse", c("@dangling_leak"));
        assert_eq!(amounts(row), ("definitely-lost", 8224, 1), "{label}: {row:#}");
        assert_eq!(rows(&report).len(), 1, "{label}: only the planted leak: {report:#}");
    }
}

/// A leaked dict a Python name reaches only through a pointer inside it (stale bytes in a live
/// object) while a C static holds its start until the module's teardown: at finalisation the
/// static holds it, not the name, so once the static lets go it is a leak, not a block kept
/// past the teardown by a name.
#[test]
fn a_name_reaching_inside_a_block_does_not_hold_it() {
    let pythons = pythons();
    assert!(!pythons.is_empty(), "no usable Python interpreter found");
    let c = |marker: &str| line_of("reach/interior_name.c", marker);
    let py = |marker: &str| line_of("reach/interior_name.py", marker);
    for python in pythons {
        let label = python.label();
        let report = python.traced_fixture_report("reach", "interior_name.c", "interior_name", "interior_name.py");
        let row = row_at(&report, "make", c("@interior_dict"));
        assert_eq!(row["kind"], "definitely-lost", "{label}: {row:#}");
        assert_eq!(
            row["roots"],
            serde_json::json!({"blocks": 1, "bytes": 64}),
            "{label}: {row:#}"
        );
        assert_eq!(row["leaked_references"]["leaked"], 1, "{label}: {row:#}");
        assert_eq!(
            row["owner"]["python"]["line"].as_u64(),
            Some(py("@interior_call")),
            "{label}"
        );
        assert_eq!(rows(&report).len(), 1, "{label}: only the planted leak: {report:#}");
    }
}

#[test]
fn a_python_program_that_leaks_nothing_has_an_empty_report_on_every_interpreter() {
    let fixtures = fixtures_dir().join("reach");
    let pythons = pythons();
    assert!(!pythons.is_empty(), "no usable Python interpreter found");
    for python in pythons {
        let label = python.label();
        let scratch = Scratch::new(&format!("control{}{}", python.version.0, python.version.1));
        std::fs::copy(fixtures.join("control.py"), scratch.join("control.py")).unwrap();
        let report = report_json(&python.run_script_traced(&scratch, "control.py", &label));
        assert_eq!(report["reachability"]["outcome"], "complete", "{label}");
        assert_eq!(rows(&report).len(), 0, "{label}: {report:#}");
        let summary = &report["summary"];
        for class in ["definitely_lost", "indirectly_lost", "possibly_lost", "unclassified"] {
            assert_eq!(summary[class]["blocks"], 0, "{label}: {class}");
        }
        let tally = |name: &str| format!("{} blocks / {} bytes", summary[name]["blocks"], summary[name]["bytes"]);
        eprintln!(
            "{label}: live at exit {} blocks; reachable {}; runtime leftovers {}; suppressed {}",
            report["totals"]["live_blocks"],
            tally("reachable"),
            tally("runtime_leftovers"),
            tally("suppressed")
        );
    }
}

/// Blocks held only at a header after a power-of-two buffer (SQLite's page cache), with or
/// without a size prefix before them, are no leak at `_exit`; one held inside its buffer is
/// possibly lost, one dropped definitely lost.
#[test]
fn pages_held_at_their_trailing_header_are_no_leak() {
    let scratch = Scratch::new("trailing-header");
    let exe = scratch.join("trailing_header");
    compile("gcc", &["reach/trailing_header.c"], &exe, &[]);
    let plain = run(&mut Command::new(&exe));
    let traced = run_traced(&scratch, &mut Command::new(&exe));
    assert_eq!(traced.output.stdout, plain.stdout);
    let report = report_json(&traced.trace);
    assert_eq!(report["reachability"]["outcome"], "complete", "{report:#}");
    let c = |marker: &str| line_of("reach/trailing_header.c", marker);
    let page = 4096 + 264;
    assert_eq!(
        amounts(row_at(&report, "dropped_page", c("@dropped_page"))),
        ("definitely-lost", page, 1)
    );
    assert_eq!(
        amounts(row_at(&report, "held_inside", c("@held_inside"))),
        ("possibly-lost", page, 1)
    );
    assert_eq!(rows(&report).len(), 2, "the pages held at their headers: {report:#}");
    assert_eq!(
        report["summary"]["reachable"]["blocks"].as_u64().map(|b| b >= 32),
        Some(true),
        "{report:#}"
    );
}

/// A database left open by a process ending through `os._exit` (a pool worker): SQLite's
/// cached pages, held at their headers, are no leak.
#[test]
fn an_open_sqlite_database_at_exit_is_no_leak() {
    let pythons = pythons();
    assert!(!pythons.is_empty(), "no usable Python interpreter found");
    for python in pythons {
        let label = python.label();
        let has_sqlite = run(Command::new(&python.path).args(["-c", "import sqlite3"]))
            .status
            .success();
        if !has_sqlite {
            eprintln!("{label}: skipped, this interpreter has no sqlite3 module");
            continue;
        }
        let scratch = Scratch::new(&format!("sqlite{}{}", python.version.0, python.version.1));
        std::fs::copy(
            fixtures_dir().join("reach/sqlite_open.py"),
            scratch.join("sqlite_open.py"),
        )
        .unwrap();
        let report = report_json(&python.run_script_traced(&scratch, "sqlite_open.py", &label));
        assert_eq!(report["reachability"]["outcome"], "complete", "{label}: {report:#}");
        assert!(
            report["summary"]["reachable"]["bytes"].as_u64().unwrap() > 100 * 4096,
            "{label}: the cached pages are live and reachable: {:#}",
            report["summary"]
        );
        assert_eq!(rows(&report).len(), 0, "{label}: {report:#}");
    }
}

/// Under tracemalloc, CPython 3.9-3.12 never free its copies of the tracebacks it records,
/// made inside the allocations it traces, an extension's too: no leak of the program's (a
/// built-in suppression), where they used to be rows owned by the extension.
#[test]
fn tracemalloc_traceback_copies_are_not_the_programs_leaks() {
    let pythons = pythons();
    assert!(!pythons.is_empty(), "no usable Python interpreter found");
    let fixtures = fixtures_dir().join("reach");
    for python in pythons {
        let label = python.label();
        let scratch = Scratch::new(&format!("traced{}{}", python.version.0, python.version.1));
        python.build_extension(&fixtures.join("traced.c"), "traced", &scratch.path);
        std::fs::copy(fixtures.join("traced.py"), scratch.join("traced.py")).unwrap();
        let trace = python.run_script_traced(&scratch, "traced.py", &label);
        let unsuppressed = report_json_with(&trace, &["--no-builtin-suppressions"]);
        let copies = rows(&unsuppressed)
            .iter()
            .filter(|row| row.to_string().contains("\"traceback_new\""))
            .count();
        if python.version < (3, 13) && copies == 0 {
            eprintln!("{label}: skipped, its tracemalloc's frames have no names here (a stripped interpreter)");
            continue;
        }
        let report = report_json(&trace);
        assert_eq!(rows(&report).len(), 0, "{label}: {report:#}");
    }
}

/// Blocks the C++ runtime points to past their start (old-ABI strings point to their
/// characters, `new[]` arrays of elements with a destructor past their count) are no leak;
/// an array dropped is one, with its count's 8 bytes.
#[test]
fn cpp_blocks_pointed_to_past_their_start_by_the_runtimes_layouts_are_no_leak() {
    let scratch = Scratch::new("cpp-layouts");
    let exe = scratch.join("cpp_layouts");
    compile("g++", &["reach/cpp_layouts.cpp"], &exe, &["-D_GLIBCXX_USE_CXX11_ABI=0"]);
    let plain = run(&mut Command::new(&exe));
    let traced = run_traced(&scratch, &mut Command::new(&exe));
    assert_eq!(traced.output.stdout, plain.stdout);
    let report = report_json(&traced.trace);
    assert_eq!(report["reachability"]["outcome"], "complete", "{report:#}");
    let dropped = row_at(
        &report,
        "fixture::drop()",
        line_of("reach/cpp_layouts.cpp", "@dropped_nodes"),
    );
    assert_eq!(amounts(dropped), ("definitely-lost", 8 + 5 * 16, 1));
    assert_eq!(rows(&report).len(), 1, "{report:#}");
}
