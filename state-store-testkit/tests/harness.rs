//! Spawned servers never outlive the test that started them.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use state_store_testkit::harness::container::{
    docker_reachable, Container, ContainerSpec, REDIS_IMAGE,
};
use state_store_testkit::harness::{free_port, temp_dir, wait_for, ServerProcess};

const CHILD: &str = "STATE_STORE_HARNESS_CHILD";

fn alive(pid: u32) -> bool {
    Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs the ignored child test `name` in a new process of this test binary, checks that it
/// aborted, and returns the value it printed after `marker`.
fn run_aborting_child(name: &str, marker: &str) -> String {
    let out = Command::new(std::env::current_exe().expect("current exe"))
        .args([
            name,
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .output()
        .expect("run the child");
    assert!(!out.status.success(), "the child was meant to abort");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_owned)
        .unwrap_or_else(|| {
            panic!(
                "the child printed no {marker}: {stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
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
    let pid: u32 = run_aborting_child("child_that_aborts", "server-pid=")
        .parse()
        .expect("a pid");
    assert!(
        wait_for(Duration::from_secs(10), || !alive(pid)),
        "server {pid} outlived its test"
    );
}

/// The container side: starts a Redis container, prints its id, and dies without running
/// destructors.
#[test]
#[ignore = "the child side of a multi-process test; run by its parent"]
fn child_with_a_container_that_aborts() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let spec = ContainerSpec::new(
        "redis",
        REDIS_IMAGE,
        ["redis-server", "--save", ""],
        &[(free_port(), 6379)],
    );
    let container = Container::start(&spec).expect("start a container");
    println!("container-id={}", container.id());
    std::process::abort();
}

/// A test process killed mid-run leaves no container behind: its guard removes it.
#[test]
#[ignore = "needs a Docker engine: run by ./scripts/test --containers"]
fn a_test_process_that_dies_takes_its_containers_with_it() {
    if let Err(why) = docker_reachable() {
        panic!("this test needs Docker: {why}");
    }
    let id = run_aborting_child("child_with_a_container_that_aborts", "container-id=");
    let gone = || {
        Command::new("docker")
            .args([
                "ps",
                "-a",
                "-q",
                "--no-trunc",
                "--filter",
                &format!("id={id}"),
            ])
            .output()
            .is_ok_and(|o| o.status.success() && o.stdout.trim_ascii().is_empty())
    };
    assert!(
        wait_for(Duration::from_secs(30), gone),
        "container {id} survived its test process"
    );
}
