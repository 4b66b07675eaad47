//! Names for what a Python program holds, read by the scan made when finalisation begins:
//! every module's globals (`app._RESULTS`) and the attributes of the classes it defines
//! (`app.Bus.listeners`), each naming the object it refers to. The scan floods from these
//! names before any other root, so a block it reaches first from one of them is held by that
//! name (see [`crate::reach`]).
//!
//! Reads go through the caller's reader (the scan's safe reader): nothing here dereferences
//! memory itself, and every count read from memory is bounded before it is trusted. Only
//! combined dict tables are read (module and class dicts are never split). Per-version facts
//! come from [`super::layouts`].

use super::layouts::{
    DictKeys, Layout, DICT_KEYS, DICT_VALUES, MODULE_DICT, MODULE_NAME, OBJECT_TYPE, TYPE_DICT, TYPE_FLAG_HEAPTYPE,
    UNICODE_LENGTH, UNICODE_STATE,
};

/// Entries read from one dict at most: a module with more globals than this is cut short.
const MAX_ENTRIES: u64 = 1 << 16;
/// Longest name read (module, global or attribute).
const MAX_NAME_BYTES: u64 = 256;
/// `PyASCIIObject.state`: the compact and ascii bits.
const STATE_COMPACT: u64 = 0x20;
const STATE_ASCII: u64 = 0x40;

pub type Read<'a> = dyn FnMut(u64) -> Option<u64> + 'a;

/// What is needed to name the objects of the interpreter found in the process.
pub struct Namer {
    module_type: u64,
    pub(super) dict_type: u64,
    pub(super) unicode_type: u64,
    pub(super) list_type: u64,
    pub(super) tuple_type: u64,
    pub(super) long_type: u64,
    pub(super) cell_type: u64,
    pub(super) function_type: u64,
    pub(super) code_type: u64,
    /// The main interpreter (0: not found), and the first thread state of its list when the
    /// namer was made (0: none).
    pub(super) interpreter: u64,
    pub(super) first_thread: u64,
    ascii_data: u64,
    dict_keys: DictKeys,
    pub(super) layout: &'static Layout,
}

/// The namer for the interpreter in the process, if there is one whose module and dict
/// types were found.
pub fn namer() -> Option<Namer> {
    let interpreter = super::interpreter()?;
    let symbols = &interpreter.symbols;
    if symbols.module_type == 0 || symbols.dict_type == 0 {
        return None;
    }
    let (main_interpreter, first_thread) = symbols.main_interpreter().unwrap_or((0, 0));
    Some(Namer {
        module_type: symbols.module_type as u64,
        dict_type: symbols.dict_type as u64,
        unicode_type: symbols.unicode_type as u64,
        list_type: symbols.list_type as u64,
        tuple_type: symbols.tuple_type as u64,
        long_type: symbols.long_type as u64,
        cell_type: symbols.cell_type as u64,
        function_type: symbols.function_type as u64,
        code_type: symbols.code_type as u64,
        interpreter: main_interpreter as u64,
        first_thread: first_thread as u64,
        ascii_data: interpreter.layout.unicode.ascii_data as u64,
        dict_keys: interpreter.layout.dict_keys,
        layout: interpreter.layout,
    })
}

impl Namer {
    pub fn is_module_type(&self, type_address: u64) -> bool {
        type_address == self.module_type
    }

    /// The named roots of the module objects at `modules`: (object, name) pairs, the
    /// `__main__` module's first. `type_flags` gives the flags of a type object (None for an
    /// address that is no type). Dunder names (`__builtins__`, `__dict__`, …) and modules
    /// bound to a name are not roots: they would name what belongs elsewhere.
    pub fn named_roots(
        &self,
        read: &mut Read<'_>,
        type_flags: &mut dyn FnMut(&mut Read<'_>, u64) -> Option<u64>,
        modules: &[u64],
    ) -> Vec<(u64, String)> {
        let mut named: Vec<(String, u64)> = modules
            .iter()
            .filter_map(|&module| {
                let name = read(module + MODULE_NAME)?;
                Some((self.ascii(read, name)?, module))
            })
            .collect();
        // `__main__` first: the program's own names win over the same objects imported
        // elsewhere; then by name, so that a trace does not depend on heap addresses.
        named.sort_by(|a, b| (a.0 != "__main__", &a.0).cmp(&(b.0 != "__main__", &b.0)));
        let mut roots = Vec::new();
        for (module_name, module) in named {
            let Some(globals) = read(module + MODULE_DICT) else {
                continue;
            };
            for (key, value) in self.dict_items(read, globals) {
                if read(value + OBJECT_TYPE as u64) == Some(self.module_type) {
                    continue;
                }
                let name = format!("{module_name}.{key}");
                let is_heap_type = type_flags(read, value).is_some_and(|flags| flags & TYPE_FLAG_HEAPTYPE != 0);
                if is_heap_type {
                    if let Some(attributes) = read(value + TYPE_DICT) {
                        for (attribute, held) in self.dict_items(read, attributes) {
                            roots.push((held, format!("{name}.{attribute}")));
                        }
                    }
                }
                roots.push((value, name));
            }
        }
        roots
    }

    /// The (key, value) pairs of the dict object at `dict` whose keys are ASCII strings,
    /// dunder names left out.
    fn dict_items(&self, read: &mut Read<'_>, dict: u64) -> Vec<(String, u64)> {
        let mut items = self.all_dict_items(read, dict);
        items.retain(|(name, _)| !(name.starts_with("__") && name.ends_with("__")));
        items
    }

    /// The value of key `wanted` (an ASCII string) in the dict object at `dict`.
    pub(super) fn dict_value(&self, read: &mut Read<'_>, dict: u64, wanted: &str) -> Option<u64> {
        self.all_dict_items(read, dict)
            .into_iter()
            .find_map(|(key, value)| (key == wanted).then_some(value))
    }

    /// The (key, value) pairs of the dict object at `dict` whose keys are ASCII strings.
    fn all_dict_items(&self, read: &mut Read<'_>, dict: u64) -> Vec<(String, u64)> {
        let mut items = Vec::new();
        if dict == 0 || read(dict + OBJECT_TYPE as u64) != Some(self.dict_type) || read(dict + DICT_VALUES) != Some(0) {
            return items;
        }
        let Some(keys) = read(dict + DICT_KEYS).filter(|&k| k != 0) else {
            return items;
        };
        let Some(table) = self.entries(read, keys) else {
            return items;
        };
        for index in 0..table.count.min(MAX_ENTRIES) {
            let entry = table.first + index * table.entry_size;
            let (Some(key), Some(value)) = (read(entry + table.key_offset), read(entry + table.key_offset + 8)) else {
                continue;
            };
            if key == 0 || value == 0 {
                continue;
            }
            if let Some(name) = self.ascii(read, key) {
                items.push((name, value));
            }
        }
        items
    }

    /// Where a keys table's entries are, and how many.
    pub(super) fn entries(&self, read: &mut Read<'_>, keys: u64) -> Option<EntryTable> {
        match self.dict_keys {
            DictKeys::SizeField => {
                let slots = read(keys + 8)?;
                let count = read(keys + 32)?;
                if !slots.is_power_of_two() || slots > 1 << 32 || count > slots {
                    return None;
                }
                let index_bytes = match slots {
                    0..=0xff => 1,
                    0x100..=0xffff => 2,
                    _ => 4,
                };
                Some(EntryTable {
                    first: keys + 40 + slots * index_bytes,
                    count,
                    entry_size: 24,
                    key_offset: 8,
                })
            }
            DictKeys::Log2Fields => {
                let packed = read(keys + 8)?;
                let log2_index_bytes = (packed >> 8) & 0xff;
                let general = (packed >> 16) & 0xff == 0;
                let log2_size = packed & 0xff;
                let count = read(keys + 24)?;
                if log2_index_bytes > 40 || log2_size > 32 || count > 1 << log2_size {
                    return None;
                }
                Some(EntryTable {
                    first: keys + 32 + (1 << log2_index_bytes),
                    count,
                    entry_size: if general { 24 } else { 16 },
                    key_offset: if general { 8 } else { 0 },
                })
            }
        }
    }

    /// The text of a compact ASCII `str` object (exactly `str`, not a subclass).
    pub(super) fn ascii(&self, read: &mut Read<'_>, object: u64) -> Option<String> {
        match self.ascii_prefix(read, object, MAX_NAME_BYTES)? {
            (text, false) => Some(text),
            (_, true) => None,
        }
    }

    /// The first `most` characters of a compact ASCII `str` object (exactly `str`), and
    /// whether there are more.
    pub(super) fn ascii_prefix(&self, read: &mut Read<'_>, object: u64, most: u64) -> Option<(String, bool)> {
        if object == 0 || read(object + OBJECT_TYPE as u64)? != self.unicode_type {
            return None;
        }
        let state = read(object + UNICODE_STATE as u64)?;
        let full_length = read(object + UNICODE_LENGTH as u64)?;
        if state & (STATE_COMPACT | STATE_ASCII) != STATE_COMPACT | STATE_ASCII || full_length > 1 << 40 {
            return None;
        }
        let length = full_length.min(most);
        let mut bytes = Vec::with_capacity(length as usize);
        let data = object + self.ascii_data;
        for word_at in (0..length).step_by(8) {
            let word = read(data + word_at)?.to_le_bytes();
            bytes.extend_from_slice(&word[..(length - word_at).min(8) as usize]);
        }
        Some((String::from_utf8(bytes).ok()?, full_length > length))
    }
}

#[derive(Clone, Copy)]
pub(super) struct EntryTable {
    pub(super) first: u64,
    pub(super) count: u64,
    pub(super) entry_size: u64,
    /// The value follows the key.
    pub(super) key_offset: u64,
}
