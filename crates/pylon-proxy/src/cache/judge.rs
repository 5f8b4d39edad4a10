//! The optional judge of semantic hits: a chat model asked whether two questions have the same
//! answer. Its decisions are remembered per pair; anything but a clear YES — a NO, an error, a
//! timeout — is a miss, so a judge that is down costs hits, never correctness.

use std::time::{Duration, Instant};

use pylon_types::openai::ChatRequest;

/// What the judge said about one pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Same,
    Different,
    /// No usable answer: treated as different.
    Failed,
}

/// A configured judge and its memory of decisions.
pub(crate) struct Judge {
    model: String,
    timeout: Duration,
    /// (question id, entry key) → same answer?
    memo: moka::future::Cache<(String, String), bool>,
}

/// Asks for one word; the instructions name what the guards cannot see.
const INSTRUCTIONS: &str = "You check a cache. Two questions were asked of an assistant. \
Reply YES if a single correct answer to Question A would also be a correct and complete answer \
to Question B, otherwise NO. Differences in numbers, units, dates, names, direction, negation \
or scope mean NO. Reply with one word: YES or NO.";

impl Judge {
    pub fn new(cfg: &pylon_config::Verify) -> Judge {
        Judge {
            model: cfg.model.clone(),
            timeout: cfg.timeout,
            memo: moka::future::Cache::builder()
                .max_capacity(cfg.memo)
                .time_to_live(Duration::from_secs(24 * 3600))
                .build(),
        }
    }

    /// Whether `candidate` answers `question`; `question_id` and `entry` key the memory.
    /// `ask` puts the question to the judge model when the memory has no decision.
    pub async fn decide<F, Fut>(
        &self,
        metrics: &pylon_telemetry::Metrics,
        question_id: &str,
        entry: &str,
        ask: F,
    ) -> Decision
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Decision>,
    {
        let m = &metrics.semantic;
        let pair = (question_id.to_owned(), entry.to_owned());
        if let Some(same) = self.memo.get(&pair).await {
            m.judge_memo.inc();
            return if same {
                Decision::Same
            } else {
                Decision::Different
            };
        }
        let started = Instant::now();
        let decision = ask().await;
        m.judge_seconds.observe(started.elapsed().as_secs_f64());
        let label = match decision {
            Decision::Same => "accept",
            Decision::Different => "reject",
            Decision::Failed => "error",
        };
        m.judge.with_label_values(&[label]).inc();
        if decision != Decision::Failed {
            self.memo.insert(pair, decision == Decision::Same).await;
        }
        decision
    }

    /// Forgets any decision on a pair (feedback overrides the judge).
    pub async fn forget(&self, question_id: &str, entry: &str) {
        self.memo
            .invalidate(&(question_id.to_owned(), entry.to_owned()))
            .await;
    }

    /// The request the judge model is sent for a pair: the candidate's question and this one.
    pub fn request(&self, question: &str, candidate: &str) -> Option<ChatRequest> {
        let body = serde_json::json!({
            "model": self.model,
            "temperature": 0,
            "max_tokens": 3,
            "messages": [
                {"role": "system", "content": INSTRUCTIONS},
                {"role": "user", "content": format!("Question A: {candidate}\n\nQuestion B: {question}")},
            ],
        });
        serde_json::from_value(body).ok()
    }

    /// The judge model's name.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// How long the judge may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// YES or NO at the start of the reply, in any case, with any punctuation after it.
pub(crate) fn verdict(text: &str) -> Decision {
    let word: String = text
        .trim_start()
        .chars()
        .take_while(|c| c.is_alphabetic())
        .flat_map(char::to_uppercase)
        .collect();
    match word.as_str() {
        "YES" => Decision::Same,
        "NO" => Decision::Different,
        _ => Decision::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_leading_yes_or_no_counts() {
        assert_eq!(verdict("YES"), Decision::Same);
        assert_eq!(verdict(" yes."), Decision::Same);
        assert_eq!(verdict("No, they differ"), Decision::Different);
        assert_eq!(verdict("Yesterday"), Decision::Failed);
        assert_eq!(verdict("I think yes"), Decision::Failed);
        assert_eq!(verdict(""), Decision::Failed);
    }
}
