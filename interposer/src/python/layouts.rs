//! Every piece of per-version CPython knowledge the interposer has, as data: where the frame
//! chain starts, the field offsets of frames, code objects and strings, on x86-64.
//!
//! Offsets were printed with `offsetof` against each version's internal headers and checked
//! by walking real stacks (see `docs/python-frames.md` §2). Supporting a
//! new version whose structures only moved means adding one entry to [`LAYOUTS`]; a new frame
//! chain shape also needs `python/mod.rs`, and a new line-table format the reporter's line
//! tables.

/// How a version links its executing frames.
#[derive(Debug)]
pub enum FrameChain {
    /// 3.9, 3.10: `PyFrameObject`s from `tstate->frame` through `f_back`; every frame is run
    /// by its own eval-loop activation.
    FrameObjects {
        first: usize,
        back: usize,
        code: usize,
        /// `f_lasti` (an `int`).
        last_instruction: usize,
        /// Bytes per unit of `f_lasti`: 1 in 3.9 (bytes), 2 in 3.10 (code units).
        instruction_unit: i64,
    },
    /// 3.11+: `_PyInterpreterFrame`s through `previous`, several per eval-loop activation.
    InterpreterFrames {
        /// Where `tstate` keeps the innermost frame.
        current: CurrentFrame,
        previous: usize,
        code: usize,
        /// `prev_instr` (3.11, 3.12) or `instr_ptr` (3.13): a pointer into the code's
        /// inline bytecode.
        instruction_pointer: usize,
        owner: usize,
        /// 3.11: the `is_entry` flag that closes an activation. Later versions push a shim
        /// frame (owner [`OWNED_BY_C_STACK`]) instead.
        is_entry: Option<usize>,
    },
}

#[derive(Debug)]
pub enum CurrentFrame {
    /// `tstate->cframe` (at `cframe`), then the `current_frame` field of that `_PyCFrame`.
    ThroughCFrame { cframe: usize, current_frame: usize },
    /// `tstate->current_frame` directly (3.13).
    InThreadState(usize),
}

/// `_PyInterpreterFrame.owner` values.
pub const OWNED_BY_GENERATOR: u8 = 1;
pub const OWNED_BY_C_STACK: u8 = 3;

/// Fields of `PyCodeObject`.
#[derive(Debug)]
pub struct CodeLayout {
    pub first_line: usize,
    pub filename: usize,
    /// `co_qualname` (3.11+) or `co_name`.
    pub name: usize,
    /// `co_lnotab` (3.9) or `co_linetable`.
    pub line_table: usize,
    /// 3.11+: offset of the inline bytecode (`co_code_adaptive`) inside the object.
    pub inline_code: Option<usize>,
    /// 3.11+: `_co_firsttraceable`; frames before it have not started (incomplete).
    pub first_traceable: Option<usize>,
    /// ≤3.10: the `co_code` bytes object, whose length bounds `f_lasti`.
    pub code_bytes: Option<usize>,
}

/// Sizes of the compact string layouts (`PyASCIIObject`, `PyCompactUnicodeObject`) and the
/// cached UTF-8 fields of the latter.
#[derive(Debug)]
pub struct UnicodeLayout {
    pub ascii_data: usize,
    pub compact_data: usize,
    pub utf8_length: usize,
    pub utf8: usize,
    /// ≤3.11: the `ready` state bit is required for non-compact strings.
    pub needs_ready: bool,
}

/// How a dict's keys table (`PyDictKeysObject`) gives its size and its entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DictKeys {
    /// 3.9, 3.10: `dk_size` (slots) at 8 and `dk_nentries` at 32; the index array at 40 has
    /// 1, 2, 4 or 8 bytes per slot by `dk_size`; entries are (hash, key, value).
    SizeField,
    /// 3.11+: `dk_log2_index_bytes` at byte 9, `dk_kind` at byte 10 and `dk_nentries` at 24;
    /// the index array at 32; entries are (key, value) when `dk_kind` is not 0 (general).
    Log2Fields,
}

#[derive(Debug)]
pub struct Layout {
    pub minor: u8,
    /// `_PyRuntime._finalizing`: the thread state finalizing the interpreter, or NULL.
    pub finalizing: usize,
    pub frames: FrameChain,
    pub code: CodeLayout,
    pub unicode: UnicodeLayout,
    /// 3.13+: `_PyRuntime` starts with `_Py_DebugOffsets`, whose header is checked.
    pub debug_offsets: bool,
    /// Type flags that give a garbage-collected object a two-word pre-header before its GC
    /// header (3.11: managed dict; 3.12+: managed dict or managed weak references).
    pub gc_preheader_flags: u64,
    /// 3.12+: objects whose reference count (low 32 bits, as a signed number) is negative
    /// are immortal: the interpreter keeps them for the life of the process by design.
    pub has_immortal_objects: bool,
    /// 3.11–3.12: a managed dict's values live in a block of their own, referenced past an
    /// insertion-order prefix whose last byte is the prefix's size (`new_values` in
    /// Objects/dictobject.c).
    pub dict_values_prefix: bool,
    pub dict_keys: DictKeys,
    /// Where retention paths read names of attributes and keys (see [`PathLayout`]).
    pub paths: PathLayout,
    /// Where a frame keeps its local variables and its code their names.
    pub locals: LocalsLayout,
}

/// A frame's local variables (`localsplus`: the fast locals, then cells and free variables)
/// and their names, as the scan at finalisation reads them to name what a running thread's
/// frames hold.
#[derive(Debug, Clone, Copy)]
pub struct LocalsLayout {
    /// The size of the block a thread state is (`PyThreadState`, 3.13's
    /// `_PyThreadStateImpl`): when finalisation begins, the states of the threads still
    /// running are already off the interpreter's list, but not yet freed.
    pub thread_state_size: u64,
    /// The frame's `f_globals` (its module's dict, whose `__name__` names the module).
    pub frame_globals: u64,
    /// The frame's `localsplus` array.
    pub frame_locals: u64,
    pub names: LocalNames,
}

#[derive(Debug, Clone, Copy)]
pub enum LocalNames {
    /// 3.9, 3.10: `co_nlocals` (an `int`) fast locals named by `co_varnames`, then a cell per
    /// name of `co_cellvars` and one per name of `co_freevars` (tuples).
    ByKind {
        count: u64,
        locals: u64,
        cells: u64,
        free: u64,
    },
    /// 3.11+: `co_nlocalsplus` (an `int`) slots named by the `co_localsplusnames` tuple.
    Combined { count: u64, names: u64 },
}

/// What naming the steps of a retention path (`.attr`, `['key']`, `[3]`) reads beyond the
/// dict tables: where a class keeps the keys its instances share, and how ints and instance
/// values are laid out.
#[derive(Debug, Clone, Copy)]
pub struct PathLayout {
    /// `PyHeapTypeObject.ht_cached_keys`: the keys table a class's instances share.
    pub cached_keys: u64,
    /// 3.12+: an int's digit count and sign are packed in `lv_tag` (count << 3, sign in the
    /// low bits: 0 positive, 1 zero, 2 negative); before, `ob_size` is the signed count.
    pub tagged_ints: bool,
    /// 3.13+: instances of classes flagged `Py_TPFLAGS_INLINE_VALUES` keep their attribute
    /// values inside the object, right after its `PyObject` head, behind a one-word header
    /// whose first byte is their capacity.
    pub inline_values: bool,
    /// The bytes before the first value a split dict's `ma_values` points at (3.13's
    /// `PyDictValues` starts with a header word).
    pub dict_values_header: u64,
    /// `PyFunctionObject.func_defaults`, followed by `func_kwdefaults` and `func_closure`.
    pub function_defaults: u64,
}

const UNICODE_UP_TO_3_11: UnicodeLayout = UnicodeLayout {
    ascii_data: 48,
    compact_data: 72,
    utf8_length: 48,
    utf8: 56,
    needs_ready: true,
};

const UNICODE_FROM_3_12: UnicodeLayout = UnicodeLayout {
    ascii_data: 40,
    compact_data: 56,
    utf8_length: 40,
    utf8: 48,
    needs_ready: false,
};

const CODE_UP_TO_3_10: CodeLayout = CodeLayout {
    first_line: 40,
    filename: 104,
    name: 112,
    line_table: 120,
    inline_code: None,
    first_traceable: None,
    code_bytes: Some(48),
};

pub static LAYOUTS: [Layout; 5] = [
    Layout {
        minor: 9,
        finalizing: 16,
        frames: FrameChain::FrameObjects {
            first: 24,
            back: 24,
            code: 32,
            last_instruction: 104,
            instruction_unit: 1,
        },
        code: CODE_UP_TO_3_10,
        unicode: UNICODE_UP_TO_3_11,
        debug_offsets: false,
        gc_preheader_flags: 0,
        has_immortal_objects: false,
        dict_values_prefix: false,
        locals: LocalsLayout {
            thread_state_size: 264,
            frame_globals: 48,
            frame_locals: 360,
            names: LocalNames::ByKind {
                count: 28,
                locals: 72,
                cells: 88,
                free: 80,
            },
        },
        paths: PathLayout {
            function_defaults: 32,
            cached_keys: 864,
            tagged_ints: false,
            inline_values: false,
            dict_values_header: 0,
        },
        dict_keys: DictKeys::SizeField,
    },
    Layout {
        minor: 10,
        finalizing: 16,
        frames: FrameChain::FrameObjects {
            first: 24,
            back: 24,
            code: 32,
            last_instruction: 96,
            instruction_unit: 2,
        },
        code: CODE_UP_TO_3_10,
        unicode: UNICODE_UP_TO_3_11,
        debug_offsets: false,
        gc_preheader_flags: 0,
        has_immortal_objects: false,
        dict_values_prefix: false,
        locals: LocalsLayout {
            thread_state_size: 280,
            frame_globals: 48,
            frame_locals: 352,
            names: LocalNames::ByKind {
                count: 28,
                locals: 72,
                cells: 88,
                free: 80,
            },
        },
        paths: PathLayout {
            function_defaults: 56,
            cached_keys: 872,
            tagged_ints: false,
            inline_values: false,
            dict_values_header: 0,
        },
        dict_keys: DictKeys::SizeField,
    },
    Layout {
        minor: 11,
        finalizing: 24,
        frames: FrameChain::InterpreterFrames {
            current: CurrentFrame::ThroughCFrame {
                cframe: 56,
                current_frame: 8,
            },
            previous: 48,
            code: 32,
            instruction_pointer: 56,
            owner: 69,
            is_entry: Some(68),
        },
        code: CodeLayout {
            first_line: 72,
            filename: 112,
            name: 128,
            line_table: 136,
            inline_code: Some(184),
            first_traceable: Some(168),
            code_bytes: None,
        },
        unicode: UNICODE_UP_TO_3_11,
        debug_offsets: false,
        gc_preheader_flags: TYPE_FLAG_MANAGED_DICT,
        has_immortal_objects: false,
        dict_values_prefix: true,
        locals: LocalsLayout {
            thread_state_size: 360,
            frame_globals: 8,
            frame_locals: 72,
            names: LocalNames::Combined { count: 76, names: 96 },
        },
        paths: PathLayout {
            function_defaults: 56,
            cached_keys: 872,
            tagged_ints: false,
            inline_values: false,
            dict_values_header: 0,
        },
        dict_keys: DictKeys::Log2Fields,
    },
    Layout {
        minor: 12,
        finalizing: 24,
        frames: FrameChain::InterpreterFrames {
            current: CurrentFrame::ThroughCFrame {
                cframe: 56,
                current_frame: 0,
            },
            previous: 8,
            code: 0,
            instruction_pointer: 56,
            owner: 70,
            is_entry: None,
        },
        code: CodeLayout {
            first_line: 68,
            filename: 112,
            name: 128,
            line_table: 136,
            inline_code: Some(192),
            first_traceable: Some(176),
            code_bytes: None,
        },
        unicode: UNICODE_FROM_3_12,
        debug_offsets: false,
        gc_preheader_flags: TYPE_FLAG_MANAGED_DICT | TYPE_FLAG_MANAGED_WEAKREF,
        has_immortal_objects: true,
        dict_values_prefix: true,
        locals: LocalsLayout {
            thread_state_size: 288,
            frame_globals: 24,
            frame_locals: 72,
            names: LocalNames::Combined { count: 72, names: 96 },
        },
        paths: PathLayout {
            function_defaults: 56,
            cached_keys: 880,
            tagged_ints: true,
            inline_values: false,
            dict_values_header: 0,
        },
        dict_keys: DictKeys::Log2Fields,
    },
    Layout {
        minor: 13,
        finalizing: 608,
        frames: FrameChain::InterpreterFrames {
            current: CurrentFrame::InThreadState(72),
            previous: 8,
            code: 0,
            instruction_pointer: 56,
            owner: 70,
            is_entry: None,
        },
        code: CodeLayout {
            first_line: 68,
            filename: 112,
            name: 128,
            line_table: 136,
            inline_code: Some(200),
            first_traceable: Some(184),
            code_bytes: None,
        },
        unicode: UNICODE_FROM_3_12,
        debug_offsets: true,
        gc_preheader_flags: TYPE_FLAG_MANAGED_DICT | TYPE_FLAG_MANAGED_WEAKREF,
        has_immortal_objects: true,
        dict_values_prefix: false,
        locals: LocalsLayout {
            thread_state_size: 336,
            frame_globals: 24,
            frame_locals: 72,
            names: LocalNames::Combined { count: 72, names: 96 },
        },
        paths: PathLayout {
            function_defaults: 56,
            cached_keys: 880,
            tagged_ints: true,
            inline_values: true,
            dict_values_header: 8,
        },
        dict_keys: DictKeys::Log2Fields,
    },
];

/// Offsets shared by every supported version.
pub const OBJECT_TYPE: usize = 8;
pub const VAR_OBJECT_SIZE: usize = 16;
pub const TYPE_FLAGS: usize = 168;
pub const TYPE_FLAG_UNICODE_SUBCLASS: u64 = 1 << 28;
pub const TYPE_BASIC_SIZE: usize = 32;
/// `PyTypeObject.tp_name`: a C string.
pub const TYPE_NAME: u64 = 24;
/// `Py_TPFLAGS_HAVE_GC`: instances start with a GC header (`PyGC_Head`, two words).
pub const TYPE_FLAG_HAVE_GC: u64 = 1 << 14;
pub const TYPE_FLAG_MANAGED_DICT: u64 = 1 << 4;
pub const TYPE_FLAG_MANAGED_WEAKREF: u64 = 1 << 3;
pub const GC_HEADER_SIZE: u64 = 16;
/// `Py_TPFLAGS_LIST_SUBCLASS`.
pub const TYPE_FLAG_LIST_SUBCLASS: u64 = 1 << 25;
/// `Py_TPFLAGS_TYPE_SUBCLASS`: a metaclass (a subclass of `type`), whose instances are types.
pub const TYPE_FLAG_TYPE_SUBCLASS: u64 = 1 << 31;
/// `PyListObject`: `ob_size` (items in use) and `ob_item` (the item array).
pub const LIST_SIZE: u64 = 16;
pub const LIST_ITEMS: u64 = 24;
pub const GC_PREHEADER_SIZE: u64 = 16;
pub const BYTES_DATA: usize = 32;
pub const UNICODE_LENGTH: usize = 16;
pub const UNICODE_STATE: usize = 32;
/// The smallest block a `str` can be: a compact ASCII string's header (3.12+, without the
/// `wstr` pointer earlier versions have) and its NUL.
pub const SMALLEST_STR: u64 = 41;
/// `PyDictObject`: `ma_keys` and `ma_values` (non-NULL for a split table).
pub const DICT_KEYS: u64 = 32;
pub const DICT_VALUES: u64 = 40;
/// `PyModuleObject`: `md_dict`, and `md_name` (kept for logging after the dict is cleared).
pub const MODULE_DICT: u64 = 16;
pub const MODULE_NAME: u64 = 48;
/// `PyTypeObject.tp_dict` (set for heap types; static builtin types of 3.12+ keep it
/// elsewhere).
pub const TYPE_DICT: u64 = 264;
/// `Py_TPFLAGS_HEAPTYPE`: a type made at run time (a `class` statement, `PyType_FromSpec`).
pub const TYPE_FLAG_HEAPTYPE: u64 = 1 << 9;
/// `PyTypeObject.tp_dictoffset`: where an instance keeps its `__dict__` pointer, from the
/// object's start (0: none; negative: from its end, or managed).
pub const TYPE_DICT_OFFSET: u64 = 288;
/// `Py_TPFLAGS_TUPLE_SUBCLASS`, `Py_TPFLAGS_DICT_SUBCLASS`, `Py_TPFLAGS_INLINE_VALUES` (3.13+).
pub const TYPE_FLAG_TUPLE_SUBCLASS: u64 = 1 << 26;
pub const TYPE_FLAG_DICT_SUBCLASS: u64 = 1 << 29;
pub const TYPE_FLAG_INLINE_VALUES: u64 = 1 << 2;
/// `PyTupleObject.ob_item`: the items, inside the object.
pub const TUPLE_ITEMS: u64 = 24;
/// `PyThreadState.next` and `PyThreadState.interp`.
pub const THREAD_NEXT: u64 = 8;
pub const THREAD_INTERPRETER: u64 = 16;
/// The managed `__dict__` pointer of an instance (3.11+), before the object's start.
pub const MANAGED_DICT_BEFORE_OBJECT: u64 = 24;
/// 3.13+: where an instance's inline values start (after its `PyObject` head), and the size
/// of their header.
pub const INLINE_VALUES: u64 = 16;
pub const INLINE_VALUES_HEADER: u64 = 8;
/// `PyLongObject`: its size (`ob_size` or `lv_tag`) and its 30-bit digits (`uint32_t`).
pub const LONG_SIZE: u64 = 16;
pub const LONG_DIGITS: u64 = 24;

pub fn for_minor(minor: u8) -> Option<&'static Layout> {
    LAYOUTS.iter().find(|layout| layout.minor == minor)
}
