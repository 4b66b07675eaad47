//! Python frames for every recorded stack: finds the CPython interpreter in the process once,
//! then, inside each hook, walks the allocating thread's own frame chain and turns it into
//! stack words (see [`crate::stack_words`]): code ids, instruction offsets and the ends of
//! eval-loop activations. A code object seen for the first time is copied (file name,
//! qualified name, first line, line table) into a [`PythonCode`] definition for the collector.
//!
//! The walk never takes the GIL, never allocates through the hooks, never calls into Python
//! beyond the allocation-free thread-state getters, and stops at the first implausible
//! pointer. Line numbers are not computed here: the reporter decodes the copied line tables.
//! Per-version knowledge is in [`layouts`]; [`constructors`] follows objects that CPython's
//! free lists hand out again to extensions.

pub mod code_cache;
mod codes;
pub mod constructors;
pub mod frame_locals;
pub mod free_lists;
pub mod gc;
pub mod holders;
pub mod layouts;
pub mod steps;

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;

use libleak_format::{python_version_text, PythonCode, PythonRuntime};

use crate::stack_words;
use crate::sys::buffer::WordBuffer;
use crate::sys::python_raw::{self as raw, Symbols};
use code_cache::{CodeFacts, ThreadCodes};
use layouts::{CurrentFrame, FrameChain, Layout};

/// Deepest Python stack recorded (frames plus activation ends).
pub const MAX_WORDS: usize = 192;
/// Longest string or line table copied from a code object.
const MAX_STRING_BYTES: usize = 4096;
const MAX_LINE_TABLE_BYTES: usize = 1 << 20;

struct Interpreter {
    symbols: Symbols,
    layout: &'static Layout,
}

static INTERPRETER: OnceLock<Interpreter> = OnceLock::new();

/// The interpreter found with a supported layout, if any.
fn interpreter() -> Option<&'static Interpreter> {
    INTERPRETER.get()
}
static WALKING: AtomicBool = AtomicBool::new(false);
/// The address of `_PyRuntime`'s finalizing thread state once an interpreter is walked, else
/// 0: the one word a hook reads to notice that finalisation began.
static FINALIZING_WORD: AtomicUsize = AtomicUsize::new(0);
/// The eval loop's code (start, end) while Python frames are recorded; (0, 0) otherwise.
static EVAL_LOOP_START: AtomicUsize = AtomicUsize::new(0);
static EVAL_LOOP_END: AtomicUsize = AtomicUsize::new(0);
/// Set once a walk has read a genuine code object; until then a bad first walk disables
/// Python frames for good (the layout does not match this build).
static CONFIRMED: AtomicBool = AtomicBool::new(false);
static FOUND: AtomicBool = AtomicBool::new(false);
/// Whether the interpreter ignores the environment, read when its first code object is
/// defined (it is configured by then): 0 not known yet, 1 no, 2 yes.
static IGNORES_ENVIRONMENT: AtomicU8 = AtomicU8::new(0);

/// Whether the running interpreter ignores environment variables such as the
/// `PYTHONMALLOC` libleak sets; `None` until known.
pub fn ignores_environment() -> Option<bool> {
    match IGNORES_ENVIRONMENT.load(Ordering::Acquire) {
        1 => Some(false),
        2 => Some(true),
        _ => None,
    }
}

/// Looks for a CPython interpreter in the process. Returns what the trace should say about
/// it, or `None` when there is no interpreter (yet: call again after a `dlopen`).
pub fn detect() -> Option<PythonRuntime> {
    if FOUND.load(Ordering::Acquire) {
        return None;
    }
    let symbols = raw::find_symbols()?;
    FOUND.store(true, Ordering::Release);
    let mut runtime = PythonRuntime {
        python_version: symbols.version_hex,
        eval_loop_start: symbols.eval_loop_start as u64,
        eval_loop_size: symbols.eval_loop_size as u64,
        ..PythonRuntime::default()
    };
    let minor = (symbols.version_hex >> 16 & 0xff) as u8;
    let major = symbols.version_hex >> 24;
    match layouts::for_minor(minor).filter(|_| major == 3) {
        None => {
            runtime.note = format!(
                "CPython {}: version not supported",
                python_version_text(symbols.version_hex)
            )
        }
        Some(layout) => match check_runtime(&symbols, layout) {
            Err(reason) => runtime.note = reason,
            Ok(()) => {
                EVAL_LOOP_START.store(symbols.eval_loop_start, Ordering::Relaxed);
                EVAL_LOOP_END.store(
                    symbols.eval_loop_start + symbols.eval_loop_size.max(1),
                    Ordering::Relaxed,
                );
                let code_type = symbols.code_type;
                let symbols_runtime = symbols.runtime;
                let mut data_segment = (0, 0);
                crate::sys::loader::with_object_containing(symbols_runtime, &mut |object| {
                    if let Some(segment) = object.and_then(|o| o.segment_containing(symbols_runtime)) {
                        data_segment = segment;
                    }
                });
                free_lists::set_search_space(data_segment, main_interpreter_state);
                let _ = INTERPRETER.set(Interpreter { symbols, layout });
                codes::init();
                code_cache::watch_frees(code_type);
                WALKING.store(true, Ordering::Release);
                FINALIZING_WORD.store(symbols_runtime + layout.finalizing, Ordering::Relaxed);
                runtime.frames_recorded = true;
            }
        },
    }
    Some(runtime)
}

/// The main interpreter's state, or 0 (none yet, or no interpreter walked).
fn main_interpreter_state() -> usize {
    interpreter()
        .and_then(|interpreter| interpreter.symbols.main_interpreter())
        .map_or(0, |(state, _)| state)
}

/// Checks what can be checked before the first walk: 3.13+ describe their own layout.
fn check_runtime(symbols: &Symbols, layout: &Layout) -> Result<(), String> {
    if !layout.debug_offsets {
        return Ok(());
    }
    let cookie: Option<[u8; 8]> = raw::read(symbols.runtime);
    let version: Option<u64> = raw::read(symbols.runtime + 8);
    let free_threaded: Option<u64> = raw::read(symbols.runtime + 16);
    if cookie != Some(*b"xdebugpy") || version != Some(u64::from(symbols.version_hex)) {
        return Err("CPython debug offsets not recognised".into());
    }
    if free_threaded != Some(0) {
        return Err("free-threaded CPython builds are not supported".into());
    }
    Ok(())
}

/// Where the eval loop's code lies (start, end), or (0, 0): the native frames that Python
/// activations belong to.
#[inline]
pub fn eval_loop() -> (usize, usize) {
    (
        EVAL_LOOP_START.load(Ordering::Relaxed),
        EVAL_LOOP_END.load(Ordering::Relaxed),
    )
}

/// Whether the calling thread has begun finalising the interpreter (`Py_FinalizeEx` past its
/// `atexit` callbacks and the wait for non-daemon threads, before modules are torn down).
/// One load (of [`FINALIZING_WORD`]) while no interpreter is watched, two while no thread
/// finalises.
#[inline(always)]
pub fn finalizing_here() -> bool {
    let word = FINALIZING_WORD.load(Ordering::Relaxed);
    word != 0 && raw::read::<usize>(word).is_some_and(|finalizing| finalizing != 0) && finalizing_is_this_thread(word)
}

#[cold]
fn finalizing_is_this_thread(word: usize) -> bool {
    let Some(interpreter) = INTERPRETER.get() else {
        return false;
    };
    raw::read::<usize>(word) == Some(interpreter.symbols.current_thread_state())
}

/// Where `_PyRuntime` lies once an interpreter with a supported layout is found: in the
/// static data of the module that holds CPython.
pub fn runtime_address() -> Option<u64> {
    INTERPRETER.get().map(|interpreter| interpreter.symbols.runtime as u64)
}

/// Stops [`finalizing_here`] from looking (the moment it watches for has been seen).
pub fn stop_watching_finalization() {
    FINALIZING_WORD.store(0, Ordering::Relaxed);
}

/// Appends the calling thread's Python stack to `out`, innermost first. `define` receives
/// each code object seen for the first time.
pub fn capture(out: &mut WordBuffer<MAX_WORDS>, define: &mut dyn FnMut(PythonCode)) {
    if !WALKING.load(Ordering::Relaxed) {
        return;
    }
    let Some(interpreter) = INTERPRETER.get() else { return };
    let state = interpreter.symbols.current_thread_state();
    if state == 0 {
        return;
    }
    let finalizing: usize = raw::read(interpreter.symbols.runtime + interpreter.layout.finalizing).unwrap_or(0);
    if finalizing != 0 && finalizing != state {
        // Other threads' states are being freed: this one may already be gone.
        return;
    }
    code_cache::with_thread_codes(|codes| {
        let mut walk = Walk {
            interpreter,
            out,
            define,
            codes,
        };
        match interpreter.layout.frames {
            FrameChain::FrameObjects { .. } => walk.frame_objects(state),
            FrameChain::InterpreterFrames { .. } => walk.interpreter_frames(state),
        }
    })
}

struct Walk<'a> {
    interpreter: &'a Interpreter,
    out: &'a mut WordBuffer<MAX_WORDS>,
    define: &'a mut dyn FnMut(PythonCode),
    /// The thread's memo of code objects, when it may be used (see [`code_cache`]).
    codes: Option<&'a mut ThreadCodes>,
}

/// Why a walk stopped early.
struct Implausible;

impl Walk<'_> {
    fn room(&self) -> bool {
        !self.out.is_full()
    }

    fn frame_objects(&mut self, state: usize) {
        let FrameChain::FrameObjects {
            first,
            back,
            code,
            last_instruction,
            instruction_unit,
        } = self.interpreter.layout.frames
        else {
            return;
        };
        let mut frame: usize = raw::read(state + first).unwrap_or(0);
        while frame != 0 && self.room() {
            let Some(code_object) = raw::read::<usize>(frame + code) else {
                return;
            };
            let Some(last) = raw::read::<i32>(frame + last_instruction) else {
                return;
            };
            let offset = if last < 0 {
                -1
            } else {
                i64::from(last) * instruction_unit
            };
            if self
                .code_facts(code_object)
                .and_then(|facts| self.python_frame(facts, offset))
                .is_err()
            {
                return;
            }
            self.out.push(stack_words::PYTHON_ENTRY);
            let Some(next) = raw::read::<usize>(frame + back) else {
                return;
            };
            if next == frame {
                return;
            }
            frame = next;
        }
    }

    fn interpreter_frames(&mut self, state: usize) {
        let FrameChain::InterpreterFrames {
            ref current,
            previous,
            code,
            instruction_pointer,
            owner,
            is_entry,
        } = self.interpreter.layout.frames
        else {
            return;
        };
        let first = match *current {
            CurrentFrame::ThroughCFrame { cframe, current_frame } => {
                raw::read::<usize>(state + cframe).and_then(|cframe| raw::read::<usize>(cframe + current_frame))
            }
            CurrentFrame::InThreadState(field) => raw::read::<usize>(state + field),
        };
        let Some(inline_code) = self.interpreter.layout.code.inline_code else {
            return;
        };
        let mut frame = first.unwrap_or(0);
        while frame != 0 && self.room() {
            let Some(frame_owner) = raw::read::<u8>(frame + owner) else {
                return;
            };
            if frame_owner == layouts::OWNED_BY_C_STACK {
                self.out.push(stack_words::PYTHON_ENTRY);
            } else {
                let Some(code_object) = raw::read::<usize>(frame + code) else {
                    return;
                };
                let Some(pointer) = raw::read::<usize>(frame + instruction_pointer) else {
                    return;
                };
                let units = (pointer as i64 - (code_object + inline_code) as i64) / 2;
                let Ok(facts) = self.code_facts(code_object) else {
                    return;
                };
                // A frame whose first instructions have not run yet (being set up) is not
                // shown, as tracemalloc and sys._getframe do not show it.
                let incomplete = frame_owner != layouts::OWNED_BY_GENERATOR && units < i64::from(facts.first_traceable);
                if !incomplete && self.python_frame(facts, units * 2).is_err() {
                    return;
                }
                if let Some(is_entry) = is_entry {
                    if raw::read::<u8>(frame + is_entry).unwrap_or(0) != 0 {
                        self.out.push(stack_words::PYTHON_ENTRY);
                    }
                }
            }
            let Some(next) = raw::read::<usize>(frame + previous) else {
                return;
            };
            if next == frame {
                return;
            }
            frame = next;
        }
    }

    /// Appends one Python frame at byte `offset` of its code.
    #[inline(always)]
    fn python_frame(&mut self, facts: CodeFacts, offset: i64) -> Result<(), Implausible> {
        if offset >= i64::from(facts.instruction_bytes) {
            return Err(Implausible);
        }
        let offset = offset.clamp(-1, i64::from(i32::MAX)) as i32;
        self.out.push(stack_words::python_frame(facts.id, offset));
        Ok(())
    }

    /// What the walk needs of a code object: from the thread's memo, else after checking the
    /// object, from the shared table, else by defining it.
    #[inline(always)]
    fn code_facts(&mut self, code_object: usize) -> Result<CodeFacts, Implausible> {
        if let Some(facts) = self.codes.as_ref().and_then(|codes| codes.get(code_object)) {
            return Ok(facts);
        }
        let facts = self.checked_code_facts(code_object)?;
        if let Some(codes) = self.codes.as_mut() {
            codes.put(code_object, facts);
        }
        Ok(facts)
    }

    fn checked_code_facts(&mut self, code_object: usize) -> Result<CodeFacts, Implausible> {
        let symbols = &self.interpreter.symbols;
        if raw::read::<usize>(code_object + layouts::OBJECT_TYPE) != Some(symbols.code_type) {
            if !CONFIRMED.load(Ordering::Relaxed) {
                disable("the frame layout of this CPython build is not the expected one");
            }
            return Err(Implausible);
        }
        CONFIRMED.store(true, Ordering::Relaxed);
        let layout = &self.interpreter.layout.code;
        let fingerprint = codes::Fingerprint::read(code_object, layout).ok_or(Implausible)?;
        let first_traceable = match layout.first_traceable {
            Some(field) => raw::read::<i32>(code_object + field).ok_or(Implausible)?,
            None => 0,
        };
        let id = match codes::lookup(code_object, &fingerprint) {
            Some(id) => id,
            None => {
                let id = codes::insert(code_object, &fingerprint);
                if IGNORES_ENVIRONMENT.load(Ordering::Relaxed) == 0 {
                    if let Some(ignores) = symbols.ignores_environment() {
                        IGNORES_ENVIRONMENT.store(1 + u8::from(ignores), Ordering::Release);
                    }
                }
                let definition = self.copy_code(id, &fingerprint);
                (self.define)(definition);
                // Rare (new code objects), and the allocator may have been wrapped since.
                code_cache::set_usable(symbols.objects_use_raw_allocator());
                id
            }
        };
        Ok(CodeFacts {
            id,
            instruction_bytes: fingerprint.instruction_bytes.min(u32::MAX as usize) as u32,
            first_traceable,
        })
    }

    fn copy_code(&self, id: u32, fingerprint: &codes::Fingerprint) -> PythonCode {
        let symbols = &self.interpreter.symbols;
        let unicode = &self.interpreter.layout.unicode;
        let mut line_table = Vec::new();
        let table_len = raw::read::<usize>(fingerprint.line_table + layouts::VAR_OBJECT_SIZE).unwrap_or(0);
        if table_len <= MAX_LINE_TABLE_BYTES {
            raw::read_bytes(fingerprint.line_table + layouts::BYTES_DATA, table_len, &mut line_table);
        }
        let text = |object| read_string(object, symbols, unicode).unwrap_or_else(|| "<?>".into());
        PythonCode {
            id: id.into(),
            python_version: symbols.version_hex,
            filename: text(fingerprint.filename),
            qualified_name: text(fingerprint.name),
            first_line: fingerprint.first_line.max(0) as u32,
            line_table,
        }
    }
}

fn disable(reason: &str) {
    if WALKING.swap(false, Ordering::Relaxed) {
        crate::sys::write_stderr(format!("libleak: {reason}; recording native stacks only\n").as_bytes());
    }
}

/// Reads a `str` object without calling Python: compact ASCII, the cached UTF-8 of compact
/// strings, or transcoding Latin-1/UCS-2/UCS-4 data.
fn read_string(object: usize, symbols: &Symbols, layout: &layouts::UnicodeLayout) -> Option<String> {
    let object_type = raw::read::<usize>(object + layouts::OBJECT_TYPE)?;
    if object_type != symbols.unicode_type {
        let flags = raw::read::<u64>(object_type + layouts::TYPE_FLAGS)?;
        if flags & layouts::TYPE_FLAG_UNICODE_SUBCLASS == 0 {
            return None;
        }
    }
    let length = raw::read::<usize>(object + layouts::UNICODE_LENGTH)?.min(MAX_STRING_BYTES);
    let state = raw::read::<u32>(object + layouts::UNICODE_STATE)?;
    let (compact, ascii, kind) = (state & 0x20 != 0, state & 0x40 != 0, (state >> 2) & 0x7);
    let mut bytes = Vec::new();
    if compact && ascii {
        raw::read_bytes(object + layout.ascii_data, length, &mut bytes).then_some(())?;
        return String::from_utf8(bytes).ok();
    }
    let data = if compact {
        let utf8 = raw::read::<usize>(object + layout.utf8).unwrap_or(0);
        if utf8 != 0 {
            let utf8_length = raw::read::<usize>(object + layout.utf8_length)?.min(MAX_STRING_BYTES);
            raw::read_bytes(utf8, utf8_length, &mut bytes).then_some(())?;
            return Some(String::from_utf8_lossy(&bytes).into_owned());
        }
        object + layout.compact_data
    } else {
        if layout.needs_ready && state & 0x80 == 0 {
            return None;
        }
        raw::read::<usize>(object + layout.compact_data)?
    };
    let width = match kind {
        1 | 2 | 4 => kind as usize,
        _ => return None,
    };
    raw::read_bytes(data, length * width, &mut bytes).then_some(())?;
    let units = bytes.chunks_exact(width).map(|unit| match *unit {
        [a] => u32::from(a),
        [a, b] => u32::from(u16::from_ne_bytes([a, b])),
        [a, b, c, d] => u32::from_ne_bytes([a, b, c, d]),
        _ => 0xfffd,
    });
    Some(units.map(|u| char::from_u32(u).unwrap_or('\u{fffd}')).collect())
}
