//! libleak's CPython object constructors, which extensions call instead of the real ones
//! once their import slots are redirected ([`crate::python::constructors`]). Not exported:
//! nothing finds them by name. Each calls the real constructor as the extension would have,
//! outside any hook (a constructor may run a garbage collection, and with it finalizers that
//! import, fork or call other extensions), then has the recorder note an object that came
//! off a free list, with the stack unwound from the extension's call.
//!
//! Must never change what the caller sees: the result, the exception state and errno are the
//! real constructor's.

use std::ffi::c_void;

use super::caller;
use crate::python::constructors::{self, Constructor, CONSTRUCTORS};
use crate::recorder;
use crate::sys::stack::Registers;
use crate::sys::{errno, set_errno};

/// The replacements, in [`Constructor::ALL`]'s order.
pub fn replacements() -> [usize; CONSTRUCTORS] {
    Constructor::ALL.map(|constructor| match constructor {
        Constructor::ListNew => list_new as *const () as usize,
        Constructor::DictNew => dict_new as *const () as usize,
        Constructor::FloatFromDouble => float_from_double as *const () as usize,
        Constructor::TupleNew => tuple_new as *const () as usize,
        Constructor::TuplePack => tuple_pack as *const () as usize,
    })
}

/// Calls the real `constructor` through `call`, then records the object as reborn if it
/// came off a free list.
#[inline(always)]
fn constructed(constructor: Constructor, caller: Registers, call: impl FnOnce(usize) -> *mut c_void) -> *mut c_void {
    let real = constructors::real(constructor);
    let mark = recorder::allocation_mark();
    let object = call(real);
    if object.is_null() || !constructors::is_new_object(object as usize) {
        return object;
    }
    if let Some(hook) = recorder::enter() {
        let saved = errno();
        hook.record_if_reborn(object as usize, constructor, mark, caller);
        set_errno(saved);
        hook.leave();
    }
    object
}

type SizeFn = unsafe extern "C" fn(isize) -> *mut c_void;
type NoArgumentFn = unsafe extern "C" fn() -> *mut c_void;
type DoubleFn = unsafe extern "C" fn(f64) -> *mut c_void;

entered_with_caller!(
    /// # Safety
    /// As for `PyList_New` (the caller holds the GIL).
    list_new(size: isize) -> *mut c_void = list_new_body, ["rsi", "rdx", "rcx"]
);

extern "C" fn list_new_body(size: isize, ip: usize, sp: usize, bp: usize) -> *mut c_void {
    // SAFETY: `real` is the `PyList_New` the extension's slot held (set before the slot was
    // redirected here), called with the extension's argument.
    constructed(Constructor::ListNew, caller(ip, sp, bp), |real| unsafe {
        std::mem::transmute::<usize, SizeFn>(real)(size)
    })
}

entered_with_caller!(
    /// # Safety
    /// As for `PyDict_New` (the caller holds the GIL).
    dict_new() -> *mut c_void = dict_new_body, ["rdi", "rsi", "rdx"]
);

extern "C" fn dict_new_body(ip: usize, sp: usize, bp: usize) -> *mut c_void {
    // SAFETY: as in `list_new_body`, for `PyDict_New`.
    constructed(Constructor::DictNew, caller(ip, sp, bp), |real| unsafe {
        std::mem::transmute::<usize, NoArgumentFn>(real)()
    })
}

entered_with_caller!(
    /// # Safety
    /// As for `PyFloat_FromDouble` (the caller holds the GIL). The double travels in xmm0,
    /// so the caller's registers take the first integer argument registers.
    float_from_double(value: f64) -> *mut c_void = float_from_double_body, ["rdi", "rsi", "rdx"]
);

extern "C" fn float_from_double_body(value: f64, ip: usize, sp: usize, bp: usize) -> *mut c_void {
    // SAFETY: as in `list_new_body`, for `PyFloat_FromDouble`.
    constructed(Constructor::FloatFromDouble, caller(ip, sp, bp), |real| unsafe {
        std::mem::transmute::<usize, DoubleFn>(real)(value)
    })
}

entered_with_caller!(
    /// # Safety
    /// As for `PyTuple_New` (the caller holds the GIL).
    tuple_new(size: isize) -> *mut c_void = tuple_new_body, ["rsi", "rdx", "rcx"]
);

extern "C" fn tuple_new_body(size: isize, ip: usize, sp: usize, bp: usize) -> *mut c_void {
    // SAFETY: as in `list_new_body`, for `PyTuple_New`.
    constructed(Constructor::TupleNew, caller(ip, sp, bp), |real| unsafe {
        std::mem::transmute::<usize, SizeFn>(real)(size)
    })
}

/// The objects of a `PyTuple_Pack` call, as the x86-64 System V ABI passes a variadic
/// call's: the first five after the count in registers, the rest on the caller's stack.
const OBJECTS_IN_REGISTERS: usize = 5;

/// # Safety
/// As for `PyTuple_Pack(n, ...)` (the caller holds the GIL, and passes `n` objects).
#[unsafe(naked)]
pub unsafe extern "C" fn tuple_pack() -> *mut c_void {
    // SAFETY: a frame of its own holds the five argument registers that may hold objects
    // (16-byte aligned, as the call to the body needs); the body gets the count, where those
    // are, where the caller's stack passed the rest, and the caller's registers (the return
    // address, its stack pointer after the return, its frame pointer); nothing the caller
    // passed is changed. The CFI lines let an unwinder step from the body to the caller.
    std::arch::naked_asm!(
        ".cfi_startproc",
        "push rbp",
        ".cfi_adjust_cfa_offset 8",
        ".cfi_offset rbp, -16",
        "mov rbp, rsp",
        ".cfi_def_cfa_register rbp",
        "sub rsp, 48",
        "mov qword ptr [rsp], rsi",
        "mov qword ptr [rsp + 8], rdx",
        "mov qword ptr [rsp + 16], rcx",
        "mov qword ptr [rsp + 24], r8",
        "mov qword ptr [rsp + 32], r9",
        "mov rsi, rsp",
        "lea rdx, [rbp + 16]",
        "mov rcx, qword ptr [rbp + 8]",
        "lea r8, [rbp + 16]",
        "mov r9, qword ptr [rbp]",
        "call {body}",
        "leave",
        ".cfi_def_cfa rsp, 8",
        "ret",
        ".cfi_endproc",
        body = sym tuple_pack_body,
    )
}

type IncRefFn = unsafe extern "C" fn(*mut c_void);
type SetItemFn = unsafe extern "C" fn(*mut c_void, isize, *mut c_void) -> i32;

extern "C" fn tuple_pack_body(
    count: isize,
    in_registers: *const usize,
    on_stack: *const usize,
    ip: usize,
    sp: usize,
    bp: usize,
) -> *mut c_void {
    // SAFETY: the extension called `PyTuple_Pack` with `count` objects: item `i` is the
    // `i`-th of the five registers the stub saved, or past them the stack slot the call
    // passed it in. `PyTuple_New`, `Py_IncRef` and `PyTuple_SetItem` were found before the
    // slot was redirected here (`knows_tuple_filling`); a new tuple has one reference, so
    // `PyTuple_SetItem` takes each item's new reference, as `PyTuple_Pack` gives it one.
    constructed(Constructor::TuplePack, caller(ip, sp, bp), |_| unsafe {
        let (increment, set_item) = constructors::tuple_filling();
        let new = constructors::real(Constructor::TupleNew);
        let tuple = std::mem::transmute::<usize, SizeFn>(new)(count);
        if tuple.is_null() {
            return tuple;
        }
        for index in 0..count.max(0) as usize {
            let item = if index < OBJECTS_IN_REGISTERS {
                *in_registers.add(index)
            } else {
                *on_stack.add(index - OBJECTS_IN_REGISTERS)
            } as *mut c_void;
            std::mem::transmute::<usize, IncRefFn>(increment)(item);
            std::mem::transmute::<usize, SetItemFn>(set_item)(tuple, index as isize, item);
        }
        tuple
    })
}
