//! Request and response bodies of the admin API (its public shape, separate from storage rows).

use pylon_store::{ApiKey, Budget, Limits, Period, Team, User};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// An error.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong and what to do.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub message: String,
    pub r#type: String,
    pub code: String,
}

/// Rate limits; omitted fields are unlimited.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, ToSchema)]
// `deny_unknown_fields` here is for the schema (`additionalProperties: false`); the field
// struct enforces it.
#[serde(deny_unknown_fields, try_from = "Object")]
pub struct LimitsBody {
    /// Requests per minute.
    #[schema(minimum = 0)]
    pub rpm: Option<i64>,
    /// Tokens per minute.
    #[schema(minimum = 0)]
    pub tpm: Option<i64>,
    /// Requests in flight at once.
    #[schema(minimum = 0)]
    pub max_concurrent: Option<i64>,
}

impl LimitsBody {
    /// Negative limits mean nothing; refused rather than stored.
    pub(crate) fn check(&self) -> Result<(), super::AdminError> {
        for (name, v) in [
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("max_concurrent", self.max_concurrent),
        ] {
            if v.is_some_and(|v| v < 0) {
                return Err(super::AdminError::bad_request(format!(
                    "`limits.{name}` must not be negative"
                )));
            }
        }
        Ok(())
    }
}

/// A JSON object, and only an object: derived structs would also read an array of their fields.
type Object = serde_json::Map<String, serde_json::Value>;

/// The fields of [`LimitsBody`], read from an object only.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFields {
    #[serde(default, deserialize_with = "whole")]
    rpm: Option<i64>,
    #[serde(default, deserialize_with = "whole")]
    tpm: Option<i64>,
    #[serde(default, deserialize_with = "whole")]
    max_concurrent: Option<i64>,
}

impl TryFrom<Object> for LimitsBody {
    type Error = serde_json::Error;
    fn try_from(o: Object) -> Result<Self, Self::Error> {
        let f: LimitsFields = serde_json::from_value(serde_json::Value::Object(o))?;
        Ok(LimitsBody {
            rpm: f.rpm,
            tpm: f.tpm,
            max_concurrent: f.max_concurrent,
        })
    }
}

/// The fields of [`BudgetBody`], read from an object only.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BudgetFields {
    amount_usd: f64,
    period: PeriodBody,
}

impl TryFrom<Object> for BudgetBody {
    type Error = serde_json::Error;
    fn try_from(o: Object) -> Result<Self, Self::Error> {
        let f: BudgetFields = serde_json::from_value(serde_json::Value::Object(o))?;
        Ok(BudgetBody {
            amount_usd: f.amount_usd,
            period: f.period,
        })
    }
}

/// An optional integer that may be written as a whole float (`60.0`): JSON Schema counts that
/// as an integer, and so do clients that send every number as a float.
fn whole<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    use serde::de::Error;
    match Option::<serde_json::Number>::deserialize(d)? {
        None => Ok(None),
        Some(n) => n
            .as_i64()
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| f as i64)
            })
            .map(Some)
            .ok_or_else(|| D::Error::custom(format!("{n} is not a whole number in range"))),
    }
}

impl From<LimitsBody> for Limits {
    fn from(l: LimitsBody) -> Self {
        Limits {
            rpm: l.rpm,
            tpm: l.tpm,
            max_concurrent: l.max_concurrent,
        }
    }
}

impl From<Limits> for LimitsBody {
    fn from(l: Limits) -> Self {
        LimitsBody {
            rpm: l.rpm,
            tpm: l.tpm,
            max_concurrent: l.max_concurrent,
        }
    }
}

/// A budget period.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PeriodBody {
    Daily,
    Monthly,
    Total,
}

/// A spending cap.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
// `deny_unknown_fields` here is for the schema (`additionalProperties: false`); the field
// struct enforces it.
#[serde(deny_unknown_fields, try_from = "Object")]
pub struct BudgetBody {
    #[schema(minimum = 0)]
    pub amount_usd: f64,
    pub period: PeriodBody,
}

impl BudgetBody {
    /// A negative budget means nothing; refused rather than stored.
    pub(crate) fn check(&self) -> Result<(), super::AdminError> {
        if self.amount_usd < 0.0 {
            return Err(super::AdminError::bad_request(
                "`budget.amount_usd` must not be negative",
            ));
        }
        Ok(())
    }
}

impl From<BudgetBody> for Budget {
    fn from(b: BudgetBody) -> Self {
        let period = match b.period {
            PeriodBody::Daily => Period::Daily,
            PeriodBody::Monthly => Period::Monthly,
            PeriodBody::Total => Period::Total,
        };
        Budget {
            amount_usd: b.amount_usd,
            period,
        }
    }
}

impl From<Budget> for BudgetBody {
    fn from(b: Budget) -> Self {
        let period = match b.period {
            Period::Daily => PeriodBody::Daily,
            Period::Monthly => PeriodBody::Monthly,
            Period::Total => PeriodBody::Total,
        };
        BudgetBody {
            amount_usd: b.amount_usd,
            period,
        }
    }
}

/// A key to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewKey {
    /// Not blank.
    #[schema(pattern = "[^ \t\r\n]")]
    pub name: String,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    /// Model names the key may use; omitted: all.
    pub allowed_models: Option<Vec<String>>,
    /// What the key may do: `ai` (the model endpoints) and/or `flags` (OFREP flag evaluation);
    /// omitted: both. A browser app's key gets `["flags"]`.
    pub scopes: Option<Vec<Scope>>,
    /// Lifetime, e.g. `30d`; omitted: no expiry.
    #[schema(pattern = "^[0-9]{1,6}(s|m|h|d|w)$", example = "30d")]
    pub expires_in: Option<String>,
    pub metadata: Option<serde_json::Value>,
    pub limits: Option<LimitsBody>,
    pub budget: Option<BudgetBody>,
}

/// Something a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The model endpoints (`/v1/…`).
    Ai,
    /// Flag evaluation over OFREP (`/ofrep/v1/…`).
    Flags,
}

impl Scope {
    /// The scope's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Ai => "ai",
            Scope::Flags => "flags",
        }
    }
}

/// How long the old key stays valid after a rotation.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rotate {
    /// e.g. `1h`; default `24h`.
    #[schema(pattern = "^[0-9]{1,6}(s|m|h|d|w)$", example = "1h")]
    pub grace: Option<String>,
}

/// A key as the admin API shows it (never the key itself).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub name: String,
    /// The first characters of the key.
    pub prefix: String,
    pub team_id: Option<String>,
    pub user_id: Option<String>,
    pub allowed_models: Option<Vec<String>>,
    pub scopes: Option<Vec<String>>,
    pub limits: LimitsBody,
    pub budget: Option<BudgetBody>,
    pub metadata: serde_json::Value,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub replaced_by: Option<String>,
    pub created_at: i64,
    /// `active`, `revoked`, `expired` or `rotated` (still valid until `expires_at`).
    pub status: String,
}

impl KeyView {
    pub(crate) fn of(k: ApiKey, now: i64) -> Self {
        let status = if k.revoked_at.is_some() {
            "revoked"
        } else if k.expires_at.is_some_and(|e| e <= now) {
            "expired"
        } else if k.replaced_by.is_some() {
            "rotated"
        } else {
            "active"
        };
        KeyView {
            id: k.id,
            name: k.name,
            prefix: k.prefix,
            team_id: k.team_id,
            user_id: k.user_id,
            allowed_models: k.allowed_models,
            scopes: k.scopes,
            limits: k.limits.into(),
            budget: k.budget.map(Into::into),
            metadata: k.metadata,
            expires_at: k.expires_at,
            revoked_at: k.revoked_at,
            replaced_by: k.replaced_by,
            created_at: k.created_at,
            status: status.into(),
        }
    }
}

/// A newly created key: the only time the key itself is shown.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    /// The key (`pk-…`); store it now, it cannot be shown again.
    pub key: String,
    #[serde(flatten)]
    pub info: KeyView,
}

/// A team to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTeam {
    /// Not blank.
    #[schema(pattern = "[^ \t\r\n]")]
    pub name: String,
    pub limits: Option<LimitsBody>,
    pub budget: Option<BudgetBody>,
    pub metadata: Option<serde_json::Value>,
}

/// A team.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TeamView {
    pub id: String,
    pub name: String,
    pub limits: LimitsBody,
    pub budget: Option<BudgetBody>,
    pub metadata: serde_json::Value,
    pub created_at: i64,
}

impl From<Team> for TeamView {
    fn from(t: Team) -> Self {
        TeamView {
            id: t.id,
            name: t.name,
            limits: t.limits.into(),
            budget: t.budget.map(Into::into),
            metadata: t.metadata,
            created_at: t.created_at,
        }
    }
}

/// A user to create (the owner recorded on keys).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    #[schema(pattern = "@")]
    pub email: String,
    pub team_id: Option<String>,
}

/// A user.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub team_id: Option<String>,
    pub created_at: i64,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        UserView {
            id: u.id,
            email: u.email,
            team_id: u.team_id,
            created_at: u.created_at,
        }
    }
}

/// Aggregated usage of one group.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageView {
    /// The grouped values joined by `/`, or the bucket when only time is grouped.
    pub group: String,
    /// `YYYY-MM-DD` or `YYYY-MM-DDTHH:00Z` when grouped by time.
    pub bucket: Option<String>,
    /// The grouped values, in the order asked.
    pub keys: Vec<String>,
    pub requests: i64,
    /// Requests answered with a 4xx or 5xx, or broken off.
    pub errors: i64,
    pub avg_latency_ms: f64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_usd: f64,
}

/// Usage over a range of days.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    pub group_by: String,
    pub from: String,
    pub to: String,
    pub rows: Vec<UsageView>,
}
