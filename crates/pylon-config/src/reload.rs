//! What a reload changes: two versions of the file compared section by section, and which of
//! the changed settings only take effect at the next start.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::{parse, Config, ConfigError};

/// A config file as loaded: the checked config, the expanded table it came from (to compare
/// with the next version) and its SHA-256.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub table: toml::Table,
    /// Hex SHA-256 of the text after `${ENV}` expansion: a changed variable is a changed config.
    pub sha256: String,
}

/// Settings read once at start: a reload that changes them reports them instead of applying
/// them. Everything else (providers, models, routes, prices, limits, cache policies, rollouts,
/// alerts, log level) is applied by a reload.
const AT_START: &[&str] = &[
    "server.listen",
    "server.workers",
    "server.tls",
    "server.max_connections",
    "server.max_requests",
    "server.http2_max_streams",
    "server.header_read_timeout",
    "server.body_read_timeout",
    "server.cors_origins",
    "server.compression",
    "server.shutdown_grace",
    "server.shutdown_delay",
    "server.watch_config",
    "server.proxy_protocol",
    "data",
    "admin",
    "secrets",
    "metrics",
    "tracing",
    "log.format",
    "request_log",
    "health",
    "budgets",
    "limits.on_redis_failure",
    "cache.max_bytes",
    "cache.namespace",
    "cache.max_temperature",
    "cache.redis",
    "cache.coalesce",
    "cache.semantic",
    "responses",
    "backup",
    "flags.file",
    "flags.poll",
];

/// Whether a changed setting (as [`changes`] names it) needs a restart to take effect.
pub fn needs_restart(setting: &str) -> bool {
    AT_START.iter().any(|p| {
        setting == *p
            || setting
                .strip_prefix(p)
                .is_some_and(|rest| rest.starts_with('.'))
    })
}

/// Reads, interpolates, parses and validates a config file, keeping what a reload compares.
pub fn load_file(path: &Path) -> Result<Loaded, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let file = path.display().to_string();
    let env = crate::process_env;
    let config = parse(&text, &file, &env)?;
    // `parse` succeeded, so expansion and TOML parsing do too.
    let expanded = crate::interpolate::expand(&text, &env).unwrap_or_default();
    let table = expanded.parse::<toml::Table>().unwrap_or_default();
    Ok(Loaded {
        config,
        table,
        sha256: hex(&Sha256::digest(expanded.as_bytes())),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The settings that differ between two versions of the file, named `section.key` for
/// tables and `section.<name>` for lists of named entries (`providers.openai`,
/// `routes./app`), sorted.
pub fn changes(old: &toml::Table, new: &toml::Table) -> Vec<String> {
    let mut out = Vec::new();
    let empty = toml::Table::new();
    for key in keys(old, new) {
        let (a, b) = (old.get(key), new.get(key));
        if a == b {
            continue;
        }
        match (a, b) {
            (a, b) if as_table(a, &empty).is_some() && as_table(b, &empty).is_some() => {
                let a = as_table(a, &empty).unwrap_or(&empty);
                let b = as_table(b, &empty).unwrap_or(&empty);
                out.extend(
                    keys(a, b)
                        .filter(|k| a.get(*k) != b.get(*k))
                        .map(|k| format!("{key}.{k}")),
                );
            }
            (a, b) if named(a) && named(b) => {
                let (a, b) = (entries(a), entries(b));
                let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
                out.extend(
                    names
                        .into_iter()
                        .filter(|n| a.get(*n) != b.get(*n))
                        .map(|n| format!("{key}.{n}")),
                );
            }
            _ => out.push(key.to_owned()),
        }
    }
    out.sort();
    out
}

/// A section's table; an absent section is an empty one.
fn as_table<'a>(v: Option<&'a toml::Value>, empty: &'a toml::Table) -> Option<&'a toml::Table> {
    match v {
        None => Some(empty),
        Some(toml::Value::Table(t)) => Some(t),
        Some(_) => None,
    }
}

fn keys<'a>(a: &'a toml::Table, b: &'a toml::Table) -> impl Iterator<Item = &'a str> {
    let all: std::collections::BTreeSet<&str> =
        a.keys().chain(b.keys()).map(String::as_str).collect();
    all.into_iter()
}

/// An absent list or one whose every entry has a `name` or `prefix`.
fn named(v: Option<&toml::Value>) -> bool {
    match v {
        None => true,
        Some(toml::Value::Array(items)) => items.iter().all(|i| name_of(i).is_some()),
        Some(_) => false,
    }
}

fn name_of(v: &toml::Value) -> Option<String> {
    let t = v.as_table()?;
    t.get("name")
        .or_else(|| t.get("prefix"))
        .and_then(toml::Value::as_str)
        .map(str::to_owned)
}

fn entries(v: Option<&toml::Value>) -> std::collections::BTreeMap<String, &toml::Value> {
    v.and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| Some((name_of(i)?, i)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(s: &str) -> toml::Table {
        s.parse().unwrap_or_default()
    }

    #[test]
    fn changes_name_the_settings_and_entries_that_differ() {
        let old = table(
            "[server]\nlisten = \"127.0.0.1:1\"\nmax_body_bytes = 10\n\
             [[providers]]\nname = \"a\"\nkind = \"openai\"\n\
             [[providers]]\nname = \"b\"\nkind = \"openai\"\n",
        );
        let new = table(
            "[server]\nlisten = \"127.0.0.1:2\"\nmax_body_bytes = 10\n\
             [[providers]]\nname = \"a\"\nkind = \"openai\"\n\
             [[providers]]\nname = \"c\"\nkind = \"openai\"\n\
             [log]\nlevel = \"debug\"\n",
        );
        assert_eq!(
            changes(&old, &new),
            ["log.level", "providers.b", "providers.c", "server.listen"]
        );
        assert!(changes(&new, &new).is_empty());
    }

    #[test]
    fn only_settings_read_at_start_need_a_restart() {
        assert!(needs_restart("server.listen"));
        assert!(needs_restart("data.store_url"));
        assert!(needs_restart("cache.semantic"));
        assert!(!needs_restart("server.max_body_bytes"));
        assert!(!needs_restart("providers.openai"));
        assert!(!needs_restart("cache.enabled"));
        assert!(!needs_restart("log.level"));
        assert!(!needs_restart("dataset"));
    }
}
