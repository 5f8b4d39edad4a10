//! A provider's credential on each request: its key header (configured or stored through the
//! admin API), an Azure Entra ID token kept fresh from its file, or an AWS SigV4 signature.
//!
//! Nothing here reads a file or calls a service on the request's path: tokens and AWS
//! credentials are loaded by [`refresh`], which the control plane runs every 30 s.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::{BodyExt, Full, Limited};
use pylon_providers::bedrock;

use crate::snapshot::Provider;

/// Adds the provider's credential to a request about to be sent with `body`.
pub(crate) fn apply(
    p: &Provider,
    req: &mut Request<Full<Bytes>>,
    body: &[u8],
) -> Result<(), String> {
    if let Some(aws) = &p.aws {
        let creds = aws.credentials().ok_or_else(|| {
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
    let Some((role_arn, token_file, sts_url)) = aws.web_identity() else {
        return Ok(());
    };
    let now = u64::try_from(crate::auth::unix_now()).unwrap_or(0);
    if aws.ready() && aws.expires() > now + RENEW_BEFORE.as_secs() {
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
        ("RoleArn", role_arn),
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
    let resp = tokio::time::timeout(p.timeouts.response, p.client.send(req))
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
            crate::aws::tag(&xml, "Message").unwrap_or("")
        ));
    }
    let (creds, expiry) = crate::aws::sts_credentials(&xml, now)?;
    aws.set(creds, expiry);
    Ok(())
}
