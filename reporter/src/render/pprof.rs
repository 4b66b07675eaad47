//! The report as a pprof profile (`--format pprof`): a gzipped `profile.proto` message
//! (github.com/google/pprof, proto/profile.proto), what `go tool pprof`, Pyroscope and Grafana
//! read. Each distinct stack of each listed row is one sample with two values,
//! `leaked_objects`/`count` (blocks) and `leaked_space`/`bytes` (the default), and the labels
//! `kind` (the row's class) and `pid`. Locations carry their lines (inlined frames as extra
//! lines of one location, innermost first, as pprof wants them) and native ones their module
//! as a mapping; Python frames are locations without a mapping or address.
//!
//! The report keeps no module map, so a mapping's address range is the one its frames'
//! addresses cover; its build-id is not known here. The protobuf encoding is written by hand
//! below (a dozen varint and length-delimited fields do not justify a code generator).
//!
//! Renderers only format: this must never filter, reorder or recompute what the pipeline
//! decided, and never print.

use std::collections::HashMap;
use std::io::Write as _;

use crate::model::{Frame, FrameKind, Report};

/// What a stack recorded without frames is shown as (pprof shows samples by location).
const NO_STACK: &str = "[no stack recorded]";

/// Protobuf wire types.
const VARINT: u64 = 0;
const LENGTH_DELIMITED: u64 = 2;

/// Protobuf's wire encoding, the few shapes profile.proto uses.
#[derive(Default)]
struct Encoder {
    buf: Vec<u8>,
}

impl Encoder {
    fn varint(&mut self, mut value: u64) {
        while value >= 0x80 {
            self.buf.push((value as u8 & 0x7f) | 0x80);
            value >>= 7;
        }
        self.buf.push(value as u8);
    }

    fn key(&mut self, field: u64, wire_type: u64) {
        self.varint(field << 3 | wire_type);
    }

    /// A singular integer field; proto3 leaves zero values out.
    fn uint(&mut self, field: u64, value: u64) {
        if value != 0 {
            self.key(field, VARINT);
            self.varint(value);
        }
    }

    /// An `int64` field: negative values are their two's complement, as protobuf says.
    fn int(&mut self, field: u64, value: i64) {
        self.uint(field, value as u64);
    }

    fn bool(&mut self, field: u64, value: bool) {
        self.uint(field, u64::from(value));
    }

    /// A length-delimited field, written even when empty (an element of a repeated field).
    fn bytes(&mut self, field: u64, bytes: &[u8]) {
        self.key(field, LENGTH_DELIMITED);
        self.varint(bytes.len() as u64);
        self.buf.extend_from_slice(bytes);
    }

    /// A repeated integer field, packed (proto3's default encoding).
    fn packed(&mut self, field: u64, values: impl IntoIterator<Item = u64>) {
        let mut inner = Encoder::default();
        for value in values {
            inner.varint(value);
        }
        if !inner.buf.is_empty() {
            self.bytes(field, &inner.buf);
        }
    }

    fn message(&mut self, field: u64, fill: impl FnOnce(&mut Encoder)) {
        let mut inner = Encoder::default();
        fill(&mut inner);
        self.bytes(field, &inner.buf);
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct LocationKey {
    mapping: u64,
    address: u64,
    /// (function id, line) per line, innermost first.
    lines: Vec<(u64, i64)>,
}

struct Mapping {
    filename: i64,
    start: u64,
    limit: u64,
}

/// The profile's tables, filled as samples are added; ids are 1-based positions.
#[derive(Default)]
struct Tables {
    strings: Vec<String>,
    string_ids: HashMap<String, i64>,
    functions: Vec<(i64, i64)>,
    function_ids: HashMap<(i64, i64), u64>,
    mappings: Vec<Mapping>,
    mapping_ids: HashMap<String, u64>,
    locations: Vec<LocationKey>,
    location_ids: HashMap<LocationKey, u64>,
}

impl Tables {
    fn new() -> Tables {
        let mut tables = Tables::default();
        // The string table must start with the empty string.
        tables.string("");
        tables
    }

    fn string(&mut self, text: &str) -> i64 {
        if let Some(&id) = self.string_ids.get(text) {
            return id;
        }
        let id = self.strings.len() as i64;
        self.strings.push(text.to_string());
        self.string_ids.insert(text.to_string(), id);
        id
    }

    fn function(&mut self, name: &str, file: Option<&str>) -> u64 {
        let key = (self.string(name), self.string(file.unwrap_or("")));
        if let Some(&id) = self.function_ids.get(&key) {
            return id;
        }
        self.functions.push(key);
        let id = self.functions.len() as u64;
        self.function_ids.insert(key, id);
        id
    }

    /// The mapping of `module`, its range widened to cover `address`.
    fn mapping(&mut self, module: &str, address: u64) -> u64 {
        if let Some(&id) = self.mapping_ids.get(module) {
            let mapping = &mut self.mappings[id as usize - 1];
            mapping.start = mapping.start.min(address);
            mapping.limit = mapping.limit.max(address.saturating_add(1));
            return id;
        }
        let filename = self.string(module);
        self.mappings.push(Mapping {
            filename,
            start: address,
            limit: address.saturating_add(1),
        });
        let id = self.mappings.len() as u64;
        self.mapping_ids.insert(module.to_string(), id);
        id
    }

    fn location(&mut self, key: LocationKey) -> u64 {
        if let Some(&id) = self.location_ids.get(&key) {
            return id;
        }
        self.locations.push(key.clone());
        let id = self.locations.len() as u64;
        self.location_ids.insert(key, id);
        id
    }

    /// The location ids of a stack, innermost first: a run of inlined frames and the frame
    /// they were inlined into make one location.
    fn stack(&mut self, frames: &[Frame]) -> Vec<u64> {
        if frames.is_empty() {
            let function = self.function(NO_STACK, None);
            return vec![self.location(LocationKey {
                mapping: 0,
                address: 0,
                lines: vec![(function, 0)],
            })];
        }
        let mut ids = Vec::new();
        let mut lines = Vec::new();
        for (i, frame) in frames.iter().enumerate() {
            let function = self.function(frame.function.as_deref().unwrap_or("??"), frame.file.as_deref());
            lines.push((function, i64::from(frame.line.unwrap_or(0))));
            let inlined_into_next = frame.kind == FrameKind::Native && frame.inlined && i + 1 < frames.len();
            if inlined_into_next {
                continue;
            }
            let (mapping, address) = match (frame.kind, &frame.module, frame.address) {
                (FrameKind::Native, Some(module), Some(address)) => (self.mapping(module, address), address),
                (FrameKind::Native, None, Some(address)) => (0, address),
                _ => (0, 0),
            };
            ids.push(self.location(LocationKey {
                mapping,
                address,
                lines: std::mem::take(&mut lines),
            }));
        }
        ids
    }
}

/// One sample before encoding.
struct Sample {
    locations: Vec<u64>,
    blocks: u64,
    bytes: u64,
    kind: i64,
    pid: u32,
}

/// The profile message, uncompressed.
pub fn profile_proto(reports: &[Report]) -> Vec<u8> {
    let mut tables = Tables::new();
    let objects = tables.string("leaked_objects");
    let count = tables.string("count");
    let space = tables.string("leaked_space");
    let bytes_unit = tables.string("bytes");
    let kind_key = tables.string("kind");
    let pid_key = tables.string("pid");
    let mut samples = Vec::new();
    let mut comments = Vec::new();
    for report in reports {
        comments.push(tables.string(&format!("libleak report of {}", report.trace_path)));
        for leak in &report.leaks {
            let kind = tables.string(leak.class.name());
            for stack in leak.all_stacks() {
                samples.push(Sample {
                    locations: tables.stack(&stack.frames),
                    blocks: stack.blocks,
                    bytes: stack.bytes,
                    kind,
                    pid: report.header.process.pid,
                });
            }
        }
    }
    let mut out = Encoder::default();
    for (kind, unit) in [(objects, count), (space, bytes_unit)] {
        out.message(1, |m| {
            m.int(1, kind);
            m.int(2, unit);
        });
    }
    for sample in &samples {
        out.message(2, |m| {
            m.packed(1, sample.locations.iter().copied());
            // Values are int64; two's complement keeps even absurd sizes decodable.
            m.packed(2, [sample.blocks, sample.bytes]);
            m.message(3, |label| {
                label.int(1, kind_key);
                label.int(2, sample.kind);
            });
            m.message(3, |label| {
                label.int(1, pid_key);
                label.int(3, i64::from(sample.pid));
            });
        });
    }
    for (i, mapping) in tables.mappings.iter().enumerate() {
        out.message(3, |m| {
            m.uint(1, i as u64 + 1);
            m.uint(2, mapping.start);
            m.uint(3, mapping.limit);
            m.int(5, mapping.filename);
            // Symbolized already: pprof must not try to symbolize these addresses again.
            m.bool(7, true);
            m.bool(8, true);
            m.bool(9, true);
            m.bool(10, true);
        });
    }
    for (i, location) in tables.locations.iter().enumerate() {
        out.message(4, |m| {
            m.uint(1, i as u64 + 1);
            m.uint(2, location.mapping);
            m.uint(3, location.address);
            for &(function, line) in &location.lines {
                m.message(4, |l| {
                    l.uint(1, function);
                    l.int(2, line);
                });
            }
        });
    }
    for (i, &(name, file)) in tables.functions.iter().enumerate() {
        out.message(5, |m| {
            m.uint(1, i as u64 + 1);
            m.int(2, name);
            // No system_name: the report's names are demangled already, and pprof demangles a
            // function whose name equals its system_name again (`<module>` comes out empty).
            m.int(4, file);
        });
    }
    for text in &tables.strings {
        out.bytes(6, text.as_bytes());
    }
    let start = reports
        .iter()
        .map(|r| r.header.process.start_time_unix_ns)
        .filter(|&t| t > 0)
        .min()
        .unwrap_or(0);
    out.int(9, start as i64);
    out.packed(13, comments.iter().map(|&c| c as u64));
    out.int(14, space);
    out.buf
}

/// The profile, gzipped, as pprof files are.
pub fn to_pprof(reports: &[Report]) -> std::io::Result<Vec<u8>> {
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gzip.write_all(&profile_proto(reports))?;
    gzip.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(function: &str, line: u32, inlined: bool, address: u64) -> Frame {
        Frame {
            kind: FrameKind::Native,
            function: Some(function.into()),
            file: Some("a.c".into()),
            line: Some(line),
            module: Some("/lib/a.so".into()),
            inlined,
            address: Some(address),
            build_id_mismatch: false,
        }
    }

    #[test]
    fn varints_and_fields_follow_the_wire_format() {
        let mut e = Encoder::default();
        e.varint(300);
        assert_eq!(e.buf, [0xac, 0x02]);
        let mut e = Encoder::default();
        e.int(2, -1);
        assert_eq!(e.buf.len(), 1 + 10, "a negative int64 takes ten bytes");
        let mut e = Encoder::default();
        e.uint(1, 0);
        e.bytes(6, b"");
        assert_eq!(e.buf, [0x32, 0x00], "zero scalars are left out, empty strings are not");
        let mut e = Encoder::default();
        e.packed(1, [1, 2, 150]);
        assert_eq!(e.buf, [0x0a, 0x04, 0x01, 0x02, 0x96, 0x01]);
    }

    #[test]
    fn inlined_frames_share_their_callers_location_and_mappings_cover_addresses() {
        let mut tables = Tables::new();
        let ids = tables.stack(&[
            frame("inner", 3, true, 0x1010),
            frame("outer", 9, false, 0x1010),
            frame("main", 20, false, 0x1400),
        ]);
        assert_eq!(ids, [1, 2]);
        assert_eq!(tables.locations[0].lines.len(), 2);
        assert_eq!(tables.locations[0].lines[0].1, 3, "innermost line first");
        assert_eq!(tables.mappings.len(), 1);
        assert_eq!((tables.mappings[0].start, tables.mappings[0].limit), (0x1010, 0x1401));
        assert_eq!(tables.strings[0], "");
        // The same stack again reuses every entry.
        let again = tables.stack(&[
            frame("inner", 3, true, 0x1010),
            frame("outer", 9, false, 0x1010),
            frame("main", 20, false, 0x1400),
        ]);
        assert_eq!(again, ids);
        assert_eq!(tables.locations.len(), 2);
    }
}
