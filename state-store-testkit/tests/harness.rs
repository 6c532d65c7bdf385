//! Spawned servers never outlive the test that started them.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use state_store_testkit::harness::{temp_dir, wait_for, ServerProcess};

const CHILD: &str = "STATE_STORE_HARNESS_CHILD";

fn alive(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn sleeper(dir: &Path) -> ServerProcess {
    ServerProcess::spawn(Path::new("sleep"), ["300"], &dir.join("sleep.log")).expect("spawn")
}

#[test]
fn dropping_the_handle_stops_the_server() {
    let dir = temp_dir("harness-drop");
    let server = sleeper(dir.path());
    let pid = server.pid();
    assert!(alive(pid));
    drop(server);
    assert!(
        wait_for(Duration::from_secs(10), || !alive(pid)),
        "server {pid} survived"
    );
}

/// The child side: starts a server, prints its pid, and dies without running destructors.
#[test]
#[ignore = "the child side of a multi-process test; run by its parent"]
fn child_that_aborts() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let dir = temp_dir("harness-abort");
    let server = sleeper(dir.path());
    println!("server-pid={}", server.pid());
    std::process::abort();
}

#[test]
fn a_test_process_that_dies_takes_its_servers_with_it() {
    let out = Command::new(std::env::current_exe().expect("current exe"))
        .args([
            "child_that_aborts",
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .expect("run child");
    assert!(!out.status.success(), "the child was meant to abort");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pid: u32 = stdout
        .split("server-pid=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {stdout}"));
    assert!(
        wait_for(Duration::from_secs(10), || !alive(pid)),
        "server {pid} outlived its test"
    );
}
