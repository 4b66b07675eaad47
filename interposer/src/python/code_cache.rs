//! A per-thread memo of the code objects a thread's walks have met: code object address →
//! (code id, bytecode length, first traceable instruction). A hit skips the type check, the
//! fingerprint reads and the shared table's probe, which were most of a Python walk's cost.
//!
//! An address stands for the same code object only until that object is freed. So the memo
//! is used only while Python objects are freed through `free` (the interpreter on malloc,
//! checked through CPython's own allocator getter), the free hook counts every freed code
//! object ([`note_free`]) and drops it from the shared table, and a walk that sees the count
//! moved forgets the whole memo.
//! While objects go to another allocator (pymalloc, the debug hooks, tracemalloc's wrappers)
//! walks take the shared table's path, exactly as without the memo.
//!
//! Never allocates: the memo is a fixed array in thread-local storage.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use super::layouts::OBJECT_TYPE;
use crate::sys::python_raw as raw;

const ENTRIES: usize = 256;

/// Code objects freed since the interpreter was found, as seen by the free hook.
static CODE_FREES: AtomicU64 = AtomicU64::new(0);
/// `PyCode_Type` while Python frames are recorded; 0 before (no check on frees).
static WATCHED_TYPE: AtomicUsize = AtomicUsize::new(0);
/// Whether objects are freed through `free` (see the module doc).
static USABLE: AtomicBool = AtomicBool::new(false);

/// Starts counting freed code objects of type `code_type`.
pub fn watch_frees(code_type: usize) {
    WATCHED_TYPE.store(code_type, Ordering::Relaxed);
}

/// Called by the free hook for every block before it is freed (and before it is zeroed).
#[inline(always)]
pub fn note_free(block: usize) {
    let code_type = WATCHED_TYPE.load(Ordering::Relaxed);
    if code_type != 0 && raw::freed_block_word(block, OBJECT_TYPE) == code_type {
        forget_freed(block);
    }
}

#[cold]
fn forget_freed(code_object: usize) {
    super::codes::forget(code_object);
    // Ordered before the real free: whoever is handed this address later, and runs code
    // there, does so after this count moved.
    CODE_FREES.fetch_add(1, Ordering::AcqRel);
}

/// Records whether objects are freed through `free` now. Turning the memo back on forgets
/// every thread's entries: code objects freed meanwhile went unseen.
pub fn set_usable(usable: bool) {
    if !usable {
        USABLE.store(false, Ordering::Relaxed);
    } else if !USABLE.swap(true, Ordering::AcqRel) {
        CODE_FREES.fetch_add(1, Ordering::AcqRel);
    }
}

/// What a walk needs of a code object, besides its address.
#[derive(Clone, Copy)]
pub struct CodeFacts {
    pub id: u32,
    /// Length of the bytecode in bytes, which bounds instruction offsets.
    pub instruction_bytes: u32,
    /// 3.11+: `_co_firsttraceable` in code units; 0 before.
    pub first_traceable: i32,
}

#[derive(Clone, Copy)]
struct Entry {
    /// The code object's address, complemented: the exit scan reads thread-local storage
    /// as a root, and a stale entry must not read as a reference to whatever block was
    /// allocated at that address since.
    hidden_code_object: usize,
    generation: u32,
    facts: CodeFacts,
}

const EMPTY: Entry = Entry {
    hidden_code_object: 0,
    generation: 0,
    facts: CodeFacts {
        id: 0,
        instruction_bytes: 0,
        first_traceable: 0,
    },
};

pub struct ThreadCodes {
    entries: [Entry; ENTRIES],
    /// Entries of another generation are forgotten; starts at 1, so none is valid at first.
    generation: u32,
    /// [`CODE_FREES`] when the generation began.
    frees_seen: u64,
}

thread_local! {
    static THREAD_CODES: RefCell<ThreadCodes> = const {
        RefCell::new(ThreadCodes { entries: [EMPTY; ENTRIES], generation: 1, frees_seen: 0 })
    };
}

/// Runs `walk` with the calling thread's memo, or with none when the memo may not be used
/// now (or is already in use further up this thread's stack, as in a signal handler).
#[inline(always)]
pub fn with_thread_codes<R>(walk: impl FnOnce(Option<&mut ThreadCodes>) -> R) -> R {
    if !USABLE.load(Ordering::Relaxed) {
        return walk(None);
    }
    THREAD_CODES.with(|codes| match codes.try_borrow_mut() {
        Ok(mut codes) => {
            codes.begin_walk();
            walk(Some(&mut codes))
        }
        Err(_) => walk(None),
    })
}

fn slot(code_object: usize) -> usize {
    ((code_object as u64 >> 4).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as usize % ENTRIES
}

impl ThreadCodes {
    fn begin_walk(&mut self) {
        let frees = CODE_FREES.load(Ordering::Acquire);
        if frees != self.frees_seen {
            self.frees_seen = frees;
            self.generation = self.generation.wrapping_add(1);
            if self.generation == 0 {
                self.entries = [EMPTY; ENTRIES];
                self.generation = 1;
            }
        }
    }

    #[inline(always)]
    pub fn get(&self, code_object: usize) -> Option<CodeFacts> {
        let entry = &self.entries[slot(code_object)];
        (entry.hidden_code_object == !code_object && entry.generation == self.generation).then_some(entry.facts)
    }

    pub fn put(&mut self, code_object: usize, facts: CodeFacts) {
        self.entries[slot(code_object)] = Entry {
            hidden_code_object: !code_object,
            generation: self.generation,
            facts,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(id: u32) -> CodeFacts {
        CodeFacts {
            id,
            instruction_bytes: 100,
            first_traceable: 0,
        }
    }

    /// The tests share the process-wide count of freed code objects.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn a_freed_code_object_is_forgotten_by_the_next_walk() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let mut codes = ThreadCodes {
            entries: [EMPTY; ENTRIES],
            generation: 1,
            frees_seen: CODE_FREES.load(Ordering::Acquire),
        };
        assert!(codes.get(0x1000).is_none(), "an empty memo knows nothing");
        codes.put(0x1000, facts(7));
        codes.begin_walk();
        assert_eq!(codes.get(0x1000).map(|f| f.id), Some(7));
        assert!(codes.get(0x2000).is_none());

        let fake_code_type = 0xabcd_0000_usize;
        let block = [0usize, fake_code_type, 0];
        watch_frees(fake_code_type);
        note_free(block.as_ptr() as usize);
        watch_frees(0);
        assert_eq!(
            codes.get(0x1000).map(|f| f.id),
            Some(7),
            "forgotten only when a walk begins"
        );
        codes.begin_walk();
        assert!(
            codes.get(0x1000).is_none(),
            "a code object was freed: the memo starts over"
        );
    }

    #[test]
    fn frees_of_other_objects_keep_the_memo() {
        let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let fake_code_type = 0x1234_0000_usize;
        let before = CODE_FREES.load(Ordering::Acquire);
        let block = [0usize, fake_code_type + 16, 0];
        watch_frees(fake_code_type);
        note_free(block.as_ptr() as usize);
        watch_frees(0);
        assert_eq!(CODE_FREES.load(Ordering::Acquire), before);
        let code = [0usize, fake_code_type, 0];
        watch_frees(fake_code_type);
        note_free(code.as_ptr() as usize);
        watch_frees(0);
        assert_eq!(CODE_FREES.load(Ordering::Acquire), before + 1);
    }
}
