//! One stack as the user reads it: native frames symbolized, each activation of CPython's
//! eval loop replaced by the Python frames it ran, and the interpreter's own plumbing hidden.
//!
//! A recorded stack interleaves native frames and Python frames, with a marker closing each
//! eval-loop activation (`format/SPEC.md`); only the order within each kind counts, so they
//! are taken apart first. The n-th group of Python
//! frames from the inside belongs to the n-th eval-loop native frame from the inside. Groups
//! left over (an eval frame not recognised, an unwind cut short) go after the last native
//! frame: a frame is never dropped and a stack is never refused because the merge is imperfect.
//!
//! Must stay pure: symbols come from a [`SymbolTable`] filled beforehand, never from files.

use std::collections::HashMap;

use libleak_format::{Frame as TraceFrame, PythonRuntime};

use super::python_lines;
use super::SymbolTable;
use crate::model::{Frame, FrameKind};
use crate::replay::{is_importlib_file, is_libleak, StackNode, Trace};

/// The eval loop: the one function that runs bytecode (its `.cold` part included).
const EVAL_LOOP: &str = "_PyEval_EvalFrameDefault";

/// Process and thread entry frames, noise once Python frames say where the work started.
const START_ROUTINES: &[&str] = &[
    "_start",
    "__libc_start_main",
    "__libc_start_main_impl",
    "__libc_start_main_alias_2",
    "__libc_start_call_main",
    "start_thread",
    "clone",
    "clone3",
];

/// Leading frames of these functions are the allocator's, not the caller's.
fn is_allocator_wrapper(function: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "operator new",
        "__rust_alloc",
        "__rust_realloc",
        "__rdl_alloc",
        "__rdl_realloc",
        "alloc::alloc::",
        "<alloc::alloc::Global",
        "std::sys::alloc::",
        "<std::alloc::System",
    ];
    // CPython's allocator front ends with PYTHONMALLOC=malloc (exact names).
    const PYTHON_ALLOCATOR: &[&str] = &[
        "_PyMem_RawMalloc",
        "_PyMem_RawCalloc",
        "_PyMem_RawRealloc",
        "PyMem_RawMalloc",
        "PyMem_RawCalloc",
        "PyMem_RawRealloc",
        "PyMem_Malloc",
        "PyMem_Calloc",
        "PyMem_Realloc",
        "PyObject_Malloc",
        "PyObject_Calloc",
        "PyObject_Realloc",
    ];
    PREFIXES.iter().any(|p| function.starts_with(p)) || PYTHON_ALLOCATOR.contains(&function)
}

/// What the merge needs to know about the trace's interpreter.
pub struct Interpreter {
    eval_loop: Option<(u64, u64)>,
    /// Indices into `Trace::modules` of the interpreter's code (libpython, or the
    /// statically linked python executable).
    modules: Vec<usize>,
}

impl Interpreter {
    pub fn of(trace: &Trace) -> Interpreter {
        let runtime: Option<&PythonRuntime> = trace.header.python.as_ref();
        let eval_loop = runtime
            .filter(|r| r.eval_loop_start != 0)
            .map(|r| (r.eval_loop_start, r.eval_loop_start + r.eval_loop_size.max(1)));
        let mut modules = Vec::new();
        if runtime.is_some() {
            for (index, state) in trace.modules.iter().enumerate() {
                let path = &state.module.path;
                let base = path.rsplit('/').next().unwrap_or(path);
                let holds_eval = eval_loop.is_some_and(|(start, _)| state.module.contains(start));
                if holds_eval || base.starts_with("libpython") || (index == 0 && base.starts_with("python")) {
                    modules.push(index);
                }
            }
        }
        Interpreter { eval_loop, modules }
    }
}

/// One native stack node, symbolized (one entry per inlined function, innermost first).
struct NativeFrame {
    frames: Vec<Frame>,
    eval_loop: bool,
    interpreter: bool,
}

/// The frames of each of the stacks `leaves` for the report, innermost first.
pub fn merged_stacks(
    trace: &Trace,
    leaves: &[u64],
    symbols: &SymbolTable,
    show_interpreter_frames: bool,
) -> HashMap<u64, Vec<Frame>> {
    let interpreter = Interpreter::of(trace);
    leaves
        .iter()
        .map(|&leaf| {
            let frames = merged_stack(trace, &interpreter, leaf, symbols, show_interpreter_frames);
            (leaf, frames)
        })
        .collect()
}

/// The frames of stack `leaf` for the report, innermost first.
pub fn merged_stack(
    trace: &Trace,
    interpreter: &Interpreter,
    leaf: u64,
    symbols: &SymbolTable,
    show_interpreter_frames: bool,
) -> Vec<Frame> {
    let mut natives = Vec::new();
    let mut groups: Vec<Vec<Frame>> = Vec::new();
    let mut group = Vec::new();
    let mut lost = false;
    for node in trace.stack(leaf) {
        if node.lost {
            lost = true;
            continue;
        }
        match node.frame {
            // libleak's own frames are never the program's. Past the innermost ones (which the
            // recorder drops) they are those a signal handler interrupted.
            TraceFrame::Native { .. } if node.module().is_some_and(|m| is_libleak(&trace.modules[m].module.path)) => {}
            TraceFrame::Native { address } => natives.push(native_frame(trace, interpreter, &node, address, symbols)),
            TraceFrame::Python {
                code_id,
                instruction_offset,
            } => group.push(python_frame(trace, code_id, instruction_offset)),
            TraceFrame::PythonEntry => groups.push(std::mem::take(&mut group)),
        }
    }
    if !group.is_empty() {
        groups.push(group); // the walk stopped before the activation's end
    }
    let has_python = !groups.is_empty();
    let mut groups = groups.into_iter();
    let mut out = Vec::new();
    let mut at_allocation_site = true;
    for native in natives {
        if native.eval_loop {
            at_allocation_site = false;
            out.extend(groups.next().unwrap_or_default());
            if show_interpreter_frames {
                out.extend(native.frames);
            }
            continue;
        }
        let hidden = !show_interpreter_frames
            && has_python
            && ((native.interpreter && !at_allocation_site)
                || native
                    .frames
                    .iter()
                    .all(|f| f.function.as_deref().is_some_and(|n| START_ROUTINES.contains(&n))));
        if !native.interpreter {
            at_allocation_site = false;
        }
        if !hidden {
            out.extend(native.frames);
        }
    }
    out.extend(groups.flatten());
    if !show_interpreter_frames {
        out.retain(|frame| !is_import_plumbing(frame));
    }
    let wrappers = out
        .iter()
        .take_while(|f| f.kind == FrameKind::Native && f.function.as_deref().is_some_and(is_allocator_wrapper))
        .count();
    out.drain(..wrappers.min(out.len().saturating_sub(1)));
    if lost {
        out.push(lost_frame());
    }
    out
}

/// Stands for the outer frames of a stack defined in a damaged part of the trace.
fn lost_frame() -> Frame {
    Frame {
        kind: FrameKind::Native,
        function: Some("[outer frames lost in a damaged part of the trace]".to_string()),
        file: None,
        line: None,
        module: None,
        inlined: false,
        address: None,
        build_id_mismatch: false,
    }
}

/// importlib's own Python frames, between an `import` statement and the module it runs:
/// CPython's tracebacks leave them out as well (`_call_with_frames_removed`).
fn is_import_plumbing(frame: &Frame) -> bool {
    frame.kind == FrameKind::Python && frame.file.as_deref().is_some_and(is_importlib_file)
}

fn native_frame(
    trace: &Trace,
    interpreter: &Interpreter,
    node: &StackNode,
    address: u64,
    symbols: &SymbolTable,
) -> NativeFrame {
    let in_eval_range = interpreter
        .eval_loop
        .is_some_and(|(start, end)| (start..end).contains(&address.wrapping_sub(1)));
    let interpreter_module = node.module().is_some_and(|m| interpreter.modules.contains(&m));
    let frame = |function: String, module: Option<String>| Frame {
        kind: FrameKind::Native,
        function: Some(function),
        file: None,
        line: None,
        module,
        inlined: false,
        address: Some(address),
        build_id_mismatch: false,
    };
    let Some(index) = node.module() else {
        return NativeFrame {
            frames: vec![frame(format!("0x{address:x}"), None)],
            eval_loop: in_eval_range,
            interpreter: false,
        };
    };
    let module = &trace.modules[index].module;
    let symbolized = symbols.frames(index, address);
    let mismatch = symbols.build_id_mismatch(index);
    // The physical function is the outermost of an inline chain.
    let eval_by_name = symbolized
        .last()
        .and_then(|f| f.function.as_deref())
        .and_then(|name| name.strip_prefix(EVAL_LOOP))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'));
    let frames = if symbolized.is_empty() {
        let base = module.path.rsplit('/').next().unwrap_or(&module.path);
        let mut unnamed = frame(
            format!("{base}+0x{:x}", address.wrapping_sub(module.bias)),
            Some(module.path.clone()),
        );
        unnamed.build_id_mismatch = mismatch;
        vec![unnamed]
    } else {
        symbolized
            .iter()
            .map(|s| Frame {
                kind: FrameKind::Native,
                function: s.function.clone(),
                file: s.file.clone(),
                line: s.line,
                module: Some(module.path.clone()),
                inlined: s.inlined,
                address: Some(address),
                build_id_mismatch: false,
            })
            .collect()
    };
    NativeFrame {
        frames,
        eval_loop: in_eval_range || eval_by_name,
        interpreter: interpreter_module,
    }
}

fn python_frame(trace: &Trace, code_id: u64, instruction_offset: i64) -> Frame {
    let code = trace.python_codes.get(&code_id);
    Frame {
        kind: FrameKind::Python,
        function: Some(code.map_or_else(|| "<unknown code>".to_string(), |c| c.qualified_name.clone())),
        file: code.map(|c| c.filename.clone()),
        line: code
            .and_then(|c| python_lines::line_at(c.python_version, &c.line_table, c.first_line, instruction_offset)),
        module: None,
        inlined: false,
        address: None,
        build_id_mismatch: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::synthetic::{native, python, trace};
    use crate::symbolize::SymbolizedFrame;

    const PYTHON: usize = 0;
    const EXT: usize = 1;
    const LIBC: usize = 2;

    /// A python3.11 process with an extension, libc and libleak loaded; its eval loop is at
    /// 0x11000..0x11100, and the table names the frames the tests use.
    fn python_process() -> (Trace, SymbolTable) {
        let mut t = trace("/usr/bin/python3.11");
        assert_eq!(t.load("/usr/bin/python3.11", 0x10000, 0x10000), PYTHON);
        assert_eq!(t.load("/home/me/ext.so", 0x30000, 0x1000), EXT);
        assert_eq!(t.load("/lib/x86_64-linux-gnu/libc.so.6", 0x40000, 0x1000), LIBC);
        t.load("/opt/libleak/libleak.so", 0x50000, 0x1000);
        t.run_python(0x11000, 0x100);
        t.code(1, "load", "app.py", 7);
        t.code(2, "<module>", "app.py", 1);
        let mut table = SymbolTable::default();
        let mut name = |module, address, function: &str, file: Option<&str>, line| {
            let frame = SymbolizedFrame {
                function: Some(function.to_string()),
                file: file.map(str::to_string),
                line,
                inlined: false,
            };
            table.insert(module, address, vec![frame]);
        };
        name(EXT, 0x30010, "leaky_alloc", Some("ext.c"), Some(5));
        name(EXT, 0x30030, "ext_main", Some("ext.c"), Some(30));
        name(EXT, 0x30040, "make_thing", None, None);
        name(PYTHON, 0x10500, "PyObject_Call", None, None);
        name(PYTHON, 0x10900, "Py_RunMain", None, None);
        // Found by its address range alone: the name says nothing.
        name(PYTHON, 0x11050, "eval_somewhere", None, None);
        name(LIBC, 0x40100, "__libc_start_main", None, None);
        name(LIBC, 0x40200, "operator new(unsigned long)", None, None);
        (t, table)
    }

    /// Each frame as `kind function file:line`.
    fn shown(frames: &[Frame]) -> Vec<String> {
        frames
            .iter()
            .map(|f| {
                let kind = match f.kind {
                    FrameKind::Native => "native",
                    FrameKind::Python => "python",
                };
                format!(
                    "{kind} {} {}:{}",
                    f.function.as_deref().unwrap_or("-"),
                    f.file.as_deref().unwrap_or("-"),
                    f.line.map_or("-".to_string(), |l| l.to_string())
                )
            })
            .collect()
    }

    fn merge(trace: &Trace, table: &SymbolTable, leaf: u64, show_interpreter_frames: bool) -> Vec<String> {
        shown(&merged_stack(
            trace,
            &Interpreter::of(trace),
            leaf,
            table,
            show_interpreter_frames,
        ))
    }

    #[test]
    fn python_frames_take_the_eval_loops_place_and_plumbing_is_hidden() {
        let (mut t, table) = python_process();
        let leaf = t.define_stack(&[
            native(0x50010), // libleak's own frame: never shown
            native(0x30010),
            native(0x10500),
            python(1),
            python(2),
            TraceFrame::PythonEntry,
            native(0x11050),
            native(0x10900),
            native(0x40100),
        ]);
        assert_eq!(
            merge(&t, &table, leaf, false),
            [
                "native leaky_alloc ext.c:5",
                "python load app.py:7",
                "python <module> app.py:1"
            ]
        );
        assert_eq!(
            merge(&t, &table, leaf, true),
            [
                "native leaky_alloc ext.c:5",
                "native PyObject_Call -:-",
                "python load app.py:7",
                "python <module> app.py:1",
                "native eval_somewhere -:-",
                "native Py_RunMain -:-",
                "native __libc_start_main -:-"
            ]
        );
    }

    #[test]
    fn importlib_frames_are_hidden_unless_interpreter_frames_are_asked_for() {
        let (mut t, table) = python_process();
        t.code(3, "_call_with_frames_removed", "<frozen importlib._bootstrap>", 241);
        t.code(
            4,
            "ExtensionFileLoader.exec_module",
            "<frozen importlib._bootstrap_external>",
            1241,
        );
        let leaf = t.define_stack(&[
            native(0x30010),
            python(3),
            python(4),
            python(2),
            TraceFrame::PythonEntry,
            native(0x11050),
            native(0x10900),
            native(0x40100),
        ]);
        assert_eq!(
            merge(&t, &table, leaf, false),
            ["native leaky_alloc ext.c:5", "python <module> app.py:1"]
        );
        assert_eq!(
            merge(&t, &table, leaf, true)[1..4],
            [
                "python _call_with_frames_removed <frozen importlib._bootstrap>:241",
                "python ExtensionFileLoader.exec_module <frozen importlib._bootstrap_external>:1241",
                "python <module> app.py:1",
            ]
        );
    }

    #[test]
    fn python_groups_without_an_eval_frame_go_after_the_last_native_frame() {
        let (mut t, table) = python_process();
        let leaf = t.define_stack(&[
            native(0x30010),
            python(1),
            TraceFrame::PythonEntry,
            native(0x11050),
            native(0x30030),
            // A second activation whose eval frame the unwinder never reached, cut short
            // before its end marker.
            python(2),
        ]);
        assert_eq!(
            merge(&t, &table, leaf, false),
            [
                "native leaky_alloc ext.c:5",
                "python load app.py:7",
                "native ext_main ext.c:30",
                "python <module> app.py:1"
            ]
        );
    }

    #[test]
    fn interpreter_frames_at_the_allocation_site_are_kept() {
        let (mut t, table) = python_process();
        // PyObject_Call allocated for Python code directly: the site is inside the
        // interpreter, and hiding it would leave no native frame at all.
        let leaf = t.define_stack(&[native(0x10500), python(1), TraceFrame::PythonEntry, native(0x11050)]);
        assert_eq!(
            merge(&t, &table, leaf, false),
            ["native PyObject_Call -:-", "python load app.py:7"]
        );
    }

    #[test]
    fn allocator_wrappers_are_trimmed_but_never_the_last_frame() {
        let (mut t, table) = python_process();
        let wrapped = t.define_stack(&[native(0x40200), native(0x30040), native(0x40100)]);
        assert_eq!(
            merge(&t, &table, wrapped, false),
            ["native make_thing -:-", "native __libc_start_main -:-"],
            "without Python frames, start routines stay"
        );
        let only_wrapper = t.define_stack(&[native(0x40200)]);
        assert_eq!(
            merge(&t, &table, only_wrapper, false),
            ["native operator new(unsigned long) -:-"]
        );
    }

    #[test]
    fn unknown_addresses_are_named_by_module_offset_or_address() {
        let (mut t, mut table) = python_process();
        table.mark_build_id_mismatch(EXT);
        let leaf = t.define_stack(&[native(0x30050), native(0x90000)]);
        let frames = merged_stack(&t, &Interpreter::of(&t), leaf, &table, false);
        assert_eq!(shown(&frames), ["native ext.so+0x50 -:-", "native 0x90000 -:-"]);
        assert_eq!(frames[0].module.as_deref(), Some("/home/me/ext.so"));
        assert!(frames[0].build_id_mismatch);
        assert_eq!(frames[0].address, Some(0x30050));
        assert_eq!(frames[1].module, None);
        assert!(!frames[1].build_id_mismatch);
    }

    #[test]
    fn inlined_frames_expand_in_place() {
        let (mut t, mut table) = python_process();
        table.insert(
            EXT,
            0x30060,
            vec![
                SymbolizedFrame {
                    function: Some("inner".into()),
                    file: Some("ext.c".into()),
                    line: Some(3),
                    inlined: true,
                },
                SymbolizedFrame {
                    function: Some("outer".into()),
                    file: Some("ext.c".into()),
                    line: Some(9),
                    inlined: false,
                },
            ],
        );
        let leaf = t.define_stack(&[native(0x30060)]);
        let frames = merged_stack(&t, &Interpreter::of(&t), leaf, &table, false);
        assert_eq!(shown(&frames), ["native inner ext.c:3", "native outer ext.c:9"]);
        assert!(frames[0].inlined && !frames[1].inlined);
        assert_eq!(frames[1].address, Some(0x30060));
    }

    #[test]
    fn the_eval_loop_is_also_known_by_name_cold_part_included() {
        // No eval-loop range recorded: only the symbol name says which frame runs bytecode.
        let mut t = trace("/usr/bin/python3.11");
        let python_exe = t.load("/usr/bin/python3.11", 0x10000, 0x10000);
        t.run_python(0, 0);
        t.code(1, "work", "app.py", 3);
        let mut table = SymbolTable::default();
        for (address, name) in [
            (0x10100, "_PyEval_EvalFrameDefault.cold"),
            (0x10200, "_PyEval_EvalFrameDefaultX"),
        ] {
            let frame = SymbolizedFrame {
                function: Some(name.to_string()),
                ..SymbolizedFrame::default()
            };
            table.insert(python_exe, address, vec![frame]);
        }
        let cold = t.define_stack(&[python(1), TraceFrame::PythonEntry, native(0x10100)]);
        let other = t.define_stack(&[python(1), TraceFrame::PythonEntry, native(0x10200)]);
        let names = |leaf| -> Vec<String> {
            merged_stack(&t, &Interpreter::of(&t), leaf, &table, false)
                .into_iter()
                .filter_map(|f| f.function)
                .collect()
        };
        assert_eq!(names(cold), ["work"]);
        // Not the eval loop: an interpreter frame at the allocation site, kept, and the
        // Python group it did not run goes last.
        assert_eq!(names(other), ["_PyEval_EvalFrameDefaultX", "work"]);
    }
}
