//! `pylon keys …`, `pylon usage`, `pylon rollout …`: the admin API from the command line, local
//! or remote.

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::{json, Value};

/// Where the admin API is and how to authenticate.
#[derive(Args)]
pub(crate) struct Remote {
    /// Base URL of a running Pylon (its admin listener if it has one).
    #[arg(long, env = "PYLON_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The admin token.
    #[arg(long, env = "PYLON_ADMIN_TOKEN", hide_env_values = true)]
    token: String,
}

#[derive(Subcommand)]
pub(crate) enum KeysCommand {
    /// Create a key; prints it once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        team: Option<String>,
        #[arg(long)]
        user: Option<String>,
        /// Comma-separated model names the key may use (default: all).
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        #[arg(long)]
        rpm: Option<i64>,
        #[arg(long)]
        tpm: Option<i64>,
        #[arg(long)]
        max_concurrent: Option<i64>,
        /// Budget in US dollars per --period.
        #[arg(long)]
        budget: Option<f64>,
        /// daily, monthly or total.
        #[arg(long, default_value = "monthly")]
        period: String,
        /// Lifetime, e.g. 30d.
        #[arg(long)]
        expires_in: Option<String>,
    },
    /// List keys (never the keys themselves).
    List,
    /// Show one key.
    Show { id: String },
    /// Revoke a key at once.
    Revoke { id: String },
    /// Issue a new key; the old one stays valid for --grace.
    Rotate {
        id: String,
        #[arg(long, default_value = "24h")]
        grace: String,
    },
}

struct Client {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Client {
    fn new(r: Remote) -> anyhow::Result<Self> {
        // HTTPS to a remote Pylon uses rustls with the ring provider, as the gateway does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Ok(Client {
            http: reqwest::Client::builder().build()?,
            url: r.url.trim_end_matches('/').to_owned(),
            token: r.token,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach {}", self.url))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = body["error"]["message"].as_str().unwrap_or("no details");
            anyhow::bail!("{status}: {msg}");
        }
        Ok(body)
    }
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Runs a `pylon keys` command.
pub(crate) async fn keys(remote: Remote, cmd: KeysCommand) -> anyhow::Result<()> {
    let c = Client::new(remote)?;
    match cmd {
        KeysCommand::Create {
            name,
            team,
            user,
            models,
            rpm,
            tpm,
            max_concurrent,
            budget,
            period,
            expires_in,
        } => {
            let mut body = json!({"name": name, "team_id": team, "user_id": user, "allowed_models": models, "expires_in": expires_in,
                "limits": {"rpm": rpm, "tpm": tpm, "max_concurrent": max_concurrent}});
            if let Some(usd) = budget {
                body["budget"] = json!({"amount_usd": usd, "period": period});
            }
            let created = c
                .call(reqwest::Method::POST, "/admin/v1/keys", Some(body))
                .await?;
            eprintln!("Store this key now; it cannot be shown again:");
            println!("{}", created["key"].as_str().unwrap_or_default());
            eprintln!("id: {}", created["id"].as_str().unwrap_or_default());
            Ok(())
        }
        KeysCommand::List => {
            let keys = c.call(reqwest::Method::GET, "/admin/v1/keys", None).await?;
            println!(
                "{:<38} {:<20} {:<12} {:<8} TEAM",
                "ID", "NAME", "PREFIX", "STATUS"
            );
            for k in keys.as_array().into_iter().flatten() {
                println!(
                    "{:<38} {:<20} {:<12} {:<8} {}",
                    k["id"].as_str().unwrap_or(""),
                    k["name"].as_str().unwrap_or(""),
                    k["prefix"].as_str().unwrap_or(""),
                    k["status"].as_str().unwrap_or(""),
                    k["team_id"].as_str().unwrap_or("-")
                );
            }
            Ok(())
        }
        KeysCommand::Show { id } => print_json(
            &c.call(reqwest::Method::GET, &format!("/admin/v1/keys/{id}"), None)
                .await?,
        ),
        KeysCommand::Revoke { id } => {
            c.call(
                reqwest::Method::DELETE,
                &format!("/admin/v1/keys/{id}"),
                None,
            )
            .await?;
            eprintln!("revoked {id}");
            Ok(())
        }
        KeysCommand::Rotate { id, grace } => {
            let created = c
                .call(
                    reqwest::Method::POST,
                    &format!("/admin/v1/keys/{id}/rotate"),
                    Some(json!({"grace": grace})),
                )
                .await?;
            eprintln!("New key (the old one stays valid for {grace}); store it now:");
            println!("{}", created["key"].as_str().unwrap_or_default());
            Ok(())
        }
    }
}

/// Runs `pylon usage`.
pub(crate) async fn usage(
    remote: Remote,
    group_by: String,
    from: Option<String>,
    to: Option<String>,
) -> anyhow::Result<()> {
    let c = Client::new(remote)?;
    let mut path = format!("/admin/v1/usage?group_by={group_by}");
    for (k, v) in [("from", from), ("to", to)] {
        if let Some(v) = v {
            path.push_str(&format!("&{k}={v}"));
        }
    }
    let report = c.call(reqwest::Method::GET, &path, None).await?;
    println!(
        "{:<38} {:>10} {:>14} {:>14} {:>12}",
        group_by.to_uppercase(),
        "REQUESTS",
        "INPUT TOKENS",
        "OUTPUT TOKENS",
        "COST USD"
    );
    for r in report["rows"].as_array().into_iter().flatten() {
        println!(
            "{:<38} {:>10} {:>14} {:>14} {:>12.6}",
            r["group"].as_str().unwrap_or(""),
            r["requests"].as_i64().unwrap_or(0),
            r["input_tokens"].as_i64().unwrap_or(0),
            r["output_tokens"].as_i64().unwrap_or(0),
            r["cost_usd"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}

/// Runs `pylon secrets rotate-master`.
pub(crate) async fn rotate_master(remote: Remote) -> anyhow::Result<()> {
    let c = Client::new(remote)?;
    let r = c
        .call(
            reqwest::Method::POST,
            "/admin/v1/secrets/rotate-master",
            None,
        )
        .await?;
    eprintln!(
        "re-encrypted {} credential(s) under master key {}",
        r["reencrypted"].as_i64().unwrap_or(0),
        r["master_key_id"].as_str().unwrap_or("?")
    );
    Ok(())
}

/// `pylon cache …` commands.
#[derive(Subcommand)]
pub(crate) enum CacheCommand {
    /// Report a semantic cache hit as wrong: its entry is deleted and the pair blocked.
    Wrong {
        /// The wrong response's `x-request-id`.
        request_id: String,
        /// Why it was wrong (kept in Pylon's log).
        #[arg(long)]
        note: Option<String>,
    },
}

/// Runs a `pylon cache` command.
pub(crate) async fn cache(remote: Remote, cmd: CacheCommand) -> anyhow::Result<()> {
    let c = Client::new(remote)?;
    match cmd {
        CacheCommand::Wrong { request_id, note } => {
            let r = c
                .call(
                    reqwest::Method::POST,
                    "/admin/v1/cache/feedback",
                    Some(json!({"request_id": request_id, "note": note})),
                )
                .await?;
            eprintln!(
                "entry {} {}; the pair is blocked",
                r["entry"].as_str().unwrap_or("?"),
                if r["evicted"] == true {
                    "evicted"
                } else {
                    "was already gone here (deleted in Redis if shared)"
                }
            );
            print_json(&r)
        }
    }
}

/// `pylon rollout …` commands.
#[derive(Subcommand)]
pub(crate) enum RolloutCommand {
    /// Every rollout, or one with its arms and latest verdicts.
    Status {
        name: Option<String>,
        /// Print again every second until the rollout is promoted, rolled back or aborted.
        #[arg(long)]
        watch: bool,
    },
    /// Make the rollouts of a file (`[[rollouts]]` entries as in pylon.toml, or one as JSON);
    /// they start at once unless `start = false`, and every instance applies them.
    Create { file: std::path::PathBuf },
    /// Forget a rollout made with `create` once it moves no traffic (pending, rolled back or
    /// aborted).
    Delete { name: String },
    /// Start a rollout declared with `start = false`.
    Start { name: String },
    /// Hold the current step; verdicts are not acted on until resumed.
    Pause { name: String },
    /// Continue (and leave a step held for a manual resume).
    Resume { name: String },
    /// Go to 100 % now (blue-green's switch).
    Promote { name: String },
    /// Back to stable, final.
    Abort { name: String },
}

fn print_rollout(r: &Value) {
    println!(
        "{}  {}  state={}  weight={}%  step={}/{}",
        r["name"].as_str().unwrap_or("?"),
        r["strategy"].as_str().unwrap_or("?"),
        r["state"].as_str().unwrap_or("?"),
        r["weight"].as_f64().unwrap_or(0.0),
        r["step"].as_u64().map_or(0, |s| s + 1),
        r["steps"].as_array().map_or(0, Vec::len),
    );
    for arm in ["stable", "candidate"] {
        let a = &r["arms"][arm];
        if a.is_object() {
            println!(
                "  {arm:<9} requests={:<6} error_rate={:.3}  p95={}ms  ttft_p95={}ms",
                a["requests"],
                a["error_rate"].as_f64().unwrap_or(0.0),
                a["latency_p95_ms"]
                    .as_f64()
                    .map_or("-".into(), |v| format!("{v:.0}")),
                a["ttft_p95_ms"]
                    .as_f64()
                    .map_or("-".into(), |v| format!("{v:.0}")),
            );
        }
    }
    for v in r["verdicts"].as_array().into_iter().flatten().take(5) {
        println!(
            "  verdict {:<12} at weight {}%: {}",
            v["outcome"].as_str().unwrap_or("?"),
            v["weight"].as_f64().unwrap_or(0.0),
            v["detail"]["reason"].as_str().unwrap_or("")
        );
    }
}

/// The rollouts a file declares: `[[rollouts]]` entries (TOML), or one JSON object.
fn rollouts_in(file: &std::path::Path) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    if let Ok(v) = serde_json::from_str::<Value>(&text) {
        return Ok(vec![v]);
    }
    let mut table: toml::Table = toml::from_str(&text)
        .with_context(|| format!("{} is neither TOML nor JSON", file.display()))?;
    let entries = match table.remove("rollouts") {
        Some(toml::Value::Array(a)) => a,
        _ => anyhow::bail!("{}: no [[rollouts]] entries", file.display()),
    };
    entries
        .into_iter()
        .map(|e| Ok(serde_json::to_value(e)?))
        .collect()
}

/// Runs a `pylon rollout` command.
pub(crate) async fn rollout(remote: Remote, cmd: RolloutCommand) -> anyhow::Result<()> {
    let c = Client::new(remote)?;
    let (name, command) = match cmd {
        RolloutCommand::Status { name: None, .. } => {
            let all = c
                .call(reqwest::Method::GET, "/admin/v1/rollouts", None)
                .await?;
            for r in all.as_array().into_iter().flatten() {
                print_rollout(r);
            }
            return Ok(());
        }
        RolloutCommand::Status {
            name: Some(name),
            watch,
        } => loop {
            let r = c
                .call(
                    reqwest::Method::GET,
                    &format!("/admin/v1/rollouts/{name}"),
                    None,
                )
                .await?;
            print_rollout(&r);
            let done = matches!(r["state"].as_str(), Some("rolled_back" | "aborted"))
                || (r["state"] == "promoted" && r["rollback_window_until"].is_null());
            if !watch || done {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        },
        RolloutCommand::Create { file } => {
            for entry in rollouts_in(&file)? {
                let r = c
                    .call(reqwest::Method::POST, "/admin/v1/rollouts", Some(entry))
                    .await?;
                print_rollout(&r);
            }
            return Ok(());
        }
        RolloutCommand::Delete { name } => {
            c.call(
                reqwest::Method::DELETE,
                &format!("/admin/v1/rollouts/{name}"),
                None,
            )
            .await?;
            println!("{name}  deleted");
            return Ok(());
        }
        RolloutCommand::Start { name } => (name, "start"),
        RolloutCommand::Pause { name } => (name, "pause"),
        RolloutCommand::Resume { name } => (name, "resume"),
        RolloutCommand::Promote { name } => (name, "promote"),
        RolloutCommand::Abort { name } => (name, "abort"),
    };
    let r = c
        .call(
            reqwest::Method::POST,
            &format!("/admin/v1/rollouts/{name}/{command}"),
            None,
        )
        .await?;
    print_rollout(&r);
    Ok(())
}
