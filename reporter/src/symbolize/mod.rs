//! Stages 3 and 4, symbolize and merge. Offline symbolization of native return addresses from
//! the files named in the recorded module map: DWARF (with inlined frames) from the object
//! itself or from its separate debug file (found by build-id, then `.gnu_debuglink`, under
//! `/usr/lib/debug` as gdb does), else the symbol table, else `module+0xoffset` — never a bare
//! `??`. A file whose build-id is not the recorded one is reported as such and not used, so it
//! cannot mis-symbolize. [`merge`] then builds each stack as the user reads it, and
//! [`python_lines`] gives Python frames their lines.
//!
//! Must never write anything, nor read any file but the modules the trace names, their
//! debug files, and the C files Cython generated that their debug information names.

pub mod cython;
pub mod holders;
pub mod merge;
pub mod python_lines;

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use addr2line::Loader;
use libleak_format::{Frame as TraceFrame, Module};
use object::{Object, ObjectSection};

use crate::replay::{is_libleak, Trace};

/// One symbolized frame; a return address may expand to several (inlined calls).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SymbolizedFrame {
    pub function: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    /// This frame was inlined into the next (outer) one.
    pub inlined: bool,
}

/// What could be used to symbolize a module.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SymbolSource {
    Available,
    /// The file on disk is not the one that was loaded.
    BuildIdMismatch,
    /// The file is gone or unreadable (or not a file, like the vDSO).
    Unavailable,
}

/// The symbols of the native frames of some stacks, looked up once so that the merge can be a
/// pure function of the trace and this table.
#[derive(Clone, Debug, Default)]
pub struct SymbolTable {
    /// By (index into `Trace::modules`, return address); empty when nothing was found.
    frames: HashMap<(usize, u64), Vec<SymbolizedFrame>>,
    /// Modules whose file on disk has another build-id than the one that ran.
    mismatched: HashSet<usize>,
}

impl SymbolTable {
    /// Symbolizes every native frame on the stacks `leaves` (libleak's own frames excepted:
    /// the merge drops them unread).
    pub fn of_stacks(trace: &Trace, leaves: &[u64], symbolizer: &mut Symbolizer) -> SymbolTable {
        let mut table = SymbolTable::default();
        for &leaf in leaves {
            for node in trace.stack(leaf) {
                let (TraceFrame::Native { address }, Some(index)) = (node.frame, node.module()) else {
                    continue;
                };
                let module = &trace.modules[index].module;
                if is_libleak(&module.path) || table.frames.contains_key(&(index, address)) {
                    continue;
                }
                if symbolizer.source(module) == SymbolSource::BuildIdMismatch {
                    table.mismatched.insert(index);
                }
                table.insert(index, address, symbolizer.symbolize(module, address));
            }
        }
        table
    }

    /// Records what `address` in module `module` (an index into `Trace::modules`) is.
    pub fn insert(&mut self, module: usize, address: u64, frames: Vec<SymbolizedFrame>) {
        self.frames.insert((module, address), frames);
    }

    /// Records that module `module`'s file on disk is not the one that ran.
    pub fn mark_build_id_mismatch(&mut self, module: usize) {
        self.mismatched.insert(module);
    }

    /// The frames of `address` in module `module`, innermost first; empty when unknown.
    pub fn frames(&self, module: usize, address: u64) -> &[SymbolizedFrame] {
        self.frames.get(&(module, address)).map_or(&[], Vec::as_slice)
    }

    pub fn build_id_mismatch(&self, module: usize) -> bool {
        self.mismatched.contains(&module)
    }
}

struct ModuleSymbols {
    source: SymbolSource,
    /// Most detailed first: separate debug file, then the object itself.
    loaders: Vec<Loader>,
}

pub struct Symbolizer {
    /// Where separate debug files are looked for; `None`: no file is ever read.
    debug_root: Option<PathBuf>,
    modules: HashMap<(String, Vec<u8>), ModuleSymbols>,
    /// Cython's generated C files, read to give their lines as the `.pyx` lines.
    cython: cython::GeneratedSources,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Symbolizer::new(PathBuf::from("/usr/lib/debug"))
    }
}

impl Symbolizer {
    pub fn new(debug_root: PathBuf) -> Self {
        Symbolizer {
            debug_root: Some(debug_root),
            modules: HashMap::new(),
            cython: cython::GeneratedSources::default(),
        }
    }

    /// A symbolizer that reads no file: every module is unavailable, so frames read as
    /// `module+0xoffset`. Reports then depend on the trace alone, the same on any machine
    /// (what committed golden traces need).
    pub fn without_files() -> Self {
        Symbolizer {
            debug_root: None,
            modules: HashMap::new(),
            cython: cython::GeneratedSources::default(),
        }
    }

    pub fn source(&mut self, module: &Module) -> SymbolSource {
        self.load(module).source.clone()
    }

    /// Frames for the return address `address` in `module`, innermost (most inlined) first.
    pub fn symbolize(&mut self, module: &Module, address: u64) -> Vec<SymbolizedFrame> {
        // A return address points after the call; the call itself is one byte earlier.
        let probe = address.wrapping_sub(module.bias).wrapping_sub(1);
        let symbols = self.load(module);
        for loader in &symbols.loaders {
            let mut frames = dwarf_frames(loader, probe);
            if frames.iter().any(|f| f.function.is_some()) {
                for frame in frames.iter_mut() {
                    let generated = frame.function.as_deref().is_some_and(cython::holds_statements);
                    if let (true, Some(file), Some(line)) = (generated, &frame.file, frame.line) {
                        if let Some((source, source_line)) = self.cython.source_of(file, line) {
                            frame.file = Some(source);
                            frame.line = Some(source_line);
                        }
                    }
                }
                return frames;
            }
        }
        for loader in &symbols.loaders {
            if let Some(name) = loader.find_symbol(probe) {
                return vec![SymbolizedFrame {
                    function: Some(addr2line::demangle_auto(Cow::Borrowed(name), None).into_owned()),
                    ..SymbolizedFrame::default()
                }];
            }
        }
        Vec::new()
    }

    /// The symbol covering data address `address` of `module` (a static variable), from the
    /// symbol table.
    pub fn data_symbol(&mut self, module: &Module, address: u64) -> Option<String> {
        let probe = address.wrapping_sub(module.bias);
        let symbols = self.load(module);
        symbols
            .loaders
            .iter()
            .find_map(|loader| loader.find_symbol(probe))
            .map(|name| addr2line::demangle_auto(Cow::Borrowed(name), None).into_owned())
    }

    fn load(&mut self, module: &Module) -> &ModuleSymbols {
        let key = (module.path.clone(), module.build_id.clone());
        if !self.modules.contains_key(&key) {
            let symbols = match &self.debug_root {
                Some(debug_root) => open_module(debug_root, module),
                None => ModuleSymbols {
                    source: SymbolSource::Unavailable,
                    loaders: Vec::new(),
                },
            };
            self.modules.insert(key.clone(), symbols);
        }
        &self.modules[&key]
    }
}

fn dwarf_frames(loader: &Loader, probe: u64) -> Vec<SymbolizedFrame> {
    let mut out = Vec::new();
    let Ok(mut frames) = loader.find_frames(probe) else {
        return out;
    };
    while let Ok(Some(frame)) = frames.next() {
        out.push(SymbolizedFrame {
            function: frame
                .function
                .as_ref()
                .and_then(|f| f.demangle().ok())
                .map(Cow::into_owned),
            file: frame.location.as_ref().and_then(|l| l.file).map(str::to_string),
            line: frame.location.as_ref().and_then(|l| l.line),
            inlined: true,
        });
    }
    if let Some(outermost) = out.last_mut() {
        outermost.inlined = false;
    }
    out
}

struct ObjectFacts {
    build_id: Option<Vec<u8>>,
    debuglink: Option<String>,
}

fn object_facts(path: &Path) -> Option<ObjectFacts> {
    // Through a read cache: only the headers and the two notes are read, not the whole file
    // (a wheel's bundled libraries run to tens of megabytes).
    let data = object::ReadCache::new(std::fs::File::open(path).ok()?);
    let file = object::File::parse(&data).ok()?;
    Some(ObjectFacts {
        build_id: file.build_id().ok().flatten().map(<[u8]>::to_vec),
        debuglink: file
            .gnu_debuglink()
            .ok()
            .flatten()
            .map(|(name, _crc)| String::from_utf8_lossy(name).into_owned())
            .or_else(|| {
                // object only parses the section when it is well formed; keep a fallback.
                let section = file.section_by_name(".gnu_debuglink")?;
                let raw = section.data().ok()?;
                let end = raw.iter().position(|&b| b == 0)?;
                Some(String::from_utf8_lossy(&raw[..end]).into_owned())
            }),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn open_module(debug_root: &Path, module: &Module) -> ModuleSymbols {
    let path = Path::new(&module.path);
    let unavailable = ModuleSymbols {
        source: SymbolSource::Unavailable,
        loaders: Vec::new(),
    };
    let Some(facts) = object_facts(path) else {
        return unavailable;
    };
    if !module.build_id.is_empty()
        && facts
            .build_id
            .as_deref()
            .is_some_and(|id| id != module.build_id.as_slice())
    {
        return ModuleSymbols {
            source: SymbolSource::BuildIdMismatch,
            loaders: Vec::new(),
        };
    }
    let mut candidates = Vec::new();
    if module.build_id.len() > 1 {
        let id = hex(&module.build_id);
        candidates.push(
            debug_root
                .join(".build-id")
                .join(&id[..2])
                .join(format!("{}.debug", &id[2..])),
        );
    }
    if let Some(name) = &facts.debuglink {
        let dir = path.parent().unwrap_or(Path::new("/"));
        candidates.push(dir.join(name));
        candidates.push(dir.join(".debug").join(name));
        candidates.push(debug_root.join(dir.strip_prefix("/").unwrap_or(dir)).join(name));
    }
    let mut loaders = Vec::new();
    for candidate in candidates {
        if candidate == path || !candidate.is_file() {
            continue;
        }
        let matches = object_facts(&candidate).is_some_and(|f| {
            module.build_id.is_empty() || f.build_id.as_deref().is_none_or(|id| id == module.build_id.as_slice())
        });
        if matches {
            if let Ok(loader) = Loader::new(&candidate) {
                loaders.push(loader);
                break;
            }
        }
    }
    if let Ok(loader) = Loader::new(path) {
        loaders.push(loader);
    }
    ModuleSymbols {
        source: SymbolSource::Available,
        loaders,
    }
}
