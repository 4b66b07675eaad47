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
        // Keys, then values, then class attributes' keys are read for all modules at once, in
        // address order (see `in_address_order`).
        let globals: Vec<Vec<(u64, u64)>> = named
            .iter()
            .map(|&(_, module)| read(module + MODULE_DICT).map_or_else(Vec::new, |dict| self.dict_pairs(read, dict)))
            .collect();
        let globals = self.named_items(read, globals);
        let kinds: Vec<Vec<GlobalKind>> = {
            let values: Vec<u64> = globals.iter().flatten().map(|&(_, value)| value).collect();
            let mut kinds = in_address_order(
                &values,
                |&value| value,
                |&value| {
                    if read(value + OBJECT_TYPE as u64) == Some(self.module_type) {
                        return GlobalKind::Module;
                    }
                    if type_flags(read, value).is_some_and(|flags| flags & TYPE_FLAG_HEAPTYPE != 0) {
                        return GlobalKind::Class(read(value + TYPE_DICT));
                    }
                    GlobalKind::Other
                },
            )
            .into_iter();
            globals
                .iter()
                .map(|items| kinds.by_ref().take(items.len()).collect())
                .collect()
        };
        let class_dicts: Vec<Vec<(u64, u64)>> = kinds
            .iter()
            .flatten()
            .filter_map(|&kind| match kind {
                GlobalKind::Class(Some(dict)) => Some(self.dict_pairs(read, dict)),
                _ => None,
            })
            .collect();
        let mut attributes = self.named_items(read, class_dicts).into_iter();
        let mut roots = Vec::new();
        for (((module_name, _), items), kinds) in named.iter().zip(globals).zip(kinds) {
            for ((key, value), kind) in items.into_iter().zip(kinds) {
                // A class's attributes were read whether or not the class is a root.
                let held = match kind {
                    GlobalKind::Class(Some(_)) => attributes.next().unwrap_or_default(),
                    _ => Vec::new(),
                };
                if kind == GlobalKind::Module {
                    continue;
                }
                let name = format!("{module_name}.{key}");
                for (attribute, held) in held {
                    roots.push((held, format!("{name}.{attribute}")));
                }
                roots.push((value, name));
            }
        }
        roots
    }

    /// Per dict, its (key, value) pairs whose keys are ASCII strings, dunder names left out:
    /// the keys of all the dicts read in address order.
    fn named_items(&self, read: &mut Read<'_>, dicts: Vec<Vec<(u64, u64)>>) -> Vec<Vec<(String, u64)>> {
        let keys: Vec<u64> = dicts.iter().flatten().map(|&(key, _)| key).collect();
        let mut names = in_address_order(&keys, |&key| key, |&key| self.ascii(read, key)).into_iter();
        dicts
            .into_iter()
            .map(|pairs| {
                pairs
                    .into_iter()
                    .zip(names.by_ref())
                    .filter_map(|((_, value), name)| name.map(|name| (name, value)))
                    .filter(|(name, _)| !(name.starts_with("__") && name.ends_with("__")))
                    .collect()
            })
            .collect()
    }

    /// The value of key `wanted` (an ASCII string) in the dict object at `dict`.
    pub(super) fn dict_value(&self, read: &mut Read<'_>, dict: u64, wanted: &str) -> Option<u64> {
        self.all_dict_items(read, dict)
            .into_iter()
            .find_map(|(key, value)| (key == wanted).then_some(value))
    }

    /// The (key, value) pairs of the dict object at `dict` whose keys are ASCII strings.
    fn all_dict_items(&self, read: &mut Read<'_>, dict: u64) -> Vec<(String, u64)> {
        let pairs = self.dict_pairs(read, dict);
        let names = in_address_order(&pairs, |&(key, _)| key, |&(key, _)| self.ascii(read, key));
        pairs
            .into_iter()
            .zip(names)
            .filter_map(|((_, value), name)| name.map(|name| (name, value)))
            .collect()
    }

    /// The (key, value) pairs of the combined dict object at `dict`, neither of them null.
    fn dict_pairs(&self, read: &mut Read<'_>, dict: u64) -> Vec<(u64, u64)> {
        let mut pairs = Vec::new();
        if dict == 0 || read(dict + OBJECT_TYPE as u64) != Some(self.dict_type) || read(dict + DICT_VALUES) != Some(0) {
            return pairs;
        }
        let Some(keys) = read(dict + DICT_KEYS).filter(|&k| k != 0) else {
            return pairs;
        };
        let Some(table) = self.entries(read, keys) else {
            return pairs;
        };
        for index in 0..table.count.min(MAX_ENTRIES) {
            let entry = table.first + index * table.entry_size;
            let (Some(key), Some(value)) = (read(entry + table.key_offset), read(entry + table.key_offset + 8)) else {
                continue;
            };
            if key != 0 && value != 0 {
                pairs.push((key, value));
            }
        }
        pairs
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

/// What a module global is, as far as naming goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum GlobalKind {
    /// A module bound to a name: not a root.
    Module,
    /// A class defined in Python, with its dict (when it could be read).
    Class(Option<u64>),
    Other,
}

/// `look` applied to each of `items`, in the order of the addresses `at` gives them, and the
/// results returned in the items' own order. A dict's keys and values lie scattered over the
/// heap; read in dict order they made the scan's reader (a few cached pages) read a page per
/// object, over 80,000 system calls for the globals and class attributes of a program
/// importing pandas (see docs/benchmarks.md, "The scan at Python finalisation").
fn in_address_order<T, R>(items: &[T], at: impl Fn(&T) -> u64, mut look: impl FnMut(&T) -> R) -> Vec<R> {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_unstable_by_key(|&index| at(&items[index]));
    let mut found: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
    for index in order {
        found[index] = Some(look(&items[index]));
    }
    found.into_iter().flatten().collect()
}

#[derive(Clone, Copy)]
pub(super) struct EntryTable {
    pub(super) first: u64,
    pub(super) count: u64,
    pub(super) entry_size: u64,
    /// The value follows the key.
    pub(super) key_offset: u64,
}
