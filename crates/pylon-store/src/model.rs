//! Rows as the rest of Pylon sees them.

use serde::{Deserialize, Serialize};

/// Request and token rate limits; `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: Option<i64>,
    /// Tokens per minute.
    pub tpm: Option<i64>,
    /// Requests in flight at once.
    pub max_concurrent: Option<i64>,
}

/// The window a budget covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Daily,
    Monthly,
    Total,
}

impl Period {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Daily => "daily",
            Period::Monthly => "monthly",
            Period::Total => "total",
        }
    }
}

/// A spending cap in US dollars over a period.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    pub amount_usd: f64,
    pub period: Period,
}

/// A team: owner of keys, with its own limits and budget.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Team {
    pub id: String,
    pub name: String,
    pub limits: Limits,
    pub budget: Option<Budget>,
    pub metadata: serde_json::Value,
    pub created_at: i64,
}

/// A user, as the owner recorded on keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub email: String,
    pub team_id: Option<String>,
    pub created_at: i64,
}

/// A virtual key as stored: its hash and display prefix, never the key itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: String,
    /// SHA-256 of the full key, hex.
    pub hash: String,
    /// The first characters of the key, for people to recognise it.
    pub prefix: String,
    pub name: String,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    /// `None`: every model.
    pub allowed_models: Option<Vec<String>>,
    /// What the key may do (`ai`, `flags`); `None`: everything.
    pub scopes: Option<Vec<String>>,
    pub limits: Limits,
    pub budget: Option<Budget>,
    pub metadata: serde_json::Value,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    /// Set on a key that was rotated: the key that replaces it.
    pub replaced_by: Option<String>,
    pub created_at: i64,
}

impl ApiKey {
    /// Whether the key authenticates at `now` (Unix seconds).
    pub fn is_active(&self, now: i64) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// An encrypted provider credential.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credential {
    pub provider: String,
    /// Base64 AEAD ciphertext (with tag).
    pub ciphertext: String,
    /// Base64 nonce.
    pub nonce: String,
    /// Which master key encrypted it.
    pub master_key_id: String,
    pub updated_at: i64,
}

/// Usage to add to the daily aggregate of one key and model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageDelta {
    /// `YYYY-MM-DD` (UTC).
    pub day: String,
    pub key_id: String,
    pub team_id: String,
    pub model: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
}

/// How usage is grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Key,
    Team,
    Model,
    Day,
}

/// One group of aggregated usage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    /// The key id, team id, model or day this row aggregates.
    pub group: String,
    pub requests: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
}
