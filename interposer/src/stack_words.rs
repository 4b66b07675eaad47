//! How a stack frame travels from a hook to the writer: one `u64` per frame.
//!
//! A native return address is stored as is (user-space addresses are below 2^47). A word
//! with the top bit set is a Python frame: the code id in bits 32..63 and the signed
//! instruction offset in the low 32 bits; code id 0 is the end of an eval-loop activation.

use libleak_format::Frame;

const PYTHON_BIT: u64 = 1 << 63;
pub const PYTHON_ENTRY: u64 = PYTHON_BIT;
/// Largest code id a word can carry.
pub const MAX_CODE_ID: u32 = (1 << 31) - 1;

#[inline]
pub fn python_frame(code_id: u32, instruction_offset: i32) -> u64 {
    PYTHON_BIT | u64::from(code_id & MAX_CODE_ID) << 32 | u64::from(instruction_offset as u32)
}

#[inline]
pub fn to_frame(word: u64) -> Frame {
    if word & PYTHON_BIT == 0 {
        Frame::Native { address: word }
    } else if word == PYTHON_ENTRY {
        Frame::PythonEntry
    } else {
        Frame::Python {
            code_id: (word & !PYTHON_BIT) >> 32,
            instruction_offset: i64::from(word as u32 as i32),
        }
    }
}

#[inline]
pub fn is_native(word: u64) -> bool {
    word & PYTHON_BIT == 0
}
