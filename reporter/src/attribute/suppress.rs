//! Suppressions, in LeakSanitizer's syntax: one `leak:PATTERN` per line, `#` comments.
//! A leak is suppressed when any frame of its stack matches: the pattern is compared with the
//! function name, the source file and the module path; `*` matches any run of characters,
//! `^` and `$` anchor at the start and end, and without anchors the pattern may match
//! anywhere.
//!
//! libleak's built-in list ([`crate::options::BUILTIN`]) is a last resort, for memory the scan
//! cannot see the owner of; it is printed by `libleak suppressions` and switched off with
//! `--no-builtin-suppressions`.
//!
//! Must stay pure apart from [`load`]: matching decides from frame text only.

use std::path::Path;

use crate::model::Frame;
pub use crate::options::{builtin, BuiltinSuppression, Suppression, BUILTIN};

#[derive(Debug, thiserror::Error)]
pub enum SuppressionError {
    #[error("cannot read suppressions file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}: expected `leak:PATTERN`, found `{text}`")]
    Syntax { path: String, line: usize, text: String },
}

pub fn parse(text: &str, path: &str) -> Result<Vec<Suppression>, SuppressionError> {
    let mut out = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(':') {
            Some(("leak", pattern)) if !pattern.trim().is_empty() => out.push(Suppression {
                pattern: pattern.trim().to_string(),
                origin: format!("{path}:{}", index + 1),
            }),
            _ => {
                return Err(SuppressionError::Syntax {
                    path: path.to_string(),
                    line: index + 1,
                    text: line.to_string(),
                })
            }
        }
    }
    Ok(out)
}

pub fn load(path: &Path) -> Result<Vec<Suppression>, SuppressionError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| SuppressionError::Read {
        path: shown.clone(),
        source,
    })?;
    parse(&text, &shown)
}

/// The first suppression matching any frame of `frames`.
pub fn matching<'a>(suppressions: &'a [Suppression], frames: &[Frame]) -> Option<&'a Suppression> {
    suppressions.iter().find(|s| {
        frames.iter().any(|frame| {
            [
                frame.function.as_deref(),
                frame.file.as_deref(),
                frame.module.as_deref(),
            ]
            .into_iter()
            .flatten()
            .any(|text| pattern_matches(&s.pattern, text))
        })
    })
}

/// LeakSanitizer's template match: `*` wildcards, `^`/`$` anchors, otherwise a substring.
pub fn pattern_matches(pattern: &str, text: &str) -> bool {
    let anchored_start = pattern.starts_with('^');
    let anchored_end = pattern.ends_with('$') && pattern.len() > usize::from(anchored_start);
    let body = &pattern[usize::from(anchored_start)..pattern.len() - usize::from(anchored_end)];
    let parts: Vec<&str> = body.split('*').collect();
    let mut at = 0;
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            continue;
        }
        let first = i == 0;
        let last = i == parts.len() - 1;
        if first && anchored_start {
            if !text.starts_with(part) {
                return false;
            }
            at = part.len();
        } else if last && anchored_end {
            if text.len() < at + part.len() || !text.ends_with(part) {
                return false;
            }
            at = text.len();
        } else {
            match text[at..].find(part) {
                Some(found) => at += found + part.len(),
                None => return false,
            }
        }
    }
    if anchored_end && parts.last().is_some_and(|p| p.is_empty()) {
        return true;
    }
    !anchored_end || at == text.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_matching_like_leaksanitizer() {
        assert!(pattern_matches("parse", "parse_records"));
        assert!(pattern_matches("records", "parse_records"));
        assert!(pattern_matches("^parse", "parse_records"));
        assert!(!pattern_matches("^records", "parse_records"));
        assert!(pattern_matches("records$", "parse_records"));
        assert!(!pattern_matches("parse$", "parse_records"));
        assert!(pattern_matches("p*_rec", "parse_records"));
        assert!(pattern_matches("^parse_records$", "parse_records"));
        assert!(!pattern_matches("^parse_record$", "parse_records"));
        assert!(pattern_matches("libfoo*.so", "/usr/lib/libfoo-1.2.so.3"));
        assert!(!pattern_matches("zzz", "parse_records"));
    }

    #[test]
    fn parses_leak_lines_and_rejects_others() {
        let parsed = parse("# comment\n\nleak:foo\n  leak:bar*baz  \n", "s.supp").unwrap();
        assert_eq!(parsed.len(), 2);
        assert_eq!(parsed[1].pattern, "bar*baz");
        assert_eq!(parsed[1].origin, "s.supp:4");
        assert!(matches!(
            parse("race:foo\n", "s.supp"),
            Err(SuppressionError::Syntax { line: 1, .. })
        ));
    }
}
