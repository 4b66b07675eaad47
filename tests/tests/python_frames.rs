//! Merged native + Python stacks on every interpreter found: a C extension built at test time
//! is reached through nested functions, a generator, a lambda run by `map()`, a method, a
//! thread, a C → Python → C callback, a C thread entering Python, an extra `Py_INCREF`, and a call that releases the GIL
//! while another thread runs Python, and code objects compiled, run and freed in turn. Each leaks one block of a size that names it; the test
//! asserts the exact frames (C function and line, then Python function, file and line, in
//! order) and the exact bytes and blocks.

use std::process::Command;

use libleak_tests::*;
use serde_json::Value;

/// (function, line) pairs as the report shows them, innermost first.
type Frames = Vec<(String, u64)>;

fn shown(leak: &Value) -> Frames {
    leak["frames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["function"].as_str().unwrap_or("??").to_string(),
                f["line"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// The one leak of exactly `bytes` bytes that passed through the fixture extension.
fn leak_of(report: &Value, bytes: u64, label: &str) -> Value {
    let rows: Vec<&Value> = report["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["bytes"].as_u64() == Some(bytes))
        .filter(|l| {
            l["frames"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["file"].as_str().is_some_and(|f| f.ends_with("frames.c")))
        })
        .collect();
    assert_eq!(rows.len(), 1, "{label}: one leak of {bytes} bytes expected: {rows:#?}");
    assert_eq!(
        rows[0]["blocks"].as_u64(),
        Some(1),
        "{label}: blocks of the {bytes}-byte leak"
    );
    rows[0].clone()
}

#[test]
fn python_frames_are_spliced_into_native_stacks_on_every_interpreter() {
    let fixtures = fixtures_dir().join("pyframes");
    let source = fixtures.join("frames.c");
    let driver = fixtures.join("driver.py");
    let pythons = pythons();
    assert!(!pythons.is_empty(), "no usable Python interpreter found");
    let c = |marker: &str| line_of("pyframes/frames.c", marker);
    let py = |marker: &str| line_of("pyframes/driver.py", marker);
    for python in pythons {
        let label = python.label();
        let scratch = Scratch::new(&format!("pyframes{}{}", python.version.0, python.version.1));
        python.build_extension(&source, "frames", &scratch.path);
        std::fs::copy(&driver, scratch.join("driver.py")).unwrap();
        let trace = python.run_script_traced(&scratch, "driver.py", &label);
        let report = all_live_blocks_json(&trace);
        assert_eq!(report["python"]["frames_recorded"], true, "{label}");
        assert_eq!(report["python"]["pythonmalloc_set"], true, "{label}");
        assert_eq!(report["python"]["ignores_environment"], false, "{label}");

        // Qualified names from 3.11; plain names before.
        let qualified = python.version >= (3, 11);
        let name = |qualname: &str| -> String {
            if qualified {
                qualname.to_string()
            } else {
                qualname.rsplit('.').next().unwrap().to_string()
            }
        };
        let frames = |list: &[(&str, u64)]| -> Frames { list.iter().map(|(f, l)| (f.to_string(), *l)).collect() };
        let allocation = [("keep_alive", c("@keep_alive")), ("frames_alloc", c("@alloc_call"))];
        let module = ("<module>", py("@module_main"));
        let expect_whole = |bytes: u64, python_frames: &[(String, u64)]| {
            let leak = leak_of(&report, bytes, &label);
            let mut expected = frames(&allocation);
            expected.extend(python_frames.iter().cloned());
            expected.push((module.0.to_string(), module.1));
            assert_eq!(
                shown(&leak),
                expected,
                "{label}: stack of the {bytes}-byte leak: {leak:#}"
            );
            assert_eq!(leak["frames"][0]["kind"], "native");
            assert!(
                leak["frames"][0]["file"].as_str().unwrap().ends_with("frames.c"),
                "{label}"
            );
            let python_file = leak["frames"][2]["file"].as_str().unwrap_or("");
            assert!(python_file.ends_with("driver.py"), "{label}: {python_file}");
            assert_eq!(leak["frames"][2]["kind"], "python");
        };
        let own = |f: &str, marker: &str| (f.to_string(), py(marker));
        let owned = |f: String, marker: &str| (f, py(marker));

        expect_whole(
            40_001,
            &[
                own("innermost", "@nested_leaf"),
                own("middle", "@nested_middle"),
                own("outer", "@nested_outer"),
                own("main", "@main_nested"),
            ],
        );
        expect_whole(
            40_002,
            &[
                own("generator", "@gen_alloc"),
                own("drive_generator", "@gen_next"),
                own("main", "@main_gen"),
            ],
        );
        expect_whole(
            40_003,
            &[
                owned(name("via_map.<locals>.<lambda>"), "@map_lambda"),
                own("via_map", "@map_lambda"),
                own("main", "@main_map"),
            ],
        );
        expect_whole(
            40_004,
            &[
                owned(name("Holder.grab"), "@method_alloc"),
                own("call_method", "@method_call"),
                own("main", "@main_method"),
            ],
        );
        let callback = leak_of(&report, 40_006, &label);
        let mut expected = frames(&allocation);
        expected.extend([
            own("callback", "@callback_inner"),
            ("frames_call_back".to_string(), c("@callback_call")),
            own("through_callback", "@callback_outer"),
            own("main", "@main_callback"),
            (module.0.to_string(), module.1),
        ]);
        assert_eq!(shown(&callback), expected, "{label}: C -> Python -> C: {callback:#}");

        // Code objects freed and others compiled at their addresses: each frame still names
        // its own code object's file.
        for n in 0..8 {
            let leak = leak_of(&report, 40_100 + n, &label);
            let mut expected = frames(&allocation);
            expected.extend([
                ("generated".to_string(), 4),
                own("recompiled", "@recompiled_call"),
                own("main", "@main_recompiled"),
                (module.0.to_string(), module.1),
            ]);
            assert_eq!(shown(&leak), expected, "{label}: recompiled code {n}: {leak:#}");
            assert_eq!(
                leak["frames"][2]["file"].as_str(),
                Some(format!("generated_{n}.py").as_str()),
                "{label}: recompiled code {n}"
            );
        }

        // Threads: the thread's own function, then threading's run().
        let thread = shown(&leak_of(&report, 40_005, &label));
        assert_eq!(
            thread[..3],
            frames(&allocation)
                .into_iter()
                .chain([own("thread_body", "@thread_alloc")])
                .collect::<Vec<_>>()[..],
            "{label}: {thread:?}"
        );
        assert!(
            thread[3].0.ends_with("run"),
            "{label}: thread stack continues in Thread.run: {thread:?}"
        );

        // A C thread that entered Python: its own Python frame, then the C function that
        // called it, and nothing of the thread that started it.
        let c_thread = shown(&leak_of(&report, 40_008, &label));
        let mut expected = frames(&allocation);
        expected.extend([
            own("called_from_c_thread", "@c_thread_inner"),
            ("c_thread_main".to_string(), c("@c_thread_call")),
        ]);
        assert_eq!(c_thread, expected, "{label}: C thread calling into Python");

        // With the GIL released (and taken by the spinning thread), the stack is still the
        // allocating thread's own.
        let without_gil = shown(&leak_of(&report, 40_007, &label));
        assert_eq!(
            without_gil[..3],
            [
                ("keep_alive".to_string(), c("@keep_alive")),
                ("frames_alloc_without_gil".to_string(), c("@nogil_call")),
                own("without_gil", "@nogil_outer"),
            ],
            "{label}: {without_gil:?}"
        );
        assert!(
            !without_gil.iter().any(|(f, _)| f == "spin"),
            "{label}: another thread's frames: {without_gil:?}"
        );

        // An object kept alive by an extra reference: the C function that created it, then
        // the Python line that called it. Its size is the bytes object header plus the data.
        let object = shown(&leak_of(&report, 32 + 1 + 50_000, &label));
        let creator = object
            .iter()
            .position(|(f, _)| f == "frames_leak_object")
            .unwrap_or_else(|| panic!("{label}: no creating C function in {object:?}"));
        assert_eq!(
            object[creator..],
            [
                ("frames_leak_object".to_string(), c("@incref_new")),
                own("leak_object", "@incref_call"),
                own("main", "@main_incref"),
                (module.0.to_string(), module.1),
            ],
            "{label}: {object:?}"
        );
        assert!(
            object[..creator].iter().all(|(f, _)| f.contains("Bytes")),
            "{label}: only the bytes constructor lies above the creator: {object:?}"
        );
    }
}

/// An interpreter whose layout libleak does not know (a CPython older than 3.9 from pyenv):
/// one line on stderr, native stacks only, the program otherwise unchanged.
#[test]
fn an_unsupported_interpreter_gets_native_stacks_and_one_line_on_stderr() {
    let root = std::env::var_os("PYENV_ROOT")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".pyenv")));
    let old = root.and_then(|root| {
        let mut found: Vec<_> = std::fs::read_dir(root.join("versions"))
            .ok()?
            .flatten()
            .map(|entry| entry.path())
            .filter(|p| {
                let name = p.file_name().unwrap().to_string_lossy().to_string();
                ["3.6.", "3.7.", "3.8."].iter().any(|v| name.starts_with(v))
            })
            .map(|p| p.join("bin/python3"))
            .filter(|p| p.is_file())
            .collect();
        found.sort();
        found.pop()
    });
    let Some(python) = old else {
        println!("skipping: no CPython 3.6-3.8 under pyenv to stand for an unsupported version");
        return;
    };
    let scratch = Scratch::new("unsupported-python");
    let command = || {
        let mut command = Command::new(&python);
        command.args(["-c", "import sys; print(sys.version_info[:2]); sys.exit(3)"]);
        command
    };
    let plain = run(&mut command());
    let traced = run_traced(&scratch, &mut command());
    assert_eq!(traced.output.stdout, plain.stdout);
    assert_eq!(traced.output.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&traced.output.stderr);
    let notes: Vec<&str> = stderr.lines().filter(|l| l.contains("version not supported")).collect();
    assert_eq!(notes.len(), 1, "{stderr}");
    assert!(notes[0].starts_with("libleak: CPython 3."), "{stderr}");
    assert!(notes[0].ends_with("recording native stacks only"), "{stderr}");
    let report = all_live_blocks_json(&traced.trace);
    assert_eq!(report["python"]["frames_recorded"], false, "{report:#}");
    assert!(report["python"]["note"]
        .as_str()
        .unwrap()
        .contains("version not supported"));
    let leaks = report["leaks"].as_array().unwrap();
    assert!(!leaks.is_empty());
    assert!(leaks
        .iter()
        .all(|l| l["frames"].as_array().unwrap().iter().all(|f| f["kind"] == "native")));
}
