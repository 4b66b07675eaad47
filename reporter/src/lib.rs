//! The reporter as a library: a trace file in, a [`Report`] out, through one stage after
//! another (each a module, in this order):
//!
//! 1. [`replay`]: read the trace into the process header, module map, stack nodes and the
//!    blocks live at exit ([`live`]);
//! 2. [`classify`]: count the live blocks by stack and by the class the exit scan gave them;
//! 3. [`symbolize`]: turn native addresses into functions and lines, offline, from the
//!    recorded module map;
//! 4. [`symbolize::merge`]: splice Python frames into native stacks and hide the plumbing;
//! 5. [`attribute`]: decide who owns each stack, what the runtime left by itself, what is
//!    suppressed;
//! 6. [`group`]: gather rows, rank them, apply the limit.
//!
//! [`tests_of`] then names, in a test run's trace, the tests during which each row's blocks
//! were allocated.
//!
//! [`growth`] is the other report: memory that stays reachable but keeps growing while the
//! program runs, judged from the same replay and shared stages 3–6.
//!
//! [`processes`] gathers several processes' reports into one (a leak a fork child inherited
//! shown once). [`render`] turns a report into text or JSON. [`model`] is the vocabulary all stages share
//! and [`options`] what the user asked for; each stage imports only those and the stages
//! before it. [`run`] runs a command under libleak and finds its traces. [`diff`] compares
//! two finished reports by site (`libleak diff`). The `libleak`
//! binary is a thin CLI over this.
//!
//! Nothing here may panic on any input file (every failure is a typed error), and no stage
//! may import a later one.
#![forbid(unsafe_code)]

pub mod attribute;
pub mod classify;
pub mod diff;
pub mod group;
pub mod growth;
pub mod live;
pub mod model;
pub mod options;
pub mod processes;
pub mod render;
pub mod replay;
pub mod run;
pub mod symbolize;
pub mod tests_of;

use std::path::Path;

pub use model::Report;
pub use options::Options;

use attribute::roles::Roles;
use replay::parents::ParentTraces;
use replay::{ReplayError, Trace};
use symbolize::{merge, SymbolTable, Symbolizer};

/// Told how far the reading of a trace has got.
pub trait ReadProgress {
    /// `read` bytes of the file's `size` are read; called now and then, and once at the end.
    fn advance(&mut self, read: u64, size: u64);
    /// The trace is read (or could not be): the remaining stages take over.
    fn finish(&mut self) {}
}

/// Ignores progress.
impl ReadProgress for () {
    fn advance(&mut self, _read: u64, _size: u64) {}
}

/// Reads the trace at `path` and builds its report.
pub fn report(
    path: &Path,
    options: &Options,
    symbolizer: &mut Symbolizer,
    progress: &mut dyn ReadProgress,
) -> Result<Report, ReplayError> {
    report_in_family(path, options, symbolizer, progress, &mut ParentTraces::default())
}

/// As [`report`], reading a forked child's inherited blocks through `parents`, which keeps
/// the parents' traces read for their other children.
pub fn report_in_family(
    path: &Path,
    options: &Options,
    symbolizer: &mut Symbolizer,
    progress: &mut dyn ReadProgress,
    parents: &mut ParentTraces,
) -> Result<Report, ReplayError> {
    let trace = Trace::open_in_family(path, &mut |read, size| progress.advance(read, size), parents);
    progress.finish();
    let trace = trace?;
    // Only a process that died before its exit scan needs to know (see `build_in_family`).
    let child = trace.header.fork.is_some()
        || (died_before_its_scan(&trace) && parents.has_traced_parent(&trace.header.process, path));
    Ok(build_in_family(
        &trace,
        &path.display().to_string(),
        symbolizer,
        options,
        child,
    ))
}

/// Whether the process ended before its exit scan: killed, crashed or aborted.
fn died_before_its_scan(trace: &Trace) -> bool {
    trace.header.reachability.is_none()
        && match &trace.header.incomplete {
            Some(model::Incompleteness::Truncated { .. }) => true,
            Some(model::Incompleteness::AbnormalExit(end)) => end.kind == libleak_format::ExitKind::Abort,
            None => false,
        }
}

/// The report of a replayed trace; `trace_path` is how the report names it.
pub fn build(trace: &Trace, trace_path: &str, symbolizer: &mut Symbolizer, options: &Options) -> Report {
    build_in_family(trace, trace_path, symbolizer, options, trace.header.fork.is_some())
}

/// [`build`], told whether the process was started by a traced process (`child`): a child
/// that died before its exit scan, as a pool's terminated worker does, judged nothing of what
/// it held then (see [`model::Summary::unjudged`]).
fn build_in_family(
    trace: &Trace,
    trace_path: &str,
    symbolizer: &mut Symbolizer,
    options: &Options,
    child: bool,
) -> Report {
    let tallies = classify::tally(trace);
    // Reachable blocks are only counted unless listed: their stacks need no symbols.
    // Inherited blocks a child never judged are not listed either (see attribute).
    let needs_frames = |tally: &&classify::StackTally| {
        !tally.unjudged_inheritance() && (options.show_reachable || model::Class::of(tally.class).is_leak())
    };
    let stacks = classify::stacks(tallies.iter().filter(needs_frames));
    let symbols = SymbolTable::of_stacks(trace, &stacks, symbolizer);
    let merged = merge::merged_stacks(trace, &stacks, &symbols, options.show_interpreter_frames);
    let roles = Roles::of(&trace.header);
    let ended_by_exec = trace
        .header
        .end
        .as_ref()
        .is_some_and(|end| end.kind == libleak_format::ExitKind::Exec);
    // A child that ended before its exit scan (killed, as pools terminate their workers, or
    // aborted): what it held then was never judged. A process that ran with the scan off, or
    // whose scan ran out of time, still lists its unclassified blocks.
    let child_ended_unjudged = child && died_before_its_scan(trace);
    let (mut summary, listed) =
        attribute::attribute(&tallies, &merged, &roles, options, ended_by_exec, child_ended_unjudged);
    summary
        .inherited_unjudged
        .add(trace.inherited_unjudged.blocks, trace.inherited_unjudged.bytes);
    let (mut leaks, omitted) = group::group(&listed, &roles, options, &trace.object_types);
    tests_of::attribute_tests(trace, &listed, &roles, options, &mut leaks);
    Report {
        trace_path: trace_path.to_string(),
        header: trace.header.clone(),
        summary,
        group_by: options.group_by,
        leaks,
        omitted,
        inherited_shown_elsewhere: Default::default(),
    }
}
