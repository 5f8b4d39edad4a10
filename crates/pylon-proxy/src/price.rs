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

/// Prices by model name; the longest configured prefix of a name wins.
#[derive(Debug, Clone, Default)]
pub(crate) struct Prices {
    entries: Vec<(String, f64, f64)>,
}

impl Prices {
    /// Defaults plus the configured prices (which win on equal names).
    pub fn new(configured: &[pylon_config::Price]) -> Self {
        let mut entries: Vec<(String, f64, f64)> = configured
            .iter()
            .map(|p| (p.model.clone(), p.input_per_million, p.output_per_million))
            .collect();
        for (m, i, o) in DEFAULTS {
            if !entries.iter().any(|(e, _, _)| e == m) {
                entries.push(((*m).to_owned(), *i, *o));
            }
        }
        // Longest first, so `gpt-4o-mini` wins over `gpt-4o` for `gpt-4o-mini-2024-07-18`.
        entries.sort_by_key(|(m, _, _)| std::cmp::Reverse(m.len()));
        Prices { entries }
    }

    /// The cost of `usage` on `model`, if its price is known.
    pub fn cost(&self, model: &str, usage: Usage) -> Option<f64> {
        let (_, input, output) = self
            .entries
            .iter()
            .find(|(m, _, _)| model.starts_with(m.as_str()))?;
        Some(
            (usage.prompt_tokens as f64 * input + usage.completion_tokens as f64 * output)
                / 1_000_000.0,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_and_overrides() {
        let p = Prices::new(&[pylon_config::Price {
            model: "gpt-4o".into(),
            input_per_million: 1.0,
            output_per_million: 2.0,
        }]);
        let u = Usage::new(1_000_000, 1_000_000);
        assert_eq!(p.cost("gpt-4o-mini-2024-07-18", u), Some(0.75));
        assert_eq!(p.cost("gpt-4o-2024-08-06", u), Some(3.0));
        assert_eq!(
            p.cost("claude-sonnet-4-20250514", Usage::new(1000, 0)),
            Some(0.003)
        );
        assert_eq!(p.cost("llama3.2", u), None);
    }
}
