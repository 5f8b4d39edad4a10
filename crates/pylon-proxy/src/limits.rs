//! Limits: admission control. Builds the buckets a request must pass (per IP, key, team, user,
//! model; requests and tokens), its concurrency slot and budget caps; pylon-state decides.

use std::net::IpAddr;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use pylon_state::{Admission, Bucket, Cap, Rate, Slot, Verdict};
use pylon_types::day::{civil_day, civil_month};
use pylon_types::{BudgetPeriod, Principal, Quota};

use crate::context::Call;
use crate::gateway::Gateway;
use crate::log::{Accounting, Admitted, Record};
use crate::snapshot::Model;
use crate::ProxyError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Requests,
    Tokens,
}

struct Named {
    bucket: Bucket,
    unit: Unit,
    scope: String,
}

fn period_tag(period: BudgetPeriod, now: i64) -> (String, Duration) {
    match period {
        BudgetPeriod::Daily => (
            format!("d{}", civil_day(now)),
            Duration::from_secs(2 * 86_400),
        ),
        BudgetPeriod::Monthly => (
            format!("m{}", civil_month(now)),
            Duration::from_secs(32 * 86_400),
        ),
        BudgetPeriod::Total => ("all".to_owned(), Duration::ZERO),
    }
}

fn period_name(period: BudgetPeriod) -> &'static str {
    match period {
        BudgetPeriod::Daily => "day",
        BudgetPeriod::Monthly => "month",
        BudgetPeriod::Total => "lifetime",
    }
}

/// The spend counter key of a key's or team's budget for the current period, and its lifetime.
pub fn spend_key(owner: &str, period: BudgetPeriod, now: i64) -> (String, Duration) {
    let (tag, ttl) = period_tag(period, now);
    (format!("{owner}:spend:{tag}"), ttl)
}

/// The per-IP limit, when in force; it runs before auth, so a flood costs no key lookup.
pub(crate) async fn per_ip(gw: &Gateway, ip: Option<IpAddr>) -> Result<(), ProxyError> {
    match (ip, gw.settings().ip_rpm) {
        (Some(ip), Some(rpm)) => admit(gw, None, Some((ip, rpm)), None, || 0).await.map(drop),
        _ => Ok(()),
    }
}

/// Takes the call's limits (key, team, user, model; requests and estimated tokens; budgets)
/// and leaves their settlement in the record; returns the `x-ratelimit-*` headers.
pub(crate) async fn admit_call(
    gw: &Gateway,
    principal: Option<&Principal>,
    model: &Model,
    call: &Call,
    record: &mut Record,
) -> Result<Vec<(HeaderName, HeaderValue)>, ProxyError> {
    let step_start = gw.tracer.is_some().then(std::time::SystemTime::now);
    let admitted = admit(gw, principal, None, Some(model), || {
        estimate_tokens(&call.body)
    })
    .await;
    record.step("limits", step_start, admitted.as_ref().err());
    let mut admitted = admitted?;
    let headers = std::mem::take(&mut admitted.headers);
    record.acct = Some(Accounting {
        admitted,
        input_estimate: (call.body.len() as u64).div_ceil(4),
    });
    Ok(headers)
}

/// Checks and takes every limit that applies to this request.
pub(crate) async fn admit(
    gw: &Gateway,
    principal: Option<&Principal>,
    ip: Option<(IpAddr, u64)>,
    model: Option<&Model>,
    tokens: impl FnOnce() -> u64,
) -> Result<Admitted, ProxyError> {
    let now = crate::auth::unix_now();
    let mut named = Vec::new();
    let mut add = |key: String, limit: u64, unit: Unit, scope: String| {
        named.push(Named {
            bucket: Bucket {
                key,
                rate: Rate::per_minute(limit),
                cost: 1,
            },
            unit,
            scope,
        });
    };
    if let Some((ip, limit @ 1..)) = ip {
        add(
            format!("ip:{ip}"),
            limit,
            Unit::Requests,
            format!("client IP {ip}"),
        );
    }
    let mut quota = |owner: String, scope: String, q: &Quota| {
        if let Some(rpm) = q.rpm {
            add(format!("{owner}:rpm"), rpm, Unit::Requests, scope.clone());
        }
        if let Some(tpm) = q.tpm {
            add(format!("{owner}:tpm"), tpm, Unit::Tokens, scope);
        }
    };
    let mut slots = Vec::new();
    let mut caps = Vec::new();
    let mut cap_scopes = Vec::new();
    if let Some(p) = principal {
        quota(
            format!("k:{}", p.key_id),
            format!("key `{}`", p.key_name),
            &p.key_quota,
        );
        if let Some(team) = &p.team_id {
            quota(format!("t:{team}"), format!("team `{team}`"), &p.team_quota);
        }
        if let (Some(user), limit @ 1..) = (&p.user_id, gw.settings().limits.user_rpm) {
            add(
                format!("u:{user}:rpm"),
                limit,
                Unit::Requests,
                format!("user `{user}`"),
            );
        }
        if let Some(max) = p.key_quota.max_concurrent {
            slots.push(Slot {
                key: format!("k:{}:conc", p.key_id),
                max,
            });
        }
        let budgets = [
            (
                format!("k:{}", p.key_id),
                format!("key `{}`", p.key_name),
                p.key_quota.budget,
            ),
            (
                format!("t:{}", p.team_id.clone().unwrap_or_default()),
                format!("team `{}`", p.team_id.clone().unwrap_or_default()),
                p.team_quota.budget,
            ),
        ];
        for (owner, scope, budget) in budgets {
            if let Some((usd, period)) = budget {
                let (key, ttl) = spend_key(&owner, period, now);
                caps.push((
                    Cap {
                        key,
                        limit_micros: (usd * 1e6) as i64,
                    },
                    ttl,
                ));
                cap_scopes.push(format!(
                    "the {} budget of ${usd:.2} of {scope}",
                    period_name(period)
                ));
            }
        }
    }
    if let Some(m) = model {
        if let Some(rpm) = m.rpm {
            add(
                format!("m:{}:rpm", m.name),
                rpm,
                Unit::Requests,
                format!("model `{}`", m.name),
            );
        }
        if let Some(tpm) = m.tpm {
            add(
                format!("m:{}:tpm", m.name),
                tpm,
                Unit::Tokens,
                format!("model `{}`", m.name),
            );
        }
    }
    let estimated = if named.iter().any(|n| n.unit == Unit::Tokens) {
        tokens()
    } else {
        0
    };
    for n in named.iter_mut().filter(|n| n.unit == Unit::Tokens) {
        n.bucket.cost = estimated.max(1);
    }
    let admission = Admission {
        buckets: named.iter().map(|n| n.bucket.clone()).collect(),
        slots: slots.clone(),
        caps: caps.iter().map(|(c, _)| c.clone()).collect(),
    };
    let (verdict, origin) = gw
        .limiter
        .admit_at(&admission, now_ms())
        .await
        .map_err(|_| ProxyError::LimitsUnavailable)?;
    match verdict {
        Verdict::Allowed(remaining) => Ok(Admitted {
            release: slots.into_iter().map(|s| s.key).collect(),
            token_buckets: named
                .iter()
                .filter(|n| n.unit == Unit::Tokens)
                .map(|n| (n.bucket.key.clone(), n.bucket.rate))
                .collect(),
            estimated_tokens: estimated,
            caps: caps.into_iter().map(|(c, ttl)| (c.key, ttl)).collect(),
            headers: rate_headers(&named, &remaining),
            origin,
        }),
        Verdict::Limited {
            index,
            retry_after_ms,
            reset_ms,
        } => {
            let n = &named[index];
            reject(gw, "rate_limited", &n.bucket.key);
            let unit = if n.unit == Unit::Tokens {
                "tokens"
            } else {
                "requests"
            };
            let retry_after = Duration::from_millis(retry_after_ms.ceil() as u64);
            let mut headers = rate_headers(&named, &[]);
            headers.push((
                HeaderName::from_static("retry-after-ms"),
                header_value(retry_after.as_millis().to_string()),
            ));
            let suffix = if n.unit == Unit::Tokens {
                "tokens"
            } else {
                "requests"
            };
            push_trio(&mut headers, suffix, n.bucket.rate.limit, 0, reset_ms);
            Err(ProxyError::RateLimited {
                message: format!(
                    "rate limit of {} {unit} per minute for {} reached; retry in {:.1}s",
                    n.bucket.rate.limit,
                    n.scope,
                    retry_after.as_secs_f64()
                ),
                retry_after,
                headers,
            })
        }
        Verdict::Busy { .. } => {
            reject(gw, "concurrency", "k");
            Err(ProxyError::RateLimited {
            message:
                "too many requests in flight for this key (max_concurrent); retry when one finishes"
                    .into(),
            retry_after: Duration::from_secs(1),
            headers: Vec::new(),
        })
        }
        Verdict::OverBudget {
            index,
            spent_micros,
        } => {
            reject(
                gw,
                "budget",
                caps.get(index).map_or("", |(c, _)| c.key.as_str()),
            );
            Err(ProxyError::OverBudget(format!(
                "{} is spent (${:.4} used); raise the budget or wait for the next period",
                cap_scopes.get(index).map_or("the budget", String::as_str),
                spent_micros as f64 / 1e6
            )))
        }
    }
}

/// Counts a refusal by reason and by the kind of owner of the state key that refused.
fn reject(gw: &Gateway, reason: &str, state_key: &str) {
    let scope = match state_key.split(':').next() {
        Some("ip") => "ip",
        Some("k") => "key",
        Some("t") => "team",
        Some("u") => "user",
        Some("m") => "model",
        _ => "other",
    };
    gw.metrics
        .rejected
        .with_label_values(&[reason, scope])
        .inc();
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn header_value(s: String) -> HeaderValue {
    HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static("0"))
}

fn push_trio(
    h: &mut Vec<(HeaderName, HeaderValue)>,
    suffix: &str,
    limit: u64,
    remaining: u64,
    reset_ms: f64,
) {
    let reset = if reset_ms < 1000.0 {
        format!("{}ms", reset_ms.ceil() as u64)
    } else {
        format!("{:.0}s", (reset_ms / 1000.0).ceil())
    };
    for (name, value) in [
        ("limit", limit.to_string()),
        ("remaining", remaining.to_string()),
        ("reset", reset),
    ] {
        if let Ok(n) = HeaderName::from_bytes(format!("x-ratelimit-{name}-{suffix}").as_bytes()) {
            h.push((n, header_value(value)));
        }
    }
}

/// The OpenAI-style trio for the tightest request bucket and the tightest token bucket.
fn rate_headers(
    named: &[Named],
    remaining: &[pylon_state::Remaining],
) -> Vec<(HeaderName, HeaderValue)> {
    let mut h = Vec::new();
    for (unit, suffix) in [(Unit::Requests, "requests"), (Unit::Tokens, "tokens")] {
        let tightest = named
            .iter()
            .zip(remaining)
            .filter(|(n, _)| n.unit == unit)
            .min_by_key(|(_, r)| r.remaining);
        if let Some((n, r)) = tightest {
            push_trio(&mut h, suffix, n.bucket.rate.limit, r.remaining, r.reset_ms);
        }
    }
    h
}

/// The client's address: the peer, or, when the peer is a trusted proxy, the right-most
/// `X-Forwarded-For` entry that is not itself a trusted proxy (so clients cannot spoof it).
pub(crate) fn client_ip(
    parts: &http::request::Parts,
    trusted: &[(std::net::IpAddr, u8)],
) -> Option<std::net::IpAddr> {
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()?
        .0
        .ip();
    let is_trusted = |ip: std::net::IpAddr| {
        trusted
            .iter()
            .any(|net| pylon_config::cidr_contains(*net, ip))
    };
    if !is_trusted(peer) {
        return Some(peer);
    }
    let forwarded: Vec<std::net::IpAddr> = parts
        .headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|ip| ip.trim().parse().ok())
        .collect();
    Some(
        forwarded
            .into_iter()
            .rev()
            .find(|ip| !is_trusted(*ip))
            .unwrap_or(peer),
    )
}

/// A cheap token estimate for admission: a quarter of the body's bytes (JSON punctuation makes
/// it an over-estimate for text) plus the requested output cap. No tokenizer runs on the request
/// path; the provider's reported usage corrects the buckets when the request ends.
pub(crate) fn estimate_tokens(body: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Caps {
        #[serde(default)]
        max_tokens: Option<u64>,
        #[serde(default)]
        max_completion_tokens: Option<u64>,
        /// The Responses API's name for it.
        #[serde(default)]
        max_output_tokens: Option<u64>,
    }
    // Unknown fields (the messages) are skipped by the parser without being built.
    let output = serde_json::from_slice::<Caps>(body)
        .ok()
        .and_then(|c| {
            c.max_completion_tokens
                .or(c.max_tokens)
                .or(c.max_output_tokens)
        })
        .unwrap_or(0);
    (body.len() as u64).div_ceil(4) + output
}

/// Counts a failed authentication against its address; `Some` 429 once the address is past
/// `failed_auth_rpm`.
pub(crate) async fn failed_auth(gw: &Gateway, ip: IpAddr) -> Option<ProxyError> {
    let rpm = gw.settings().limits.failed_auth_rpm;
    let admission = Admission {
        buckets: vec![Bucket {
            key: format!("fa:{ip}"),
            rate: Rate::per_minute(rpm),
            cost: 1,
        }],
        ..Admission::default()
    };
    match gw.limiter.admit(&admission, now_ms()).await {
        Ok(Verdict::Limited { retry_after_ms, .. }) => {
            reject(gw, "failed_auth", "ip");
            Some(ProxyError::RateLimited {
                message: format!(
                    "more than {rpm} failed authentications per minute from {ip}; retry later with a valid key"
                ),
                retry_after: Duration::from_millis(retry_after_ms.ceil() as u64),
                headers: Vec::new(),
            })
        }
        _ => None,
    }
}

/// A per-client limit on an app route: `None` when allowed, else the 429 to send.
pub(crate) async fn admit_route(
    gw: &Gateway,
    prefix: &str,
    rpm: u64,
    ip: Option<IpAddr>,
) -> Option<axum::response::Response> {
    let ip = ip?;
    let bucket = Bucket {
        key: format!("r:{prefix}:{ip}"),
        rate: Rate::per_minute(rpm),
        cost: 1,
    };
    let admission = Admission {
        buckets: vec![bucket],
        ..Admission::default()
    };
    match gw.limiter.admit(&admission, now_ms()).await {
        Ok(Verdict::Limited { retry_after_ms, .. }) => {
            let secs = (retry_after_ms / 1000.0).ceil().max(1.0) as u64;
            let mut resp = axum::response::Response::new(axum::body::Body::from(format!(
                "rate limit of {rpm} requests per minute on {prefix} reached; retry in {secs}s\n"
            )));
            *resp.status_mut() = http::StatusCode::TOO_MANY_REQUESTS;
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, header_value(secs.to_string()));
            Some(resp)
        }
        // Unavailable shared state on an app route: let the request through rather than take
        // the application down with the limiter.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::estimate_tokens;

    #[test]
    fn the_output_cap_counts_under_each_apis_name() {
        for body in [
            r#"{"max_tokens":100}"#,
            r#"{"max_completion_tokens":100}"#,
            r#"{"max_output_tokens":100}"#,
        ] {
            assert_eq!(
                estimate_tokens(body.as_bytes()),
                body.len().div_ceil(4) as u64 + 100
            );
        }
        assert_eq!(estimate_tokens(b"{}"), 1);
    }
}
