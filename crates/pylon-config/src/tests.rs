//! Config parsing and diagnostics.

use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "OPENAI_API_KEY" => Some("sk-test".to_owned()),
        "QUOTED" => Some("a\"b".to_owned()),
        _ => None,
    }
}

fn check(text: &str) -> Result<Config, Vec<String>> {
    parse(text, "pylon.toml", &env).map_err(|e| match e {
        ConfigError::Invalid(d) => d.iter().map(ToString::to_string).collect(),
        other => vec![other.to_string()],
    })
}

const EXAMPLE: &str = r#"
[server]
listen = "127.0.0.1:8080"
max_body_bytes = 8_388_608
shutdown_grace = "30s"

[data]
dir = "./pylon-data"

[auth]
mode = "none"

[[providers]]
name = "openai"
kind = "openai"
base_url = "https://api.openai.com/v1"
api_key = "${OPENAI_API_KEY}"
timeouts = { connect = "2s", first_byte = "30s", idle = "30s", total = "600s" }

[[providers]]
name = "local"
kind = "openai"
base_url = "http://127.0.0.1:11434/v1"   # e.g. Ollama ${NOT_SET_BUT_IN_COMMENT}

[[models]]
name = "chat"
strategy = "weighted"
targets = [ { provider = "openai", model = "gpt-4o-mini", weight = 9 },
            { provider = "local",  model = "llama3.2",    weight = 1 } ]
fallbacks = ["chat-backup"]
retries = 2

[[models]]
name = "chat-backup"
targets = [ { provider = "local", model = "llama3.2" } ]

[[routes]]
prefix = "/app/"
upstream = "http://127.0.0.1:3000"
"#;

#[test]
fn the_documented_example_parses() {
    let c = check(EXAMPLE).unwrap();
    assert_eq!(c.providers.len(), 2);
    assert_eq!(c.providers[0].api_key.as_ref().unwrap().expose(), "sk-test");
    assert_eq!(c.models[0].targets.get_ref()[0].weight, 9);
    assert_eq!(
        c.providers[0].timeouts.for_provider().connect,
        std::time::Duration::from_secs(2)
    );
    assert_eq!(c.routes[0].prefix.get_ref(), "/app/");
}

#[test]
fn secrets_do_not_print() {
    let c = check(EXAMPLE).unwrap();
    assert!(!format!("{c:?}").contains("sk-test"));
}

#[test]
fn unknown_key_is_reported_with_position() {
    let errs = check("[server]\nlisten = \"127.0.0.1:1\"\nlistn = 3\n").unwrap_err();
    assert!(
        errs[0].starts_with("pylon.toml:3:1: unknown field `listn`"),
        "{errs:?}"
    );
}

#[test]
fn writer_priority_is_normal_unless_idle_is_asked_for() {
    let dflt = check("[data]\ndir = \"d\"\n").unwrap();
    assert_eq!(dflt.data.writer_priority, WriterPriority::Normal);
    let idle = check("[data]\nwriter_priority = \"idle\"\n").unwrap();
    assert_eq!(idle.data.writer_priority, WriterPriority::Idle);
    let errs = check("[data]\ndir = \"d\"\nwriter_priority = \"low\"\n").unwrap_err();
    assert!(errs[0].starts_with("pylon.toml:3:"), "{errs:?}");
    assert!(errs[0].contains("idle"), "{errs:?}");
}

#[test]
fn bad_duration_is_reported() {
    let errs = check("[server]\nshutdown_grace = \"30 parsecs\"\n").unwrap_err();
    assert!(errs[0].starts_with("pylon.toml:2:"), "{errs:?}");
    assert!(
        errs[0].contains("parsecs") || errs[0].contains("unit"),
        "{errs:?}"
    );
}

#[test]
fn unresolved_variable_names_the_variable() {
    let errs = check("[[providers]]\nname = \"x\"\nkind = \"openai\"\napi_key = \"${NOPE}\"\n")
        .unwrap_err();
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("pylon.toml:4:12:"), "{errs:?}");
    assert!(errs[0].contains("`NOPE` is not set"), "{errs:?}");
}

#[test]
fn variable_default_and_escape() {
    let c = check("[data]\ndir = \"${NOPE:-/tmp/x}/$${literal}\"\n").unwrap();
    assert_eq!(c.data.dir, std::path::PathBuf::from("/tmp/x/${literal}"));
    let c = check("[data]\ndir = \"${QUOTED}\"\n").unwrap();
    assert_eq!(c.data.dir, std::path::PathBuf::from("a\"b"));
}

#[test]
fn semantic_errors_point_at_the_culprit() {
    let text = r#"[[providers]]
name = "p"
kind = "openai"

[[providers]]
name = "p"
kind = "gemini"

[[models]]
name = "m"
targets = [ { provider = "nope", model = "x" } ]
fallbacks = ["ghost"]
"#;
    let errs = check(text).unwrap_err();
    assert!(
        errs.iter()
            .any(|e| e.starts_with("pylon.toml:6:8:") && e.contains("defined twice")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("pylon.toml:11:26:") && e.contains("unknown provider `nope`")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("pylon.toml:12:") && e.contains("fallback `ghost`")),
        "{errs:?}"
    );
}

#[test]
fn bad_kind_and_url() {
    let errs = check("[[providers]]\nname = \"p\"\nkind = \"cohere\"\n").unwrap_err();
    assert!(
        errs[0].starts_with("pylon.toml:3:8:") && errs[0].contains("cohere"),
        "{errs:?}"
    );
    let errs = check("[[providers]]\nname = \"p\"\nkind = \"openai\"\nbase_url = \"ftp://x\"\n")
        .unwrap_err();
    assert!(errs[0].contains("http://"), "{errs:?}");
}

#[test]
fn env_defaults_find_providers() {
    let env = |k: &str| match k {
        "ANTHROPIC_API_KEY" => Some("a".to_owned()),
        "OLLAMA_HOST" => Some("127.0.0.1:11434".to_owned()),
        _ => None,
    };
    let c = Config::from_env(&env);
    let names: Vec<_> = c
        .providers
        .iter()
        .map(|p| p.name.get_ref().clone())
        .collect();
    assert_eq!(names, ["anthropic", "ollama"]);
    assert_eq!(c.providers[1].base_url(), "http://127.0.0.1:11434/v1");
    assert_eq!(c.server.listen.port(), 8080);
}

#[test]
fn cidrs() {
    let net = parse_cidr("10.0.0.0/8").unwrap();
    assert!(cidr_contains(net, "10.1.2.3".parse().unwrap()));
    assert!(!cidr_contains(net, "11.0.0.1".parse().unwrap()));
    assert!(cidr_contains(
        parse_cidr("::1").unwrap(),
        "::1".parse().unwrap()
    ));
    assert!(!cidr_contains(
        parse_cidr("::1").unwrap(),
        "127.0.0.1".parse().unwrap()
    ));
    assert!(parse_cidr("10.0.0.0/33").is_none());
    assert!(parse_cidr("nope").is_none());
    let errs = check("[limits]\ntrusted_proxies = [\"bad\"]\n").unwrap_err();
    assert!(errs[0].contains("not an IP address or CIDR"), "{errs:?}");
}

#[test]
fn workers_default_to_one_per_core_and_are_bounded() {
    assert_eq!(check("").unwrap().server.workers, 0, "0 means one per core");
    assert_eq!(check("[server]\nworkers = 3\n").unwrap().server.workers, 3);
    let errs = check("[server]\nworkers = 5000\n").unwrap_err();
    assert!(
        errs.iter().any(|e| e.contains("server.workers")),
        "{errs:?}"
    );
}

#[test]
fn the_contract_rollout_parses() {
    let text = format!(
        r#"{EXAMPLE}
[[rollouts]]
name = "chat-v2"
model = "chat"
strategy = "canary"
candidate = {{ targets = [ {{ provider = "openai", model = "gpt-4.1-mini" }} ],
              system_prompt = {{ prepend = "Answer briefly." }} }}
steps = [ {{ weight = 5, hold = "10m" }}, {{ weight = 25, hold = "10m" }}, {{ weight = 50, hold = "10m" }} ]
stickiness = "key"
[rollouts.analysis]
interval = "1m"
min_requests = 50
failure_limit = 2
max_error_rate_increase = 0.02
max_latency_ratio = 1.25
max_ttft_ratio = 1.25
max_cost_ratio = 1.5
"#
    );
    let c = check(&text).unwrap();
    let r = &c.rollouts[0];
    assert_eq!(r.steps.len(), 3);
    assert_eq!(
        r.candidate.get_ref().system_prompt,
        Some(SystemPrompt::Prepend("Answer briefly.".into()))
    );
    assert_eq!(r.analysis.interval, std::time::Duration::from_secs(60));
}

#[test]
fn rollout_mistakes_point_at_the_culprit() {
    let text = format!(
        r#"{EXAMPLE}
[[rollouts]]
name = "a"
model = "ghost"
candidate = {{ targets = [ {{ provider = "nope", model = "x" }} ] }}
steps = [ {{ weight = 50 }}, {{ weight = 10 }} ]
stickiness = "cookie"

[[rollouts]]
name = "b"
route = "/app/"
candidate = {{ temperature = 0.5 }}
steps = [ {{ weight = 5 }} ]
"#
    );
    let errs = check(&text).unwrap_err();
    for (line, what) in [
        (43, "model `ghost` is not a configured model"),
        (44, "unknown provider `nope`"),
        (45, "step weight 10 is below the step before"),
        (46, "stickiness `cookie`"),
        (51, "a route's candidate needs an upstream URL"),
    ] {
        assert!(
            errs.iter()
                .any(|e| e.starts_with(&format!("pylon.toml:{line}:")) && e.contains(what)),
            "{what} at line {line}: {errs:?}"
        );
    }
}

#[test]
fn the_contract_alerting_parses() {
    let text = format!(
        r#"{EXAMPLE}
[alerting]
evaluate_every = "10s"

[[alerts]]
name = "chat-errors"
kind = "threshold"
series = "error_rate"
labels = {{ model = "chat" }}
above = 0.05
for = "2m"
severity = "critical"
annotations = {{ summary = "chat error rate above 5 %", runbook = "docs/runbook.md#chat-errors" }}

[[alerts]]
name = "chat-slo"
kind = "burn-rate"
labels = {{ model = "chat" }}
objective = 0.999

[[alert_receivers]]
name = "oncall"
kind = "webhook"
url = "http://127.0.0.1:9093"

[alert_routing]
receiver = "oncall"
routes = [ {{ matchers = {{ severity = "critical" }}, receiver = "oncall" }} ]
"#
    );
    let c = check(&text).unwrap();
    assert_eq!(c.alerts.len(), 2);
    assert_eq!(c.alerts[0].for_, Some(std::time::Duration::from_secs(120)));
    assert_eq!(c.alerts[0].severity, Severity::Critical);
    assert_eq!(c.alert_routing.routes.len(), 1);
}

#[test]
fn alerting_mistakes_point_at_the_culprit() {
    let text = format!(
        r#"{EXAMPLE}
[[alerts]]
name = "a"
kind = "threshold"
series = "error_ratio"

[[alerts]]
name = "b"
kind = "burn-rate"
objective = 1.5
labels = {{ colour = "red" }}

[[alert_receivers]]
name = "oncall"
kind = "webhook"
url = "ftp://x"

[alert_routing]
receiver = "pager"
"#
    );
    let errs = check(&text).unwrap_err();
    for (line, what) in [
        (44, "series `error_ratio` is not one of"),
        (47, "objective must be between 0 and 1"),
        (47, "label `colour`"),
        (55, "is not an http(s) URL"),
        (58, "receiver `pager` is not declared"),
    ] {
        assert!(
            errs.iter()
                .any(|e| e.starts_with(&format!("pylon.toml:{line}:")) && e.contains(what)),
            "{what} at line {line}: {errs:?}"
        );
    }
}

#[test]
fn secrets_can_come_from_files() {
    let dir = std::env::temp_dir().join(format!("pylon-config-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("pg_password");
    std::fs::write(&secret, "s3cr\"et\n").unwrap();
    let text = format!(
        "[data]\nstore_url = \"postgres://pylon:${{file:{}}}@db/pylon\"\n",
        secret.display()
    );
    let c = parse(&text, "pylon.toml", &process_env).unwrap();
    assert_eq!(
        c.data.store_url.unwrap().expose(),
        "postgres://pylon:s3cr\"et@db/pylon"
    );
    let missing = parse(
        "[data]\nstore_url = \"${file:/nonexistent/x}\"\n",
        "pylon.toml",
        &process_env,
    )
    .unwrap_err()
    .to_string();
    assert!(
        missing.contains("pylon.toml:2:14: cannot read the secret file `/nonexistent/x`"),
        "{missing}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_split_rule_names_labels_its_series_has() {
    let text = format!(
        r#"{EXAMPLE}
[[alerts]]
name = "split-ok"
kind = "threshold"
series = "error_rate"
by = ["model", "provider"]
above = 0.1

[[alerts]]
name = "split:bad"
kind = "threshold"
series = "error_rate"
by = ["colour"]
above = 0.1

[[alerts]]
name = "team-and-model"
kind = "threshold"
series = "error_rate"
labels = {{ model = "chat" }}
by = ["team"]
above = 0.1

[[alerts]]
name = "budget-split"
kind = "budget"
labels = {{ team = "t" }}
by = ["model"]
above = 0.8
"#
    );
    let errs = check(&text).unwrap_err();
    for what in [
        "alert `split:bad`: names may not contain `:`",
        "alert `split:bad`: by `colour`",
        "alert `budget-split`: `by` splits a series",
        "alert `team-and-model`: `team` stands alone",
    ] {
        assert!(errs.iter().any(|e| e.contains(what)), "{what}: {errs:?}");
    }
    assert!(!errs.iter().any(|e| e.contains("split-ok")), "{errs:?}");
}

#[test]
fn azure_needs_its_endpoint_and_bedrock_its_region() {
    let text = format!(
        r#"{EXAMPLE}
[[providers]]
name = "az"
kind = "azure"
api_key = "k"

[[providers]]
name = "br"
kind = "bedrock"

[[providers]]
name = "tok"
kind = "openai"
token_file = "/x"
"#
    );
    let errs = check(&text).unwrap_err();
    for what in [
        "provider `az` (azure): set base_url",
        "provider `br`: bedrock providers need aws",
        "provider `tok`: token_file is for azure",
    ] {
        assert!(errs.iter().any(|e| e.contains(what)), "{what}: {errs:?}");
    }
}

#[test]
fn route_policy_mistakes_are_named_with_their_line() {
    let errs = check(
        "[[routes]]\nprefix = \"/app/\"\nupstream = \"http://127.0.0.1:3000\"\nallow = [\"10.0.0.0/33\"]\nmax_connections = 0\nresponse_headers = { \"bad name\" = \"x\" }\ncache = { max_bytes = 10, max_entry_bytes = 20 }\n",
    )
    .unwrap_err();
    let all = errs.join("\n");
    assert!(
        all.contains(
            "pylon.toml:4:10: route `/app/` allow: `10.0.0.0/33` is not an IP address or CIDR"
        ),
        "{all}"
    );
    assert!(
        all.contains("max_connections and max_body_bytes must be above 0"),
        "{all}"
    );
    assert!(
        all.contains("`bad name` is not a valid header name"),
        "{all}"
    );
    assert!(
        all.contains("max_entry_bytes must be between 1 and max_bytes"),
        "{all}"
    );
}

#[test]
fn the_readmes_nginx_replacement_is_a_valid_config() {
    let readme = include_str!("../../../README.md");
    let section = readme
        .split("### Replacing nginx")
        .nth(1)
        .expect("README has a Replacing nginx section");
    let toml = section
        .split("```toml\n")
        .nth(1)
        .and_then(|t| t.split("```").next())
        .expect("a toml block");
    let c = check(toml).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(c.routes.len(), 6);
    assert!(c.routes.iter().any(|r| !r.allow.is_empty()));
}

#[test]
fn acme_mistakes_are_named_with_their_line() {
    let errs = check(
        "[server.tls]\ncert_file = \"c.pem\"\nacme = { directory = \"http://ca.test/dir\", email = \"nobody\",\n  domains = [\"*.example.com\", \"10.0.0.1\", \"ok.example.com\", \"bad_name.example.com\"] }\n",
    )
    .unwrap_err();
    let all = errs.join("\n");
    for want in [
        "pylon.toml:4:13: [server.tls] acme: cert_file, key_file and ocsp_file come from ACME here",
        "directory `http://ca.test/dir` must be an https:// URL",
        "email must be an address",
        "domain `*.example.com` is a wildcard, which needs the dns-01 challenge",
        "domain `10.0.0.1` is an IP address",
        "domain `bad_name.example.com` is not a DNS name",
        "http-01 is answered on the plain-HTTP listener: set redirect_http",
    ] {
        assert!(all.contains(want), "{want}\n{all}");
    }
    assert!(!all.contains("ok.example.com"), "{all}");
    let errs = check("[server.tls]\nkey_file = \"k.pem\"\n").unwrap_err();
    assert!(
        errs.join("\n")
            .contains("needs cert_file and key_file, or acme"),
        "{errs:?}"
    );
    let c = check(
        "[server.tls]\nacme = { directory = \"https://acme-v02.api.letsencrypt.org/directory\", domains = [\"api.example.com\"], challenge = \"tls-alpn-01\", renew_before = \"20d\" }\n",
    )
    .unwrap();
    let acme = c.server.tls.unwrap().acme.unwrap();
    assert_eq!(acme.challenge, crate::AcmeChallenge::TlsAlpn01);
    assert_eq!(
        acme.renew_before,
        Some(std::time::Duration::from_secs(20 * 86_400))
    );
}
