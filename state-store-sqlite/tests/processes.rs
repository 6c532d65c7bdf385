//! Several OS processes share one SQLite file. The test binary re-runs itself as the child
//! process (selected by an env var), so the children are real, separate processes.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use std::path::Path;
use std::process::{Command, Stdio};

use serde_json::json;
use state_store_core::StateStore;
use state_store_sqlite::{SqliteConfig, SqliteStateStore};
use state_store_testkit::harness::temp_dir;

const CHILD: &str = "STATE_STORE_SQLITE_CHILD";
const DB: &str = "STATE_STORE_SQLITE_CHILD_DB";
const PROCESSES: usize = 4;
const INCREMENTS: i64 = 250;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Spawns this test binary running only `test`, as a child process doing `role`.
fn spawn_child(test: &str, role: &str, db: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().expect("current exe"))
        .args([
            test,
            "--exact",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, role)
        .env(DB, db)
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn child process")
}

fn wait_ok(mut child: std::process::Child) {
    let status = child.wait().expect("wait for child");
    assert!(status.success(), "child process failed: {status}");
}

/// The child side: does its role and exits. A no-op when run as a normal test.
#[test]
#[ignore = "the child side of a multi-process test; run by its parent"]
fn child() {
    let (Ok(role), Some(db)) = (std::env::var(CHILD), std::env::var_os(DB)) else {
        return;
    };
    runtime().block_on(async {
        let store = StateStore::from(
            SqliteStateStore::connect(SqliteConfig::new(&db))
                .await
                .expect("open"),
        );
        match role.as_str() {
            "increment" => {
                for _ in 0..INCREMENTS {
                    store
                        .increment("counter", 1, None)
                        .await
                        .expect("increment");
                }
            }
            "write" => {
                store
                    .set_state("from-child", &json!({ "pid": std::process::id() }))
                    .await
                    .expect("set");
            }
            "read" => {
                let seen = store.get_state(&["from-parent"]).await.expect("get");
                assert_eq!(seen["from-parent"], Some(json!("hello child")));
            }
            other => panic!("unknown role {other}"),
        }
        store.destroy().await.expect("destroy");
    });
}

#[test]
fn processes_increment_exactly() {
    let dir = temp_dir("sqlite-processes");
    let db = dir.path().join("state.db");
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| spawn_child("child", "increment", &db))
        .collect();
    children.into_iter().for_each(wait_ok);
    runtime().block_on(async {
        let store = StateStore::from(
            SqliteStateStore::connect(SqliteConfig::new(&db))
                .await
                .expect("open"),
        );
        let counter: Option<i64> = store.get("counter").await.expect("get");
        assert_eq!(counter, Some(PROCESSES as i64 * INCREMENTS));
        store.destroy().await.expect("destroy");
    });
}

#[test]
fn processes_see_each_other_and_state_survives_restart() {
    let dir = temp_dir("sqlite-share");
    let db = dir.path().join("state.db");
    runtime().block_on(async {
        let store = StateStore::from(
            SqliteStateStore::connect(SqliteConfig::new(&db))
                .await
                .expect("open"),
        );
        store
            .set_state("from-parent", &json!("hello child"))
            .await
            .expect("set");
        // The parent keeps its connection open while the children run.
        wait_ok(spawn_child("child", "read", &db));
        wait_ok(spawn_child("child", "write", &db));
        let seen = store.get_state(&["from-child"]).await.expect("get");
        assert!(seen["from-child"]
            .as_ref()
            .is_some_and(|v| v["pid"].is_u64()));
        store.destroy().await.expect("destroy");
    });
    // A new process after everyone stopped still sees it all.
    wait_ok(spawn_child("child", "read", &db));
    runtime().block_on(async {
        let store = StateStore::from(
            SqliteStateStore::connect(SqliteConfig::new(&db))
                .await
                .expect("reopen"),
        );
        let seen = store
            .get_state(&["from-parent", "from-child"])
            .await
            .expect("get");
        assert!(seen.values().all(Option::is_some), "state lost on restart");
        store.destroy().await.expect("destroy");
    });
}

#[test]
fn lease_tokens_survive_reopening_the_file() {
    let dir = temp_dir("sqlite-lease-restart");
    let db = dir.path().join("state.db");
    let open = || async {
        StateStore::from(
            SqliteStateStore::connect(SqliteConfig::new(&db))
                .await
                .expect("open"),
        )
    };
    let before = runtime().block_on(async {
        let store = open().await;
        // Held when the "process" ends: never released.
        let lease = store
            .lease("job")
            .ttl(std::time::Duration::from_millis(200))
            .try_acquire()
            .await
            .expect("acquire")
            .expect("free");
        store.destroy().await.expect("destroy");
        lease.fencing_token()
    });
    runtime().block_on(async {
        let store = open().await;
        let after = store
            .lease("job")
            .acquire(std::time::Duration::from_secs(60))
            .await
            .expect("acquire")
            .expect("the old lease expires");
        assert!(
            after.fencing_token() > before,
            "{} after {before}",
            after.fencing_token()
        );
        store.destroy().await.expect("destroy");
    });
}
