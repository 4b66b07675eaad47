//! `libleak report --growth`: memory that is never lost but keeps growing. A request loop
//! (`fixtures/growth/app.py`) keeps results in two unbounded containers (a module dict of
//! objects made by a C extension, a class-attribute list of closures) among a bounded
//! `lru_cache`, a `deque(maxlen=50)`, a big temporary per call and a one-off burst: the two
//! unbounded sites are the top rows with their exact lines, none of the others is listed, at
//! two sizes; the same loop keeping nothing lists nothing. A C extension's static array of
//! buffers is the top row with its C line and Python caller. `--fail-on-growth`, `--json`,
//! `--between`, and a process killed before finalisation. On every interpreter found.

use std::path::Path;
use std::process::Command;

use libleak_tests::*;
use serde_json::Value;

fn fixture(name: &str) -> std::path::PathBuf {
    fixtures_dir().join("growth").join(name)
}

fn app_line(marker: &str) -> u64 {
    line_of("growth/app.py", marker)
}

/// `libleak report --growth --json --limit 0 EXTRA… TRACE`: the document and the exit status.
fn growth_json(trace: &Path, extra: &[&str]) -> (Value, Option<i32>) {
    let out = run(Command::new(libleak_bin())
        .args(["report", "--growth", "--json", "--limit", "0"])
        .args(extra)
        .arg(trace));
    let json = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "growth report is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (json, out.status.code())
}

/// The innermost Python frame of a row: (file, line).
fn python_line(row: &Value) -> Option<(String, u64)> {
    row["frames"]
        .as_array()?
        .iter()
        .find(|f| f["kind"] == "python")
        .map(|f| {
            (
                f["file"].as_str().unwrap_or("").to_string(),
                f["line"].as_u64().unwrap_or(0),
            )
        })
}

fn is_app_line(row: &Value, marker: &str) -> bool {
    python_line(row).is_some_and(|(file, line)| file.ends_with("/app.py") && line == app_line(marker))
}

/// The extension's payload row: `make` at its malloc line, called from the results line.
fn is_make_payload(row: &Value) -> bool {
    let owner = &row["owner"];
    owner["function"] == "make"
        && owner["file"].as_str().is_some_and(|f| f.ends_with("growthext.c"))
        && owner["line"].as_u64() == Some(line_of("growth/growthext.c", "@growth_make"))
        && owner["python"]["line"].as_u64() == Some(app_line("@growth_results"))
        && owner["python"]["file"].as_str().is_some_and(|f| f.ends_with("/app.py"))
}

fn setup(python: &Python, label: &str) -> Scratch {
    let scratch = Scratch::new(label);
    python.build_extension(&fixture("growthext.c"), "growthext", &scratch.path);
    for script in ["app.py", "static_array.py"] {
        std::fs::copy(fixture(script), scratch.join(script)).unwrap();
    }
    scratch
}

/// Runs `app.py ARGS…` plainly and under libleak (same output) and returns the trace.
fn traced_app(python: &Python, scratch: &Scratch, args: &[&str], label: &str) -> std::path::PathBuf {
    let command = || {
        let mut command = Command::new(&python.real_path);
        command
            .arg("app.py")
            .args(args)
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
    assert_eq!(traced.output.status.code(), Some(0), "{label}");
    assert_eq!(traced.output.stdout, plain.stdout, "{label}: stdout changed");
    traced.trace
}

#[test]
fn unbounded_containers_are_the_top_growing_sites_and_bounded_ones_are_not_listed() {
    let pythons = pythons();
    assert!(!pythons.is_empty(), "no usable Python interpreter found");
    let not_growth = ["@growth_temporary", "@growth_deque", "@growth_cache", "@growth_burst"];
    for python in pythons {
        let label = python.label();
        let scratch = setup(&python, &format!("growth{}{}", python.version.0, python.version.1));
        for (iterations, size) in [("400", "1000"), ("600", "3000")] {
            let label = format!("{label} {iterations}x{size}");
            let trace = traced_app(&python, &scratch, &[iterations, size], &label);
            let (report, status) = growth_json(&trace, &[]);
            assert_eq!(status, Some(0), "{label}: no gate, no failure");
            assert_eq!(report["format"], "libleak-growth", "{label}");
            assert_eq!(
                report["period"]["ends"], "finalization",
                "{label}: {}",
                report["period"]
            );
            let rows = report["growing"].as_array().unwrap();
            assert!(rows.len() >= 2, "{label}: {report:#}");
            assert!(
                is_make_payload(&rows[0]),
                "{label}: row 1 is the extension's payload: {:#}",
                rows[0]
            );
            assert_eq!(
                rows[0]["owner"]["python"]["function"], "handle",
                "{label}: {:#}",
                rows[0]["owner"]
            );
            let count: u64 = iterations.parse().unwrap();
            let payload: u64 = size.parse().unwrap();
            let gained = rows[0]["growth_bytes"].as_u64().unwrap();
            assert!(
                gained >= payload * count * 8 / 10 && gained <= payload * count,
                "{label}: payload growth {gained}"
            );
            // All payloads, but for the first call or two that a specializing interpreter (3.11+)
            // makes through another path: their stacks step once, no part of the growth.
            let live = rows[0]["live_bytes"].as_u64().unwrap();
            assert!(
                live % payload == 0 && ((count - 5) * payload..=count * payload).contains(&live),
                "{label}: {live} bytes live"
            );
            assert!(
                is_app_line(&rows[1], "@growth_listeners"),
                "{label}: row 2 is the listeners' closures: {:#}",
                rows[1]
            );
            for row in rows {
                for marker in not_growth {
                    assert!(!is_app_line(row, marker), "{label}: {marker} listed as growth: {row:#}");
                }
                assert_eq!(
                    row["series"].as_array().unwrap().len(),
                    report["timeline"].as_array().unwrap().len(),
                    "{label}"
                );
            }
            // Who holds them: the module dict and the class attribute, by name, nearly all.
            assert_eq!(report["holders"]["recorded"], true, "{label}");
            for (row, holder) in [(&rows[0], "__main__._RESULTS"), (&rows[1], "__main__.Bus.listeners")] {
                assert_eq!(row["held_by"][0], holder, "{label}: {:#}", row["holders"]);
                let share = row["holders"][0]["share"].as_f64().unwrap();
                assert!(share >= 0.95, "{label}: {holder} holds {share} of {:#}", row["holders"]);
            }
            // What they are: the closures are `function` objects; the extension's objects, on
            // their own row (their `PyObject_New` line), are `growthext.Result`.
            assert_eq!(
                rows[1]["types"][0]["name"], "function",
                "{label}: {:#}",
                rows[1]["types"]
            );
            let object_line = line_of("growth/growthext.c", "@growth_new_result");
            let objects = rows
                .iter()
                .find(|row| row["owner"]["function"] == "make" && row["owner"]["line"].as_u64() == Some(object_line))
                .unwrap_or_else(|| panic!("{label}: no row for the Result objects: {report:#}"));
            assert_eq!(objects["types"][0]["name"], "growthext.Result", "{label}: {objects:#}");
            assert_eq!(objects["held_by"][0], "__main__._RESULTS", "{label}");
            // The retention paths: the module dict holds the results (and their buffers
            // through them); the class attribute's list holds the closures.
            let path = |row: &Value| -> Vec<String> {
                row["holders"][0]["path"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_str().unwrap().to_string())
                    .collect()
            };
            assert_eq!(path(objects), ["dict", "growthext.Result"], "{label}");
            assert_eq!(path(&rows[0]), ["dict", "growthext.Result"], "{label}");
            assert_eq!(path(&rows[1]), ["list", "function"], "{label}");
            // As Python expressions: an item of each container, too large to read keys of.
            let expression = |row: &Value| row["holders"][0]["expression"].clone();
            assert_eq!(expression(objects), "__main__._RESULTS[…]", "{label}");
            assert_eq!(expression(&rows[0]), "__main__._RESULTS[…]", "{label}");
            assert_eq!(expression(&rows[1]), "__main__.Bus.listeners[…]", "{label}");
            // Times: seconds since the start at every point, never going back.
            let seconds: Vec<f64> = report["timeline"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["t_s"].as_f64().expect("t_s"))
                .collect();
            assert!(seconds.windows(2).all(|w| w[0] <= w[1]), "{label}: {seconds:?}");
            assert!(seconds.last() > seconds.first(), "{label}: {seconds:?}");
            assert!(rows[0]["bytes_per_s"].as_f64().is_some_and(|r| r > 0.0), "{label}");
            assert_eq!(
                growth_json(&trace, &["--fail-on-growth"]).1,
                Some(24),
                "{label}: a growing site fails the gate"
            );
            assert_eq!(
                growth_json(&trace, &["--fail-on-growth=100000000"]).1,
                Some(0),
                "{label}: below the threshold"
            );
            if iterations == "400" {
                check_between(&report, &trace, &label);
                check_text(&trace, &label);
            }
        }
        // The same loop keeping nothing: bounded structures, temporaries and the burst alone.
        let control = traced_app(
            &python,
            &scratch,
            &["400", "1000", "control"],
            &format!("{label} control"),
        );
        let (report, status) = growth_json(&control, &["--fail-on-growth"]);
        assert_eq!(report["growing"], serde_json::json!([]), "{label} control: {report:#}");
        assert_eq!(status, Some(0), "{label} control");
    }
}

/// `--between` from 60% of the run (after the burst at iteration 150 of 400) to its end lists
/// both growing sites, the payload first, and not the burst.
fn check_between(report: &Value, trace: &Path, label: &str) {
    let timeline = report["timeline"].as_array().unwrap();
    let from = timeline[timeline.len() * 6 / 10]["seq"].as_u64().unwrap();
    let to = timeline.last().unwrap()["seq"].as_u64().unwrap();
    let (window, status) = growth_json(trace, &["--between", &format!("seq:{from}"), &format!("seq:{to}")]);
    assert_eq!(status, Some(0), "{label}");
    let between = &window["between"];
    assert_eq!(
        (between["from_seq"].as_u64(), between["to_seq"].as_u64()),
        (Some(from), Some(to))
    );
    let grown = between["grown"].as_array().unwrap();
    assert!(is_make_payload(&grown[0]), "{label}: {between:#}");
    assert!(
        grown.iter().take(4).any(|row| is_app_line(row, "@growth_listeners")),
        "{label}: {between:#}"
    );
    assert!(
        !grown.iter().any(|row| is_app_line(row, "@growth_burst")),
        "{label}: the burst is older than the window: {between:#}"
    );
    assert!(between["shrunk"].is_array(), "{label}");
    // The same window named by the program's marks, and in seconds (the whole run).
    let (by_marks, status) = growth_json(trace, &["--between", "mark:late requests", "mark:loop done"]);
    assert_eq!(status, Some(0), "{label}");
    let marked = &by_marks["between"];
    assert!(is_make_payload(&marked["grown"][0]), "{label}: {marked:#}");
    assert!(
        !marked["grown"]
            .as_array()
            .unwrap()
            .iter()
            .any(|row| is_app_line(row, "@growth_burst")),
        "{label}: {marked:#}"
    );
    let (by_seconds, status) = growth_json(trace, &["--between", "0s", "3600s"]);
    assert_eq!(status, Some(0), "{label}");
    let whole = &by_seconds["between"];
    assert_eq!(whole["from_seq"], 0, "{label}: {whole:#}");
    assert!(whole["clipped"] == true, "{label}: an hour reaches past finalisation");
    assert!(
        whole["grown"].as_array().unwrap().iter().any(is_make_payload),
        "{label}: {whole:#}"
    );
    let missing = run(Command::new(libleak_bin())
        .args(["report", "--between", "mark:no such mark", "mark:loop done"])
        .arg(trace));
    assert_eq!(missing.status.code(), Some(2), "{label}: an unknown mark is refused");
    let bad = run(Command::new(libleak_bin())
        .args(["report", "--between", "1000", "2000"])
        .arg(trace));
    assert_eq!(bad.status.code(), Some(2), "{label}: a bare number is refused");
}

/// The text report: ranked rows with a sparkline, the Python line and native frame.
fn check_text(trace: &Path, label: &str) {
    let out = run(Command::new(libleak_bin()).args(["report", "--growth"]).arg(trace));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{label}");
    let first = text.split("\n#2 ").next().unwrap();
    assert!(first.contains("\n#1 grew "), "{label}: {text}");
    assert!(first.contains('█'), "{label}: a sparkline: {first}");
    let make_line = format!("growthext.c:{}", line_of("growth/growthext.c", "@growth_make"));
    let owner = "  owner: make at ";
    assert!(
        first.lines().any(|l| l.starts_with(owner) && l.contains(&make_line)),
        "{label}: {first}"
    );
    assert!(
        first.contains(&format!("app.py:{}", app_line("@growth_results"))),
        "{label}: {first}"
    );
    assert!(text.contains("holders: named by the scan"), "{label}: {text}");
    assert!(first.contains("\n  held by: __main__._RESULTS ("), "{label}: {first}");
    assert!(
        first.contains(", as __main__._RESULTS[…], through dict → growthext.Result)"),
        "{label}: {first}"
    );
}

/// Retention paths as Python expressions (`paths.py`): attributes of instances (split and
/// managed dicts, 3.13's inline values), str and int dict keys, list and tuple indices, a
/// closure's cell, and `[…]` for an item of a container too large to read the keys of.
#[test]
fn retention_paths_read_as_python_expressions_with_attribute_names_keys_and_indices() {
    let expected: [(&str, &[&str]); 6] = [
        ("@paths_payload", &["__main__.STATE.sessions[…].payload"]),
        ("@paths_queue", &["__main__.QUEUES['pending'][…]"]),
        ("@paths_history", &["__main__.HISTORY[…][1]"]),
        ("@paths_nested", &["__main__.CONFIG['limits']['sizes'][2][…]"]),
        ("@paths_shards", &["__main__.SHARDS[0][…]", "__main__.SHARDS[1][…]"]),
        ("@paths_closure", &["__main__.REMEMBER.__closure__[0].cell_contents[…]"]),
    ];
    for python in pythons() {
        let label = python.label();
        // A stale word in a block on a shorter path than the real one (seen once in about 40
        // runs, on 3.10: a function's str holding the dict's address) names another holder.
        with_one_retry(&label, || paths_of(&python, &expected));
    }
}

fn paths_of(python: &Python, expected: &[(&str, &[&str]); 6]) {
    let label = python.label();
    {
        let scratch = Scratch::new(&format!("growth-paths{}{}", python.version.0, python.version.1));
        std::fs::copy(fixture("paths.py"), scratch.join("paths.py")).unwrap();
        let mut command = Command::new(&python.real_path);
        command.args(["paths.py", "1500"]).current_dir(&scratch.path);
        let traced = run_traced(&scratch, &mut command);
        assert_eq!(traced.output.status.code(), Some(0), "{label}");
        let (report, _) = growth_json(&traced.trace, &[]);
        let rows = report["growing"].as_array().unwrap();
        for &(marker, expressions) in expected {
            let line = line_of("growth/paths.py", marker);
            // The site's buffer row (the largest of that line): its main holder's expression.
            let row = rows
                .iter()
                .find(|row| python_line(row).is_some_and(|(file, l)| file.ends_with("/paths.py") && l == line))
                .unwrap_or_else(|| panic!("{label}: no growing row for {marker}: {report:#}"));
            let holder = &row["holders"][0];
            let expression = holder["expression"].as_str().unwrap_or("");
            assert!(
                expressions.contains(&expression),
                "{label}: {marker}: expected {expressions:?}, got {expression:?}: {holder:#}"
            );
            assert!(
                holder["share"].as_f64().unwrap() >= 0.95,
                "{label}: {marker}: {:#}",
                row["holders"]
            );
        }
    }
}

#[test]
fn a_static_c_array_of_buffers_is_the_top_row_with_its_c_line_and_python_caller() {
    for python in pythons() {
        let label = python.label();
        let scratch = setup(
            &python,
            &format!("growth-static{}{}", python.version.0, python.version.1),
        );
        let mut command = Command::new(&python.real_path);
        command
            .args(["static_array.py", "500"])
            .current_dir(&scratch.path)
            .env("PYTHONPATH", &scratch.path);
        let traced = run_traced(&scratch, &mut command);
        assert_eq!(traced.output.status.code(), Some(0), "{label}");
        let (report, _) = growth_json(&traced.trace, &[]);
        let top = &report["growing"][0];
        let owner = &top["owner"];
        assert_eq!(owner["function"], "keep", "{label}: {report:#}");
        assert!(owner["file"].as_str().unwrap().ends_with("growthext.c"), "{label}");
        assert_eq!(
            owner["line"].as_u64(),
            Some(line_of("growth/growthext.c", "@growth_keep")),
            "{label}"
        );
        assert_eq!(
            owner["python"]["line"].as_u64(),
            Some(line_of("growth/static_array.py", "@growth_static_call")),
            "{label}: {owner:#}"
        );
        assert_eq!(owner["python"]["function"], "serve", "{label}");
        // A specializing interpreter (3.11+) makes the first call or two through another path:
        // those blocks' stacks step once and are no part of the growth.
        let blocks = top["live_blocks"].as_u64().unwrap();
        assert!((495..=500).contains(&blocks), "{label}: {blocks} blocks");
        assert_eq!(top["live_bytes"].as_u64(), Some(blocks * 256), "{label}");
        assert!(top["blocks"].as_u64().unwrap() >= 400, "{label}: {top:#}");
        // Held by the C static array, named from the extension's symbol table.
        let holder = top["held_by"][0].as_str().unwrap_or("");
        assert!(
            holder.starts_with("static kept in growthext."),
            "{label}: {:#}",
            top["holders"]
        );
        assert!(top["holders"][0]["blocks"].as_u64().unwrap() >= 495, "{label}");
    }
}

/// A server killed before it could finalise: growth still ranks, and the report says that
/// there was no finalisation and no holders.
#[test]
fn a_killed_process_still_ranks_its_growth_and_says_finalisation_is_absent() {
    for python in pythons() {
        let label = python.label();
        let scratch = setup(
            &python,
            &format!("growth-killed{}{}", python.version.0, python.version.1),
        );
        let mut command = Command::new(&python.real_path);
        command
            .args(["app.py", "400", "1000", "kill"])
            .current_dir(&scratch.path)
            .env("PYTHONPATH", &scratch.path);
        let traced = run_traced(&scratch, &mut command);
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(traced.output.status.signal(), Some(9), "{label}");
        let (report, _) = growth_json(&traced.trace, &[]);
        assert_eq!(report["complete"], false, "{label}");
        assert_eq!(report["period"]["ends"], "last-event", "{label}");
        assert!(
            report["holders"]["note"]
                .as_str()
                .unwrap()
                .contains("never reached Python's finalisation"),
            "{label}: {}",
            report["holders"]
        );
        assert!(is_make_payload(&report["growing"][0]), "{label}: {report:#}");
        let text = run(Command::new(libleak_bin())
            .args(["report", "--growth"])
            .arg(&traced.trace));
        let text = String::from_utf8_lossy(&text.stdout);
        assert!(text.contains("trace INCOMPLETE"), "{label}: {text}");
        assert!(text.contains("so there was no finalisation"), "{label}: {text}");
    }
}

/// A daemon thread still running when the program ends holds what it grew in a local: the
/// local is named as Python names what a function defines (`__main__.worker.<locals>.seen`).
/// CPython 3.13 frees such a thread's state (and the chunk its frames live in) while the
/// scan at finalisation runs, so there the growth is found but its holder is not named.
#[test]
fn a_daemon_threads_local_variable_is_named_as_the_holder_of_what_it_grew() {
    for python in pythons() {
        let label = python.label();
        let scratch = Scratch::new(&format!("growth-daemon{}{}", python.version.0, python.version.1));
        std::fs::copy(fixture("daemon.py"), scratch.join("daemon.py")).unwrap();
        let mut command = Command::new(&python.real_path);
        command.args(["daemon.py", "3000"]).current_dir(&scratch.path);
        let traced = run_traced(&scratch, &mut command);
        assert_eq!(traced.output.status.code(), Some(0), "{label}");
        assert_eq!(traced.output.stdout, b"filled\n", "{label}");
        let (report, _) = growth_json(&traced.trace, &[]);
        let line = line_of("growth/daemon.py", "@daemon_local");
        let top = &report["growing"][0];
        assert_eq!(
            python_line(top).map(|(_, l)| l),
            Some(line),
            "{label}: the worker's buffers grow: {report:#}"
        );
        assert!(top["growth_bytes"].as_u64().unwrap() >= 2000 * 2400, "{label}: {top:#}");
        let holder = &top["holders"][0];
        if python.version >= (3, 13) {
            println!(
                "{label}: a daemon thread's frames are freed during the scan on 3.13+; held by {}",
                holder["name"]
            );
            continue;
        }
        assert_eq!(
            holder["name"], "__main__.worker.<locals>.seen",
            "{label}: {:#}",
            top["holders"]
        );
        assert_eq!(holder["expression"], "__main__.worker.<locals>.seen[…]", "{label}");
        assert!(holder["share"].as_f64().unwrap() >= 0.99, "{label}: {holder:#}");
        assert_eq!(holder["blocks"], 3000, "{label}: {holder:#}");
    }
}
