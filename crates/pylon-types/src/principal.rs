//! Who is calling: the virtual key that authenticated a request and what it may do.

/// The caller behind a virtual key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Principal {
    pub key_id: String,
    pub key_name: String,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    /// `None`: every model.
    pub allowed_models: Option<Vec<String>>,
    /// Unix seconds after which the key no longer authenticates (expiry or rotation grace).
    pub expires_at: Option<i64>,
}

impl Principal {
    /// Whether this caller may use the model name it asked for.
    pub fn may_use(&self, model: &str) -> bool {
        self.allowed_models
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|m| m == model))
    }
}
