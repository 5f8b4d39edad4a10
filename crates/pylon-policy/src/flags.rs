//! Feature flags in flagd's JSON format, evaluated as flagd does: `state`, `variants`,
//! `defaultVariant`, `targeting` in JSON Logic with flagd's operators (`fractional`, `sem_ver`,
//! `starts_with`, `ends_with`) and shared rules through `$evaluators` / `$ref`. Targeting is
//! compiled once when a set is loaded; evaluation does no I/O.

use std::collections::BTreeMap;

use datalogic_rs::{Engine, Logic};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Why a flag set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("flag definitions are not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("flag `{flag}`: {problem}")]
    Flag { flag: String, problem: String },
}

/// Why one evaluation failed, as OpenFeature names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    FlagNotFound,
    ParseError,
    TargetingKeyMissing,
    InvalidContext,
    General,
}

impl ErrorCode {
    /// The code's OpenFeature name.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::FlagNotFound => "FLAG_NOT_FOUND",
            ErrorCode::ParseError => "PARSE_ERROR",
            ErrorCode::TargetingKeyMissing => "TARGETING_KEY_MISSING",
            ErrorCode::InvalidContext => "INVALID_CONTEXT",
            ErrorCode::General => "GENERAL",
        }
    }
}

/// A failed evaluation: the code and what went wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalError {
    pub code: ErrorCode,
    pub details: String,
}

/// A flag's value for one context.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolution {
    /// `None` when the caller's code default applies (no default variant).
    pub value: Option<Value>,
    pub variant: Option<String>,
    /// `STATIC`, `TARGETING_MATCH`, `DEFAULT` or `DISABLED`.
    pub reason: &'static str,
    pub metadata: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSet {
    #[serde(default)]
    flags: BTreeMap<String, RawFlag>,
    #[serde(default, rename = "$evaluators")]
    evaluators: Map<String, Value>,
    #[serde(default)]
    metadata: Map<String, Value>,
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct RawFlag {
    state: String,
    variants: Map<String, Value>,
    #[serde(default)]
    default_variant: Option<String>,
    #[serde(default)]
    targeting: Option<Value>,
    #[serde(default)]
    metadata: Map<String, Value>,
}

/// One compiled flag.
struct Flag {
    enabled: bool,
    variants: Map<String, Value>,
    default_variant: Option<String>,
    targeting: Option<Logic>,
    metadata: Map<String, Value>,
    /// The definition as given (for the admin API and the store).
    source: Value,
}

/// A loaded set of flags, ready to evaluate.
pub struct FlagSet {
    engine: Engine,
    flags: BTreeMap<String, Flag>,
}

impl std::fmt::Debug for FlagSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlagSet")
            .field("flags", &self.flags.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for FlagSet {
    fn default() -> Self {
        FlagSet {
            engine: Engine::new(),
            flags: BTreeMap::new(),
        }
    }
}

/// Replaces every `{"$ref": name}` with the named evaluator (which may refer to others).
fn resolve_refs(v: &Value, evaluators: &Map<String, Value>, depth: u8) -> Result<Value, String> {
    if depth > 16 {
        return Err("$ref nests more than 16 deep (a cycle?)".into());
    }
    match v {
        Value::Object(o) if o.len() == 1 && o.contains_key("$ref") => {
            let name = o["$ref"].as_str().unwrap_or_default();
            let target = evaluators
                .get(name)
                .ok_or_else(|| format!("$ref to unknown evaluator `{name}`"))?;
            resolve_refs(target, evaluators, depth + 1)
        }
        Value::Object(o) => {
            let mut out = Map::with_capacity(o.len());
            for (k, x) in o {
                out.insert(k.clone(), resolve_refs(x, evaluators, depth)?);
            }
            Ok(Value::Object(out))
        }
        Value::Array(a) => a
            .iter()
            .map(|x| resolve_refs(x, evaluators, depth))
            .collect::<Result<_, _>>()
            .map(Value::Array),
        other => Ok(other.clone()),
    }
}

impl FlagSet {
    /// Parses and compiles flags in flagd's format (`{"flags": {...}, "$evaluators": {...}}`).
    pub fn parse(json: &str) -> Result<FlagSet, LoadError> {
        let raw: RawSet = serde_json::from_str(json)?;
        let mut set = FlagSet::default();
        for (key, flag) in raw.flags {
            let mut metadata = raw.metadata.clone();
            metadata.extend(flag.metadata.clone());
            set.insert_raw(key, flag, &raw.evaluators, metadata)?;
        }
        Ok(set)
    }

    /// Adds (or replaces) one flag given as a flagd flag definition.
    pub fn insert(&mut self, key: &str, definition: &Value) -> Result<(), LoadError> {
        let flag: RawFlag =
            serde_json::from_value(definition.clone()).map_err(|e| LoadError::Flag {
                flag: key.to_owned(),
                problem: e.to_string(),
            })?;
        let metadata = flag.metadata.clone();
        self.insert_raw(key.to_owned(), flag, &Map::new(), metadata)
    }

    /// Removes a flag; whether it existed.
    pub fn remove(&mut self, key: &str) -> bool {
        self.flags.remove(key).is_some()
    }

    fn insert_raw(
        &mut self,
        key: String,
        flag: RawFlag,
        evaluators: &Map<String, Value>,
        metadata: Map<String, Value>,
    ) -> Result<(), LoadError> {
        let bad = |problem: String| LoadError::Flag {
            flag: key.clone(),
            problem,
        };
        let enabled = match flag.state.as_str() {
            "ENABLED" => true,
            "DISABLED" => false,
            other => return Err(bad(format!("state `{other}` must be ENABLED or DISABLED"))),
        };
        if let Some(d) = &flag.default_variant {
            if !flag.variants.contains_key(d) {
                return Err(bad(format!(
                    "defaultVariant `{d}` is not one of its variants"
                )));
            }
        }
        let targeting = match &flag.targeting {
            None => None,
            Some(Value::Object(o)) if o.is_empty() => None,
            Some(t) => {
                let resolved = resolve_refs(t, evaluators, 0).map_err(bad)?;
                Some(
                    self.engine
                        .compile(&resolved)
                        .map_err(|e| bad(format!("targeting does not compile: {e}")))?,
                )
            }
        };
        let source = serde_json::json!({
            "state": flag.state,
            "variants": flag.variants,
            "defaultVariant": flag.default_variant,
            "targeting": flag.targeting.clone().unwrap_or(Value::Object(Map::new())),
            "metadata": flag.metadata,
        });
        self.flags.insert(
            key,
            Flag {
                enabled,
                variants: flag.variants,
                default_variant: flag.default_variant,
                targeting,
                metadata,
                source,
            },
        );
        Ok(())
    }

    /// Flag keys, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.flags.keys().map(String::as_str)
    }

    /// Number of flags.
    pub fn len(&self) -> usize {
        self.flags.len()
    }

    /// Whether there are no flags.
    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }

    /// A flag's definition as given.
    pub fn definition(&self, key: &str) -> Option<&Value> {
        self.flags.get(key).map(|f| &f.source)
    }

    /// `key` resolved to `variant` (`None`: its default variant) with `reason`, for a split
    /// decided outside the flag (a guarded flag's rollout); `None` when the flag is unknown or
    /// disabled.
    pub fn split(
        &self,
        key: &str,
        variant: Option<&str>,
        reason: &'static str,
    ) -> Option<Resolution> {
        let flag = self.flags.get(key).filter(|f| f.enabled)?;
        let name = variant.or(flag.default_variant.as_deref());
        Some(Resolution {
            value: name.and_then(|n| flag.variants.get(n).cloned()),
            variant: name.map(str::to_owned),
            reason,
            metadata: flag.metadata.clone(),
        })
    }

    /// Evaluates `key` for `context` (an object; `targetingKey` identifies the subject).
    pub fn evaluate(
        &self,
        key: &str,
        context: &Map<String, Value>,
    ) -> Result<Resolution, EvalError> {
        let flag = self.flags.get(key).ok_or_else(|| EvalError {
            code: ErrorCode::FlagNotFound,
            details: format!("flag `{key}` does not exist"),
        })?;
        let variant = |name: Option<&str>, reason| Resolution {
            value: name.and_then(|n| flag.variants.get(n).cloned()),
            variant: name.map(str::to_owned),
            reason,
            metadata: flag.metadata.clone(),
        };
        // Disabled: the default variant whatever the targeting says, as most flag systems do
        // (and what today's OFREP providers can carry: they expect a value and a variant).
        if !flag.enabled {
            return Ok(variant(flag.default_variant.as_deref(), "DISABLED"));
        }
        let Some(targeting) = &flag.targeting else {
            return Ok(variant(flag.default_variant.as_deref(), "STATIC"));
        };
        let mut data = context.clone();
        data.insert(
            "$flagd".into(),
            serde_json::json!({"flagKey": key, "timestamp": unix_seconds()}),
        );
        let data = Value::Object(data);
        let arena = datalogic_rs::bumpalo::Bump::new();
        let out = self
            .engine
            .evaluate(targeting, &data, &arena)
            .map_err(|e| EvalError {
                code: ErrorCode::General,
                details: format!("targeting of `{key}` failed: {e}"),
            })?;
        let chosen = if out.is_null() {
            None
        } else if let Some(b) = out.as_bool() {
            Some(b.to_string())
        } else if let Some(s) = out.as_str() {
            Some(s.to_owned())
        } else {
            return Err(EvalError {
                code: ErrorCode::General,
                details: format!("targeting of `{key}` returned neither a variant name nor null"),
            });
        };
        match chosen {
            None => Ok(variant(flag.default_variant.as_deref(), "DEFAULT")),
            Some(name) if flag.variants.contains_key(&name) => {
                Ok(variant(Some(&name), "TARGETING_MATCH"))
            }
            Some(name) => Err(EvalError {
                code: ErrorCode::General,
                details: format!("targeting of `{key}` chose `{name}`, which is not a variant"),
            }),
        }
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
