//! Trace file naming, a public contract: `libleak.<program>.<pid>.trace` by default, or the
//! `LIBLEAK_OUTPUT` template, with `.N` before `.trace` when the name is taken. Shared so that
//! the interposer (which names the file, [`TraceTemplate::expand`]) and `libleak run` (which
//! looks for it, [`TraceTemplate::matches`]) agree.
//!
//! Pure string work: this module must never touch the file system or the environment.

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

/// Where a process writes its trace, as `LIBLEAK_OUTPUT` says: a path in which `%p` stands for
/// the pid, or a directory (ending in `/`) for the default names; unset, the default name in
/// the current directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceTemplate {
    /// A directory the template is relative to (ending in `/`), taken as is; empty when the
    /// template stands alone.
    root: String,
    /// The template's own directory part, up to its last `/`; `%p` is expanded here too.
    directory: String,
    /// The file name with `%p`; `None`: each process's default name,
    /// `libleak.<program>.%p.trace`.
    name: Option<String>,
    /// The program this process runs (see [`program_name`]).
    program: String,
}

impl TraceTemplate {
    /// The template `LIBLEAK_OUTPUT` gives (`None`: unset) for a process running `program`.
    pub fn new(output: Option<&str>, program: &str) -> TraceTemplate {
        let (directory, name) = match output {
            None => (String::new(), None),
            Some(directory) if directory.ends_with('/') => (directory.to_string(), None),
            Some(template) => match template.rfind('/') {
                Some(slash) => (template[..=slash].to_string(), Some(template[slash + 1..].to_string())),
                None => (String::new(), Some(template.to_string())),
            },
        };
        TraceTemplate {
            root: String::new(),
            directory,
            name,
            program: program.to_string(),
        }
    }

    /// The default name spelled out, `libleak.<program>.%p.trace`, so that processes
    /// running other programs under it keep this program's name.
    pub fn for_program(program: &str) -> TraceTemplate {
        TraceTemplate::new(Some(&format!("libleak.{program}.%p.trace")), program)
    }

    /// This template read from directory `cwd` when it is relative; unchanged otherwise (or
    /// when `cwd` is empty).
    pub fn relative_to(mut self, cwd: &str) -> TraceTemplate {
        if self.root.is_empty() && !self.directory.starts_with('/') && !cwd.is_empty() {
            self.root = format!("{}/", cwd.trim_end_matches('/'));
        }
        self
    }

    /// The file name template, `%p` for the pid.
    fn file_template(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("libleak.{}.%p.trace", self.program))
    }

    /// The path of the trace of process `pid`: attempt 0 is the template itself, attempt
    /// N (when the earlier names were taken) puts `.N` before `.trace`, or after the name
    /// when it does not end in `.trace`.
    pub fn expand(&self, pid: u32, attempt: u32) -> String {
        let template = format!("{}{}", self.directory, self.file_template());
        let base = format!("{}{}", self.root, template.replace("%p", &pid.to_string()));
        match (attempt, base.strip_suffix(".trace")) {
            (0, _) => base,
            (n, Some(stem)) => format!("{stem}.{n}.trace"),
            (n, None) => format!("{base}.{n}"),
        }
    }

    /// The directory the traces go to (empty: the current directory). A directory holding
    /// `%p` is one per process; it is returned as written.
    pub fn directory(&self) -> String {
        format!("{}{}", self.root, self.directory)
    }

    /// Whether `file_name`, a file in [`TraceTemplate::directory`], is a name that
    /// [`TraceTemplate::expand`] gives for some pid and attempt. Without a file name of its
    /// own, the template gives each process its default name, so any program's matches.
    pub fn matches(&self, file_name: &str) -> bool {
        let mut bases = vec![file_name.to_string()];
        if let Some(stem) = file_name.strip_suffix(".trace") {
            if let Some(base) = strip_attempt(stem) {
                bases.push(format!("{base}.trace"));
            }
        } else if let Some(base) = strip_attempt(file_name).filter(|b| !b.ends_with(".trace")) {
            bases.push(base.to_string());
        }
        bases.iter().any(|base| match &self.name {
            Some(name) => matches_pid_template(name, base, None),
            None => base
                .strip_prefix("libleak.")
                .and_then(|rest| rest.strip_suffix(".trace"))
                .and_then(|rest| rest.rsplit_once('.'))
                .is_some_and(|(program, pid)| !program.is_empty() && sanitize(program) == program && is_number(pid)),
        })
    }
}

impl std::fmt::Display for TraceTemplate {
    /// The template as `LIBLEAK_OUTPUT` spells it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}{}{}",
            self.root,
            self.directory,
            self.name.as_deref().unwrap_or("")
        )
    }
}

fn is_number(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

/// `name` without a trailing `.N` (N a number), if it has one.
fn strip_attempt(name: &str) -> Option<&str> {
    let (base, n) = name.rsplit_once('.')?;
    is_number(n).then_some(base)
}

/// Whether `text` is `template` with each `%p` replaced by one and the same number (`pid`,
/// once the first has been read).
fn matches_pid_template(template: &str, text: &str, pid: Option<&str>) -> bool {
    let Some((literal, rest)) = template.split_once("%p") else {
        return text == template;
    };
    let Some(after) = text.strip_prefix(literal) else {
        return false;
    };
    if let Some(pid) = pid {
        return after
            .strip_prefix(pid)
            .is_some_and(|after| matches_pid_template(rest, after, Some(pid)));
    }
    let digits = after.bytes().take_while(u8::is_ascii_digit).count();
    // The number may be followed by a literal digit: try each length.
    (1..=digits).any(|len| matches_pid_template(rest, &after[len..], Some(&after[..len])))
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

    #[test]
    fn templates_expand_like_the_interposer_names_files() {
        let default = TraceTemplate::new(None, "app");
        assert_eq!(default.expand(12, 0), "libleak.app.12.trace");
        assert_eq!(default.expand(12, 0), trace_file_name("app", 12));
        assert_eq!(default.expand(12, 2), "libleak.app.12.2.trace");
        assert_eq!(
            default.clone().relative_to("/home/me/").expand(12, 0),
            "/home/me/libleak.app.12.trace"
        );
        let directory = TraceTemplate::new(Some("out/"), "app").relative_to("/w");
        assert_eq!(directory.expand(7, 1), "/w/out/libleak.app.7.1.trace");
        assert_eq!(directory.directory(), "/w/out/");
        assert_eq!(directory.to_string(), "/w/out/");
        let plain = TraceTemplate::new(Some("/t/trace.%p"), "app").relative_to("/w");
        assert_eq!(plain.expand(7, 0), "/t/trace.7");
        assert_eq!(plain.expand(7, 3), "/t/trace.7.3");
        assert_eq!(plain.to_string(), "/t/trace.%p");
        let fixed = TraceTemplate::new(Some("x.trace"), "app");
        assert_eq!(fixed.expand(7, 1), "x.1.trace");
        assert_eq!(fixed.directory(), "");
        let spelled = TraceTemplate::for_program("app").relative_to("/w");
        assert_eq!(spelled.to_string(), "/w/libleak.app.%p.trace");
        assert_eq!(spelled.expand(5, 0), "/w/libleak.app.5.trace");
        // The cwd is not a template: a `%p` in it stays.
        assert_eq!(
            TraceTemplate::new(None, "a").relative_to("/%p").expand(5, 0),
            "/%p/libleak.a.5.trace"
        );
    }

    #[test]
    fn templates_match_exactly_the_names_they_expand_to() {
        let spelled = TraceTemplate::for_program("app");
        assert!(spelled.matches("libleak.app.123.trace"));
        assert!(spelled.matches("libleak.app.123.4.trace"));
        assert!(!spelled.matches("libleak.app.trace"));
        assert!(!spelled.matches("libleak.app.12x.trace"));
        assert!(!spelled.matches("libleak.other.123.trace"));
        assert!(!spelled.matches("libleak.app.123.trace.1"));
        let default = TraceTemplate::new(Some("dir/"), "app");
        assert!(default.matches("libleak.app.1.trace"));
        assert!(
            default.matches("libleak.child.tool.9.2.trace"),
            "children run other programs"
        );
        assert!(!default.matches("libleak..9.trace"));
        assert!(!default.matches("notes.trace"));
        let plain = TraceTemplate::new(Some("trace.%p"), "app");
        assert!(plain.matches("trace.42"));
        assert!(plain.matches("trace.42.1"));
        assert!(!plain.matches("trace."));
        assert!(!plain.matches("trace.42.1.trace"));
        let twice = TraceTemplate::new(Some("p%p-%p.trace"), "app");
        assert!(twice.matches("p12-12.trace"));
        assert!(!twice.matches("p12-13.trace"));
        let digit_after = TraceTemplate::new(Some("t%p1.trace"), "app");
        assert!(digit_after.matches("t4201.trace"));
        let fixed = TraceTemplate::new(Some("/x/out.trace"), "app");
        assert!(fixed.matches("out.trace") && fixed.matches("out.3.trace"));
        assert!(!fixed.matches("outside.trace"));
        for (template, pid, attempt) in [(Some("a.%p.trace"), 1, 0), (None, 77, 5), (Some("q%p"), 3, 2)] {
            let template = TraceTemplate::new(template, "prog");
            let path = template.expand(pid, attempt);
            assert!(template.matches(path.rsplit('/').next().unwrap()), "{path}");
        }
    }
}
