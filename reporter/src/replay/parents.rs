//! A forked child's inheritance: the blocks live in its parent when it forked, read from the
//! parent's trace up to the byte the child's FORK record names. The parent's replay is kept
//! between children ([`ParentTraces`]): the children of one parent fork at growing offsets,
//! and each is read on from where the last one left it, so a family of a thousand workers
//! reads its parent's trace once (when its traces are read in the order they were forked).
//!
//! The ways to open a trace file live here too ([`Trace::open`] and its variants): a file's
//! trace may be a fork child's.
//!
//! Must never fail a child's report: a parent's trace that is gone, another process's or
//! damaged makes its inheritance unknown, said in the child's report, and nothing more.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use libleak_format::{ForkInfo, Record, TraceReader};

use super::reading::{Inheritance, Replay};
use super::{ReplayError, Trace};

/// How many parents' replays are kept at a time.
const KEPT: usize = 4;
/// How deep a chain of forks is followed (a child of a child of …).
const MAX_DEPTH: u32 = 16;

/// Reads parents' traces, keeping the latest [`KEPT`] replays for the next children.
#[derive(Default)]
pub struct ParentTraces {
    kept: Vec<ParentReplay>,
    depth: u32,
    /// By directory: the process (pid, start time) of each trace there, listed when a
    /// parent's trace is not where the child's FORK record says (traces renamed or moved, as
    /// `libleak run` does when it delivers them).
    directories: HashMap<PathBuf, Vec<(u32, u64, PathBuf)>>,
}

/// A parent's trace read up to some chunk boundary.
struct ParentReplay {
    path: PathBuf,
    pid: u32,
    start_time_unix_ns: u64,
    reader: TraceReader<BufReader<File>>,
    replay: Replay,
}

impl ParentReplay {
    /// Opens the first of `candidates` that is the trace of the parent `fork` names.
    fn open(candidates: &[PathBuf], fork: &ForkInfo, parents: &mut ParentTraces) -> Result<ParentReplay, String> {
        let mut reasons = Vec::new();
        for path in candidates {
            match ParentReplay::open_one(path, fork, parents) {
                Ok(parent) => return Ok(parent),
                Err(reason) => reasons.push(reason),
            }
        }
        reasons.dedup();
        Err(reasons.join("; "))
    }

    fn open_one(path: &Path, fork: &ForkInfo, parents: &mut ParentTraces) -> Result<ParentReplay, String> {
        let shown = path.display();
        // The path comes from the child's trace: never open a device or a pipe through it.
        let metadata =
            std::fs::metadata(path).map_err(|e| format!("the parent's trace {shown} cannot be opened ({e})"))?;
        if !metadata.is_file() {
            return Err(format!("the parent's trace {shown} is not a regular file"));
        }
        let file = File::open(path).map_err(|e| format!("the parent's trace {shown} cannot be opened ({e})"))?;
        let mut reader = TraceReader::new(BufReader::with_capacity(1 << 20, file))
            .map_err(|e| format!("the parent's trace {shown} cannot be read ({e})"))?;
        let first = reader
            .next_record_within(fork.parent_trace_bytes)
            .map_err(|e| format!("the parent's trace {shown} cannot be read ({e})"))?;
        let Some(Record::Process(process)) = first else {
            return Err(format!("the parent's trace {shown} does not start with its process"));
        };
        if process.pid != fork.parent_pid || process.start_time_unix_ns != fork.parent_start_time_unix_ns {
            return Err(format!(
                "{shown} is the trace of another process (pid {}) than the parent",
                process.pid
            ));
        }
        let mut replay = Replay::default();
        replay.hands_on_inheritance = true;
        replay.handle(&mut Record::Process(process.clone()), parents, Some(path));
        Ok(ParentReplay {
            path: path.to_path_buf(),
            pid: process.pid,
            start_time_unix_ns: process.start_time_unix_ns,
            reader,
            replay,
        })
    }

    fn is_parent_in(&self, fork: &ForkInfo) -> bool {
        self.pid == fork.parent_pid
            && self.start_time_unix_ns == fork.parent_start_time_unix_ns
            && self.reader.bytes_read() <= fork.parent_trace_bytes
    }

    /// Reads on up to byte `limit`, which must be a chunk boundary the file reaches.
    fn advance_to(&mut self, limit: u64, parents: &mut ParentTraces) -> Result<(), String> {
        let shown = self.path.display().to_string();
        loop {
            match self.reader.next_record_within(limit) {
                Ok(Some(mut record)) => self.replay.handle(&mut record, parents, Some(&self.path)),
                Ok(None) => break,
                Err(e) => return Err(format!("the parent's trace {shown} cannot be read ({e})")),
            }
        }
        let reached = self.reader.bytes_read();
        if !self.reader.damage().is_empty() {
            return Err(format!("the parent's trace {shown} is damaged before the fork"));
        }
        if reached != limit {
            return Err(format!(
                "the parent's trace {shown} ends at byte {reached}, before the fork (byte {limit})"
            ));
        }
        Ok(())
    }
}

impl ParentTraces {
    /// Where the parent's trace may be: where the parent wrote it, beside the child's under
    /// the same name (traces moved or copied together), and any trace beside the child's
    /// whose process is the parent (traces renamed).
    fn candidates(&mut self, fork: &ForkInfo, child_trace: Option<&Path>) -> Vec<PathBuf> {
        let written = PathBuf::from(&fork.parent_trace);
        let mut candidates = vec![written.clone()];
        let Some(dir) = child_trace.and_then(Path::parent) else {
            return candidates;
        };
        if let Some(name) = written.file_name() {
            candidates.push(dir.join(name));
        }
        if !candidates.iter().any(|path| path.is_file()) {
            let listed = self
                .directories
                .entry(dir.to_path_buf())
                .or_insert_with(|| processes_in(dir));
            candidates.extend(
                listed
                    .iter()
                    .filter(|(pid, start, _)| *pid == fork.parent_pid && *start == fork.parent_start_time_unix_ns)
                    .map(|(_, _, path)| path.clone()),
            );
        }
        candidates.dedup();
        candidates
    }
}

impl ParentTraces {
    /// Whether the process `child` (whose trace is `child_trace`) was started by a traced
    /// process: a trace beside it is its parent's (that pid, started before it). A worker
    /// that `spawn` or `forkserver` started is no fork child, but its parent was traced.
    pub fn has_traced_parent(&mut self, child: &libleak_format::ProcessInfo, child_trace: &Path) -> bool {
        let Some(dir) = child_trace.parent() else {
            return false;
        };
        let listed = self
            .directories
            .entry(dir.to_path_buf())
            .or_insert_with(|| processes_in(dir));
        listed
            .iter()
            .any(|&(pid, start, _)| pid == child.parent_pid && start < child.start_time_unix_ns)
    }
}

/// The process of every trace in `dir`: (pid, start time, path).
fn processes_in(dir: &Path) -> Vec<(u32, u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            if path.extension()? != "trace" || !path.is_file() {
                return None;
            }
            let file = File::open(&path).ok()?;
            let mut reader = TraceReader::new(BufReader::with_capacity(1 << 16, file)).ok()?;
            match reader.next_record().ok()?? {
                Record::Process(process) => Some((process.pid, process.start_time_unix_ns, path)),
                _ => None,
            }
        })
        .collect()
}

impl Inheritance for ParentTraces {
    fn at_fork(
        &mut self,
        fork: &ForkInfo,
        child_trace: Option<&Path>,
        inherit: &mut dyn FnMut(&Replay),
    ) -> Result<(), String> {
        if fork.parent_trace.is_empty() {
            return Err("the trace does not name its parent's".to_string());
        }
        if self.depth >= MAX_DEPTH {
            return Err(format!("more than {MAX_DEPTH} forks deep"));
        }
        self.depth += 1;
        let kept = self.kept.iter().position(|parent| parent.is_parent_in(fork));
        let parent = match kept {
            Some(index) => Ok(self.kept.remove(index)),
            None => {
                let candidates = self.candidates(fork, child_trace);
                ParentReplay::open(&candidates, fork, self)
            }
        };
        let outcome = parent.and_then(|mut parent| {
            let advanced = parent.advance_to(fork.parent_trace_bytes, self);
            if advanced.is_ok() {
                inherit(&parent.replay);
                if self.kept.len() >= KEPT {
                    self.kept.remove(0);
                }
                self.kept.push(parent);
            }
            advanced
        });
        self.depth -= 1;
        outcome
    }
}

impl Trace {
    /// Reads the trace at `path`; a forked child's inherited blocks come from its parent's
    /// trace, looked for where [`ParentTraces`] says.
    pub fn open(path: &Path) -> Result<Trace, ReplayError> {
        Trace::open_with_progress(path, &mut |_, _| {})
    }

    /// As [`Trace::open`], calling `progress` with the bytes of the file read so far and its
    /// size, now and then (every few hundred thousand records) and once at the end.
    pub fn open_with_progress(path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<Trace, ReplayError> {
        Trace::open_in_family(path, progress, &mut ParentTraces::default())
    }

    /// As [`Trace::open_with_progress`], with the parents' traces read through `parents`
    /// (which keeps them for the next child of the same parent).
    pub fn open_in_family(
        path: &Path,
        progress: &mut dyn FnMut(u64, u64),
        parents: &mut dyn Inheritance,
    ) -> Result<Trace, ReplayError> {
        let file = File::open(path).map_err(ReplayError::Open)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Trace::read_sized(
            BufReader::with_capacity(1 << 20, file),
            Some(size),
            &mut |read| progress(read, size),
            &mut (),
            parents,
            Some(path),
        )
    }
}
