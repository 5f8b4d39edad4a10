//! Automatic certificates (RFC 8555): obtained at start, kept in the store with the private key
//! sealed under the master key, renewed ahead of expiry by whichever instance holds the lease,
//! and installed by every instance when the store has a newer one — new handshakes get the new
//! certificate, open connections keep theirs, nothing restarts.
//!
//! When to renew and when to look again is decided in `pylon_policy::renewal`; this module
//! does the talking (CA, store, TLS).

mod http;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use pylon_config::{Acme, AcmeChallenge};
use pylon_policy::renewal::{self, Served};
use pylon_proxy::tls::challenges::{alpn01_name, http01_name, ChallengeSource, Challenges};
use pylon_proxy::tls::Tls;
use pylon_store::{account_label, certificate_label, CertificateRow, Store};

use crate::secrets::SecretsError;
use crate::Control;

/// How long one order may hold the renewal lease before another instance may try.
const LEASE_MS: i64 = 5 * 60 * 1000;
/// How long the CA gets to validate every name, and then to issue.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a published challenge answer stays in the store.
const CHALLENGE_TTL_MS: i64 = 10 * 60 * 1000;

/// Why obtaining or installing a certificate failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("the CA refused or failed: {0}")]
    Ca(#[from] instant_acme::Error),
    #[error("cannot reach the CA: {0}")]
    Client(String),
    #[error(transparent)]
    Store(#[from] pylon_store::StoreError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error("the certificate cannot be served: {0}")]
    Tls(#[from] pylon_proxy::tls::TlsError),
    #[error("cannot make the certificate request: {0}")]
    Csr(#[from] rcgen::Error),
    #[error("the stored ACME account is unreadable: {0}")]
    Account(#[from] serde_json::Error),
    #[error("the CA did not validate {0}")]
    Invalid(String),
    #[error("the CA offers no {0} challenge for {1}")]
    NoChallenge(&'static str, String),
}

/// Lets every instance answer challenges published by the one that placed the order.
struct StoreChallenges(Store);

impl ChallengeSource for StoreChallenges {
    fn lookup(
        &self,
        name: String,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send>> {
        let store = self.0.clone();
        Box::pin(async move { store.acme_challenge(&name, now_ms()).await.ok().flatten() })
    }
}

/// A certificate is named by its first domain.
fn certificate_name(acme: &Acme) -> String {
    acme.domains
        .get_ref()
        .first()
        .map_or_else(String::new, |d| d.to_ascii_lowercase())
}

/// The store's rows and leases count in signed milliseconds.
fn now_ms() -> i64 {
    i64::try_from(crate::keys::unix_now_ms()).unwrap_or(i64::MAX)
}

fn at(unix_s: i64) -> Option<SystemTime> {
    u64::try_from(unix_s)
        .ok()
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
}

/// What this instance serves: the store row's version and the certificate's validity.
#[derive(Clone, Copy)]
struct Installed {
    updated_at: i64,
    served: Served,
}

impl Control {
    /// Starts keeping `tls`'s certificate current from ACME. Needs a master key: the private
    /// key is stored sealed.
    /// A stored certificate is served before this returns; ordering happens in the background.
    pub async fn start_acme(self: &Arc<Self>, tls: Tls, acme: Acme) -> Result<(), SecretsError> {
        if self.keyring.current_id().is_none() {
            return Err(SecretsError::NoMasterKey);
        }
        if let Some(c) = tls.challenges() {
            c.set_source(Arc::new(StoreChallenges(self.store.clone())));
        }
        let mut installed = None;
        self.pick_up_stored(&tls, &certificate_name(&acme), &mut installed)
            .await;
        let this = self.clone();
        self.spawn(async move { this.acme_loop(tls, acme, installed).await });
        Ok(())
    }

    async fn acme_loop(self: Arc<Self>, tls: Tls, acme: Acme, mut installed: Option<Installed>) {
        let name = certificate_name(&acme);
        let lease = format!("acme:{name}");
        let instance = uuid::Uuid::new_v4().to_string();
        let mut stop = self.stop.subscribe();
        let mut failures = 0u32;
        let mut error: Option<String> = None;
        loop {
            // What the store has (ordered here or by another instance) is what to serve.
            self.pick_up_stored(&tls, &name, &mut installed).await;
            let now_s = now_ms() / 1000;
            let served = installed.map(|i| i.served);
            let mut waiting_for_peer = false;
            if renewal::due(served, acme.renew_before, now_s) {
                match self
                    .store
                    .take_lease(&lease, &instance, now_ms(), LEASE_MS)
                    .await
                {
                    Ok(true) if self.pick_up_stored(&tls, &name, &mut installed).await => {
                        let _ = self.store.release_lease(&lease, &instance).await;
                    }
                    Ok(true) => {
                        tracing::info!(target: "pylon::acme", certificate = %name, directory = %acme.directory, challenge = acme.challenge.as_str(), "ordering a certificate");
                        match self.renew(&tls, &acme, &name).await {
                            Ok(i) => {
                                let _ = self.store.release_lease(&lease, &instance).await;
                                installed = Some(i);
                                failures = 0;
                                error = None;
                                self.gateway
                                    .metrics()
                                    .acme_orders
                                    .with_label_values(&["ok"])
                                    .inc();
                                tracing::info!(target: "pylon::acme", certificate = %name, not_after = i.served.not_after, "certificate obtained and stored");
                            }
                            Err(e) => {
                                failures = failures.saturating_add(1);
                                error = Some(e.to_string());
                                self.gateway
                                    .metrics()
                                    .acme_orders
                                    .with_label_values(&["error"])
                                    .inc();
                                // Keep the lease through the backoff, so the other instances
                                // do not retry at once against the CA's failure limits.
                                let hold = i64::try_from(renewal::backoff(failures).as_millis())
                                    .unwrap_or(LEASE_MS);
                                let _ = self
                                    .store
                                    .take_lease(&lease, &instance, now_ms(), hold)
                                    .await;
                                tracing::warn!(target: "pylon::acme", certificate = %name, failures, error = %e, "certificate order failed; retrying with backoff");
                            }
                        }
                    }
                    Ok(false) => waiting_for_peer = true,
                    Err(e) => {
                        tracing::warn!(target: "pylon::acme", error = %e, "cannot take the renewal lease")
                    }
                }
            }
            self.gateway.report_acme(pylon_proxy::AcmeState {
                serving: installed.is_some(),
                renew_at: installed
                    .and_then(|i| at(renewal::renew_at(i.served, acme.renew_before))),
                failures,
                error: error.clone(),
            });
            let mut wait = renewal::next_look(
                installed.map(|i| i.served),
                acme.renew_before,
                now_ms() / 1000,
                acme.check_interval,
                failures,
            );
            if waiting_for_peer {
                wait = wait.max(renewal::WAIT_FOR_PEER);
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Re-seals ACME accounts and certificate keys not under the `current` master key.
    pub(crate) async fn rotate_acme(
        &self,
        current: &str,
    ) -> Result<usize, crate::admin::AdminError> {
        let reseal = |sealed: &pylon_store::Credential| {
            let plain = self
                .keyring
                .open(sealed)
                .map_err(crate::admin::AdminError::from_secrets)?;
            self.keyring
                .seal(&sealed.provider, &plain, now_ms() / 1000)
                .map_err(crate::admin::AdminError::from_secrets)
        };
        let mut n = 0;
        for (directory, sealed) in self.store.acme_accounts().await? {
            if sealed.master_key_id != current {
                self.store
                    .put_acme_account(&directory, &reseal(&sealed)?)
                    .await?;
                n += 1;
            }
        }
        for mut row in self.store.certificates().await? {
            if row.key.master_key_id != current {
                // `updated_at` stays: the certificate is the same, nothing to reinstall.
                row.key = reseal(&row.key)?;
                self.store.put_certificate(&row).await?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Serves the store's certificate if it is not the one served here (another instance may
    /// have renewed it, even since this one took the lease); whether it did.
    async fn pick_up_stored(
        &self,
        tls: &Tls,
        name: &str,
        installed: &mut Option<Installed>,
    ) -> bool {
        let row = match self.store.certificate(name).await {
            Ok(Some(row)) => row,
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(target: "pylon::acme", error = %e, "cannot read the certificate from the store");
                return false;
            }
        };
        if installed.is_some_and(|i| i.updated_at == row.updated_at) {
            return false;
        }
        match self.install(tls, &row) {
            Ok(i) => {
                *installed = Some(i);
                tracing::info!(target: "pylon::acme", certificate = %name, not_after = row.not_after, "serving the stored certificate");
                true
            }
            Err(e) => {
                tracing::warn!(target: "pylon::acme", certificate = %name, error = %e, "cannot serve the stored certificate");
                false
            }
        }
    }

    /// Serves a stored certificate.
    fn install(&self, tls: &Tls, row: &CertificateRow) -> Result<Installed, AcmeError> {
        let key = self.keyring.open(&row.key)?;
        self.serve(tls, &row.chain_pem, &key, row.updated_at)
    }

    /// Serves a chain and its key (both PEM) stored at `updated_at`.
    fn serve(
        &self,
        tls: &Tls,
        chain_pem: &str,
        key_pem: &str,
        updated_at: i64,
    ) -> Result<Installed, AcmeError> {
        let (not_before, not_after) = pylon_proxy::tls::chain_validity(chain_pem)
            .ok_or_else(|| AcmeError::Invalid("the chain (its leaf is unreadable)".into()))?;
        tls.install(chain_pem, key_pem)?;
        self.gateway.report_tls(tls.not_after());
        Ok(Installed {
            updated_at,
            served: Served {
                not_before,
                not_after,
            },
        })
    }

    /// Orders a certificate, serves it here and stores it for the other instances.
    async fn renew(&self, tls: &Tls, acme: &Acme, name: &str) -> Result<Installed, AcmeError> {
        let challenges = tls
            .challenges()
            .cloned()
            .unwrap_or_else(|| Arc::new(Challenges::default()));
        let (chain, key_pem) = self.order(acme, &challenges).await?;
        let sealed = self
            .keyring
            .seal(&certificate_label(name), &key_pem, now_ms() / 1000)?;
        let updated_at = now_ms();
        let installed = self.serve(tls, &chain, &key_pem, updated_at)?;
        self.store
            .put_certificate(&CertificateRow {
                name: name.to_owned(),
                chain_pem: chain,
                key: sealed,
                not_after: installed.served.not_after,
                updated_at,
            })
            .await?;
        Ok(installed)
    }

    /// The account for the directory: the stored one (unless `fresh`), or a new one, stored
    /// sealed.
    async fn account(&self, acme: &Acme, fresh: bool) -> Result<Account, AcmeError> {
        let client = || -> Result<Box<http::Client>, AcmeError> {
            Ok(Box::new(
                http::Client::new(acme.ca_file.as_deref()).map_err(AcmeError::Client)?,
            ))
        };
        let stored = match fresh {
            false => self.store.acme_account(&acme.directory).await?,
            true => None,
        };
        if let Some(sealed) = stored {
            let credentials = serde_json::from_str(&self.keyring.open(&sealed)?)?;
            return Ok(Account::builder_with_http(client()?)
                .from_credentials(credentials)
                .await?);
        }
        let contact = acme.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = Account::builder_with_http(client()?)
            .create(
                &NewAccount {
                    contact: &contacts,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                acme.directory.clone(),
                None,
            )
            .await?;
        let sealed = self.keyring.seal(
            &account_label(&acme.directory),
            &serde_json::to_string(&credentials)?,
            now_ms() / 1000,
        )?;
        self.store
            .put_acme_account(&acme.directory, &sealed)
            .await?;
        Ok(account)
    }

    /// One order: answer each name's challenge, wait for the CA, send a CSR for a new P-256
    /// key, fetch the chain. Returns the chain and the key, both PEM.
    async fn order(
        &self,
        acme: &Acme,
        challenges: &Challenges,
    ) -> Result<(String, String), AcmeError> {
        let domains: Vec<String> = acme
            .domains
            .get_ref()
            .iter()
            .map(|d| d.to_ascii_lowercase())
            .collect();
        let identifiers: Vec<Identifier> =
            domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
        let new_order = NewOrder::new(&identifiers);
        let mut order = match self.account(acme, false).await?.new_order(&new_order).await {
            // The CA lost or deactivated the account (a reset staging CA, a restarted Pebble):
            // register again rather than fail until someone clears the store.
            Err(instant_acme::Error::Api(p)) if forgotten_account(&p) => {
                tracing::warn!(target: "pylon::acme", directory = %acme.directory, problem = %p, "the CA no longer knows the stored account; registering a new one");
                self.account(acme, true)
                    .await?
                    .new_order(&new_order)
                    .await?
            }
            other => other?,
        };
        let kind = match acme.challenge {
            AcmeChallenge::Http01 => ChallengeType::Http01,
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut published = Vec::new();
        let answered = async {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz = authz?;
                let domain = authz.identifier().to_string();
                match authz.status {
                    AuthorizationStatus::Pending => {}
                    AuthorizationStatus::Valid => continue,
                    other => return Err(AcmeError::Invalid(format!("{domain} ({other:?})"))),
                }
                let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| {
                    AcmeError::NoChallenge(acme.challenge.as_str(), domain.clone())
                })?;
                let answer = challenge.key_authorization().as_str().to_owned();
                let published_as = match acme.challenge {
                    AcmeChallenge::Http01 => http01_name(&challenge.token),
                    AcmeChallenge::TlsAlpn01 => alpn01_name(&domain),
                };
                challenges.publish(published_as.clone(), answer.clone());
                self.store
                    .put_acme_challenge(
                        &published_as,
                        &answer,
                        now_ms() + CHALLENGE_TTL_MS,
                        now_ms(),
                    )
                    .await?;
                published.push(published_as);
                challenge.set_ready().await?;
            }
            Ok::<_, AcmeError>(())
        }
        .await;
        let issued = match answered {
            Ok(()) => self.finish(&mut order, &domains).await,
            Err(e) => Err(e),
        };
        for name in &published {
            challenges.withdraw(name);
            let _ = self.store.delete_acme_challenge(name).await;
        }
        issued
    }

    /// Waits for validation, finalizes with a fresh key and fetches the chain.
    async fn finish(
        &self,
        order: &mut instant_acme::Order,
        domains: &[String],
    ) -> Result<(String, String), AcmeError> {
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .timeout(ORDER_TIMEOUT);
        let status = order.poll_ready(&retries).await?;
        if status != OrderStatus::Ready {
            return Err(AcmeError::Invalid(why_invalid(order, domains).await));
        }
        let key = rcgen::KeyPair::generate()?;
        let mut params = rcgen::CertificateParams::new(domains.to_vec())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        let csr = params.serialize_request(&key)?;
        order.finalize_csr(csr.der()).await?;
        let chain = order.poll_certificate(&retries).await?;
        Ok((chain, key.serialize_pem()))
    }
}

/// Whether a problem says the CA does not know the account (`accountDoesNotExist`, RFC 8555 §6.7).
fn forgotten_account(p: &instant_acme::Problem) -> bool {
    matches!(
        p.r#type.as_deref(),
        Some("urn:ietf:params:acme:error:accountDoesNotExist")
    )
}

/// The CA's reason an order failed: the order's problem, or the first failed challenge's.
async fn why_invalid(order: &mut instant_acme::Order, domains: &[String]) -> String {
    let names = domains.join(", ");
    if let Some(p) = &order.state().error {
        return format!("{names}: {p}");
    }
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        if let Some(p) = authz.challenges.iter().find_map(|c| c.error.as_ref()) {
            return format!("{}: {p}", authz.identifier());
        }
    }
    format!("{names}: check that each name resolves to this server and that the CA reaches port 80 (http-01) or 443 (tls-alpn-01)")
}
