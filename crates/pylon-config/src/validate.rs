//! Checks the parser cannot make: names unique, references resolvable, URLs usable.

use std::collections::HashSet;

use crate::{Config, Strategy};

/// Every problem found, each with the byte offset it points at.
pub(crate) fn check(config: &Config) -> Vec<(usize, String)> {
    let mut problems = Vec::new();
    let mut providers = HashSet::new();
    for p in &config.providers {
        let name = p.name.get_ref();
        if !providers.insert(name.as_str()) {
            problems.push((
                p.name.span().start,
                format!("provider `{name}` is defined twice"),
            ));
        }
        if name.is_empty() || name.contains('/') {
            problems.push((
                p.name.span().start,
                format!("provider name `{name}` must be non-empty and contain no `/`"),
            ));
        }
        if p.http2 && p.connections == 0 {
            problems.push((
                p.name.span().start,
                format!("provider `{name}`: connections must be at least 1"),
            ));
        }
        for h in &p.forward_headers {
            let lower = h.to_ascii_lowercase();
            if http_header_name(&lower).is_none()
                || [
                    "authorization",
                    "x-api-key",
                    "x-goog-api-key",
                    "cookie",
                    "host",
                ]
                .contains(&lower.as_str())
            {
                problems.push((
                    p.name.span().start,
                    format!("provider `{name}`: forward_headers may not contain `{h}` (not a header name, or a credential)"),
                ));
            }
        }
        if let Some(url) = &p.base_url {
            if let Some(why) = bad_url(url.get_ref()) {
                problems.push((
                    url.span().start,
                    format!("base_url `{}` {why}", url.get_ref()),
                ));
            }
        }
    }
    let models: HashSet<&str> = config
        .models
        .iter()
        .map(|m| m.name.get_ref().as_str())
        .collect();
    let mut seen = HashSet::new();
    for m in &config.models {
        let name = m.name.get_ref();
        if !seen.insert(name.as_str()) {
            problems.push((
                m.name.span().start,
                format!("model `{name}` is defined twice"),
            ));
        }
        if m.targets.get_ref().is_empty() {
            problems.push((
                m.targets.span().start,
                format!("model `{name}` has no targets; add at least one {{ provider, model }}"),
            ));
        }
        for t in m.targets.get_ref() {
            let p = t.provider.get_ref();
            if !providers.contains(p.as_str()) {
                problems.push((
                    t.provider.span().start,
                    format!("model `{name}` points at unknown provider `{p}`; define it under [[providers]]"),
                ));
            }
        }
        if m.strategy == Strategy::Weighted
            && !m.targets.get_ref().is_empty()
            && m.targets.get_ref().iter().all(|t| t.weight == 0)
        {
            problems.push((
                m.targets.span().start,
                format!("model `{name}` is weighted but every target has weight 0"),
            ));
        }
        for f in &m.fallbacks {
            let f_name = f.get_ref();
            if f_name == name {
                problems.push((
                    f.span().start,
                    format!("model `{name}` lists itself as a fallback"),
                ));
            } else if !models.contains(f_name.as_str()) {
                problems.push((
                    f.span().start,
                    format!("fallback `{f_name}` of model `{name}` is not a defined model"),
                ));
            }
        }
    }
    let mut prefixes = HashSet::new();
    for r in &config.routes {
        let prefix = r.prefix.get_ref();
        if !prefix.starts_with('/') {
            problems.push((
                r.prefix.span().start,
                format!("route prefix `{prefix}` must start with `/`"),
            ));
        }
        if prefix.starts_with("/v1/") || prefix == "/v1" || prefix == "/livez" {
            problems.push((
                r.prefix.span().start,
                format!("route prefix `{prefix}` would shadow Pylon's own endpoints"),
            ));
        }
        if !prefixes.insert(prefix.as_str()) {
            problems.push((
                r.prefix.span().start,
                format!("route prefix `{prefix}` is defined twice"),
            ));
        }
        if let Some(why) = bad_url(r.upstream.get_ref()) {
            problems.push((
                r.upstream.span().start,
                format!("upstream `{}` {why}", r.upstream.get_ref()),
            ));
        }
    }
    for p in &config.limits.trusted_proxies {
        if crate::parse_cidr(p).is_none() {
            problems.push((
                0,
                format!("limits.trusted_proxies: `{p}` is not an IP address or CIDR"),
            ));
        }
    }
    for p in &config.prices {
        let cache = [p.cache_read_per_million, p.cache_write_per_million];
        if !(p.input_per_million >= 0.0
            && p.output_per_million >= 0.0
            && cache.iter().flatten().all(|v| *v >= 0.0))
        {
            problems.push((0, format!("price of `{}` must not be negative", p.model)));
        }
    }
    for t in &config.budgets.thresholds {
        if !(*t > 0.0 && *t <= 10.0) {
            problems.push((
                0,
                format!(
                    "budgets.thresholds: {t} must be a share of the budget above 0 (0.8 = 80 %)"
                ),
            ));
        }
    }
    for url in &config.budgets.webhooks {
        if let Some(why) = bad_url(url) {
            problems.push((0, format!("budgets.webhooks: `{url}` {why}")));
        }
    }
    for (key, v) in [
        ("log.success_sample", config.log.success_sample),
        ("tracing.sample_ratio", config.tracing.sample_ratio),
        ("health.disk_warn", config.health.disk_warn),
    ] {
        if !(0.0..=1.0).contains(&v) {
            problems.push((0, format!("{key}: {v} must be between 0.0 and 1.0")));
        }
    }
    if config.tracing.enabled {
        if let Some(why) = bad_url(&config.tracing.endpoint) {
            problems.push((
                0,
                format!("tracing.endpoint: `{}` {why}", config.tracing.endpoint),
            ));
        }
    }
    let sem = &config.cache.semantic;
    if config.models.iter().any(|m| m.cache.semantic) {
        match &sem.embedding_model {
            None => problems.push((0, "a model sets cache.semantic = true: set [cache.semantic] embedding_model to a configured model".to_owned())),
            Some(e) if !models.contains(e.as_str()) => problems.push((0, format!("cache.semantic.embedding_model `{e}` is not a configured model"))),
            Some(_) => {}
        }
    }
    if let Some(v) = &sem.verify {
        if !models.contains(v.model.as_str()) {
            problems.push((
                0,
                format!(
                    "cache.semantic.verify.model `{}` is not a configured model",
                    v.model
                ),
            ));
        }
        if v.timeout.is_zero() || v.memo == 0 {
            problems.push((
                0,
                "cache.semantic.verify: timeout and memo must be greater than 0".to_owned(),
            ));
        }
    }
    if !(0.0..=1.0).contains(&sem.threshold) {
        problems.push((
            0,
            format!(
                "cache.semantic.threshold: {} must be between 0.0 and 1.0",
                sem.threshold
            ),
        ));
    }
    if config.request_log.flush.is_zero() || config.request_log.queue == 0 {
        problems.push((
            0,
            "request_log.flush and request_log.queue must be greater than 0".to_owned(),
        ));
    }
    if config.server.max_body_bytes == 0 {
        problems.push((0, "server.max_body_bytes must be greater than 0".to_owned()));
    }
    if config.server.workers > 1024 {
        problems.push((
            0,
            format!(
                "server.workers: {} is more threads than any machine needs; use 0 for one per core",
                config.server.workers
            ),
        ));
    }
    problems
}

fn bad_url(url: &str) -> Option<&'static str> {
    match url.parse::<http::Uri>() {
        Err(_) => Some("is not a valid URL"),
        Ok(u) if !matches!(u.scheme_str(), Some("http" | "https")) => {
            Some("must start with http:// or https://")
        }
        Ok(u) if u.authority().is_none() => Some("has no host"),
        Ok(u) if u.query().is_some() => Some("must not have a query string"),
        Ok(_) => None,
    }
}

/// `Some` when `name` is a valid lower-case HTTP header name.
fn http_header_name(name: &str) -> Option<()> {
    (!name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)))
    .then_some(())
}
