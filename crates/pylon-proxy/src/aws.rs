//! A Bedrock provider's AWS identity: its region, the credentials in force (swapped whole when
//! renewed) and where they come from. `credential.rs` signs with them and renews them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use pylon_providers::bedrock::AwsCredentials;

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

    /// The credentials in force.
    pub fn credentials(&self) -> Option<Arc<AwsCredentials>> {
        self.creds.load_full()
    }

    /// Unix seconds when the credentials expire (0: they do not).
    pub fn expires(&self) -> u64 {
        self.expires.load(Ordering::Relaxed)
    }

    /// The role, token file and STS endpoint, when the identity is a web identity.
    pub fn web_identity(&self) -> Option<(&str, &std::path::Path, &str)> {
        match &self.source {
            Source::WebIdentity {
                role_arn,
                token_file,
                sts_url,
            } => Some((role_arn, token_file, sts_url)),
            Source::Static => None,
        }
    }

    /// Installs renewed credentials.
    pub fn set(&self, creds: AwsCredentials, expires: u64) {
        self.creds.store(Some(Arc::new(creds)));
        self.expires.store(expires, Ordering::Relaxed);
    }
}

/// The credentials and expiry (Unix seconds; an hour from `now` if unsaid) of an STS answer.
pub(crate) fn sts_credentials(xml: &str, now: u64) -> Result<(AwsCredentials, u64), String> {
    let creds = AwsCredentials {
        access_key_id: tag(xml, "AccessKeyId")
            .ok_or("STS answer without AccessKeyId")?
            .to_owned(),
        secret_access_key: tag(xml, "SecretAccessKey")
            .ok_or("STS answer without SecretAccessKey")?
            .to_owned(),
        session_token: tag(xml, "SessionToken").map(str::to_owned),
    };
    let expiry = tag(xml, "Expiration")
        .and_then(rfc3339)
        .unwrap_or(now + 3600);
    Ok((creds, expiry))
}

/// The text of the first `<name>…</name>` (STS answers are small, flat XML).
pub(crate) fn tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
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

    fn cfg(keys: Option<(&str, &str)>) -> pylon_config::Aws {
        let secret = |s: &str| Some(pylon_config::Secret::new(s));
        pylon_config::Aws {
            region: "eu-west-1".into(),
            access_key_id: keys.and_then(|k| secret(k.0)),
            secret_access_key: keys.and_then(|k| secret(k.1)),
            session_token: None,
            role_arn: None,
            web_identity_token_file: None,
            sts_url: None,
        }
    }

    #[test]
    fn credentials_come_from_the_config_then_the_environment_then_a_web_identity() {
        let env = |k: &str| match k {
            "AWS_ACCESS_KEY_ID" => Some("ENVKEY".to_owned()),
            "AWS_SECRET_ACCESS_KEY" => Some("envsecret".to_owned()),
            "AWS_ROLE_ARN" => Some("arn:aws:iam::1:role/r".to_owned()),
            "AWS_WEB_IDENTITY_TOKEN_FILE" => Some("/var/run/token".to_owned()),
            _ => None,
        };
        let configured = Aws::new(&cfg(Some(("CFGKEY", "s"))), &env);
        assert_eq!(configured.credentials().unwrap().access_key_id, "CFGKEY");
        assert!(configured.web_identity().is_none());

        let from_env = Aws::new(&cfg(None), &env);
        assert_eq!(from_env.credentials().unwrap().access_key_id, "ENVKEY");

        let no_keys =
            |k: &str| env(k).filter(|_| k.starts_with("AWS_ROLE") || k.starts_with("AWS_WEB"));
        let identity = Aws::new(&cfg(None), &no_keys);
        assert!(!identity.ready(), "nothing until STS answers");
        let (role, file, sts) = identity.web_identity().unwrap();
        assert_eq!(
            (role, file.to_str().unwrap()),
            ("arn:aws:iam::1:role/r", "/var/run/token")
        );
        assert_eq!(sts, "https://sts.eu-west-1.amazonaws.com");
    }
}
