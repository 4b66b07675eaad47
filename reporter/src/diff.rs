//! `libleak diff BEFORE AFTER`: "did my fix work". Two leak reports (of two runs of one
//! program) are matched row by row by site, and the sites are sorted into fixed (leaking
//! before only), new (after only), changed (bytes or blocks differ) and unchanged.
//!
//! A site is what the leak report's default grouping is about, spelled so that it survives a
//! new run: the owner's function, file and line (the innermost frame's when no frame owns the
//! row) and the Python line that called it. Addresses and module paths are left out, as they
//! differ between runs (ASLR, a rebuilt extension in another directory). Rows of one report
//! that fall on the same site are added up.
//!
//! Takes finished reports and compares them: it must never read traces, print, or change how
//! either report was made. Text and JSON renderings of the comparison live here too, as the
//! comparison is their only reader.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;
use serde_json::Value;

use crate::model::{Class, Frame, Report, Tally};
use crate::render::thousands;

pub const DIFF_FORMAT: &str = "libleak-diff";
pub const DIFF_VERSION: u32 = 1;

/// The Python line that called into a site.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PythonLine {
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// Where a row leaks, as two runs can agree on it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Site {
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub python: Option<PythonLine>,
}

impl Site {
    fn of(leak: &crate::model::Leak) -> Site {
        let native: Option<&Frame> = leak.owner.frame.as_ref().or(leak.frames.first());
        Site {
            function: native.and_then(|f| f.function.clone()),
            file: native.and_then(|f| f.file.clone()),
            line: native.and_then(|f| f.line),
            python: leak.owner.python.as_ref().map(|p| PythonLine {
                function: p.function.clone(),
                file: p.file.clone(),
                line: p.line,
            }),
        }
    }

    /// `function at file:line, called from function at file:line`.
    pub fn text(&self) -> String {
        fn place(function: &Option<String>, file: &Option<String>, line: Option<u32>) -> String {
            let function = function.as_deref().unwrap_or("??");
            match (file, line) {
                (Some(file), Some(line)) => format!("{function} at {file}:{line}"),
                (Some(file), None) => format!("{function} in {file}"),
                _ => function.to_string(),
            }
        }
        let native =
            (self.function.is_some() || self.file.is_some()).then(|| place(&self.function, &self.file, self.line));
        let python = self.python.as_ref().map(|p| place(&p.function, &p.file, p.line));
        match (native, python) {
            (Some(native), Some(python)) => format!("{native}, called from {python}"),
            (Some(native), None) => native,
            (None, Some(python)) => format!("Python line {python}"),
            (None, None) => "(no stack recorded)".to_string(),
        }
    }
}

/// One site's leak in either run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteDiff {
    pub site: Site,
    /// The most serious class of its rows, in the later run that has it.
    pub kind: Class,
    pub before: Option<Tally>,
    pub after: Option<Tally>,
}

impl SiteDiff {
    pub fn bytes_delta(&self) -> i128 {
        i128::from(self.after.map_or(0, |t| t.bytes)) - i128::from(self.before.map_or(0, |t| t.bytes))
    }

    pub fn blocks_delta(&self) -> i128 {
        i128::from(self.after.map_or(0, |t| t.blocks)) - i128::from(self.before.map_or(0, |t| t.blocks))
    }
}

/// One run as the comparison sums it up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Side {
    pub trace: String,
    pub sites: usize,
    pub leaked: Tally,
}

/// The comparison of two reports.
#[derive(Clone, Debug)]
pub struct Diff {
    pub before: Side,
    pub after: Side,
    /// Leaking before only, largest first.
    pub fixed: Vec<SiteDiff>,
    /// Leaking after only, largest first.
    pub new: Vec<SiteDiff>,
    /// Leaking in both with other bytes or blocks, largest change first.
    pub changed: Vec<SiteDiff>,
    /// Sites leaking exactly as much in both.
    pub unchanged: usize,
}

impl Diff {
    /// Whether the later run leaks at a new site or more bytes at an old one
    /// (`--fail-on-new`'s question).
    pub fn worse(&self) -> bool {
        !self.new.is_empty() || self.changed.iter().any(|c| c.bytes_delta() > 0)
    }
}

/// One leak row as the comparison reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SiteRow {
    pub site: Site,
    pub kind: Class,
    pub tally: Tally,
}

/// The leak rows of `report` (leftovers and reachable rows aside), by site.
pub fn site_rows(report: &Report) -> Vec<SiteRow> {
    report
        .leaks
        .iter()
        .filter(|l| l.is_listed_leak())
        .map(|leak| SiteRow {
            site: Site::of(leak),
            kind: leak.class,
            tally: Tally {
                blocks: leak.blocks,
                bytes: leak.bytes,
            },
        })
        .collect()
}

/// Rows on one site added up, with their most serious class.
fn by_site(rows: &[SiteRow]) -> BTreeMap<Site, (Class, Tally)> {
    let mut sites: BTreeMap<Site, (Class, Tally)> = BTreeMap::new();
    for row in rows {
        let entry = sites.entry(row.site.clone()).or_insert((row.kind, Tally::default()));
        entry.0 = entry.0.min(row.kind);
        entry.1.add(row.tally.blocks, row.tally.bytes);
    }
    sites
}

fn side(trace: &str, sites: &BTreeMap<Site, (Class, Tally)>) -> Side {
    let mut leaked = Tally::default();
    for (_, tally) in sites.values() {
        leaked.add(tally.blocks, tally.bytes);
    }
    Side {
        trace: trace.to_string(),
        sites: sites.len(),
        leaked,
    }
}

/// Compares the leak rows of two reports (made with the same options, every row listed).
pub fn diff(before: &Report, after: &Report) -> Diff {
    compare(
        &before.trace_path,
        &site_rows(before),
        &after.trace_path,
        &site_rows(after),
    )
}

/// Compares two runs' rows; the traces are named as given.
pub fn compare(before_trace: &str, before: &[SiteRow], after_trace: &str, after: &[SiteRow]) -> Diff {
    let old = by_site(before);
    let new_sites = by_site(after);
    let mut diff = Diff {
        before: side(before_trace, &old),
        after: side(after_trace, &new_sites),
        fixed: Vec::new(),
        new: Vec::new(),
        changed: Vec::new(),
        unchanged: 0,
    };
    for (site, &(kind, tally)) in &old {
        match new_sites.get(site) {
            None => diff.fixed.push(SiteDiff {
                site: site.clone(),
                kind,
                before: Some(tally),
                after: None,
            }),
            Some(&(_, later)) if later == tally => diff.unchanged += 1,
            Some(&(later_kind, later)) => diff.changed.push(SiteDiff {
                site: site.clone(),
                kind: later_kind,
                before: Some(tally),
                after: Some(later),
            }),
        }
    }
    for (site, &(kind, tally)) in &new_sites {
        if !old.contains_key(site) {
            diff.new.push(SiteDiff {
                site: site.clone(),
                kind,
                before: None,
                after: Some(tally),
            });
        }
    }
    // Sites are already in key order, so equal sizes keep a stable order.
    diff.fixed
        .sort_by_key(|d| std::cmp::Reverse(d.before.map_or(0, |t| t.bytes)));
    diff.new
        .sort_by_key(|d| std::cmp::Reverse(d.after.map_or(0, |t| t.bytes)));
    diff.changed
        .sort_by_key(|d| std::cmp::Reverse(d.bytes_delta().unsigned_abs()));
    diff
}

fn tally_text(tally: Tally) -> String {
    let plural = if tally.blocks == 1 { "block" } else { "blocks" };
    format!(
        "{} bytes in {} {plural}",
        thousands(tally.bytes),
        thousands(tally.blocks)
    )
}

fn sites_text(n: usize) -> String {
    format!("{n} {}", if n == 1 { "site" } else { "sites" })
}

fn signed(delta: i128) -> String {
    let sign = if delta < 0 { "-" } else { "+" };
    format!(
        "{sign}{}",
        thousands(delta.unsigned_abs().min(u128::from(u64::MAX)) as u64)
    )
}

/// The comparison as text.
pub fn to_text(diff: &Diff) -> String {
    let mut out = String::new();
    for (label, side) in [("before", &diff.before), ("after", &diff.after)] {
        let _ = writeln!(
            out,
            "{label}: {}: {} leaking, {}",
            side.trace,
            sites_text(side.sites),
            tally_text(side.leaked)
        );
    }
    let total = i128::from(diff.after.leaked.bytes) - i128::from(diff.before.leaked.bytes);
    let _ = writeln!(
        out,
        "{} fixed, {} new, {} changed, {} unchanged; leaked bytes {}",
        diff.fixed.len(),
        diff.new.len(),
        diff.changed.len(),
        diff.unchanged,
        signed(total)
    );
    let sections: [(&str, &str, &[SiteDiff]); 3] = [
        ("fixed (leaking before only)", "-", &diff.fixed),
        ("new (leaking after only)", "+", &diff.new),
        ("changed", "~", &diff.changed),
    ];
    for (title, mark, rows) in sections {
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{title}:");
        for row in rows {
            let amounts = match (row.before, row.after) {
                (Some(before), Some(after)) => format!(
                    "{} -> {} ({} bytes)",
                    tally_text(before),
                    tally_text(after),
                    signed(row.bytes_delta())
                ),
                (Some(only), None) | (None, Some(only)) => tally_text(only),
                (None, None) => String::new(),
            };
            let _ = writeln!(out, "  {mark} {}: {amounts}", row.kind.name());
            let _ = writeln!(out, "      {}", row.site.text());
        }
    }
    out
}

#[derive(Serialize)]
struct SideView<'a> {
    trace: &'a str,
    sites: usize,
    bytes: u64,
    blocks: u64,
}

#[derive(Serialize)]
struct RowView<'a> {
    site: &'a Site,
    kind: &'static str,
    before: Option<Tally>,
    after: Option<Tally>,
    /// i64 in JSON: a byte count's difference always fits.
    bytes_delta: i64,
    blocks_delta: i64,
}

#[derive(Serialize)]
struct DiffView<'a> {
    format: &'static str,
    version: u32,
    before: SideView<'a>,
    after: SideView<'a>,
    fixed: Vec<RowView<'a>>,
    new: Vec<RowView<'a>>,
    changed: Vec<RowView<'a>>,
    unchanged: usize,
}

fn clamp(delta: i128) -> i64 {
    delta.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
}

fn side_view(side: &Side) -> SideView<'_> {
    SideView {
        trace: &side.trace,
        sites: side.sites,
        bytes: side.leaked.bytes,
        blocks: side.leaked.blocks,
    }
}

fn row_views(rows: &[SiteDiff]) -> Vec<RowView<'_>> {
    rows.iter()
        .map(|r| RowView {
            site: &r.site,
            kind: r.kind.name(),
            before: r.before,
            after: r.after,
            bytes_delta: clamp(r.bytes_delta()),
            blocks_delta: clamp(r.blocks_delta()),
        })
        .collect()
}

/// The comparison as one JSON document (`libleak-diff`, schema in `libleak diff --help`).
pub fn to_json(diff: &Diff) -> Value {
    let view = DiffView {
        format: DIFF_FORMAT,
        version: DIFF_VERSION,
        before: side_view(&diff.before),
        after: side_view(&diff.after),
        fixed: row_views(&diff.fixed),
        new: row_views(&diff.new),
        changed: row_views(&diff.changed),
        unchanged: diff.unchanged,
    };
    serde_json::to_value(view).expect("a diff view has string keys")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row leaking at `function:line`, called from Python line `py_line`.
    fn row(function: &str, line: u32, py_line: u32, blocks: u64, bytes: u64) -> SiteRow {
        SiteRow {
            site: Site {
                function: Some(function.into()),
                file: Some(format!("{function}.c")),
                line: Some(line),
                python: Some(PythonLine {
                    function: Some("main".into()),
                    file: Some("app.py".into()),
                    line: Some(py_line),
                }),
            },
            kind: Class::DefinitelyLost,
            tally: Tally { blocks, bytes },
        }
    }

    #[test]
    fn sites_sort_into_fixed_new_changed_and_unchanged() {
        let before = [
            row("parse", 15, 7, 40, 10240),
            row("label", 25, 14, 3, 96),
            row("keep", 5, 20, 1, 8),
        ];
        // Two rows on one site (two allocations inside the owner) are added up.
        let after = [
            row("label", 25, 14, 2, 64),
            row("keep", 5, 20, 1, 8),
            row("fresh", 30, 9, 1, 500),
            row("label", 25, 14, 1, 16),
        ];
        let diff = compare("a.trace", &before, "b.trace", &after);
        let names = |rows: &[SiteDiff]| -> Vec<String> { rows.iter().map(|r| r.site.text()).collect() };
        assert_eq!(
            names(&diff.fixed),
            ["parse at parse.c:15, called from main at app.py:7"]
        );
        assert_eq!(names(&diff.new), ["fresh at fresh.c:30, called from main at app.py:9"]);
        assert_eq!(diff.changed.len(), 1);
        assert_eq!(diff.changed[0].after, Some(Tally { blocks: 3, bytes: 80 }));
        assert_eq!(diff.changed[0].bytes_delta(), -16);
        assert_eq!(diff.unchanged, 1);
        assert!(diff.worse(), "a new site makes the later run worse");
        assert_eq!(
            diff.before.leaked,
            Tally {
                blocks: 44,
                bytes: 10344
            }
        );
        assert_eq!((diff.after.sites, diff.after.trace.as_str()), (3, "b.trace"));

        let json = to_json(&diff);
        assert_eq!(json["format"], DIFF_FORMAT);
        assert_eq!(json["fixed"][0]["bytes_delta"], -10240);
        assert_eq!(json["new"][0]["before"], Value::Null);
        assert_eq!(json["new"][0]["site"]["python"]["line"], 9);
        let text = to_text(&diff);
        assert!(text.contains("1 fixed, 1 new, 1 changed, 1 unchanged"), "{text}");
    }

    #[test]
    fn the_python_line_is_part_of_the_site() {
        let diff = compare("a", &[row("f", 1, 7, 1, 8)], "b", &[row("f", 1, 8, 1, 8)]);
        assert_eq!((diff.fixed.len(), diff.new.len(), diff.unchanged), (1, 1, 0));
    }

    #[test]
    fn only_new_or_grown_sites_make_a_run_worse() {
        let before = [row("a", 1, 1, 4, 400), row("b", 2, 2, 1, 10)];
        let fewer = [row("a", 1, 1, 2, 200)];
        assert!(!compare("x", &before, "y", &fewer).worse());
        let grown = [row("a", 1, 1, 5, 500), row("b", 2, 2, 1, 10)];
        assert!(compare("x", &before, "y", &grown).worse());
        let same = compare("x", &before, "y", &before);
        assert!(!same.worse());
        assert_eq!((same.unchanged, same.changed.len()), (2, 0));
    }
}
