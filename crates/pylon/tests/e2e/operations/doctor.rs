//! `pylon doctor` on a sound set-up and on five broken ones.

use super::*;

fn doctor(config: &str) -> (bool, String) {
    let dir = temp_dir("doctor");
    let path = dir.join("pylon.toml");
    std::fs::write(&path, config.replace("{data}", &dir.display().to_string())).unwrap();
    let out = pylon()
        .args(["doctor", "--config"])
        .arg(&path)
        .env("PYLON_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn sound(mock: &MockServer, data: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[data]
{data}
[[providers]]
name = "m"
kind = "openai"
base_url = "http://{}/v1"
api_key = "sk-doctor"
"#,
        mock.addr
    )
}

#[tokio::test]
async fn doctor_passes_a_sound_set_up_and_names_the_fix_for_each_broken_one() {
    let mock = MockServer::start().await;
    let (ok, out) = tokio::task::spawn_blocking({
        let c = sound(&mock, "dir = \"{data}\"");
        move || doctor(&c)
    })
    .await
    .unwrap();
    assert!(ok, "{out}");
    assert!(
        out.contains("ok    provider   m: answers with its credential"),
        "{out}"
    );
    assert!(out.contains("all checks passed"), "{out}");

    let refusing = MockServer::start().await;
    refusing.set(pylon_providers::mock::Behaviour {
        error_status: Some(401),
        ..Default::default()
    });
    let broken = [
        (
            "a config with a typo",
            sound(&mock, "dir = \"{data}\"\nstore_ulr = \"x\""),
            "FAIL  config     ",
            "pylon.toml:6:1: unknown field `store_ulr`",
        ),
        (
            "an unreachable store",
            sound(
                &mock,
                "dir = \"{data}\"\nstore_url = \"postgres://postgres:pw@127.0.0.1:1/test\"",
            ),
            "FAIL  store      postgres://127.0.0.1:1/test",
            "check that PostgreSQL runs",
        ),
        (
            "an unreachable Redis",
            sound(
                &mock,
                "dir = \"{data}\"\nredis_url = \"redis://127.0.0.1:1\"",
            ),
            "FAIL  redis      redis://127.0.0.1:1",
            "check that Redis runs",
        ),
        (
            "a refused credential",
            sound(&refusing, "dir = \"{data}\""),
            "FAIL  provider   m: the credential was refused",
            "set a valid API key",
        ),
        (
            "a data dir that cannot be written",
            sound(&mock, "dir = \"/proc/pylon-doctor\""),
            "FAIL  data dir   /proc/pylon-doctor is not writable",
            "give the user Pylon runs as write access",
        ),
    ];
    for (what, config, finding, fix) in broken {
        let (ok, out) = tokio::task::spawn_blocking(move || doctor(&config))
            .await
            .unwrap();
        assert!(!ok, "{what}: doctor exits non-zero\n{out}");
        assert!(out.contains(finding), "{what}: {finding}\n{out}");
        assert!(out.contains(fix), "{what}: says what to do\n{out}");
        assert!(
            !out.contains(":pw@"),
            "{what}: no password in the output\n{out}"
        );
    }
}
