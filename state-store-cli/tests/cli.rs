//! The `state-store` binary as a user runs it, against SQLite and a real Redis: every command,
//! plain and `--json` output, exit codes, and `watch` printing a change another process made.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use state_store_testkit::harness::redis::redis_url;
use state_store_testkit::harness::temp_dir;

fn cli(url: &str, prefix: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_state-store"));
    command
        .args(["--store", url, "--prefix", prefix])
        .args(args)
        .env_remove("STATE_STORE_URL");
    command
}

fn run(url: &str, prefix: &str, args: &[&str]) -> Output {
    cli(url, prefix, args).output().expect("run state-store")
}

fn ok(url: &str, prefix: &str, args: &[&str]) -> String {
    let out = run(url, prefix, args);
    assert!(
        out.status.success(),
        "state-store {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("an exit code")
}

fn commands(url: &str) {
    let prefix = format!("cli-test-{}", std::process::id());
    let p = prefix.as_str();
    ok(url, p, &["set", "job:1", r#"{"status":"done"}"#]);
    let mut set = cli(url, p, &["set", "job:2"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn");
    set.stdin
        .take()
        .expect("stdin")
        .write_all(br#""from stdin""#)
        .expect("write stdin");
    assert!(set.wait().expect("wait").success());
    assert_eq!(ok(url, p, &["get", "job:1"]), "{\"status\":\"done\"}\n");
    assert_eq!(ok(url, p, &["incr", "hits", "5"]), "5\n");
    assert_eq!(ok(url, p, &["incr", "hits", "-2"]), "3\n");
    let both = ok(url, p, &["get", "job:2", "hits"]);
    assert_eq!(both, "job:2\t\"from stdin\"\nhits\t3\n");
    let json = ok(url, p, &["--json", "get", "job:1"]);
    let parsed: serde_json::Value = serde_json::from_str(json.trim()).expect("JSON line");
    assert_eq!(parsed["value"]["status"], "done");

    let mut listed: Vec<String> = ok(url, p, &["ls"]).lines().map(str::to_owned).collect();
    listed.sort();
    assert_eq!(listed, ["hits", "job:1", "job:2"]);
    assert_eq!(ok(url, p, &["ls", "job:"]).lines().count(), 2);
    // The prefix is the service's: another prefix sees none of it.
    assert_eq!(ok(url, &format!("{p}-other"), &["ls"]), "");

    // `info` does not scan the store unless asked to.
    let info = ok(url, p, &["--json", "info"]);
    let info: serde_json::Value = serde_json::from_str(info.trim()).expect("JSON");
    assert_eq!(info["names"], serde_json::Value::Null);
    assert_eq!(info["capabilities"]["list"], true);
    let counted = ok(url, p, &["--json", "info", "--count"]);
    let counted: serde_json::Value = serde_json::from_str(counted.trim()).expect("JSON");
    assert_eq!(counted["names"], 3);

    ok(url, p, &["rm", "job:1", "job:2"]);
    let missing = run(url, p, &["get", "job:1"]);
    assert_eq!(code(&missing), 1, "a missing name exits 1");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("job:1"));

    let bad_json = run(url, p, &["set", "x", "not json"]);
    assert_eq!(code(&bad_json), 2, "bad JSON exits 2");
    let bad_url = run("bogus://nowhere", p, &["ls"]);
    assert_eq!(code(&bad_url), 2, "a bad URL exits 2");
    assert!(String::from_utf8_lossy(&bad_url.stderr).contains("bogus"));
    let not_integer = run(url, p, &["set", "word", r#""text""#]);
    assert!(not_integer.status.success());
    assert_eq!(
        code(&run(url, p, &["incr", "word"])),
        3,
        "a store error exits 3"
    );
}

/// `watch` in one process prints a change made by another.
fn watch_sees_another_process(url: &str) {
    let prefix = format!("cli-watch-{}", std::process::id());
    let mut watcher = cli(url, &prefix, &["watch", "job:"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the watcher");
    // It says it is watching (on stderr) once the watch is in place.
    let stderr = watcher.stderr.take().expect("stderr");
    let mut ready = String::new();
    BufReader::new(stderr)
        .read_line(&mut ready)
        .expect("read stderr");
    assert!(ready.contains("watching"), "{ready}");
    let stdout = watcher.stdout.take().expect("stdout");
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    ok(url, &prefix, &["set", "other:ignored", "0"]);
    ok(url, &prefix, &["set", "job:7", r#"{"status":"queued"}"#]);
    ok(url, &prefix, &["rm", "job:7"]);
    let first = received
        .recv_timeout(Duration::from_secs(30))
        .expect("the watcher printed nothing");
    assert_eq!(first, "put\tjob:7\t{\"status\":\"queued\"}");
    let second = received
        .recv_timeout(Duration::from_secs(30))
        .expect("the watcher printed no removal");
    assert_eq!(second, "removed\tjob:7");
    let _ = watcher.kill();
    let _ = watcher.wait();
}

#[test]
fn on_sqlite() {
    let dir = temp_dir("cli");
    let url = format!("sqlite://{}", dir.path().join("state.db").display());
    commands(&url);
    watch_sees_another_process(&url);
}

#[test]
fn on_redis() {
    if let Some(url) = redis_url() {
        commands(&url);
        watch_sees_another_process(&url);
    }
}

/// `--help` names `STATE_STORE_URL` but never prints its value: a URL carries passwords.
#[test]
fn help_never_prints_the_store_url() {
    let out = Command::new(env!("CARGO_BIN_EXE_state-store"))
        .arg("--help")
        .env("STATE_STORE_URL", "redis://:hunter2@127.0.0.1:6379")
        .output()
        .expect("run state-store");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("STATE_STORE_URL"), "{help}");
    assert!(!help.contains("hunter2"), "{help}");
}
