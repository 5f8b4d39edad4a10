//! The rules in force: pylon.toml's and those made through the admin API (kept in the store,
//! read again every round so every instance has the same set).

use std::sync::{Arc, RwLock};

use pylon_config::Alert;
use pylon_store::{AlertRuleRow, Store};
use serde_json::Value;

use super::AlertError;

/// A rule and who made it through the API (`None`: pylon.toml).
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub alert: Alert,
    pub made_by: Option<String>,
}

/// The current set of rules.
pub(crate) struct RuleSet {
    /// The config file's: rules made through the API are checked against it.
    base: RwLock<Arc<pylon_config::Config>>,
    current: RwLock<Arc<Vec<Rule>>>,
    stored: tokio::sync::Mutex<Vec<AlertRuleRow>>,
}

/// One `[[alerts]]` entry given as JSON.
pub(crate) fn parse(body: &Value) -> Result<Alert, String> {
    let text = toml::to_string(body)
        .map_err(|e| format!("expected a JSON object like an [[alerts]] entry ({e})"))?;
    pylon_config::parse_alert(&text)
}

impl RuleSet {
    pub fn new(config: &pylon_config::Config) -> RuleSet {
        RuleSet {
            base: RwLock::new(Arc::new(config.clone())),
            current: RwLock::new(Arc::new(
                config
                    .alerts
                    .iter()
                    .map(|a| Rule {
                        alert: a.clone(),
                        made_by: None,
                    })
                    .collect(),
            )),
            stored: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    /// The rules in force.
    pub fn current(&self) -> Arc<Vec<Rule>> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Problems of `extra` added to the rules in force (empty: it fits).
    fn check(&self, rules: &[Alert]) -> Vec<String> {
        let mut config = (*self.base()).clone();
        config.alerts = rules.to_vec();
        pylon_config::check(&config)
    }

    /// Reads the API's rules; when they changed, rebuilds the set (a stored rule that does not
    /// fit this instance's config is left out here, with a warning).
    pub async fn refresh(&self, store: &Store) -> Result<(), AlertError> {
        let mut last = self.stored.lock().await;
        let stored = store.alert_rules().await?;
        if *last == stored {
            return Ok(());
        }
        self.rebuild(&stored);
        *last = stored;
        Ok(())
    }

    /// Takes a reloaded config's rules (with the API's as last read).
    pub async fn reconfigure(&self, config: &pylon_config::Config) {
        let last = self.stored.lock().await;
        *self
            .base
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(config.clone());
        self.rebuild(&last);
    }

    fn base(&self) -> Arc<pylon_config::Config> {
        self.base
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The file's rules and the stored ones that fit beside them, put in force.
    fn rebuild(&self, stored: &[AlertRuleRow]) {
        let mut rules: Vec<Rule> = self
            .base()
            .alerts
            .iter()
            .map(|a| Rule {
                alert: a.clone(),
                made_by: None,
            })
            .collect();
        for row in stored {
            let fits = serde_json::from_str::<Value>(&row.definition)
                .map_err(|e| e.to_string())
                .and_then(|v| parse(&v))
                .and_then(|a| {
                    let mut all: Vec<Alert> = rules.iter().map(|r| r.alert.clone()).collect();
                    all.push(a.clone());
                    let problems = self.check(&all);
                    if problems.is_empty() {
                        Ok(a)
                    } else {
                        Err(problems.join("; "))
                    }
                });
            match fits {
                Ok(a) => rules.push(Rule {
                    alert: a,
                    made_by: Some(row.created_by.clone()),
                }),
                Err(e) => {
                    tracing::warn!(target: "pylon::alert", rule = %row.name, error = %e, "stored alert rule does not fit this instance's config; ignored here");
                }
            }
        }
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(rules);
    }

    /// Checks and stores a rule made through the API.
    pub async fn create(
        &self,
        store: &Store,
        body: &Value,
        actor: &str,
        now: i64,
    ) -> Result<String, AlertError> {
        let alert = parse(body).map_err(AlertError::Invalid)?;
        let name = alert.name.get_ref().clone();
        let current = self.current();
        if current.iter().any(|r| r.alert.name.get_ref() == &name) {
            return Err(AlertError::Conflict(format!(
                "an alert rule named `{name}` exists: choose another name, or delete it first"
            )));
        }
        let mut all: Vec<Alert> = current.iter().map(|r| r.alert.clone()).collect();
        all.push(alert);
        let problems = self.check(&all);
        if !problems.is_empty() {
            return Err(AlertError::Invalid(problems.join("; ")));
        }
        let made = store
            .add_alert_rule(&AlertRuleRow {
                name: name.clone(),
                definition: body.to_string(),
                created_at: now,
                created_by: actor.to_owned(),
            })
            .await?;
        if !made {
            return Err(AlertError::Conflict(format!(
                "an alert rule named `{name}` was just made elsewhere"
            )));
        }
        self.refresh(store).await?;
        Ok(name)
    }

    /// Forgets a rule made through the API.
    pub async fn delete(&self, store: &Store, name: &str) -> Result<(), AlertError> {
        match self
            .current()
            .iter()
            .find(|r| r.alert.name.get_ref() == name)
        {
            None => return Err(AlertError::Unknown(name.to_owned())),
            Some(r) if r.made_by.is_none() => {
                return Err(AlertError::Conflict(format!(
                    "alert rule `{name}` is declared in pylon.toml: remove it there"
                )))
            }
            Some(_) => {}
        }
        store.delete_alert_rule(name).await?;
        self.refresh(store).await
    }
}
