//! `libleak report` on files that are not whole, valid traces: a clear one-line error and a
//! non-zero exit (never a panic) when the header cannot be read; for a trace cut short, the
//! report up to where it ends, marked incomplete; for a damaged trace, the report of every
//! chunk but the damaged ones, marked damaged (exit 0, as for an incomplete one).

use std::process::{Command, Output};

use libleak_tests::*;

fn report(path: &std::path::Path) -> Output {
    run(Command::new(libleak_bin())
        .args(["report", "--json", "--limit", "0"])
        .arg(path))
}

fn assert_clean_failure(out: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line expected: {stderr}");
    assert!(stderr.starts_with("libleak: "), "{stderr}");
    assert!(stderr.contains(expected), "{stderr} should mention {expected}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// A real trace of the alloc_kinds fixture.
fn real_trace(scratch: &Scratch) -> Vec<u8> {
    let exe = scratch.join("fixture");
    compile("gcc", &["alloc_kinds.c"], &exe, &[]);
    let traced = run_traced(scratch, &mut Command::new(&exe));
    std::fs::read(&traced.trace).unwrap()
}

#[test]
fn empty_garbage_missing_and_future_version_files_fail_cleanly() {
    let scratch = Scratch::new("bad");
    let empty = scratch.join("empty.trace");
    std::fs::write(&empty, b"").unwrap();
    assert_clean_failure(&report(&empty), "empty");

    let garbage = scratch.join("garbage.trace");
    std::fs::write(&garbage, b"#!/bin/sh\necho this is not a trace\n").unwrap();
    assert_clean_failure(&report(&garbage), "not a libleak trace");

    let missing = report(&scratch.join("missing.trace"));
    assert_clean_failure(&missing, "missing.trace: cannot open: No such file or directory");
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(stderr.matches("No such file").count(), 1, "the cause once: {stderr}");

    let future_version = libleak_format::FORMAT_VERSION + 1;
    let mut future = real_trace(&scratch);
    future[8..12].copy_from_slice(&future_version.to_le_bytes());
    let future_path = scratch.join("future.trace");
    std::fs::write(&future_path, &future).unwrap();
    assert_clean_failure(
        &report(&future_path),
        &format!(
            "unsupported trace format version {future_version} (this libleak reads version {})",
            libleak_format::FORMAT_VERSION
        ),
    );

    let mut old = future.clone();
    old[8..12].copy_from_slice(&1u32.to_le_bytes());
    let old_path = scratch.join("old.trace");
    std::fs::write(&old_path, &old).unwrap();
    assert_clean_failure(
        &report(&old_path),
        &format!(
            "unsupported trace format version 1 (this libleak reads version {})",
            libleak_format::FORMAT_VERSION
        ),
    );

    let short_header = scratch.join("short.trace");
    std::fs::write(&short_header, &future[..10]).unwrap();
    assert_clean_failure(&report(&short_header), "header");
}

/// The offset and length of the chunk holding the allocation of `size` bytes.
fn chunk_of_alloc(trace: &[u8], size: u64) -> (usize, usize) {
    let mut reader = libleak_format::TraceReader::new(trace).unwrap();
    let mut chunk_start = libleak_format::HEADER_LEN;
    let mut chunk_end = chunk_start;
    while let Some(record) = reader.next_record().unwrap() {
        let end = reader.bytes_read() as usize;
        if end != chunk_end {
            (chunk_start, chunk_end) = (chunk_end, end);
        }
        if matches!(record, libleak_format::Record::Alloc(alloc) if alloc.size == size) {
            return (chunk_start, chunk_end - chunk_start);
        }
    }
    panic!("no allocation of {size} bytes");
}

#[test]
fn a_damaged_chunk_is_skipped_and_the_leaks_after_it_are_reported() {
    let scratch = Scratch::new("damaged");
    let exe = scratch.join("phases");
    compile("gcc", &["phases.c"], &exe, &[]);
    let traced = run_traced(&scratch, &mut Command::new(&exe));
    let mut bytes = std::fs::read(&traced.trace).unwrap();
    // The second phase's chunk, one byte flipped in the middle of its compressed bytes.
    let (at, len) = chunk_of_alloc(&bytes, 2222);
    assert!(at > chunk_of_alloc(&bytes, 1111).0 && at < chunk_of_alloc(&bytes, 3333).0);
    let flipped = at + libleak_format::CHUNK_FRAME_LEN + (len - libleak_format::CHUNK_FRAME_LEN) / 2;
    bytes[flipped] ^= 0x10;
    let path = scratch.join("damaged.trace");
    std::fs::write(&path, &bytes).unwrap();

    let out = run(Command::new(libleak_bin()).arg("report").arg(&path));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let thousands = |n: usize| {
        let digits = n.to_string();
        let mut out = String::new();
        for (i, digit) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(digit);
        }
        out
    };
    assert!(
        text.contains(&format!(
            "trace DAMAGED: {} bytes at byte {} skipped; allocations and frees recorded there are missing\n",
            thousands(len),
            thousands(at)
        )),
        "{text}"
    );
    assert!(text.contains("trace complete: the process exited normally"), "{text}");

    let json = report_json(&path);
    assert_eq!(json["damage"], serde_json::json!([{"offset": at, "bytes": len}]));
    let line = |marker| line_of("phases.c", marker);
    assert_leak(&json, "leak_first", "phases.c", line("@leak_first"), 1111, 1);
    assert_leak(&json, "leak_third", "phases.c", line("@leak_third"), 3333, 1);
    assert!(
        leaks_in(&json, "leak_second").is_empty(),
        "its allocation was in the damaged chunk"
    );
    assert_eq!(json["summary"]["definitely_lost"]["bytes"], 1111 + 3333);
}

#[test]
fn a_truncated_trace_is_reported_up_to_its_end_and_marked_incomplete() {
    let scratch = Scratch::new("truncated");
    let bytes = real_trace(&scratch);
    let whole = scratch.join("whole.trace");
    std::fs::write(&whole, &bytes).unwrap();
    let complete = all_live_blocks_json(&whole);
    assert_eq!(complete["complete"], true);
    // Every cut point: the reader must stop cleanly, never fail or panic.
    for cut in (16..bytes.len()).step_by(7) {
        let path = scratch.join("cut.trace");
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let out = report(&path);
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(json["complete"], false, "cut at {cut}");
            assert!(
                json["incomplete_reason"].as_str().unwrap().contains("killed"),
                "cut at {cut}"
            );
        } else {
            // A cut before the process record leaves nothing to report.
            assert!(stderr.contains("no process record"), "cut at {cut}: {stderr}");
        }
    }
}
