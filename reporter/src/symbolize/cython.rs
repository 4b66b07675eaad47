//! The Python name of a function Cython generated, read from its C symbol: Cython names a
//! module's functions `__pyx_<kind>_` followed by the length-prefixed parts of the scope
//! (`6cyleak_7Session_`) and the function's name, counted in the module for `def` functions
//! (`__pyx_pw_6cyleak_1leak` is `cyleak.leak`). Shown beside the C name, which stays the
//! frame's function (suppressions and JSON match it).
//!
//! Must stay pure: text in, text out.

/// Symbol prefixes of Cython's functions, and what the name describes.
const KINDS: &[(&str, &str)] = &[
    ("__pyx_pw_", ""),
    ("__pyx_pf_", ""),
    ("__pyx_f_", ""),
    ("__pyx_tp_new_", ".__new__"),
    ("__pyx_tp_dealloc_", ".__dealloc__"),
    ("__pyx_pymod_exec_", " module init"),
];

/// `cyleak.Session.__cinit__` for `__pyx_pf_6cyleak_7Session___cinit__`; `None` for other
/// symbols.
pub fn python_name(symbol: &str) -> Option<String> {
    let symbol = symbol.split('.').next().unwrap_or(symbol);
    let (rest, suffix) = KINDS
        .iter()
        .find_map(|(prefix, suffix)| symbol.strip_prefix(prefix).map(|rest| (rest, *suffix)))?;
    let mut parts: Vec<&str> = Vec::new();
    let mut rest = rest;
    loop {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let Ok(len) = rest[..digits].parse::<usize>() else {
            break;
        };
        let Some(part) = rest.get(digits..digits + len) else {
            break;
        };
        let after = &rest[digits + len..];
        if !after.starts_with('_') && !after.is_empty() {
            break;
        }
        parts.push(part);
        rest = after.strip_prefix('_').unwrap_or(after);
    }
    // A `def` function's name follows its number in the module.
    let name = rest.trim_start_matches(|c: char| c.is_ascii_digit());
    if !name.is_empty() {
        parts.push(name);
    }
    if parts.is_empty() || parts.iter().any(|part| !is_identifier(part)) {
        return None;
    }
    Some(format!("{}{suffix}", parts.join(".")))
}

fn is_identifier(text: &str) -> bool {
    text.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && text.chars().all(|c| c.is_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use super::python_name;

    #[test]
    fn cython_symbols_read_as_python_names() {
        let cases = [
            ("__pyx_pw_6cyleak_1leak", Some("cyleak.leak")),
            ("__pyx_f_6cyleak_make_buffer", Some("cyleak.make_buffer")),
            ("__pyx_pf_6cyleak_7Session___cinit__", Some("cyleak.Session.__cinit__")),
            (
                "__pyx_pw_6cyleak_7Session_3__reduce_cython__",
                Some("cyleak.Session.__reduce_cython__"),
            ),
            (
                "__pyx_f_7msgpack_9_cmsgpack_8Unpacker__unpack",
                Some("msgpack._cmsgpack.Unpacker._unpack"),
            ),
            ("__pyx_tp_new_6cyleak_Session", Some("cyleak.Session.__new__")),
            ("__pyx_pymod_exec_cyleak", Some("cyleak module init")),
            ("__pyx_f_6cyleak_make_buffer.constprop.0", Some("cyleak.make_buffer")),
            ("__Pyx_AddTraceback", None),
            ("make_buffer", None),
            ("__pyx_f_", None),
        ];
        for (symbol, expected) in cases {
            assert_eq!(python_name(symbol).as_deref(), expected, "{symbol}");
        }
    }
}
