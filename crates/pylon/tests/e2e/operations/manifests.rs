//! The deployment kits against the binary: probe paths, ports and shutdown timings in the
//! Dockerfile, Compose file, Kubernetes manifests and Helm chart are what Pylon really serves
//! and needs; their configs pass `pylon config check`; alert rules stay one set.

use std::path::{Path, PathBuf};

use yaml_rust2::{Yaml, YamlLoader};

use super::*;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml(path: &str) -> Vec<Yaml> {
    YamlLoader::load_from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A kit's pylon.toml, checked as `pylon config check` does (`${file:…}` secrets stand in).
fn config(text: &str, what: &str) -> pylon_config::Config {
    pylon_config::parse(text, what, &|name| {
        name.starts_with("file:").then(|| "stand-in".to_owned())
    })
    .unwrap_or_else(|e| panic!("{what}: {e}"))
}

fn secs(d: Duration) -> i64 {
    d.as_secs() as i64
}

/// The probe paths a pod spec's container uses, in order startup, liveness, readiness.
fn probes(container: &Yaml) -> [String; 3] {
    ["startupProbe", "livenessProbe", "readinessProbe"].map(|p| {
        container[p]["httpGet"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{p} has an httpGet path"))
            .to_owned()
    })
}

/// Pylon started on a kit's `[server]` section answers each probe path with 200.
async fn serves(paths: &[String]) {
    let mock = MockServer::start().await;
    let gw = Serving::start("manifests", &base_config(&mock, ""));
    for p in paths {
        let r = client().get(gw.url(p)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{p} is served");
    }
}

#[tokio::test]
async fn kubernetes_manifests_match_what_the_binary_serves() {
    let deployment = &yaml("deploy/kubernetes/deployment.yaml")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let paths = probes(c);
    assert_eq!(paths, ["/startupz", "/livez", "/readyz"]);
    serves(&paths).await;

    let cm = &yaml("deploy/kubernetes/configmap.yaml")[0];
    let cfg = config(cm["data"]["pylon.toml"].as_str().unwrap(), "configmap");
    assert_eq!(
        c["ports"][0]["containerPort"].as_i64(),
        Some(i64::from(cfg.server.listen.port())),
        "the container port is where pylon.toml listens"
    );
    let pre_stop = c["lifecycle"]["preStop"]["sleep"]["seconds"]
        .as_i64()
        .unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(
        pre_stop >= secs(cfg.server.shutdown_delay),
        "preStop ≥ shutdown_delay"
    );
    assert!(
        grace > pre_stop + secs(cfg.server.shutdown_delay) + secs(cfg.server.shutdown_grace),
        "terminationGracePeriodSeconds ({grace}) > preStop + shutdown_delay + shutdown_grace"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));
    assert_eq!(
        deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"].as_i64(),
        Some(0)
    );
    // Every file the config reads as a secret is in the mounted Secret.
    let secret = &yaml("deploy/kubernetes/secret.yaml")[0];
    for file in read("deploy/kubernetes/configmap.yaml")
        .split("/run/secrets/pylon/")
        .skip(1)
        .map(|s| s.split(['}', '"']).next().unwrap())
    {
        assert!(
            !secret["stringData"][file].is_badvalue(),
            "secret has {file}"
        );
    }
    let kinds: Vec<String> = read("deploy/kubernetes/kustomization.yaml")
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .map(|f| {
            yaml(&format!("deploy/kubernetes/{f}"))[0]["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    for kind in [
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
    ] {
        assert!(
            kinds.iter().any(|k| k == kind),
            "kustomization has a {kind}"
        );
    }
    let rule = &yaml("deploy/kubernetes/prometheusrule.yaml")[0];
    assert_eq!(
        rule["spec"],
        yaml("deploy/prometheus/alerts.yml")[0],
        "the PrometheusRule is deploy/prometheus/alerts.yml"
    );
}

#[tokio::test]
async fn the_helm_chart_keeps_the_same_paths_and_timings() {
    let values = &yaml("deploy/helm/pylon/values.yaml")[0];
    let cfg = config(values["config"].as_str().unwrap(), "values.yaml");
    let pre_stop = values["preStopSeconds"].as_i64().unwrap();
    let grace = values["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(pre_stop >= secs(cfg.server.shutdown_delay));
    assert!(grace > pre_stop + secs(cfg.server.shutdown_delay) + secs(cfg.server.shutdown_grace));
    let deployment = read("deploy/helm/pylon/templates/deployment.yaml");
    for p in ["/startupz", "/livez", "/readyz"] {
        assert!(deployment.contains(&format!("path: {p}")), "{p}");
    }
    assert!(deployment.contains(&format!("containerPort: {}", cfg.server.listen.port())));
    assert_eq!(
        read("deploy/helm/pylon/files/alerts.yml"),
        read("deploy/prometheus/alerts.yml"),
        "the chart's alert rules are deploy/prometheus/alerts.yml"
    );
}

#[tokio::test]
async fn the_image_and_compose_file_match_what_the_binary_serves() {
    let dockerfile = read("deploy/Dockerfile");
    let image_cfg = config(&read("deploy/docker/pylon.toml"), "docker/pylon.toml");
    let port = image_cfg.server.listen.port();
    assert!(dockerfile.contains(&format!("EXPOSE {port}")));
    assert!(dockerfile.contains(&format!("http://127.0.0.1:{port}/readyz")));
    assert!(dockerfile.contains("USER 65532:65532"), "non-root, numeric");
    assert_eq!(image_cfg.data.dir, PathBuf::from("/data"));
    assert!(dockerfile.contains("VOLUME [\"/data\"]"));

    let compose = &yaml("deploy/docker-compose.prod.yml")[0];
    let pylon_svc = &compose["services"]["pylon"];
    let cfg = config(
        &read("deploy/docker/pylon.compose.toml"),
        "docker/pylon.compose.toml",
    );
    let health: Vec<&str> = pylon_svc["healthcheck"]["test"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    assert!(
        health.contains(&"http://127.0.0.1:8080/readyz"),
        "{health:?}"
    );
    serves(&["/readyz".to_owned()]).await;
    let stop = humantime::parse_duration(pylon_svc["stop_grace_period"].as_str().unwrap()).unwrap();
    assert!(
        stop > cfg.server.shutdown_delay + cfg.server.shutdown_grace,
        "Compose waits longer than Pylon drains"
    );
    assert_eq!(pylon_svc["read_only"].as_bool(), Some(true));
    for svc in [
        "pylon",
        "postgres",
        "redis",
        "prometheus",
        "alertmanager",
        "grafana",
    ] {
        let s = &compose["services"][svc];
        assert!(!s["healthcheck"].is_badvalue(), "{svc} has a health check");
        assert!(
            !s["deploy"]["resources"]["limits"].is_badvalue(),
            "{svc} has limits"
        );
    }
    let declared = &compose["secrets"];
    for file in read("deploy/docker/pylon.compose.toml")
        .split("/run/secrets/")
        .skip(1)
        .map(|s| s.split(['}', '"']).next().unwrap())
    {
        assert!(
            !declared[file].is_badvalue(),
            "compose declares the secret {file}"
        );
    }
}
