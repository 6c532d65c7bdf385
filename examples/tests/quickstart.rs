//! The quickstart runs on every store, and its second run shows what the first one left.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use std::process::Command;

use state_store_testkit::harness::dapr::{dapr_endpoint, Component, COMPONENT};
use state_store_testkit::harness::nats::nats_url;
use state_store_testkit::harness::redis::redis_url;
use state_store_testkit::harness::temp_dir;

fn run_twice(url: &str) {
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_quickstart"))
            .args(["--store", url])
            .env_remove("REDIS_URL")
            .env_remove("NATS_URL")
            .env_remove("DAPR_GRPC_ENDPOINT")
            .output()
            .expect("run quickstart");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{url}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    let first = run();
    assert!(first.contains("this run: visit #"), "{first}");
    let second = run();
    assert!(
        second.contains("found from earlier runs"),
        "{url}: {second}"
    );
    assert!(second.contains("session:ada"), "{second}");
}

#[test]
fn on_sqlite_state_survives_a_restart() {
    let dir = temp_dir("quickstart");
    run_twice(&format!(
        "sqlite://{}",
        dir.path().join("state.db").display()
    ));
}

#[test]
fn on_redis() {
    if let Some(url) = redis_url() {
        run_twice(&url);
    }
}

#[test]
fn on_nats() {
    if let Some(url) = nats_url() {
        run_twice(&url);
    }
}

#[test]
fn on_dapr() {
    if let Some(endpoint) = dapr_endpoint(Component::Redis) {
        let host = endpoint.trim_start_matches("http://");
        run_twice(&format!("dapr://{host}/{COMPONENT}"));
    }
}
