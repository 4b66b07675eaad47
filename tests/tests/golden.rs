//! Golden reports: every trace committed under `tests/traces/` (how each was made:
//! `tests/traces/README.md`) is reported as text and as JSON, and compared with the files
//! under `tests/golden/`. `LIBLEAK_BLESS=1` rewrites the expected files instead; review the
//! diff before committing it.
//!
//! The reports are symbolized without reading any file ([`Symbolizer::without_files`]), so
//! they depend on the trace bytes alone: the binaries a trace names exist only on the machine
//! that recorded it.

use std::path::{Path, PathBuf};

use libleak_reporter::model::GroupBy;
use libleak_reporter::render::{json, text};
use libleak_reporter::replay::Trace;
use libleak_reporter::symbolize::Symbolizer;
use libleak_reporter::Options;

fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// The report options trace `name` is reported with, by the suffix of the expected files:
/// the defaults for every trace, and every row by whole stack for the native one (the
/// Python one's reachable rows would make that file hundreds of kilobytes).
fn variants(name: &str) -> Vec<(&'static str, Options)> {
    let mut variants = vec![("", Options::default())];
    if name == "native" {
        let all = Options {
            limit: 0,
            show_reachable: true,
            show_leftovers: true,
            group_by: GroupBy::Stack,
            ..Options::default()
        };
        variants.push((".all", all));
    }
    variants
}

/// An error and its sources, as the `libleak` command prints them.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// The expected files of trace `name` and their contents now.
fn outputs(name: &str) -> Vec<(String, String)> {
    let path = tests_dir().join("traces").join(format!("{name}.trace"));
    let trace = match Trace::open(&path) {
        Ok(trace) => trace,
        Err(error) => return vec![(format!("{name}.error.txt"), error_chain(&error) + "\n")],
    };
    let mut out = Vec::new();
    for (suffix, options) in variants(name) {
        let report = libleak_reporter::build(
            &trace,
            &format!("{name}.trace"),
            &mut Symbolizer::without_files(),
            &options,
        );
        out.push((format!("{name}{suffix}.txt"), text::to_text(&report)));
        let document = serde_json::to_string_pretty(&json::to_json(&report)).unwrap() + "\n";
        out.push((format!("{name}{suffix}.json"), document));
    }
    out
}

/// The first line where `expected` and `actual` differ, for the failure message.
fn first_difference(expected: &str, actual: &str) -> String {
    let mut expected_lines = expected.lines();
    let mut actual_lines = actual.lines();
    for line in 1.. {
        match (expected_lines.next(), actual_lines.next()) {
            (Some(e), Some(a)) if e == a => continue,
            (None, None) => break,
            (e, a) => return format!("line {line}:\n  expected: {e:?}\n  actual:   {a:?}"),
        }
    }
    "only in line endings".to_string()
}

fn trace_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(tests_dir().join("traces"))
        .expect("tests/traces exists")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().to_string_lossy().into_owned();
            Some(name.strip_suffix(".trace")?.to_string())
        })
        .collect();
    names.sort();
    names
}

#[test]
fn committed_traces_give_the_committed_reports() {
    let bless = std::env::var_os("LIBLEAK_BLESS").is_some_and(|v| v == "1");
    let golden = tests_dir().join("golden");
    let names = trace_names();
    assert!(names.len() >= 4, "traces missing from tests/traces: {names:?}");
    let mut expected_files = Vec::new();
    let mut failures = Vec::new();
    for name in &names {
        for (file, actual) in outputs(name) {
            let path = golden.join(&file);
            expected_files.push(file.clone());
            if bless {
                std::fs::write(&path, &actual).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                continue;
            }
            match std::fs::read_to_string(&path) {
                Ok(expected) if expected == actual => {}
                Ok(expected) => failures.push(format!(
                    "tests/golden/{file} differs, {}",
                    first_difference(&expected, &actual)
                )),
                Err(error) => failures.push(format!("tests/golden/{file}: {error}")),
            }
        }
    }
    // Expected files of traces that are gone are stale.
    for entry in std::fs::read_dir(&golden).expect("tests/golden exists") {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !expected_files.contains(&file) {
            failures.push(format!("tests/golden/{file} belongs to no trace in tests/traces"));
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n\nIf the report changed on purpose, rerun with LIBLEAK_BLESS=1 to rewrite the expected files \
         (LIBLEAK_BLESS=1 cargo test --release -p libleak-tests --test golden) and review the diff.",
        failures.join("\n")
    );
}
