//! Stage 7, render: the report as text ([`text`]) and as JSON ([`json`]), both listing exactly
//! the same rows; [`growth`] does the same for the growth report. Hand-offs to other tools
//! draw the same rows: [`folded`] (flame graph input), [`pprof`] (a profile.proto), and
//! [`html`] (one page rendering the JSON document it embeds). Helpers they share live here.
//!
//! Renderers only format: they must never filter, reorder or recompute what the pipeline
//! decided.

pub mod folded;
pub mod growth;
pub mod html;
pub mod json;
pub mod pprof;
pub mod text;

use libleak_format::ScanOutcome;

pub fn outcome_name(outcome: ScanOutcome) -> &'static str {
    match outcome {
        ScanOutcome::Complete => "complete",
        ScanOutcome::CutShort => "cut-short",
        ScanOutcome::Failed => "failed",
    }
}

/// `n` with a comma between each group of three digits.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
