//! What a request cost: US dollars per million tokens, by upstream model name.

use pylon_types::openai::Usage;

/// Defaults for common models (USD per million input, output tokens); `[[prices]]` overrides.
const DEFAULTS: &[(&str, f64, f64)] = &[
    ("gpt-4o-mini", 0.15, 0.60),
    ("gpt-4o", 2.50, 10.00),
    ("gpt-4.1-nano", 0.10, 0.40),
    ("gpt-4.1-mini", 0.40, 1.60),
    ("gpt-4.1", 2.00, 8.00),
    ("o4-mini", 1.10, 4.40),
    ("o3-mini", 1.10, 4.40),
    ("o3", 2.00, 8.00),
    ("text-embedding-3-small", 0.02, 0.0),
    ("text-embedding-3-large", 0.13, 0.0),
    ("claude-3-haiku", 0.25, 1.25),
    ("claude-3-5-haiku", 0.80, 4.00),
    ("claude-haiku-4", 1.00, 5.00),
    ("claude-3-5-sonnet", 3.00, 15.00),
    ("claude-3-7-sonnet", 3.00, 15.00),
    ("claude-sonnet-4", 3.00, 15.00),
    ("claude-opus-4", 15.00, 75.00),
    ("gemini-1.5-flash", 0.075, 0.30),
    ("gemini-1.5-pro", 1.25, 5.00),
    ("gemini-2.0-flash", 0.10, 0.40),
    ("gemini-2.5-flash", 0.30, 2.50),
    ("gemini-2.5-pro", 1.25, 10.00),
];

/// Per million tokens: input, output, cache read, cache write.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rates {
    pub input: f64,
    pub output: f64,
    pub cache_read: f64,
    pub cache_write: f64,
}

impl Rates {
    fn new(model: &str, input: f64, output: f64, read: Option<f64>, write: Option<f64>) -> Self {
        let read_share = if model.starts_with("claude") {
            0.1
        } else {
            0.5
        };
        Rates {
            input,
            output,
            cache_read: read.unwrap_or(input * read_share),
            cache_write: write.unwrap_or(input * 1.25),
        }
    }
}

/// A name or pattern and its rates.
type Entry = (String, Rates);

/// Prices by upstream model name: an exact name first (configured, then built in), then the
/// most specific matching pattern (`*` matches any run of characters). Built-in names also match
/// their dated snapshots (`gpt-4o-2024-08-06`, `claude-sonnet-4-20250514`) and `-latest`, never
/// a different model that shares a prefix (`o3-pro` is not `o3`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Prices {
    exact: foldhash::HashMap<String, Rates>,
    /// Most specific (longest literal text) first; configured before built-in on ties.
    patterns: Vec<Entry>,
    /// Configured targets' model names without an exact price, matched against the patterns
    /// once at load (a scan of every pattern per request cost thousands of instructions).
    resolved: foldhash::HashMap<String, Option<Rates>>,
}

impl Prices {
    /// Defaults plus the configured prices (which win on equal names).
    pub fn new(configured: &[pylon_config::Price]) -> Self {
        let mut exact = foldhash::HashMap::default();
        let mut patterns: Vec<Entry> = Vec::new();
        for p in configured {
            let r = Rates::new(
                &p.model,
                p.input_per_million,
                p.output_per_million,
                p.cache_read_per_million,
                p.cache_write_per_million,
            );
            if p.model.contains('*') {
                patterns.push((p.model.clone(), r));
            } else {
                exact.insert(p.model.clone(), r);
                for suffix in ["-2*", "-latest"] {
                    patterns.push((format!("{}{suffix}", p.model), r));
                }
            }
        }
        let configured_patterns = patterns.len();
        for (m, i, o) in DEFAULTS {
            let r = Rates::new(m, *i, *o, None, None);
            exact.entry((*m).to_owned()).or_insert(r);
            for suffix in ["-2*", "-latest"] {
                patterns.push((format!("{m}{suffix}"), r));
            }
        }
        // Stable sort: among equally specific patterns the configured ones stay first.
        let mut indexed: Vec<(usize, Entry)> = patterns.into_iter().enumerate().collect();
        indexed.sort_by_key(|(i, (p, _))| {
            (
                std::cmp::Reverse(p.chars().filter(|c| *c != '*').count()),
                usize::from(*i >= configured_patterns),
            )
        });
        Prices {
            exact,
            patterns: indexed.into_iter().map(|(_, e)| e).collect(),
            resolved: foldhash::HashMap::default(),
        }
    }

    /// These prices with the pattern matches of `served` (the configured targets' model
    /// names) worked out now rather than per request.
    pub fn resolving<'a>(mut self, served: impl IntoIterator<Item = &'a str>) -> Self {
        for model in served {
            if !self.exact.contains_key(model) && !self.resolved.contains_key(model) {
                let rates = self.matching(model);
                self.resolved.insert(model.to_owned(), rates);
            }
        }
        self
    }

    /// The rates of `model`, if known.
    pub fn of(&self, model: &str) -> Option<Rates> {
        if let Some(r) = self.exact.get(model) {
            return Some(*r);
        }
        match self.resolved.get(model) {
            Some(r) => *r,
            None => self.matching(model),
        }
    }

    /// The rates of the most specific pattern `model` matches.
    fn matching(&self, model: &str) -> Option<Rates> {
        self.patterns
            .iter()
            .find(|(p, _)| glob(p, model))
            .map(|(_, r)| *r)
    }

    /// The cost of `usage` on `model`, if its price is known. Prompt tokens read from or
    /// written to a provider's prompt cache are billed at their own rates.
    pub fn cost(&self, model: &str, usage: Usage) -> Option<f64> {
        let r = self.of(model)?;
        let cached = usage.cache_read_tokens + usage.cache_write_tokens;
        let plain = usage.prompt_tokens.saturating_sub(cached);
        Some(
            (plain as f64 * r.input
                + usage.cache_read_tokens as f64 * r.cache_read
                + usage.cache_write_tokens as f64 * r.cache_write
                + usage.completion_tokens as f64 * r.output)
                / 1_000_000.0,
        )
    }
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters. No
/// allocation: a name not resolved at load (addressed directly, or a judge's answer model) is
/// tried against every pattern when it is priced.
fn glob(pattern: &str, text: &str) -> bool {
    let Some((first, tail)) = pattern.split_once('*') else {
        return pattern == text;
    };
    // Most patterns fail here, on their literal prefix.
    let Some(rest) = text.strip_prefix(first) else {
        return false;
    };
    let (middle, last) = tail.rsplit_once('*').unwrap_or(("", tail));
    let Some(mut rest) = rest.strip_suffix(last) else {
        return false;
    };
    // Each middle part taken at its leftmost place leaves the most room for the next.
    for part in middle.split('*').filter(|p| !p.is_empty()) {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn price(model: &str, i: f64, o: f64) -> pylon_config::Price {
        pylon_config::Price {
            model: model.into(),
            input_per_million: i,
            output_per_million: o,
            cache_read_per_million: None,
            cache_write_per_million: None,
        }
    }

    #[test]
    fn prompt_cache_tokens_are_billed_at_their_rates() {
        let p = Prices::new(&[]);
        // claude-sonnet-4: $3 input, $15 output; cache read $0.30, cache write $3.75.
        let u = Usage::new(3_000_000, 1_000_000).with_cache(1_000_000, 1_000_000);
        let cost = p.cost("claude-sonnet-4-20250514", u).unwrap();
        assert!((cost - (3.0 + 0.3 + 3.75 + 15.0)).abs() < 1e-9, "{cost}");
        let p = Prices::new(&[pylon_config::Price {
            cache_read_per_million: Some(1.0),
            ..price("m", 2.0, 0.0)
        }]);
        let cost = p
            .cost("m", Usage::new(2_000_000, 0).with_cache(1_000_000, 0))
            .unwrap();
        assert!((cost - 3.0).abs() < 1e-9, "{cost}");
    }

    #[test]
    fn exact_then_pattern_never_a_shared_prefix() {
        let p = Prices::new(&[price("gpt-4o", 1.0, 2.0), price("llama*", 0.5, 0.5)]);
        let u = Usage::new(1_000_000, 1_000_000);
        assert_eq!(p.cost("gpt-4o-mini-2024-07-18", u), Some(0.75));
        assert_eq!(p.cost("gpt-4o", u), Some(3.0));
        // A dated snapshot is priced as its name.
        assert_eq!(p.cost("gpt-4o-2024-08-06", u), Some(3.0));
        assert_eq!(p.cost("gpt-4.1-mini-2025-04-14", u), Some(2.0));
        assert_eq!(
            p.cost("claude-sonnet-4-20250514", Usage::new(1000, 0)),
            Some(0.003)
        );
        assert_eq!(p.cost("llama3.2:3b", u), Some(1.0));
        assert_eq!(p.cost("o3-pro", u), None, "not priced as o3");
        assert_eq!(p.cost("o1-pro", u), None);
        assert_eq!(p.cost("gpt-4o-mini-tts", u), None);
    }

    #[test]
    fn a_catch_all_pattern_is_the_default_price() {
        let p = Prices::new(&[price("*", 10.0, 30.0), price("gpt-4o*", 1.0, 1.0)]);
        let u = Usage::new(1_000_000, 0);
        assert_eq!(p.cost("o3-pro", u), Some(10.0));
        assert_eq!(p.cost("gpt-4o-audio", u), Some(1.0), "more specific wins");
        assert_eq!(p.cost("o3", u), Some(2.0), "exact wins over patterns");
    }

    #[test]
    fn served_names_resolved_at_load_price_as_the_patterns_do() {
        let configured = [price("gpt-4o", 1.0, 2.0), price("llama*", 0.5, 0.5)];
        let names = ["gpt-4o-2024-08-06", "llama3.2:3b", "o3-pro", "gpt-4o", "o3"];
        let scanned = Prices::new(&configured);
        let resolved = Prices::new(&configured).resolving(names);
        for name in names.into_iter().chain(["llama-x", "claude-opus-4-1"]) {
            assert_eq!(resolved.of(name), scanned.of(name), "{name}");
        }
        assert_eq!(resolved.resolved.len(), 3, "exact names are not copied");
    }

    #[test]
    fn glob_matches() {
        assert!(glob("*", ""));
        assert!(glob("a*c", "abc"));
        assert!(glob("a*c", "ac"));
        assert!(!glob("a*c", "ab"));
        assert!(glob("a*b*c", "aXbYc"));
        assert!(!glob("ab*ba", "aba"));
        assert!(glob("x", "x"));
        assert!(!glob("x", "xy"));
        assert!(
            !glob("a*b*b", "ab"),
            "the middle part may not overlap the suffix"
        );
        assert!(glob("a*b*b", "abb"));
        assert!(glob("*x*", "axb"));
        assert!(!glob("*x*", "ab"));
        assert!(glob("gpt-4o-2*", "gpt-4o-2024-08-06"));
        assert!(!glob("o3-2*", "o3-pro"));
    }
}
