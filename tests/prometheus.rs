//! A real Prometheus server scrapes the admin endpoint. Needs the `prometheus` binary (Debian
//! package `prometheus`); `.ci/run` installs it and sets PASSGATE_REQUIRE_TOOLS=1 so that a
//! missing binary fails there instead of skipping.

use crate::common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_admin_endpoint() {
    if !tool_available("prometheus") {
        return;
    }
    let env = start().await;
    let alice = token(&env, "alice");
    assert_eq!(
        send(
            "POST",
            &action_url(&env, "kiosk-phone"),
            &[bearer(&alice)],
            b""
        )
        .await
        .status,
        204
    );
    let admin = env.admin_url.clone().unwrap();
    let target = admin.trim_start_matches("http://");
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: passgate\n    metrics_path: /metrics\n    static_configs:\n      - targets: [\"{target}\"]\n"
        ),
    )
    .unwrap();
    let port = free_port();
    // Our own Prometheus, ended through this handle only (also if the test panics): never by
    // name, which would hit any other Prometheus on the machine.
    let prom = ChildGuard(
        Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus starts"),
    );
    // Poll Prometheus's own API until the target is up and a passgate series is queryable.
    let api = format!("http://127.0.0.1:{port}/api/v1");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    let ok = loop {
        if Instant::now() > deadline {
            break false;
        }
        let q = format!("{api}/query?query=passgate_requests_total%7Bdecision%3D%22allow%22%7D");
        let r = tokio::time::timeout(Duration::from_secs(2), async {
            let client = client();
            let req = http::Request::get(&q)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            client.request(req).await
        })
        .await;
        if let Ok(Ok(resp)) = r {
            use http_body_util::BodyExt;
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            last = String::from_utf8_lossy(&body).to_string();
            let v: serde_json::Value = serde_json::from_str(&last).unwrap_or_default();
            if v["data"]["result"][0]["value"][1] == "1" {
                break true;
            }
        }
        // Prometheus scrapes every second; wait for its next scrape rather than spin.
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let targets = {
        let req = http::Request::get(format!("{api}/targets"))
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        match client().request(req).await {
            Ok(resp) => {
                use http_body_util::BodyExt;
                String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes())
                    .to_string()
            }
            Err(e) => e.to_string(),
        }
    };
    drop(prom);
    assert!(ok, "prometheus never saw passgate_requests_total: {last}");
    assert!(targets.contains("\"health\":\"up\""), "{targets}");
    env.stop().await;
}
