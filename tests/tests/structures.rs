//! Leak structures against real interpreters: a row is a leaked root with everything it keeps
//! alive (a leaked traceback with its frames and the payload Python code made; a dict with an
//! extra reference and the lists under it), each Python object's type, the references nobody
//! gave back, and garbage awaiting collection that is no leak.

use libleak_tests::*;
use serde_json::Value;

fn rows(report: &Value) -> &Vec<Value> {
    report["leaks"].as_array().expect("leaks array")
}

/// The one row owned by `function` at `line`.
fn row_at<'a>(report: &'a Value, function: &str, line: u64) -> &'a Value {
    let found: Vec<&Value> = rows(report)
        .iter()
        .filter(|row| row["owner"]["function"] == function && row["owner"]["line"].as_u64() == Some(line))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one row owned by {function}:{line} expected in {report:#}"
    );
    found[0]
}

fn u(value: &Value) -> u64 {
    value.as_u64().unwrap_or_else(|| panic!("not a count: {value}"))
}

/// (blocks, bytes) of the objects of `type_name` in `objects`.
fn objects_of(objects: &Value, type_name: &str) -> (u64, u64) {
    objects
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["type"] == type_name)
        .map_or((0, 0), |o| (u(&o["blocks"]), u(&o["bytes"])))
}

/// A row's total is its roots and its parts.
fn assert_parts_add_up(row: &Value, label: &str) {
    let parts = row["parts"].as_array().unwrap();
    let blocks: u64 = parts.iter().map(|p| u(&p["blocks"])).sum();
    let bytes: u64 = parts.iter().map(|p| u(&p["bytes"])).sum();
    assert_eq!(
        u(&row["blocks"]),
        u(&row["roots"]["blocks"]) + blocks,
        "{label}: {row:#}"
    );
    assert_eq!(u(&row["bytes"]), u(&row["roots"]["bytes"]) + bytes, "{label}: {row:#}");
}

fn build(python: &Python, label: &str) -> Scratch {
    let fixtures = fixtures_dir().join("structures");
    let scratch = Scratch::new(label);
    python.build_extension(&fixtures.join("structs.c"), "structs", &scratch.path);
    for script in ["finalizing.py", "exits_early.py"] {
        std::fs::copy(fixtures.join(script), scratch.join(script)).unwrap();
    }
    scratch
}

#[test]
fn a_leak_row_holds_everything_its_root_keeps_with_types_and_leaked_references() {
    let c = |marker: &str| line_of("structures/structs.c", marker);
    let py = |marker: &str| line_of("structures/finalizing.py", marker);
    let pythons = pythons();
    assert!(!pythons.is_empty(), "no usable Python interpreter found");
    for python in pythons {
        with_one_retry(&python.label(), || {
            let label = python.label();
            let scratch = build(&python, &format!("structs{}{}", python.version.0, python.version.1));
            let report = report_json(&python.run_script_traced(&scratch, "finalizing.py", &label));
            assert_eq!(report["reachability"]["outcome"], "complete", "{label}");

            // Ten tracebacks, each a reference taken and never given back, keeping the callback's
            // frame and its 40,000-byte payload, which Python code made. The scan is conservative:
            // a stale copy of an address, left where it reads roots (the interpreter's frames and
            // free lists keep some), holds what it names as a reference would. So one traceback
            // may be held that way (and then not listed), and below, one list or a few ints of
            // the dicts; the counts and sizes of what is listed are exact all the same.
            let tracebacks = row_at(&report, "keep_traceback", c("@call_callback"));
            assert_eq!(tracebacks["kind"], "definitely-lost", "{label}");
            assert_eq!(
                tracebacks["owner"]["python"]["line"].as_u64(),
                Some(py("@keep_call")),
                "{label}"
            );
            let (leaked_tracebacks, traceback_bytes) = objects_of(&tracebacks["objects"], "traceback");
            assert!((9..=10).contains(&leaked_tracebacks), "{label}: {tracebacks:#}");
            // The roots are the tracebacks. A stale copy of one's address inside another's kept
            // frame (3.10's frames keep their dead value-stack slots) counts as a reference to it
            // and makes it a part of that one's structure: in the row all the same.
            let roots = u(&tracebacks["roots"]["blocks"]);
            assert!(
                (leaked_tracebacks - 1..=leaked_tracebacks).contains(&roots),
                "{label}: the roots are the tracebacks: {tracebacks:#}"
            );
            assert_eq!(
                u(&tracebacks["roots"]["bytes"]) * leaked_tracebacks,
                traceback_bytes * roots,
                "{label}: the roots are the tracebacks"
            );
            assert_eq!(
                tracebacks["leaked_references"],
                serde_json::json!({"objects": roots, "refcount": roots, "found": 0, "leaked": roots}),
                "{label}"
            );
            let payloads: Vec<&Value> = tracebacks["parts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|part| part["owner"]["python"]["line"].as_u64() == Some(py("@payload")))
                .collect();
            assert_eq!(
                payloads.len(),
                1,
                "{label}: one part made at the payload's line: {tracebacks:#}"
            );
            let payload = payloads[0];
            assert_eq!(payload["owner"]["python"]["function"], "failing_callback", "{label}");
            let leaked_payloads = u(&payload["blocks"]);
            assert!(
                (leaked_tracebacks - 1..=leaked_tracebacks).contains(&leaked_payloads),
                "{label}: {payload:#}"
            );
            assert_eq!(u(&payload["bytes"]), leaked_payloads * 40_033, "{label}");
            assert_eq!(
                objects_of(&payload["objects"], "bytes"),
                (leaked_payloads, leaked_payloads * 40_033),
                "{label}"
            );
            assert!(
                objects_of(&tracebacks["objects"], "frame").0 >= leaked_tracebacks,
                "{label}: {tracebacks:#}"
            );
            assert_parts_add_up(tracebacks, &label);

            // Two dicts with one reference too many, each holding six lists of five ints: one row
            // with all of it.
            let dicts = row_at(&report, "leak_dict", c("@new_dict"));
            assert_eq!(dicts["kind"], "definitely-lost", "{label}");
            assert_eq!(
                dicts["owner"]["python"]["line"].as_u64(),
                Some(py("@dict_call")),
                "{label}"
            );
            assert_eq!(u(&dicts["roots"]["blocks"]), 2, "{label}: {dicts:#}");
            assert_eq!(objects_of(&dicts["objects"], "dict").0, 2, "{label}");
            assert_eq!(
                dicts["leaked_references"],
                serde_json::json!({"objects": 2, "refcount": 2, "found": 0, "leaked": 2}),
                "{label}"
            );
            // Six lists per dict, thirty items and six keys (3.9 and 3.10 keep outgrown key
            // tables, whose entries still name the first keys, on a free list).
            let lists = objects_of(&dicts["objects"], "list").0;
            assert!((11..=12).contains(&lists), "{label}: {lists} lists: {dicts:#}");
            let ints = objects_of(&dicts["objects"], "int").0;
            let fewest_ints = 60 - 5 * (12 - lists);
            assert!((fewest_ints..=72).contains(&ints), "{label}: {ints} ints: {dicts:#}");
            let list_parts: Vec<&Value> = dicts["parts"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|part| part["owner"]["function"] == "new_list")
                .collect();
            assert_eq!(list_parts.len(), 1, "{label}: {dicts:#}");
            assert_eq!(u(&list_parts[0]["owner"]["line"]), c("@new_list"), "{label}");
            assert_eq!(objects_of(&list_parts[0]["objects"], "list").0, lists, "{label}");
            // The dicts, their key tables, the lists, their item arrays and the ints.
            assert_eq!(u(&dicts["blocks"]), 2 + 2 + 2 * lists + ints, "{label}: {dicts:#}");
            assert_parts_add_up(dicts, &label);
            if leaked_tracebacks < 10 || lists < 12 || ints < 72 {
                eprintln!(
                    "{label}: held by stale addresses: {} tracebacks, {} lists, {} ints",
                    10 - leaked_tracebacks,
                    12 - lists,
                    72 - ints
                );
            }

            assert_eq!(rows(&report).len(), 2, "{label}: only the two leaks: {report:#}");
        });
    }
}

#[test]
fn garbage_awaiting_collection_is_no_leak_but_a_leak_beside_it_is() {
    let py = |marker: &str| line_of("structures/exits_early.py", marker);
    let pythons = pythons();
    assert!(!pythons.is_empty(), "no usable Python interpreter found");
    for python in pythons {
        with_one_retry(&python.label(), || {
            let label = python.label();
            let scratch = build(&python, &format!("garbage{}{}", python.version.0, python.version.1));
            let report = report_json(&python.run_script_traced(&scratch, "exits_early.py", &label));
            assert_eq!(report["reachability"]["outcome"], "complete", "{label}");
            // The process ended through exit() with the collector off: twenty dropped cycles of
            // two lists (each list and its item array) were still there, all of them garbage.
            // Some may be held by stale pointers the conservative scan cannot tell from
            // references (up to 6 of 20 seen on 3.9, whose interpreter keeps many): reachable,
            // listed neither way.
            let collectable = &report["summary"]["collectable"];
            assert!(u(&collectable["blocks"]) >= 10 * 4, "{label}: {collectable}");
            assert_eq!(u(&collectable["blocks"]) % 4, 0, "{label}: whole cycles: {collectable}");
            assert!(
                rows(&report)
                    .iter()
                    .all(|row| row["owner"]["python"]["line"].as_u64() != Some(py("@cycle_call"))),
                "{label}: no cycle is a leak: {report:#}"
            );
            let dict = rows(&report)
                .iter()
                .find(|row| row["owner"]["function"] == "leak_dict")
                .unwrap_or_else(|| panic!("{label}: the leaked dict is listed: {report:#}"));
            assert_eq!(
                dict["owner"]["python"]["line"].as_u64(),
                Some(py("@early_dict_call")),
                "{label}"
            );
            // Five dicts, each with one reference too many. Here, with the whole interpreter still
            // live, stale copies of addresses in memory the scan reads as roots (spare free-list
            // slots that once named a block at the same address, the interpreter's frames) can
            // hold up to two: reachable, not listed.
            let roots = u(&dict["roots"]["blocks"]);
            assert!((3..=5).contains(&roots), "{label}: {dict:#}");
            assert_eq!(
                dict["leaked_references"],
                serde_json::json!({"objects": roots, "refcount": roots, "found": 0, "leaked": roots}),
                "{label}"
            );
            assert_eq!(objects_of(&dict["objects"], "dict").0, roots, "{label}: {dict:#}");
            assert_parts_add_up(dict, &label);
            assert_eq!(rows(&report).len(), 1, "{label}: {report:#}");
        });
    }
}

/// The one leak row whose Python line (no native owner) is `function` at `line`.
fn python_made_row<'a>(report: &'a Value, function: &str, line: u64) -> &'a Value {
    let found: Vec<&Value> = rows(report)
        .iter()
        .filter(|row| {
            row["owner"]["function"].is_null()
                && row["owner"]["python"]["function"] == function
                && row["owner"]["python"]["line"].as_u64() == Some(line)
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one row made by {function}:{line} expected in {report:#}"
    );
    found[0]
}

#[test]
fn python_objects_native_code_keeps_alive_are_leaks_of_the_line_that_made_them() {
    let py = |marker: &str| line_of("structures/untraversed.py", marker);
    let pythons = pythons();
    assert!(!pythons.is_empty(), "no usable Python interpreter found");
    for python in pythons {
        with_one_retry(&python.label(), || {
            let label = python.label();
            let report = python.traced_fixture_report("structures", "untraversed.c", "untraversed", "untraversed.py");

            // A reference to its argument an extension took and never gave back: five
            // bytearrays (56 bytes) with their buffers (65 bytes), each one reference too many.
            let kept = python_made_row(&report, "pass_along", py("@payload"));
            assert_eq!(
                (u(&kept["blocks"]), u(&kept["bytes"])),
                (10, 5 * (56 + 65)),
                "{label}: {kept:#}"
            );
            assert_eq!(kept["kind"], "definitely-lost", "{label}");
            assert_eq!(
                kept["leaked_references"],
                serde_json::json!({"objects": 5, "refcount": 5, "found": 0, "leaked": 5}),
                "{label}"
            );

            // Six cycles of a box (24 bytes, untracked by the collector) and a set (216 bytes
            // with its GC header): garbage when finalisation began, still there at exit. Under
            // load, one in about eight runs, a stale copy of an address on the finalising
            // thread's stack holds one cycle when finalisation begins: it is judged garbage
            // only at exit, where it may have become so by the teardown (not listed).
            let cycles = python_made_row(&report, "build_cycle", py("@box"));
            let n = u(&cycles["roots"]["blocks"]);
            assert!((5..=6).contains(&n), "{label}: {cycles:#}");
            assert_eq!(
                (u(&cycles["blocks"]), u(&cycles["bytes"])),
                (2 * n, n * (24 + 216)),
                "{label}: {cycles:#}"
            );
            assert_eq!(
                objects_of(&cycles["objects"], "untraversed.Box"),
                (n, n * 24),
                "{label}"
            );
            assert_eq!(objects_of(&cycles["objects"], "set"), (n, n * 216), "{label}");
            assert_parts_add_up(cycles, &label);

            // The list cycles Python code dropped were garbage the collector freed; frozen
            // garbage, bytes kept by their characters and the daemon thread's objects are no
            // leak either.
            assert_eq!(rows(&report).len(), 2, "{label}: {report:#}");
        });
    }
}
