//! The report as one self-contained HTML page (`--html FILE`): the process header and
//! summary, an icicle graph of leaked bytes by merged stack, the rows as a table whose rows
//! open onto their stacks; with `--growth`, the live-bytes timeline and the growing sites with
//! their sparklines and holders.
//!
//! The page embeds the JSON document `--json` prints (leak or growth report, one process or
//! several) in a `<script type="application/json">` block, and its script draws everything
//! from that, so the page cannot disagree with the JSON and a test can compare the two. The
//! style sheet and script are hand-written files beside this one (`html/`), included at build
//! time.
//!
//! Must never reference anything outside the page (no network: no external scripts, fonts,
//! images or style sheets), never let report text reach the page as markup, and never print.

use serde_json::Value;

const TEMPLATE: &str = include_str!("html/page.html");
const STYLE: &str = include_str!("html/style.css");
const SCRIPT: &str = include_str!("html/report.js");

/// `text` safe inside HTML text or an attribute value.
fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The document as JSON that cannot end its `<script>` block: `<`, `>` and `&` only occur
/// inside JSON strings, where their `\u` escapes parse to the same value.
fn embeddable_json(document: &Value) -> String {
    let text = document.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            c => out.push(c),
        }
    }
    out
}

/// The page's title: the kind of report and the process(es) it is about.
fn title(document: &Value) -> String {
    let growth = document["format"]
        .as_str()
        .is_some_and(|f| f.starts_with("libleak-growth"));
    let kind = if growth {
        "libleak growth report"
    } else {
        "libleak report"
    };
    let name = |doc: &Value| {
        format!(
            "{} (pid {})",
            doc["process"]["program"].as_str().unwrap_or("?"),
            doc["process"]["pid"]
        )
    };
    match document["processes"].as_array() {
        Some(processes) if processes.len() == 1 => format!("{kind}: {}", name(&processes[0])),
        Some(processes) => format!("{kind}: {} processes", processes.len()),
        None => format!("{kind}: {}", name(document)),
    }
}

/// The page drawing `document`: a leak report's JSON (`libleak-report` or
/// `libleak-reports`) or a growth report's (`libleak-growth` or `libleak-growths`).
pub fn page(document: &Value) -> String {
    // The fixed parts go in first; report text goes in last and is never searched again.
    let fixed = TEMPLATE
        .replacen("{{STYLE}}", STYLE, 1)
        .replacen("{{SCRIPT}}", SCRIPT, 1);
    let (head, tail) = fixed.split_once("{{DATA}}").unwrap_or((&fixed, ""));
    let (before_title, after_title) = head.split_once("{{TITLE}}").unwrap_or((head, ""));
    let json = embeddable_json(document);
    let title = escape_html(&title(document));
    let mut out = String::with_capacity(fixed.len() + json.len() + title.len());
    out.push_str(before_title);
    out.push_str(&title);
    out.push_str(after_title);
    out.push_str(&json);
    out.push_str(tail);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_document_parses_back_equal_and_cannot_close_its_block() {
        let document = serde_json::json!({
            "format": "libleak-report",
            "process": {"program": "<b>app</b>", "pid": 7},
            "trace": "</script><script>alert(1)</script> & more",
        });
        let page = page(&document);
        let start = page.find("id=\"libleak-data\">").unwrap() + "id=\"libleak-data\">".len();
        let end = start + page[start..].find("</script>").unwrap();
        let embedded: Value = serde_json::from_str(&page[start..end]).unwrap();
        assert_eq!(embedded, document);
        assert!(page.contains("<title>libleak report: &lt;b&gt;app&lt;/b&gt; (pid 7)</title>"));
        assert!(!page.contains("{{"), "every placeholder is filled");
    }

    #[test]
    fn the_page_references_nothing_outside_itself() {
        let page = page(&serde_json::json!({"format": "libleak-reports", "processes": []}));
        for needle in ["http:", "https:", "src=", "<link", "@import", "url("] {
            assert!(!page.contains(needle), "the page contains {needle}");
        }
    }
}
