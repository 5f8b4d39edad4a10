//! Reading one field of a JSON object without parsing the rest.

/// The bytes just after `"key":` for a key of the top-level object, found by skipping strings
/// and counting nesting from the end: a response's usage sits after its whole content, which a
/// full parse (or a scan from the front) reads only to throw away, so only the tail is read.
/// `None` when no top-level key is spelled exactly `key` (a key written with escapes is not
/// recognised: callers fall back to a full parse). With a key given twice, the last one.
pub(crate) fn top_level_value<'a>(json: &'a [u8], key: &[u8]) -> Option<&'a [u8]> {
    let mut depth = 0usize;
    let mut i = json.len();
    while i > 0 {
        i -= 1;
        match json[i] {
            b'"' => {
                // Outside a string, the first quote met going back closes one; it opens at the
                // previous quote that is not escaped.
                let end = i;
                let mut start = end;
                loop {
                    start = memchr::memrchr(b'"', &json[..start])?;
                    if !escaped(json, start) {
                        break;
                    }
                }
                i = start;
                if depth == 1 && &json[start + 1..end] == key {
                    let rest = &json[end + 1..];
                    let colon = rest.iter().position(|b| !b.is_ascii_whitespace())?;
                    if rest[colon] == b':' {
                        return Some(&rest[colon + 1..]);
                    }
                }
            }
            b'}' | b']' => depth += 1,
            b'{' | b'[' => depth = depth.checked_sub(1)?,
            _ => {}
        }
    }
    None
}

/// Whether the byte at `at` is escaped: preceded by an odd run of backslashes.
fn escaped(json: &[u8], at: usize) -> bool {
    json[..at].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
}

#[cfg(test)]
mod tests {
    use super::top_level_value;

    fn at<'a>(json: &'a str, key: &str) -> Option<&'a str> {
        top_level_value(json.as_bytes(), key.as_bytes()).map(|v| std::str::from_utf8(v).unwrap())
    }

    #[test]
    fn finds_only_a_top_level_key() {
        assert_eq!(
            at(r#"{"a":1,"usage":{"x":2}}"#, "usage"),
            Some(r#"{"x":2}}"#)
        );
        assert_eq!(at(r#"{ "usage" : 5 }"#, "usage"), Some(" 5 }"));
        // Nested, inside strings, as a value, escaped quotes and backslashes before it.
        assert_eq!(at(r#"{"c":{"usage":1}}"#, "usage"), None);
        assert_eq!(at(r#"{"c":[{"usage":1}]}"#, "usage"), None);
        assert_eq!(at(r#"{"c":"\"usage\":1"}"#, "usage"), None);
        assert_eq!(at(r#"{"c":"usage"}"#, "usage"), None);
        assert_eq!(
            at(r#"{"c":"a\\","d":"\\\"}","usage":7}"#, "usage"),
            Some("7}")
        );
        assert_eq!(at(r#"{"c":[1,2],"usage":null}"#, "usage"), Some("null}"));
        // Long strings, with an escaped quote and an escaped backslash in them.
        let long = format!(
            r#"{{"c":"{}\"{}\\","usage":3}}"#,
            "x".repeat(31),
            "y".repeat(40)
        );
        assert_eq!(at(&long, "usage"), Some("3}"));
        let long = format!(r#"{{"c":"{}","usage":4}}"#, "z".repeat(100));
        assert_eq!(at(&long, "usage"), Some("4}"));
    }

    const PATTERN: &str = r#"(usage|"|\\|:|\{|\}|\[|\]|x|\n|é){0,40}"#;

    fn text() -> impl proptest::strategy::Strategy<Value = String> {
        proptest::string::string_regex(PATTERN).expect("a valid pattern")
    }

    /// Any JSON value: strings drawn with quotes, backslashes, control characters and the key
    /// itself in them.
    fn value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            text().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::vec((text(), inner), 0..6)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Over any object, the scan finds a top-level `usage` exactly when a parse does, and
        /// the value it points at parses to the same thing.
        #[test]
        fn agrees_with_a_full_parse(
            fields in proptest::collection::vec((proptest::option::of(value()), value()), 0..6),
            usage in proptest::option::of(value()),
        ) {
            let mut object = serde_json::Map::new();
            for (i, (key, v)) in fields.into_iter().enumerate() {
                // Keys that are not `usage`, some of them holding objects with a `usage` key.
                let nested = key.map(|k| serde_json::json!({ "usage": k }));
                object.insert(format!("k{i}"), nested.unwrap_or(v));
            }
            if let Some(u) = &usage {
                object.insert("usage".into(), u.clone());
            }
            let json = serde_json::to_vec(&serde_json::Value::Object(object)).unwrap();
            let found = top_level_value(&json, b"usage").map(|rest| {
                let mut de = serde_json::Deserializer::from_slice(rest);
                <serde_json::Value as serde::Deserialize>::deserialize(&mut de).unwrap()
            });
            proptest::prop_assert_eq!(found, usage);
        }
    }

    #[test]
    fn malformed_input_ends_the_scan_without_panicking() {
        for json in [
            "",
            "{",
            r#"{"usage""#,
            r#"{"usage"   "#,
            r#"{"a":"\"#,
            r#"{"a":"unterminated"#,
            "}}}{",
            r#"["usage":1]"#,
            r#""usage":1"#,
        ] {
            let _ = at(json, "usage");
        }
        // Only the tail is read: what comes before the key's object is not checked.
        assert_eq!(at("}{\"usage\":1}", "usage"), Some("1}"));
        assert_eq!(at(r#"{"usage":1}}"#, "usage"), None);
        assert_eq!(at(r#""usage":1"#, "usage"), None);
    }
}
