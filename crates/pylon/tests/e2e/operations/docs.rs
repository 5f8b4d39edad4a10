//! The operations documents cannot rot: every `sh` block of the runbook, the incident response
//! plan and the disaster-recovery procedure runs, in order, against a live Pylon.

use super::*;

/// The fenced ```sh blocks of a Markdown file, with the line each starts on.
fn sh_blocks(text: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        match &mut current {
            None if trimmed == "```sh" => current = Some((n + 1, String::new())),
            Some(_) if trimmed == "```" => blocks.extend(current.take()),
            Some((_, body)) => {
                body.push_str(trimmed);
                body.push('\n');
            }
            None => {}
        }
    }
    blocks
}

#[tokio::test]
async fn every_command_in_the_runbooks_and_the_recovery_procedure_works() {
    let mock = MockServer::start().await;
    let gw = Serving::start("docs", &base_config(&mock, "[metrics]\nenabled = true\n"));
    // Traffic first: the metrics the runbook greps for exist once requests were served.
    for _ in 0..3 {
        let r = client()
            .post(gw.url("/v1/chat/completions"))
            .json(&hello("chat"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let work = temp_dir("docs-run");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_pylon")).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
    let mut ran = 0;
    for doc in ["runbook.md", "incident-response.md", "disaster-recovery.md"] {
        let text = std::fs::read_to_string(docs.join(doc)).unwrap();
        let blocks = sh_blocks(&text);
        assert!(!blocks.is_empty(), "{doc} has commands");
        for (line, block) in blocks {
            let out = tokio::task::spawn_blocking({
                let (block, work, path) = (block.clone(), work.clone(), path.clone());
                let (url, config, data) = (gw.url(""), gw.config.clone(), gw.data.clone());
                move || {
                    Command::new("bash")
                        .args(["-euo", "pipefail", "-c", &block])
                        .current_dir(&work)
                        .env("PATH", path)
                        .env("PYLON", url)
                        // The docs pass `--url "$PYLON"`: a default must not reach anything.
                        .env("PYLON_URL", "http://127.0.0.1:9")
                        .env("PYLON_ADMIN_TOKEN", TOKEN)
                        .env("CONFIG", config)
                        .env("DATA", data)
                        .env("BACKUP", work.join("backup.tar.gz"))
                        .env("NEW_DATA", work.join("new-data"))
                        .output()
                        .unwrap()
                }
            })
            .await
            .unwrap();
            assert!(
                out.status.success(),
                "docs/{doc}:{line} failed:\n{block}\nstdout: {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            ran += 1;
        }
    }
    assert!(ran >= 20, "{ran} blocks ran");
    // The recovery procedure really restored, and the restored config checks.
    assert!(work.join("new-data/pylon.db").exists());
    assert!(work.join("new-data/pylon.toml").exists());
}
