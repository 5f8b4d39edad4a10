//! Edge figures (`--only-edge`), side by side with nginx in one run: CPU per proxied app
//! request for a 100 KiB JSON answer with compression off, gzip and brotli (nginx: gzip at the
//! same level; Debian's nginx has neither brotli nor zstd), and the latency of an edge-cache hit for a 10 KiB
//! static asset (nginx: `proxy_cache`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::load::{self, MakeRequest};
use crate::procs::{cpu_seconds, wait_ready, Proc};

/// The application behind both proxies: a 100 KiB JSON document that must not be cached, and
/// a 10 KiB stylesheet cacheable for an hour.
async fn origin() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let items: Vec<String> = (0..1520)
        .map(|i| {
            format!(
                r#"{{"id":{i},"name":"item {i}","tags":["alpha","beta"],"price":{}.5}}"#,
                i % 97
            )
        })
        .collect();
    let json = Bytes::from(format!("[{}]", items.join(",")).into_bytes());
    let css = Bytes::from(".card { margin: 0 auto; padding: 1rem; color: #333; }\n".repeat(190));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let _ = tcp.set_nodelay(true);
            let (json, css) = (json.clone(), css.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let (json, css) = (json.clone(), css.clone());
                        async move {
                            let resp = if req.uri().path().ends_with(".css") {
                                hyper::Response::builder()
                                    .header(header::CONTENT_TYPE, "text/css")
                                    .header(header::CACHE_CONTROL, "public, max-age=3600")
                                    .header(header::ETAG, "\"v1\"")
                                    .body(Full::new(css))
                            } else {
                                hyper::Response::builder()
                                    .header(header::CONTENT_TYPE, "application/json")
                                    .header(header::CACHE_CONTROL, "no-store")
                                    .body(Full::new(json))
                            };
                            resp
                        }
                    },
                );
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

fn nginx(dir: &Path, listen: u16, app: SocketAddr) -> anyhow::Result<Proc> {
    let conf = format!(
        r#"worker_processes auto;
error_log {dir}/nginx-edge-error.log warn;
pid {dir}/nginx-edge.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  proxy_cache_path {dir}/nginx-cache levels=1 keys_zone=edge:10m max_size=64m;
  upstream app {{ server {app}; keepalive 256; }}
  proxy_http_version 1.1;
  proxy_set_header Connection "";
  server {{
    listen 127.0.0.1:{listen};
    location /plain/ {{ proxy_pass http://app; }}
    location /gz/ {{
      gzip on; gzip_comp_level {level}; gzip_min_length 1024; gzip_proxied any;
      gzip_types application/json text/css;
      proxy_pass http://app;
    }}
    location /static/ {{ proxy_cache edge; proxy_pass http://app; }}
  }}
}}
"#,
        dir = dir.display(),
        level = pylon_proxy::COMPRESSION_LEVEL,
    );
    let path = dir.join("nginx-edge.conf");
    std::fs::write(&path, conf)?;
    let _ = std::fs::remove_dir_all(dir.join("nginx-cache"));
    Proc::spawn(
        Command::new("/usr/sbin/nginx")
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir)
            .args(["-g", "daemon off;"]),
    )
}

fn get(url: String, encoding: Option<&'static str>) -> MakeRequest {
    Arc::new(move || {
        let mut req = hyper::Request::get(&url);
        if let Some(e) = encoding {
            req = req.header(header::ACCEPT_ENCODING, e);
        }
        req.body(Full::new(Bytes::new()))
            .unwrap_or_else(|_| hyper::Request::new(Full::new(Bytes::new())))
    })
}

/// Prints the edge figures.
pub async fn figures(
    spawn: &crate::SpawnPylon<'_>,
    out: &Path,
    seconds: u64,
) -> anyhow::Result<()> {
    let app = origin().await?;
    let routes = format!(
        "[auth]\nmode = \"none\"\n[limits]\nip_rpm = 0\n\
         [[routes]]\nprefix = \"/plain/\"\nupstream = \"http://{app}\"\n\
         [[routes]]\nprefix = \"/gz/\"\nupstream = \"http://{app}\"\ncompress = true\n\
         [[routes]]\nprefix = \"/static/\"\nupstream = \"http://{app}\"\ncache = {{ max_bytes = 67108864 }}\n"
    );
    let (pylon_port, pylon) = spawn("pylon-edge", &routes)?;
    let nginx_port = crate::free_port()?;
    let ngx = nginx(out, nginx_port, app)?;
    wait_ready(
        &format!("http://127.0.0.1:{pylon_port}/livez"),
        Duration::from_secs(10),
    )
    .await?;
    wait_ready(
        &format!("http://127.0.0.1:{nginx_port}/plain/x.json"),
        Duration::from_secs(10),
    )
    .await?;
    let d = Duration::from_secs(seconds);
    let cases: [(&str, &str, Option<&'static str>, usize); 5] = [
        ("100 KiB JSON, uncompressed", "/plain/data.json", None, 8),
        ("100 KiB JSON, gzip", "/gz/data.json", Some("gzip"), 8),
        (
            "100 KiB JSON, brotli (Pylon only)",
            "/gz/data.json",
            Some("br"),
            8,
        ),
        (
            "100 KiB JSON, zstd (Pylon only)",
            "/gz/data.json",
            Some("zstd"),
            8,
        ),
        ("10 KiB asset, edge-cache hit", "/static/site.css", None, 1),
    ];
    println!(
        "\nApp routes ({}-level compression), CPU per request of the proxy and latency:",
        pylon_proxy::COMPRESSION_LEVEL
    );
    println!(
        "  {:<36} {:<6} {:>8} {:>8} {:>8} {:>11} {:>10}",
        "case", "via", "req/s", "p50 µs", "p99 µs", "CPU µs/req", "bytes"
    );
    for (title, path, encoding, concurrency) in cases {
        for (via, port, pid) in [
            ("pylon", pylon_port, pylon.pid()),
            ("nginx", nginx_port, ngx.pid()),
        ] {
            if via == "nginx" && matches!(encoding, Some("br" | "zstd")) {
                continue;
            }
            let url = format!("http://127.0.0.1:{port}{path}");
            let make = get(url, encoding);
            let client = load::client(256);
            // Warm the pools, and the caches for the hit case.
            let _ = load::closed_loop_of(
                &client,
                make.clone(),
                concurrency,
                Duration::from_millis(300),
            )
            .await;
            let size = {
                let resp = client.request(make()).await?;
                http_body_util::BodyExt::collect(resp.into_body())
                    .await?
                    .to_bytes()
                    .len()
            };
            let cpu0 = cpu_seconds(pid);
            let o = load::closed_loop_of(&client, make, concurrency, d).await;
            let cpu = (cpu_seconds(pid) - cpu0) / o.ok.max(1) as f64 * 1e6;
            println!(
                "  {title:<36} {via:<6} {:>8.0} {:>8.0} {:>8.0} {cpu:>11.1} {size:>10}",
                o.rps(),
                o.p(0.5),
                o.p(0.99),
            );
        }
    }
    Ok(())
}
