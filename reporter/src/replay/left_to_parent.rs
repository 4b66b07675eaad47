//! Reading a forked child's trace ahead of its replay, for one fact: whether its last scan
//! left the blocks it inherited to its parent's trace, so that its replay takes in only their
//! count (see `Replay::inherited_counted` in `reading.rs`).
//!
//! Must never fail: a trace it cannot read says no, and the child's inheritance is then taken
//! in whole.

use std::path::Path;

use libleak_format::{Record, TraceReader};

/// Whether the forked child's trace at `path` says, at its end, that its last scan left the
/// blocks it inherited to its parent's trace (an INHERITANCE_LEFT record with blocks not
/// judged, just before its last REACHABILITY): its report then needs only their count and
/// bytes, not their stacks. A child that forked after an earlier scan judges everything in
/// its last one. Read ahead of the replay (a child's trace holds its own work only); a trace
/// that cannot be read, or that ends before any scan, says no, and its inheritance is taken
/// in whole.
pub(super) fn leaves_inheritance_to_parent(path: &Path) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let Ok(mut reader) = TraceReader::new(std::io::BufReader::with_capacity(1 << 16, file)) else {
        return false;
    };
    let (mut left_before_scan, mut last_scan_left) = (false, false);
    while let Ok(Some(record)) = reader.next_record() {
        match record {
            Record::InheritanceLeft { unjudged, .. } => left_before_scan = unjudged > 0,
            Record::Reachability(_) => last_scan_left = std::mem::take(&mut left_before_scan),
            _ => {}
        }
    }
    last_scan_left
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child's trace whose scans wrote these INHERITANCE_LEFT counts (`None`: a scan that
    /// judged everything), in a file.
    fn child_trace_with_scans(scratch: &Path, scans: &[Option<u64>]) -> std::path::PathBuf {
        use libleak_format::{ChunkWriter, ProcessInfo, Reachability, RecordEncoder};
        let mut encoder = RecordEncoder::new();
        encoder.process(&ProcessInfo::default());
        for scan in scans {
            if let Some(unjudged) = scan {
                encoder.inheritance_left(*unjudged, 10);
            }
            encoder.reachability(&Reachability::default());
        }
        let mut writer = ChunkWriter::new(Vec::new()).unwrap();
        writer.write_chunk(&encoder.payload()).unwrap();
        let path = scratch.join(format!("child-{}.trace", scans.len()));
        std::fs::write(&path, writer.get_ref()).unwrap();
        path
    }

    #[test]
    fn a_child_leaves_its_inheritance_to_the_parent_only_when_its_last_scan_says_so() {
        let scratch = std::env::temp_dir().join(format!("libleak-left-{}", std::process::id()));
        std::fs::create_dir_all(&scratch).unwrap();
        let says = |scans: &[Option<u64>]| leaves_inheritance_to_parent(&child_trace_with_scans(&scratch, scans));
        assert!(says(&[Some(5)]), "its one scan left 5 blocks");
        assert!(says(&[Some(5), Some(4)]), "both scans did");
        assert!(
            !says(&[Some(5), None]),
            "it forked, and its exit scan judged everything"
        );
        assert!(!says(&[Some(0)]), "nothing left");
        assert!(!says(&[]), "no scan");
        assert!(!leaves_inheritance_to_parent(&scratch.join("gone.trace")));
        std::fs::remove_dir_all(&scratch).unwrap();
    }
}
