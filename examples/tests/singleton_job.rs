//! The singleton-job example: leadership moves from a killed leader to another process, and
//! the job's ticks come from one leader at a time.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use std::process::Command;

use state_store_testkit::harness::redis::redis_url;
use state_store_testkit::harness::temp_dir;

fn run(url: &str, kills: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_singleton_job"))
        .args(["--store", url, "--workers", "3", "--kills", kills])
        .output()
        .expect("run singleton_job");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{url}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("leadership moved {kills} time(s)")),
        "{stdout}"
    );
    assert_eq!(
        stdout.matches("*** killed").count(),
        kills.parse::<usize>().expect("a number"),
        "{stdout}"
    );
}

#[test]
fn on_sqlite_leadership_moves_when_the_leader_is_killed() {
    let dir = temp_dir("singleton");
    run(
        &format!("sqlite://{}", dir.path().join("state.db").display()),
        "2",
    );
}

#[test]
fn on_redis() {
    if let Some(url) = redis_url() {
        run(&url, "1");
    }
}
