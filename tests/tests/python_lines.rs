//! The reporter's line-table decoders against the interpreter itself: for every code object
//! of a set of standard-library modules, on every interpreter found, the line the reporter
//! decodes from the copied table equals `PyCode_Addr2Line` at every instruction offset.

use std::process::Command;

use libleak_reporter::symbolize::python_lines::line_at;
use libleak_tests::*;
use serde_json::Value;

const MODULES: &[&str] = &[
    "argparse",
    "asyncio.base_events",
    "collections",
    "dataclasses",
    "difflib",
    "email.message",
    "inspect",
    "json.decoder",
    "pydoc",
    "typing",
];

#[test]
fn decoded_lines_match_the_interpreter_at_every_offset() {
    let script = fixtures_dir().join("pyframes/line_tables.py");
    let pythons = pythons();
    assert!(!pythons.is_empty(), "no usable Python interpreter found");
    for python in pythons {
        let label = python.label();
        let out = run(Command::new(&python.real_path).arg(&script).args(MODULES));
        assert!(
            out.status.success(),
            "{label}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (mut compared, mut codes) = (0usize, 0usize);
        let mut mismatches = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let code: Value = serde_json::from_str(line).unwrap();
            let table: Vec<u8> = (0..code["table"].as_str().unwrap().len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&code["table"].as_str().unwrap()[i..i + 2], 16).unwrap())
                .collect();
            let version = code["version"].as_u64().unwrap() as u32;
            let first_line = code["first_line"].as_u64().unwrap() as u32;
            codes += 1;
            for pair in code["lines"].as_array().unwrap() {
                let offset = pair[0].as_i64().unwrap();
                let expected = pair[1].as_i64().unwrap();
                let expected = (expected >= 0).then_some(expected as u32);
                let decoded = line_at(version, &table, first_line, offset);
                compared += 1;
                if decoded != expected && mismatches.len() < 10 {
                    mismatches.push(format!(
                        "{} offset {offset}: decoded {decoded:?}, interpreter {expected:?}",
                        code["name"]
                    ));
                }
            }
        }
        assert!(mismatches.is_empty(), "{label}: {mismatches:#?}");
        assert!(
            codes > 1000 && compared > 50_000,
            "{label}: only {codes} code objects, {compared} offsets"
        );
        println!("{label}: {compared} offsets of {codes} code objects match");
    }
}
