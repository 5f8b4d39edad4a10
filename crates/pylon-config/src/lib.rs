//! `pylon.toml` → a validated [`Config`]; every problem is reported as `file:line:col: sentence`.

mod alert;
mod cache;
mod interpolate;
mod model;
mod observe;
mod provider;
mod reload;
mod rollout;
mod server;
mod validate;

use std::path::{Path, PathBuf};

pub use alert::*;
pub use cache::*;
pub use model::*;
pub use observe::*;
pub use provider::*;
pub use reload::{changes, load_file, needs_restart, Loaded};
pub use rollout::*;
pub use server::*;

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the config file: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// One or more problems at known places in the file.
    #[error("{}", render(.0))]
    Invalid(Vec<Diagnostic>),
}

/// One problem at a place in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

fn render(diags: &[Diagnostic]) -> String {
    diags
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads, interpolates, parses and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, &path.display().to_string(), &process_env)
}

/// What `${…}` resolves to in this process: a variable of the environment, or for
/// `file:/path` the file's contents without the trailing newline.
pub fn process_env(name: &str) -> Option<String> {
    match name.strip_prefix("file:") {
        Some(path) => std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim_end_matches(['\n', '\r']).to_owned()),
        None => std::env::var(name).ok(),
    }
}

/// Parses config text; `env` resolves `${VAR}` references (injectable for tests).
pub fn parse(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let at = |offset: usize, message: String| {
        let (line, col) = line_col(text, offset);
        Diagnostic {
            file: file.to_owned(),
            line,
            col,
            message,
        }
    };
    let expanded = interpolate::expand(text, env)
        .map_err(|errs| ConfigError::Invalid(errs.into_iter().map(|(o, m)| at(o, m)).collect()))?;
    let config: Config = toml::from_str(&expanded).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        let (line, col) = line_col(&expanded, offset);
        ConfigError::Invalid(vec![Diagnostic {
            file: file.to_owned(),
            line,
            col,
            message: e.message().trim().to_owned(),
        }])
    })?;
    let problems = validate::check(&config);
    if problems.is_empty() {
        Ok(config)
    } else {
        let diags = problems
            .into_iter()
            .map(|(o, m)| {
                let (line, col) = line_col(&expanded, o);
                Diagnostic {
                    file: file.to_owned(),
                    line,
                    col,
                    message: m,
                }
            })
            .collect();
        Err(ConfigError::Invalid(diags))
    }
}

/// Parses one `[[rollouts]]` entry given as TOML (a rollout made through the admin API).
pub fn parse_rollout(text: &str) -> Result<Rollout, String> {
    toml::from_str(text).map_err(|e| e.message().trim().to_owned())
}

/// Parses one `[[alerts]]` rule given as TOML (a backtest's rule).
pub fn parse_alert(text: &str) -> Result<Alert, String> {
    toml::from_str(text).map_err(|e| e.message().trim().to_owned())
}

/// What is wrong with a config assembled in memory (the file's plus rollouts made through the
/// admin API), one sentence per problem.
pub fn check(config: &Config) -> Vec<String> {
    validate::check(config)
        .into_iter()
        .map(|(_, m)| m)
        .collect()
}

/// Parses `10.0.0.0/8`, `::1/128` or a bare address into (network, prefix length).
pub fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a.parse::<std::net::IpAddr>().ok()?, l.parse::<u8>().ok()?),
        None => {
            let a = s.parse::<std::net::IpAddr>().ok()?;
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    };
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

/// Whether `ip` is inside the network (`net`, `len`).
pub fn cidr_contains((net, len): (std::net::IpAddr, u8), ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    let (a, b, bits) = match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => (
            u128::from(u32::from(n)) << 96,
            u128::from(u32::from(i)) << 96,
            32,
        ),
        (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), 128),
        _ => return false,
    };
    let len = u32::from(len.min(bits));
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    a & mask == b & mask
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

#[cfg(test)]
mod tests;
