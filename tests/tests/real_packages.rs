//! A control on real wheels from PyPI: numpy, orjson, lxml, msgpack, PyYAML, ujson, pydantic
//! and cryptography, installed into one venv per interpreter under `target/real-packages/`
//! (kept between runs), and a program that uses them and leaks nothing. The default report
//! must have no row: what these extensions build at import and keep through their modules is
//! reachable when Python's finalisation begins, and is not a leak although the teardown
//! orphans it before exit; what pyo3 (pydantic-core, cryptography) loses once per class at
//! import is one-time set-up, counted apart as made once by imports.
//!
//! An interpreter is skipped, with the reason printed, when its venv cannot be made (Debian's
//! interpreter without `python3-venv`) or the wheels cannot be installed (no registry).

use std::path::{Path, PathBuf};
use std::process::Command;

use libleak_tests::*;

const PACKAGES: &[&str] = &[
    "numpy",
    "orjson",
    "lxml",
    "msgpack",
    "PyYAML",
    "ujson",
    "pydantic",
    "cryptography",
];

/// The venv of `python` with the packages, made (once) under `target/real-packages/`.
fn venv_with_packages(python: &Python) -> Result<PathBuf, String> {
    let root = target_dir().join("../real-packages");
    let interpreter_path: String = python
        .real_path
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let venv = root.join(format!("venv{interpreter_path}"));
    let interpreter = venv.join("bin/python");
    let done = venv.join("libleak-packages-installed");
    if std::fs::read_to_string(&done).is_ok_and(|installed| installed == PACKAGES.join("\n")) {
        return Ok(interpreter);
    }
    let _ = std::fs::remove_dir_all(&venv);
    std::fs::create_dir_all(&root).map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    let made = run(Command::new(&python.real_path).args(["-m", "venv"]).arg(&venv));
    if !made.status.success() {
        return Err(format!(
            "cannot make a venv: {}",
            String::from_utf8_lossy(&made.stderr).trim()
        ));
    }
    let installed = run(Command::new(&interpreter)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--timeout",
            "30",
        ])
        .args(PACKAGES));
    if !installed.status.success() {
        let stderr = String::from_utf8_lossy(&installed.stderr);
        return Err(format!(
            "cannot install {}: {}",
            PACKAGES.join(", "),
            stderr.lines().last().unwrap_or("").trim()
        ));
    }
    std::fs::write(&done, PACKAGES.join("\n")).map_err(|e| e.to_string())?;
    Ok(interpreter)
}

fn versions(interpreter: &Path) -> String {
    let out = run(Command::new(interpreter).args(["-m", "pip", "freeze", "--disable-pip-version-check"]));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[test]
fn a_program_on_popular_wheels_that_leaks_nothing_has_no_row() {
    let script = fixtures_dir().join("packages/uses_wheels.py");
    let mut checked = 0;
    for python in pythons() {
        let label = python.label();
        let interpreter = match venv_with_packages(&python) {
            Ok(interpreter) => interpreter,
            Err(reason) => {
                println!("skipping {label}: {reason}");
                continue;
            }
        };
        let scratch = Scratch::new(&format!("wheels-{label}"));
        let command = || {
            let mut command = Command::new(&interpreter);
            command.arg(&script).current_dir(&scratch.path);
            command
        };
        let plain = run(&mut command());
        assert!(
            plain.status.success(),
            "{label}: {}",
            String::from_utf8_lossy(&plain.stderr)
        );
        // A second run when the first lists rows: a false row seen once in several runs (the
        // scan at finalisation then finds import-time code objects unreachable; not understood
        // yet, tracked in issue 22) is printed, and fails the test only if it comes back.
        let mut attempts = Vec::new();
        for _ in 0..2 {
            let traced = run_traced(&scratch, &mut command());
            assert_eq!(traced.output.stdout, plain.stdout, "{label}: stdout changed");
            assert_eq!(traced.output.status.code(), Some(0), "{label}");
            let report = report_json(&traced.trace);
            assert_eq!(report["reachability_at_finalization"]["outcome"], "complete", "{label}");
            let clean = report["leaks"].as_array().unwrap().is_empty();
            attempts.push(report);
            if clean {
                break;
            }
        }
        let last = attempts.last().unwrap();
        let rows = last["leaks"].as_array().unwrap();
        assert!(
            rows.is_empty(),
            "{label} ({}): {} rows, {:#}",
            versions(&interpreter),
            rows.len(),
            last["leaks"]
        );
        if attempts.len() > 1 {
            println!(
                "FLAKY {label}: the first run listed {} rows, the second none: {:#}",
                attempts[0]["leaks"].as_array().map_or(0, Vec::len),
                attempts[0]["leaks"]
            );
        }
        checked += 1;
    }
    println!("{checked} interpreters checked");
}
