//! The `LIBLEAK_*` environment variables, read once at start-up. This is the only place that
//! reads the environment.
//!
//! - `LIBLEAK_OUTPUT`: trace path template; `%p` becomes the pid. Default
//!   `libleak.<program>.<pid>.trace` in the current directory.
//! - `LIBLEAK_DISABLE=1`: load but record nothing.

pub struct Config {
    pub output_template: Option<String>,
    pub disabled: bool,
}

impl Config {
    pub fn from_env() -> Config {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        Config {
            output_template: var("LIBLEAK_OUTPUT"),
            disabled: var("LIBLEAK_DISABLE").is_some_and(|v| v != "0"),
        }
    }
}
