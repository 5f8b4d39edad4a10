//! Zero-downtime upgrade: the listening sockets pass to a new process.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_upgrades_in_a_row_under_load_fail_no_request() {
    let mock = MockServer::start().await;
    mock.set(pylon_providers::mock::Behaviour {
        chunk_delay: Duration::from_millis(5),
        ..Default::default()
    });
    let gw = Serving::start("upgrade", &base_config(&mock, ""));
    let load = Load::start(&format!("http://{}", gw.addr), "chat", 16);
    load.flowing(200).await;
    let mut pids = vec![gw.serving_pid()];
    for round in 1..=3 {
        let out = tokio::task::spawn_blocking({
            let config = gw.config.clone();
            move || {
                pylon()
                    .args(["upgrade", "--config"])
                    .arg(&config)
                    .output()
                    .unwrap()
            }
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "upgrade {round}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let new = gw.serving_pid();
        assert!(
            !pids.contains(&new),
            "upgrade {round} started a new process"
        );
        assert!(stdout.contains(&new.to_string()), "{stdout}");
        let old = *pids.last().unwrap();
        assert!(
            eventually(Duration::from_secs(20), || !alive(old)).await,
            "the old process {old} drained and exited"
        );
        pids.push(new);
        load.flowing(100).await;
    }
    let (ok, failed, rps, errors) = load.finish().await;
    eprintln!("3 upgrades under load: {ok} ok, {failed} failed, {rps:.0} requests/s");
    // No throughput floor: on a loaded CI machine it measures the machine. `flowing` after
    // each hand-over is what shows that traffic kept moving.
    assert_eq!(failed, 0, "no request failed across 3 upgrades: {errors:?}");
    let logs = gw.logs.lock().unwrap().join("\n");
    assert_eq!(
        logs.matches("the new binary is ready and accepting")
            .count(),
        3,
        "each old process handed over"
    );
}

#[tokio::test]
async fn a_new_binary_that_cannot_start_leaves_the_old_one_serving() {
    let mock = MockServer::start().await;
    let gw = Serving::start("upgrade-fail", &base_config(&mock, ""));
    let pid = gw.serving_pid();
    // The new process reads the same (now broken) config and exits before it is ready.
    let text = std::fs::read_to_string(&gw.config).unwrap();
    std::fs::write(&gw.config, text.replace("[server]", "[server]\nbogus = 1")).unwrap();
    let out = tokio::task::spawn_blocking({
        let data = gw.data.clone();
        move || {
            pylon()
                .args(["upgrade", "--pid", &pid.to_string(), "--data-dir"])
                .arg(&data)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("keeps serving"), "{err}");
    assert!(alive(pid));
    assert_eq!(gw.serving_pid(), pid);
    let r = client()
        .post(gw.url("/v1/chat/completions"))
        .json(&hello("chat"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "still serving");
}
