//! The `state-store` binary as a user runs it, against SQLite and a real Redis: every command,
//! plain and `--json` output, exit codes, and `watch` printing a change another process made.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use state_store_testkit::harness::nats::nats_url;
use state_store_testkit::harness::postgres::postgres_url;
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

/// What `export` printed: name → (value, milliseconds left).
fn exported(text: &str) -> std::collections::BTreeMap<String, (serde_json::Value, Option<u64>)> {
    text.lines()
        .map(|line| {
            let line: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            let name = line["name"].as_str().expect("a name").to_owned();
            (name, (line["value"].clone(), line["ttl_ms"].as_u64()))
        })
        .collect()
}

/// Values of every shape and awkward names, some with an hour or ten minutes to live.
const SEED: &[(&str, &str, Option<u64>)] = &[
    ("job:1", r#"{"status":"done","tags":["a","b"]}"#, None),
    ("session:ü/é with space", r#""text""#, Some(3600)),
    ("counter", "42", None),
    ("rate:window", "7", Some(600)),
    ("nothing", "null", None),
    ("deep", r#"{"a":{"b":{"c":[1,2.5,true]}}}"#, Some(3600)),
];

/// `export` of `url` matches [`SEED`]: every value, every TTL within a second of what is left
/// of it `elapsed` after seeding (a backend may round to whole seconds).
fn assert_carried(url: &str, prefix: &str, elapsed: Duration, hop: &str) {
    let got = exported(&ok(url, prefix, &["export"]));
    assert_eq!(got.len(), SEED.len(), "{hop}: {got:?}");
    for (name, value, ttl) in SEED {
        let (stored, left) = got
            .get(*name)
            .unwrap_or_else(|| panic!("{hop}: {name:?} was not carried over"));
        let value: serde_json::Value = serde_json::from_str(value).expect("seed JSON");
        assert_eq!(stored, &value, "{hop}: {name:?}");
        match (ttl, left) {
            (None, None) => {}
            (Some(secs), Some(ms)) => {
                let full = secs * 1000;
                let least =
                    full.saturating_sub(u64::try_from(elapsed.as_millis()).unwrap_or(0) + 1000);
                assert!(
                    (least..=full + 1000).contains(ms),
                    "{hop}: {name:?} had {secs} s to live and has {ms} ms left after {elapsed:?}"
                );
            }
            _ => panic!("{hop}: {name:?} should have TTL {ttl:?}, has {left:?} ms"),
        }
    }
}

/// SQLite → Redis → NATS → PostgreSQL → SQLite through `cp`, and the same through `export` and
/// `import`: every value and every TTL arrives (within a second); a rerun with
/// `--skip-existing` writes nothing; a value that is not JSON is reported by name, skipped,
/// and makes the exit code 1 while the rest is copied.
#[test]
fn cp_and_export_import_carry_values_and_ttls_across_backends() {
    let (Some(redis), Some(nats), Some(postgres)) = (redis_url(), nats_url(), postgres_url())
    else {
        return;
    };
    let dir = temp_dir("cli-cp");
    let sqlite = |file: &str| format!("sqlite://{}", dir.path().join(file).display());
    let prefix = format!("cp-test-{}", std::process::id());
    let p = prefix.as_str();
    let source = sqlite("source.db");
    let seeded = std::time::Instant::now();
    for (name, value, ttl) in SEED {
        match ttl {
            Some(secs) => ok(
                &source,
                p,
                &["set", name, value, "--ttl", &secs.to_string()],
            ),
            None => ok(&source, p, &["set", name, value]),
        };
    }
    assert_carried(&source, p, seeded.elapsed(), "the source");

    // Through cp, hop by hop.
    let hops = [
        source.clone(),
        redis.clone(),
        nats.clone(),
        postgres.clone(),
        sqlite("cp.db"),
    ];
    for pair in hops.windows(2) {
        let out = run(&pair[0], p, &["cp", "--to", &pair[1]]);
        assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains(&format!("copied {} names (3 with a TTL)", SEED.len())),
            "{said}"
        );
        let hop = format!("cp to {}", pair[1].split("://").next().unwrap_or(""));
        assert_carried(&pair[1], p, seeded.elapsed(), &hop);
    }
    // A rerun leaves everything as it is.
    let out = run(&source, p, &["cp", "--to", &redis, "--skip-existing"]);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!(
            "copied 0 names (0 with a TTL), {} already at the destination",
            SEED.len()
        )),
        "{said}"
    );

    // Through export and import, under another prefix.
    let other = format!("{prefix}-jsonl");
    let file = dir.path().join("state.jsonl");
    let file = file.to_str().expect("a UTF-8 path");
    let mut from = source.clone();
    for to in [
        redis.clone(),
        nats.clone(),
        postgres.clone(),
        sqlite("jsonl.db"),
    ] {
        let from_prefix = if from == source { p } else { other.as_str() };
        ok(&from, from_prefix, &["export", "-o", file]);
        ok(&to, &other, &["import", "-i", file]);
        let hop = format!("import to {}", to.split("://").next().unwrap_or(""));
        assert_carried(&to, &other, seeded.elapsed(), &hop);
        from = to;
    }

    // A value another client wrote that is not JSON: named, skipped, exit code 1.
    let raw = Command::new("redis-cli")
        .args(["-u", &redis, "SET", &format!("{prefix}:broken"), "not json"])
        .output()
        .expect("run redis-cli");
    assert!(
        raw.status.success(),
        "{}",
        String::from_utf8_lossy(&raw.stderr)
    );
    let out = run(&redis, p, &["cp", "--to", &sqlite("broken.db")]);
    assert_eq!(code(&out), 1);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("skipped \"broken\""), "{said}");
    assert!(
        !said.contains("not json"),
        "the value itself is never printed: {said}"
    );
    assert!(
        said.contains(&format!("copied {} names", SEED.len())),
        "{said}"
    );

    // A line that does not parse: its number, skipped, exit code 1; the others imported.
    std::fs::write(
        file,
        "{\"name\":\"fine\",\"value\":1}\nnot a record\n{\"name\":\"also\",\"value\":2,\"ttl_ms\":60000}\n",
    )
    .expect("write");
    let out = run(&sqlite("lines.db"), p, &["import", "-i", file]);
    assert_eq!(code(&out), 1);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("skipped line 2"), "{said}");
    assert!(said.contains("imported 2 names (1 with a TTL)"), "{said}");

    for (url, prefix) in [
        (&redis, p),
        (&nats, p),
        (&postgres, p),
        (&redis, &other),
        (&nats, &other),
        (&postgres, &other),
    ] {
        let names = ok(url, prefix, &["ls"]);
        let names: Vec<&str> = names.lines().collect();
        if !names.is_empty() {
            let mut args = vec!["rm"];
            args.extend(names);
            ok(url, prefix, &args);
        }
    }
}
