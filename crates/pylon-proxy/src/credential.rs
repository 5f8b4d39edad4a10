//! A provider's credential on each request: its key header (configured or stored through the
//! admin API), an Azure Entra ID token kept fresh from its file, or an AWS SigV4 signature.
//!
//! Nothing here reads a file or calls a service on the request's path: tokens and AWS
//! credentials are loaded by [`refresh`], which the control plane runs every 30 s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::{BodyExt, Full, Limited};
use pylon_providers::bedrock::{self, AwsCredentials};

use crate::snapshot::Provider;

/// Where a Bedrock provider's AWS credentials come from.
#[derive(Debug)]
enum Source {
    /// Keys in the config or the environment: loaded once.
    Static,
    /// A web identity token exchanged with STS (`AssumeRoleWithWebIdentity`) and renewed.
    WebIdentity {
        role_arn: String,
        token_file: std::path::PathBuf,
        sts_url: String,
    },
}

/// A Bedrock provider's region and current credentials.
#[derive(Debug)]
pub(crate) struct Aws {
    pub region: String,
    creds: ArcSwapOption<AwsCredentials>,
    /// Unix seconds when the credentials expire (0: they do not).
    expires: AtomicU64,
    source: Source,
}

impl Aws {
    /// From `aws = { … }`, else the environment (`env` reads a variable).
    pub fn new(cfg: &pylon_config::Aws, env: &dyn Fn(&str) -> Option<String>) -> Aws {
        let configured = match (&cfg.access_key_id, &cfg.secret_access_key) {
            (Some(id), Some(secret)) => Some(AwsCredentials {
                access_key_id: id.expose().to_owned(),
                secret_access_key: secret.expose().to_owned(),
                session_token: cfg.session_token.as_ref().map(|t| t.expose().to_owned()),
            }),
            _ => None,
        };
        let from_env = || {
            // Keys in the environment only when the config names no identity of its own.
            if cfg.role_arn.is_some() {
                return None;
            }
            Some(AwsCredentials {
                access_key_id: env("AWS_ACCESS_KEY_ID")?,
                secret_access_key: env("AWS_SECRET_ACCESS_KEY")?,
                session_token: env("AWS_SESSION_TOKEN"),
            })
        };
        let creds = configured.or_else(from_env);
        let source = match (
            &creds,
            cfg.role_arn.clone().or_else(|| env("AWS_ROLE_ARN")),
            cfg.web_identity_token_file
                .clone()
                .or_else(|| env("AWS_WEB_IDENTITY_TOKEN_FILE").map(Into::into)),
        ) {
            (None, Some(role_arn), Some(file)) => Source::WebIdentity {
                role_arn,
                token_file: file,
                sts_url: cfg
                    .sts_url
                    .clone()
                    .unwrap_or_else(|| format!("https://sts.{}.amazonaws.com", cfg.region)),
            },
            _ => Source::Static,
        };
        Aws {
            region: cfg.region.clone(),
            creds: ArcSwapOption::new(creds.map(Arc::new)),
            expires: AtomicU64::new(0),
            source,
        }
    }

    /// Whether credentials are loaded.
    pub fn ready(&self) -> bool {
        self.creds.load().is_some()
    }
}

/// Adds the provider's credential to a request about to be sent with `body`.
pub(crate) fn apply(
    p: &Provider,
    req: &mut Request<Full<Bytes>>,
    body: &[u8],
) -> Result<(), String> {
    if let Some(aws) = &p.aws {
        let creds = aws.creds.load_full().ok_or_else(|| {
            "no AWS credentials: set aws.access_key_id/secret_access_key, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or a web identity (AWS_ROLE_ARN, AWS_WEB_IDENTITY_TOKEN_FILE)".to_owned()
        })?;
        let pairs: Vec<(&str, &str)> = req
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
            .collect();
        let signed = bedrock::sign(
            req.method().as_str(),
            &req.uri().to_string(),
            &pairs,
            body,
            &creds,
            &aws.region,
            SystemTime::now(),
        )?;
        for (name, value) in signed {
            let name = HeaderName::try_from(name).map_err(|e| e.to_string())?;
            let mut value = HeaderValue::try_from(value).map_err(|e| e.to_string())?;
            value.set_sensitive(true);
            req.headers_mut().insert(name, value);
        }
        return Ok(());
    }
    let token = p.token.load();
    let stored = p.stored_auth.load();
    if let Some((name, value)) = token.as_deref().or(stored.as_deref()).or(p.auth.as_ref()) {
        req.headers_mut().insert(name.clone(), value.clone());
    }
    Ok(())
}

/// Renew AWS credentials this long before they expire.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// Loads what credentials need from outside: Azure token files, and AWS credentials from a web
/// identity when they are missing or about to expire. Errors are returned per provider.
pub(crate) async fn refresh(p: &Provider) -> Result<(), String> {
    if let Some(file) = &p.token_file {
        let text = tokio::fs::read_to_string(file)
            .await
            .map_err(|e| format!("cannot read token_file {}: {e}", file.display()))?;
        let mut v = HeaderValue::from_str(&format!("Bearer {}", text.trim()))
            .map_err(|_| format!("token_file {} does not hold a token", file.display()))?;
        v.set_sensitive(true);
        p.token
            .store(Some(Arc::new((http::header::AUTHORIZATION, v))));
    }
    let Some(aws) = &p.aws else {
        return Ok(());
    };
    let Source::WebIdentity {
        role_arn,
        token_file,
        sts_url,
    } = &aws.source
    else {
        return Ok(());
    };
    let now = u64::try_from(crate::auth::unix_now()).unwrap_or(0);
    let expires = aws.expires.load(Ordering::Relaxed);
    if aws.ready() && expires > now + RENEW_BEFORE.as_secs() {
        return Ok(());
    }
    let token = tokio::fs::read_to_string(token_file).await.map_err(|e| {
        format!(
            "cannot read the web identity token {}: {e}",
            token_file.display()
        )
    })?;
    let form = [
        ("Action", "AssumeRoleWithWebIdentity"),
        ("Version", "2011-06-15"),
        ("RoleArn", role_arn.as_str()),
        ("RoleSessionName", "pylon"),
        ("WebIdentityToken", token.trim()),
    ];
    let body: String = form
        .iter()
        .map(|(k, v)| format!("{k}={}", pylon_providers::path_segment(v)))
        .collect::<Vec<_>>()
        .join("&");
    let req = Request::post(format!("{}/", sts_url.trim_end_matches('/')))
        .header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(p.timeouts.response, p.client.client().request(req))
        .await
        .map_err(|_| "STS did not answer in time".to_owned())?
        .map_err(|e| format!("STS call failed: {e}"))?;
    let status = resp.status();
    let xml = Limited::new(resp.into_body(), 64 * 1024)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let xml = String::from_utf8_lossy(&xml);
    if !status.is_success() {
        return Err(format!(
            "STS refused the web identity ({status}): {}",
            tag(&xml, "Message").unwrap_or("")
        ));
    }
    let creds = AwsCredentials {
        access_key_id: tag(&xml, "AccessKeyId")
            .ok_or("STS answer without AccessKeyId")?
            .to_owned(),
        secret_access_key: tag(&xml, "SecretAccessKey")
            .ok_or("STS answer without SecretAccessKey")?
            .to_owned(),
        session_token: tag(&xml, "SessionToken").map(str::to_owned),
    };
    let expiry = tag(&xml, "Expiration")
        .and_then(rfc3339)
        .unwrap_or(now + 3600);
    aws.creds.store(Some(Arc::new(creds)));
    aws.expires.store(expiry, Ordering::Relaxed);
    Ok(())
}

/// The text of the first `<name>…</name>` (STS answers are small, flat XML).
fn tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{name}>"))? + start;
    Some(xml[start..end].trim())
}

/// `2026-12-06T19:00:00Z` as Unix seconds.
fn rfc3339(t: &str) -> Option<u64> {
    humantime::parse_rfc3339_weak(t)
        .ok()?
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sts_answers_are_read() {
        let xml = "<AssumeRoleWithWebIdentityResponse><Credentials><AccessKeyId>AK</AccessKeyId><SecretAccessKey>SK</SecretAccessKey><SessionToken>ST</SessionToken><Expiration>2026-12-06T19:00:00Z</Expiration></Credentials></AssumeRoleWithWebIdentityResponse>";
        assert_eq!(tag(xml, "AccessKeyId"), Some("AK"));
        assert_eq!(tag(xml, "Nope"), None);
        assert_eq!(rfc3339("1970-01-02T00:00:01Z"), Some(86_401));
        assert_eq!(rfc3339("2026-12-06T19:00:00Z"), Some(1_796_583_600));
    }
}
