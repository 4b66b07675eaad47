//! The bundled example (a leaky C extension driven by a Python script), built and run under
//! libleak with every interpreter found (see `libleak_tests::pythons`): the report names the
//! extension's allocating C functions and lines with exact bytes and blocks, and the program
//! prints the same thing as without libleak; and what the report says about an interpreter
//! that ignored the PYTHONMALLOC libleak set.

use std::path::Path;
use std::process::Command;

use libleak_tests::*;

#[test]
fn bundled_example_leaks_are_found_on_every_interpreter() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/leaky_ext");
    let source = example.join("leaky.c");
    let pythons = pythons();
    assert!(!pythons.is_empty(), "no usable Python interpreter found");
    let line = |marker: &str| -> u64 {
        let text = std::fs::read_to_string(&source).unwrap();
        text.lines().position(|l| l.contains(marker)).expect("marker") as u64 + 1
    };
    for python in pythons {
        with_one_retry(&python.label(), || {
            let label = format!("py{}{}", python.version.0, python.version.1);
            let scratch = Scratch::new(&label);
            python.build_extension(&source, "leaky", &scratch.path);
            std::fs::copy(example.join("app.py"), scratch.join("app.py")).unwrap();
            let report = report_json(&python.run_script_traced(&scratch, "app.py", &label));
            assert_eq!(report["complete"], true, "{label}");
            // Specializing interpreters (3.11+) reach the same C call through different eval-loop
            // paths, so one site can have several native stacks: sum the rows of each site.
            let site = |function: &str, marker: &str| -> (u64, u64) {
                let rows = leaks_in(&report, function);
                assert!(!rows.is_empty(), "{label}: no row for {function}: {report:#}");
                for row in &rows {
                    assert_eq!(
                        row["frames"][0]["line"].as_u64(),
                        Some(line(marker)),
                        "{label}: {function} line"
                    );
                }
                rows.iter().fold((0, 0), |(b, n), r| {
                    (b + r["bytes"].as_u64().unwrap(), n + r["blocks"].as_u64().unwrap())
                })
            };
            assert_eq!(site("parse_records", "@leaky_scratch"), (40 * 256, 40), "{label}");
            assert_eq!(site("copy_label", "@leaky_label"), (3 * 32, 3), "{label}");
            for row in leaks_in(&report, "copy_label") {
                assert_eq!(row["frames"][1]["function"], "make_label", "{label}");
            }
            assert!(
                leaks_in(&report, "checksum").is_empty(),
                "{label}: checksum frees its buffer"
            );
            // The default report shows the three planted leaks and nothing else, one row each,
            // with their class, owner and the Python line that called into the extension.
            let rows = report["leaks"].as_array().unwrap();
            assert_eq!(rows.len(), 3, "{label}: {report:#}");
            let app_line = |marker: &str| line_of("../../examples/leaky_ext/app.py", marker);
            for (row, function, python_line, bytes, blocks) in [
                (&rows[0], "parse_records", app_line("@app_parse"), 40 * 256, 40),
                (&rows[2], "copy_label", app_line("@app_label"), 3 * 32, 3),
            ] {
                assert_eq!(row["kind"], "definitely-lost", "{label}");
                assert_eq!(row["bytes"].as_u64(), Some(bytes), "{label}");
                assert_eq!(row["blocks"].as_u64(), Some(blocks), "{label}");
                assert_eq!(row["owner"]["function"], function, "{label}");
                assert!(
                    row["owner"]["module"].as_str().unwrap().contains("/leaky."),
                    "{label}: {row:#}"
                );
                assert_eq!(row["owner"]["python"]["line"].as_u64(), Some(python_line), "{label}");
            }
            // The index: a dict with one reference too many, and everything it holds.
            let index = &rows[1];
            assert_eq!(index["kind"], "definitely-lost", "{label}");
            assert_eq!(index["owner"]["function"], "index_labels", "{label}");
            assert_eq!(index["owner"]["line"].as_u64(), Some(line("@leaky_index")), "{label}");
            assert_eq!(
                index["owner"]["python"]["line"].as_u64(),
                Some(app_line("@app_index")),
                "{label}"
            );
            assert_eq!(index["roots"]["blocks"], 1, "{label}");
            assert_eq!(
                index["leaked_references"],
                serde_json::json!({"objects": 1, "refcount": 1, "found": 0, "leaked": 1}),
                "{label}"
            );
            let objects = |type_name: &str| {
                index["objects"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|o| o["type"] == type_name)
                    .map_or(0, |o| o["blocks"].as_u64().unwrap())
            };
            // The dict, a list per label, the labels. The lists come off CPython's free list, whose
            // array keeps a stale copy of each address it handed out: until another list is freed
            // into that slot, the conservative scan takes the copy for a reference and one list
            // (with its item array) reads as reachable.
            assert_eq!((objects("dict"), objects("str")), (1, 3), "{label}: {index:#}");
            let lists = objects("list");
            assert!((2..=3).contains(&lists), "{label}: {index:#}");
            // The lengths; a stale copy of another int's address in the dict's table may add one.
            assert!((lists..=lists + 1).contains(&objects("int")), "{label}: {index:#}");
            let part_at = |function: &str, marker: &str| {
                index["parts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|p| p["owner"]["function"] == function && p["owner"]["line"].as_u64() == Some(line(marker)))
                    .map(|p| p["blocks"].as_u64().unwrap())
                    .sum::<u64>()
            };
            // Each entry list (off the free list, its rebirth recorded) and its two-item array;
            // the labels make_label made.
            let entries = part_at("index_labels", "@leaky_entry");
            assert_eq!(entries, 2 * lists, "{label}: {index:#}");
            assert_eq!(part_at("make_label", "@leaky_string"), 3, "{label}: {index:#}");
        });
    }
}

/// `python -I` (and `-E`) ignore `PYTHONMALLOC`: the report must not claim that libleak's
/// setting made Python objects visible when the interpreter never used it.
#[test]
fn an_interpreter_that_ignores_the_environment_is_reported_as_such() {
    let pythons = pythons();
    assert!(!pythons.is_empty(), "no usable Python interpreter found");
    for python in pythons {
        let label = python.label();
        let scratch = Scratch::new(&format!("ignore-env{}{}", python.version.0, python.version.1));
        for (flags, ignores) in [(&[][..], false), (&["-I"][..], true), (&["-E"][..], true)] {
            let traced = run_traced(
                &scratch,
                Command::new(&python.real_path).args(flags).args(["-c", "print('ok')"]),
            );
            assert_eq!(traced.output.stdout, b"ok\n", "{label} {flags:?}");
            let report = report_json(&traced.trace);
            assert_eq!(report["python"]["pythonmalloc_set"], true, "{label} {flags:?}");
            assert_eq!(
                report["python"]["ignores_environment"], ignores,
                "{label} {flags:?}: {}",
                report["python"]
            );
            let text = run(Command::new(libleak_bin()).arg("report").arg(&traced.trace));
            let text = String::from_utf8_lossy(&text.stdout);
            let python_line = text.lines().find(|l| l.starts_with("python: ")).unwrap_or("");
            assert_eq!(
                python_line.contains("ignored the environment"),
                ignores,
                "{label} {flags:?}: {python_line}"
            );
            assert_eq!(
                python_line.contains("so Python objects are tracked"),
                !ignores,
                "{label} {flags:?}: {python_line}"
            );
        }
    }
}
