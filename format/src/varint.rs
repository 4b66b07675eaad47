//! LEB128 varints and zigzag signed integers: the only integer encodings inside chunk payloads.

/// The longest LEB128 encoding of a `u64`.
pub const MAX_VARINT_BYTES: usize = 10;

/// Hands `value`'s LEB128 bytes to `emit`, low group first.
#[inline(always)]
fn leb128(mut value: u64, mut emit: impl FnMut(u8)) {
    while value >= 0x80 {
        emit((value as u8) | 0x80);
        value >>= 7;
    }
    emit(value as u8);
}

/// Writes `value` as LEB128 at the start of `out`; returns how many bytes it took.
pub fn put_u64_into(out: &mut [u8; MAX_VARINT_BYTES], value: u64) -> usize {
    let mut len = 0;
    leb128(value, |byte| {
        out[len] = byte;
        len += 1;
    });
    len
}

pub fn put_u64(out: &mut Vec<u8>, value: u64) {
    leb128(value, |byte| out.push(byte));
}

pub fn put_i64(out: &mut Vec<u8>, value: i64) {
    put_u64(out, ((value << 1) ^ (value >> 63)) as u64);
}

pub fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u64(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A cursor over one chunk's payload. Every read reports running off the end as `None`.
pub struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Cursor { bytes, pos: 0 }
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn u8(&mut self) -> Option<u8> {
        let byte = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(byte)
    }

    /// Bytes left to read.
    pub fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    pub fn u64(&mut self) -> Option<u64> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let byte = self.u8()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                // The tenth byte may only carry the top bit of a u64.
                if shift == 63 && byte > 1 {
                    return None;
                }
                return Some(value);
            }
        }
        None
    }

    pub fn i64(&mut self) -> Option<i64> {
        let raw = self.u64()?;
        Some(((raw >> 1) as i64) ^ -((raw & 1) as i64))
    }

    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.u64()?).ok()?;
        let end = self.pos.checked_add(len)?;
        let slice = self.bytes.get(self.pos..end)?;
        self.pos = end;
        Some(slice)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_extremes() {
        let mut out = Vec::new();
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            put_u64(&mut out, v);
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            put_i64(&mut out, v);
        }
        let mut cursor = Cursor::new(&out);
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            assert_eq!(cursor.u64(), Some(v));
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(cursor.i64(), Some(v));
        }
        assert_eq!(cursor.remaining(), 0);
    }

    #[test]
    fn a_fixed_buffer_holds_the_same_bytes() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut spelled = Vec::new();
            put_u64(&mut spelled, v);
            let mut fixed = [0; MAX_VARINT_BYTES];
            let len = put_u64_into(&mut fixed, v);
            assert_eq!(&fixed[..len], spelled.as_slice(), "{v}");
        }
    }

    #[test]
    fn rejects_overlong_and_truncated() {
        let overlong = [0xffu8; 11];
        assert_eq!(Cursor::new(&overlong).u64(), None);
        assert_eq!(Cursor::new(&[0x80]).u64(), None);
        assert_eq!(Cursor::new(&[5, 1, 2]).bytes(), None);
    }
}
