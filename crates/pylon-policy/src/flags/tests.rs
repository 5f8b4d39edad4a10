//! Flag evaluation against flagd's published conformance vectors (the testbed's expected
//! variants for the integer `fractional` bucketing), and the rules around them.

use serde_json::{json, Map, Value};

use super::*;
use crate::bucket;

fn set(flags: Value) -> FlagSet {
    FlagSet::parse(&json!({ "flags": flags }).to_string()).unwrap()
}

fn ctx(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap()
}

fn suits() -> Value {
    json!({"clubs": "clubs", "diamonds": "diamonds", "hearts": "hearts", "spades": "spades", "wild": "wild"})
}

#[test]
fn fractional_matches_flagd_vectors() {
    let s = set(json!({
        "fractional-flag": {
            "state": "ENABLED", "variants": suits(), "defaultVariant": "wild",
            "targeting": {"fractional": [
                {"cat": [{"var": "$flagd.flagKey"}, {"var": "user.name"}]},
                ["clubs", 25], ["diamonds", 25], ["hearts", 25], ["spades", 25]]}
        },
        "fractional-flag-shorthand": {
            "state": "ENABLED", "variants": {"heads": "heads", "tails": "tails", "draw": "draw"},
            "defaultVariant": "draw",
            "targeting": {"fractional": [["heads"], ["tails", 1]]}
        },
        "fractional-hash-edge-flag": {
            "state": "ENABLED", "variants": {"lower": "lower", "upper": "upper"},
            "defaultVariant": "lower",
            "targeting": {"fractional": [{"var": "targetingKey"}, ["lower", 50], ["upper", 50]]}
        }
    }));
    for (name, want) in [
        ("jack", "hearts"),
        ("queen", "spades"),
        ("ten", "clubs"),
        ("nine", "diamonds"),
    ] {
        let r = s
            .evaluate("fractional-flag", &ctx(json!({"user": {"name": name}})))
            .unwrap();
        assert_eq!(r.value, Some(json!(want)), "{name}");
        assert_eq!(r.reason, "TARGETING_MATCH");
    }
    for (key, want) in [("jon@company.com", "heads"), ("jane@company.com", "tails")] {
        let r = s
            .evaluate(
                "fractional-flag-shorthand",
                &ctx(json!({"targetingKey": key})),
            )
            .unwrap();
        assert_eq!(r.variant.as_deref(), Some(want), "{key}");
        // Rollouts bucket the same way: flag key, then targeting key, over the total weight.
        let b = bucket::bucket("fractional-flag-shorthand", key, 2);
        assert_eq!(
            bucket::fractional(b, &[("heads", 1), ("tails", 1)]),
            Some(&want)
        );
    }
    for (key, want) in [
        ("ejOoVL", "lower"),
        ("bY9fO-", "lower"),
        ("SI7p-", "lower"),
        ("6LvT0", "upper"),
        ("ceQdGm", "upper"),
    ] {
        let r = s
            .evaluate(
                "fractional-hash-edge-flag",
                &ctx(json!({"targetingKey": key})),
            )
            .unwrap();
        assert_eq!(r.variant.as_deref(), Some(want), "{key}");
    }
    // No targeting key: the split cannot place the caller, the default applies.
    let r = s
        .evaluate("fractional-flag-shorthand", &Map::new())
        .unwrap();
    assert_eq!((r.variant.as_deref(), r.reason), (Some("draw"), "DEFAULT"));
}

#[test]
fn reasons_follow_flagd() {
    let s = set(json!({
        "static": {"state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
        "off": {"state": "DISABLED", "variants": {"on": true, "off": false}, "defaultVariant": "on"},
        "email": {
            "state": "ENABLED", "variants": {"yes": "yes", "no": "no"}, "defaultVariant": "no",
            "targeting": {"if": [{"ends_with": [{"var": "email"}, "@example.com"]}, "yes", null]}
        },
        "obj": {"state": "ENABLED", "variants": {"a": {"limit": 3}}, "defaultVariant": "a", "targeting": {}}
    }));
    let r = s.evaluate("static", &Map::new()).unwrap();
    assert_eq!((r.value, r.reason), (Some(json!(true)), "STATIC"));
    let r = s.evaluate("off", &Map::new()).unwrap();
    assert_eq!((r.value, r.reason), (Some(json!(true)), "DISABLED"));
    let r = s
        .evaluate("email", &ctx(json!({"email": "a@example.com"})))
        .unwrap();
    assert_eq!((r.value, r.reason), (Some(json!("yes")), "TARGETING_MATCH"));
    let r = s
        .evaluate("email", &ctx(json!({"email": "a@other.org"})))
        .unwrap();
    assert_eq!((r.value, r.reason), (Some(json!("no")), "DEFAULT"));
    assert_eq!(
        s.evaluate("obj", &Map::new()).unwrap().value,
        Some(json!({"limit": 3}))
    );
    let e = s.evaluate("missing", &Map::new()).unwrap_err();
    assert_eq!(e.code, ErrorCode::FlagNotFound);
}

#[test]
fn sem_ver_and_shared_evaluators() {
    let text = json!({
        "flags": {
            "new-ui": {
                "state": "ENABLED", "variants": {"on": true, "off": false}, "defaultVariant": "off",
                "targeting": {"if": [{"$ref": "modern"}, "on", "off"]}
            }
        },
        "$evaluators": {
            "modern": {"and": [{"sem_ver": [{"var": "version"}, ">=", "2.1.0"]}, {"$ref": "staff"}]},
            "staff": {"starts_with": [{"var": "email"}, "ops-"]}
        }
    });
    let s = FlagSet::parse(&text.to_string()).unwrap();
    let on = ctx(json!({"version": "v2.3", "email": "ops-ann@x.io"}));
    assert_eq!(s.evaluate("new-ui", &on).unwrap().value, Some(json!(true)));
    let old = ctx(json!({"version": "2.0.9", "email": "ops-ann@x.io"}));
    assert_eq!(
        s.evaluate("new-ui", &old).unwrap().value,
        Some(json!(false))
    );
}

#[test]
fn bad_definitions_are_refused_with_the_flag_named() {
    for (flags, what) in [
        (json!({"f": {"state": "ON", "variants": {}}}), "state"),
        (
            json!({"f": {"state": "ENABLED", "variants": {"a": 1}, "defaultVariant": "b"}}),
            "defaultVariant",
        ),
        (
            json!({"f": {"state": "ENABLED", "variants": {"a": 1}, "targeting": {"$ref": "nope"}}}),
            "unknown evaluator",
        ),
    ] {
        let e = FlagSet::parse(&json!({ "flags": flags }).to_string()).unwrap_err();
        assert!(
            e.to_string().contains("flag `f`") && e.to_string().contains(what),
            "{e}"
        );
    }
    assert!(FlagSet::parse("{not json").is_err());
}
