use proptest::prelude::*;

use super::*;

fn verdict(a: &str, b: &str) -> Result<(), Reason> {
    let v = check(&Facets::of(a), &Facets::of(b));
    assert_eq!(
        v,
        check(&Facets::of(b), &Facets::of(a)),
        "asymmetric: {a:?} / {b:?}"
    );
    v
}

#[track_caller]
fn refused(a: &str, b: &str, reason: Reason) {
    assert_eq!(verdict(a, b), Err(reason), "{a:?} / {b:?}");
}

#[track_caller]
fn allowed(a: &str, b: &str) {
    assert_eq!(verdict(a, b), Ok(()), "{a:?} / {b:?}");
}

#[test]
fn numbers_amounts_and_units() {
    refused(
        "What is the amoxicillin dose for a 40 kg child?",
        "What is the amoxicillin dose for a 10 kg child?",
        Reason::Number,
    );
    refused(
        "Convert 100 USD to EUR",
        "Convert 100 USD to GBP",
        Reason::Unit,
    );
    refused("How long is 5 miles?", "How long is 5 km?", Reason::Unit);
    refused("What is 2 + 2?", "What is 2 + 3?", Reason::Number);
    refused("Is $1,000 a lot?", "Is $10,000 a lot?", Reason::Number);
    refused(
        "Top 5 sci-fi novels",
        "Top 10 sci-fi novels",
        Reason::Number,
    );
    allowed(
        "What is the dose for a 40 kg child?",
        "Dose for a child of 40kg?",
    );
    allowed("Is $1,000 a lot?", "Is 1000 dollars a lot?");
    allowed("top ten sci-fi novels", "the 10 best sci-fi novels");
}

#[test]
fn dates_years_and_days() {
    refused(
        "What was Apple's revenue in Q3 2024?",
        "What was Apple's revenue in Q3 2023?",
        Reason::Date,
    );
    refused(
        "Apple revenue in Q3 2024",
        "Apple revenue in Q4 2024",
        Reason::Number,
    );
    refused(
        "Weather in Paris tomorrow",
        "Weather in Paris today",
        Reason::Date,
    );
    refused(
        "Events in Berlin in March",
        "Events in Berlin in April",
        Reason::Date,
    );
    refused(
        "Is the bank open at 9am?",
        "Is the bank open at 9pm?",
        Reason::Date,
    );
    allowed("Who won the World Cup in 2018?", "2018 World Cup winner?");
}

#[test]
fn negation_and_polarity() {
    refused(
        "Which countries do not require a visa for US citizens?",
        "Which countries require a visa for US citizens?",
        Reason::Negation,
    );
    refused(
        "Why is my code not working?",
        "Why is my code working?",
        Reason::Negation,
    );
    refused(
        "Can I travel without a passport?",
        "Can I travel with a passport?",
        Reason::Negation,
    );
    refused(
        "Drinks that aren't alcoholic",
        "Drinks that are alcoholic",
        Reason::Negation,
    );
    allowed("Why isn't my code working?", "Why does my code not work?");
}

#[test]
fn opposites_from_a_small_lexicon() {
    refused(
        "Foods to avoid while taking warfarin",
        "Foods to eat while on warfarin",
        Reason::Opposite,
    );
    refused(
        "How do I increase my credit score?",
        "How do I lower my credit score?",
        Reason::Opposite,
    );
    refused(
        "Can my employer read my email?",
        "Can my employee read my email?",
        Reason::Opposite,
    );
    refused(
        "Pros of remote work",
        "Cons of remote work",
        Reason::Opposite,
    );
    refused(
        "How to enable dark mode",
        "How to disable dark mode",
        Reason::Opposite,
    );
    refused(
        "Tax on buying a house",
        "Tax on selling a house",
        Reason::Opposite,
    );
    refused(
        "What is the largest planet?",
        "What is the smallest planet?",
        Reason::Opposite,
    );
    allowed(
        "What foods should I avoid on warfarin?",
        "Which foods to avoid with warfarin?",
    );
    allowed(
        "How can I raise my credit score?",
        "Ways to increase my credit score",
    );
}

#[test]
fn direction_and_roles() {
    refused(
        "How do I convert an integer to a string in Java?",
        "How do I convert a string to an integer in Java?",
        Reason::Direction,
    );
    refused(
        "Convert Fahrenheit to Celsius",
        "Convert Celsius to Fahrenheit",
        Reason::Direction,
    );
    refused(
        "Flights from Paris to London",
        "Flights from London to Paris",
        Reason::Direction,
    );
    refused("USD → EUR rate", "EUR → USD rate", Reason::Direction);
    refused(
        "translate English to Spanish",
        "translate Spanish into English",
        Reason::Direction,
    );
    allowed(
        "Convert integer to string in Java",
        "Java: how to turn an integer into a string",
    );
}

#[test]
fn names_identifiers_and_quotes() {
    refused(
        "What is the capital of France?",
        "What is the capital of Germany?",
        Reason::Name,
    );
    refused(
        "How do I sort a list in Python?",
        "How do I sort a list in Rust?",
        Reason::Name,
    );
    refused(
        "What does os.path.join do?",
        "What does os.path.split do?",
        Reason::Name,
    );
    refused(
        "Explain useEffect in React",
        "Explain useMemo in React",
        Reason::Name,
    );
    refused(
        "What does \"idempotent\" mean?",
        "What does \"immutable\" mean?",
        Reason::Name,
    );
    refused(
        "Is GPT-4 better than Claude?",
        "Is GPT-4 better than Gemini?",
        Reason::Name,
    );
    allowed("What is the capital of France?", "France's capital city?");
    allowed("How do I sort a list in Python?", "python: sorting a list");
}

#[test]
fn paraphrases_without_the_blurred_kinds_pass() {
    allowed(
        "How do I reverse a linked list?",
        "What's the way to reverse a linked list?",
    );
    allowed("What is a closure?", "Can you explain what a closure is?");
    allowed(
        "Best way to learn guitar",
        "How should I learn to play guitar?",
    );
    allowed("", "");
}

fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            "[a-zA-Z]{1,9}",
            "[0-9]{1,5}",
            Just("not".to_owned()),
            Just("to".to_owned()),
            Just("$".to_owned()),
            Just("\"".to_owned()),
            Just(".".to_owned()),
            Just("→".to_owned()),
            "\\PC{1,3}",
        ],
        0..40,
    )
    .prop_map(|w| w.join(" "))
}

proptest! {
    #[test]
    fn a_question_always_agrees_with_itself(t in text()) {
        let f = Facets::of(&t);
        prop_assert_eq!(check(&f, &f), Ok(()));
    }

    #[test]
    fn the_verdict_is_symmetric(a in text(), b in text()) {
        let (fa, fb) = (Facets::of(&a), Facets::of(&b));
        prop_assert_eq!(check(&fa, &fb).is_ok(), check(&fb, &fa).is_ok());
    }

    #[test]
    fn any_input_is_handled_and_bounded(t in "\\PC{0,400}") {
        let f = Facets::of(&t);
        prop_assert!(f.numbers.len() <= MAX_ITEMS && f.names.len() <= MAX_ITEMS);
        prop_assert!(f.arrows.len() <= MAX_ITEMS);
    }

    #[test]
    fn a_different_number_is_refused(
        words in proptest::collection::vec("[a-z]{2,8}", 1..8),
        at in 0usize..8,
        n in 0u32..5000,
        m in 0u32..5000,
    ) {
        prop_assume!(n != m);
        let with = |x: u32| {
            let mut w = words.clone();
            w.insert(at.min(w.len()), x.to_string());
            w.join(" ")
        };
        let v = check(&Facets::of(&with(n)), &Facets::of(&with(m)));
        prop_assert!(matches!(v, Err(Reason::Number | Reason::Date)), "{v:?}");
    }

    #[test]
    fn inserting_a_negation_is_refused(
        words in proptest::collection::vec("[a-z]{2,8}", 1..10),
        at in 0usize..10,
    ) {
        let plain = words.join(" ");
        let mut w = words.clone();
        w.insert(at.min(w.len()), "not".to_owned());
        let negated = w.join(" ");
        prop_assume!(Facets::of(&plain).negations == 0);
        prop_assert_eq!(check(&Facets::of(&plain), &Facets::of(&negated)), Err(Reason::Negation));
    }

    #[test]
    fn swapping_the_ends_of_an_arrow_is_refused(
        a in "[a-z]{3,8}",
        b in "[a-z]{3,8}",
        tail in proptest::collection::vec("[a-z]{2,8}", 0..4),
    ) {
        prop_assume!(stem(&a) != stem(&b) && !lexicon::is_function(&a) && !lexicon::is_function(&b));
        prop_assume!(!lexicon::ARROWS.contains(&a.as_str()) && !lexicon::ARROWS.contains(&b.as_str()));
        let tail = tail.join(" ");
        let one = format!("how do i convert {a} to {b} {tail}");
        let other = format!("how do i convert {b} to {a} {tail}");
        let v = check(&Facets::of(&one), &Facets::of(&other));
        prop_assert!(v.is_err(), "{one:?} / {other:?}");
    }
}
