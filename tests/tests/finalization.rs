//! The scan made when CPython's finalisation begins: state an extension builds at import and
//! keeps through its module (a C buffer in the module state, a dict of lists in a module
//! attribute) is reachable then, so it is no leak, although tearing the module down orphans
//! it before exit; so is an object a module global held then that an extension keeps alive
//! past the teardown; a real leak of the same extension is still one row with its exact line,
//! bytes and blocks. A process that never finalises (`os._exit`) has no such scan and keeps
//! the exit-time view. On every interpreter found.

use std::process::Command;

use libleak_tests::*;

fn fixture(name: &str) -> std::path::PathBuf {
    fixtures_dir().join("finalize").join(name)
}

#[test]
fn module_state_kept_until_finalisation_is_no_leak_and_a_real_leak_still_is() {
    for python in pythons() {
        let label = python.label();
        let scratch = Scratch::new(&format!("finalize-{label}"));
        python.build_extension(&fixture("modstate.c"), "modstate", &scratch.path);
        std::fs::copy(fixture("driver.py"), scratch.join("driver.py")).unwrap();
        let trace = python.run_script_traced(&scratch, "driver.py", &label);
        let report = report_json(&trace);
        assert_eq!(
            report["reachability_at_finalization"]["outcome"], "complete",
            "{label}: {:#}",
            report["reachability_at_finalization"]
        );
        let rows = report["leaks"].as_array().unwrap();
        assert_eq!(rows.len(), 1, "{label}: {report:#}");
        assert_leak(
            &report,
            "leak_buffer",
            "modstate.c",
            line_of("finalize/modstate.c", "@modstate_leak"),
            3000,
            1,
        );
        assert_eq!(rows[0]["kind"], "definitely-lost", "{label}");
        let python_line = line_of("finalize/driver.py", "@modstate_call");
        assert!(
            rows[0]["frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["kind"] == "python" && f["line"].as_u64() == Some(python_line)),
            "{label}: {:#}",
            rows[0]
        );
        // The module state's buffer is listed among the reachable blocks, not as a leak.
        let everything = report_json_with(&trace, &["--show-reachable"]);
        let table = leaks_in(&everything, "PyInit_modstate");
        let table_bytes: u64 = table
            .iter()
            .filter(|row| row["frames"][0]["line"].as_u64() == Some(line_of("finalize/modstate.c", "@modstate_table")))
            .map(|row| row["bytes"].as_u64().unwrap())
            .sum();
        assert_eq!(table_bytes, 5000, "{label}: {everything:#}");
        assert!(
            table.iter().all(|row| row["kind"] == "reachable"),
            "{label}: {table:#?}"
        );
    }
}

#[test]
fn a_process_that_never_finalises_has_no_finalisation_scan() {
    let Some(python) = pythons().into_iter().next() else {
        panic!("no usable Python interpreter found");
    };
    let label = python.label();
    let scratch = Scratch::new(&format!("finalize-os-exit-{label}"));
    python.build_extension(&fixture("modstate.c"), "modstate", &scratch.path);
    std::fs::copy(fixture("driver.py"), scratch.join("driver.py")).unwrap();
    let traced = run_traced(
        &scratch,
        Command::new(&python.real_path)
            .args(["driver.py", "os_exit"])
            .current_dir(&scratch.path)
            .env("PYTHONPATH", &scratch.path),
    );
    assert_eq!(traced.output.status.code(), Some(0), "{label}");
    let report = report_json(&traced.trace);
    assert!(report["reachability_at_finalization"].is_null(), "{report:#}");
    assert_eq!(report["exit"]["kind"], "_exit", "{label}");
    assert_leak(
        &report,
        "leak_buffer",
        "modstate.c",
        line_of("finalize/modstate.c", "@modstate_leak"),
        3000,
        1,
    );
}

/// An object a module global held when finalisation began, which an extension then keeps
/// alive past the teardown without a pointer the exit scan can find (it gives its reference
/// back only while the interpreter is initialised, as pyarrow does): no leak. The bytes the
/// same extension loses on each call still are, exactly, and so is the C buffer a global's
/// dealloc forgets to free during the teardown.
#[test]
fn an_object_a_global_held_at_finalisation_is_no_leak_when_an_extension_keeps_it_past_the_teardown() {
    for python in pythons() {
        let label = python.label();
        // A stale copy of one lost bytes object's address (left where the scan reads) makes it
        // look held: seen under load, 2 runs in 24 at the session-18 starting build.
        with_one_retry(&label, || keeper_case(&python, &label));
    }
}

fn keeper_case(python: &Python, label: &str) {
    let scratch = Scratch::new(&format!("finalize-keeper-{label}"));
    python.build_extension(&fixture("keeper.c"), "keeper", &scratch.path);
    std::fs::copy(fixture("keeper.py"), scratch.join("keeper.py")).unwrap();
    let trace = python.run_script_traced(&scratch, "keeper.py", label);
    let report = report_json(&trace);
    assert_eq!(report["reachability_at_finalization"]["outcome"], "complete", "{label}");
    let rows = report["leaks"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{label}: the lost bytes objects and buffer: {report:#}");
    // The buffer the global's dealloc forgets is a leak, although a name held its owner.
    assert_leak(
        &report,
        "keeper_init",
        "keeper.c",
        line_of("finalize/keeper.c", "@keeper_scratch"),
        2222,
        1,
    );
    let row = rows
        .iter()
        .find(|row| row["blocks"] == 3)
        .unwrap_or_else(|| panic!("{label}: the bytes objects' row: {report:#}"));
    let frames = row["frames"].as_array().unwrap();
    let line = line_of("finalize/keeper.c", "@keeper_lose");
    assert!(
        frames
            .iter()
            .any(|f| f["function"] == "lose" && f["line"].as_u64() == Some(line)),
        "{label}: {row:#}"
    );
    let python_line = line_of("finalize/keeper.py", "@keeper_call");
    assert!(
        frames
            .iter()
            .any(|f| f["kind"] == "python" && f["line"].as_u64() == Some(python_line)),
        "{label}: {row:#}"
    );
}
