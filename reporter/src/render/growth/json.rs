//! The growth report as JSON: `libleak-growth`, one document per process, or
//! `libleak-growths` holding several. The schema is documented in `docs/report-schema.md` and
//! is a public contract; a test below checks that the document lists exactly the keys
//! written. As for the leak report, the views are the JSON's shape, field for field.
//!
//! Must never print, filter or recompute: it returns the document.

use serde::Serialize;
use serde_json::Value;

use super::{ends_name, holders_note};
use crate::growth::sites::WindowSite;
use crate::growth::{trend, GrowthReport};
use crate::model::{Frame, Tally};
use crate::render::json::{OwnerView, Unreadable};

pub const GROWTH_FORMAT: &str = "libleak-growth";
pub const GROWTH_VERSION: u32 = 1;

#[derive(Serialize)]
struct GrowthView<'a> {
    format: &'static str,
    version: u32,
    trace: &'a str,
    process: ProcessView<'a>,
    complete: bool,
    incomplete_reason: Option<String>,
    period: PeriodView,
    holders: HoldersView,
    rule: RuleView,
    timeline: Vec<PointView>,
    sites_judged: usize,
    sites_too_short: usize,
    growing: Vec<RowView<'a>>,
    omitted: OmittedView,
    between: Option<BetweenView<'a>>,
}

#[derive(Serialize)]
struct ProcessView<'a> {
    pid: u32,
    program: &'a str,
    argv: &'a [String],
}

#[derive(Serialize)]
struct PeriodView {
    ends: &'static str,
    last_seq: u64,
    events: u64,
    sample_interval: u64,
}

#[derive(Serialize)]
struct HoldersView {
    recorded: bool,
    note: &'static str,
}

#[derive(Serialize)]
struct RuleView {
    windows: usize,
    min_samples: usize,
    min_trend_z: f64,
    min_bytes: u64,
    min_blocks: u64,
    min_bytes_one_block: u64,
}

#[derive(Serialize)]
struct PointView {
    t_s: Option<f64>,
    seq: u64,
    live_bytes: u64,
    live_blocks: u64,
}

#[derive(Serialize)]
struct RowView<'a> {
    growth_bytes: u64,
    blocks: u64,
    live_bytes: u64,
    live_blocks: u64,
    first_seq: u64,
    window_events: u64,
    bytes_per_window: f64,
    bytes_per_s: Option<f64>,
    window_min_bytes: &'a [u64],
    rising_windows: usize,
    trend_z: f64,
    series: &'a [u64],
    owner: OwnerView<'a>,
    frames: &'a [Frame],
    stacks: usize,
    /// Holder names, most bytes first.
    held_by: Vec<&'a str>,
    holders: Vec<HolderView<'a>>,
    /// Python types of the site's objects live when finalisation began.
    types: Vec<TypeView<'a>>,
}

#[derive(Serialize)]
struct TypeView<'a> {
    name: &'a str,
    bytes: u64,
    blocks: u64,
}

#[derive(Serialize)]
struct HolderView<'a> {
    name: &'a str,
    bytes: u64,
    blocks: u64,
    share: f64,
    path: &'a [String],
    expression: Option<&'a str>,
}

#[derive(Serialize)]
struct OmittedView {
    sites: u64,
    bytes: u64,
    blocks: u64,
}

#[derive(Serialize)]
struct WindowRowView<'a> {
    bytes: u64,
    blocks: u64,
    owner: OwnerView<'a>,
    frames: &'a [Frame],
}

#[derive(Serialize)]
struct BetweenView<'a> {
    from_seq: u64,
    to_seq: u64,
    clipped: bool,
    grown: Vec<WindowRowView<'a>>,
    grown_total: Tally,
    grown_omitted: usize,
    shrunk: Vec<WindowRowView<'a>>,
    shrunk_total: Tally,
    shrunk_omitted: usize,
}

fn window_rows(rows: &[WindowSite]) -> Vec<WindowRowView<'_>> {
    rows.iter()
        .map(|row| WindowRowView {
            bytes: row.tally.bytes,
            blocks: row.tally.blocks,
            owner: OwnerView::of(&row.owner),
            frames: &row.frames,
        })
        .collect()
}

impl<'a> GrowthView<'a> {
    fn of(report: &'a GrowthReport) -> GrowthView<'a> {
        let process = &report.header.process;
        GrowthView {
            format: GROWTH_FORMAT,
            version: GROWTH_VERSION,
            trace: &report.trace_path,
            process: ProcessView {
                pid: process.pid,
                program: &process.program,
                argv: &process.argv,
            },
            complete: report.header.complete(),
            incomplete_reason: report.header.incomplete.as_ref().map(ToString::to_string),
            period: PeriodView {
                ends: ends_name(report.period.ends),
                last_seq: report.period.last_seq,
                events: report.period.events,
                sample_interval: report.period.interval,
            },
            holders: HoldersView {
                recorded: report.holders_recorded,
                note: holders_note(report),
            },
            rule: RuleView {
                windows: trend::WINDOWS,
                min_samples: trend::MIN_SAMPLES,
                min_trend_z: trend::MIN_TREND_Z,
                min_bytes: trend::MIN_BYTES,
                min_blocks: trend::MIN_BLOCKS,
                min_bytes_one_block: trend::MIN_BYTES_ONE_BLOCK,
            },
            timeline: report
                .timeline
                .iter()
                .map(|p| PointView {
                    t_s: p.t_s,
                    seq: p.seq,
                    live_bytes: p.live_bytes,
                    live_blocks: p.live_blocks,
                })
                .collect(),
            sites_judged: report.sites_judged,
            sites_too_short: report.sites_too_short,
            growing: report
                .growing
                .iter()
                .map(|row| RowView {
                    growth_bytes: row.growth_bytes,
                    blocks: row.growth_blocks,
                    live_bytes: row.live_bytes,
                    live_blocks: row.live_blocks,
                    first_seq: row.first_seq,
                    window_events: row.window_events,
                    bytes_per_window: row.bytes_per_window,
                    bytes_per_s: row.bytes_per_s,
                    window_min_bytes: &row.window_min_bytes,
                    rising_windows: row.rising_windows,
                    trend_z: row.trend_z,
                    series: &row.series,
                    owner: OwnerView::of(&row.owner),
                    frames: &row.frames,
                    stacks: row.stacks,
                    held_by: row.held_by.iter().map(|h| h.name.as_str()).collect(),
                    holders: row
                        .held_by
                        .iter()
                        .map(|h| HolderView {
                            name: &h.name,
                            bytes: h.bytes,
                            blocks: h.blocks,
                            share: (h.share * 1000.0).round() / 1000.0,
                            path: &h.path,
                            expression: h.expression.as_deref(),
                        })
                        .collect(),
                    types: row
                        .types
                        .iter()
                        .map(|t| TypeView {
                            name: &t.name,
                            bytes: t.bytes,
                            blocks: t.blocks,
                        })
                        .collect(),
                })
                .collect(),
            omitted: OmittedView {
                sites: report.omitted.leaks,
                bytes: report.omitted.bytes,
                blocks: report.omitted.blocks,
            },
            between: report.between.as_ref().map(|b| BetweenView {
                from_seq: b.from_seq,
                to_seq: b.to_seq,
                clipped: b.clipped,
                grown: window_rows(&b.grown),
                grown_total: b.grown_total,
                grown_omitted: b.grown_omitted,
                shrunk: window_rows(&b.shrunk),
                shrunk_total: b.shrunk_total,
                shrunk_omitted: b.shrunk_omitted,
            }),
        }
    }
}

/// The growth report as one JSON document (schema: docs/report-schema.md).
pub fn to_json(report: &GrowthReport) -> Value {
    serde_json::to_value(GrowthView::of(report)).expect("a growth view has string keys and finite numbers")
}

/// Several processes' growth reports as one document, with the traces that could not be read.
pub fn to_json_many(reports: &[GrowthReport], unreadable: &[Unreadable]) -> Value {
    #[derive(Serialize)]
    struct Many<'a> {
        format: &'static str,
        version: u32,
        processes: Vec<GrowthView<'a>>,
        unreadable: &'a [Unreadable],
    }
    serde_json::to_value(Many {
        format: "libleak-growths",
        version: GROWTH_VERSION,
        processes: reports.iter().map(GrowthView::of).collect(),
        unreadable,
    })
    .expect("a growth view has string keys and finite numbers")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::growth::PeriodEnd;
    use crate::render::growth::tests::full_report;

    fn key_paths(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                for (key, child) in map {
                    let path = if prefix.is_empty() {
                        key.clone()
                    } else {
                        format!("{prefix}.{key}")
                    };
                    out.insert(path.clone());
                    key_paths(child, &path, out);
                }
            }
            Value::Array(items) => items.iter().for_each(|item| key_paths(item, prefix, out)),
            _ => {}
        }
    }

    #[test]
    fn the_schema_document_lists_exactly_the_growth_keys_written() {
        let text = include_str!("../../../../docs/report-schema.md");
        let section = &text[text.find("## The growth report").expect("the growth section")..];
        let start = section.find("```json\n").expect("an example") + "```json\n".len();
        let end = start + section[start..].find("```").expect("the example ends");
        let example: Value = serde_json::from_str(&section[start..end]).expect("the example is JSON");
        let mut documented = BTreeSet::new();
        key_paths(&example, "", &mut documented);
        let mut written = BTreeSet::new();
        key_paths(&to_json(&full_report(PeriodEnd::Finalization)), "", &mut written);
        // The window's rows elide their frames: they are the growing rows' frames.
        written.retain(|p| !p.starts_with("between.grown.frames.") && !p.starts_with("between.shrunk.frames."));
        assert_eq!(documented, written, "docs/report-schema.md and the growth JSON differ");
        let many = to_json_many(&[full_report(PeriodEnd::LastEvent)], &[]);
        assert_eq!(many["format"], "libleak-growths");
        assert_eq!(many["processes"][0]["format"], GROWTH_FORMAT);
    }
}
