//! What a reachability scan is given: the blocks live, the roots' context (modules, the
//! exiting thread, CPython's objects) and what is already known of the process (fork,
//! garbage awaiting collection, stale words, each block's age).
//!
//! Only data: the scan itself is in the parent module.

use std::time::Duration;

use libleak_format::Module;

use super::stand_in::WrittenInheritance;
use super::{ExitingThread, StaleWords};
use crate::python::gc::GcObjects;
use crate::python::holders::Namer;

pub struct ScanInput<'a> {
    /// (address, size) of every block live at exit that the scan judges.
    pub blocks: Vec<(u64, u64)>,
    /// In a forked child judging only its own blocks: where the inherited blocks it may have
    /// written pointers into lie. Those holding one are read as roots, reachable whatever
    /// points to them, and never judged.
    pub inheritance: Option<WrittenInheritance<'a>>,
    pub modules: &'a [Module],
    pub own_module: Option<&'a Module>,
    pub exiting: Option<ExitingThread>,
    pub python: Option<GcObjects>,
    /// Set to name the holders of reachable blocks (the scan at Python's finalisation).
    pub namer: Option<Namer>,
    pub time_limit: Duration,
    /// Every block judged was allocated since this process was forked, and it has not forked
    /// since: memory it has not written to since the fork holds what it held then, nothing
    /// that points into one, so roots are read only on pages written since.
    pub judged_allocated_since_fork: bool,
    /// The process forked or was forked (see [`crate::sys::memory::MemoryReader::keep_pages_shared`]).
    pub pages_shared: bool,
    /// Blocks (addresses among `blocks`, oldest first) that were garbage awaiting collection
    /// when CPython's finalisation began, and outlived the collections finalisation runs:
    /// the collector cannot free them (see [`super::structure::structures`]).
    pub survived_collection: Vec<u64>,
    /// Free-list slots that still name an object CPython handed out again, and words of the
    /// interpreter's static data left pointing into freed blocks: no references (see [`super::stale`]).
    pub stale_references: StaleWords,
    /// The sequence number of the block live at an address (`u64::MAX`: unknown).
    pub age: &'a dyn Fn(u64) -> u64,
}
