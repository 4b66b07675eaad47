//! Unwind rules: what one step from a frame needs, reduced from the object's DWARF call frame
//! information to a word, and a process-wide cache of them keyed by code address.
//!
//! A rule covers the frames compilers emit for x86-64 code: the canonical frame address (CFA)
//! is the stack pointer or the frame pointer plus an offset, the return address sits just
//! below the CFA, and the frame pointer is either untouched or saved at an offset from the
//! CFA. Anything else (signal frames, CFA expressions, other base registers) is
//! [`Rule::Unsupported`], and the caller unwinds that stack with libgcc instead.
//!
//! The cache is read and filled lock-free from every thread; a `dlclose` empties it, since
//! another object may then be mapped at the same addresses.

use std::sync::atomic::{fence, AtomicU64, Ordering};

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, NativeEndian, Pointer, RegisterRule, UnwindContext,
    UnwindContextStorage, UnwindSection, X86_64,
};

use crate::sys::loader::{with_object_containing, LoadedObject};

/// How to step out of a frame whose code address is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// CFA = base register + `cfa_offset`; return address at CFA - 8; the frame pointer
    /// saved at CFA + `saved_bp` when present, else unchanged.
    Step {
        cfa_from_bp: bool,
        cfa_offset: i32,
        saved_bp: Option<i16>,
    },
    /// The outermost frame: its return address is undefined, or no object or table
    /// describes its code. Where libgcc stops too.
    End,
    /// A frame this stepper does not handle.
    Unsupported,
}

const TAG_STEP_SP: u64 = 1;
const TAG_STEP_BP: u64 = 2;
const TAG_END: u64 = 3;
const TAG_UNSUPPORTED: u64 = 4;
const HAS_SAVED_BP: u64 = 1 << 8;

impl Rule {
    fn encode(self) -> u64 {
        match self {
            Rule::Step {
                cfa_from_bp,
                cfa_offset,
                saved_bp,
            } => {
                let tag = if cfa_from_bp { TAG_STEP_BP } else { TAG_STEP_SP };
                let saved = saved_bp.map_or(0, |offset| HAS_SAVED_BP | u64::from(offset as u16) << 16);
                tag | saved | u64::from(cfa_offset as u32) << 32
            }
            Rule::End => TAG_END,
            Rule::Unsupported => TAG_UNSUPPORTED,
        }
    }

    fn decode(word: u64) -> Rule {
        match word & 0xff {
            TAG_STEP_SP | TAG_STEP_BP => Rule::Step {
                cfa_from_bp: word & 0xff == TAG_STEP_BP,
                cfa_offset: (word >> 32) as u32 as i32,
                saved_bp: (word & HAS_SAVED_BP != 0).then_some((word >> 16) as u16 as i16),
            },
            // 0 is never written: it is an empty slot's, which only code address 0 (a return
            // address of 1, as a new greenlet's first frame may hold) meets. No code lies there.
            TAG_END | 0 => Rule::End,
            _ => Rule::Unsupported,
        }
    }
}

const CACHE_BITS: u32 = 14;
const CACHE_SLOTS: usize = 1 << CACHE_BITS;
/// A slot being written.
const LOCKED: u64 = u64::MAX;

struct CacheSlot {
    /// The code address this slot describes, 0 when empty, [`LOCKED`] while written.
    address: AtomicU64,
    rule: AtomicU64,
}

static CACHE: [CacheSlot; CACHE_SLOTS] = [const {
    CacheSlot {
        address: AtomicU64::new(0),
        rule: AtomicU64::new(0),
    }
}; CACHE_SLOTS];

/// Bumped by [`forget_all`]: a rule computed across it is not cached.
static GENERATION: AtomicU64 = AtomicU64::new(0);

#[inline(always)]
fn slot_for(address: usize) -> &'static CacheSlot {
    let hash = (address as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - CACHE_BITS);
    &CACHE[hash as usize]
}

/// The rule for the frame executing at `address` (for a caller's frame: its return address
/// minus one, which lies inside the call instruction).
#[inline(always)]
pub fn rule_for(address: usize) -> Rule {
    let slot = slot_for(address);
    let seen = slot.address.load(Ordering::Acquire);
    if seen == address as u64 {
        let rule = slot.rule.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        if slot.address.load(Ordering::Relaxed) == seen {
            return Rule::decode(rule);
        }
    }
    rule_for_uncached(address, slot)
}

#[cold]
#[inline(never)]
fn rule_for_uncached(address: usize, slot: &CacheSlot) -> Rule {
    let generation = GENERATION.load(Ordering::Acquire);
    let rule = compute_rule(address);
    let current = slot.address.load(Ordering::Relaxed);
    if current != LOCKED
        && GENERATION.load(Ordering::Acquire) == generation
        && slot
            .address
            .compare_exchange(current, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    {
        fence(Ordering::Release);
        slot.rule.store(rule.encode(), Ordering::Relaxed);
        slot.address.store(address as u64, Ordering::Release);
    }
    rule
}

/// Empties the cache: an object was unloaded, and another may take its addresses.
pub fn forget_all() {
    GENERATION.fetch_add(1, Ordering::AcqRel);
    for slot in &CACHE {
        let current = slot.address.load(Ordering::Relaxed);
        if current != LOCKED {
            let _ = slot
                .address
                .compare_exchange(current, 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }
}

/// The current cache generation: stacks cached per thread are stale once it moves.
pub fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// Unwind rows kept on the stack: computing a rule must not allocate (it runs inside malloc).
struct RowsOnStack;

impl<T: gimli::ReaderOffset> UnwindContextStorage<T> for RowsOnStack {
    type Rules = [(gimli::Register, RegisterRule<T>); 32];
    type Stack = [gimli::UnwindTableRow<T, Self>; 4];
}

/// The unwind tables of the object whose code holds an address, as the loader maps them.
struct UnwindTables<'a> {
    eh_frame_hdr: &'a [u8],
    eh_frame_hdr_address: usize,
    /// From `.eh_frame`'s start to the end of the segment holding it: the program headers do
    /// not give its size, and its entries end the walk themselves.
    eh_frame: &'a [u8],
    eh_frame_address: usize,
    text_address: usize,
}

impl<'a> UnwindTables<'a> {
    /// None when the object has no `.eh_frame_hdr`, or it does not say where `.eh_frame` is.
    fn of(object: &LoadedObject<'a>, address: usize) -> Option<UnwindTables<'a>> {
        let (text_address, _) = object.segment_containing(address)?;
        let (eh_frame_hdr, eh_frame_hdr_address) = object.eh_frame_hdr()?;
        let eh_frame_address = eh_frame_pointer(eh_frame_hdr, eh_frame_hdr_address)?;
        Some(UnwindTables {
            eh_frame_hdr,
            eh_frame_hdr_address,
            eh_frame: object.bytes_to_segment_end(eh_frame_address)?,
            eh_frame_address,
            text_address,
        })
    }
}

fn compute_rule(address: usize) -> Rule {
    let mut rule = Rule::End;
    with_object_containing(address, &mut |object| {
        rule = match object.and_then(|object| UnwindTables::of(object, address)) {
            Some(tables) => rule_from_tables(&tables, address).unwrap_or(Rule::Unsupported),
            // No object, or no table describes its code: libgcc ends the stack here too.
            None => Rule::End,
        }
    });
    rule
}

fn rule_from_tables(tables: &UnwindTables<'_>, address: usize) -> Result<Rule, gimli::Error> {
    let bases = BaseAddresses::default()
        .set_eh_frame_hdr(tables.eh_frame_hdr_address as u64)
        .set_eh_frame(tables.eh_frame_address as u64)
        .set_text(tables.text_address as u64);
    let header = EhFrameHdr::new(tables.eh_frame_hdr, NativeEndian).parse(&bases, 8)?;
    let Some(table) = header.table() else {
        return Ok(Rule::Unsupported);
    };
    let eh_frame = EhFrame::new(tables.eh_frame, NativeEndian);
    let fde = match table.fde_for_address(&eh_frame, &bases, address as u64, EhFrame::cie_from_offset) {
        Ok(fde) => fde,
        // No description of this code: libgcc ends the stack here as well.
        Err(gimli::Error::NoUnwindInfoForAddress) => return Ok(Rule::End),
        Err(e) => return Err(e),
    };
    if fde.is_signal_trampoline() {
        return Ok(Rule::Unsupported);
    }
    let mut context = UnwindContext::<usize, RowsOnStack>::new_in();
    let row = fde.unwind_info_for_address(&eh_frame, &bases, &mut context, address as u64)?;
    match row.register(X86_64::RA) {
        Some(RegisterRule::Offset(-8)) => {}
        Some(RegisterRule::Undefined) => return Ok(Rule::End),
        _ => return Ok(Rule::Unsupported),
    }
    let (cfa_from_bp, cfa_offset) = match row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } if *register == X86_64::RSP => (false, *offset),
        CfaRule::RegisterAndOffset { register, offset } if *register == X86_64::RBP => (true, *offset),
        _ => return Ok(Rule::Unsupported),
    };
    let Ok(cfa_offset) = i32::try_from(cfa_offset) else {
        return Ok(Rule::Unsupported);
    };
    let saved_bp = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue) => None,
        Some(RegisterRule::Offset(offset)) => match i16::try_from(offset) {
            Ok(offset) => Some(offset),
            Err(_) => return Ok(Rule::Unsupported),
        },
        Some(_) => return Ok(Rule::Unsupported),
    };
    Ok(Rule::Step {
        cfa_from_bp,
        cfa_offset,
        saved_bp,
    })
}

/// The address of `.eh_frame`, from the head of `.eh_frame_hdr` mapped at `hdr_address`.
fn eh_frame_pointer(eh_frame_hdr: &[u8], hdr_address: usize) -> Option<usize> {
    let bases = BaseAddresses::default().set_eh_frame_hdr(hdr_address as u64);
    let header = EhFrameHdr::new(eh_frame_hdr, NativeEndian).parse(&bases, 8).ok()?;
    match header.eh_frame_ptr() {
        Pointer::Direct(address) => usize::try_from(address).ok(),
        Pointer::Indirect(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_address_of_a_return_address_of_1_ends_the_stack() {
        assert_eq!(slot_for(0).address.load(Ordering::Relaxed), 0, "an empty slot");
        assert_eq!(rule_for(0), Rule::End);
    }
}
