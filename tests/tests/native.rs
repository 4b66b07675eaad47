//! End-to-end tests on native programs: C and C++ fixtures compiled into a scratch directory,
//! run plainly and under `LD_PRELOAD=libleak.so`, then reported with `libleak report --json`.
//! Each asserts the program behaved the same (stdout, stderr, exit status) and the exact
//! function, line, bytes and blocks of every planted leak.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

use libleak_tests::*;

/// Builds `sources` into `name` and runs it plainly and traced with `args`; asserts the two
/// runs behaved the same, and returns the traced run.
fn build_and_trace(scratch: &Scratch, compiler: &str, sources: &[&str], flags: &[&str], args: &[&str]) -> Traced {
    let exe = scratch.join("fixture");
    compile(compiler, sources, &exe, flags);
    let plain = run(Command::new(&exe).args(args).current_dir(&scratch.path));
    let traced = run_traced(scratch, Command::new(&exe).args(args).current_dir(&scratch.path));
    assert_eq!(traced.output.stdout, plain.stdout, "stdout changed under libleak");
    assert_eq!(
        program_stderr(&traced.output),
        program_stderr(&plain),
        "stderr changed under libleak"
    );
    assert_eq!(
        traced.output.status.code(),
        plain.status.code(),
        "exit status changed under libleak"
    );
    assert_eq!(
        traced.output.status.signal(),
        plain.status.signal(),
        "signal changed under libleak"
    );
    traced
}

#[test]
fn every_allocator_entry_point_is_reported_exactly() {
    let scratch = Scratch::new("alloc-kinds");
    let traced = build_and_trace(&scratch, "gcc", &["alloc_kinds.c"], &[], &[]);
    assert_eq!(traced.output.status.code(), Some(7));
    let stdout = String::from_utf8_lossy(&traced.output.stdout);
    assert!(stdout.contains("errno_after_free=1234"), "{stdout}");
    assert!(stdout.contains("huge_malloc_errno_is_enomem=1"), "{stdout}");
    assert!(stdout.contains("posix_memalign_bad_alignment=22"), "{stdout}");

    let report = all_live_blocks_json(&traced.trace);
    assert_eq!(report["complete"], true);
    let src = "alloc_kinds.c";
    assert_leak(&report, "leak_malloc", src, line_of(src, "@malloc"), 10 * 100, 10);
    assert_leak(&report, "leak_calloc", src, line_of(src, "@calloc"), 5 * 48, 5);
    assert_leak(&report, "leak_realloc", src, line_of(src, "@realloc"), 3 * 256, 3);
    assert_leak(
        &report,
        "leak_posix_memalign",
        src,
        line_of(src, "@posix_memalign"),
        4 * 72,
        4,
    );
    assert_leak(
        &report,
        "leak_aligned_alloc",
        src,
        line_of(src, "@aligned_alloc"),
        2 * 384,
        2,
    );
    assert_eq!(leaks_in(&report, "leak_malloc")[0]["allocator"], "malloc");
    assert_eq!(leaks_in(&report, "leak_realloc")[0]["allocator"], "realloc");
    assert_eq!(
        leaks_in(&report, "leak_posix_memalign")[0]["allocator"],
        "posix_memalign"
    );
    // Nothing else is live: the churn and contract checks freed everything.
    assert_eq!(report["leaks"].as_array().unwrap().len(), 5, "{report:#}");
    let totals = &report["totals"];
    assert_eq!(totals["live_blocks"].as_u64(), Some(10 + 5 + 3 + 4 + 2));
    assert_eq!(totals["live_bytes"].as_u64(), Some(1000 + 240 + 768 + 288 + 768));
    assert!(totals["allocations"].as_u64().unwrap() > 4000, "{totals}");
    // The caller of each leaking function is main, and the stack goes on to _start.
    let frames = leaks_in(&report, "leak_malloc")[0]["frames"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(frames[1]["function"], "main");
    assert!(frames.iter().any(|f| f["function"] == "_start"), "{frames:?}");
}

#[test]
fn a_program_that_frees_everything_reports_nothing() {
    let scratch = Scratch::new("no-leaks");
    let traced = build_and_trace(&scratch, "gcc", &["no_leaks.c"], &[], &[]);
    let report = all_live_blocks_json(&traced.trace);
    assert_eq!(report["leaks"].as_array().unwrap().len(), 0, "{report:#}");
    assert_eq!(report["totals"]["live_blocks"].as_u64(), Some(0));
    assert_eq!(report["totals"]["live_bytes"].as_u64(), Some(0));
    assert_eq!(report["complete"], true);
    let allocations = report["totals"]["allocations"].as_u64().unwrap();
    assert!(allocations >= 50 * 512 + 5, "{allocations}");
    assert_eq!(report["totals"]["frees"].as_u64(), Some(allocations));
}

#[test]
fn cpp_new_array_reports_the_demangled_caller() {
    let scratch = Scratch::new("new-array");
    let traced = build_and_trace(&scratch, "g++", &["new_array.cpp"], &[], &[]);
    let report = all_live_blocks_json(&traced.trace);
    let src = "new_array.cpp";
    assert_leak(
        &report,
        "fixture::make_widgets",
        src,
        line_of(src, "@new[]"),
        3 * 4 * 32,
        3,
    );
    let name = leaks_in(&report, "fixture::make_widgets")[0]["frames"][0]["function"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(name, "fixture::make_widgets(int)");
}

#[test]
fn cpp_containers_are_owned_by_the_code_that_uses_them() {
    let scratch = Scratch::new("cpp-owner");
    let traced = build_and_trace(&scratch, "g++", &["cpp_owner.cpp"], &["-O2"], &[]);
    let report = report_json_with(&traced.trace, &[]);
    let src = "cpp_owner.cpp";
    let rows = rows_owned_by(&report, "fixture::open_session");
    assert_eq!(rows.len(), 1, "{report:#}");
    let row = rows[0];
    assert_eq!(row["owner"]["line"].as_u64(), Some(line_of(src, "@session")), "{row:#}");
    // 5 sessions (a vector, a string and a map: 104 bytes), each keeping 10 ints, 101
    // characters and 3 map nodes of 40 bytes.
    assert_eq!(row["blocks"].as_u64(), Some(5 * 6), "{row:#}");
    assert_eq!(row["bytes"].as_u64(), Some(5 * (104 + 40 + 101 + 3 * 40)), "{row:#}");
    // (owner's function, its line, bytes, blocks) of each part.
    type Part = (String, Option<u64>, Option<u64>, Option<u64>);
    let mut parts: Vec<Part> = row["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|part| {
            let owner = &part["owner"];
            (
                owner["function"].as_str().unwrap_or("").to_string(),
                owner["line"].as_u64(),
                part["bytes"].as_u64(),
                part["blocks"].as_u64(),
            )
        })
        .collect();
    parts.sort_by_key(|part| part.1);
    let function = "fixture::open_session(int)".to_string();
    assert_eq!(
        parts,
        [
            (function.clone(), Some(line_of(src, "@reserve")), Some(200), Some(5)),
            (function.clone(), Some(line_of(src, "@name")), Some(505), Some(5)),
            (function, Some(line_of(src, "@index")), Some(600), Some(15)),
        ],
        "{row:#}"
    );
}

/// The leak rows of `report` whose owner's function starts with `function`.
fn rows_owned_by<'a>(report: &'a serde_json::Value, function: &str) -> Vec<&'a serde_json::Value> {
    report["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["owner"]["function"].as_str().unwrap_or("").starts_with(function))
        .collect()
}

#[test]
fn rust_boxes_and_vectors_are_owned_by_the_code_that_made_them() {
    let scratch = Scratch::new("rust-owner");
    let exe = scratch.join("fixture");
    let built = run(Command::new("rustc")
        .args(["-g", "-C", "opt-level=2", "-o"])
        .arg(&exe)
        .arg(fixtures_dir().join("rust_owner.rs")));
    assert!(
        built.status.success(),
        "rustc: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let traced = run_traced(&scratch, Command::new(&exe).current_dir(&scratch.path));
    assert_eq!(String::from_utf8_lossy(&traced.output.stdout), "made 998\n");
    let report = report_json_with(&traced.trace, &[]);
    let src = "rust_owner.rs";
    let buffers = rows_owned_by(&report, "rust_owner::forget_buffer");
    assert_eq!(buffers.len(), 1, "{report:#}");
    assert_eq!(buffers[0]["owner"]["line"].as_u64(), Some(line_of(src, "@buffer")));
    assert_eq!(
        (buffers[0]["bytes"].as_u64(), buffers[0]["blocks"].as_u64()),
        (Some(3 * 512), Some(3))
    );
    let records = rows_owned_by(&report, "rust_owner::make_record");
    assert_eq!(records.len(), 1, "{report:#}");
    let row = records[0];
    assert_eq!(row["owner"]["line"].as_u64(), Some(line_of(src, "@record")), "{row:#}");
    assert_eq!(
        (row["bytes"].as_u64(), row["blocks"].as_u64()),
        (Some(4 * (32 + 200)), Some(8))
    );
    let part = &row["parts"][0];
    assert_eq!(part["owner"]["function"], "rust_owner::make_record", "{row:#}");
    assert_eq!(
        part["owner"]["line"].as_u64(),
        Some(line_of(src, "@payload")),
        "{row:#}"
    );
    assert_eq!((part["bytes"].as_u64(), part["blocks"].as_u64()), (Some(800), Some(4)));
}

#[test]
fn a_return_address_of_1_ends_the_stack_without_a_crash() {
    let scratch = Scratch::new("bogus-return");
    let traced = build_and_trace(&scratch, "gcc", &["bogus_return.c"], &[], &[]);
    assert_eq!(String::from_utf8_lossy(&traced.output.stdout), "allocated 1\n");
    let report = all_live_blocks_json(&traced.trace);
    let rows = leaks_in(&report, "inner");
    assert_eq!(rows.len(), 1, "{report:#}");
    let frame = &rows[0]["frames"][0];
    assert_eq!(frame["line"].as_u64(), Some(line_of("bogus_return.c", "@bogus_malloc")));
    assert_eq!(
        (rows[0]["bytes"].as_u64(), rows[0]["blocks"].as_u64()),
        (Some(32), Some(1))
    );
}

#[test]
fn leaks_from_several_threads_with_cross_thread_frees() {
    let scratch = Scratch::new("threads");
    let traced = build_and_trace(&scratch, "gcc", &["threads.c"], &["-pthread"], &[]);
    let report = all_live_blocks_json(&traced.trace);
    let src = "threads.c";
    // 8 blocks from each of 4 threads, sized 32, 64, 96 and 128 bytes.
    assert_leak(
        &report,
        "thread_leak",
        src,
        line_of(src, "@thread_leak"),
        8 * (32 + 64 + 96 + 128),
        32,
    );
    // Main's 400 blocks were all freed by the workers: no row is allocated directly by main.
    // (glibc keeps each finished thread's TLS vector with its cached stack; those calloc
    // blocks from pthread_create are live at exit, and classified by a later stage.)
    assert!(leaks_in(&report, "main").is_empty(), "{report:#}");
    assert!(leaks_in(&report, "worker").is_empty(), "{report:#}");
}

/// Builds plugin.c as libplugin.so and traces dlopen_main.c loading, calling and unloading it.
fn trace_plugin_program(scratch: &Scratch) -> (std::path::PathBuf, Traced) {
    let plugin = scratch.join("libplugin.so");
    compile("gcc", &["plugin.c"], &plugin, &["-shared", "-fPIC"]);
    let plugin_arg = plugin.to_string_lossy().to_string();
    let traced = build_and_trace(scratch, "gcc", &["dlopen_main.c"], &["-ldl"], &[&plugin_arg]);
    (plugin, traced)
}

#[test]
fn a_leak_in_a_library_dlclosed_before_exit_is_symbolized() {
    let scratch = Scratch::new("dlopen");
    let (plugin, traced) = trace_plugin_program(&scratch);
    let plugin_arg = plugin.to_string_lossy().to_string();
    assert_eq!(traced.output.status.code(), Some(0));
    let report = all_live_blocks_json(&traced.trace);
    let src = "plugin.c";
    assert_leak(&report, "plugin_leak", src, line_of(src, "@plugin_leak"), 5 * 48, 5);
    let frame = &leaks_in(&report, "plugin_leak")[0]["frames"][0];
    assert_eq!(frame["module"].as_str(), Some(plugin_arg.as_str()));
    // The default report holds the plugin's leak and nothing of the loader's own tables
    // (glibc keeps _dl_find_object's segments through a pointer into their middle).
    let default = report_json(&traced.trace);
    let rows = default["leaks"].as_array().unwrap();
    assert!(
        rows.iter().all(|row| row["owner"]["function"] == "plugin_leak"),
        "{default:#}"
    );
}

/// A library constructor (run with the dynamic loader's lock held) that allocates until
/// libleak's channel is full, after the writer thread went idle: the writer keeps taking
/// events (it never waits in a way that needs that lock), the program ends as it does plainly,
/// and the library's leak is exact. Under a time limit: a deadlock fails the test, not the run.
#[test]
fn a_library_constructor_that_floods_the_channel_under_the_loader_lock_does_not_hang() {
    let scratch = Scratch::new("flood-under-loader-lock");
    let plugin = scratch.join("libflood.so");
    compile("gcc", &["flood_plugin.c"], &plugin, &["-shared", "-fPIC"]);
    let exe = scratch.join("fixture");
    compile("gcc", &["dlopen_main.c"], &exe, &["-ldl"]);
    let traced = run_traced(
        &scratch,
        Command::new("timeout")
            .arg("120")
            .arg(&exe)
            .arg(&plugin)
            .current_dir(&scratch.path),
    );
    assert_eq!(
        traced.output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&traced.output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&traced.output.stdout), "unloaded\n");
    // The fixture's trace, not `timeout`'s.
    let trace = std::fs::read_dir(&scratch.path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|path| path.file_name().unwrap().to_string_lossy().starts_with("trace.") && *path != traced.trace)
        .expect("the fixture's trace");
    let report = all_live_blocks_json(&trace);
    assert_eq!(report["complete"], true, "{report:#}");
    assert!(
        report["totals"]["allocations"].as_u64().unwrap() > 500_000,
        "{:#}",
        report["totals"]
    );
    let src = "flood_plugin.c";
    assert_leak(&report, "plugin_leak", src, line_of(src, "@flood_leak"), 5 * 48, 5);
}

/// Runs exits.c in `mode`, checks how it ended, and returns its report, which must be
/// incomplete for `reason` and still hold the leak made just before the end.
fn abrupt_end(mode: &str, reason: &str, check_status: impl Fn(&std::process::ExitStatus)) -> serde_json::Value {
    let scratch = Scratch::new(mode);
    let args: Vec<&str> = if mode == "_exit" { vec![] } else { vec![mode] };
    let traced = build_and_trace(&scratch, "gcc", &["exits.c"], &[], &args);
    check_status(&traced.output.status);
    let report = all_live_blocks_json(&traced.trace);
    assert_eq!(report["complete"], false);
    assert!(
        report["incomplete_reason"].as_str().unwrap().contains(reason),
        "{report:#}"
    );
    let src = "exits.c";
    assert_leak(
        &report,
        "leak_before_end",
        src,
        line_of(src, "@leak_before_end"),
        3 * 64,
        3,
    );
    report
}

#[test]
fn underscore_exit_keeps_status_and_marks_the_trace_incomplete() {
    let report = abrupt_end("_exit", "_exit()", |status| assert_eq!(status.code(), Some(9)));
    assert_eq!(report["exit"]["kind"], "_exit");
    assert_eq!(report["exit"]["status"].as_i64(), Some(9));
}

#[test]
fn abort_keeps_the_signal_and_the_trace_stays_readable() {
    let report = abrupt_end("abort", "abort()", |status| assert_eq!(status.signal(), Some(6)));
    assert_eq!(report["exit"]["kind"], "abort");
}

#[test]
fn sigkill_leaves_a_trace_readable_up_to_the_last_flush() {
    let report = abrupt_end("sigkill", "killed", |status| assert_eq!(status.signal(), Some(9)));
    assert!(report["exit"].is_null());
}

#[test]
fn sixteen_threads_allocating_and_freeing_each_others_blocks_lose_nothing() {
    let scratch = Scratch::new("stress");
    let traced = build_and_trace(&scratch, "gcc", &["stress.c"], &["-pthread"], &["200000"]);
    assert_stress_report(&traced, "membarrier");
}

#[test]
fn with_spin_locks_instead_of_membarrier_the_threads_lose_nothing_either() {
    let scratch = Scratch::new("stress-locks");
    let exe = scratch.join("fixture");
    compile("gcc", &["stress.c"], &exe, &["-pthread"]);
    let traced = run_traced(
        &scratch,
        Command::new(&exe)
            .arg("200000")
            .env("LIBLEAK_SLOT_LOCKS", "1")
            .current_dir(&scratch.path),
    );
    assert_stress_report(&traced, "locks");
}

/// What the stress fixture must show: every event of 2 × 16 threads, half of the frees made
/// by another thread than the allocation.
fn assert_stress_report(traced: &Traced, slot_ordering: &str) {
    assert_eq!(String::from_utf8_lossy(&traced.output.stdout), "done\n");
    let report = all_live_blocks_json(&traced.trace);
    assert_eq!(
        report["recorder"]["slot_ordering"], slot_ordering,
        "{:#}",
        report["recorder"]
    );
    let totals = &report["totals"];
    let count = |name: &str| totals[name].as_u64().unwrap();
    // Every free matched its allocation, however late either arrived: the only unmatched
    // ones are glibc freeing each exited thread's dynamic TLS, which libleak's own unwinder
    // allocated inside a hook (unrecorded), at most a couple per thread.
    assert!(count("unmatched_frees") <= 2 * 32, "{totals}");
    assert!(count("allocations") > 2 * 200_000 * 8, "{totals}");
    // Two generations of 16 threads, each leaking index + 1 blocks of 1000 + index bytes:
    // every one is live at exit, at its line (classes aside: leaked blocks hold stale heap
    // words that can make some look indirectly or possibly lost, or reachable).
    let (blocks, bytes) = (0..16u64).fold((0, 0), |(blocks, bytes), i| {
        (blocks + i + 1, bytes + (i + 1) * (1000 + i))
    });
    let line = line_of("stress.c", "@stress_leak");
    let rows = leaks_in(&report, "stress_leak");
    assert!(
        rows.iter().all(|row| row["frames"][0]["line"].as_u64() == Some(line)),
        "{report:#}"
    );
    let sum = |field: &str| rows.iter().map(|row| row[field].as_u64().unwrap()).sum::<u64>();
    assert_eq!((sum("bytes"), sum("blocks")), (2 * bytes, 2 * blocks), "{report:#}");
    assert!(report["recorder"]["producer_waits"].is_u64());
}

#[test]
fn a_crash_keeps_its_signal_and_the_trace_stays_readable() {
    let report = abrupt_end("segv", "killed", |status| assert_eq!(status.signal(), Some(11)));
    assert!(report["exit"].is_null());
}

#[test]
fn an_unwritable_output_directory_leaves_the_program_alone_with_one_warning() {
    let scratch = Scratch::new("unwritable");
    let exe = scratch.join("fixture");
    compile("gcc", &["exits.c"], &exe, &[]);
    let plain = run(&mut Command::new(&exe));
    let traced = run(Command::new(&exe)
        .env("LD_PRELOAD", libleak_so())
        .env("LIBLEAK_OUTPUT", "/proc/no-such-directory/trace.%p"));
    assert_eq!(traced.stdout, plain.stdout);
    assert_eq!(traced.status.code(), Some(9));
    let stderr = String::from_utf8_lossy(&traced.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.starts_with("libleak: ")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(warnings[0].contains("cannot create trace file"), "{stderr}");
    assert_eq!(program_stderr(&traced), program_stderr(&plain));
}

#[test]
fn a_rebuilt_library_is_flagged_not_mis_symbolized() {
    let scratch = Scratch::new("rebuilt");
    let (plugin, traced) = trace_plugin_program(&scratch);
    let plugin_arg = plugin.to_string_lossy().to_string();
    // Same path, other contents: a different build-id.
    compile(
        "gcc",
        &["plugin.c"],
        &plugin,
        &["-shared", "-fPIC", "-DREBUILT=1", "-O2"],
    );
    let report = all_live_blocks_json(&traced.trace);
    let rows: Vec<&serde_json::Value> = report["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["frames"][0]["module"].as_str() == Some(plugin_arg.as_str()))
        .collect();
    assert_eq!(rows.len(), 1, "{report:#}");
    let frame = &rows[0]["frames"][0];
    assert_eq!(frame["build_id_mismatch"], true, "{frame}");
    assert!(
        frame["function"].as_str().unwrap().starts_with("libplugin.so+0x"),
        "{frame}"
    );
    assert!(frame["line"].is_null());
    assert_eq!(
        (rows[0]["bytes"].as_u64(), rows[0]["blocks"].as_u64()),
        (Some(240), Some(5))
    );
}

#[test]
fn libleak_run_keeps_the_exit_status_and_prints_the_report() {
    let scratch = Scratch::new("run");
    let exe = scratch.join("fixture");
    compile("gcc", &["alloc_kinds.c"], &exe, &[]);
    let plain = run(Command::new(&exe).current_dir(&scratch.path));
    let out = run(Command::new(libleak_bin())
        .args(["run", "--output"])
        .arg(scratch.join("run.%p.trace"))
        .arg("--")
        .arg(&exe)
        .current_dir(&scratch.path)
        .env("LIBLEAK_SO", libleak_so()));
    assert_eq!(out.status.code(), Some(7));
    // The program's stdout is its own, byte for byte; the report goes to stderr.
    assert_eq!(out.stdout, plain.stdout);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("realloc_zero_returns_null=1\n"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1,000 bytes in 10 blocks"), "{stderr}");
    assert!(stderr.contains("leak_malloc at "), "{stderr}");
    assert!(!stdout.contains("leak_malloc"), "{stdout}");
}

/// What signals.c wrote to its counts file: every malloc, every free, the handler's calls.
fn signal_counts(path: &std::path::Path) -> [u64; 3] {
    let written = std::fs::read_to_string(path).unwrap();
    written
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect::<Vec<_>>()
        .try_into()
        .unwrap_or_else(|_| panic!("not three counts: {written}"))
}

/// The same handler under 80 frames of `deep`: every stack is deep enough to be sent without
/// the outer words it shares with the thread's previous one, and the handler's allocations
/// that are recorded later, without a stack, must not change which previous stack that is.
/// The leaks made after the signals, in the same batches, keep every outer frame.
#[test]
fn a_signal_handlers_stackless_allocations_leave_deep_stacks_whole() {
    const DEPTH: usize = 80;
    let scratch = Scratch::new("signals-deep");
    let counts = scratch.join("counts");
    let depth = format!("-DDEPTH={DEPTH}");
    let traced = build_and_trace(&scratch, "gcc", &["signals.c"], &[&depth], &[counts.to_str().unwrap()]);
    let [mallocs, frees, _] = signal_counts(&counts);
    let report = all_live_blocks_json(&traced.trace);
    let totals = &report["totals"];
    assert_eq!(totals["allocations"].as_u64(), Some(mallocs), "{totals}");
    assert_eq!(totals["frees"].as_u64(), Some(frees), "{totals}");
    let stackless = report["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["frames"].as_array().unwrap().is_empty())
        .count();
    assert!(
        stackless > 0,
        "no handler allocation was recorded without a stack: {report:#}"
    );
    let rows = leaks_in(&report, "main_leak");
    assert_eq!(rows.len(), 1, "one stack for the three leaks: {report:#}");
    assert_eq!(rows[0]["blocks"], 3, "{:#}", rows[0]);
    let functions: Vec<&str> = rows[0]["frames"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|frame| frame["function"].as_str())
        .collect();
    assert_eq!(
        functions.iter().filter(|&&f| f == "deep").count(),
        DEPTH + 1,
        "{functions:?}"
    );
    assert_eq!(&functions[..2], ["main_leak", "work"], "{functions:?}");
    assert!(functions.contains(&"main"), "{functions:?}");
}

#[test]
fn a_signal_handler_allocating_while_a_hook_records_loses_nothing() {
    let scratch = Scratch::new("signals");
    let counts = scratch.join("counts");
    let counts_arg = counts.to_str().unwrap();
    let traced = build_and_trace(&scratch, "gcc", &["signals.c"], &[], &[counts_arg]);
    let [mallocs, frees, handler_calls] = signal_counts(&counts);
    assert!(handler_calls >= 3000, "{handler_calls} handler calls");
    // The program makes no allocator call but its own (no stdio): the trace holds every one,
    // including those of the handler that interrupted libleak inside a hook.
    let report = all_live_blocks_json(&traced.trace);
    let totals = &report["totals"];
    let count = |name: &str| totals[name].as_u64().unwrap();
    let handler_leaks = handler_calls / 64;
    assert_eq!(count("allocations"), mallocs, "{totals}");
    assert_eq!(count("frees"), frees, "{totals}");
    assert_eq!(count("unmatched_frees"), 0, "{totals}");
    assert_eq!(count("live_blocks"), 3 + handler_leaks, "{totals}");
    assert_eq!(count("live_bytes"), 3 * 1000 + 777 * handler_leaks, "{totals}");
    let main_line = line_of("signals.c", "@main_leak");
    assert_leak(
        &report_json(&traced.trace),
        "main_leak",
        "signals.c",
        main_line,
        3000,
        3,
    );
    // The handler's blocks: at their line when the handler interrupted the program or the
    // real allocator, without a stack when it interrupted the recording of another event.
    let handler_line = line_of("signals.c", "@handler_leak");
    let rows = report["leaks"].as_array().unwrap();
    let at_line = leaks_in(&report, "handler_leak");
    assert!(
        at_line
            .iter()
            .all(|row| row["frames"][0]["line"].as_u64() == Some(handler_line)),
        "{report:#}"
    );
    let stackless: Vec<_> = rows
        .iter()
        .filter(|row| row["frames"].as_array().unwrap().is_empty())
        .collect();
    let blocks = |rows: &[&serde_json::Value]| rows.iter().map(|row| row["blocks"].as_u64().unwrap()).sum::<u64>();
    assert_eq!(blocks(&at_line) + blocks(&stackless), handler_leaks, "{report:#}");
    assert_eq!(
        stackless.iter().map(|row| row["bytes"].as_u64().unwrap()).sum::<u64>(),
        777 * blocks(&stackless)
    );
    // No libleak frame shows in a handler's stack, even where it interrupted libleak.
    assert!(
        !report.to_string().contains("libleak.so"),
        "libleak's frames in the report: {report:#}"
    );
}

/// The counts of `LIBLEAK_CHECK_UNWIND`'s line on stderr: (stacks compared, differing,
/// captures unwound by libgcc).
fn unwinder_check_counts(stderr: &[u8]) -> (u64, u64, u64) {
    let stderr = String::from_utf8_lossy(stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("libleak: unwinder check: ") && l.contains("compared"))
        .unwrap_or_else(|| panic!("no unwinder check line in: {stderr}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    (numbers[0], numbers[1], numbers[2])
}

#[test]
fn native_stacks_match_libgccs_for_every_allocation() {
    for (label, flags) in [
        ("no-frame-pointers", &["-O2", "-pthread", "-fomit-frame-pointer"][..]),
        ("frame-pointers", &["-O2", "-pthread", "-fno-omit-frame-pointer"][..]),
    ] {
        let scratch = Scratch::new(&format!("stack-shapes-{label}"));
        let exe = scratch.join("fixture");
        compile("gcc", &["stack_shapes.c"], &exe, flags);
        let plain = run(&mut Command::new(&exe));
        let traced = run_traced(&scratch, Command::new(&exe).env("LIBLEAK_CHECK_UNWIND", "1"));
        // Same output, including the count of open descriptors: libleak keeps none open.
        assert_eq!(
            String::from_utf8_lossy(&traced.output.stdout),
            String::from_utf8_lossy(&plain.stdout),
            "{label}"
        );
        assert!(String::from_utf8_lossy(&plain.stdout).contains("signals handled: yes"));
        let (compared, differing, by_libgcc) = unwinder_check_counts(&traced.output.stderr);
        // 30,000 rounds of 3 allocations, 4 threads of 20,000 rounds of 3, and the rest.
        assert!(compared >= 330_000, "{label}: {compared} stacks compared");
        assert_eq!(
            differing,
            0,
            "{label}: {}",
            String::from_utf8_lossy(&traced.output.stderr)
        );
        // Handlers' stacks cross a signal frame, which libgcc steps; nothing else needs it.
        assert!(
            (1..=1000).contains(&by_libgcc),
            "{label}: {by_libgcc} captures by libgcc"
        );
    }
}

#[test]
fn python_stacks_match_libgccs() {
    let workload = fixtures_dir().join("../../scripts/workloads/alloc_heavy.py");
    for python in pythons() {
        let scratch = Scratch::new(&format!("python-unwind-{}{}", python.version.0, python.version.1));
        let traced = run_traced(
            &scratch,
            Command::new(&python.real_path)
                .arg(&workload)
                .arg("3")
                .env("LIBLEAK_CHECK_UNWIND", "13"),
        );
        assert!(traced.output.status.success(), "{}", python.label());
        let (compared, differing, by_libgcc) = unwinder_check_counts(&traced.output.stderr);
        assert!(compared > 10_000, "{}: {compared} stacks compared", python.label());
        assert_eq!(
            (differing, by_libgcc),
            (0, 0),
            "{}: {}",
            python.label(),
            String::from_utf8_lossy(&traced.output.stderr)
        );
    }
}

/// The writer defines each stack by what it shares with the previous one: stacks that
/// differ only in their outer frames, batches that begin with any kind of event, and threads
/// taking over each other's batch slot must all come out whole. Every leak's size names its
/// exact stack (outer_frames.c).
#[test]
fn stacks_differing_only_in_outer_frames_are_recorded_exactly() {
    let scratch = Scratch::new("outer-frames");
    let rounds = 20_000u64;
    let traced = build_and_trace(
        &scratch,
        "gcc",
        &["outer_frames.c"],
        &["-pthread"],
        &[&rounds.to_string()],
    );
    let report = all_live_blocks_json(&traced.trace);
    let line = line_of("outer_frames.c", "@outer_leak");
    let (leak_every, thread_rounds, threads) = (2u64, 3000u64, 6u64);
    let size = |base: u64, round: u64| base + 2 * ((round * 7) % 13) + (round / 3) % 2;
    let expected = |base: u64, rounds: u64, copies: u64| {
        let sizes: Vec<u64> = (0..rounds)
            .step_by(leak_every as usize)
            .map(|r| size(base, r))
            .collect();
        (copies * sizes.len() as u64, copies * sizes.iter().sum::<u64>())
    };
    let mut found = [(0u64, 0u64); 2];
    for row in leaks_in(&report, "leak_here") {
        let (blocks, bytes) = (row["blocks"].as_u64().unwrap(), row["bytes"].as_u64().unwrap());
        assert_eq!(bytes % blocks, 0, "blocks of different sizes share a stack: {row:#}");
        let each = bytes / blocks;
        let (base, caller) = if each >= 2000 { (2000, "worker") } else { (1000, "main") };
        let (depth, right) = ((each - base) / 2, (each - base) % 2 == 1);
        let mut names = vec!["leak_here"];
        names.extend(std::iter::repeat_n("descend", depth as usize + 1));
        names.extend([if right { "via_right" } else { "via_left" }, "walk", caller]);
        let shown: Vec<&str> = row["frames"]
            .as_array()
            .unwrap()
            .iter()
            .take(names.len())
            .map(|f| f["function"].as_str().unwrap_or("??"))
            .collect();
        assert_eq!(shown, names, "the stack of the {each}-byte leaks: {row:#}");
        assert_eq!(row["frames"][0]["line"].as_u64(), Some(line), "{row:#}");
        let totals = &mut found[usize::from(base == 2000)];
        *totals = (totals.0 + blocks, totals.1 + bytes);
    }
    assert_eq!(found[0], expected(1000, rounds, 1), "main thread's leaks");
    assert_eq!(found[1], expected(2000, thread_rounds, threads), "threads' leaks");
}
