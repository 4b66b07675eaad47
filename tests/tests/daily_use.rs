//! End-to-end tests of what a user meets in daily use of the interposer (issue 23): an
//! allocator looked up by handle (`ctypes.CDLL("libc.so.6").malloc`, `dlsym(libc, …)`) is
//! recorded while `dlsym(RTLD_NEXT, …)` keeps its meaning; traces are private and keep
//! secrets out; a status returned from `main` is recorded; `LIBLEAK_FOLLOW=0` leaves the
//! children's environment (and allocator) alone.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use libleak_tests::*;

/// Builds the fixture `daily/SOURCE` into `scratch` (with libdl for the lookups).
fn build(scratch: &Scratch, source: &str) -> std::path::PathBuf {
    let exe = scratch.join("fixture");
    compile("gcc", &[&format!("daily/{source}")], &exe, &["-ldl"]);
    exe
}

/// Runs `exe ARGS` plainly and traced; asserts the same stdout and exit status.
fn trace_like_plain(scratch: &Scratch, exe: &std::path::Path, args: &[&str]) -> Traced {
    let plain = run(Command::new(exe).args(args).current_dir(&scratch.path));
    let traced = run_traced(scratch, Command::new(exe).args(args).current_dir(&scratch.path));
    assert_eq!(
        String::from_utf8_lossy(&traced.output.stdout),
        String::from_utf8_lossy(&plain.stdout),
        "stdout changed under libleak"
    );
    assert_eq!(
        program_stderr(&traced.output),
        program_stderr(&plain),
        "stderr changed under libleak"
    );
    assert_eq!(traced.output.status.code(), plain.status.code(), "exit status changed");
    traced
}

#[test]
fn allocator_looked_up_by_handle_is_recorded() {
    let scratch = Scratch::new("dlsym-handle");
    let exe = build(&scratch, "dlsym_handle.c");
    let traced = trace_like_plain(&scratch, &exe, &[]);
    assert_eq!(traced.output.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&traced.output.stdout), "strlen by handle: 7\n");
    let report = report_json(&traced.trace);
    assert_eq!(report["complete"], true);
    let src = "daily/dlsym_handle.c";
    assert_leak(&report, "leak_by_dlsym", src, line_of(src, "@dlsym_malloc"), 3 * 333, 3);
    assert_leak(
        &report,
        "leak_by_dlvsym",
        src,
        line_of(src, "@dlvsym_calloc"),
        2 * 444,
        2,
    );
    assert_eq!(
        report["leaks"].as_array().map(Vec::len),
        Some(2),
        "only the planted leaks (the block freed through the handle's free is not one): {report:#}"
    );
    // main returned 0: glibc's own call to exit, which no export sees, still has its status.
    assert_eq!(report["exit"]["kind"], "exit");
    assert_eq!(report["exit"]["status"], 0, "status of a return from main");
}

#[test]
fn rtld_next_from_the_programs_own_malloc_still_finds_the_next_one() {
    let scratch = Scratch::new("rtld-next");
    let exe = build(&scratch, "next_wrapper.c");
    let traced = trace_like_plain(&scratch, &exe, &[]);
    assert_eq!(
        String::from_utf8_lossy(&traced.output.stdout),
        "through the wrapper: 1\n"
    );
    assert_eq!(traced.output.status.code(), Some(3));
    // "Next" after the program is libleak's malloc (not libc's, which a wrapper calling the
    // real dlsym on the program's behalf would give): the leaks are recorded, at the call in
    // the program's malloc.
    let report = report_json(&traced.trace);
    let src = "daily/next_wrapper.c";
    assert_leak(&report, "malloc", src, line_of(src, "@next_call"), 4 * 77, 4);
    assert_eq!(report["exit"]["status"], 3, "status of a return from main");
}

#[test]
fn ctypes_malloc_from_libc_is_recorded_on_every_interpreter() {
    let pythons = pythons();
    if pythons.is_empty() {
        eprintln!("skipping: no supported Python interpreter found");
        return;
    }
    for python in pythons {
        let label = python.label();
        let scratch = Scratch::new("ctypes-libc");
        std::fs::copy(
            fixtures_dir().join("daily/ctypes_libc_malloc.py"),
            scratch.join("ctypes_libc_malloc.py"),
        )
        .expect("copy script");
        let trace = python.run_script_traced(&scratch, "ctypes_libc_malloc.py", &label);
        let report = report_json(&trace);
        let rows: Vec<_> = report["leaks"]
            .as_array()
            .expect("leaks")
            .iter()
            .filter(|leak| leak["bytes"] == 5 * 4242)
            .collect();
        assert_eq!(
            rows.len(),
            1,
            "{label}: one row of the five 4242-byte leaks: {report:#}"
        );
        assert_eq!(rows[0]["blocks"], 5, "{label}");
        assert_eq!(report["exit"]["status"], 0, "{label}: status of a normal end");
    }
}

#[test]
fn trace_is_private_and_secret_arguments_are_redacted() {
    let scratch = Scratch::new("redact");
    let exe = build(&scratch, "dlsym_handle.c");
    let args = ["--password=hunter2", "--API-Key", "hunter3", "plain", "-p", "visible"];
    let traced = trace_like_plain(&scratch, &exe, &args);
    let mode = std::fs::metadata(&traced.trace).expect("trace").permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "trace mode {mode:o}");
    let raw = std::fs::read(&traced.trace).expect("read trace");
    for secret in ["hunter2", "hunter3"] {
        assert!(
            !raw.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "{secret} in the trace"
        );
    }
    let report = report_json(&traced.trace);
    let exe_arg = exe.to_string_lossy().into_owned();
    assert_eq!(
        report["process"]["argv"],
        serde_json::json!([exe_arg, "--password=***", "--API-Key", "***", "plain", "-p", "visible"])
    );
}

#[test]
fn redact_args_keeps_every_argument_out_but_not_the_file_name() {
    let scratch = Scratch::new("redact-all");
    let exe = build(&scratch, "dlsym_handle.c");
    let traces = scratch.join("traces");
    std::fs::create_dir(&traces).expect("mkdir");
    let child = Command::new(&exe)
        .args(["one", "--password=hunter2"])
        .current_dir(&scratch.path)
        .env("LD_PRELOAD", libleak_so())
        .env("LIBLEAK_OUTPUT", format!("{}/", traces.display()))
        .env("LIBLEAK_REDACT_ARGS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run fixture");
    let pid = child.id();
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(0));
    let trace = traces.join(format!("libleak.fixture.{pid}.trace"));
    assert!(
        trace.is_file(),
        "the file name still names the program: {}",
        trace.display()
    );
    let report = report_json(&trace);
    let exe_arg = exe.to_string_lossy().into_owned();
    assert_eq!(report["process"]["argv"], serde_json::json!([exe_arg, "…", "…"]));
    assert_eq!(report["process"]["program"], "fixture");
}

#[test]
fn not_following_leaves_the_childrens_allocator_alone() {
    let pythons = pythons();
    if pythons.is_empty() {
        eprintln!("skipping: no supported Python interpreter found");
        return;
    }
    for python in pythons {
        let label = python.label();
        let scratch = Scratch::new("follow-0");
        let script = fixtures_dir().join("daily/pythonmalloc_children.py");
        let output = run(Command::new(&python.real_path)
            .arg(&script)
            .current_dir(&scratch.path)
            .env_remove("PYTHONMALLOC")
            .env("LD_PRELOAD", libleak_so())
            .env("LIBLEAK_OUTPUT", scratch.join("trace.%p"))
            .env("LIBLEAK_FOLLOW", "0"));
        assert_eq!(
            output.status.code(),
            Some(0),
            "{label}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The traced interpreter runs on malloc; its child, not traced, on pymalloc as it would
        // without libleak, and neither sees a PYTHONMALLOC it was not given.
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "parent pymalloc: False\nparent environ: None\nchild environ: None\nchild pymalloc: True\n",
            "{label}"
        );
        let traces = std::fs::read_dir(&scratch.path)
            .expect("list")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("trace."))
            .count();
        assert_eq!(traces, 1, "{label}: only the parent is traced");
    }
}

#[test]
fn followed_children_run_on_malloc_without_inheriting_pythonmalloc() {
    let pythons = pythons();
    if pythons.is_empty() {
        eprintln!("skipping: no supported Python interpreter found");
        return;
    }
    for python in pythons {
        let label = python.label();
        let scratch = Scratch::new("follow-1");
        let script = fixtures_dir().join("daily/pythonmalloc_children.py");
        let output = run(Command::new(&python.real_path)
            .arg(&script)
            .current_dir(&scratch.path)
            .env_remove("PYTHONMALLOC")
            .env_remove("LIBLEAK_FOLLOW")
            .env("LD_PRELOAD", libleak_so())
            .env("LIBLEAK_OUTPUT", scratch.join("trace.%p")));
        assert_eq!(
            output.status.code(),
            Some(0),
            "{label}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        // The child is traced: its own libleak makes it run on malloc too.
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            "parent pymalloc: False\nparent environ: None\nchild environ: None\nchild pymalloc: False\n",
            "{label}"
        );
        let traces = std::fs::read_dir(&scratch.path)
            .expect("list")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("trace."))
            .count();
        assert_eq!(traces, 2, "{label}: the parent and its child are traced");
    }
}
