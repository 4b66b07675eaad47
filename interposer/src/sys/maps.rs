//! `/proc/self/maps`, read and parsed without allocating, so that it may run inside any hook
//! or signal handler: the unwinder's stack bounds and the exit scan's roots both read it here.
//!
//! Must never allocate or take a lock.

use std::ffi::c_void;

/// One line of `/proc/self/maps`, borrowed from the reading buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapsLine<'a> {
    pub start: u64,
    pub end: u64,
    /// `rwxp` or `rw-s`, as the kernel prints them.
    pub perms: [u8; 4],
    /// The mapped file's path or a pseudo-path such as `[stack]`; empty for anonymous memory.
    pub path: &'a [u8],
}

impl MapsLine<'_> {
    /// Parses a line without its newline: `start-end perms offset dev inode   path`.
    pub fn parse(line: &[u8]) -> Option<MapsLine<'_>> {
        let mut fields = line.splitn(6, |&b| b == b' ');
        let range = fields.next()?;
        let dash = range.iter().position(|&b| b == b'-')?;
        let start = hex(&range[..dash])?;
        let end = hex(&range[dash + 1..])?;
        let perms = fields.next()?.get(..4)?.try_into().ok()?;
        let path = fields.nth(3).unwrap_or(b"");
        let blanks = path.iter().take_while(|&&b| b == b' ').count();
        Some(MapsLine {
            start,
            end,
            perms,
            path: &path[blanks..],
        })
    }
}

fn hex(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 16 {
        return None;
    }
    digits.iter().try_fold(0u64, |value, &digit| {
        let nibble = (digit as char).to_digit(16)?;
        Some(value << 4 | u64::from(nibble))
    })
}

/// Calls `visit` with each parsed line of `/proc/self/maps` until it returns false.
pub fn for_each_mapping(visit: &mut dyn FnMut(MapsLine<'_>) -> bool) {
    for_each_mapping_line(&mut |line| MapsLine::parse(line).is_none_or(&mut *visit));
}

/// Calls `visit` with each line of `/proc/self/maps` (without its newline) until it returns
/// false. Reads through a buffer on the stack: no allocation and no lock, so it may run
/// inside any hook or signal handler. Lines longer than the buffer are skipped.
fn for_each_mapping_line(visit: &mut dyn FnMut(&[u8]) -> bool) {
    const BUFFER: usize = 8192;
    // SAFETY: opening a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe { libc::open(c"/proc/self/maps".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return;
    }
    let mut buffer = [0u8; BUFFER];
    let mut filled = 0;
    let mut skipping = false;
    loop {
        // SAFETY: reading into the unfilled tail of our buffer.
        let read = unsafe { libc::read(fd, buffer[filled..].as_mut_ptr() as *mut c_void, BUFFER - filled) };
        if read <= 0 {
            break;
        }
        filled += read as usize;
        let mut start = 0;
        let mut stop = false;
        while let Some(length) = buffer[start..filled].iter().position(|&b| b == b'\n') {
            if !skipping && !visit(&buffer[start..start + length]) {
                stop = true;
                break;
            }
            skipping = false;
            start += length + 1;
        }
        if stop {
            break;
        }
        if start == 0 && filled == BUFFER {
            skipping = true;
            filled = 0;
        } else {
            buffer.copy_within(start..filled, 0);
            filled -= start;
        }
    }
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
}

/// `ranges` (`[start, end)`) sorted, with those that overlap or touch merged.
pub fn merged_ranges(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for (start, end) in ranges {
        match merged.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::MapsLine;

    #[test]
    fn parses_a_file_mapping_and_an_anonymous_one() {
        let line =
            MapsLine::parse(b"7f1c2a000000-7f1c2a021000 r-xp 00002000 08:01 1234        /usr/lib/libc.so.6").unwrap();
        assert_eq!((line.start, line.end), (0x7f1c2a000000, 0x7f1c2a021000));
        assert_eq!(&line.perms, b"r-xp");
        assert_eq!(line.path, b"/usr/lib/libc.so.6");
        let anonymous = MapsLine::parse(b"55d0c0000000-55d0c0021000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!(anonymous.path, b"");
        let stack =
            MapsLine::parse(b"7ffd1000-7ffd2000 rw-p 00000000 00:00 0                          [stack]").unwrap();
        assert_eq!(stack.path, b"[stack]");
        assert!(MapsLine::parse(b"not a mapping").is_none());
    }
}
