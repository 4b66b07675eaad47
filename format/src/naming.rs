//! Trace file naming, a public contract: `libleak.<program>.<pid>.trace`. Shared so that the
//! interposer (which names the file) and `libleak run` (which looks for it) agree.

/// The short program name for a command line: the executable's base name, or for a Python
/// interpreter the script's (without `.py`) or the `-m` module's.
pub fn program_name(argv: &[String]) -> String {
    let base = |path: &str| path.rsplit('/').next().unwrap_or(path).to_string();
    let Some(first) = argv.first() else {
        return "unknown".into();
    };
    let exe = base(first);
    if !exe.starts_with("python") {
        return sanitize(&exe);
    }
    let mut args = argv[1..].iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-c" => return sanitize(&exe),
            "-m" => return args.next().map_or_else(|| sanitize(&exe), |m| sanitize(m)),
            "-X" | "-W" | "--check-hash-based-pycs" => {
                args.next();
            }
            "-" => return sanitize(&exe),
            option if option.starts_with('-') => {
                if let Some(rest) = option.strip_prefix("-m").filter(|r| !r.is_empty()) {
                    return sanitize(rest);
                }
                if option.starts_with("-c") && option.len() > 2 {
                    return sanitize(&exe);
                }
            }
            script => {
                let name = base(script);
                return sanitize(name.strip_suffix(".py").unwrap_or(&name));
            }
        }
    }
    sanitize(&exe)
}

fn sanitize(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if cleaned.is_empty() {
        "unknown".into()
    } else {
        cleaned
    }
}

/// `libleak.<program>.<pid>.trace`
pub fn trace_file_name(program: &str, pid: u32) -> String {
    format!("libleak.{program}.{pid}.trace")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(args: &[&str]) -> String {
        program_name(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn names_programs_like_a_user_would() {
        assert_eq!(name(&["/usr/bin/ls", "-l"]), "ls");
        assert_eq!(name(&["python3", "app.py"]), "app");
        assert_eq!(name(&["/x/python3.11", "-X", "dev", "-u", "dir/tool.py", "a"]), "tool");
        assert_eq!(name(&["python", "-m", "http.server"]), "http.server");
        assert_eq!(name(&["python", "-mpytest"]), "pytest");
        assert_eq!(name(&["python3", "-c", "pass"]), "python3");
        assert_eq!(name(&["python3"]), "python3");
        assert_eq!(name(&["./we ird/a b"]), "a_b");
        assert_eq!(name(&[]), "unknown");
        assert_eq!(trace_file_name("app", 12), "libleak.app.12.trace");
    }
}
