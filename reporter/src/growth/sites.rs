//! Stacks become sites: each stack that may add to a site's growth (see [`holds_at_end`]) is
//! symbolized and merged as the leak report does, and joins the site the leak report's
//! default grouping would put it in ([`group::row_key`] by site: the frames up to the owner),
//! keyed also by the innermost Python line that called into it, so that Python code
//! allocating through the interpreter (no owner outside it) is told apart by line. A site's
//! series is the sum of its stacks'.
//!
//! Must never judge growth (that is [`super::trend`]'s) nor read anything but the trace's
//! modules through the symbolizer.

use std::collections::HashMap;

use super::timeline::{StackSeries, Timeline};
use crate::attribute::roles::Roles;
use crate::group;
use crate::model::{Frame, Owner, Tally};
use crate::replay::Trace;
use crate::symbolize::{merge, SymbolTable, Symbolizer};

/// One site's live memory at every sample of the timeline.
#[derive(Clone, Debug)]
pub struct Site {
    /// The frames of its stack holding the most at the end.
    pub frames: Vec<Frame>,
    pub owner: Owner,
    /// Indices into [`Timeline::stacks`].
    pub stacks: Vec<u32>,
    pub bytes: Vec<u64>,
    pub blocks: Vec<u64>,
}

/// A site's blocks counted in a `--between` window.
#[derive(Clone, Debug)]
pub struct WindowSite {
    pub frames: Vec<Frame>,
    pub owner: Owner,
    pub tally: Tally,
}

/// The frames that decide a stack's site: the leak report's site, and the Python line that
/// called it when that is further out.
pub fn site_key(frames: &[Frame], roles: &Roles) -> Vec<Frame> {
    let mut key = group::site_frames(frames, roles);
    let owner = roles.owner(frames);
    if let Some(line) = roles.calling_python_line(frames, owner) {
        if line >= key.len() {
            key.push(frames[line].clone());
        }
    }
    key
}

fn owner_of(frames: &[Frame], roles: &Roles) -> Owner {
    let owner = roles.owner(frames);
    Owner {
        frame: owner.map(|i| frames[i].clone()),
        python: roles.calling_python_line(frames, owner).map(|i| frames[i].clone()),
    }
}

/// The merged frames of every stack the timeline (and its window) saw live.
pub struct Stacks {
    pub merged: HashMap<u64, Vec<Frame>>,
    pub roles: Roles,
}

impl Stacks {
    pub fn of(
        trace: &Trace,
        timeline: &Timeline,
        symbolizer: &mut Symbolizer,
        show_interpreter_frames: bool,
    ) -> Stacks {
        let mut ids: Vec<u64> = timeline
            .stacks
            .iter()
            .filter(|s| holds_at_end(s))
            .map(|s| s.stack)
            .collect();
        if let Some(window) = &timeline.window {
            for index in window.grown.keys().chain(window.shrunk.keys()) {
                ids.push(timeline.stacks[*index as usize].stack);
            }
        }
        ids.sort_unstable();
        ids.dedup();
        let symbols = SymbolTable::of_stacks(trace, &ids, symbolizer);
        Stacks {
            merged: merge::merged_stacks(trace, &ids, &symbols, show_interpreter_frames),
            roles: Roles::of(&trace.header),
        }
    }

    fn frames(&self, series: &StackSeries) -> &[Frame] {
        self.merged.get(&series.stack).map_or(&[], Vec::as_slice)
    }
}

/// Whether a stack may add to its site's growth: it held memory at the last sample (where the
/// site's last window ends) and its live memory changed at more than one sample. A stack
/// allocated once and kept (most of what imports build) cannot keep growing by itself; left
/// out, it spares symbolizing thousands of stacks, which would cost several times the leak
/// report. The price: a site that grows only through many stacks that each step once (a
/// different call path per request) is not seen.
pub fn holds_at_end(series: &StackSeries) -> bool {
    series.entries.len() >= 2 && series.entries.last().is_some_and(|entry| entry.bytes > 0)
}

/// Every site of the stacks that may add to growth, with its series (the sum of theirs).
pub fn sites(timeline: &Timeline, stacks: &Stacks) -> Vec<Site> {
    let samples = timeline.samples.len();
    let mut index_of: HashMap<Vec<Frame>, usize> = HashMap::new();
    let mut members: Vec<Vec<u32>> = Vec::new();
    for (index, series) in timeline.stacks.iter().enumerate() {
        if !holds_at_end(series) {
            continue;
        }
        let key = site_key(stacks.frames(series), &stacks.roles);
        let site = *index_of.entry(key).or_insert_with(|| {
            members.push(Vec::new());
            members.len() - 1
        });
        members[site].push(index as u32);
    }
    members
        .into_iter()
        .map(|member| {
            let mut bytes = vec![0i128; samples + 1];
            let mut blocks = vec![0i128; samples + 1];
            for &index in &member {
                let (mut last_bytes, mut last_blocks) = (0i128, 0i128);
                for entry in &timeline.stacks[index as usize].entries {
                    let at = (entry.sample as usize).min(samples);
                    bytes[at] += i128::from(entry.bytes) - last_bytes;
                    blocks[at] += i128::from(entry.blocks) - last_blocks;
                    (last_bytes, last_blocks) = (i128::from(entry.bytes), i128::from(entry.blocks));
                }
            }
            let running = |deltas: Vec<i128>| -> Vec<u64> {
                let mut sum = 0i128;
                deltas[..samples]
                    .iter()
                    .map(|d| {
                        sum += d;
                        u64::try_from(sum.max(0)).unwrap_or(u64::MAX)
                    })
                    .collect()
            };
            let largest = member
                .iter()
                .copied()
                .max_by_key(|&i| {
                    let series = &timeline.stacks[i as usize];
                    (series.entries.last().map_or(0, |e| e.bytes), series.entries.len())
                })
                .unwrap_or(0);
            let frames = timeline
                .stacks
                .get(largest as usize)
                .map(|s| stacks.frames(s).to_vec())
                .unwrap_or_default();
            Site {
                owner: owner_of(&frames, &stacks.roles),
                frames,
                stacks: member,
                bytes: running(bytes),
                blocks: running(blocks),
            }
        })
        .collect()
}

/// The window's counts (by index into [`Timeline::stacks`]) gathered by site, largest first.
pub fn window_sites(
    tallies: &HashMap<u32, Tally, impl std::hash::BuildHasher>,
    timeline: &Timeline,
    stacks: &Stacks,
) -> Vec<WindowSite> {
    let mut rows: Vec<(WindowSite, u64)> = Vec::new();
    let mut index_of: HashMap<Vec<Frame>, usize> = HashMap::new();
    let mut ordered: Vec<(&u32, &Tally)> = tallies.iter().collect();
    ordered.sort_by_key(|(index, _)| **index);
    for (&index, tally) in ordered {
        let Some(series) = timeline.stacks.get(index as usize) else {
            continue;
        };
        let frames = stacks.frames(series);
        let key = site_key(frames, &stacks.roles);
        let row = *index_of.entry(key).or_insert_with(|| {
            rows.push((
                WindowSite {
                    frames: frames.to_vec(),
                    owner: owner_of(frames, &stacks.roles),
                    tally: Tally::default(),
                },
                0,
            ));
            rows.len() - 1
        });
        let (site, largest) = &mut rows[row];
        site.tally.add(tally.blocks, tally.bytes);
        // The row shows the stack that holds the most of it.
        if tally.bytes > *largest {
            *largest = tally.bytes;
            site.frames = frames.to_vec();
            site.owner = owner_of(frames, &stacks.roles);
        }
    }
    let mut rows: Vec<WindowSite> = rows.into_iter().map(|(site, _)| site).collect();
    rows.sort_by(|a, b| {
        b.tally
            .bytes
            .cmp(&a.tally.bytes)
            .then(b.tally.blocks.cmp(&a.tally.blocks))
    });
    rows
}
