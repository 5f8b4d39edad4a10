//! Virtual keys: generation, display prefix, and the principal the data plane sees.

use base64::Engine;
use pylon_store::{ApiKey, Budget, Limits, Period, Team};
use pylon_types::{BudgetPeriod, Principal, Quota};

/// Every virtual key starts with this.
pub const KEY_PREFIX: &str = "pk-";

/// A new key: `pk-` + 32 random bytes (URL-safe base64), its SHA-256 (hex) and display prefix.
pub fn generate() -> Result<(String, String, String), getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    let key = format!(
        "{KEY_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = to_hex(&pylon_proxy::hash_key(&key));
    let prefix = key.chars().take(KEY_PREFIX.len() + 8).collect();
    Ok((key, hash, prefix))
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(out)
}

/// Limits and budget as the data plane sees them.
pub(crate) fn quota(limits: Limits, budget: Option<Budget>) -> Quota {
    let positive = |v: Option<i64>| v.filter(|n| *n > 0).map(|n| n as u64);
    Quota {
        rpm: positive(limits.rpm),
        tpm: positive(limits.tpm),
        max_concurrent: positive(limits.max_concurrent),
        budget: budget.map(|b| (b.amount_usd, budget_period(b.period))),
    }
}

/// A stored budget period as the data plane names it.
pub(crate) fn budget_period(p: Period) -> BudgetPeriod {
    match p {
        Period::Daily => BudgetPeriod::Daily,
        Period::Monthly => BudgetPeriod::Monthly,
        Period::Total => BudgetPeriod::Total,
    }
}

/// The data plane's view of a stored key (with its team, if any).
pub(crate) fn principal(k: &ApiKey, team: Option<&Team>) -> Option<([u8; 32], Principal)> {
    Some((
        from_hex(&k.hash)?,
        Principal {
            key_id: k.id.clone(),
            key_name: k.name.clone(),
            team_id: k.team_id.clone(),
            user_id: k.user_id.clone(),
            allowed_models: k.allowed_models.clone(),
            scopes: k.scopes.clone(),
            expires_at: k.expires_at,
            key_quota: quota(k.limits, k.budget),
            team_quota: team.map(|t| quota(t.limits, t.budget)).unwrap_or_default(),
        },
    ))
}

/// Unix seconds now.
/// Unix time in milliseconds, as the control plane's loops and rows keep it.
pub(crate) fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_long_random_and_hash_round_trips() {
        let (a, hash, prefix) = generate().unwrap();
        let (b, _, _) = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("pk-") && a.len() >= 3 + 43, "{a}");
        assert!(a[3..]
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(prefix.len(), 11);
        assert_eq!(from_hex(&hash), Some(pylon_proxy::hash_key(&a)));
        assert_eq!(from_hex("zz"), None);
    }
}
