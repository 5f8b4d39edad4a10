//! Active provider probes: one cheap authenticated `GET` of the provider's model list.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use pylon_config::ProviderKind;

use crate::context::ANTHROPIC_VERSION;
use crate::gateway::Check;
use crate::snapshot::Provider;

/// Probes `p` once: reachable with an accepted credential passes; 401/403, 5xx, timeouts and
/// connection errors fail.
pub(crate) async fn provider(p: &Provider) -> Check {
    let path = match p.kind {
        ProviderKind::Anthropic => "/v1/models",
        ProviderKind::Openai | ProviderKind::Gemini | ProviderKind::Azure => "/models",
        // bedrock-runtime has no cheap read: the check is that credentials are loaded.
        ProviderKind::Bedrock => {
            return match p.aws.as_ref().is_some_and(|a| a.ready()) {
                true => Check::pass(Duration::ZERO),
                false => Check::fail(Duration::ZERO, "no AWS credentials loaded"),
            };
        }
    };
    let mut req = Request::get(p.url(path, ""));
    if p.kind == ProviderKind::Anthropic {
        req = req.header(ANTHROPIC_VERSION, pylon_providers::anthropic::API_VERSION);
    }
    let started = Instant::now();
    let Ok(mut req) = req.body(Full::new(Bytes::new())) else {
        return Check::fail(Duration::ZERO, "cannot build the probe request");
    };
    if let Err(e) = crate::credential::apply(p, &mut req, &[]) {
        return Check::fail(Duration::ZERO, e);
    }
    match tokio::time::timeout(p.timeouts.first_byte, p.client.send(req)).await {
        Err(_) => Check::fail(started.elapsed(), "timed out"),
        Ok(Err(e)) => Check::fail(started.elapsed(), format!("connection failed: {e}")),
        Ok(Ok(resp)) => {
            let status = resp.status();
            let took = started.elapsed();
            if status.is_server_error() || matches!(status.as_u16(), 401 | 403) {
                Check::fail(took, format!("answered {status}"))
            } else {
                Check::pass(took)
            }
        }
    }
}

// The control plane's probe loop runs this.
impl crate::gateway::Gateway {
    /// Probes every provider once and returns the results by provider (for `pylon doctor`).
    pub async fn probe_each(&self) -> Vec<(String, Check)> {
        let mut out = Vec::new();
        let snap = self.snapshot();
        let mut providers: Vec<_> = snap.providers.values().collect();
        providers.sort_by(|a, b| a.name.cmp(&b.name));
        for p in providers {
            out.push((p.name.clone(), provider(p).await));
        }
        out
    }

    /// Loads what credentials need from outside (Azure token files, AWS web identities); each
    /// failure is logged and returned by provider.
    pub async fn refresh_credentials(&self) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        for p in self.snapshot().providers.values() {
            if let Err(e) = crate::credential::refresh(p).await {
                tracing::warn!(target: "pylon::credentials", provider = %p.name, error = %e, "provider credential not refreshed");
                failed.push((p.name.clone(), e));
            }
        }
        failed
    }

    /// Probes every provider once (`GET /models` with its credential) and records the results.
    pub async fn probe_providers(&self) {
        for p in self.snapshot().providers.values() {
            let check = provider(p).await;
            if let Ok(mut g) = self.deps.probes.lock() {
                g.insert(p.name.clone(), check);
            }
        }
    }
}
