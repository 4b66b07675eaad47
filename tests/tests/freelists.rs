//! Where an object is born: CPython keeps free lists of lists, dicts, floats and tuples, so
//! an object a C extension makes through `PyList_New`, `PyTuple_Pack` and the like often reuses the memory
//! of one the script dropped, with no `malloc`. The extension's leak of such an object must
//! still be found at the extension's line (and its Python caller), with the exact bytes and
//! blocks of the reused memory. On every interpreter found, with the extension linked as
//! usual and with full RELRO.

use libleak_tests::*;

fn fixture(name: &str) -> std::path::PathBuf {
    fixtures_dir().join("freelists").join(name)
}

/// A leaked object: the extension function, its marker, the script's call marker, and the
/// bytes of the block (the object with its GC header for the GC types).
struct Leak {
    function: &'static str,
    marker: &'static str,
    call: &'static str,
    bytes: u64,
}

const LEAKS: [Leak; 5] = [
    // PyListObject (40) + GC header (16).
    Leak {
        function: "leak_list",
        marker: "@births_list",
        call: "@births_list_call",
        bytes: 56,
    },
    // PyDictObject (48) + GC header (16).
    Leak {
        function: "leak_dict",
        marker: "@births_dict",
        call: "@births_dict_call",
        bytes: 64,
    },
    // PyFloatObject: not a GC type.
    Leak {
        function: "leak_float",
        marker: "@births_float",
        call: "@births_float_call",
        bytes: 24,
    },
    // A 3-tuple: 24 + 3 items + GC header (16).
    Leak {
        function: "leak_tuple",
        marker: "@births_tuple",
        call: "@births_tuple_call",
        bytes: 64,
    },
    // A 7-tuple from `PyTuple_Pack`: 24 + 7 items + GC header (16).
    Leak {
        function: "leak_packed",
        marker: "@births_packed",
        call: "@births_packed_call",
        bytes: 96,
    },
];

/// How the extension is linked: the default (calls through the PLT, bound at load since
/// CPython loads extensions with `RTLD_NOW`; partial RELRO), and full RELRO with `-fno-plt`
/// (calls through `R_X86_64_GLOB_DAT` slots the loader makes read-only).
const LINKINGS: [(&str, &[&str]); 2] = [
    ("default", &[]),
    ("full-relro-no-plt", &["-fno-plt", "-Wl,-z,relro,-z,now"]),
];

/// What is wrong with `report`'s rows for the leaks, if anything.
fn check(report: &serde_json::Value, label: &str) -> Result<(), String> {
    for leak in &LEAKS {
        let line = line_of("freelists/births.c", leak.marker);
        let rows = leaks_in(report, leak.function);
        if rows.len() != 1 {
            return Err(format!("{label}: {} rows for {}", rows.len(), leak.function));
        }
        let row = rows[0];
        let python_line = line_of("freelists/driver.py", leak.call);
        let called_from_python = row["frames"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "python" && f["line"].as_u64() == Some(python_line));
        let expected = (
            "definitely-lost",
            "free-list",
            Some(line),
            Some(leak.bytes),
            Some(1),
            true,
        );
        let found = (
            row["kind"].as_str().unwrap_or(""),
            row["allocator"].as_str().unwrap_or(""),
            row["owner"]["line"].as_u64(),
            row["bytes"].as_u64(),
            row["blocks"].as_u64(),
            called_from_python,
        );
        if found != expected {
            return Err(format!(
                "{label}: {}: expected {expected:?}, found {found:?}: {row:#}",
                leak.function
            ));
        }
        assert_leak(report, leak.function, "births.c", line, leak.bytes, 1);
    }
    Ok(())
}

#[test]
fn objects_an_extension_takes_off_free_lists_are_blamed_on_the_extension() {
    let pythons = pythons();
    assert!(!pythons.is_empty(), "no usable Python interpreter found");
    for (python, (linking, flags)) in pythons
        .iter()
        .flat_map(|python| LINKINGS.iter().map(move |linking| (python, linking)))
    {
        let label = format!("{} ({linking})", python.label());
        let scratch = Scratch::new(&format!("freelists-{label}"));
        python.build_extension_with(&fixture("births.c"), "births", &scratch.path, flags);
        std::fs::copy(fixture("driver.py"), scratch.join("driver.py")).unwrap();
        // A rebirth used to go unrecorded now and then: the collector met it before its
        // block's allocation, which a sweep had overtaken (fixed, `1c04295`). What is left:
        // CPython's free-list array keeps a stale copy of each address it handed out until
        // another object is freed into that slot, which string hashing (random per run)
        // decides; the conservative scan then reads the leaked object as reachable (seen once
        // in about a hundred runs, a 3.10 dict). The run is then made once more, the first
        // run's failure printed as FLAKY.
        with_one_retry(&label, || {
            let report = report_json(&python.run_script_traced(&scratch, "driver.py", &label));
            if let Err(wrong) = check(&report, &label) {
                panic!("{wrong}");
            }
        });
    }
}

/// Lists an extension leaks at one line, some taken off the free list and some freshly
/// allocated (their recorded stacks differ below the extension's frame), are one row: the
/// extension's line, with every block.
#[test]
fn objects_from_the_free_list_and_fresh_ones_leaked_at_one_line_are_one_row() {
    for python in pythons() {
        let label = python.label();
        let scratch = Scratch::new(&format!("freelists-mixed-{label}"));
        python.build_extension(&fixture("births.c"), "births", &scratch.path);
        std::fs::copy(fixture("mixed.py"), scratch.join("mixed.py")).unwrap();
        // The free-list array's stale slots (see the test above) can leave one of the 40 lists
        // reachable now and then; the sweep's overtaking, which lost one far more often, is
        // fixed. The run is made once more.
        with_one_retry(&label, || {
            let report = report_json(&python.run_script_traced(&scratch, "mixed.py", &label));
            // The row's shown frames are its largest stack's, which may start in either way:
            // the row is the one whose owner is the extension's function.
            let rows: Vec<&serde_json::Value> = report["leaks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|row| row["owner"]["function"] == "leak_list")
                .collect();
            assert_eq!(rows.len(), 1, "{label}: {report:#}");
            let row = rows[0];
            let line = line_of("freelists/births.c", "@births_list");
            let found = (
                row["owner"]["line"].as_u64(),
                row["owner"]["python"]["line"].as_u64(),
                row["bytes"].as_u64(),
                row["blocks"].as_u64(),
            );
            let expected = (
                Some(line),
                Some(line_of("freelists/mixed.py", "@births_mixed_call")),
                Some(40 * 56),
                Some(40),
            );
            assert_eq!(found, expected, "{label}: {row:#}");
            let allocators: Vec<&str> = row["stacks"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|stack| stack["frames"][0]["function"].as_str())
                .collect();
            // Both ways, so the row does join two kinds of stack: the birth's, recorded from
            // the extension's frame, and the allocator's.
            assert_eq!(allocators.len(), 2, "{label}: {row:#}");
            assert!(allocators.contains(&"leak_list"), "{label}: {allocators:?}");
        });
    }
}

/// An extension that keeps its dead instances on a free list linked through them (as
/// CPython's `_asyncio` keeps future iterators, which outlive the loop under uvloop): the dead
/// are no leak (the runtime's leftovers, listed with them), a reference never given back is,
/// and so are dead objects nothing links to (a deallocator that forgets to free them).
#[test]
fn dead_objects_an_extension_keeps_for_reuse_are_no_leak() {
    for python in pythons() {
        let label = python.label();
        let scratch = Scratch::new(&format!("freelists-dead-{label}"));
        python.build_extension(&fixture("deadlist.c"), "deadlist", &scratch.path);
        std::fs::copy(fixture("deadlist.py"), scratch.join("deadlist.py")).unwrap();
        let trace = python.run_script_traced(&scratch, "deadlist.py", &label);
        let rows_of = |report: &serde_json::Value, name: &str| -> Vec<serde_json::Value> {
            report["leaks"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|row| row["objects"].as_array().unwrap().iter().any(|o| o["type"] == name))
                .cloned()
                .collect()
        };
        let amounts = |rows: &[serde_json::Value]| -> Vec<(bool, u64, u64)> {
            let mut found: Vec<(bool, u64, u64)> = rows
                .iter()
                .map(|row| {
                    (
                        row["runtime_leftover"] == true,
                        row["blocks"].as_u64().unwrap(),
                        row["bytes"].as_u64().unwrap(),
                    )
                })
                .collect();
            found.sort();
            found
        };
        // The leaked item only: it came off the free list, so its stack is its block's first.
        let report = report_json(&trace);
        let items = rows_of(&report, "deadlist.Item");
        assert_eq!(amounts(&items), [(false, 1, 48)], "{label}: {report:#}");
        let leaked = &items[0]["leaked_references"];
        assert_eq!(leaked["leaked"].as_u64(), Some(1), "{label}: {leaked}");
        // Dead, but nothing links to them: lost by their deallocator.
        let forgotten = rows_of(&report, "deadlist.Forgetful");
        assert_eq!(amounts(&forgotten), [(false, 3, 3 * 48)], "{label}: {report:#}");
        // Twelve dropped, one taken back: eleven dead, of which the head is reachable.
        let all = report_json_with(&trace, &["--show-leftovers"]);
        let found = amounts(&rows_of(&all, "deadlist.Item"));
        assert_eq!(found, [(false, 1, 48), (true, 10, 480)], "{label}: {all:#}");
    }
}

/// A list and a dict an extension takes off the free lists and leaks, in a process that ends
/// before anything is dropped into their slots: the free-list arrays still name them (as
/// their spare slots keep what they last held), and those stale copies are no references.
#[test]
fn free_list_slots_that_still_name_a_taken_object_are_no_references() {
    let c = |marker: &str| line_of("freelists/stale_slot.c", marker);
    for python in pythons() {
        with_one_retry(&python.label(), || {
            let label = python.label();
            let scratch = Scratch::new(&format!("freelists-stale-{label}"));
            python.build_extension(&fixture("stale_slot.c"), "stale_slot", &scratch.path);
            std::fs::copy(fixture("stale_slot.py"), scratch.join("stale_slot.py")).unwrap();
            let report = report_json(&python.run_script_traced(&scratch, "stale_slot.py", &label));
            assert_eq!(report["reachability"]["outcome"], "complete", "{label}");
            for (function, marker, bytes) in [("take_list", "@take_list", 56), ("take_dict", "@take_dict", 64)] {
                let rows: Vec<&serde_json::Value> = report["leaks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|row| row["owner"]["function"] == function)
                    .collect();
                assert_eq!(rows.len(), 1, "{label}: {function}: {report:#}");
                let row = rows[0];
                assert_eq!(row["kind"], "definitely-lost", "{label}: {row:#}");
                assert_eq!(row["owner"]["line"].as_u64(), Some(c(marker)), "{label}");
                assert_eq!(
                    (row["blocks"].as_u64(), row["bytes"].as_u64()),
                    (Some(1), Some(bytes)),
                    "{label}"
                );
            }
            // What was taken and dropped back is kept by its slot: no leak.
            assert_eq!(report["leaks"].as_array().unwrap().len(), 2, "{label}: {report:#}");
        });
    }
}
