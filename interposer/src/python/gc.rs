//! Recognising Python objects in blocks live at exit, for the reachability scan:
//! - garbage-collected objects, so that the collector's bookkeeping is not taken for
//!   references: the two words of a GC header link every tracked object into a generation
//!   list, and those links must not make a leaked object look reachable. A reference to such
//!   an object points past its GC header (and past the pre-header of 3.11+ managed dicts and
//!   weak references);
//! - lists, whose item array is scanned only up to the items in use: the slots past them
//!   keep stale pointers to objects long gone, whose memory may now be another block; and
//!   objects whose reference count is 0 (on a free list for reuse, or being deallocated),
//!   which hold only such stale pointers;
//! - immortal objects (3.12+), which the interpreter keeps for the life of the process by
//!   design (interned strings, for one) and which are therefore roots, not leaks;
//! - code objects (3.11+), scanned only up to their inline bytecode: its inline caches keep
//!   addresses the specialising interpreter looked up without taking a reference (a method's
//!   descriptor), stale once the type changes, whose memory may now be another block.
//!
//! Reads go through the caller's reader (the scan's safe reader): nothing here dereferences
//! memory itself. Per-version facts come from [`super::layouts`].

use super::layouts::{
    GC_HEADER_SIZE, GC_PREHEADER_SIZE, LIST_ITEMS, LIST_SIZE, OBJECT_TYPE, SMALLEST_STR, TYPE_BASIC_SIZE, TYPE_FLAGS,
    TYPE_FLAG_HAVE_GC, TYPE_FLAG_LIST_SUBCLASS, TYPE_FLAG_TYPE_SUBCLASS, TYPE_NAME, VAR_OBJECT_SIZE,
};

/// Longest type name read (longer ones are cut).
const MAX_TYPE_NAME_BYTES: u64 = 128;
/// How deep a chain of metatypes is followed before giving up on a candidate type.
const MAX_METATYPE_DEPTH: usize = 4;
/// Entries of the cache of answers about candidate types (a power of two). Every block
/// offers a few candidates, most of them no type at all (a string's hash, a pointer to an
/// item), so the answers are kept in a direct-mapped table: a map of all of them grew to
/// millions of entries and took a fifth of the scan of a large heap. Sized to the blocks
/// scanned (see [`GcObjects::fit_type_cache`]), up to this many bits.
const TYPE_CACHE_BITS: u32 = 14;
/// The fewest bits of that cache.
const TYPE_CACHE_MIN_BITS: u32 = 8;

#[derive(Clone, Copy)]
struct TypeInfo {
    flags: u64,
    basic_size: u64,
}

/// A Python object found in a block.
#[derive(Clone, Copy, Debug)]
pub struct FoundObject {
    /// Where the object starts inside the block: after the GC header (and pre-header) of a
    /// garbage-collected object, else 0.
    pub offset: u64,
    pub garbage_collected: bool,
    pub immortal: bool,
    /// For a list: its item array and the bytes of it in use.
    pub list_items: Option<(u64, u64)>,
    /// The bytes of the block that can hold references, when not all of them can (a code
    /// object's inline bytecode and caches, 3.11+).
    pub scan_limit: Option<u64>,
    /// A garbage-collected object with a reference count of 0 that the collector does not
    /// track: kept on a free list for reuse (a list, a dict, a tuple; a finished frame in 3.9
    /// and 3.10) or being deallocated. It holds no reference, only the stale pointers of its
    /// last life (a list's old item array, whose memory may now be another block).
    pub dead: bool,
    /// The type of a garbage-collected object.
    pub gc_type: Option<u64>,
    /// The object's type (garbage-collected or not).
    pub type_address: Option<u64>,
}

/// The GC header of an object found `object_offset` bytes into its block: the bytes right
/// before the object (a pre-header, where the version has one, lies before those).
pub fn gc_header(object_offset: u64) -> std::ops::Range<u64> {
    object_offset.saturating_sub(GC_HEADER_SIZE)..object_offset
}

pub struct GcObjects {
    type_type: u64,
    list_type: u64,
    code_type: u64,
    /// 3.11+: where a code object's inline bytecode starts.
    code_inline_bytecode: Option<u64>,
    unicode_type: u64,
    preheader_flags: u64,
    has_immortal_objects: bool,
    dict_values_prefix: bool,
    /// Direct-mapped by address: (address, what it is); address 0 for none. `1 <<
    /// type_cache_bits` entries, or none before [`GcObjects::fit_type_cache`].
    types: Vec<(u64, Option<TypeInfo>)>,
    type_cache_bits: u32,
}

impl GcObjects {
    /// Sizes the cache of answers about candidate types to a scan of `blocks` blocks: a fork
    /// child judging 60 blocks zeroed half a megabyte for it.
    pub fn fit_type_cache(&mut self, blocks: usize) {
        self.type_cache_bits = (usize::BITS - blocks.leading_zeros()).clamp(TYPE_CACHE_MIN_BITS, TYPE_CACHE_BITS);
        self.types = vec![(0, None); 1 << self.type_cache_bits];
    }

    /// The Python object a block holds, if it holds one.
    /// `is_address` tells words that are addresses (of live blocks, of loaded modules) from
    /// others: such a word is no reference count.
    pub fn find(
        &mut self,
        read: &mut dyn FnMut(u64) -> Option<u64>,
        is_address: &dyn Fn(u64) -> bool,
        block: u64,
        size: u64,
    ) -> Option<FoundObject> {
        let plausible_refcount = |word: Option<u64>| word.is_some_and(|count| count < 1 << 40 && !is_address(count));
        let (offset, gc_type) = match self.gc_object_offset(read, &plausible_refcount, block, size) {
            Some((offset, type_address, info)) => (offset, Some((type_address, info))),
            None if self.is_plain_object(read, &plausible_refcount, block, size) => (0, None),
            None => return None,
        };
        let garbage_collected = gc_type.is_some();
        let object = block + offset;
        let immortal = self.has_immortal_objects && read(object).is_some_and(|refcount| (refcount as u32 as i32) < 0);
        let is_list = gc_type.is_some_and(|(type_address, info)| {
            type_address == self.list_type || info.flags & TYPE_FLAG_LIST_SUBCLASS != 0
        });
        let list_items = if is_list {
            match (read(object + LIST_ITEMS), read(object + LIST_SIZE)) {
                (Some(items), Some(len)) if items != 0 && len < 1 << 40 => Some((items, len * 8)),
                _ => None,
            }
        } else {
            None
        };
        let dead = garbage_collected && read(object) == Some(0) && read(block + gc_header(offset).start) == Some(0);
        let type_address = gc_type
            .map(|(type_address, _)| type_address)
            .or_else(|| read(object + OBJECT_TYPE as u64));
        // Only a block laid out as a code object is one: its bytecode (code units counted in
        // its size field) fills the block from the inline offset on.
        let scan_limit = self
            .code_inline_bytecode
            .filter(|&bytecode| {
                type_address == Some(self.code_type)
                    && read(object + VAR_OBJECT_SIZE as u64)
                        .and_then(|units| units.checked_mul(2)?.checked_add(offset + bytecode))
                        .is_some_and(|end| end <= size)
            })
            .map(|bytecode| offset + bytecode);
        Some(FoundObject {
            offset,
            garbage_collected,
            immortal,
            list_items,
            scan_limit,
            dead,
            gc_type: gc_type.map(|(type_address, _)| type_address),
            type_address,
        })
    }

    /// Where references point into `block` when it holds a managed dict's values (3.11–3.12):
    /// see [`dict_values_prefix`].
    pub fn dict_values_offset(&self, read: &mut dyn FnMut(u64) -> Option<u64>, block: u64, size: u64) -> Option<u64> {
        if !self.dict_values_prefix {
            return None;
        }
        dict_values_prefix(read, block, size)
    }

    /// An object without a GC header: its type is not garbage-collected and fits the block.
    /// Its first word must pass for a reference count (0 included: 3.10 keeps zombie frames):
    /// an array of object pointers (a list's items) whose second or fourth entry points at a
    /// type would otherwise pass for an object, and the references to its start for the
    /// collector's list links.
    fn is_plain_object(
        &mut self,
        read: &mut dyn FnMut(u64) -> Option<u64>,
        plausible_refcount: &dyn Fn(Option<u64>) -> bool,
        block: u64,
        size: u64,
    ) -> bool {
        if size < 16 || !plausible_refcount(read(block)) {
            return false;
        }
        let Some(type_address) = read(block + OBJECT_TYPE as u64) else {
            return false;
        };
        // A compact string is its header and its characters: shorter than `str`'s basic size
        // (which is the non-compact layout's).
        if type_address == self.unicode_type {
            return size >= SMALLEST_STR;
        }
        self.type_info(read, type_address)
            .is_some_and(|info| info.flags & TYPE_FLAG_HAVE_GC == 0 && info.basic_size >= 16 && info.basic_size <= size)
    }

    /// Where an object starts inside a block that holds a garbage-collected object (its
    /// pre-header, if any, and GC header come first), with its type's address and info.
    fn gc_object_offset(
        &mut self,
        read: &mut dyn FnMut(u64) -> Option<u64>,
        plausible_refcount: &dyn Fn(Option<u64>) -> bool,
        block: u64,
        size: u64,
    ) -> Option<(u64, u64, TypeInfo)> {
        let preheaders: &[u64] = if self.preheader_flags == 0 {
            &[0]
        } else {
            &[0, GC_PREHEADER_SIZE]
        };
        for &preheader in preheaders {
            let offset = preheader + GC_HEADER_SIZE;
            if offset + 16 > size || !plausible_refcount(read(block + offset)) {
                continue;
            }
            let Some(type_address) = read(block + offset + OBJECT_TYPE as u64) else {
                continue;
            };
            let Some(info) = self.type_info(read, type_address) else {
                continue;
            };
            let wants_preheader = info.flags & self.preheader_flags != 0;
            if info.flags & TYPE_FLAG_HAVE_GC != 0
                && wants_preheader == (preheader != 0)
                && info.basic_size >= 16
                && info.basic_size <= size - offset
            {
                return Some((offset, type_address, info));
            }
        }
        None
    }

    /// The name of the type object at `address` (`tp_name`: `dict`, `app.Item`), if it is
    /// one and the name is readable.
    pub fn type_name(&mut self, read: &mut dyn FnMut(u64) -> Option<u64>, address: u64) -> Option<String> {
        self.type_info(read, address)?;
        let name = read(address + TYPE_NAME)?;
        let mut bytes = Vec::new();
        'words: for at in (0..MAX_TYPE_NAME_BYTES).step_by(8) {
            for byte in read(name + at)?.to_le_bytes() {
                if byte == 0 {
                    break 'words;
                }
                bytes.push(byte);
            }
        }
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The flags of the type object at `address`, if it is one.
    pub fn type_flags(&mut self, read: &mut dyn FnMut(u64) -> Option<u64>, address: u64) -> Option<u64> {
        self.type_info(read, address).map(|info| info.flags)
    }

    /// The flags and size of the type object at `address`, if it is one: its type must be
    /// `PyType_Type`, or a metaclass (a type flagged as a subclass of `type`). Any object's
    /// type's type is `PyType_Type`: a chain of types reaching it says nothing.
    fn type_info(&mut self, read: &mut dyn FnMut(u64) -> Option<u64>, address: u64) -> Option<TypeInfo> {
        self.type_info_within(read, address, MAX_METATYPE_DEPTH)
    }

    fn type_info_within(
        &mut self,
        read: &mut dyn FnMut(u64) -> Option<u64>,
        address: u64,
        depth: usize,
    ) -> Option<TypeInfo> {
        if address == 0 || !address.is_multiple_of(8) || depth == 0 {
            return None;
        }
        let slot = (address.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - self.type_cache_bits)) as usize;
        if let Some(&(known, info)) = self.types.get(slot) {
            if known == address {
                return info;
            }
        }
        let is_type = match read(address + OBJECT_TYPE as u64) {
            Some(metatype) if metatype == self.type_type => true,
            Some(metatype) if metatype != address => self
                .type_info_within(read, metatype, depth - 1)
                .is_some_and(|info| info.flags & TYPE_FLAG_TYPE_SUBCLASS != 0),
            _ => false,
        };
        let info = if is_type {
            match (
                read(address + TYPE_FLAGS as u64),
                read(address + TYPE_BASIC_SIZE as u64),
            ) {
                (Some(flags), Some(basic_size)) => Some(TypeInfo { flags, basic_size }),
                _ => None,
            }
        } else {
            None
        };
        if let Some(entry) = self.types.get_mut(slot) {
            *entry = (address, info);
        }
        info
    }
}

/// The size of the prefix of a block that holds a dict's values in 3.11–3.12, if it holds
/// them: the block's size gives it (`size + 2` rounded up to a word, then a word per value)
/// and its last byte repeats it. References to the values point past it.
pub fn dict_values_prefix(read: &mut dyn FnMut(u64) -> Option<u64>, block: u64, size: u64) -> Option<u64> {
    let prefix = (1..=255u64)
        .map(|values| ((values + 2).next_multiple_of(8), values))
        .take_while(|&(prefix, values)| prefix + 8 * values <= size)
        .find(|&(prefix, values)| prefix + 8 * values == size)
        .map(|(prefix, _)| prefix)?;
    let last_prefix_word = read(block + prefix - 8)?;
    (last_prefix_word >> 56 == prefix).then_some(prefix)
}

/// What is needed to recognise objects of the interpreter found in the process, if any.
pub fn objects() -> Option<GcObjects> {
    let interpreter = super::interpreter()?;
    Some(GcObjects {
        type_type: interpreter.symbols.type_type as u64,
        list_type: interpreter.symbols.list_type as u64,
        code_type: interpreter.symbols.code_type as u64,
        code_inline_bytecode: interpreter.layout.code.inline_code.map(|offset| offset as u64),
        unicode_type: interpreter.symbols.unicode_type as u64,
        preheader_flags: interpreter.layout.gc_preheader_flags,
        has_immortal_objects: interpreter.layout.has_immortal_objects,
        dict_values_prefix: interpreter.layout.dict_values_prefix,
        types: Vec::new(),
        type_cache_bits: TYPE_CACHE_BITS,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn objects(type_type: u64) -> GcObjects {
        GcObjects {
            type_type,
            list_type: 0,
            code_type: 0,
            code_inline_bytecode: None,
            unicode_type: 0,
            preheader_flags: 0,
            has_immortal_objects: false,
            dict_values_prefix: false,
            types: vec![(0, None); 1 << TYPE_CACHE_BITS],
            type_cache_bits: TYPE_CACHE_BITS,
        }
    }

    /// Only what a type's type says makes it a type: an ordinary object (a tuple here) has a
    /// type whose type is `type` too, and reading it as a type read past its end.
    #[test]
    fn an_object_is_a_type_only_when_its_type_is_type_or_a_metaclass() {
        const TYPE: u64 = 0x1000;
        const TUPLE: u64 = 0x2000;
        const A_TUPLE: u64 = 0x3000;
        const META: u64 = 0x4000;
        const WITH_META: u64 = 0x5000;
        let mut memory: HashMap<u64, u64> = HashMap::new();
        let mut object = |address: u64, of_type: u64, flags: u64| {
            memory.insert(address + OBJECT_TYPE as u64, of_type);
            memory.insert(address + TYPE_FLAGS as u64, flags);
            memory.insert(address + TYPE_BASIC_SIZE as u64, 48);
        };
        object(TYPE, TYPE, TYPE_FLAG_TYPE_SUBCLASS);
        object(TUPLE, TYPE, 1 << 26);
        object(A_TUPLE, TUPLE, 7);
        object(META, TYPE, TYPE_FLAG_TYPE_SUBCLASS | TYPE_FLAG_HAVE_GC);
        object(WITH_META, META, TYPE_FLAG_HAVE_GC);
        let mut read = |address: u64| memory.get(&address).copied();
        let mut objects = objects(TYPE);
        assert_eq!(objects.type_flags(&mut read, TUPLE), Some(1 << 26));
        assert_eq!(objects.type_flags(&mut read, A_TUPLE), None);
        assert_eq!(objects.type_flags(&mut read, WITH_META), Some(TYPE_FLAG_HAVE_GC));
        assert!(objects.type_flags(&mut read, META).is_some());
        assert!(objects.type_flags(&mut read, TYPE).is_some());
    }
}
