//! The collector's module map: which objects are loaded, as recorded in the trace. A
//! snapshot from a hook, or a rescan when a stack names an address no known module holds,
//! is diffed against it, and each change becomes a MODULE or MODULE_UNLOADED record.
//!
//! Must never call the loader except through [`crate::sys::loader`], and never forget a
//! module without recording that it went away.

use libleak_format::{Module, RecordEncoder};

use crate::segments::SegmentIndex;
use crate::sys::loader;

pub struct ModuleMap {
    modules: Vec<Module>,
    segments: SegmentIndex,
    next_module_id: u64,
    main_exe: String,
    /// The loader's (adds, removes) counters when the map was last known to match them.
    loader_generation: (u64, u64),
}

impl ModuleMap {
    /// An empty map for a process whose main program is `main_exe`.
    pub fn new(main_exe: String) -> ModuleMap {
        ModuleMap {
            modules: Vec::new(),
            segments: SegmentIndex::default(),
            next_module_id: 1,
            main_exe,
            loader_generation: loader::loader_generation(),
        }
    }

    pub fn modules(&self) -> &[Module] {
        &self.modules
    }

    pub fn main_exe(&self) -> &str {
        &self.main_exe
    }

    /// Whether a known module holds `address`.
    pub fn holds(&self, address: u64) -> bool {
        self.segments.holds(address)
    }

    /// Records modules that appeared and disappeared since the last snapshot. True when
    /// some went away: their addresses may be reused by the next object loaded.
    pub fn update(&mut self, snapshot: Vec<Module>, encoder: &mut RecordEncoder) -> bool {
        let same = |a: &Module, b: &Module| a.path == b.path && a.bias == b.bias;
        let before = self.modules.len();
        self.modules.retain(|known| {
            let present = snapshot.iter().any(|m| same(m, known));
            if !present {
                encoder.module_unloaded(known.id);
            }
            present
        });
        let some_went_away = self.modules.len() != before;
        for mut module in snapshot {
            if !self.modules.iter().any(|known| same(known, &module)) {
                module.id = self.next_module_id;
                self.next_module_id += 1;
                encoder.module(&module);
                self.modules.push(module);
            }
        }
        self.segments = SegmentIndex::new(&self.modules);
        some_went_away
    }

    /// Takes a fresh snapshot if the loader has changed since the map last matched it; the
    /// result is [`update`](Self::update)'s (false when nothing was rescanned).
    pub fn rescan_if_loader_changed(&mut self, encoder: &mut RecordEncoder) -> bool {
        let generation = loader::loader_generation();
        if generation == self.loader_generation {
            return false;
        }
        let some_went_away = self.update(loader::loaded_modules(&self.main_exe), encoder);
        // Only a snapshot taken here is known to match this generation: one sent by a hook
        // may predate loads that happened since (the collector can be behind).
        self.loader_generation = generation;
        some_went_away
    }
}
