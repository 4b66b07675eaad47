//! Names of the steps of a retention path, read by the scan made when finalisation begins:
//! how one block on the path holds the next, as a Python programmer would write it — an
//! attribute (`.sessions`), a dict key (`['user-7']`, `[42]`), an item of a list or a tuple
//! (`[3]`), or one of a dict's keys itself (`<key>`). Joined after the holder's name they give an expression that reaches the held
//! memory: `__main__.STATE.sessions['user-7'].payload`.
//!
//! Only what can be read with certainty is named: a word of a tuple's items, of a list's
//! item array, of a dict's entries or values, or of an instance's attribute values. A pointer
//! kept by C code in a struct gives no name (the path then shows only the type).
//!
//! Reads go through the caller's reader (the scan's safe reader): nothing here dereferences
//! memory itself, and every count read from memory is bounded before it is trusted.
//! Per-version facts come from [`super::layouts`].

use std::collections::HashMap;
use std::hash::BuildHasherDefault;

use libleak_format::live::AddressHasher;

use super::holders::{EntryTable, Namer, Read};
use super::layouts::{
    DICT_KEYS, DICT_VALUES, INLINE_VALUES, INLINE_VALUES_HEADER, LIST_ITEMS, LIST_SIZE, LONG_DIGITS, LONG_SIZE,
    MANAGED_DICT_BEFORE_OBJECT, OBJECT_TYPE, TUPLE_ITEMS, TYPE_DICT_OFFSET, TYPE_FLAGS, TYPE_FLAG_DICT_SUBCLASS,
    TYPE_FLAG_INLINE_VALUES, TYPE_FLAG_LIST_SUBCLASS, TYPE_FLAG_MANAGED_DICT, TYPE_FLAG_TUPLE_SUBCLASS,
};

/// Characters of a key shown at most; a longer one ends in `…`.
const MAX_KEY_CHARS: u64 = 40;
/// Items of a container whose keys or indices are named: an item of a larger dict or list
/// (a cache, a registry, the container that grows) is `[…]`, which also bounds what naming
/// reads per held block.
const MAX_NAMED_ITEMS: u64 = 64;
/// Inline values an instance can have (their capacity is a byte).
const MAX_INLINE_VALUES: u64 = 256;
/// Digits (30 bits each) of an int key read at most: larger ints are shown as `[…]`.
const MAX_INT_DIGITS: u64 = 2;

/// The step to an item whose key is not shown.
const ANY_ITEM: &str = "[…]";
/// The step from a dict to one of its keys.
const A_KEY: &str = "<key>";

/// A block on a retention path, and the word in it that the next block down was read from.
#[derive(Clone, Copy, Debug)]
pub struct Link {
    /// Where the block starts.
    pub block: u64,
    pub size: u64,
    /// The Python object the block holds: (its address, its type's address).
    pub object: Option<(u64, u64)>,
    /// The address of the word the next block down was read from.
    pub word: u64,
}

type ByAddress<V> = HashMap<u64, V, BuildHasherDefault<AddressHasher>>;

/// Names the steps of many paths, each distinct name once (ids from 1, in the order first
/// met): what every path reads again (a type's flags, a container's header, a keys table's
/// shape, a key's text) is read once.
pub struct StepNamer<'a> {
    namer: &'a Namer,
    /// Step `id` is at index `id - 1`.
    names: Vec<String>,
    ids: HashMap<String, u32>,
    /// Ids of `[index]` steps, by index.
    indices: ByAddress<u32>,
    /// By type: its flags and `tp_dictoffset`.
    types: ByAddress<Option<(u64, i64)>>,
    /// Header words of containers (a dict's table and values, a list's items and length),
    /// and of types (their shared keys), by address.
    fields: ByAddress<Option<u64>>,
    /// By keys table.
    tables: ByAddress<Option<EntryTable>>,
    /// Step ids by key object, as a dict key (`false`) or an attribute (`true`).
    keys: HashMap<(u64, bool), Option<u32>, BuildHasherDefault<AddressHasher>>,
}

impl<'a> StepNamer<'a> {
    pub fn new(namer: &'a Namer) -> Self {
        StepNamer {
            namer,
            names: Vec::new(),
            ids: HashMap::new(),
            indices: ByAddress::default(),
            types: ByAddress::default(),
            fields: ByAddress::default(),
            tables: ByAddress::default(),
            keys: HashMap::default(),
        }
    }

    /// The names of the steps named so far: step `id` is at index `id - 1`.
    pub fn into_names(self) -> Vec<String> {
        self.names
    }

    fn id_of(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        self.names.push(name.to_string());
        let id = self.names.len() as u32;
        self.ids.insert(name.to_string(), id);
        id
    }

    fn index_id(&mut self, index: u64) -> u32 {
        if let Some(&id) = self.indices.get(&index) {
            return id;
        }
        let id = self.id_of(&format!("[{index}]"));
        self.indices.insert(index, id);
        id
    }

    /// How `parent` holds the block read from its `word`: `.attr`, `['key']` or `[index]`.
    /// `above(1)` and `above(2)` give the blocks above it on the path, each with the word the
    /// one below was read from (a list's item array names its item through the list above
    /// it; a dict's table names its value through the dict, whose keys are attributes when
    /// the object above keeps it as its `__dict__`). None when the step has no Python name.
    pub fn step_name(
        &mut self,
        read: &mut Read<'_>,
        parent: Link,
        above: &mut dyn FnMut(usize) -> Option<Link>,
    ) -> Option<u32> {
        if let Some((object, object_type)) = parent.object {
            if object_type == self.namer.cell_type {
                // A closure's cell, in its function's `__closure__` tuple; a cell that is a
                // root (a frame's cell variable) is the variable itself.
                let in_closure = above(1)
                    .and_then(|link| link.object)
                    .is_some_and(|(_, above_type)| above_type == self.namer.tuple_type);
                return Some(self.id_of(if in_closure { ".cell_contents" } else { "" }));
            }
            return self.own_step(read, parent.word, object, object_type);
        }
        let above_parent = above(1)?;
        let (object, object_type) = above_parent.object?;
        let (flags, _) = self.type_facts(read, object_type)?;
        let index_in = |start: u64| parent.word.checked_sub(start).map(|offset| offset / 8);
        if object_type == self.namer.list_type || flags & TYPE_FLAG_LIST_SUBCLASS != 0 {
            if self.field(read, object + LIST_ITEMS)? != parent.block {
                return None;
            }
            if self.field(read, object + LIST_SIZE)? > MAX_NAMED_ITEMS {
                return Some(self.id_of(ANY_ITEM));
            }
            return Some(self.index_id(index_in(parent.block)?));
        }
        if object_type == self.namer.dict_type || flags & TYPE_FLAG_DICT_SUBCLASS != 0 {
            let keys = self.field(read, object + DICT_KEYS)?;
            if keys == parent.block {
                let table = self.table(read, keys)?;
                let offset = parent.word.checked_sub(table.first)?;
                let (entry, in_entry) = (offset / table.entry_size, offset % table.entry_size);
                if entry >= table.count {
                    return None;
                }
                if in_entry == table.key_offset {
                    return Some(self.id_of(A_KEY));
                }
                if in_entry != table.key_offset + 8 {
                    return None;
                }
                if table.count > MAX_NAMED_ITEMS {
                    return Some(self.id_of(ANY_ITEM));
                }
                let key = read(table.first + entry * table.entry_size + table.key_offset)?;
                let attribute = self.is_attribute_dict(read, above(2), object);
                return self.key_step(read, key, attribute);
            }
            let values = self.field(read, object + DICT_VALUES)?;
            if values < parent.block || values >= parent.block + parent.size {
                return None;
            }
            // Split tables belong to instances: their keys are attribute names.
            let index = index_in(values + self.namer.layout.paths.dict_values_header)?;
            return self.shared_key_step(read, keys, index);
        }
        // 3.11–3.12: an instance's attribute values in a block of their own, referenced
        // from the words before the object (past an insertion-order prefix).
        if flags & TYPE_FLAG_MANAGED_DICT != 0 && above_parent.word < object && self.namer.layout.dict_values_prefix {
            let prefix = super::gc::dict_values_prefix(read, parent.block, parent.size)?;
            let index = index_in(parent.block + prefix)?;
            let keys = self.field(read, object_type + self.namer.layout.paths.cached_keys)?;
            return self.shared_key_step(read, keys, index);
        }
        None
    }

    /// A type's flags and `tp_dictoffset`, if it can be read.
    fn type_facts(&mut self, read: &mut Read<'_>, object_type: u64) -> Option<(u64, i64)> {
        *self.types.entry(object_type).or_insert_with(|| {
            let flags = read(object_type + TYPE_FLAGS as u64)?;
            let dict_offset = read(object_type + TYPE_DICT_OFFSET).unwrap_or(0) as i64;
            Some((flags, dict_offset))
        })
    }

    /// A header word of a container or a type, read once.
    fn field(&mut self, read: &mut Read<'_>, address: u64) -> Option<u64> {
        *self.fields.entry(address).or_insert_with(|| read(address))
    }

    /// The shape of the keys table at `keys`, read once.
    fn table(&mut self, read: &mut Read<'_>, keys: u64) -> Option<EntryTable> {
        let namer = self.namer;
        *self.tables.entry(keys).or_insert_with(|| namer.entries(read, keys))
    }

    /// How the object at `object` names the word at `word` inside itself (or around it: the
    /// managed `__dict__` pointer lies before it). Its `__dict__` is the empty name: the dict's
    /// keys name the attributes.
    fn own_step(&mut self, read: &mut Read<'_>, word: u64, object: u64, object_type: u64) -> Option<u32> {
        let facts = self.type_facts(read, object_type)?;
        if self.is_dict_slot(word, object, facts) {
            return Some(self.id_of(""));
        }
        if object_type == self.namer.function_type {
            let defaults = object + self.namer.layout.paths.function_defaults;
            let attribute = match word.checked_sub(defaults)? {
                0 => ".__defaults__",
                8 => ".__kwdefaults__",
                16 => ".__closure__",
                _ => return None,
            };
            return Some(self.id_of(attribute));
        }
        let (flags, _) = facts;
        if object_type == self.namer.tuple_type || flags & TYPE_FLAG_TUPLE_SUBCLASS != 0 {
            return Some(self.index_id(word.checked_sub(object + TUPLE_ITEMS)? / 8));
        }
        if self.namer.layout.paths.inline_values && flags & TYPE_FLAG_INLINE_VALUES != 0 {
            let values = object + INLINE_VALUES;
            let index = word.checked_sub(values + INLINE_VALUES_HEADER)? / 8;
            if index < MAX_INLINE_VALUES && index < read(values)? & 0xff {
                let keys = self.field(read, object_type + self.namer.layout.paths.cached_keys)?;
                return self.shared_key_step(read, keys, index);
            }
        }
        None
    }

    /// Whether the dict at `dict` is the `__dict__` of the object of `owner` (the link above
    /// the dict on the path, if any).
    fn is_attribute_dict(&mut self, read: &mut Read<'_>, owner: Option<Link>, dict: u64) -> bool {
        let Some(Link {
            object: Some((object, object_type)),
            word,
            ..
        }) = owner
        else {
            return false;
        };
        if read(word) != Some(dict) {
            return false;
        }
        self.type_facts(read, object_type)
            .is_some_and(|facts| self.is_dict_slot(word, object, facts))
    }

    /// Whether `word` is where the object at `object`, of a type with these flags and
    /// `tp_dictoffset`, keeps its `__dict__`.
    fn is_dict_slot(&self, word: u64, object: u64, (flags, dict_offset): (u64, i64)) -> bool {
        if flags & TYPE_FLAG_MANAGED_DICT != 0 && self.namer.layout.gc_preheader_flags != 0 {
            return word == object.wrapping_sub(MANAGED_DICT_BEFORE_OBJECT);
        }
        dict_offset > 0 && word == object + dict_offset as u64
    }

    /// The attribute named by entry `index` of the keys table at `keys` (a table the
    /// instances of a class share).
    fn shared_key_step(&mut self, read: &mut Read<'_>, keys: u64, index: u64) -> Option<u32> {
        let table = self.table(read, keys)?;
        if index >= table.count {
            return None;
        }
        let key = read(table.first + index * table.entry_size + table.key_offset)?;
        self.key_step(read, key, true)
    }

    /// A key as a step: `.name` for an attribute, `['text']` or `[42]` for a dict key, `[…]`
    /// for a key of another type (or one that cannot be read).
    fn key_step(&mut self, read: &mut Read<'_>, key: u64, attribute: bool) -> Option<u32> {
        if let Some(&id) = self.keys.get(&(key, attribute)) {
            return id;
        }
        let id = self.namer.key_name(read, key, attribute).map(|name| self.id_of(&name));
        self.keys.insert((key, attribute), id);
        id
    }
}

impl Namer {
    /// See [`StepNamer::key_step`].
    fn key_name(&self, read: &mut Read<'_>, key: u64, attribute: bool) -> Option<String> {
        if let Some((text, cut)) = self.ascii_prefix(read, key, MAX_KEY_CHARS) {
            let is_identifier = !text.is_empty()
                && !text.starts_with(|c: char| c.is_ascii_digit())
                && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if attribute && is_identifier && !cut {
                return Some(format!(".{text}"));
            }
            return Some(format!("[{}]", quoted(&text, cut)));
        }
        if attribute {
            return None;
        }
        Some(match self.int_value(read, key) {
            Some(value) => format!("[{value}]"),
            None => ANY_ITEM.to_string(),
        })
    }

    /// The value of an int object (exactly `int`) of at most [`MAX_INT_DIGITS`] digits.
    fn int_value(&self, read: &mut Read<'_>, object: u64) -> Option<i128> {
        if object == 0 || read(object + OBJECT_TYPE as u64)? != self.long_type {
            return None;
        }
        let size = read(object + LONG_SIZE)?;
        let (digits, negative) = if self.layout.paths.tagged_ints {
            (size >> 3, size & 3 == 2)
        } else {
            let signed = size as i64;
            (signed.unsigned_abs(), signed < 0)
        };
        if digits > MAX_INT_DIGITS {
            return None;
        }
        let words = read(object + LONG_DIGITS)?;
        let low = i128::from(words as u32 & 0x3fff_ffff);
        let high = i128::from((words >> 32) as u32 & 0x3fff_ffff);
        let magnitude = match digits {
            0 => 0,
            1 => low,
            _ => low | high << 30,
        };
        Some(if negative { -magnitude } else { magnitude })
    }
}

/// `text` as Python's `repr` would quote it (ASCII only), `…` before the closing quote when
/// it was cut.
fn quoted(text: &str, cut: bool) -> String {
    let quote = if text.contains('\'') && !text.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(text.len() + 3);
    out.push(quote);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_ascii_graphic() || c == ' ' => out.push(c),
            c => out.push_str(&format!("\\x{:02x}", c as u32)),
        }
    }
    if cut {
        out.push('…');
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::quoted;

    #[test]
    fn keys_are_quoted_as_python_writes_them() {
        assert_eq!(quoted("user-7", false), "'user-7'");
        assert_eq!(quoted("it's", false), "\"it's\"");
        assert_eq!(quoted("a'b\"c", false), "'a\\'b\"c'");
        assert_eq!(quoted("tab\there\\", false), "'tab\\there\\\\'");
        assert_eq!(quoted("\u{1}", false), "'\\x01'");
        assert_eq!(quoted("long", true), "'long…'");
    }
}
