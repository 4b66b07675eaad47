//! A fuzz run of the trace reader and the report built on it, part of the test suite: real
//! traces (a C program, and a Python one when an interpreter is installed) mutated tens of
//! thousands of times, deterministically; and every single-byte change of a committed trace,
//! each of which must lose at most the chunk it hit. Half the mutants keep a valid chunk framing around
//! mutated payloads, so that the record decoder and the replay see garbage rather than the
//! chunk checks rejecting it first. Every mutant must give a trace or an error: no panic, no
//! hang, no allocation beyond bounds (the process's peak memory is checked at the end; an
//! allocation the system refuses would abort the test binary).
//!
//! `LIBLEAK_FUZZ_SECONDS` (default 20) bounds the run; `LIBLEAK_FUZZ_SEED` picks another
//! sequence of mutants.

use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::Command;
use std::time::{Duration, Instant};

use libleak_format::{ChunkWriter, Damage, Record, TraceReader, CHUNK_FRAME_LEN, HEADER_LEN};
use libleak_reporter::render::{json, text};
use libleak_reporter::replay::Trace;
use libleak_reporter::symbolize::Symbolizer;
use libleak_reporter::Options;
use libleak_tests::*;

/// xorshift64*: a fixed, seedable sequence.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// The decompressed payloads of a well-formed trace's chunks.
fn payloads(trace: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = HEADER_LEN;
    while at + CHUNK_FRAME_LEN <= trace.len() {
        let word = |i: usize| u32::from_le_bytes(trace[at + i..at + i + 4].try_into().unwrap()) as usize;
        // The frame: sync marker, compressed length, payload length, CRC-32.
        let compressed = &trace[at + CHUNK_FRAME_LEN..at + CHUNK_FRAME_LEN + word(4)];
        let mut payload = Vec::new();
        flate2::read::DeflateDecoder::new(compressed)
            .read_to_end(&mut payload)
            .unwrap();
        assert_eq!(payload.len(), word(8));
        out.push(payload);
        at += CHUNK_FRAME_LEN + word(4);
    }
    out
}

/// A trace file holding `payloads` as chunks.
fn framed(payloads: &[Vec<u8>]) -> Vec<u8> {
    let mut chunks = ChunkWriter::new(Vec::new()).unwrap();
    for payload in payloads {
        chunks.write_raw_chunk(&[payload]).unwrap();
    }
    std::mem::take(chunks.get_mut())
}

const INTERESTING: [u8; 8] = [0x00, 0x01, 0x7f, 0x80, 0xff, 0x05, 0x06, 0x09];

/// One to four byte-level edits.
fn mutate_bytes(bytes: &mut Vec<u8>, random: &mut Random) {
    for _ in 0..=random.below(4) {
        if bytes.is_empty() {
            bytes.push(random.next() as u8);
            continue;
        }
        let at = random.below(bytes.len());
        match random.below(7) {
            0 => bytes[at] ^= 1 << random.below(8),
            1 => bytes[at] = random.next() as u8,
            2 => bytes[at] = INTERESTING[random.below(INTERESTING.len())],
            3 => {
                let end = (at + 1 + random.below(16)).min(bytes.len());
                bytes.drain(at..end);
            }
            4 => {
                let end = (at + 1 + random.below(32)).min(bytes.len());
                let copy = bytes[at..end].to_vec();
                let to = random.below(bytes.len());
                bytes.splice(to..to, copy);
            }
            5 => {
                let noise: Vec<u8> = (0..=random.below(8)).map(|_| random.next() as u8).collect();
                bytes.splice(at..at, noise);
            }
            _ => {
                // A LEB128 run claiming an enormous value.
                let run = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
                bytes.splice(at..at, run);
            }
        }
    }
}

fn mutant(seed_trace: &[u8], seed_payloads: &[Vec<u8>], random: &mut Random) -> Vec<u8> {
    match random.below(4) {
        0 | 1 if !seed_payloads.is_empty() => {
            let mut payloads = seed_payloads.to_vec();
            let which = random.below(payloads.len());
            mutate_bytes(&mut payloads[which], random);
            if random.below(8) == 0 {
                let keep = 1 + random.below(payloads.len());
                payloads.truncate(keep);
            }
            framed(&payloads)
        }
        2 => {
            let mut bytes = seed_trace.to_vec();
            mutate_bytes(&mut bytes, random);
            bytes
        }
        _ => {
            let cut = random.below(seed_trace.len() + 1);
            let mut bytes = seed_trace[..cut].to_vec();
            if random.below(2) == 0 {
                mutate_bytes(&mut bytes, random);
            }
            bytes
        }
    }
}

/// Reads `bytes` as a trace and, when it is one, builds and renders its report.
fn read_and_report(bytes: &[u8], symbolizer: &mut Symbolizer) -> bool {
    match Trace::read(bytes) {
        Ok(trace) => {
            let built = libleak_reporter::build(&trace, "fuzz", symbolizer, &Options::default());
            let _ = text::to_text(&built);
            let _ = json::to_json(&built);
            true
        }
        Err(error) => {
            let message = error.to_string();
            assert!(!message.is_empty() && !message.contains('\n'), "{message:?}");
            false
        }
    }
}

fn peak_memory_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

fn seed_traces(scratch: &Scratch) -> Vec<Vec<u8>> {
    let exe = scratch.join("fixture");
    compile("gcc", &["alloc_kinds.c"], &exe, &[]);
    let mut seeds = vec![std::fs::read(run_traced(scratch, &mut Command::new(&exe)).trace).unwrap()];
    match pythons().into_iter().next() {
        Some(python) => {
            let program = "import json\nclass Node:\n    def __init__(self, n):\n        self.n = [n] * 8\n\
                           kept = [Node(i) for i in range(200)]\nprint(len(json.dumps([k.n for k in kept])))\n";
            let traced = run_traced(scratch, Command::new(&python.path).args(["-c", program]));
            seeds.push(std::fs::read(traced.trace).unwrap());
        }
        None => println!("fuzz: no Python interpreter found; fuzzing the C trace only"),
    }
    seeds
}

#[test]
fn mutated_traces_give_a_trace_or_an_error_never_a_panic_a_hang_or_a_huge_allocation() {
    let scratch = Scratch::new("fuzz");
    let seeds = seed_traces(&scratch);
    let budget = Duration::from_secs(
        std::env::var("LIBLEAK_FUZZ_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(20),
    );
    let seed = std::env::var("LIBLEAK_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x1ea4_5eed_u64);
    let mut random = Random(seed | 1);
    let seed_payloads: Vec<Vec<Vec<u8>>> = seeds.iter().map(|t| payloads(t)).collect();
    let mut symbolizer = Symbolizer::default();
    for seed_trace in &seeds {
        assert!(read_and_report(seed_trace, &mut symbolizer), "a seed trace must read");
    }
    let started = Instant::now();
    let (mut runs, mut accepted) = (0u64, 0u64);
    while started.elapsed() < budget {
        // The Python trace is ~50 times larger and slower to read: one mutant in eight.
        let which = if seeds.len() > 1 && random.below(8) == 0 { 1 } else { 0 };
        let bytes = mutant(&seeds[which], &seed_payloads[which], &mut random);
        let one = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| read_and_report(&bytes, &mut symbolizer)));
        let took = one.elapsed();
        if outcome.is_err() || took > Duration::from_secs(5) {
            let kept = scratch.join("crash.trace");
            std::fs::write(&kept, &bytes).unwrap();
            panic!(
                "mutant {runs} (seed {seed:#x}) {}; kept at {}",
                if outcome.is_err() {
                    "panicked".to_string()
                } else {
                    format!("took {took:?}")
                },
                kept.display()
            );
        }
        runs += 1;
        accepted += u64::from(outcome.unwrap());
    }
    let peak = peak_memory_bytes();
    println!(
        "fuzz: {runs} mutants in {:?}, {accepted} read as traces; peak memory {} MiB",
        started.elapsed(),
        peak >> 20
    );
    assert!(runs >= 500, "only {runs} mutants in the time budget");
    assert!(accepted > 0 && accepted < runs, "{accepted} of {runs} accepted");
    assert!(peak < 1 << 30, "peak memory {peak} bytes");
}

/// The file offset and length of each chunk of a well-formed trace.
fn chunks(trace: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = HEADER_LEN;
    while at + CHUNK_FRAME_LEN <= trace.len() {
        let len = CHUNK_FRAME_LEN + u32::from_le_bytes(trace[at + 4..at + 8].try_into().unwrap()) as usize;
        out.push((at, len));
        at += len;
    }
    out
}

/// Where each ALLOC of the trace is, by its size: the offset of the chunk holding it.
fn chunk_of_alloc(trace: &[u8], size: u64) -> usize {
    let chunks = chunks(trace);
    let mut reader = TraceReader::new(trace).unwrap();
    while let Some(record) = reader.next_record().unwrap() {
        if let Record::Alloc(alloc) = record {
            if alloc.size == size {
                let end = reader.bytes_read() as usize;
                return chunks.iter().find(|&&(at, len)| at + len == end).unwrap().0;
            }
        }
    }
    panic!("no allocation of {size} bytes");
}

/// `tests/traces/phases.trace` (`tests/fixtures/phases.c`): one leak per phase, each phase in a
/// chunk of its own. Every byte after the header, inverted and then zeroed, must give a
/// report or an error through the whole library (decoder, replay, report, both renderings),
/// never a panic; a change anywhere in the second phase's chunk must lose that chunk and
/// nothing else: its leak is gone, the leaks recorded before and after it are there, and the
/// damage names the chunk exactly.
#[test]
fn every_byte_inverted_or_zeroed_gives_a_report_or_an_error_and_loses_at_most_its_chunk() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("traces/phases.trace");
    let trace = std::fs::read(&path).unwrap();
    let chunks = chunks(&trace);
    let middle = chunk_of_alloc(&trace, 2222);
    let (first, last) = (chunk_of_alloc(&trace, 1111), chunk_of_alloc(&trace, 3333));
    assert!(
        first < middle && middle < last,
        "each phase in a chunk of its own: {chunks:?}"
    );
    let middle_len = chunks.iter().find(|&&(at, _)| at == middle).unwrap().1;
    let mut symbolizer = Symbolizer::without_files();
    let (mut reports, mut errors, mut checked) = (0, 0, 0);
    for at in 0..trace.len() {
        for change in [|b: u8| b ^ 0xff, |_| 0] {
            let mut mutant = trace.clone();
            mutant[at] = change(mutant[at]);
            if mutant[at] == trace[at] {
                continue;
            }
            let outcome = catch_unwind(AssertUnwindSafe(|| read_and_report(&mutant, &mut symbolizer)));
            match outcome {
                Ok(true) => reports += 1,
                Ok(false) if at < HEADER_LEN => errors += 1,
                Ok(false) => panic!("byte {at} changed to {:#x}: the trace could not be read", mutant[at]),
                Err(_) => panic!("byte {at} changed to {:#x}: panicked", mutant[at]),
            }
            if !(middle..middle + middle_len).contains(&at) {
                continue;
            }
            let read = Trace::read(mutant.as_slice()).unwrap_or_else(|e| panic!("byte {at}: {e}"));
            assert_eq!(
                read.header.damage,
                [Damage {
                    offset: middle as u64,
                    bytes: middle_len as u64
                }],
                "byte {at}"
            );
            let mut sizes: Vec<u64> = read.live.iter().map(|block| block.size).collect();
            sizes.sort();
            assert_eq!(sizes, [1111, 3333], "byte {at}");
            let report = libleak_reporter::build(&read, "phases.trace", &mut symbolizer, &Options::default());
            let mut leaked: Vec<u64> = report.leaks.iter().map(|leak| leak.bytes).collect();
            leaked.sort();
            assert_eq!(leaked, [1111, 3333], "byte {at}");
            assert!(text::to_text(&report).contains("trace DAMAGED: "), "byte {at}");
            checked += 1;
        }
    }
    assert!(
        errors > 0 && reports > 0 && checked >= middle_len,
        "{errors} errors, {reports} reports, {checked} checked"
    );
}
