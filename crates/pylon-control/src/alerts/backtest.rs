//! Backtests: a rule replayed over a series given as points (CSV or JSON) or read back from
//! the store's hourly rollups, with the live evaluator's decision code.

use std::collections::BTreeMap;

use pylon_config::{Alert, AlertKind, Direction};
use pylon_policy::alert::anomaly;
use pylon_policy::alert::backtest::{replay, Condition, Point, Replay};
use pylon_store::{Bucket, Dim, Store, StoreError};

/// Why a backtest could not run.
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The decision a rule takes on each point.
pub fn condition(rule: &Alert) -> Result<Condition, BacktestError> {
    Ok(match rule.kind {
        AlertKind::Threshold | AlertKind::Health => Condition::Threshold {
            above: rule.above,
            below: rule.below,
        },
        AlertKind::Anomaly => Condition::Anomaly(anomaly::Params {
            score: rule.score,
            direction: match rule.direction {
                Direction::Up => anomaly::Direction::Up,
                Direction::Down => anomaly::Direction::Down,
                Direction::Both => anomaly::Direction::Both,
            },
            n: rule.n_of_m[0],
            m: rule.n_of_m[1],
            min_rate: rule.min_rate,
        }),
        AlertKind::BurnRate => Condition::BurnRate {
            objective: rule.objective.unwrap_or(0.999),
        },
        AlertKind::Budget => {
            return Err(BacktestError::Invalid(
                "budget rules watch spend in the store; they are not backtested".into(),
            ))
        }
    })
}

/// Replays a rule over points.
pub fn run(rule: &Alert, points: &[Point]) -> Result<Replay, BacktestError> {
    let mut points = points.to_vec();
    points.sort_by_key(|p| p.t_ms);
    let for_ms = rule.for_.map_or(0, |d| d.as_millis() as u64);
    Ok(replay(&condition(rule)?, for_ms, &points))
}

/// Reads `timestamp,value[,traffic]` lines (a header line is skipped): unix seconds or
/// milliseconds, or RFC 3339 times. A burn-rate rule's value is the bad events and traffic the
/// total of each point.
pub fn parse_csv(text: &str) -> Result<Vec<Point>, BacktestError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split(',').map(str::trim).collect();
        let value = cols.get(1).and_then(|v| v.parse::<f64>().ok());
        let Some(value) = value else {
            if i == 0 {
                continue;
            }
            return Err(BacktestError::Invalid(format!(
                "line {}: expected timestamp,value[,traffic]",
                i + 1
            )));
        };
        let t_ms = timestamp(cols[0]).ok_or_else(|| {
            BacktestError::Invalid(format!(
                "line {}: `{}` is not a unix time or an RFC 3339 time",
                i + 1,
                cols[0]
            ))
        })?;
        let traffic = match cols.get(2) {
            Some(t) => t.parse().map_err(|_| {
                BacktestError::Invalid(format!("line {}: traffic `{t}` is not a number", i + 1))
            })?,
            None => f64::INFINITY,
        };
        out.push(Point {
            t_ms,
            value,
            traffic,
        });
    }
    Ok(out)
}

fn timestamp(s: &str) -> Option<u64> {
    if let Ok(n) = s.parse::<f64>() {
        // Seconds until the year 5138; milliseconds beyond.
        return Some(if n < 1e11 { n * 1000.0 } else { n } as u64);
    }
    let t = humantime::parse_rfc3339_weak(s).ok()?;
    Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64)
}

/// A rule's series read back from the store's hourly rollups between two unix times: one point
/// per hour (kept per model and provider, so only those labels narrow it).
pub async fn stored(
    store: &Store,
    rule: &Alert,
    from_s: i64,
    to_s: i64,
) -> Result<Vec<Point>, BacktestError> {
    if let Some(l) = rule
        .labels
        .keys()
        .find(|l| !["model", "provider"].contains(&l.as_str()))
    {
        return Err(BacktestError::Invalid(format!(
            "history is kept per model and provider: label `{l}` cannot narrow it"
        )));
    }
    let series = rule
        .series
        .as_ref()
        .map_or("requests", |s| s.get_ref().as_str());
    let burn = rule.kind == AlertKind::BurnRate;
    if !burn && !["requests", "errors", "error_rate", "tokens", "cost"].contains(&series) {
        return Err(BacktestError::Invalid(format!(
            "history keeps requests, errors, error_rate, tokens and cost, not `{series}`"
        )));
    }
    let rows = store
        .usage_report(&[Dim::Model, Dim::Provider], Bucket::Hour, from_s, to_s)
        .await?;
    let mut hours: BTreeMap<i64, (f64, f64, f64, f64)> = BTreeMap::new();
    for r in rows {
        let matches = rule.labels.iter().all(|(k, v)| match k.as_str() {
            "model" => r.keys.first() == Some(v),
            _ => r.keys.get(1) == Some(v),
        });
        if !matches {
            continue;
        }
        let e = hours.entry(r.bucket.unwrap_or(0)).or_default();
        e.0 += r.requests as f64;
        e.1 += r.errors as f64;
        e.2 += (r.input_tokens + r.output_tokens) as f64;
        e.3 += r.cost_usd;
    }
    Ok(hours
        .into_iter()
        .filter_map(|(hour, (requests, errors, tokens, cost))| {
            let value = match series {
                _ if burn => errors,
                "requests" => requests / 3600.0,
                "errors" => errors / 3600.0,
                "error_rate" if requests > 0.0 => errors / requests,
                "error_rate" => return None,
                "tokens" => tokens / 3600.0,
                _ => cost,
            };
            Some(Point {
                t_ms: hour as u64 * 1000,
                value,
                traffic: if burn { requests } else { requests / 3600.0 },
            })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_takes_seconds_milliseconds_and_rfc3339_and_says_where_it_is_wrong() {
        let p = parse_csv(
            "timestamp,value\n1700000000,1.5\n1700000010000,2,30\n2023-11-14T22:13:40Z,3\n",
        )
        .unwrap();
        assert_eq!(
            p.iter().map(|p| p.t_ms).collect::<Vec<_>>(),
            [1_700_000_000_000, 1_700_000_010_000, 1_700_000_020_000]
        );
        assert_eq!(p[1].traffic, 30.0);
        let e = parse_csv("1700000000,1\nyesterday,2\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
