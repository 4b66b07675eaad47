//! The growth report as text (ranked growing sites, each with a sparkline of its live bytes)
//! and, in [`json`], as JSON.
//!
//! Renderers only format: this must never filter, reorder or recompute what
//! [`crate::growth`] decided, and never print.

use std::fmt::Write as _;

use super::text::frame_text;
use super::thousands;
use crate::growth::{trend, Between, GrowthReport, GrowthRow, PeriodEnd};
use crate::model::{Frame, Owner, Tally};

pub mod json;

/// What the report says of holders.
const HOLDERS_NAMED: &str = "named by the scan made when finalisation began: for each site, the module globals, class attributes or C statics that first reached its blocks live then";
const HOLDERS_NOT_RECORDED: &str =
    "not recorded: the trace has no holders from the scan at finalisation (a trace from an older libleak, or the scan was cut short or off)";
const HOLDERS_NO_FINALIZATION: &str =
    "absent: the process never reached Python's finalisation (killed, cut short, or not CPython), where holders are read";

pub(super) fn holders_note(report: &GrowthReport) -> &'static str {
    match report.period.ends {
        PeriodEnd::Finalization if report.holders_recorded => HOLDERS_NAMED,
        PeriodEnd::Finalization => HOLDERS_NOT_RECORDED,
        PeriodEnd::TraceEnd | PeriodEnd::LastEvent => HOLDERS_NO_FINALIZATION,
    }
}

pub(super) fn ends_name(ends: PeriodEnd) -> &'static str {
    match ends {
        PeriodEnd::Finalization => "finalization",
        PeriodEnd::TraceEnd => "end",
        PeriodEnd::LastEvent => "last-event",
    }
}

/// `values` as a row of block characters from 0 to their maximum, at most `width` wide (each
/// character the maximum of the values it stands for, so that a peak is never averaged away).
pub fn sparkline(values: &[u64], width: usize) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let columns = values.len().min(width);
    let column = |c: usize| {
        let from = c * values.len() / columns;
        let to = ((c + 1) * values.len() / columns).max(from + 1);
        values[from..to].iter().copied().max().unwrap_or(0)
    };
    let high = values.iter().copied().max().unwrap_or(0);
    (0..columns)
        .map(|c| match high {
            0 => BARS[0],
            _ => BARS[((column(c) as f64 / high as f64) * 7.0).round() as usize],
        })
        .collect()
}

fn owner_lines(out: &mut String, owner: &Owner, frames: &[Frame]) {
    match (&owner.frame, &owner.python) {
        (Some(native), python) => {
            let called_from = python
                .as_ref()
                .map(|p| format!(", called from {}", frame_text(p)))
                .unwrap_or_default();
            let _ = writeln!(out, "  owner: {}{called_from}", frame_text(native));
        }
        (None, Some(python)) => {
            let _ = writeln!(out, "  Python line: {}", frame_text(python));
        }
        (None, None) => {}
    }
    if frames.is_empty() {
        let _ = writeln!(out, "    (no stack recorded)");
    }
    for frame in frames {
        let _ = writeln!(out, "    {}", frame_text(frame));
    }
}

fn tally_text(tally: Tally) -> String {
    format!(
        "{} bytes in {} {}",
        thousands(tally.bytes),
        thousands(tally.blocks),
        if tally.blocks == 1 { "block" } else { "blocks" }
    )
}

pub fn to_text(report: &GrowthReport) -> String {
    let mut out = String::new();
    let p = &report.header.process;
    let _ = writeln!(
        out,
        "libleak growth report: {} (pid {}): {}",
        p.program,
        p.pid,
        p.argv.join(" ")
    );
    match &report.header.incomplete {
        None => {
            let _ = writeln!(out, "trace complete: the process exited normally");
        }
        Some(reason) => {
            let _ = writeln!(out, "trace INCOMPLETE: {reason}");
        }
    }
    let period = &report.period;
    let ends = match period.ends {
        PeriodEnd::Finalization => format!(
            "up to seq {}, where Python's finalisation began (everything is freed after it, which is no shrinkage)",
            thousands(period.last_seq)
        ),
        PeriodEnd::TraceEnd => format!(
            "up to the trace's end (seq {}); no Python finalisation was recorded",
            thousands(period.last_seq)
        ),
        PeriodEnd::LastEvent => format!(
            "up to the last event recorded (seq {}): the trace was cut short, so there was no finalisation",
            thousands(period.last_seq)
        ),
    };
    let samples = report.timeline.len();
    let _ = writeln!(
        out,
        "analysed: {} events {ends}; {} {}, one every {} events",
        thousands(period.events),
        thousands(samples as u64),
        if samples == 1 { "sample" } else { "samples" },
        thousands(period.interval)
    );
    let bytes: Vec<u64> = report.timeline.iter().map(|t| t.live_bytes).collect();
    if let Some(last) = report.timeline.last() {
        let _ = writeln!(
            out,
            "live memory: {} {} at the end of the period",
            sparkline(&bytes, 60),
            tally_text(Tally {
                blocks: last.live_blocks,
                bytes: last.live_bytes
            })
        );
    }
    let _ = writeln!(out, "holders: {}", holders_note(report));
    let total = report.growing.len() as u64 + report.omitted.leaks;
    let _ = writeln!(
        out,
        "{} growing {} of {} judged ({} sampled too briefly to judge); a site grows when the minimum of its live bytes rises across {} windows of its life: a significant trend, in more than half the steps, still in the last third, by at least {} bytes",
        thousands(total),
        if total == 1 { "site" } else { "sites" },
        thousands(report.sites_judged as u64),
        thousands(report.sites_too_short as u64),
        trend::WINDOWS,
        thousands(trend::MIN_BYTES)
    );
    if total == 0 {
        let _ = writeln!(out, "\nno growth");
    }
    for (rank, row) in report.growing.iter().enumerate() {
        row_text(&mut out, rank, row);
    }
    if report.omitted.leaks > 0 {
        let _ = writeln!(
            out,
            "\n… and {} more growing sites, {} bytes gained (use --limit 0 to list all)",
            thousands(report.omitted.leaks),
            thousands(report.omitted.bytes)
        );
    }
    if let Some(between) = &report.between {
        between_text(&mut out, between);
    }
    out
}

fn row_text(out: &mut String, rank: usize, row: &GrowthRow) {
    let per_second = match row.bytes_per_s {
        Some(rate) => format!("{} bytes per second", thousands(rate.round() as u64)),
        None => "per second unknown: the trace records no times".to_string(),
    };
    let _ = writeln!(
        out,
        "\n#{} grew {} bytes and {} blocks ({} bytes per window of {} events; {per_second})",
        rank + 1,
        thousands(row.growth_bytes),
        thousands(row.growth_blocks),
        thousands(row.bytes_per_window.round() as u64),
        thousands(row.window_events)
    );
    let start = row.series.iter().position(|&b| b > 0).unwrap_or(0);
    let _ = writeln!(
        out,
        "  live: {} {} at the end, since seq {}; rose in {} of {} windows",
        sparkline(&row.series[start..], 40),
        tally_text(Tally {
            blocks: row.live_blocks,
            bytes: row.live_bytes
        }),
        thousands(row.first_seq),
        row.rising_windows,
        trend::WINDOWS - 1
    );
    if !row.held_by.is_empty() {
        let holders: Vec<String> = row
            .held_by
            .iter()
            .map(|h| {
                let mut path = String::new();
                if let Some(expression) = &h.expression {
                    path.push_str(&format!(", as {expression}"));
                }
                if h.path.len() > 1 {
                    path.push_str(&format!(", through {}", h.path.join(" → ")));
                }
                format!(
                    "{} ({:.0}%, {}{path})",
                    h.name,
                    h.share * 100.0,
                    tally_text(Tally {
                        blocks: h.blocks,
                        bytes: h.bytes
                    })
                )
            })
            .collect();
        let _ = writeln!(out, "  held by: {}", holders.join("; "));
    }
    if !row.types.is_empty() {
        let types: Vec<String> = row
            .types
            .iter()
            .map(|t| {
                format!(
                    "{} ({})",
                    t.name,
                    tally_text(Tally {
                        blocks: t.blocks,
                        bytes: t.bytes
                    })
                )
            })
            .collect();
        let _ = writeln!(out, "  objects: {}", types.join("; "));
    }
    owner_lines(out, &row.owner, &row.frames);
}

fn between_text(out: &mut String, between: &Between) {
    let clipped = if between.clipped {
        " (the window reaches into finalisation: read up to where it began)"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "\nbetween seq {} and seq {}{clipped}: allocated in the window and still live at its end: {}; freed in the window, allocated before it: {}",
        thousands(between.from_seq),
        thousands(between.to_seq),
        tally_text(between.grown_total),
        tally_text(between.shrunk_total)
    );
    for (title, sign, rows, omitted) in [
        ("grew", '+', &between.grown, between.grown_omitted),
        ("shrank", '-', &between.shrunk, between.shrunk_omitted),
    ] {
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n{title}:");
        for (rank, row) in rows.iter().enumerate() {
            let _ = writeln!(out, "\n  #{} {sign}{}", rank + 1, tally_text(row.tally));
            owner_lines(out, &row.owner, &row.frames);
        }
        if omitted > 0 {
            let _ = writeln!(
                out,
                "\n  … and {} more sites (use --limit 0 to list all)",
                thousands(omitted as u64)
            );
        }
    }
}

#[cfg(test)]
pub(super) mod tests {

    use super::*;
    use crate::growth::sites::WindowSite;
    use crate::growth::{HeldBy, ObjectType, Period, TimelinePoint};
    use crate::model::{FrameKind, Omitted, TraceHeader};

    fn frame(kind: FrameKind, function: &str, line: u32) -> Frame {
        Frame {
            kind,
            function: Some(function.into()),
            file: Some("/abs/app.py".into()),
            line: Some(line),
            module: None,
            inlined: false,
            address: None,
            build_id_mismatch: false,
        }
    }

    /// A report with every optional part present, so that every key is written.
    pub(super) fn full_report(ends: PeriodEnd) -> GrowthReport {
        let frames = vec![
            frame(FrameKind::Native, "make", 12),
            frame(FrameKind::Python, "handle", 20),
        ];
        let owner = Owner {
            frame: Some(frames[0].clone()),
            python: Some(frames[1].clone()),
        };
        let site = WindowSite {
            frames: frames.clone(),
            owner: owner.clone(),
            tally: Tally { blocks: 1, bytes: 10 },
        };
        GrowthReport {
            trace_path: "t.trace".into(),
            header: TraceHeader::default(),
            period: Period {
                last_seq: 100,
                events: 100,
                interval: 10,
                ends,
            },
            timeline: vec![TimelinePoint {
                seq: 1,
                t_s: Some(0.5),
                live_bytes: 3,
                live_blocks: 1,
            }],
            growing: vec![GrowthRow {
                growth_bytes: 9000,
                growth_blocks: 9,
                live_bytes: 9100,
                live_blocks: 10,
                first_seq: 1,
                window_events: 10,
                bytes_per_window: 1000.0,
                bytes_per_s: Some(5.0),
                window_min_bytes: vec![0; trend::WINDOWS],
                rising_windows: 9,
                trend_z: 3.9,
                series: vec![0, 4000, 9100],
                frames: frames.clone(),
                owner,
                stacks: 1,
                held_by: vec![HeldBy {
                    name: "app._RESULTS".into(),
                    bytes: 9000,
                    blocks: 9,
                    share: 1.0,
                    path: vec!["dict".into(), "app.Result".into()],
                    expression: Some("app._RESULTS[…]".into()),
                }],
                types: vec![ObjectType {
                    name: "dict".into(),
                    bytes: 4000,
                    blocks: 9,
                }],
            }],
            omitted: Omitted::default(),
            sites_judged: 1,
            sites_too_short: 0,
            holders_recorded: false,
            between: Some(Between {
                from_seq: 1,
                to_seq: 50,
                clipped: false,
                grown: vec![site.clone()],
                shrunk: vec![site],
                grown_total: Tally::default(),
                shrunk_total: Tally::default(),
                grown_omitted: 0,
                shrunk_omitted: 0,
            }),
        }
    }

    #[test]
    fn the_text_ranks_rows_with_sparklines_and_says_why_holders_are_missing() {
        let text = to_text(&full_report(PeriodEnd::LastEvent));
        assert!(
            text.contains(
                "\n#1 grew 9,000 bytes and 9 blocks (1,000 bytes per window of 10 events; 5 bytes per second)\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("  live: ▄█ 9,100 bytes in 10 blocks at the end, since seq 1; rose in 9 of 9 windows\n"),
            "{text}"
        );
        assert!(
            text.contains("  owner: make at /abs/app.py:12, called from handle at /abs/app.py:20\n"),
            "{text}"
        );
        assert!(
            text.contains("holders: absent: the process never reached Python's finalisation"),
            "{text}"
        );
        assert!(
            text.contains("by the last event recorded") || text.contains("up to the last event recorded"),
            "{text}"
        );
        assert!(text.contains("\nbetween seq 1 and seq 50: "), "{text}");
        assert!(
            text.contains("\n  held by: app._RESULTS (100%, 9,000 bytes in 9 blocks, as app._RESULTS[…], through dict → app.Result)\n  objects: dict (4,000 bytes in 9 blocks)\n"),
            "{text}"
        );
        let finalized = to_text(&full_report(PeriodEnd::Finalization));
        assert!(finalized.contains("holders: not recorded: "), "{finalized}");
    }

    #[test]
    fn sparklines_scale_between_the_lowest_and_highest_value() {
        assert_eq!(sparkline(&[0, 1, 2, 3, 4, 5, 6, 7], 8), "▁▂▃▄▅▆▇█");
        assert_eq!(sparkline(&[5, 5, 5], 8), "███");
        assert_eq!(sparkline(&[0, 0], 8), "▁▁");
        assert_eq!(sparkline(&[0, 9, 0, 0, 0, 0, 0, 0, 0, 0], 5), "█▁▁▁▁");
        assert_eq!(sparkline(&[], 5), "");
    }
}
