//! The reports to look at and the hand-offs to other tools, read back by real readers: the
//! bundled example (`examples/leaky_ext`, a C extension leaking at two lines, driven by
//! Python) as folded stacks parsed line by line, as a pprof profile decoded against the real
//! `profile.proto` (vendored in `fixtures/pprof/`) by a protobuf library, and as an HTML page
//! whose embedded JSON must equal `--json` and which headless Chromium must render with the
//! same numbers (its screenshot becomes `docs/report.png` under
//! `LIBLEAK_UPDATE_SCREENSHOT=1`); the growth report's page too; and `libleak diff` on two
//! runs of a C program whose leaks change between them.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use libleak_tests::*;
use serde_json::Value;

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/leaky_ext")
}

/// The 1-based line of the example's `file` holding `marker`.
fn example_line(file: &str, marker: &str) -> u64 {
    let text = std::fs::read_to_string(example_dir().join(file)).expect("read the example");
    let lines: Vec<usize> = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.contains(marker))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(lines.len(), 1, "{marker} must be on exactly one line of {file}");
    lines[0] as u64
}

/// The example built with the first usable interpreter and run under libleak: its scratch
/// directory (holding leaky.c, app.py and the trace) and the trace. None, with the reason
/// printed, when no interpreter with headers is found.
fn traced_example(label: &str) -> Option<(Scratch, PathBuf)> {
    let Some(python) = pythons().into_iter().next() else {
        eprintln!("skipping: no Python interpreter with headers found");
        return None;
    };
    let scratch = Scratch::new(label);
    for file in ["leaky.c", "app.py"] {
        std::fs::copy(example_dir().join(file), scratch.join(file)).expect("copy the example");
    }
    python.build_extension(&scratch.join("leaky.c"), "leaky", &scratch.path);
    let trace = python.run_script_traced(&scratch, "app.py", &python.label());
    Some((scratch, trace))
}

/// `libleak ARGS…`, which must succeed.
fn libleak(args: &[&str], trace: &Path) -> Output {
    let out = run(Command::new(libleak_bin()).args(args).arg(trace));
    assert!(
        out.status.success(),
        "libleak {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// What the JSON report counts as leaked (the `--fail-on-leak` measure, the HTML headline):
/// definitely, indirectly lost and unclassified.
fn leaked(report: &Value) -> (u64, u64) {
    summed(report, &["definitely_lost", "indirectly_lost", "unclassified"])
}

/// Every lost block of the summary, possibly lost ones too: what the rows of a default report
/// hold (a stale pointer into the middle of a block can make one of the example's blocks
/// possibly lost).
fn lost(report: &Value) -> (u64, u64) {
    summed(
        report,
        &["definitely_lost", "indirectly_lost", "unclassified", "possibly_lost"],
    )
}

fn summed(report: &Value, classes: &[&str]) -> (u64, u64) {
    let summary = &report["summary"];
    let sum = |key: &str| {
        classes
            .iter()
            .map(|class| summary[class][key].as_u64().unwrap())
            .sum::<u64>()
    };
    (sum("bytes"), sum("blocks"))
}

/// The rows' bytes and blocks, summed.
fn row_totals(report: &Value) -> (u64, u64) {
    let rows = report["leaks"].as_array().unwrap();
    (
        rows.iter().map(|r| r["bytes"].as_u64().unwrap()).sum(),
        rows.iter().map(|r| r["blocks"].as_u64().unwrap()).sum(),
    )
}

/// Bytes and blocks of the report's row owned by `function`. Not the example's nominal
/// 10,240 bytes: the conservative scan may find a stale copy of a pointer to a block and class
/// it reachable (off the row) or possibly lost; what this file checks is that each output agrees
/// with the JSON report.
fn owner_row(report: &Value, function: &str) -> (u64, u64) {
    let rows: Vec<&Value> = report["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["owner"]["function"] == function)
        .collect();
    assert_eq!(rows.len(), 1, "one row owned by {function}: {report:#}");
    (rows[0]["bytes"].as_u64().unwrap(), rows[0]["blocks"].as_u64().unwrap())
}

#[test]
fn folded_stacks_hold_every_leaked_byte_with_the_planted_line() {
    let Some((scratch, trace)) = traced_example("folded") else {
        return;
    };
    let report = report_json(&trace);
    let out = libleak(&["report", "--format", "folded", "--limit", "0"], &trace);
    let text = String::from_utf8(out.stdout).expect("folded output is UTF-8");
    let mut total = 0;
    let mut lines = Vec::new();
    for line in text.lines() {
        let (stack, bytes) = line.rsplit_once(' ').unwrap_or_else(|| panic!("no count: {line:?}"));
        let bytes: u64 = bytes.parse().unwrap_or_else(|_| panic!("bad count: {line:?}"));
        let frames: Vec<&str> = stack.split(';').collect();
        assert!(frames.iter().all(|f| !f.is_empty()), "empty frame in {line:?}");
        total += bytes;
        lines.push((frames, bytes));
    }
    assert_eq!(
        total,
        row_totals(&report).0,
        "folded bytes are the rows' bytes:\n{text}"
    );
    assert_eq!(total, lost(&report).0, "the rows hold every lost byte:\n{text}");
    assert!(total > 0, "the example leaks");

    let c_file = scratch.join("leaky.c").display().to_string();
    let planted = format!("parse_records ({c_file}:{})", example_line("leaky.c", "@leaky_scratch"));
    let (frames, bytes) = lines
        .iter()
        .find(|(frames, _)| frames.last() == Some(&planted.as_str()))
        .unwrap_or_else(|| panic!("no stack ends in {planted}:\n{text}"));
    assert_eq!(*bytes, owner_row(&report, "parse_records").0);
    let caller = format!("/app.py:{})", example_line("app.py", "@app_parse"));
    assert!(
        frames
            .iter()
            .any(|f| f.starts_with("load_batch (") && f.ends_with(&caller)),
        "the Python caller is a frame: {frames:?}"
    );
    assert!(frames[0].starts_with("<module> ("), "outermost frame first: {frames:?}");
}

/// A decoded protobuf message as JSON (field names as in the schema; unset fields at their
/// defaults), through the library's reflection.
fn message_json(message: &dyn protobuf::MessageDyn) -> Value {
    use protobuf::reflect::RuntimeFieldType;
    let mut object = serde_json::Map::new();
    for field in message.descriptor_dyn().fields() {
        let value = match field.runtime_field_type() {
            RuntimeFieldType::Singular(_) => value_json(field.get_singular_field_or_default(message)),
            RuntimeFieldType::Repeated(_) => {
                let repeated = field.get_repeated(message);
                Value::Array((0..repeated.len()).map(|i| value_json(repeated.get(i))).collect())
            }
            RuntimeFieldType::Map(..) => Value::Null,
        };
        object.insert(field.name().to_string(), value);
    }
    Value::Object(object)
}

fn value_json(value: protobuf::reflect::ReflectValueRef) -> Value {
    use protobuf::reflect::ReflectValueRef as V;
    match value {
        V::U64(v) => v.into(),
        V::I64(v) => v.into(),
        V::U32(v) => v.into(),
        V::I32(v) => v.into(),
        V::Bool(v) => v.into(),
        V::String(v) => v.into(),
        V::Message(m) => message_json(&*m),
        _ => Value::Null,
    }
}

/// A gzipped pprof profile decoded against the vendored profile.proto.
fn decode_profile(gzipped: &[u8]) -> Value {
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gzipped)
        .read_to_end(&mut raw)
        .expect("the profile is gzipped");
    let schema = fixtures_dir().join("pprof");
    let parsed = protobuf_parse::Parser::new()
        .pure()
        .include(&schema)
        .input(schema.join("profile.proto"))
        .parse_and_typecheck()
        .expect("profile.proto parses");
    let files = protobuf::reflect::FileDescriptor::new_dynamic_fds(parsed.file_descriptors, &[])
        .expect("profile.proto type-checks");
    let profile = files
        .iter()
        .find_map(|f| f.message_by_package_relative_name("Profile"))
        .expect("the schema has Profile");
    let message = profile.parse_from_bytes(&raw).expect("the profile decodes");
    message_json(&*message)
}

fn as_u64(value: &Value) -> u64 {
    value.as_u64().unwrap_or_else(|| value.as_i64().unwrap_or(-1) as u64)
}

#[test]
fn pprof_profile_decodes_against_the_real_schema_with_the_planted_leak() {
    let Some((scratch, trace)) = traced_example("pprof") else {
        return;
    };
    let report = report_json(&trace);
    let path = scratch.join("leaks.pb.gz");
    let mut args = vec!["report", "--format", "pprof", "--limit", "0", "-o"];
    let path_text = path.display().to_string();
    args.push(&path_text);
    libleak(&args, &trace);
    let profile = decode_profile(&std::fs::read(&path).expect("the profile was written"));

    let strings: Vec<&str> = profile["string_table"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(strings[0], "", "the string table starts with the empty string");
    let text = |index: &Value| strings[as_u64(index) as usize];
    let types: Vec<(&str, &str)> = profile["sample_type"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (text(&t["type"]), text(&t["unit"])))
        .collect();
    assert_eq!(types, [("leaked_objects", "count"), ("leaked_space", "bytes")]);
    assert_eq!(text(&profile["default_sample_type"]), "leaked_space");

    // pprof's own validity rules: every id is set, unique and resolves.
    let by_id = |table: &str| -> std::collections::HashMap<u64, &Value> {
        let rows = profile[table].as_array().unwrap();
        let map: std::collections::HashMap<u64, &Value> = rows.iter().map(|r| (as_u64(&r["id"]), r)).collect();
        assert_eq!(map.len(), rows.len(), "{table} ids are unique");
        assert!(!map.contains_key(&0), "{table} ids are not 0");
        map
    };
    let (functions, locations, mappings) = (by_id("function"), by_id("location"), by_id("mapping"));
    for location in locations.values() {
        let mapping = as_u64(&location["mapping_id"]);
        assert!(mapping == 0 || mappings.contains_key(&mapping), "{location}");
        for line in location["line"].as_array().unwrap() {
            assert!(functions.contains_key(&as_u64(&line["function_id"])), "{location}");
        }
    }

    let samples = profile["sample"].as_array().unwrap();
    let sum = |i: usize| samples.iter().map(|s| as_u64(&s["value"][i])).sum::<u64>();
    assert_eq!(
        (sum(1), sum(0)),
        lost(&report),
        "the samples hold every lost byte and block"
    );
    assert_eq!((sum(1), sum(0)), row_totals(&report));

    // Each sample's lines, leaf first: (function, file, line).
    let lines_of = |sample: &Value| -> Vec<(String, String, u64)> {
        let mut out = Vec::new();
        for id in sample["location_id"].as_array().unwrap() {
            let location = locations[&as_u64(id)];
            for line in location["line"].as_array().unwrap() {
                let function = functions[&as_u64(&line["function_id"])];
                out.push((
                    text(&function["name"]).to_string(),
                    text(&function["filename"]).to_string(),
                    as_u64(&line["line"]),
                ));
            }
        }
        out
    };
    let planted = samples
        .iter()
        .find(|s| lines_of(s).first().is_some_and(|(f, _, _)| f == "parse_records"))
        .unwrap_or_else(|| panic!("no sample has parse_records as its leaf: {profile:#}"));
    let lines = lines_of(planted);
    assert_eq!(
        lines[0],
        (
            "parse_records".to_string(),
            scratch.join("leaky.c").display().to_string(),
            example_line("leaky.c", "@leaky_scratch")
        )
    );
    let (row_bytes, row_blocks) = owner_row(&report, "parse_records");
    assert_eq!(
        (as_u64(&planted["value"][0]), as_u64(&planted["value"][1])),
        (row_blocks, row_bytes)
    );
    assert!(
        lines.iter().any(|(f, file, line)| f == "load_batch"
            && file.ends_with("/app.py")
            && *line == example_line("app.py", "@app_parse")),
        "the Python caller is a line of the sample: {lines:?}"
    );
    let leaf = locations[&as_u64(&planted["location_id"][0])];
    let mapping = mappings[&as_u64(&leaf["mapping_id"])];
    assert!(text(&mapping["filename"]).contains("/leaky."), "{mapping}");
    assert!(as_u64(&leaf["address"]) >= as_u64(&mapping["memory_start"]));
    assert!(as_u64(&leaf["address"]) < as_u64(&mapping["memory_limit"]));
    let labels: Vec<(&str, &str)> = planted["label"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| as_u64(&l["str"]) != 0)
        .map(|l| (text(&l["key"]), text(&l["str"])))
        .collect();
    assert_eq!(labels, [("kind", "definitely-lost")]);
}

#[test]
fn binary_and_growth_outputs_are_refused_where_they_cannot_go() {
    let out = run(Command::new(libleak_bin()).args(["run", "--format", "pprof", "--", "true"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--report-file"));
    let out = run(Command::new(libleak_bin()).args(["report", "--growth", "--format", "folded", "x.trace"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("growth"));
    let out = run(Command::new(libleak_bin()).args(["report", "--json", "--format", "text", "x.trace"]));
    assert_eq!(out.status.code(), Some(2), "--json is --format json: both conflict");
}

/// The JSON document a page embeds, and the page without it.
fn split_page(page: &str) -> (Value, String) {
    let open = "<script type=\"application/json\" id=\"libleak-data\">";
    let start = page.find(open).expect("the page embeds its JSON") + open.len();
    let end = start + page[start..].find("</script>").expect("the JSON block ends");
    let document = serde_json::from_str(&page[start..end]).expect("the embedded block is JSON");
    (document, format!("{}{}", &page[..start], &page[end..]))
}

/// Asserts the page loads nothing from elsewhere (its data aside, which names local paths).
fn assert_self_contained(page_without_data: &str) {
    for needle in ["http://", "https://", "src=", "<link", "@import", "url("] {
        assert!(!page_without_data.contains(needle), "the page references {needle}");
    }
}

/// Debian's Chromium, or None with the reason printed.
fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        eprintln!("skipping the browser part: no chromium on PATH (scripts/setup installs Debian's)");
    }
    found
}

/// Runs headless Chromium on `page` with `args`, its stdout into `stdout_to`; fails the test
/// if it does not finish within a minute.
fn headless(browser: &Path, scratch: &Scratch, page: &Path, args: &[&str], stdout_to: &Path) {
    let mut child = Command::new(browser)
        .args(["--headless", "--disable-gpu", "--no-first-run", "--hide-scrollbars"])
        // As root (CI) Chromium refuses to start with its sandbox.
        .arg("--no-sandbox")
        .arg(format!(
            "--user-data-dir={}",
            scratch.join("chromium-profile").display()
        ))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdout(std::fs::File::create(stdout_to).expect("create the browser's output file"))
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            assert!(status.success(), "chromium {args:?} failed: {status}");
            return;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {args:?} did not finish within a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn html_page_embeds_the_json_report_and_renders_its_numbers_in_a_browser() {
    let Some((scratch, trace)) = traced_example("html") else {
        return;
    };
    let page_path = scratch.join("report.html");
    let page_arg = page_path.display().to_string();
    let printed = libleak(&["report", "--limit", "0", "--html", &page_arg], &trace);
    assert!(
        String::from_utf8_lossy(&printed.stdout).starts_with("libleak report: "),
        "the text report is still printed"
    );
    let page = std::fs::read_to_string(&page_path).expect("the page was written");
    let (embedded, rest) = split_page(&page);
    let json: Value = serde_json::from_slice(&libleak(&["report", "--limit", "0", "--json"], &trace).stdout).unwrap();
    assert_eq!(embedded, json, "the page embeds exactly the JSON report");
    assert_self_contained(&rest);

    let Some(browser) = chromium() else {
        return;
    };
    let dom_path = scratch.join("dom.html");
    headless(&browser, &scratch, &page_path, &["--dump-dom"], &dom_path);
    let dom = std::fs::read_to_string(&dom_path).expect("chromium dumped the DOM");
    let (bytes, blocks) = leaked(&json);
    assert!(bytes > 0, "the example leaks");
    let thousands = libleak_reporter::render::thousands;
    assert!(
        dom.contains(&format!("data-leaked-bytes=\"{bytes}\"")),
        "the script ran and wrote the total: {dom}"
    );
    assert!(
        dom.contains(&format!("{} bytes in {blocks} blocks leaked", thousands(bytes))),
        "{dom}"
    );
    for row in json["leaks"].as_array().unwrap() {
        let cell = format!(
            "<td class=\"num bytes\">{}</td>",
            thousands(row["bytes"].as_u64().unwrap())
        );
        assert!(
            dom.contains(&cell),
            "row {} is in the table: {dom}",
            row["owner"]["function"]
        );
    }
    assert!(
        dom.contains(">parse_records<"),
        "the flame graph names the leaking function"
    );
    // The leaked index's row expands to the structure it holds and its leaked reference.
    let index = json["leaks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["owner"]["function"] == "index_labels")
        .expect("the example leaks its index");
    assert!(
        dom.contains("refcount 1, 0 references found: 1 leaked reference"),
        "{dom}"
    );
    assert!(
        dom.contains(&format!(
            "the leaked block ({} bytes in 1 block) keeps",
            thousands(index["roots"]["bytes"].as_u64().unwrap())
        )),
        "{dom}"
    );
    for part in index["parts"].as_array().unwrap() {
        let cell = format!(
            "<tr class=\"part\"><td class=\"num\">{}</td><td class=\"num\">{}</td>",
            thousands(part["bytes"].as_u64().unwrap()),
            thousands(part["blocks"].as_u64().unwrap())
        );
        assert!(dom.contains(&cell), "part {part} is on the page: {dom}");
    }
    assert!(
        dom.contains(&format!(
            "parse_records at {}:{}",
            scratch.join("leaky.c").display(),
            example_line("leaky.c", "@leaky_scratch")
        )),
        "the owner and its line are on the page"
    );

    let shot = scratch.join("report.png");
    let shot_arg = format!("--screenshot={}", shot.display());
    headless(
        &browser,
        &scratch,
        &page_path,
        &["--window-size=1280,1400", &shot_arg],
        &scratch.join("screenshot.log"),
    );
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "a real screenshot"
    );
    if std::env::var_os("LIBLEAK_UPDATE_SCREENSHOT").is_some_and(|v| v == "1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/report.png");
        std::fs::write(&docs, &png).expect("update docs/report.png");
        eprintln!("updated {}", docs.display());
    }
}

#[test]
fn growth_page_embeds_the_growth_json_and_draws_its_timeline() {
    let Some((scratch, trace)) = traced_example("growth-html") else {
        return;
    };
    let page_path = scratch.join("growth.html");
    let page_arg = page_path.display().to_string();
    libleak(&["report", "--growth", "--html", &page_arg], &trace);
    let page = std::fs::read_to_string(&page_path).expect("the page was written");
    let (embedded, rest) = split_page(&page);
    let json: Value = serde_json::from_slice(&libleak(&["report", "--growth", "--json"], &trace).stdout).unwrap();
    assert_eq!(embedded, json, "the page embeds exactly the growth JSON");
    assert_eq!(json["format"], "libleak-growth");
    assert_self_contained(&rest);

    let Some(browser) = chromium() else {
        return;
    };
    let dom_path = scratch.join("dom.html");
    headless(&browser, &scratch, &page_path, &["--dump-dom"], &dom_path);
    let dom = std::fs::read_to_string(&dom_path).expect("chromium dumped the DOM");
    let growing = json["growing"].as_array().unwrap().len();
    assert!(dom.contains(&format!("data-growing-sites=\"{growing}\"")), "{dom}");
    assert!(dom.contains("<svg class=\"chart\""), "the timeline is drawn: {dom}");
    let samples = json["timeline"].as_array().unwrap().len();
    assert!(dom.contains(&format!("({samples} samples)")), "{dom}");
}

/// `libleak diff ARGS… BEFORE AFTER`: stdout and exit status.
fn diff(args: &[&str], before: &Path, after: &Path) -> (String, Option<i32>) {
    let out = run(Command::new(libleak_bin())
        .arg("diff")
        .args(args)
        .arg(before)
        .arg(after));
    (String::from_utf8_lossy(&out.stdout).into_owned(), out.status.code())
}

#[test]
fn diff_sorts_sites_into_fixed_new_changed_and_unchanged() {
    let scratch = Scratch::new("diff");
    let exe = scratch.join("diff_sites");
    compile("gcc", &["outputs/diff_sites.c"], &exe, &[]);
    let traced = |arg: &str| {
        let traced = run_traced(&scratch, Command::new(&exe).arg(arg).current_dir(&scratch.path));
        assert_eq!(traced.output.status.code(), Some(0), "{arg}");
        traced.trace
    };
    let (before, after) = (traced("before"), traced("after"));
    let src = "outputs/diff_sites.c";
    let file = fixtures_dir().join(src).display().to_string();

    let (text, status) = diff(&["--json"], &before, &after);
    assert_eq!(status, Some(0), "no gate, no failure");
    let doc: Value = serde_json::from_str(&text).expect("diff --json is JSON");
    assert_eq!(doc["format"], "libleak-diff");
    let site = |row: &Value| {
        (
            row["site"]["function"].as_str().unwrap().to_string(),
            row["site"]["file"].as_str().unwrap().to_string(),
            row["site"]["line"].as_u64().unwrap(),
        )
    };
    let tally = |t: &Value| (t["bytes"].as_u64().unwrap(), t["blocks"].as_u64().unwrap());
    let expect_site = |function: &str, marker: &str| (function.to_string(), file.clone(), line_of(src, marker));
    let rows = |key: &str| doc[key].as_array().unwrap().clone();
    assert_eq!(rows("fixed").len(), 1, "{doc:#}");
    assert_eq!(site(&rows("fixed")[0]), expect_site("site_fixed", "@fixed"));
    assert_eq!(tally(&rows("fixed")[0]["before"]), (192, 3));
    assert_eq!(rows("fixed")[0]["after"], Value::Null);
    assert_eq!(rows("new").len(), 1, "{doc:#}");
    assert_eq!(site(&rows("new")[0]), expect_site("site_new", "@new"));
    assert_eq!(tally(&rows("new")[0]["after"]), (500, 1));
    assert_eq!(rows("changed").len(), 1, "{doc:#}");
    let changed = &rows("changed")[0];
    assert_eq!(site(changed), expect_site("site_shrinks", "@shrinks"));
    assert_eq!(
        (tally(&changed["before"]), tally(&changed["after"])),
        ((400, 4), (200, 2))
    );
    assert_eq!(
        (changed["bytes_delta"].as_i64(), changed["blocks_delta"].as_i64()),
        (Some(-200), Some(-2))
    );
    assert_eq!(doc["unchanged"], 1, "site_same leaks the same in both");
    assert_eq!(tally(&doc["before"]), (400 + 192 + 50, 4 + 3 + 5));
    assert_eq!(tally(&doc["after"]), (200 + 500 + 50, 2 + 1 + 5));

    let (text, status) = diff(&[], &before, &after);
    assert_eq!(status, Some(0));
    assert!(text.contains("1 fixed, 1 new, 1 changed, 1 unchanged"), "{text}");
    assert!(
        text.contains(&format!("site_new at {file}:{}", line_of(src, "@new"))),
        "{text}"
    );

    assert_eq!(
        diff(&["--fail-on-new"], &before, &after).1,
        Some(23),
        "a new site fails"
    );
    assert_eq!(
        diff(&["--fail-on-new"], &after, &after).1,
        Some(0),
        "the same run does not"
    );
    // Reversed, site_shrinks grows (200 -> 400 bytes) and site_fixed is new.
    let (text, status) = diff(&["--fail-on-new", "--json"], &after, &before);
    assert_eq!(status, Some(23));
    let reversed: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(reversed["changed"][0]["bytes_delta"], 200);
    assert_eq!(
        diff(&[], &scratch.join("missing.trace"), &after).1,
        Some(2),
        "an unreadable trace is libleak's failure"
    );
}
