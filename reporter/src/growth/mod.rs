//! The growth report (`libleak report --growth`): memory that is never lost but keeps growing
//! while the program runs (an unbounded module dict, a class-attribute list of listeners, a
//! cache without eviction), which finalisation frees, so that the leak report sees nothing.
//!
//! One replay pass feeds a [`timeline::Timeline`]: live bytes and blocks per allocation stack,
//! sampled at regular points of the event sequence, up to the start of CPython's
//! finalisation (after which everything is freed, which is no shrinkage), else to the
//! trace's end or its last event. The stacks that held memory at the end and changed more than
//! once are then symbolized and gathered into sites as the leak report's default grouping
//! does, plus the calling Python line ([`sites`]); each site's summed series is judged by
//! [`trend`]:
//!
//! - from the first sample where the site held memory to the end of the period, cut into 10
//!   windows, each read as its *minimum* live bytes (temporaries and sawtooth do not count);
//! - growing when those minima have a significant monotone upward trend (Mann–Kendall, one-
//!   sided p < 0.01), rose in more than half of the consecutive windows, still rose across the
//!   last third (a cache that fills and plateaus does not), and gained at least 4 KiB and 8
//!   blocks (or 64 KiB in fewer blocks); a site needs 20 samples to be judged.
//!
//! Growing sites are ranked by bytes gained. `--between` counts, per site, what a window of
//! the run allocated and left live at its end, and what it freed of older blocks. The time
//! axis is the event sequence number; [`clock::Clock`] turns it into seconds once traces
//! record times. Who holds a growing site's blocks comes from the scan made when finalisation
//! began ([`crate::replay::Holding`]): the names that reached them first.
//!
//! Must never change what the leak report decides: it reads the same trace through its own
//! observer and shares stages 3–6's code, not their results.

pub mod clock;
pub mod sites;
pub mod timeline;
pub mod trend;

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use libleak_format::{Alloc, Free, Holder, Mark};

use clock::Clock;
use sites::{Stacks, WindowSite};
use timeline::{Stop, Timeline};

use crate::model::{Frame, Omitted, Owner, Tally, TraceHeader};
use crate::options::{GrowthOptions, Moment};
use crate::replay::parents::ParentTraces;
use crate::replay::{Held, Holding, PathStep, ReplayError, ReplayObserver, Trace};
use crate::symbolize::holders::holder_name;
use crate::symbolize::Symbolizer;
use crate::ReadProgress;

/// Why a growth report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum GrowthError {
    #[error(transparent)]
    Replay(#[from] ReplayError),
    #[error(
        "--between {0}: this trace records no times (none before trace format 8 does); give event numbers, e.g. --between seq:1000 seq:5000"
    )]
    NoTimes(String),
    #[error("--between mark:{0}: the trace has no mark with that label")]
    NoMark(String),
    #[error("--between: the window ends (seq {to}) before it starts (seq {from})")]
    EmptyWindow { from: u64, to: u64 },
}

/// Where the analysed period ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeriodEnd {
    /// CPython's finalisation started: what follows is the teardown.
    Finalization,
    /// The trace's END record (a process that did not run CPython, or never finalised it).
    TraceEnd,
    /// The last event of a trace cut short (killed, crashed, still running).
    LastEvent,
}

/// The part of the run the report judges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period {
    pub last_seq: u64,
    pub events: u64,
    /// Events between two samples, at the end.
    pub interval: u64,
    pub ends: PeriodEnd,
}

/// One point of the process's timeline.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TimelinePoint {
    pub seq: u64,
    /// Seconds since the trace started; `None` when the trace records no times.
    pub t_s: Option<f64>,
    pub live_bytes: u64,
    pub live_blocks: u64,
}

/// One growing site.
#[derive(Clone, Debug)]
pub struct GrowthRow {
    pub growth_bytes: u64,
    pub growth_blocks: u64,
    /// Live at the end of the period.
    pub live_bytes: u64,
    pub live_blocks: u64,
    /// Sequence number of the first sample where the site held memory.
    pub first_seq: u64,
    /// Events in each of the site's windows.
    pub window_events: u64,
    pub bytes_per_window: f64,
    pub bytes_per_s: Option<f64>,
    pub window_min_bytes: Vec<u64>,
    pub rising_windows: usize,
    pub trend_z: f64,
    /// Live bytes at every timeline point.
    pub series: Vec<u64>,
    pub frames: Vec<Frame>,
    pub owner: Owner,
    /// Distinct stacks gathered in the site.
    pub stacks: usize,
    /// What held the site's blocks live when finalisation began, most bytes first (empty
    /// without the scan's holders).
    pub held_by: Vec<HeldBy>,
    /// The Python types of the objects among those blocks, most bytes first.
    pub types: Vec<ObjectType>,
}

/// One Python type among a growing site's objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectType {
    pub name: String,
    pub bytes: u64,
    pub blocks: u64,
}

/// `(name, bytes, blocks)` summed by name, most bytes first, cut at [`MAX_HOLDERS`]; and the
/// bytes of them all.
fn ranked_by_name(items: impl Iterator<Item = (String, u64, u64)>) -> (Vec<(String, u64, u64)>, u64) {
    let mut summed: Vec<(String, u64, u64)> = Vec::new();
    for (name, bytes, blocks) in items {
        match summed.iter_mut().find(|entry| entry.0 == name) {
            Some(entry) => {
                entry.1 += bytes;
                entry.2 += blocks;
            }
            None => summed.push((name, bytes, blocks)),
        }
    }
    let total = summed.iter().map(|entry| entry.1).sum();
    summed.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    summed.truncate(MAX_HOLDERS);
    (summed, total)
}

/// The Python types of the objects of `stacks` live when finalisation began, most bytes first.
fn object_types(trace: &Trace, stacks: impl Iterator<Item = u64>) -> Vec<ObjectType> {
    let Some(holding) = &trace.holding else {
        return Vec::new();
    };
    let types = stacks
        .flat_map(|stack| holding.types_of(stack))
        .filter_map(|&(id, bytes, blocks)| Some((holding.types.get(id as usize - 1)?.clone(), bytes, blocks)));
    ranked_by_name(types)
        .0
        .into_iter()
        .map(|(name, bytes, blocks)| ObjectType { name, bytes, blocks })
        .collect()
}

/// One holder of a growing site's blocks.
#[derive(Clone, Debug, PartialEq)]
pub struct HeldBy {
    pub name: String,
    pub bytes: u64,
    pub blocks: u64,
    /// Of the site's bytes any holder held.
    pub share: f64,
    /// The retention path: the Python types of the objects from the holder's own (first) to
    /// one of the site's blocks (last), as the scan's flood went; blocks that hold no object
    /// (a dict's table, a list's item array) are left out.
    pub path: Vec<String>,
    /// The same path as a Python expression, where its steps have names: the holder's name,
    /// then each attribute, key or index on the way (`__main__.STATE.sessions[…].payload`;
    /// `[…]` an item of a large container, `…` a reference Python does not name, such as a
    /// C extension's). None for a holder that is no Python name, or a path with no named
    /// step.
    pub expression: Option<String>,
}

/// Holders (and object types) listed per growing site at most.
const MAX_HOLDERS: usize = 5;

/// The holders of the blocks of `stacks` (trace stack ids) live when finalisation began. Root
/// words of one static (the elements of a C array) are one holder by name.
fn held_by(trace: &Trace, stacks: impl Iterator<Item = u64>, symbolizer: &mut Symbolizer) -> Vec<HeldBy> {
    let Some(holding) = &trace.holding else {
        return Vec::new();
    };
    // A site's blocks share few holders: name each once.
    let mut names: HashMap<u32, String> = HashMap::new();
    let mut held = Vec::new();
    // By name: the path of the stack whose blocks it holds the most of.
    let mut paths: HashMap<String, (u64, &Held)> = HashMap::new();
    for entry in stacks.flat_map(|stack| holding.holders_of(stack)) {
        let Some(holder) = holding.names.get(entry.holder as usize - 1) else {
            continue;
        };
        let name = names
            .entry(entry.holder)
            .or_insert_with(|| holder_name(trace, holder, symbolizer));
        let path = paths.entry(name.clone()).or_insert((0, entry));
        if entry.bytes > path.0 {
            *path = (entry.bytes, entry);
        }
        held.push((name.clone(), entry.bytes, entry.blocks));
    }
    let (ranked, total) = ranked_by_name(held.into_iter());
    let type_names = |path: &[PathStep]| -> Vec<String> {
        path.iter()
            .filter_map(|step| holding.types.get((step.object_type as usize).checked_sub(1)?).cloned())
            .collect()
    };
    ranked
        .into_iter()
        .map(|(name, bytes, blocks)| {
            let path = paths.get(&name).map(|(_, held)| holding.path(held));
            HeldBy {
                path: path.as_ref().map(|(path, _)| type_names(path)).unwrap_or_default(),
                expression: paths
                    .get(&name)
                    .zip(path.as_ref())
                    .and_then(|((_, held), (path, cut))| expression(&name, held, path, *cut, holding)),
                name,
                bytes,
                blocks,
                share: bytes as f64 / total.max(1) as f64,
            }
        })
        .collect()
}

/// The retention path of `held` as a Python expression from the holder named `name`, if the
/// holder is a Python name and some step of the path is named (see [`HeldBy::expression`]).
/// `cut`: the path does not reach back to the holder's own block.
fn expression(name: &str, held: &Held, path: &[PathStep], cut: bool, holding: &Holding) -> Option<String> {
    if !matches!(
        holding.names.get((held.holder as usize).checked_sub(1)?),
        Some(Holder::Python(_))
    ) {
        return None;
    }
    let mut text = name.to_string();
    if cut {
        text.push('…');
    }
    let mut named = false;
    for step in path.iter().skip(usize::from(!cut)) {
        match holding.steps.get((step.step as usize).wrapping_sub(1)) {
            Some(step_name) => {
                named |= !step_name.is_empty();
                text.push_str(step_name);
            }
            // A reference without a Python name, to an object: the expression cannot say
            // how it is reached. Blocks holding no object (tables, buffers) are the
            // plumbing of the object before them.
            None if step.object_type != 0 && !text.ends_with('…') => text.push('…'),
            None => {}
        }
    }
    named.then_some(text)
}

/// What a `--between` window allocated and left live, and what it freed of older blocks.
#[derive(Clone, Debug)]
pub struct Between {
    pub from_seq: u64,
    pub to_seq: u64,
    /// The window reaches past the analysed period (into finalisation): its end is read as
    /// the period's end.
    pub clipped: bool,
    /// Sites, largest first, cut at the limit; the totals count every site.
    pub grown: Vec<WindowSite>,
    pub shrunk: Vec<WindowSite>,
    pub grown_total: Tally,
    pub shrunk_total: Tally,
    /// Sites beyond the limit.
    pub grown_omitted: usize,
    pub shrunk_omitted: usize,
}

#[derive(Clone, Debug)]
pub struct GrowthReport {
    pub trace_path: String,
    pub header: TraceHeader,
    pub period: Period,
    pub timeline: Vec<TimelinePoint>,
    /// Growing sites, most growth first, cut at the limit.
    pub growing: Vec<GrowthRow>,
    /// Growing sites beyond the limit (`bytes`: their growth).
    pub omitted: Omitted,
    /// Sites sampled often enough to be judged, and those that were not.
    pub sites_judged: usize,
    pub sites_too_short: usize,
    pub between: Option<Between>,
    /// The scan at finalisation named holders (the trace has them).
    pub holders_recorded: bool,
}

impl GrowthReport {
    /// The most bytes one growing site gained (0 when none grows): `--fail-on-growth`'s
    /// measure.
    pub fn largest_growth(&self) -> u64 {
        // Rows are ranked by growth, and those cut by the limit are the smallest.
        self.growing.first().map_or(0, |row| row.growth_bytes)
    }
}

/// A `--between` end as a sequence number.
fn resolve(moment: &Moment, clock: &Clock, marks: &[Mark]) -> Result<u64, GrowthError> {
    match moment {
        Moment::Seq(seq) => Ok(*seq),
        Moment::Seconds(seconds) => clock
            .seq_at(*seconds)
            .ok_or_else(|| GrowthError::NoTimes(format!("{seconds}s"))),
        Moment::Mark(label) => marks
            .iter()
            .find(|mark| &mark.label == label)
            .map(|mark| mark.seq)
            .ok_or_else(|| GrowthError::NoMark(label.clone())),
    }
}

/// The clock and the marks of a trace, from a first reading (for `--between` in seconds or
/// marks, which the counting pass needs as sequence numbers before it starts).
struct TimesOnly(Vec<(u64, u64)>);

impl ReplayObserver for TimesOnly {
    fn alloc(&mut self, _alloc: &Alloc) {}
    fn free(&mut self, _free: &Free) {}
    fn finalizing(&mut self) {}
    fn time(&mut self, seq: u64, time_ns: u64) {
        self.0.push((seq, time_ns));
    }
}

fn open(path: &Path) -> Result<(BufReader<File>, u64), GrowthError> {
    let file = File::open(path).map_err(ReplayError::Open)?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    Ok((BufReader::with_capacity(1 << 20, file), size))
}

/// Reads the trace at `path` and builds its growth report.
pub fn report(
    path: &Path,
    options: &GrowthOptions,
    symbolizer: &mut Symbolizer,
    progress: &mut dyn ReadProgress,
) -> Result<GrowthReport, GrowthError> {
    let window = match &options.between {
        Some((from, to)) => {
            let needs_first_pass = |m: &Moment| !matches!(m, Moment::Seq(_));
            let (clock, marks) = if needs_first_pass(from) || needs_first_pass(to) {
                let (input, _) = open(path)?;
                let mut times = TimesOnly(Vec::new());
                let trace = Trace::read_observing(input, &mut |_| {}, &mut times)?;
                (Clock::from_points(times.0), trace.marks)
            } else {
                (Clock::default(), Vec::new())
            };
            let (from, to) = (resolve(from, &clock, &marks)?, resolve(to, &clock, &marks)?);
            if to < from {
                return Err(GrowthError::EmptyWindow { from, to });
            }
            Some((from, to))
        }
        None => None,
    };
    let (input, size) = open(path)?;
    let mut timeline = Timeline::new(window);
    // A forked child's inherited blocks are read from its parent's trace, untold to the
    // timeline: the child's growth is its own.
    let trace = Trace::read_with(
        input,
        &mut |read| progress.advance(read, size),
        &mut timeline,
        &mut ParentTraces::default(),
        Some(path),
    );
    progress.finish();
    let trace = trace?;
    timeline.finish(Stop::TraceEnd);
    let clock = Clock::from_points(std::mem::take(&mut timeline.times));
    Ok(build(
        &trace,
        &timeline,
        &clock,
        &path.display().to_string(),
        symbolizer,
        options,
    ))
}

/// The growth report of a replayed trace and its timeline.
pub fn build(
    trace: &Trace,
    timeline: &Timeline,
    clock: &Clock,
    trace_path: &str,
    symbolizer: &mut Symbolizer,
    options: &GrowthOptions,
) -> GrowthReport {
    let (events, interval) = timeline.events();
    let last = timeline.samples.last().copied().unwrap_or_default();
    let period = Period {
        last_seq: last.seq,
        events,
        interval,
        ends: match timeline.stop {
            Some(Stop::Finalization) => PeriodEnd::Finalization,
            _ if trace.header.end.is_some() => PeriodEnd::TraceEnd,
            _ => PeriodEnd::LastEvent,
        },
    };
    let stacks = Stacks::of(trace, timeline, symbolizer, options.show_interpreter_frames);
    let mut rows = Vec::new();
    let (mut judged, mut too_short) = (0, 0);
    for site in sites::sites(timeline, &stacks) {
        let Some(start) = site.bytes.iter().position(|&b| b > 0) else {
            continue;
        };
        let Some(verdict) = trend::judge(&site.bytes[start..], &site.blocks[start..]) else {
            too_short += 1;
            continue;
        };
        judged += 1;
        if !verdict.growing {
            continue;
        }
        let first = timeline.samples[start];
        let steps = (trend::WINDOWS - 1) as f64;
        let bytes_per_window = verdict.growth_bytes as f64 / steps;
        let window_seconds = clock
            .seconds_between(first.seq, last.seq)
            .map(|s| s / trend::WINDOWS as f64);
        rows.push(GrowthRow {
            growth_bytes: verdict.growth_bytes,
            growth_blocks: verdict.growth_blocks,
            live_bytes: site.bytes.last().copied().unwrap_or(0),
            live_blocks: site.blocks.last().copied().unwrap_or(0),
            first_seq: first.seq,
            window_events: last.events.saturating_sub(first.events) / trend::WINDOWS as u64,
            bytes_per_window,
            bytes_per_s: window_seconds.map(|s| bytes_per_window / s),
            window_min_bytes: verdict.window_bytes,
            rising_windows: verdict.rising_steps,
            trend_z: verdict.trend_z,
            series: site.bytes,
            frames: site.frames,
            owner: site.owner,
            stacks: site.stacks.len(),
            held_by: held_by(
                trace,
                site.stacks.iter().map(|&index| timeline.stacks[index as usize].stack),
                symbolizer,
            ),
            types: object_types(
                trace,
                site.stacks.iter().map(|&index| timeline.stacks[index as usize].stack),
            ),
        });
    }
    rows.sort_by(|a, b| {
        b.growth_bytes
            .cmp(&a.growth_bytes)
            .then(b.growth_blocks.cmp(&a.growth_blocks))
    });
    let shown = if options.limit == 0 {
        rows.len()
    } else {
        options.limit.min(rows.len())
    };
    let rest = rows.split_off(shown);
    let between = timeline.window.as_ref().map(|window| {
        let mut grown = sites::window_sites(&window.grown, timeline, &stacks);
        let mut shrunk = sites::window_sites(&window.shrunk, timeline, &stacks);
        let total = |rows: &[WindowSite]| {
            rows.iter().fold(Tally::default(), |mut sum, row| {
                sum.add(row.tally.blocks, row.tally.bytes);
                sum
            })
        };
        let (grown_total, shrunk_total) = (total(&grown), total(&shrunk));
        let cut = |rows: &mut Vec<WindowSite>| {
            let keep = if options.limit == 0 {
                rows.len()
            } else {
                options.limit.min(rows.len())
            };
            rows.split_off(keep).len()
        };
        Between {
            from_seq: window.from,
            to_seq: window.to,
            clipped: period.ends == PeriodEnd::Finalization && window.to > period.last_seq,
            grown_total,
            shrunk_total,
            grown_omitted: cut(&mut grown),
            shrunk_omitted: cut(&mut shrunk),
            grown,
            shrunk,
        }
    });
    GrowthReport {
        trace_path: trace_path.to_string(),
        header: trace.header.clone(),
        period,
        timeline: timeline
            .samples
            .iter()
            .map(|s| TimelinePoint {
                seq: s.seq,
                t_s: clock.seconds_at(s.seq),
                live_bytes: s.live_bytes,
                live_blocks: s.live_blocks,
            })
            .collect(),
        growing: rows,
        omitted: Omitted {
            leaks: rest.len() as u64,
            bytes: rest.iter().map(|r| r.growth_bytes).sum(),
            blocks: rest.iter().map(|r| r.growth_blocks).sum(),
        },
        sites_judged: judged,
        sites_too_short: too_short,
        between,
        holders_recorded: trace.holding.is_some(),
    }
}
