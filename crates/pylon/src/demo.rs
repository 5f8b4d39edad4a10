//! `pylon demo`: mock providers in-process and a gateway wired to them, offline.

use std::net::SocketAddr;

use anyhow::Context;
use pylon_config::LogFormat;
use pylon_providers::mock;
use tokio::net::TcpListener;

/// Starts the mock and the gateway, prints how to call it, runs until Ctrl-C.
pub(crate) async fn run(listen: SocketAddr) -> anyhow::Result<()> {
    let mock_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot start the mock provider")?;
    let mock_addr = mock_listener.local_addr()?;
    tokio::spawn(mock::serve(mock_listener, mock::Mock::new()));

    let text = config_text(mock_addr, listen);
    let config = pylon_config::parse(&text, "<demo>", &|k| std::env::var(k).ok())?;
    let (_logs, level) = super::init_logs(&config.log.level, LogFormat::Auto);
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    println!("{}", banner(addr));
    let inherited = crate::process::Inherited::with(crate::process::MAIN, listener);
    crate::serve::run_gateway(&config, None, inherited, Some(level)).await
}

fn config_text(mock: SocketAddr, listen: SocketAddr) -> String {
    // The demo keeps its state out of the working tree and starts fresh every time.
    let data = std::env::temp_dir().join(format!("pylon-demo-{}", std::process::id()));
    let data = data.display();
    format!(
        r#"
[server]
listen = "{listen}"
shutdown_grace = "5s"

[data]
dir = "{data}"

[auth]
mode = "none"

[log]
level = "${{PYLON_LOG:-info}}"

[resilience]
breaker_cooldown = "5s"

# Deterministic requests (temperature 0) are answered from the cache for 5 minutes.
[cache]
enabled = true
max_temperature = 0.0

[[providers]]
name = "mock-openai"
kind = "openai"
base_url = "http://{mock}/v1"
api_key = "sk-demo-not-a-secret"

[[providers]]
name = "mock-anthropic"
kind = "anthropic"
base_url = "http://{mock}"
api_key = "sk-ant-demo"

[[providers]]
name = "mock-gemini"
kind = "gemini"
base_url = "http://{mock}/v1beta"
api_key = "gemini-demo"

[[providers]]
name = "mock-azure"
kind = "azure"
base_url = "http://{mock}"
api_key = "azure-demo"

[[providers]]
name = "mock-bedrock"
kind = "bedrock"
base_url = "http://{mock}"
aws = {{ region = "{region}", access_key_id = "{akid}", secret_access_key = "{secret}" }}

[[models]]
name = "gpt-4o-mini"
targets = [ {{ provider = "mock-openai", model = "mock-gpt" }} ]
fallbacks = ["claude-sonnet"]

[[models]]
name = "claude-sonnet"
targets = [ {{ provider = "mock-anthropic", model = "mock-claude" }} ]

[[models]]
name = "gemini-flash"
targets = [ {{ provider = "mock-gemini", model = "mock-gemini" }} ]

[[models]]
name = "azure-gpt"
targets = [ {{ provider = "mock-azure", model = "gpt-4o-deployment" }} ]

[[models]]
name = "bedrock-claude"
targets = [ {{ provider = "mock-bedrock", model = "anthropic.claude-3-5-haiku-20241022-v1:0" }} ]

[[models]]
name = "chat"
strategy = "weighted"
targets = [ {{ provider = "mock-openai", model = "mock-gpt", weight = 2 }},
            {{ provider = "mock-anthropic", model = "mock-claude", weight = 1 }},
            {{ provider = "mock-gemini", model = "mock-gemini", weight = 1 }} ]

[[models]]
name = "text-embedding-3-small"
targets = [ {{ provider = "mock-openai", model = "mock-embed" }} ]
"#,
        region = mock::AWS_REGION,
        akid = mock::AWS_ACCESS_KEY_ID,
        secret = mock::AWS_SECRET_ACCESS_KEY,
    )
}

fn banner(addr: SocketAddr) -> String {
    format!(
        r#"
Pylon demo is up on http://{addr}  (mock providers: OpenAI, Anthropic, Gemini, Azure OpenAI
and AWS Bedrock formats)
Models: gpt-4o-mini, claude-sonnet, gemini-flash, azure-gpt, bedrock-claude,
        chat (weighted across the first three), text-embedding-3-small
APIs: /v1/chat/completions, /v1/responses, /v1/messages, /v1/embeddings, /v1/completions

Try it:
  curl -s http://{addr}/v1/chat/completions -H 'content-type: application/json' \
    -d '{{"model":"chat","messages":[{{"role":"user","content":"Hello, Pylon!"}}]}}'

Or with the OpenAI SDK (pip install openai):
  from openai import OpenAI
  client = OpenAI(base_url="http://{addr}/v1", api_key="unused")
  for chunk in client.chat.completions.create(model="claude-sonnet", stream=True,
          messages=[{{"role": "user", "content": "Hello"}}]):
      print(chunk.choices[0].delta.content or "", end="")

Ctrl-C stops it.
"#
    )
}
