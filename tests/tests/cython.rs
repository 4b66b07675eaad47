//! A Cython module built in place from its `.pyx` (Cython from PyPI, into a venv cached under
//! target/py/): its leaks must be found at their `.pyx` lines, with the Python name of each
//! function beside its C name in the text report, and the traced run must behave as the plain
//! one.

use std::path::{Path, PathBuf};
use std::process::Command;

use libleak_tests::*;
use serde_json::Value;

/// The interpreter the module is built for: one is enough to test the reading of Cython's
/// output, which does not depend on the interpreter.
const VERSION: (u32, u32) = (3, 12);

fn venv_for(python: &Python) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/py")
        .join(format!("cython-{}.{}", python.version.0, python.version.1));
    if !dir.join("bin/cython").exists() {
        let _ = std::fs::remove_dir_all(&dir);
        let made = run(Command::new(&python.real_path).arg("-m").arg("venv").arg(&dir));
        assert!(made.status.success(), "venv: {}", String::from_utf8_lossy(&made.stderr));
        let installed = run(Command::new(dir.join("bin/pip")).args([
            "install",
            "-q",
            "--disable-pip-version-check",
            "cython",
            "setuptools",
        ]));
        assert!(
            installed.status.success(),
            "pip install cython setuptools: {}",
            String::from_utf8_lossy(&installed.stderr)
        );
    }
    dir
}

fn rows_owned_by<'a>(report: &'a Value, function: &str) -> Vec<&'a Value> {
    report["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["owner"]["function"].as_str().is_some_and(|f| f.ends_with(function)))
        .collect()
}

#[test]
fn cython_leaks_are_found_at_their_pyx_lines() {
    let Some(python) = pythons().into_iter().find(|p| p.version == VERSION) else {
        eprintln!("skipping the Cython test: Python {}.{} not found", VERSION.0, VERSION.1);
        return;
    };
    let venv = venv_for(&python);
    let scratch = Scratch::new("cython");
    for file in ["cyleak.pyx", "setup.py", "drive.py"] {
        std::fs::copy(fixtures_dir().join("cython").join(file), scratch.join(file)).unwrap();
    }
    let built = run(Command::new(venv.join("bin/python"))
        .args(["setup.py", "-q", "build_ext", "--inplace"])
        .current_dir(&scratch.path));
    assert!(
        built.status.success(),
        "cythonize: {}",
        String::from_utf8_lossy(&built.stderr)
    );

    let command = || {
        let mut command = Command::new(venv.join("bin/python"));
        command.arg("drive.py").current_dir(&scratch.path);
        command
    };
    let plain = run(&mut command());
    let traced = run_traced(&scratch, &mut command());
    assert_eq!(traced.output.stdout, plain.stdout, "stdout changed under libleak");
    assert_eq!(traced.output.status.code(), plain.status.code());

    let pyx = |marker: &str| line_of("cython/cyleak.pyx", marker);
    let report = report_json_with(&traced.trace, &[]);
    for (function, marker, bytes, blocks) in [
        ("_make_buffer", "@make_buffer", 20 * 100, 20),
        ("___cinit__", "@cinit", 5 * 64, 5),
    ] {
        let rows = rows_owned_by(&report, function);
        assert_eq!(rows.len(), 1, "{function}: {report:#}");
        let owner = &rows[0]["owner"];
        assert!(
            owner["file"].as_str().is_some_and(|f| f.ends_with("/cyleak.pyx")),
            "{owner:#}"
        );
        assert_eq!(owner["line"].as_u64(), Some(pyx(marker)), "{function}: {owner:#}");
        assert_eq!(
            (rows[0]["bytes"].as_u64(), rows[0]["blocks"].as_u64()),
            (Some(bytes), Some(blocks))
        );
    }
    assert_eq!(report["leaks"].as_array().unwrap().len(), 2, "{report:#}");

    let text = run(Command::new(libleak_bin()).arg("report").arg(&traced.trace));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("(cyleak.make_buffer) at "), "{text}");
    assert!(text.contains("(cyleak.Session.__cinit__) at "), "{text}");
}
