//! The web example end to end: two instances on one store, a client with a cookie jar
//! switching between them. The session survives switching instances and a restart of both;
//! the rate limit is shared (exactly `limit` requests pass across both instances).

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use state_store_testkit::harness::nats::nats_url;
use state_store_testkit::harness::redis::redis_url;
use state_store_testkit::harness::{free_port, host_of, temp_dir, wait_for_port};

const LIMIT: usize = 4;

/// One instance of the example; killed when dropped.
struct Instance(Child);

impl Instance {
    fn start(url: &str, prefix: &str, port: u16, name: &str) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_web"))
            .args(["--store", url, "--prefix", prefix, "--instance", name])
            .args(["--port", &port.to_string(), "--limit", &LIMIT.to_string()])
            .args(["--window", "600"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start the web example");
        let instance = Instance(child);
        assert!(
            wait_for_port(port, Duration::from_secs(30)),
            "instance {name} never listened on {port}"
        );
        instance
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn visits(client: &reqwest::Client, port: u16) -> (String, u64) {
    let body: serde_json::Value = client
        .get(format!("http://127.0.0.1:{port}/api/visits"))
        .send()
        .await
        .expect("GET /api/visits")
        .error_for_status()
        .expect("a 200")
        .json()
        .await
        .expect("JSON");
    (
        body["instance"].as_str().expect("instance").to_owned(),
        body["visits"].as_u64().expect("visits"),
    )
}

async fn scenario(url: &str) {
    let prefix = format!("web-test-{}", std::process::id());
    let ports = [free_port(), free_port()];
    let names = ["a", "b"];
    let start = || [0, 1].map(|i| Instance::start(url, &prefix, ports[i], names[i]));
    let client = reqwest::Client::builder()
        .cookie_store(true)
        // Instances restart on the same ports: no connection outlives one.
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");

    let instances = start();
    for (i, expected) in (1..=4).enumerate() {
        let (served_by, count) = visits(&client, ports[i % 2]).await;
        assert_eq!(served_by, names[i % 2]);
        assert_eq!(
            count, expected,
            "{url}: the session did not follow the client across instances"
        );
    }
    drop(instances);

    // Both instances restart: the session lives in the store.
    let _instances = start();
    let (_, count) = visits(&client, ports[1]).await;
    assert_eq!(
        count, 5,
        "{url}: the session was lost when both instances restarted"
    );

    // The limit is shared: alternate between instances, count what passes.
    let mut allowed = 0;
    for i in 0..3 * LIMIT {
        let response = client
            .get(format!("http://127.0.0.1:{}/limited", ports[i % 2]))
            .send()
            .await
            .expect("GET /limited");
        let headers = response.headers().clone();
        assert_eq!(headers["ratelimit-limit"], LIMIT.to_string());
        match response.status().as_u16() {
            200 => allowed += 1,
            429 => {
                let retry: u64 = headers["retry-after"]
                    .to_str()
                    .expect("ascii")
                    .parse()
                    .expect("seconds");
                assert!(retry > 0 && retry <= 600, "Retry-After {retry}");
                assert_eq!(headers["ratelimit-remaining"], "0");
                assert_eq!(
                    headers["ratelimit-policy"],
                    format!("\"limited\";q={LIMIT};w=600").as_str()
                );
                assert_eq!(headers["content-type"], "application/problem+json");
                let problem: serde_json::Value =
                    response.json().await.expect("a problem-details body");
                assert_eq!(problem["status"], 429);
                assert_eq!(problem["title"], "Too Many Requests");
            }
            other => panic!("{url}: /limited answered {other}"),
        }
    }
    assert_eq!(
        allowed, LIMIT,
        "{url}: {allowed} requests passed a shared limit of {LIMIT}"
    );

    // Each instance's `/metrics`: its denials, and the store's latency by operation, with
    // the conventions' labels; never a key or a client.
    let (mut denied, mut gets) = (0.0, 0.0);
    for port in ports {
        let text = client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("body");
        denied += sample(
            &text,
            "state_store_limiter_decisions",
            &[("limiter", "limited"), ("decision", "denied")],
        );
        let system = url.split("://").next().expect("scheme");
        assert!(
            sample(
                &text,
                "db_client_operation_duration_count",
                &[("db_system_name", system)]
            ) > 0.0,
            "{url}: no store latency in /metrics:\n{text}"
        );
        // The server's address where there is one: the host of the URL.
        if let Some(host) = host_of(url).filter(|_| system != "sqlite") {
            assert!(
                sample(
                    &text,
                    "db_client_operation_duration_count",
                    &[("db_system_name", system), ("server_address", host)]
                ) > 0.0,
                "{url}: no server.address on the store latency:\n{text}"
            );
        }
        gets += sample(
            &text,
            "db_client_operation_duration_count",
            &[("db_system_name", system), ("db_operation_name", "get")],
        );
        assert!(!text.contains("web-test-"), "a key in /metrics:\n{text}");
    }
    assert_eq!(
        denied,
        (2 * LIMIT) as f64,
        "{url}: denials across both instances"
    );
    assert!(gets > 0.0, "{url}: the session reads are not in /metrics");
}

/// The value of the sample of `name` carrying every label of `labels` (0 when none does).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn run(url: &str) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(scenario(url));
}

#[test]
fn two_instances_on_sqlite() {
    let dir = temp_dir("web");
    run(&format!(
        "sqlite://{}",
        dir.path().join("state.db").display()
    ));
}

#[test]
fn two_instances_on_redis() {
    if let Some(url) = redis_url() {
        run(&url);
    }
}

#[test]
fn two_instances_on_nats() {
    if let Some(url) = nats_url() {
        run(&url);
    }
}
