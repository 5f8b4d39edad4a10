//! Checks the parser cannot make: names unique, references resolvable, URLs usable.

use std::collections::HashSet;

use crate::{Config, ProviderKind, Strategy};

/// Every problem found, each with the byte offset it points at.
pub(crate) fn check(config: &Config) -> Vec<(usize, String)> {
    let mut problems = Vec::new();
    if config.backup.keep == 0 {
        problems.push((0, "[backup] keep must be at least 1".to_owned()));
    }
    if config
        .backup
        .every
        .is_some_and(|e| e < std::time::Duration::from_secs(1))
    {
        problems.push((0, "[backup] every must be at least 1s".to_owned()));
    }
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
        if p.kind == ProviderKind::Azure && p.base_url.is_none() {
            problems.push((
                p.name.span().start,
                format!("provider `{name}` (azure): set base_url to the resource endpoint, e.g. https://my-resource.openai.azure.com"),
            ));
        }
        if (p.kind == ProviderKind::Bedrock) != p.aws.is_some() {
            problems.push((
                p.name.span().start,
                format!("provider `{name}`: bedrock providers need aws = {{ region = \"…\" }}, and only they take `aws`"),
            ));
        }
        if p.token_file.is_some() && p.kind != ProviderKind::Azure {
            problems.push((
                p.name.span().start,
                format!("provider `{name}`: token_file is for azure providers (Entra ID)"),
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
        for (list, entries) in [("allow", &r.allow), ("deny", &r.deny)] {
            for e in entries {
                if crate::parse_cidr(e.get_ref()).is_none() {
                    problems.push((
                        e.span().start,
                        format!(
                            "route `{prefix}` {list}: `{}` is not an IP address or CIDR (e.g. 10.0.0.0/8)",
                            e.get_ref()
                        ),
                    ));
                }
            }
        }
        if r.max_connections == Some(0) || r.max_body_bytes == Some(0) {
            problems.push((
                r.prefix.span().start,
                format!("route `{prefix}`: max_connections and max_body_bytes must be above 0 (leave them out for no cap)"),
            ));
        }
        for name in r.response_headers.keys().chain(&r.hide_headers) {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                problems.push((
                    r.prefix.span().start,
                    format!("route `{prefix}`: `{name}` is not a valid header name"),
                ));
            }
        }
        for (name, value) in &r.response_headers {
            if http::HeaderValue::from_str(value).is_err() {
                problems.push((
                    r.prefix.span().start,
                    format!("route `{prefix}`: the value of response header `{name}` has characters a header cannot carry"),
                ));
            }
        }
        if let Some(c) = &r.cache {
            if c.max_entry_bytes == 0 || c.max_entry_bytes > c.max_bytes {
                problems.push((
                    r.prefix.span().start,
                    format!(
                        "route `{prefix}` cache: max_entry_bytes must be between 1 and max_bytes"
                    ),
                ));
            }
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
    if let Some(tls) = &config.server.tls {
        tls_problems(tls, &mut problems);
    }
    rollouts(config, &providers, &models, &mut problems);
    crate::alert::check(config, &mut problems);
    if config.flags.poll < std::time::Duration::from_millis(100) {
        problems.push((0, "flags.poll must be at least 100ms".to_owned()));
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

/// `[server.tls]`: certificate files or ACME, not both; ACME names that a CA can validate.
fn tls_problems(tls: &crate::Tls, problems: &mut Vec<(usize, String)>) {
    let files = tls.cert_file.is_some() || tls.key_file.is_some();
    let Some(acme) = &tls.acme else {
        if tls.cert_file.is_none() || tls.key_file.is_none() {
            problems.push((
                0,
                "[server.tls] needs cert_file and key_file, or acme = { directory, domains } to obtain a certificate"
                    .to_owned(),
            ));
        }
        return;
    };
    let at = acme.domains.span().start;
    let mut bad = |msg: String| problems.push((at, format!("[server.tls] acme: {msg}")));
    if files || tls.ocsp_file.is_some() {
        bad(
            "cert_file, key_file and ocsp_file come from ACME here; remove them (or remove acme)"
                .into(),
        );
    }
    if !acme.directory.starts_with("https://") {
        bad(format!(
            "directory `{}` must be an https:// URL (Let's Encrypt: https://acme-v02.api.letsencrypt.org/directory)",
            acme.directory
        ));
    }
    if acme
        .email
        .as_deref()
        .is_some_and(|e| !e.contains('@') || e.contains(char::is_whitespace))
    {
        bad("email must be an address such as ops@example.com".into());
    }
    if acme.domains.get_ref().is_empty() {
        bad("domains is empty: list the names the certificate must cover".into());
    }
    for d in acme.domains.get_ref() {
        if let Err(why) = dns_name(d) {
            bad(format!("domain `{d}` {why}"));
        }
    }
    if acme.challenge == crate::AcmeChallenge::Http01 && tls.redirect_http.is_none() {
        bad("http-01 is answered on the plain-HTTP listener: set redirect_http = \"0.0.0.0:80\" (or use challenge = \"tls-alpn-01\")".into());
    }
    if acme.check_interval < std::time::Duration::from_secs(1) {
        bad("check_interval must be at least 1s".into());
    }
}

/// Whether `name` is a DNS name an ACME CA can validate by HTTP-01 or TLS-ALPN-01.
fn dns_name(name: &str) -> Result<(), &'static str> {
    if name.starts_with("*.") {
        return Err("is a wildcard, which needs the dns-01 challenge (not supported)");
    }
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Err("is an IP address; certificates are for DNS names");
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.len() > 253 || !name.split('.').all(label_ok) {
        return Err("is not a DNS name (letters, digits and hyphens in dot-separated labels)");
    }
    Ok(())
}

/// `[[rollouts]]`: each names one existing subject, a candidate of the subject's kind, steps
/// that only rise, and an analysis that can decide.
fn rollouts(
    config: &Config,
    providers: &HashSet<&str>,
    models: &HashSet<&str>,
    problems: &mut Vec<(usize, String)>,
) {
    let mut names = HashSet::new();
    let mut subjects = HashSet::new();
    for r in &config.rollouts {
        let name = r.name.get_ref();
        let at = r.name.span().start;
        let mut bad =
            |at: usize, msg: String| problems.push((at, format!("rollout `{name}`: {msg}")));
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            bad(at, "the name must be 1 to 64 letters, digits or -_.".into());
        }
        if !names.insert(name.as_str()) {
            bad(at, "defined twice".into());
        }
        let c = r.candidate.get_ref();
        let c_at = r.candidate.span().start;
        if let Some(flag) = &r.flag {
            if r.route.is_some() {
                bad(flag.span().start, "a flag rollout has no route".into());
            }
            if let Some(m) = r
                .model
                .as_ref()
                .filter(|m| !models.contains(m.get_ref().as_str()))
            {
                bad(
                    m.span().start,
                    format!("model `{}` is not a configured model", m.get_ref()),
                );
            }
            if !subjects.insert(format!("flag:{}", flag.get_ref())) {
                bad(
                    flag.span().start,
                    format!("flag `{}` already has a rollout", flag.get_ref()),
                );
            }
            if c.variant.is_none()
                || !c.targets.is_empty()
                || c.upstream.is_some()
                || c.system_prompt.is_some()
                || c.temperature.is_some()
                || c.max_tokens.is_some()
            {
                bad(
                    c_at,
                    "a flag's candidate is a variant only: candidate = { variant = \"on\" }".into(),
                );
            }
            if r.strategy != crate::RolloutStrategy::Canary {
                bad(
                    at,
                    "a flag rollout is a canary (its steps set the variant's share)".into(),
                );
            }
        } else {
            match (&r.model, &r.route) {
                (Some(m), None) => {
                    if !models.contains(m.get_ref().as_str()) {
                        bad(
                            m.span().start,
                            format!("model `{}` is not a configured model", m.get_ref()),
                        );
                    }
                    if !subjects.insert(format!("model:{}", m.get_ref())) {
                        bad(
                            m.span().start,
                            format!("model `{}` already has a rollout", m.get_ref()),
                        );
                    }
                    for t in &c.targets {
                        if !providers.contains(t.provider.get_ref().as_str()) {
                            bad(
                                t.provider.span().start,
                                format!(
                                    "candidate points at unknown provider `{}`",
                                    t.provider.get_ref()
                                ),
                            );
                        }
                    }
                    if c.upstream.is_some() {
                        bad(
                            c_at,
                            "a model's candidate has targets and overrides, not an upstream".into(),
                        );
                    }
                    if c.targets.is_empty()
                        && c.system_prompt.is_none()
                        && c.temperature.is_none()
                        && c.max_tokens.is_none()
                    {
                        bad(c_at, "the candidate changes nothing: give targets, a system_prompt, temperature or max_tokens".into());
                    }
                    if c.temperature.is_some_and(|t| !(0.0..=2.0).contains(&t)) {
                        bad(c_at, "candidate temperature must be between 0 and 2".into());
                    }
                }
                (None, Some(route)) => {
                    if !config
                        .routes
                        .iter()
                        .any(|x| x.prefix.get_ref() == route.get_ref())
                    {
                        bad(
                            route.span().start,
                            format!(
                                "route `{}` is not a configured [[routes]] prefix",
                                route.get_ref()
                            ),
                        );
                    }
                    if !subjects.insert(format!("route:{}", route.get_ref())) {
                        bad(
                            route.span().start,
                            format!("route `{}` already has a rollout", route.get_ref()),
                        );
                    }
                    match &c.upstream {
                        None => bad(c_at, "a route's candidate needs an upstream URL".into()),
                        Some(u) => {
                            if let Some(why) = bad_url(u) {
                                bad(c_at, format!("candidate upstream `{u}` {why}"));
                            }
                        }
                    }
                    if !c.targets.is_empty()
                        || c.system_prompt.is_some()
                        || c.temperature.is_some()
                        || c.max_tokens.is_some()
                    {
                        bad(
                        c_at,
                        "a route's candidate is an upstream; targets and overrides are for models"
                            .into(),
                    );
                    }
                    if r.strategy == crate::RolloutStrategy::Shadow {
                        bad(
                        at,
                        "shadow is for models (an app's requests may not be safe to send twice)"
                            .into(),
                    );
                    }
                }
                _ => bad(
                    at,
                    "name exactly one subject: model = \"…\", route = \"/…\" or flag = \"…\""
                        .into(),
                ),
            }
        }
        if r.strategy != crate::RolloutStrategy::BlueGreen && r.steps.is_empty() {
            bad(at, "add steps, e.g. [ { weight = 5, hold = \"10m\" }, { weight = 50, hold = \"10m\" } ]".into());
        }
        let mut last = 0.0;
        for s in &r.steps {
            let w = s.get_ref().weight;
            if !(w > 0.0 && w <= 100.0) {
                bad(
                    s.span().start,
                    format!("step weight {w} must be above 0 and at most 100"),
                );
            } else if w < last {
                bad(
                    s.span().start,
                    format!("step weight {w} is below the step before ({last}); steps only rise"),
                );
            }
            last = w;
        }
        let st = r.stickiness.get_ref();
        let header_ok = st
            .strip_prefix("header:")
            .is_some_and(|h| http_header_name(&h.to_ascii_lowercase()).is_some());
        if !matches!(st.as_str(), "key" | "user" | "ip") && !header_ok {
            bad(
                r.stickiness.span().start,
                format!("stickiness `{st}` must be key, user, ip or header:<name>"),
            );
        }
        if http_header_name(&r.preview_header.to_ascii_lowercase()).is_none() {
            bad(
                at,
                format!("preview_header `{}` is not a header name", r.preview_header),
            );
        }
        for url in [&r.webhook, &r.confirm_url].into_iter().flatten() {
            if let Some(why) = bad_url(url.get_ref()) {
                bad(url.span().start, format!("`{}` {why}", url.get_ref()));
            }
        }
        let a = &r.analysis;
        if a.interval < std::time::Duration::from_secs(1)
            || a.min_requests == 0
            || a.failure_limit == 0
        {
            bad(
                at,
                "analysis: interval must be at least 1s, min_requests and failure_limit at least 1"
                    .into(),
            );
        }
        let ratios = [a.max_latency_ratio, a.max_ttft_ratio, a.max_cost_ratio];
        if ratios.iter().flatten().any(|r| r.is_nan() || *r < 1.0)
            || [a.max_error_rate_increase, a.max_error_rate]
                .iter()
                .flatten()
                .any(|v| !(0.0..=1.0).contains(v))
        {
            bad(
                at,
                "analysis: ratios must be at least 1.0, error rates between 0 and 1".into(),
            );
        }
    }
}

pub(crate) fn bad_url(url: &str) -> Option<&'static str> {
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
