//! A leak made by the script's last call, with nothing run after it: the interpreter's free
//! lists then hold the objects that call used, with stale pointers to what they held (a
//! free-listed list's old item array, a frame's locals). Those dead objects are no references:
//! the leaked list is found, exactly, on every interpreter (the scan used to read it as
//! reachable through them on all of 3.9–3.13).

use libleak_tests::*;

#[test]
fn a_leak_made_by_the_last_call_before_exit_is_found() {
    let fixture = |name: &str| fixtures_dir().join("last_call").join(name);
    let pythons = pythons();
    assert!(!pythons.is_empty(), "no usable Python interpreter found");
    for python in pythons {
        let label = python.label();
        let scratch = Scratch::new(&format!("last-call{}{}", python.version.0, python.version.1));
        python.build_extension(&fixture("refleak.c"), "refleak", &scratch.path);
        std::fs::copy(fixture("last.py"), scratch.join("last.py")).unwrap();
        let report = report_json(&python.run_script_traced(&scratch, "last.py", &label));
        let rows: Vec<&serde_json::Value> = report["leaks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|row| row["owner"]["function"] == "make")
            .collect();
        assert_eq!(rows.len(), 1, "{label}: {report:#}");
        let row = rows[0];
        let found = (
            row["kind"].as_str(),
            row["owner"]["line"].as_u64(),
            row["owner"]["python"]["line"].as_u64(),
            row["roots"]["blocks"].as_u64(),
            row["leaked_references"]["leaked"].as_u64(),
        );
        let expected = (
            Some("definitely-lost"),
            Some(line_of("last_call/refleak.c", "@last_call_list")),
            Some(line_of("last_call/last.py", "@last_call_make")),
            Some(1),
            Some(1),
        );
        assert_eq!(found, expected, "{label}: {row:#}");
        assert_eq!(row["objects"][0]["type"], "list", "{label}: {row:#}");
    }
}
