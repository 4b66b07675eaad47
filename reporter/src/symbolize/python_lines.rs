//! Line numbers of Python frames, decoded from the line tables the interposer copied out of
//! code objects. One decoder per table format; each gives the same answer as the
//! interpreter's own `PyCode_Addr2Line` for every instruction offset (a test compares them).
//!
//! Per-version knowledge of the reporter lives here and nowhere else. Must never read the
//! interpreter's memory layouts: the tables and the version come from the trace.

/// The line of the instruction at `offset` (bytes from the start of the bytecode), or `None`
/// when the table says the instruction has no line (or the table is malformed).
/// `python_version` is `PY_VERSION_HEX`, which fixes the table format.
pub fn line_at(python_version: u32, line_table: &[u8], first_line: u32, offset: i64) -> Option<u32> {
    let first_line = i64::from(first_line);
    let minor = (python_version >> 16) & 0xff;
    let line = match minor {
        0..=9 => address_line_pairs(line_table, first_line, offset),
        10 => {
            if offset < 0 {
                return u32::try_from(first_line).ok();
            }
            find_range(LengthLinePairs::new(line_table, first_line), offset)?
        }
        _ => {
            if offset < 0 {
                return u32::try_from(first_line).ok();
            }
            find_range(LocationEntries::new(line_table, first_line), offset)?
        }
    };
    u32::try_from(line).ok()
}

/// 3.9 `co_lnotab`: pairs of (address increment, signed line increment); the line of an
/// address is the one reached after the last pair starting at or before it.
fn address_line_pairs(table: &[u8], first_line: i64, offset: i64) -> i64 {
    let mut line = first_line;
    let mut address: i64 = 0;
    for pair in table.chunks_exact(2) {
        address += i64::from(pair[0]);
        if address > offset {
            break;
        }
        line += i64::from(pair[1] as i8);
    }
    line
}

/// A half-open bytecode range `[start, end)` and its line (`None`: no line).
struct Range {
    start: i64,
    end: i64,
    line: Option<i64>,
}

/// The line of the range holding `offset`; empty ranges never hold anything.
fn find_range(mut ranges: impl Iterator<Item = Range>, offset: i64) -> Option<i64> {
    ranges.find(|r| r.start <= offset && offset < r.end)?.line
}

/// 3.10 `co_linetable` (PEP 626): pairs of (byte length, signed line delta), -128 = no line.
struct LengthLinePairs<'a> {
    pairs: std::slice::ChunksExact<'a, u8>,
    line: i64,
    end: i64,
}

impl<'a> LengthLinePairs<'a> {
    fn new(table: &'a [u8], first_line: i64) -> Self {
        LengthLinePairs {
            pairs: table.chunks_exact(2),
            line: first_line,
            end: 0,
        }
    }
}

impl Iterator for LengthLinePairs<'_> {
    type Item = Range;

    fn next(&mut self) -> Option<Range> {
        let pair = self.pairs.next()?;
        let start = self.end;
        self.end += i64::from(pair[0]);
        let delta = pair[1] as i8;
        let line = if delta == -128 {
            None
        } else {
            self.line += i64::from(delta);
            Some(self.line)
        };
        Some(Range {
            start,
            end: self.end,
            line,
        })
    }
}

/// 3.11+ location table (PEP 657). Each entry starts with a byte `1 cccc lll`: it covers
/// `lll + 1` code units (2 bytes each), and the code `cccc` says how the line changes:
/// 0–9 short forms and 10 keep it, 11/12 add 1/2, 13 and 14 carry a signed varint delta,
/// 15 means no location. Later bytes of the entry have the top bit clear.
struct LocationEntries<'a> {
    table: &'a [u8],
    at: usize,
    line: i64,
    end: i64,
}

impl<'a> LocationEntries<'a> {
    fn new(table: &'a [u8], first_line: i64) -> Self {
        LocationEntries {
            table,
            at: 0,
            line: first_line,
            end: 0,
        }
    }

    /// An unsigned varint of 6-bit groups, low first, 0x40 = more follows.
    fn varint(&self, mut at: usize) -> Option<u64> {
        let mut value = 0u64;
        let mut shift = 0;
        loop {
            let byte = *self.table.get(at)?;
            at += 1;
            value |= u64::from(byte & 63).checked_shl(shift)?;
            if byte & 64 == 0 {
                return Some(value);
            }
            shift += 6;
        }
    }

    fn signed_varint(&self, at: usize) -> Option<i64> {
        let value = self.varint(at)?;
        let magnitude = (value >> 1) as i64;
        Some(if value & 1 != 0 { -magnitude } else { magnitude })
    }
}

impl Iterator for LocationEntries<'_> {
    type Item = Range;

    fn next(&mut self) -> Option<Range> {
        let first = *self.table.get(self.at)?;
        let code = (first >> 3) & 15;
        let delta = match code {
            11 => 1,
            12 => 2,
            13 | 14 => self.signed_varint(self.at + 1)?,
            _ => 0,
        };
        self.line += delta;
        let start = self.end;
        self.end += (i64::from(first & 7) + 1) * 2;
        self.at += 1;
        while self.table.get(self.at).is_some_and(|b| b & 128 == 0) {
            self.at += 1;
        }
        Some(Range {
            start,
            end: self.end,
            line: (code != 15).then_some(self.line),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lnotab_accumulates_until_past_the_offset() {
        // addr 0 → line 10; addr 6 → 11; addr 10 → 13
        let table = [6, 1, 4, 2];
        assert_eq!(line_at(0x030912f0, &table, 10, -1), Some(10));
        assert_eq!(line_at(0x030912f0, &table, 10, 0), Some(10));
        assert_eq!(line_at(0x030912f0, &table, 10, 6), Some(11));
        assert_eq!(line_at(0x030912f0, &table, 10, 12), Some(13));
    }

    #[test]
    fn pep626_ranges_and_missing_lines() {
        // [0,4) line 5+1, [4,6) no line, [6,10) line 6+2
        let table = [4, 1, 2, 0x80, 4, 2];
        assert_eq!(line_at(0x030a0df0, &table, 5, 0), Some(6));
        assert_eq!(line_at(0x030a0df0, &table, 5, 4), None);
        assert_eq!(line_at(0x030a0df0, &table, 5, 8), Some(8));
        assert_eq!(line_at(0x030a0df0, &table, 5, -2), Some(5));
    }

    #[test]
    fn pep657_entries() {
        // one-line form +1 (code 11), 2 units; no-columns with delta -3 (zigzag 7), 1 unit;
        // no location (15), 1 unit.
        let table = [0x80 | 11 << 3 | 1, 0, 0, 0x80 | 13 << 3, 7, 0x80 | 15 << 3];
        let v = 0x030b07f0;
        assert_eq!(line_at(v, &table, 20, 0), Some(21));
        assert_eq!(line_at(v, &table, 20, 2), Some(21));
        assert_eq!(line_at(v, &table, 20, 4), Some(18));
        assert_eq!(line_at(v, &table, 20, 6), None);
        assert_eq!(line_at(v, &table, 20, 8), None);
    }
}
