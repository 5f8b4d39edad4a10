//! Provider credentials at rest: never in plaintext on disk or in tables, usable at once,
//! and still usable through a master-key rotation.

use serde_json::{json, Value};

use crate::harness::*;

const ADMIN: &str = "secrets-admin";
const CANARY: &str = "sk-canary-plaintext-4242";

fn config(mock: &MockServer, data: &str) -> String {
    format!(
        "{data}\n[auth]\nmode = \"none\"\nrefresh = \"100ms\"\n\n[[providers]]\nname = \"a\"\nkind = \"openai\"\nbase_url = \"http://{}/v1\"\n\n[[models]]\nname = \"m\"\ntargets = [ {{ provider = \"a\", model = \"x\" }} ]\n",
        mock.addr
    )
}

fn env(master: Option<&str>, previous: Option<&str>) -> pylon_control::Env {
    pylon_control::Env {
        admin_token: Some(ADMIN.into()),
        master_key: master.map(str::to_owned),
        master_key_previous: previous.map(str::to_owned),
    }
}

async fn put_credential(gw: &Gateway, secret: &str) -> (u16, Value) {
    let resp = client()
        .put(gw.url("/admin/v1/providers/a/credential"))
        .bearer_auth(ADMIN)
        .json(&json!({"api_key": secret}))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

async fn sent_credential(gw: &Gateway, mock: &MockServer) -> Option<String> {
    assert_eq!(gw.chat(hello("m")).await.status(), 200);
    mock.stats().last_credential
}

fn files_contain(dir: &std::path::Path, needle: &[u8]) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            std::fs::read(e.path())
                .is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        })
        .map(|e| e.path().display().to_string())
        .collect()
}

#[tokio::test]
async fn stored_credentials_are_encrypted_on_disk_and_survive_master_key_rotation() {
    let mock = MockServer::start().await;
    let data = temp_dir("secrets");
    let text = config(&mock, &format!("[data]\ndir = \"{}\"", data.display()));
    let old = pylon_control::secrets::generate_master().unwrap();
    let new = pylon_control::secrets::generate_master().unwrap();

    let (one, _) = Gateway::with_env(&text, env(Some(&old), None)).await;
    assert_eq!(
        sent_credential(&one, &mock).await,
        None,
        "no credential configured yet"
    );
    let (status, view) = put_credential(&one, CANARY).await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(view["credential"], "stored");
    let old_id = view["master_key_id"].as_str().unwrap().to_owned();
    assert_eq!(
        sent_credential(&one, &mock).await.as_deref(),
        Some(format!("Bearer {CANARY}").as_str()),
        "used at once"
    );
    let listed: Value = client()
        .get(one.url("/admin/v1/providers"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        !listed.to_string().contains(CANARY),
        "the admin API never shows it"
    );
    assert_eq!(
        files_contain(&data, CANARY.as_bytes()),
        Vec::<String>::new(),
        "no plaintext in the SQLite files"
    );

    // A new instance with the new key, the old one as previous: still reads, then rotates.
    let (two, _) = Gateway::with_env(&text, env(Some(&new), Some(&old))).await;
    assert_eq!(
        sent_credential(&two, &mock).await.as_deref(),
        Some(format!("Bearer {CANARY}").as_str())
    );
    let rotated: Value = client()
        .post(two.url("/admin/v1/secrets/rotate-master"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rotated["reencrypted"], 1, "{rotated}");
    assert_ne!(rotated["master_key_id"], old_id.as_str());
    // The old instance keeps serving during the rotation window (it re-reads on refresh and
    // cannot decrypt the new record, so it keeps the credential it has).
    assert_eq!(
        sent_credential(&one, &mock).await.as_deref(),
        Some(format!("Bearer {CANARY}").as_str())
    );

    // After the rotation the old key can go.
    let (three, _) = Gateway::with_env(&text, env(Some(&new), None)).await;
    assert_eq!(
        sent_credential(&three, &mock).await.as_deref(),
        Some(format!("Bearer {CANARY}").as_str())
    );
    assert_eq!(
        files_contain(&data, CANARY.as_bytes()),
        Vec::<String>::new()
    );
}

#[tokio::test]
async fn storing_a_credential_needs_a_master_key() {
    let mock = MockServer::start().await;
    let (gw, _) = Gateway::with_env(&config(&mock, ""), env(None, None)).await;
    let (status, err) = put_credential(&gw, "sk-x").await;
    // The request is fine; the server is not set up for it.
    assert_eq!(status, 409);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("PYLON_MASTER_KEY"),
        "{err}"
    );
    let resp = client()
        .put(gw.url("/admin/v1/providers/ghost/credential"))
        .bearer_auth(ADMIN)
        .json(&json!({"api_key": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);

    // The master key may come from a file instead of the environment.
    let dir = temp_dir("master-file");
    let file = dir.join("master.key");
    std::fs::write(
        &file,
        pylon_control::secrets::generate_master().unwrap() + "\n",
    )
    .unwrap();
    let text = format!(
        "[secrets]\nmaster_key_file = \"{}\"\n{}",
        file.display(),
        config(&mock, "")
    );
    let (gw, _) = Gateway::with_env(&text, env(None, None)).await;
    let (status, view) = put_credential(&gw, "sk-from-file").await;
    assert_eq!(status, 200, "{view}");
    assert_eq!(
        sent_credential(&gw, &mock).await.as_deref(),
        Some("Bearer sk-from-file")
    );
}

#[tokio::test]
async fn no_plaintext_secret_or_key_in_any_postgres_table() {
    let (admin, base, schema) = pg_schema().await;
    let url = format!("{base}?options=-c%20search_path%3D{schema}");

    let mock = MockServer::start().await;
    let text = config(
        &mock,
        &format!(
            "[data]\ndir = \"{}\"\nstore_url = \"{url}\"",
            temp_dir("pg").display()
        ),
    )
    .replace("mode = \"none\"", "mode = \"keys\"");
    let master = pylon_control::secrets::generate_master().unwrap();
    let (gw, _) = Gateway::with_env(&text, env(Some(&master), None)).await;
    assert_eq!(put_credential(&gw, CANARY).await.0, 200);
    let created: Value = client()
        .post(gw.url("/admin/v1/keys"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "k"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let resp = client()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(&key)
        .json(&hello("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        mock.stats().last_credential.as_deref(),
        Some(format!("Bearer {CANARY}").as_str())
    );

    let tables: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = '{schema}'"
    ))
    .fetch_all(&admin)
    .await
    .unwrap();
    assert!(
        tables.iter().any(|t| t == "provider_credentials")
            && tables.iter().any(|t| t == "api_keys"),
        "{tables:?}"
    );
    for table in &tables {
        let dump: Option<String> = sqlx::query_scalar(&format!(
            "SELECT string_agg(t::text, '|') FROM {schema}.{table} t"
        ))
        .fetch_one(&admin)
        .await
        .unwrap();
        let dump = dump.unwrap_or_default();
        assert!(!dump.contains(CANARY), "plaintext credential in {table}");
        assert!(!dump.contains(&key), "plaintext virtual key in {table}");
    }
    sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&admin)
        .await
        .unwrap();
}
