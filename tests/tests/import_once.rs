//! One-time set-up an import loses is counted apart, not listed as a leak: a C extension whose
//! module init loses one block (as pyo3 loses a type spec per class) gives no row, and its
//! bytes are `made once by imports`; `--show-leftovers` lists it. A module that loses a block
//! per iteration of a loop at import, and the same function called at run time, are listed.
//! On every interpreter found.

use libleak_tests::*;

#[test]
fn a_block_an_import_loses_once_is_not_a_leak_row_but_a_loop_at_import_is() {
    let fixture = |name: &str| fixtures_dir().join("import_once").join(name);
    let pythons = pythons();
    assert!(!pythons.is_empty(), "no usable Python interpreter found");
    for python in pythons {
        let label = python.label();
        let scratch = Scratch::new(&format!("import-once{}{}", python.version.0, python.version.1));
        python.build_extension(&fixture("initleak.c"), "initleak", &scratch.path);
        for script in ["main.py", "loops_at_import.py"] {
            std::fs::copy(fixture(script), scratch.join(script)).unwrap();
        }
        let trace = python.run_script_traced(&scratch, "main.py", &label);
        let report = report_json(&trace);
        let source = "initleak.c";
        let rows = leaks_in(&report, "lose");
        assert_eq!(rows.len(), 1, "{label}: one row for the losing function: {report:#}");
        let row = rows[0];
        assert_eq!(
            row["frames"][0]["line"].as_u64(),
            Some(line_of("import_once/initleak.c", "@import_once_lose")),
            "{label}"
        );
        assert!(row["frames"][0]["file"].as_str().unwrap().ends_with(source), "{label}");
        assert_eq!(row["import_once"], false, "{label}");
        // A stale copy of the last address the loop returned (3.12 keeps one) makes one block
        // read as reachable: at most one may be missing, and it is printed.
        let blocks = row["blocks"].as_u64().unwrap();
        assert!((42..=43).contains(&blocks), "{label}: {row:#}");
        assert_eq!(row["bytes"].as_u64(), Some(blocks * 777), "{label}");
        if blocks < 43 {
            println!("{label}: one of the 43 lost blocks reads as reachable through a stale address");
        }
        // Its two stacks: the loop at import and the calls at run time.
        let stack_blocks = |script: &str, marker: &str| {
            let line = line_of(&format!("import_once/{script}"), marker);
            row["stacks"]
                .as_array()
                .unwrap()
                .iter()
                .find(|stack| {
                    stack["frames"].as_array().unwrap().iter().any(|frame| {
                        frame["kind"] == "python"
                            && frame["line"].as_u64() == Some(line)
                            && frame["file"].as_str().is_some_and(|f| f.ends_with(script))
                    })
                })
                .and_then(|stack| stack["blocks"].as_u64())
        };
        let (at_import, at_run_time) = (
            stack_blocks("loops_at_import.py", "@import_once_loop").unwrap_or(0),
            stack_blocks("main.py", "@import_once_runtime").unwrap_or(0),
        );
        assert_eq!(at_import + at_run_time, blocks, "{label}: {row:#}");
        assert!(at_import >= 39 && at_run_time >= 2, "{label}: {row:#}");
        assert!(leaks_in(&report, "PyInit_initleak").is_empty(), "{label}: {report:#}");
        let once = &report["summary"]["import_once"];
        assert!(
            once["bytes"].as_u64().unwrap() >= 333 && once["blocks"].as_u64().unwrap() >= 1,
            "{label}: {once}"
        );
        // Listed, and marked, with the leftovers.
        let all = report_json_with(&trace, &["--show-leftovers"]);
        let init = leaks_in(&all, "PyInit_initleak");
        assert_eq!(init.len(), 1, "{label}: {all:#}");
        assert_eq!(init[0]["import_once"], true, "{label}");
        assert_eq!(
            (init[0]["bytes"].as_u64(), init[0]["blocks"].as_u64()),
            (Some(333), Some(1))
        );
        assert_eq!(
            init[0]["frames"][0]["line"].as_u64(),
            Some(line_of("import_once/initleak.c", "@import_once_init")),
            "{label}"
        );
    }
}

/// An extension whose module init imports a Python module (as Cython modules import numpy)
/// does not own what that module's body allocates: the texts it keeps for good, by a pointer
/// to their characters as numpy keeps its docstrings, are the runtime's leftovers, not a row
/// owned by the importer's `PyInit`.
#[test]
fn what_a_module_imported_by_an_extensions_init_keeps_is_not_the_extensions_leak() {
    let fixture = |name: &str| fixtures_dir().join("import_once").join(name);
    let pythons = pythons();
    assert!(!pythons.is_empty(), "no usable Python interpreter found");
    for python in pythons {
        let label = python.label();
        let scratch = Scratch::new(&format!("import-from-init{}{}", python.version.0, python.version.1));
        for name in ["importer", "texts_keeper"] {
            python.build_extension(&fixture("importer.c"), name, &scratch.path);
        }
        for script in ["imports_from_init.py", "keeps_texts.py"] {
            std::fs::copy(fixture(script), scratch.join(script)).unwrap();
        }
        let trace = python.run_script_traced(&scratch, "imports_from_init.py", &label);
        let report = report_json(&trace);
        assert_eq!(report["leaks"], serde_json::json!([]), "{label}: {report:#}");
        // The texts are there, with the leftovers, at the line of the module's body.
        let all = report_json_with(&trace, &["--show-leftovers", "--show-reachable"]);
        let join_line = line_of("import_once/keeps_texts.py", "@keeps_texts_join");
        let texts: Vec<&serde_json::Value> = all["leaks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|row| {
                row["frames"].as_array().unwrap().iter().any(|frame| {
                    frame["kind"] == "python"
                        && frame["line"].as_u64() == Some(join_line)
                        && frame["file"].as_str().is_some_and(|f| f.ends_with("keeps_texts.py"))
                })
            })
            .collect();
        let blocks: u64 = texts.iter().map(|row| row["blocks"].as_u64().unwrap()).sum();
        assert_eq!(blocks, 20, "{label}: {all:#}");
        assert!(
            texts
                .iter()
                .all(|row| row["runtime_leftover"] == true || row["kind"] == "reachable"),
            "{label}: {all:#}"
        );
        assert!(leaks_in(&all, "PyInit_importer").is_empty(), "{label}: {all:#}");
    }
}
