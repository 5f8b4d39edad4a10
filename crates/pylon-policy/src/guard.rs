//! Semantic-cache guards: two questions that embed alike must also agree on what embeddings
//! blur — numbers, units, dates, negation, opposites, direction and names — before one's answer
//! may serve the other. A disagreement is a miss with a reason; agreement is necessary, never
//! proof (an optional judge can check further).
//!
//! Facets are extracted once per question (a candidate's when it is stored), so checking a
//! candidate is a comparison of a few short sorted lists.

use crate::lexicon::{self, stem};

/// At most this many items of each kind are kept; longer questions are compared on a prefix
/// of their facets (callers bound the text length anyway).
const MAX_ITEMS: usize = 64;
/// Words either side of an arrow ("string to integer") that make up its phrases.
const PHRASE: usize = 3;

/// Why a candidate was refused: the label of `pylon_cache_semantic_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Different numbers or amounts ("10 kg" / "40 kg", "Q3" / "Q4").
    Number,
    /// Different units or currencies ("miles" / "km", "USD" / "EUR").
    Unit,
    /// Different years, months, weekdays or relative days.
    Date,
    /// One is negated and the other is not ("require a visa" / "do not require a visa").
    Negation,
    /// Opposite words ("foods to avoid" / "foods to eat", "employer" / "employee").
    Opposite,
    /// The same things in the other direction ("Celsius to Fahrenheit" / the reverse).
    Direction,
    /// A name, identifier or quoted string of one is absent from the other.
    Name,
}

impl Reason {
    /// Every reason, in a stable order (for metrics).
    pub const ALL: [Reason; 7] = [
        Reason::Number,
        Reason::Unit,
        Reason::Date,
        Reason::Negation,
        Reason::Opposite,
        Reason::Direction,
        Reason::Name,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Number => "number",
            Reason::Unit => "unit",
            Reason::Date => "date",
            Reason::Negation => "negation",
            Reason::Opposite => "opposite",
            Reason::Direction => "direction",
            Reason::Name => "name",
        }
    }
}

/// What a question says that similarity cannot be trusted with.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facets {
    /// Normalised numbers, sorted, repeats kept ("2 + 2" is not "2").
    numbers: Vec<Box<str>>,
    /// Years (1000–2999 standing alone), sorted.
    years: Vec<Box<str>>,
    units: Vec<&'static str>,
    times: Vec<&'static str>,
    negations: u16,
    /// (opposite pair, sides mentioned as bits), sorted by pair.
    sides: Vec<(u16, u8)>,
    /// (left phrase, right phrase) around each arrow word.
    arrows: Vec<Arrow>,
    /// Names, identifiers and quoted words, lower case, without separators.
    names: Vec<Box<str>>,
    /// The whole text's letters and digits in lower case, for "is this name mentioned".
    compact: Box<str>,
}

/// Whether `candidate` may answer `question`: `Err` names the first disagreement found.
/// Symmetric: the same pair in either order gets the same verdict.
pub fn check(question: &Facets, candidate: &Facets) -> Result<(), Reason> {
    let (q, c) = (question, candidate);
    if q.numbers != c.numbers {
        return Err(Reason::Number);
    }
    if q.units != c.units {
        return Err(Reason::Unit);
    }
    if q.years != c.years || q.times != c.times {
        return Err(Reason::Date);
    }
    if q.negations != c.negations {
        return Err(Reason::Negation);
    }
    if opposed(&q.sides, &c.sides) {
        return Err(Reason::Opposite);
    }
    if reversed(&q.arrows, &c.arrows) || reversed(&c.arrows, &q.arrows) {
        return Err(Reason::Direction);
    }
    let missing = |a: &Facets, b: &Facets| a.names.iter().any(|n| !b.compact.contains(&**n));
    if missing(q, c) || missing(c, q) {
        return Err(Reason::Name);
    }
    Ok(())
}

/// A pair of opposites where both mention it, on different sides.
fn opposed(a: &[(u16, u8)], b: &[(u16, u8)]) -> bool {
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                if a[i].1 != b[j].1 {
                    return true;
                }
                i += 1;
                j += 1;
            }
        }
    }
    false
}

type Arrow = (Vec<Box<str>>, Vec<Box<str>>);

/// Whether some "A to B" of `a` is only a "B to A" in `b` (a text that says both ways round,
/// "A to B to A", is not reversed by either).
fn reversed(a: &[Arrow], b: &[Arrow]) -> bool {
    let meets = |x: &[Box<str>], y: &[Box<str>]| -> Option<Box<str>> {
        x.iter().find(|w| y.contains(w)).cloned()
    };
    a.iter().any(|(l1, r1)| {
        let backwards = b
            .iter()
            .any(|(l2, r2)| matches!((meets(l1, r2), meets(r1, l2)), (Some(x), Some(y)) if x != y));
        let forwards = b
            .iter()
            .any(|(l2, r2)| meets(l1, l2).is_some() && meets(r1, r2).is_some());
        backwards && !forwards
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Word,
    Number,
    /// Letters and digits together ("q3", "40kg", "gpt4").
    Mixed,
    Symbol,
}

#[derive(Debug)]
struct Token<'a> {
    raw: &'a str,
    low: String,
    kind: Kind,
    /// First word of a sentence: its capital says nothing.
    start: bool,
    quoted: bool,
}

impl Facets {
    /// The facets of `text`. Linear in its length; callers bound the length.
    pub fn of(text: &str) -> Facets {
        let tokens = tokenize(text);
        let mut f = Facets {
            compact: text
                .chars()
                .filter(|c| c.is_alphanumeric())
                .flat_map(char::to_lowercase)
                .collect::<String>()
                .into(),
            ..Facets::default()
        };
        let mut sides: Vec<(u16, u8)> = Vec::new();
        for (i, t) in tokens.iter().enumerate() {
            let after_number = i > 0 && tokens[i - 1].kind == Kind::Number;
            match t.kind {
                Kind::Number => f.number(&t.low),
                Kind::Symbol => {
                    if let Some((unit, _)) = lexicon::units().get(t.low.as_str()) {
                        f.units.push(unit);
                    }
                }
                Kind::Mixed => f.mixed(&t.low),
                Kind::Word => {
                    f.word(t, after_number);
                    if let Some(&(group, side)) = lexicon::sides().get(stem(&t.low)) {
                        sides.push((group, side));
                    }
                }
            }
        }
        f.arrows = arrows(&tokens);
        sides.sort_unstable();
        for (g, s) in sides {
            match f.sides.last_mut() {
                Some(last) if last.0 == g => last.1 |= s,
                _ => f.sides.push((g, s)),
            }
        }
        f.numbers.sort_unstable();
        f.years.sort_unstable();
        for v in [&mut f.units, &mut f.times] {
            v.sort_unstable();
            v.dedup();
        }
        f.names.sort_unstable();
        f.names.dedup();
        for v in [&mut f.numbers, &mut f.years, &mut f.names] {
            v.truncate(MAX_ITEMS);
        }
        f.arrows.truncate(MAX_ITEMS);
        f
    }

    fn number(&mut self, n: &str) {
        let n = normalize_number(n);
        let year = n.len() == 4 && matches!(n.as_bytes()[0], b'1' | b'2');
        if year {
            self.years.push(n.into());
        } else {
            self.numbers.push(n.into());
        }
    }

    fn word(&mut self, t: &Token<'_>, after_number: bool) {
        let low = t.low.as_str();
        if lexicon::NEGATIONS.contains(&low) || low.ends_with("n't") {
            self.negations = self.negations.saturating_add(1);
        }
        if let Some(&(_, n)) = lexicon::NUMBER_WORDS.iter().find(|(w, _)| *w == low) {
            self.numbers.push(n.into());
        }
        if let Some(&(unit, only_after_number)) = lexicon::units().get(low) {
            if after_number || !only_after_number {
                self.units.push(unit);
            }
        }
        if let Some(&time) = lexicon::TIMES.iter().find(|w| **w == low) {
            self.times.push(time);
        } else if after_number {
            if let Some(&time) = lexicon::TIMES_AFTER_NUMBER.iter().find(|w| **w == low) {
                self.times.push(time);
            }
        } else if t.raw == "May" && !t.start {
            self.times.push("may");
        }
        if is_name(t) {
            self.names.push(compact(stem_possessive(low)).into());
        }
    }

    /// "40kg", "3rd", "10am" read as number and unit; anything else ("q3", "gpt4o") is an
    /// identifier whose digits also count as numbers.
    fn mixed(&mut self, low: &str) {
        let mut runs: Vec<&str> = Vec::new();
        let mut start = 0;
        let mut digit = None;
        for (i, c) in low.char_indices() {
            let d = c.is_ascii_digit() || (c == '.' && digit == Some(true));
            if digit.is_some_and(|prev| prev != d) {
                runs.push(&low[start..i]);
                start = i;
            }
            digit = Some(d);
        }
        runs.push(&low[start..]);
        let is_digits = |r: &str| r.starts_with(|c: char| c.is_ascii_digit());
        for r in runs.iter().filter(|r| is_digits(r)) {
            self.number(r);
        }
        if let [n, suffix] = runs[..] {
            if is_digits(n) {
                if let Some((unit, _)) = lexicon::units().get(suffix) {
                    self.units.push(unit);
                    return;
                }
                if let Some(t) = lexicon::TIMES_AFTER_NUMBER.iter().find(|w| **w == suffix) {
                    self.times.push(t);
                    return;
                }
                if matches!(suffix, "st" | "nd" | "rd" | "th" | "s") {
                    return;
                }
            }
        }
        self.names.push(compact(low).into());
    }
}

/// "1,000.50" → "1000.5"; "007" → "7".
fn normalize_number(n: &str) -> String {
    let n: String = n.chars().filter(|c| *c != ',').collect();
    let (int, frac) = n.split_once('.').unwrap_or((&n, ""));
    let int = int.trim_start_matches('0');
    let frac = frac.trim_end_matches('0');
    let int = if int.is_empty() { "0" } else { int };
    if frac.is_empty() {
        int.to_owned()
    } else {
        format!("{int}.{frac}")
    }
}

fn stem_possessive(w: &str) -> &str {
    w.strip_suffix("'s").unwrap_or(w)
}

fn compact(w: &str) -> String {
    w.chars().filter(|c| c.is_alphanumeric()).collect()
}

/// Capitalised inside a sentence, camel case, all capitals, an identifier or quoted.
fn is_name(t: &Token<'_>) -> bool {
    let low = t.low.as_str();
    if low == "i" || lexicon::is_function(stem_possessive(low)) {
        return t.quoted && !lexicon::is_function(low);
    }
    if t.quoted || t.raw.contains(['_', '.', ':']) {
        return true;
    }
    let mut chars = t.raw.chars();
    let first_upper = chars.next().is_some_and(char::is_uppercase);
    let rest: Vec<char> = chars.collect();
    let inner_upper = rest.iter().any(|c| c.is_uppercase());
    let any_lower = rest.iter().any(|c| c.is_lowercase());
    let all_caps =
        first_upper && !any_lower && rest.iter().filter(|c| c.is_alphabetic()).count() >= 1;
    all_caps || (inner_upper && any_lower) || (first_upper && !t.start)
}

/// The (left, right) content phrases around each arrow word.
fn arrows(tokens: &[Token<'_>]) -> Vec<Arrow> {
    const DETERMINERS: &[&str] = &[
        "a", "an", "the", "my", "your", "our", "their", "his", "her", "its", "this", "that", "some",
    ];
    let content = |t: &Token<'_>| match t.kind {
        Kind::Number | Kind::Mixed => true,
        Kind::Word => !lexicon::is_function(&t.low),
        Kind::Symbol => false,
    };
    let word = |t: &Token<'_>| -> Box<str> { stem(&t.low).into() };
    let mut out = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        if !lexicon::ARROWS.contains(&t.low.as_str()) {
            continue;
        }
        let left: Vec<Box<str>> = tokens[..i]
            .iter()
            .rev()
            .take_while(|t| content(t))
            .take(PHRASE)
            .map(word)
            .collect();
        let right: Vec<Box<str>> = tokens[i + 1..]
            .iter()
            .skip_while(|t| DETERMINERS.contains(&t.low.as_str()))
            .take_while(|t| content(t))
            .take(PHRASE)
            .map(word)
            .collect();
        if !left.is_empty() && !right.is_empty() {
            out.push((left, right));
        }
    }
    out
}

/// Words, numbers and a few symbols, with where sentences start and what is quoted.
fn tokenize(text: &str) -> Vec<Token<'_>> {
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut out = Vec::new();
    let (mut start, mut quoted) = (true, false);
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        let next = chars.get(i + 1).map(|p| p.1);
        if c.is_alphanumeric() || c == '_' {
            let mut j = i + 1;
            while j < chars.len() {
                let d = chars[j].1;
                let after = chars.get(j + 1).map(|p| p.1);
                let prev = chars[j - 1].1;
                let joins = d.is_alphanumeric()
                    || d == '_'
                    || (matches!(d, '.' | ':') && after.is_some_and(char::is_alphanumeric))
                    || (d == ','
                        && prev.is_ascii_digit()
                        && after.is_some_and(|a| a.is_ascii_digit()))
                    || (matches!(d, '\'' | '’') && after.is_some_and(char::is_alphabetic));
                if !joins {
                    break;
                }
                j += 1;
            }
            let end = chars.get(j).map_or(text.len(), |p| p.0);
            let raw = &text[at..end];
            let low = raw.to_lowercase().replace('’', "'");
            let has_digit = low.chars().any(|c| c.is_ascii_digit());
            let has_alpha = low.chars().any(char::is_alphabetic);
            let kind = match (has_digit, has_alpha) {
                (true, false) if low.starts_with(|c: char| c.is_ascii_digit()) => Kind::Number,
                (true, true) => Kind::Mixed,
                _ => Kind::Word,
            };
            out.push(Token {
                raw,
                low,
                kind,
                start,
                quoted,
            });
            start = false;
            i = j;
            continue;
        }
        let arrow = match (c, next) {
            ('-' | '=', Some('>')) => Some(2),
            ('→' | '⇒', _) => Some(1),
            _ => None,
        };
        if let Some(n) = arrow {
            let end = chars.get(i + n).map_or(text.len(), |p| p.0);
            out.push(Token {
                raw: &text[at..end],
                low: "→".into(),
                kind: Kind::Symbol,
                start: false,
                quoted,
            });
            i += n;
            continue;
        }
        match c {
            '$' | '€' | '£' | '¥' | '₹' | '%' => out.push(Token {
                raw: &text[at..at + c.len_utf8()],
                low: c.to_string(),
                kind: Kind::Symbol,
                start: false,
                quoted,
            }),
            '.' | '?' | '!' | ';' | ':' | '\n' => start = true,
            '"' | '`' => quoted = !quoted,
            '“' => quoted = true,
            '”' => quoted = false,
            _ => {}
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests;
