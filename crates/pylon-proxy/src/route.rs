//! Route: which model(s) and targets a request may use, and in what order.

use std::sync::Arc;

use pylon_config::Strategy;

use pylon_types::Principal;

use crate::context::Call;
use crate::log::Record;
use crate::price::Prices;
use crate::snapshot::{Model, Snapshot};
use crate::ProxyError;

/// Resolves the model the call asks for: one the caller's key may use, that exists, and — for a
/// key with a budget — that is priced for every target that may serve it.
pub(crate) fn choose(
    snap: &Snapshot,
    prices: &Prices,
    principal: Option<&Principal>,
    call: &Call,
    record: &mut Record,
) -> Result<Arc<Model>, ProxyError> {
    if let Some(p) = principal.filter(|p| !p.may_use(&call.model)) {
        return Err(ProxyError::Forbidden(format!(
            "key `{}` may not use model `{}`; it may use: {}",
            p.key_name,
            call.model,
            p.allowed_models.as_deref().unwrap_or_default().join(", ")
        )));
    }
    // An unknown name is only quoted in the error: it never becomes a log key or label.
    let model = snap
        .resolve(&call.model)
        .ok_or_else(|| ProxyError::UnknownModel(crate::error::quote(&call.model)))?;
    record.model = call.model.clone();
    record.metric_model.clone_from(&model.metric_name);
    if model.log_bodies {
        record.prompt = Some(call.body.clone());
    }
    if let Some(p) = principal.filter(|p| p.has_budget()) {
        if let Some(unpriced) = unpriced(snap, prices, &model) {
            return Err(ProxyError::Unpriced(format!(
                "key `{}` has a budget, but model `{}` may be served by `{unpriced}`, whose price is unknown; an operator must add it to [[prices]] (or a catch-all `model = \"*\"`)",
                p.key_name, model.name
            )));
        }
    }
    Ok(model)
}

/// `least-latency` sends one request in this many to another target first, to measure it.
const EXPLORE: u32 = 20;

/// The order in which to try a model's targets, by its strategy.
pub(crate) fn order(model: &Model) -> Vec<usize> {
    let n = model.targets.len();
    match model.strategy {
        Strategy::Priority => (0..n).collect(),
        Strategy::Weighted => weighted_order(model),
        Strategy::LeastLatency => {
            let mut idx: Vec<usize> = (0..n).collect();
            // Untried targets (no sample yet) go first so every target gets measured.
            idx.sort_by_key(|&i| (model.targets[i].health.latency_us(), fastrand::u32(..)));
            // A target's average moves only when it serves: now and then another one goes
            // first, so one that was slow once is measured again instead of left out for good.
            if n > 1 && fastrand::u32(..EXPLORE) == 0 {
                idx.swap(0, 1 + fastrand::usize(..n - 1));
            }
            idx
        }
        Strategy::LeastBusy => {
            let mut idx: Vec<usize> = (0..n).collect();
            idx.sort_by_key(|&i| (model.targets[i].health.in_flight(), fastrand::u32(..)));
            idx
        }
    }
}

/// Weighted random order without replacement; zero-weight targets come last, as spares.
fn weighted_order(model: &Model) -> Vec<usize> {
    let mut left: Vec<usize> = (0..model.targets.len()).collect();
    let mut out = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let total: u64 = left
            .iter()
            .map(|&i| u64::from(model.targets[i].weight))
            .sum();
        if total == 0 {
            out.append(&mut left);
            break;
        }
        let mut pick = fastrand::u64(..total);
        let pos = left
            .iter()
            .position(|&i| {
                let w = u64::from(model.targets[i].weight);
                if pick < w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .unwrap_or(0);
        out.push(left.remove(pos));
    }
    out
}

/// The model a name resolves to, then its fallbacks in order.
pub(crate) fn chain(snap: &Snapshot, first: Arc<Model>) -> Vec<Arc<Model>> {
    let mut out = vec![first];
    let mut i = 0;
    // Fallbacks of fallbacks are followed too, each model at most once.
    while i < out.len() {
        for name in &out[i].fallbacks.clone() {
            if let Some(m) = snap.model(name) {
                if !out.iter().any(|o| o.name == m.name) {
                    out.push(m);
                }
            }
        }
        i += 1;
    }
    out
}

/// The first `provider/model` target in the model's chain whose price is unknown, if any.
pub(crate) fn unpriced(
    snap: &Snapshot,
    prices: &crate::price::Prices,
    first: &Arc<Model>,
) -> Option<String> {
    chain(snap, first.clone())
        .iter()
        .flat_map(|m| m.targets.iter())
        .find(|t| prices.of(&t.model).is_none())
        .map(|t| format!("{}/{}", t.provider.name, t.model))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::tests::model_with_weights;

    #[test]
    fn weighted_order_follows_weights() {
        let m = model_with_weights(&[9, 1]);
        let firsts = (0..2000).filter(|_| order(&m)[0] == 0).count();
        assert!((1650..1950).contains(&firsts), "{firsts}");
        assert_eq!(order(&m).len(), 2);
    }

    #[test]
    fn least_latency_still_measures_the_slower_target_now_and_then() {
        let mut m = model_with_weights(&[1, 1]);
        m.strategy = Strategy::LeastLatency;
        m.targets[0]
            .health
            .success(std::time::Duration::from_millis(10));
        m.targets[1]
            .health
            .success(std::time::Duration::from_millis(900));
        let slower_first = (0..4000).filter(|_| order(&m)[0] == 1).count();
        // One in twenty, give or take: measured again, but not sent most traffic.
        assert!((100..320).contains(&slower_first), "{slower_first}");
    }

    #[test]
    fn zero_weight_is_a_spare() {
        let m = model_with_weights(&[0, 1]);
        for _ in 0..100 {
            assert_eq!(order(&m), vec![1, 0]);
        }
    }
}
