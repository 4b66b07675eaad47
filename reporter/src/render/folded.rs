//! The report in Brendan Gregg's folded-stack format (`--format folded`), the input of
//! flamegraph.pl, inferno and speedscope: one line per merged stack, frames outermost first,
//! separated by `;`, then a space and the bytes of the listed rows' blocks with that stack.
//!
//! A frame reads `function (file:line)` with a location, `function [module]` without one, and
//! `function` alone when neither is known. `%`, `;`, CR and LF inside a name are written
//! `%25`, `%3B`, `%0D`, `%0A`, so that no name can split a frame or a line. Several processes'
//! stacks each start with a frame naming the process (`program (pid N)`), so that one flame
//! graph shows them side by side.
//!
//! Renderers only format: this must never filter, reorder or recompute what the pipeline
//! decided (every stack of every listed row is written, as the JSON lists them), and never
//! print.

use std::collections::BTreeMap;

use crate::model::{Frame, Report};

/// What a stack recorded without frames (a signal handler's allocation) is shown as.
const NO_STACK: &str = "[no stack recorded]";

/// `text` with the characters that would break the format escaped.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '%' => out.push_str("%25"),
            ';' => out.push_str("%3B"),
            '\n' => out.push_str("%0A"),
            '\r' => out.push_str("%0D"),
            c => out.push(c),
        }
    }
    out
}

/// One frame as the folded format names it.
pub fn frame_name(frame: &Frame) -> String {
    let function = frame.function.as_deref().unwrap_or("??");
    let text = match (&frame.file, frame.line, &frame.module) {
        (Some(file), Some(line), _) => format!("{function} ({file}:{line})"),
        (Some(file), None, _) => format!("{function} ({file})"),
        (None, _, Some(module)) => format!("{function} [{}]", module.rsplit('/').next().unwrap_or(module)),
        (None, _, None) => function.to_string(),
    };
    escape(&text)
}

/// The folded line prefix of one stack: its frames outermost first, joined by `;`.
fn stack_key(prefix: Option<&str>, frames: &[Frame]) -> String {
    let mut parts: Vec<String> = prefix.map(str::to_string).into_iter().collect();
    if frames.is_empty() {
        parts.push(NO_STACK.to_string());
    }
    parts.extend(frames.iter().rev().map(frame_name));
    parts.join(";")
}

fn add_report(lines: &mut BTreeMap<String, u64>, report: &Report, prefix: Option<&str>) {
    for leak in &report.leaks {
        for stack in leak.all_stacks() {
            *lines.entry(stack_key(prefix, &stack.frames)).or_default() += stack.bytes;
        }
    }
}

/// The folded lines of one or more processes' reports, in key order. Identical stacks (the
/// same frames in two rows, as `--group-by N` can give) are one line with their bytes summed.
pub fn to_folded(reports: &[Report]) -> String {
    let mut lines: BTreeMap<String, u64> = BTreeMap::new();
    if let [single] = reports {
        add_report(&mut lines, single, None);
    } else {
        for report in reports {
            let process = &report.header.process;
            let name = escape(&format!("{} (pid {})", process.program, process.pid));
            add_report(&mut lines, report, Some(&name));
        }
    }
    let mut out = String::new();
    for (stack, bytes) in lines {
        out.push_str(&stack);
        out.push(' ');
        out.push_str(&bytes.to_string());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::FrameKind;

    fn frame(function: &str, file: Option<&str>, line: Option<u32>, module: Option<&str>) -> Frame {
        Frame {
            kind: FrameKind::Native,
            function: Some(function.into()),
            file: file.map(Into::into),
            line,
            module: module.map(Into::into),
            inlined: false,
            address: Some(1),
            build_id_mismatch: false,
        }
    }

    #[test]
    fn frames_name_their_location_or_module_and_cannot_break_the_format() {
        assert_eq!(
            frame_name(&frame("parse", Some("/src/a.c"), Some(15), Some("/lib/x.so"))),
            "parse (/src/a.c:15)"
        );
        assert_eq!(
            frame_name(&frame("x.so+0x10", None, None, Some("/lib/x.so"))),
            "x.so+0x10 [x.so]"
        );
        assert_eq!(frame_name(&frame("f", None, None, None)), "f");
        let nasty = frame_name(&frame("a;b\nc%d", None, None, None));
        assert_eq!(nasty, "a%3Bb%0Ac%25d");
        assert!(!nasty.contains(';') && !nasty.contains('\n'));
    }

    #[test]
    fn stacks_read_outermost_first_and_an_empty_one_is_named() {
        let frames = [
            frame("inner", Some("a.c"), Some(1), None),
            frame("outer", Some("a.c"), Some(9), None),
        ];
        assert_eq!(stack_key(None, &frames), "outer (a.c:9);inner (a.c:1)");
        assert_eq!(stack_key(Some("app (pid 7)"), &[]), "app (pid 7);[no stack recorded]");
    }
}
