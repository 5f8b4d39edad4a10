//! Small word lists the guards read: negations, opposites, units, times, number words and the
//! function words that are never names. Lists, not models: each entry is a decision someone can
//! read and argue with.

use std::collections::HashMap;
use std::sync::OnceLock;

/// Words that flip a statement. Contractions ending in `n't` are recognised separately.
pub(crate) const NEGATIONS: &[&str] = &[
    "not",
    "no",
    "never",
    "without",
    "none",
    "nobody",
    "nothing",
    "nowhere",
    "neither",
    "nor",
    "cannot",
    "non",
    "dont",
    "doesnt",
    "isnt",
    "arent",
    "wasnt",
    "werent",
    "cant",
    "wont",
    "shouldnt",
    "couldnt",
    "wouldnt",
    "didnt",
    "havent",
    "hasnt",
    "hadnt",
    "mustnt",
    "except",
    "excluding",
];

/// Pairs of opposite sides: a question that says one side and a candidate that says only the
/// other ask different things. Words are matched by [`stem`], so one form per word suffices.
const OPPOSITES: &[(&[&str], &[&str])] = &[
    (
        &["avoid", "skip"],
        &["eat", "drink", "take", "consume", "recommend"],
    ),
    (
        &["increase", "raise", "grow", "rise", "boost", "speed"],
        &["decrease", "reduce", "lower", "shrink", "cut", "slow"],
    ),
    (
        &["max", "maximum", "maximize", "maximal"],
        &["minimum", "minimize", "minimal"],
    ),
    (&["most"], &["least", "fewest"]),
    (&["more"], &["less", "fewer"]),
    (&["high", "higher", "highest"], &["low", "lowest"]),
    (
        &[
            "large", "larger", "largest", "big", "bigger", "biggest", "huge",
        ],
        &["small", "smaller", "smallest", "tiny", "little"],
    ),
    (
        &["long", "longer", "longest"],
        &["short", "shorter", "shortest"],
    ),
    (
        &["fast", "faster", "fastest", "quick", "quickest"],
        &["slower", "slowest"],
    ),
    (
        &["cheap", "cheaper", "cheapest"],
        &["expensive", "costly", "pricey"],
    ),
    (
        &["old", "older", "oldest"],
        &["new", "newer", "newest", "young", "younger", "youngest"],
    ),
    (
        &["pro", "advantage", "benefit", "best", "good", "upside"],
        &[
            "con",
            "disadvantage",
            "drawback",
            "risk",
            "worst",
            "bad",
            "downside",
        ],
    ),
    (&["buy", "bought", "purchase"], &["sell", "sold"]),
    (
        &["borrow", "borrowed", "borrower", "debtor"],
        &["lend", "lent", "lender", "creditor"],
    ),
    (&["deposit"], &["withdraw", "withdrawal"]),
    (&["debit"], &["credit"]),
    (&["income", "revenue", "earning"], &["expense", "spending"]),
    (&["win", "won", "gain", "profit"], &["lose", "lost", "loss"]),
    (
        &["add", "insert", "append", "create"],
        &["remove", "delete", "drop", "destroy"],
    ),
    (&["enable", "activate"], &["disable", "deactivate"]),
    (
        &["start", "begin", "beginning"],
        &["stop", "end", "finish", "ending"],
    ),
    (&["open"], &["close", "shut"]),
    (&["lock"], &["unlock"]),
    (&["mount"], &["unmount"]),
    (&["install"], &["uninstall"]),
    (&["subscribe"], &["unsubscribe"]),
    (&["follow"], &["unfollow"]),
    (&["include", "including"], &["exclude"]),
    (
        &["accept", "approve"],
        &["reject", "refuse", "decline", "deny"],
    ),
    (
        &["allow", "allowed", "permit", "permitted", "legal", "lawful"],
        &[
            "forbid",
            "forbidden",
            "ban",
            "banned",
            "prohibit",
            "prohibited",
            "illegal",
            "unlawful",
        ],
    ),
    (&["required", "mandatory", "compulsory"], &["optional"]),
    (
        &["safe", "secure"],
        &["unsafe", "dangerous", "risky", "insecure"],
    ),
    (&["push"], &["pull"]),
    (&["import"], &["export"]),
    (&["upload"], &["download"]),
    (
        &["send", "sender", "sent"],
        &["receive", "recipient", "receiver", "received"],
    ),
    (&["input"], &["output"]),
    (&["encode", "encoding"], &["decode", "decoding"]),
    (&["encrypt", "encryption"], &["decrypt", "decryption"]),
    (&["compress", "zip"], &["decompress", "unzip", "extract"]),
    (&["serialize"], &["deserialize"]),
    (&["before"], &["after"]),
    (&["above"], &["below", "beneath"]),
    (
        &["inside", "internal", "indoor"],
        &["outside", "external", "outdoor"],
    ),
    (&["first"], &["last"]),
    (
        &["next", "upcoming", "future"],
        &["previous", "past", "prior"],
    ),
    (
        &["early", "earlier", "earliest"],
        &["late", "later", "latest"],
    ),
    (&["true"], &["false"]),
    (&["positive"], &["negative"]),
    (&["left"], &["right"]),
    (&["north", "northern"], &["south", "southern"]),
    (&["east", "eastern"], &["west", "western"]),
    (&["up"], &["down"]),
    (
        &["hot", "warm", "heat", "boil", "boiling"],
        &["cold", "cool", "freeze", "freezing"],
    ),
    (&["wet"], &["dry"]),
    (
        &["male", "man", "men", "boy"],
        &["female", "woman", "women", "girl"],
    ),
    (&["husband"], &["wife"]),
    (&["father", "dad"], &["mother", "mom"]),
    (&["son"], &["daughter"]),
    (&["parent"], &["child", "children", "kid"]),
    (&["teacher"], &["student", "pupil"]),
    (&["doctor", "physician"], &["patient"]),
    (&["employer"], &["employee", "worker"]),
    (&["landlord"], &["tenant", "renter"]),
    (&["buyer"], &["seller", "vendor"]),
    (&["client"], &["server"]),
    (&["frontend"], &["backend"]),
    (&["plaintiff", "prosecution"], &["defendant", "defense"]),
    (&["host"], &["guest"]),
    (&["predator"], &["prey"]),
    (&["supply"], &["demand"]),
    (&["agree"], &["disagree"]),
    (&["love"], &["hate"]),
    (&["success", "succeed", "pass"], &["fail", "failure"]),
    (&["sync", "synchronous"], &["async", "asynchronous"]),
    (&["mutable"], &["immutable"]),
    (&["public"], &["private"]),
    (&["local"], &["global", "remote"]),
    (&["static"], &["dynamic"]),
    (&["horizontal"], &["vertical"]),
    (&["row"], &["column"]),
    (&["read"], &["write"]),
    (&["ascending"], &["descending"]),
    (&["uppercase", "upper"], &["lowercase"]),
    (&["synonym"], &["antonym"]),
    (&["arrive", "arrival"], &["depart", "departure"]),
    (&["summer"], &["winter"]),
    (&["morning"], &["evening", "night"]),
];

/// Canonical units and currencies. `true` marks forms that are ordinary words too ("in", "m"),
/// which count only right after a number.
const UNITS: &[(&str, &[&str], bool)] = &[
    (
        "kg",
        &["kg", "kgs", "kilogram", "kilograms", "kilo", "kilos"],
        false,
    ),
    ("g", &["g", "gr"], true),
    ("g", &["gram", "grams"], false),
    ("mg", &["mg", "milligram", "milligrams"], false),
    ("mcg", &["mcg", "µg", "microgram", "micrograms"], false),
    ("lb", &["lb", "lbs"], false),
    ("lb", &["pound", "pounds"], false),
    ("oz", &["oz", "ounce", "ounces"], false),
    ("l", &["l"], true),
    ("l", &["liter", "liters", "litre", "litres"], false),
    (
        "ml",
        &[
            "ml",
            "milliliter",
            "milliliters",
            "millilitre",
            "millilitres",
        ],
        false,
    ),
    ("gal", &["gallon", "gallons", "gal"], false),
    ("cup", &["cup", "cups"], false),
    ("tbsp", &["tbsp", "tablespoon", "tablespoons"], false),
    ("tsp", &["tsp", "teaspoon", "teaspoons"], false),
    (
        "km",
        &["km", "kilometer", "kilometers", "kilometre", "kilometres"],
        false,
    ),
    ("m", &["m"], true),
    ("m", &["meter", "meters", "metre", "metres"], false),
    (
        "cm",
        &[
            "cm",
            "centimeter",
            "centimeters",
            "centimetre",
            "centimetres",
        ],
        false,
    ),
    (
        "mm",
        &[
            "mm",
            "millimeter",
            "millimeters",
            "millimetre",
            "millimetres",
        ],
        false,
    ),
    ("mi", &["mile", "miles", "mi"], false),
    ("ft", &["ft", "foot", "feet"], false),
    ("in", &["in"], true),
    ("in", &["inch", "inches"], false),
    ("yd", &["yard", "yards", "yd"], false),
    ("c", &["c"], true),
    ("c", &["celsius", "centigrade"], false),
    ("f", &["f"], true),
    ("f", &["fahrenheit"], false),
    ("k", &["kelvin"], false),
    ("%", &["%", "percent", "percentage"], false),
    ("s", &["s", "sec", "secs"], true),
    ("s", &["second", "seconds"], false),
    ("min", &["min", "mins"], true),
    ("min", &["minute", "minutes"], false),
    ("h", &["h", "hr", "hrs"], true),
    ("h", &["hour", "hours"], false),
    ("day", &["day", "days"], false),
    ("week", &["week", "weeks"], false),
    ("month", &["month", "months"], false),
    ("year", &["year", "years", "yr", "yrs"], false),
    ("ms", &["ms", "millisecond", "milliseconds"], false),
    ("mph", &["mph"], false),
    ("kmh", &["kmh", "kph"], false),
    ("kb", &["kb", "kilobyte", "kilobytes"], false),
    ("mb", &["mb", "megabyte", "megabytes"], false),
    ("gb", &["gb", "gigabyte", "gigabytes"], false),
    ("tb", &["tb", "terabyte", "terabytes"], false),
    ("kib", &["kib"], false),
    ("mib", &["mib"], false),
    ("gib", &["gib"], false),
    ("bit", &["bit", "bits"], false),
    ("byte", &["byte", "bytes"], false),
    ("kcal", &["kcal", "calorie", "calories"], false),
    ("kwh", &["kwh"], false),
    ("w", &["watt", "watts"], false),
    ("v", &["volt", "volts"], false),
    ("usd", &["$", "usd", "dollar", "dollars"], false),
    ("eur", &["€", "eur", "euro", "euros"], false),
    ("gbp", &["£", "gbp", "sterling"], false),
    ("jpy", &["¥", "jpy", "yen"], false),
    ("inr", &["₹", "inr", "rupee", "rupees"], false),
    ("cny", &["cny", "yuan", "renminbi"], false),
    ("chf", &["chf", "franc", "francs"], false),
    ("btc", &["btc", "bitcoin", "bitcoins"], false),
    ("eth", &["eth", "ether"], false),
    ("x", &["x", "times"], true),
];

/// Months, weekdays and days relative to now: a question about one is not about another.
pub(crate) const TIMES: &[&str] = &[
    "january",
    "february",
    "march",
    "april",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "jan",
    "feb",
    "apr",
    "jun",
    "jul",
    "aug",
    "sep",
    "sept",
    "oct",
    "nov",
    "dec",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
    "today",
    "tomorrow",
    "yesterday",
    "tonight",
    "weekend",
];

/// Time words that are ordinary words too ("am", "ad"): they count only right after a number.
pub(crate) const TIMES_AFTER_NUMBER: &[&str] = &["am", "pm", "bc", "bce", "ad", "ce"];

/// Number words, as the digits they stand for ("one" is left out: it is a pronoun as often).
pub(crate) const NUMBER_WORDS: &[(&str, &str)] = &[
    ("zero", "0"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
    ("eleven", "11"),
    ("twelve", "12"),
    ("dozen", "12"),
    ("thirteen", "13"),
    ("fourteen", "14"),
    ("fifteen", "15"),
    ("sixteen", "16"),
    ("seventeen", "17"),
    ("eighteen", "18"),
    ("nineteen", "19"),
    ("twenty", "20"),
    ("thirty", "30"),
    ("forty", "40"),
    ("fifty", "50"),
    ("sixty", "60"),
    ("seventy", "70"),
    ("eighty", "80"),
    ("ninety", "90"),
    ("hundred", "100"),
    ("thousand", "1000"),
    ("million", "1000000"),
    ("billion", "1000000000"),
    ("trillion", "1000000000000"),
    ("half", "0.5"),
    ("quarter", "0.25"),
    ("twice", "2"),
    ("double", "2"),
    ("triple", "3"),
];

/// Function words: never names, and phrase boundaries for direction.
pub(crate) const FUNCTION: &[&str] = &[
    "a",
    "an",
    "the",
    "to",
    "into",
    "from",
    "in",
    "on",
    "at",
    "of",
    "for",
    "with",
    "by",
    "and",
    "or",
    "but",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "being",
    "am",
    "do",
    "does",
    "did",
    "how",
    "what",
    "whats",
    "which",
    "who",
    "whom",
    "whose",
    "why",
    "when",
    "where",
    "can",
    "could",
    "should",
    "would",
    "will",
    "shall",
    "may",
    "might",
    "must",
    "i",
    "me",
    "my",
    "mine",
    "you",
    "your",
    "we",
    "us",
    "our",
    "it",
    "its",
    "this",
    "that",
    "these",
    "those",
    "there",
    "their",
    "they",
    "them",
    "he",
    "him",
    "his",
    "she",
    "her",
    "as",
    "if",
    "than",
    "then",
    "so",
    "onto",
    "about",
    "please",
    "tell",
    "explain",
    "give",
    "show",
    "describe",
    "way",
    "ways",
    "want",
    "need",
    "like",
    "have",
    "has",
    "had",
    "get",
    "go",
    "going",
    "use",
    "using",
    "some",
    "any",
    "all",
    "each",
    "every",
    "much",
    "many",
    "also",
    "just",
    "only",
    "very",
    "e.g",
    "i.e",
    "etc",
    "vs",
    "versus",
    "between",
    "okay",
    "ok",
    "hi",
    "hello",
    "hey",
    "thanks",
    "thank",
    "yes",
    "im",
    "ive",
    "id",
    "ill",
    "youre",
    "it's",
    "i'm",
    "i've",
    "let",
    "lets",
    "able",
    "possible",
    "best",
    "good",
    "better",
    "difference",
    "compare",
    "convert",
    "change",
    "turn",
    "translate",
    "cast",
    "transform",
    "switch",
    "move",
    "calculate",
    "compute",
    "write",
    "make",
    "find",
    "know",
    "mean",
    "means",
    "meaning",
    "define",
    "definition",
];

/// Words the direction guard reads as "A → B" ("30 Celsius in Fahrenheit" converts too).
pub(crate) const ARROWS: &[&str] = &["to", "into", "in", "→", "->", "=>", "⇒"];

/// `word`, with plural, tense and possessive endings cut, so one lexicon entry covers its forms.
pub(crate) fn stem(word: &str) -> &str {
    let w = word
        .strip_suffix("'s")
        .or_else(|| word.strip_suffix('\''))
        .unwrap_or(word);
    let n = w.len();
    let cut = if n > 5 && w.ends_with("ing") {
        &w[..n - 3]
    } else if n > 4 && (w.ends_with("ed") || w.ends_with("es")) {
        &w[..n - 2]
    } else if n > 3 && w.ends_with('s') && !w.ends_with("ss") {
        &w[..n - 1]
    } else {
        w
    };
    if cut.len() > 3 {
        cut.strip_suffix('e').unwrap_or(cut)
    } else {
        cut
    }
}

/// Stemmed word → (opposite pair, side bit).
pub(crate) fn sides() -> &'static HashMap<&'static str, (u16, u8)> {
    static MAP: OnceLock<HashMap<&'static str, (u16, u8)>> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut m = HashMap::new();
        for (i, (a, b)) in OPPOSITES.iter().enumerate() {
            let group = u16::try_from(i).unwrap_or(u16::MAX);
            for w in *a {
                m.entry(stem(w)).or_insert((group, 1));
            }
            for w in *b {
                m.entry(stem(w)).or_insert((group, 2));
            }
        }
        m
    })
}

/// Unit form → (canonical unit, counts only after a number).
pub(crate) fn units() -> &'static HashMap<&'static str, (&'static str, bool)> {
    static MAP: OnceLock<HashMap<&'static str, (&'static str, bool)>> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut m = HashMap::new();
        for (canon, forms, after_number) in UNITS {
            for f in *forms {
                m.insert(*f, (*canon, *after_number));
            }
        }
        m
    })
}

/// Whether `w` (lower case) is a function word.
pub(crate) fn is_function(w: &str) -> bool {
    static SET: OnceLock<std::collections::HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| FUNCTION.iter().copied().collect())
        .contains(w)
}
