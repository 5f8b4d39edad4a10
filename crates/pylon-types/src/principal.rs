//! Who is calling: the virtual key that authenticated a request and what it may do.

/// The window a budget covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetPeriod {
    Daily,
    Monthly,
    Total,
}

/// Limits and budget of a key or a team; `None` fields are unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Quota {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_concurrent: Option<u64>,
    /// US dollars per period.
    pub budget: Option<(f64, BudgetPeriod)>,
}

/// The caller behind a virtual key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Principal {
    pub key_id: String,
    pub key_name: String,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    /// `None`: every model.
    pub allowed_models: Option<Vec<String>>,
    /// What the key may do (`ai`: the model endpoints; `flags`: OFREP); `None`: everything.
    pub scopes: Option<Vec<String>>,
    /// Unix seconds after which the key no longer authenticates (expiry or rotation grace).
    pub expires_at: Option<i64>,
    pub key_quota: Quota,
    pub team_quota: Quota,
}

impl Principal {
    /// Whether a hard budget (the key's or its team's) applies to this caller's spend.
    pub fn has_budget(&self) -> bool {
        self.key_quota.budget.is_some() || self.team_quota.budget.is_some()
    }

    /// Whether the key's scopes include `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes
            .as_ref()
            .is_none_or(|s| s.iter().any(|x| x == scope))
    }

    /// Whether this caller may use the model name it asked for.
    pub fn may_use(&self, model: &str) -> bool {
        self.allowed_models
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|m| m == model))
    }
}
