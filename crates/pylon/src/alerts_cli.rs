//! `pylon alerts backtest`: a rule replayed over a CSV series on this machine, with the code
//! the evaluator runs live.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;

/// `pylon alerts …`.
#[derive(Subcommand)]
pub(crate) enum AlertsCommand {
    /// Replay a rule over a series: which points would have fired.
    Backtest {
        /// A TOML file with `[[alerts]]` entries (e.g. pylon.toml).
        #[arg(long)]
        rule: PathBuf,
        /// Which of its rules (default: the only one).
        #[arg(long)]
        name: Option<String>,
        /// `timestamp,value[,traffic]` lines: unix seconds or ms, or RFC 3339 times.
        #[arg(long)]
        series: PathBuf,
        /// Print every judged point as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Runs a `pylon alerts` command.
pub(crate) fn run(cmd: AlertsCommand) -> anyhow::Result<()> {
    let AlertsCommand::Backtest {
        rule,
        name,
        series,
        json,
    } = cmd;
    let mut table: toml::Table = toml::from_str(&read(&rule)?)
        .map_err(|e| anyhow::anyhow!("{}: {}", rule.display(), e.message().trim()))?;
    let entries = match table.remove("alerts") {
        Some(toml::Value::Array(a)) => a,
        _ => anyhow::bail!("{}: no [[alerts]] entries", rule.display()),
    };
    let mut alerts = Vec::with_capacity(entries.len());
    for e in entries {
        let text = toml::to_string(&e)?;
        alerts.push(
            pylon_config::parse_alert(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", rule.display()))?,
        );
    }
    let chosen = match &name {
        Some(n) => alerts.into_iter().find(|a| a.name.get_ref() == n),
        None if alerts.len() == 1 => alerts.into_iter().next(),
        None => anyhow::bail!(
            "{} has {} rules: choose one with --name",
            rule.display(),
            alerts.len()
        ),
    }
    .ok_or_else(|| anyhow::anyhow!("no rule named {name:?} in {}", rule.display()))?;
    use pylon_control::alerts::backtest;
    let points = backtest::parse_csv(&read(&series)?)
        .map_err(|e| anyhow::anyhow!("{}: {e}", series.display()))?;
    let replay = backtest::run(&chosen, &points)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&replay)?);
        return Ok(());
    }
    let at = |ms: u64| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string()
    };
    let breaking = replay.points.iter().filter(|p| p.holds).count();
    println!(
        "{}: {} points, {breaking} breaking the condition, {} firing",
        chosen.name.get_ref(),
        replay.points.len(),
        replay.firings.len()
    );
    for f in &replay.firings {
        match f.to_ms {
            Some(to) => println!("  fired {} → resolved {}", at(f.from_ms), at(to)),
            None => println!("  fired {} → still firing at the end", at(f.from_ms)),
        }
    }
    Ok(())
}
