//! The immutable runtime view of the config that every request reads: providers with their
//! HTTP clients and credentials, models with their targets' health, app routes.

use foldhash::{HashMap, HashMapExt};
use std::sync::Arc;

use http::{HeaderName, HeaderValue};
use pylon_config::{Config, ProviderKind, Resilience, ResolvedTimeouts, Strategy};

use crate::breaker::{Health, Policy};
use crate::error::BuildError;
use crate::ProxyError;
use pylon_providers::TranslateError;

mod rollouts;

use rollouts::rollout_parts;
pub(crate) use rollouts::{FlagRollout, ModelCandidate, RolloutSpec, RouteCandidate, Stickiness};

/// Size limits of a chat request beyond the body limit.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Validation {
    pub max_messages: usize,
    pub max_message_bytes: usize,
}

impl Validation {
    pub fn check(&self, messages: usize, largest: usize) -> Result<(), ProxyError> {
        if messages > self.max_messages {
            return Err(TranslateError::Unsupported(format!(
                "{messages} messages is more than the limit of {} (server.max_messages)",
                self.max_messages
            ))
            .into());
        }
        if largest > self.max_message_bytes {
            return Err(TranslateError::Unsupported(format!(
                "a message of {largest} bytes is larger than the limit of {} (server.max_message_bytes)",
                self.max_message_bytes
            ))
            .into());
        }
        Ok(())
    }
}

/// A configured provider, ready to call.
pub(crate) struct Provider {
    pub name: String,
    pub kind: ProviderKind,
    /// Base URL without trailing slash.
    pub base: String,
    /// The credential header, marked sensitive so it never shows in debug output.
    pub auth: Option<(HeaderName, HeaderValue)>,
    pub timeouts: ResolvedTimeouts,
    pub client: crate::client::Pool,
    /// Clients may address `name/model` directly.
    pub direct: bool,
    /// Client headers forwarded besides the built-in ones (config `forward_headers`).
    pub forward: Vec<HeaderName>,
    /// Health used when a client addresses `provider/model` directly.
    pub direct_health: Arc<Health>,
    /// A credential stored (encrypted) through the admin API; wins over `auth` when set.
    pub stored_auth: arc_swap::ArcSwapOption<(HeaderName, HeaderValue)>,
    /// Azure: the `api-version` (`v1`: the version-less API).
    pub api_version: Option<String>,
    /// Azure Entra ID: the token file, and the token last read from it (wins over the rest).
    pub token_file: Option<std::path::PathBuf>,
    pub token: arc_swap::ArcSwapOption<(HeaderName, HeaderValue)>,
    /// Bedrock: region and AWS credentials for SigV4.
    pub aws: Option<Arc<crate::aws::Aws>>,
    /// Serves `/responses` itself (OpenAI, Azure); off: Responses requests are sent as chat.
    pub responses_api: bool,
    /// The URLs of the paths that do not name a model, parsed once (see [`Provider::uri`]).
    pub uris: Vec<(&'static str, http::Uri)>,
}

/// The Azure OpenAI `api-version` used when the config names none.
const AZURE_API_VERSION: &str = "2024-10-21";

/// Upstream paths whose URL is the same for every model of a provider (except on Azure).
const FIXED_PATHS: [&str; 5] = [
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/responses",
    "/v1/messages",
];

/// The parsed URLs of `FIXED_PATHS` under `base` for a provider of `kind` (none for Azure, whose
/// URLs carry the deployment and `api-version`).
fn fixed_uris(kind: ProviderKind, base: &str) -> Vec<(&'static str, http::Uri)> {
    if kind == ProviderKind::Azure {
        return Vec::new();
    }
    FIXED_PATHS
        .iter()
        .filter_map(|path| Some((*path, format!("{base}{path}").parse().ok()?)))
        .collect()
}

impl Provider {
    /// The parsed URL of `path` for `model`: parsed at load for the fixed paths (formatting and
    /// parsing the URL was ~2k instructions a request), else from [`Provider::url`].
    pub fn uri(&self, path: &str, model: &str) -> Result<http::Uri, http::uri::InvalidUri> {
        match self.uris.iter().find(|(p, _)| *p == path) {
            Some((_, uri)) => Ok(uri.clone()),
            None => self.url(path, model).parse(),
        }
    }

    /// The URL of an OpenAI-style `path` (`/chat/completions`, `/embeddings`…) or a kind's own
    /// path for `model`: Azure's deployment paths and `api-version`, else the base URL + path.
    pub fn url(&self, path: &str, model: &str) -> String {
        if self.kind != ProviderKind::Azure {
            return format!("{}{path}", self.base);
        }
        match self.api_version.as_deref() {
            Some("v1") => format!("{}/openai/v1{path}", self.base),
            v => {
                let v = v.unwrap_or(AZURE_API_VERSION);
                match path {
                    // Not per deployment: the body's model names it.
                    "/responses" | "/models" => {
                        format!("{}/openai{path}?api-version={v}", self.base)
                    }
                    _ => format!(
                        "{}/openai/deployments/{}{path}?api-version={v}",
                        self.base,
                        pylon_providers::path_segment(model)
                    ),
                }
            }
        }
    }
}

/// The credential header a provider kind expects, marked sensitive.
pub(crate) fn auth_header(kind: ProviderKind, key: &str) -> Option<(HeaderName, HeaderValue)> {
    let (header, value) = match kind {
        ProviderKind::Openai => ("authorization", format!("Bearer {key}")),
        ProviderKind::Anthropic => ("x-api-key", key.to_owned()),
        ProviderKind::Gemini => ("x-goog-api-key", key.to_owned()),
        ProviderKind::Azure => ("api-key", key.to_owned()),
        // Bedrock signs each request (SigV4); a key is not a credential there.
        ProviderKind::Bedrock => return None,
    };
    let mut v = HeaderValue::from_str(&value).ok()?;
    v.set_sensitive(true);
    Some((HeaderName::from_static(header), v))
}

/// One provider model behind a model name.
#[derive(Clone)]
pub(crate) struct Target {
    pub provider: Arc<Provider>,
    pub model: String,
    /// `provider/model`, the target's label in metrics and health checks.
    pub label: String,
    pub weight: u32,
    pub health: Arc<Health>,
    /// Output cap sent when a client sets none and the provider requires one.
    pub max_output_tokens: Option<u32>,
    /// `x-pylon-provider` and `x-pylon-served-model` for its answers, made once.
    pub served: Served,
}

/// The headers naming who served an answer, made when the snapshot is built rather than per
/// answer.
#[derive(Clone)]
pub(crate) struct Served {
    pub provider: Option<http::HeaderValue>,
    pub model: Option<http::HeaderValue>,
}

impl Served {
    /// The headers for `model` at `provider` (left out when a name is no valid header value).
    pub fn new(provider: &str, model: &str) -> Served {
        Served {
            provider: http::HeaderValue::from_str(provider).ok(),
            model: http::HeaderValue::from_str(model).ok(),
        }
    }
}

/// A model name clients can send.
pub(crate) struct Model {
    pub name: String,
    pub strategy: Strategy,
    pub targets: Vec<Target>,
    pub fallbacks: Vec<String>,
    pub retries: u32,
    /// Requests and tokens per minute across all callers.
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// Prompts and completions may appear in this model's log lines.
    pub log_bodies: bool,
    /// Response caching for this model; `None`: off.
    pub cache: Option<crate::cache::Policy>,
    /// The model's label in metrics: its name, or `provider/*` when addressed directly (so
    /// clients cannot create series).
    pub metric_name: String,
    /// Bound on a whole non-stream answer; `None`: each provider's `timeouts.response`.
    pub response_timeout: Option<std::time::Duration>,
    /// A request that timed out upstream may be re-sent to the next target.
    pub resend_on_timeout: bool,
    /// Leave out parameters a translation cannot express instead of refusing them.
    pub drop_unsupported: bool,
}

/// An app route (plain reverse proxy).
pub(crate) struct AppRoute {
    pub prefix: String,
    /// Upstream scheme + authority, and path prefix without trailing slash.
    pub upstream: http::Uri,
    pub strip_prefix: bool,
    pub http2: bool,
    pub rpm: Option<u64>,
    pub timeouts: ResolvedTimeouts,
    pub client: crate::worker::PerWorker<crate::client::HttpsClient<axum::body::Body>>,
    /// Compress the application's answers when worth it.
    pub compress: bool,
    /// Client networks allowed (empty: all) and refused, checked against the client's IP.
    pub allow: Vec<(std::net::IpAddr, u8)>,
    pub deny: Vec<(std::net::IpAddr, u8)>,
    pub max_body_bytes: Option<usize>,
    /// The route's own cap on requests in progress, and its configured size.
    pub slots: Option<Arc<tokio::sync::Semaphore>>,
    pub max_connections: Option<usize>,
    pub preserve_host: bool,
    pub forwarded: bool,
    /// Added to answers that lack them, after `hide_headers` are removed.
    pub response_headers: Vec<(HeaderName, http::HeaderValue)>,
    pub hide_headers: Vec<HeaderName>,
    pub cache: Option<Arc<crate::edge_cache::EdgeCache>>,
}

/// Everything a request needs, immutable once built.
pub struct Snapshot {
    pub(crate) providers: HashMap<String, Arc<Provider>>,
    pub(crate) models: HashMap<String, Arc<Model>>,
    /// Model names in config order, for `/v1/models`.
    pub(crate) model_names: Vec<String>,
    /// Longest prefix first; shared by the snapshots a rollout change makes.
    pub(crate) routes: Arc<Vec<AppRoute>>,
    pub(crate) max_body_bytes: usize,
    pub(crate) resilience: Resilience,
    /// Client headers some provider is configured to receive (`forward_headers`).
    pub(crate) forwardable: Vec<HeaderName>,
    /// Model rollouts' candidates, by the model they roll out.
    pub(crate) rollouts: HashMap<String, Arc<ModelCandidate>>,
    /// Guarded flags: rollouts whose subject is a flag.
    pub(crate) flag_rollouts: Vec<Arc<FlagRollout>>,
    /// App route rollouts' candidates, by route prefix.
    pub(crate) route_rollouts: HashMap<String, Arc<RouteCandidate>>,
}

/// The snapshot a reload replaces, and which of its providers did not change.
type Before<'a> = (&'a Snapshot, &'a dyn Fn(&str) -> bool);

/// Configured targets over the built providers, each with health of its own, or the health
/// of the same target in `before` (a reload) when it kept its provider.
fn targets_of(
    targets: &[pylon_config::Target],
    providers: &HashMap<String, Arc<Provider>>,
    policy: Policy,
    before: Option<&Model>,
) -> Vec<Target> {
    targets
        .iter()
        .filter_map(|t| {
            let provider = providers.get(t.provider.get_ref())?.clone();
            let label = format!("{}/{}", t.provider.get_ref(), t.model);
            let health = before
                .and_then(|m| {
                    m.targets
                        .iter()
                        .find(|o| o.label == label && Arc::ptr_eq(&o.provider, &provider))
                })
                .map_or_else(|| Arc::new(Health::new(policy)), |o| o.health.clone());
            Some(Target {
                served: Served::new(&provider.name, &t.model),
                provider,
                model: t.model.clone(),
                label,
                weight: t.weight,
                health,
                max_output_tokens: t.max_output_tokens,
            })
        })
        .collect()
}

fn breaker_policy(r: &Resilience) -> Policy {
    Policy {
        failures: r.breaker_failures.max(1),
        cooldown: r.breaker_cooldown,
    }
}

impl Snapshot {
    /// Builds the runtime view of a config.
    pub fn build(config: &Config) -> Result<Snapshot, BuildError> {
        Snapshot::build_over(config, None)
    }

    /// The runtime view of a reloaded config: providers for which `unchanged` holds are taken
    /// from `before` (connection pools, stored credentials, breakers), and so are their
    /// targets' breakers when the breaker settings did not change.
    pub fn rebuild(
        config: &Config,
        before: &Snapshot,
        unchanged: &dyn Fn(&str) -> bool,
    ) -> Result<Snapshot, BuildError> {
        Snapshot::build_over(config, Some((before, unchanged)))
    }

    fn build_over(config: &Config, before: Option<Before<'_>>) -> Result<Snapshot, BuildError> {
        let policy = breaker_policy(&config.resilience);
        // App routes keep their cache and cap across any reload that leaves them alone.
        let previous_routes = before.map(|(b, _)| b.routes.clone());
        let before = before.filter(|(b, _)| breaker_policy(&b.resilience) == policy);
        let workers = crate::worker::count(config.server.workers);
        let mut providers = HashMap::new();
        for p in &config.providers {
            let name = p.name.get_ref().clone();
            let kept = before
                .filter(|(_, unchanged)| unchanged(&name))
                .and_then(|(b, _)| b.providers.get(&name));
            if let Some(kept) = kept {
                providers.insert(name, kept.clone());
                continue;
            }
            let auth = match &p.api_key {
                None => None,
                Some(_) if p.kind == ProviderKind::Bedrock => None,
                Some(key) => Some(
                    auth_header(p.kind, key.expose())
                        .ok_or_else(|| BuildError::BadCredential(name.clone()))?,
                ),
            };
            let timeouts = p.timeouts.for_provider();
            let base = p.base_url().trim_end_matches('/').to_owned();
            let proxy = crate::client::proxy_for(&base, p.proxy.as_ref().map(|s| s.expose()))?;
            let options = crate::client::Options {
                connect: timeouts.connect,
                http2: p.http2,
                http2_only: p.http2 && base.starts_with("http://"),
                ca_file: p.ca_file.as_ref().map(|f| f.get_ref().as_path()),
                proxy: proxy.as_ref().map(|(u, _)| u.clone()),
                proxy_auth: proxy.and_then(|(_, a)| a),
            };
            let client =
                crate::client::Pool::new(&base, p.connections as usize, workers, &options)?;
            let uris = fixed_uris(p.kind, &base);
            providers.insert(
                name.clone(),
                Arc::new(Provider {
                    name,
                    kind: p.kind,
                    base,
                    auth,
                    timeouts,
                    client,
                    direct: p.direct,
                    forward: p
                        .forward_headers
                        .iter()
                        .filter_map(|h| {
                            HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok()
                        })
                        .collect(),
                    direct_health: Arc::new(Health::new(policy)),
                    stored_auth: arc_swap::ArcSwapOption::empty(),
                    api_version: p.api_version.clone(),
                    token_file: p.token_file.as_ref().map(|f| f.get_ref().clone()),
                    token: arc_swap::ArcSwapOption::empty(),
                    aws: p
                        .aws
                        .as_ref()
                        .map(|a| Arc::new(crate::aws::Aws::new(a, &|k| std::env::var(k).ok()))),
                    responses_api: p.responses_api,
                    uris,
                }),
            );
        }
        let mut models = HashMap::new();
        let mut model_names = Vec::new();
        for m in &config.models {
            let targets = targets_of(
                m.targets.get_ref(),
                &providers,
                policy,
                before
                    .and_then(|(b, _)| b.models.get(m.name.get_ref()))
                    .map(|m| &**m),
            );
            let name = m.name.get_ref().clone();
            model_names.push(name.clone());
            models.insert(
                name.clone(),
                Arc::new(Model {
                    name,
                    strategy: m.strategy,
                    targets,
                    fallbacks: m.fallbacks.iter().map(|f| f.get_ref().clone()).collect(),
                    retries: m.retries,
                    rpm: m.rpm,
                    tpm: m.tpm,
                    log_bodies: m.log_bodies,
                    metric_name: m.name.get_ref().clone(),
                    response_timeout: m.response_timeout,
                    resend_on_timeout: m.resend_on_timeout,
                    drop_unsupported: m.unsupported_params == pylon_config::UnsupportedParams::Drop,
                    cache: m.cache.enabled.unwrap_or(config.cache.enabled).then(|| {
                        crate::cache::Policy {
                            ttl: m.cache.ttl.unwrap_or(config.cache.ttl),
                            any_temperature: m.cache.any_temperature,
                            semantic: m.cache.semantic,
                        }
                    }),
                }),
            );
        }
        let mut routes = Vec::new();
        for r in &config.routes {
            let timeouts = r.timeouts.for_route();
            let Ok(upstream) = r
                .upstream
                .get_ref()
                .trim_end_matches('/')
                .parse::<http::Uri>()
            else {
                continue;
            };
            let previous = previous_routes.as_deref().and_then(|rs| {
                rs.iter()
                    .find(|o| o.prefix == *r.prefix.get_ref() && o.upstream == upstream)
            });
            routes.push(AppRoute {
                prefix: r.prefix.get_ref().clone(),
                upstream,
                strip_prefix: r.strip_prefix,
                http2: r.http2,
                rpm: r.rpm.filter(|n| *n > 0),
                compress: r.compress,
                allow: r
                    .allow
                    .iter()
                    .filter_map(|c| pylon_config::parse_cidr(c.get_ref()))
                    .collect(),
                deny: r
                    .deny
                    .iter()
                    .filter_map(|c| pylon_config::parse_cidr(c.get_ref()))
                    .collect(),
                max_body_bytes: r.max_body_bytes,
                // Requests in flight hold the old semaphore's permits: a new one would let the
                // cap be exceeded until they end.
                slots: match previous {
                    Some(o) if o.max_connections == r.max_connections => o.slots.clone(),
                    _ => r
                        .max_connections
                        .map(|n| Arc::new(tokio::sync::Semaphore::new(n))),
                },
                max_connections: r.max_connections,
                preserve_host: r.preserve_host,
                forwarded: r.forwarded,
                response_headers: r
                    .response_headers
                    .iter()
                    .filter_map(|(n, v)| {
                        Some((HeaderName::from_bytes(n.as_bytes()).ok()?, v.parse().ok()?))
                    })
                    .collect(),
                hide_headers: r
                    .hide_headers
                    .iter()
                    .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                    .collect(),
                cache: r
                    .cache
                    .as_ref()
                    .map(|c| match previous.and_then(|o| o.cache.as_ref()) {
                        Some(kept) if kept.sized(c.max_bytes, c.max_entry_bytes) => kept.clone(),
                        _ => Arc::new(crate::edge_cache::EdgeCache::new(
                            c.max_bytes,
                            c.max_entry_bytes,
                        )),
                    }),
                timeouts,
                client: crate::client::build(
                    &crate::client::Options {
                        connect: timeouts.connect,
                        http2: r.http2,
                        http2_only: r.http2,
                        ..Default::default()
                    },
                    workers,
                )?,
            });
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        let mut forwardable: Vec<HeaderName> = Vec::new();
        for p in providers.values() {
            for h in &p.forward {
                if !forwardable.contains(h) {
                    forwardable.push(h.clone());
                }
            }
        }
        let parts = rollout_parts(&config.rollouts, &providers, &models, policy);
        Ok(Snapshot {
            rollouts: parts.models,
            flag_rollouts: parts.flags,
            route_rollouts: parts.routes,
            forwardable,
            providers,
            models,
            model_names,
            routes: Arc::new(routes),
            max_body_bytes: config.server.max_body_bytes,
            resilience: config.resilience.clone(),
        })
    }

    /// This snapshot with other rollouts: providers, models, routes (their connection pools
    /// and breakers) are shared, only the candidates are built anew.
    pub fn with_rollouts(&self, rollouts: &[pylon_config::Rollout]) -> Snapshot {
        let parts = rollout_parts(
            rollouts,
            &self.providers,
            &self.models,
            breaker_policy(&self.resilience),
        );
        Snapshot {
            providers: self.providers.clone(),
            models: self.models.clone(),
            model_names: self.model_names.clone(),
            routes: self.routes.clone(),
            max_body_bytes: self.max_body_bytes,
            resilience: self.resilience.clone(),
            forwardable: self.forwardable.clone(),
            rollouts: parts.models,
            flag_rollouts: parts.flags,
            route_rollouts: parts.routes,
        }
    }

    /// A configured model by name.
    pub(crate) fn model(&self, name: &str) -> Option<Arc<Model>> {
        self.models.get(name).cloned()
    }

    /// Resolves a client's model name: an alias, or `provider/model` addressed directly.
    pub(crate) fn resolve(&self, name: &str) -> Option<Arc<Model>> {
        if let Some(m) = self.models.get(name) {
            return Some(m.clone());
        }
        let (provider, model) = name.split_once('/')?;
        let p = self.providers.get(provider).filter(|p| p.direct)?;
        Some(Arc::new(Model {
            name: name.to_owned(),
            strategy: Strategy::Priority,
            targets: vec![Target {
                provider: p.clone(),
                model: model.to_owned(),
                label: format!("{provider}/*"),
                weight: 1,
                health: p.direct_health.clone(),
                max_output_tokens: None,
                served: Served::new(&p.name, model),
            }],
            fallbacks: Vec::new(),
            retries: 1,
            rpm: None,
            tpm: None,
            log_bodies: false,
            metric_name: format!("{provider}/*"),
            response_timeout: None,
            resend_on_timeout: false,
            drop_unsupported: false,
            cache: None,
        }))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A weighted model with one target per weight, for routing tests.
    pub(crate) fn model_with_weights(weights: &[u32]) -> Model {
        let timeouts = pylon_config::Timeouts::default().for_provider();
        let policy = Policy {
            failures: 5,
            cooldown: std::time::Duration::from_secs(30),
        };
        let provider = Arc::new(Provider {
            name: "p".into(),
            kind: ProviderKind::Openai,
            base: "http://127.0.0.1:1".into(),
            auth: None,
            timeouts,
            client: crate::client::Pool::new("", 1, 1, &crate::client::Options::default()).unwrap(),
            direct: false,
            forward: Vec::new(),
            direct_health: Arc::new(Health::new(policy)),
            stored_auth: arc_swap::ArcSwapOption::empty(),
            api_version: None,
            token_file: None,
            token: arc_swap::ArcSwapOption::empty(),
            aws: None,
            responses_api: true,
            uris: Vec::new(),
        });
        Model {
            name: "m".into(),
            strategy: Strategy::Weighted,
            targets: weights
                .iter()
                .map(|&w| Target {
                    provider: provider.clone(),
                    model: "x".into(),
                    label: "p/x".into(),
                    weight: w,
                    health: Arc::new(Health::new(policy)),
                    max_output_tokens: None,
                    served: Served::new("p", "x"),
                })
                .collect(),
            fallbacks: Vec::new(),
            retries: 0,
            rpm: None,
            tpm: None,
            log_bodies: false,
            metric_name: "m".into(),
            response_timeout: None,
            resend_on_timeout: false,
            drop_unsupported: false,
            cache: None,
        }
    }

    #[test]
    fn urls_parsed_at_load_are_the_urls_built_per_request() {
        let mut m = model_with_weights(&[1]);
        let p = Arc::get_mut(&mut m.targets[0].provider).unwrap();
        p.base = "https://api.example.com/v1".into();
        p.uris = fixed_uris(p.kind, &p.base);
        assert_eq!(p.uris.len(), FIXED_PATHS.len());
        for path in FIXED_PATHS.into_iter().chain(["/models/x:generateContent"]) {
            assert_eq!(
                p.uri(path, "x").unwrap(),
                p.url(path, "x").parse::<http::Uri>().unwrap()
            );
        }
        assert!(fixed_uris(ProviderKind::Azure, &p.base).is_empty());
    }
}
