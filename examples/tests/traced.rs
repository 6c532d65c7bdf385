//! The traced example: each store call of a request is an OpenTelemetry client span, a child
//! of the request's span, with the database conventions' attributes and never a key or value.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use std::process::Command;

use state_store_testkit::harness::nats::nats_url;
use state_store_testkit::harness::redis::redis_url;
use state_store_testkit::harness::{host_of, temp_dir};

/// One exported span: its name, id, parent, kind and attributes, as the stdout exporter prints them.
#[derive(Debug, Default)]
struct Span {
    name: String,
    id: String,
    parent: String,
    kind: String,
    attributes: Vec<String>,
}

fn spans(stdout: &str) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    let field = |line: &str, name: &str| {
        line.trim()
            .strip_prefix(name)
            .and_then(|rest| rest.trim_start().strip_prefix(':'))
            .map(|value| value.trim().to_owned())
    };
    for line in stdout.lines() {
        if let Some(name) = field(line, "Name") {
            spans.push(Span {
                name,
                ..Span::default()
            });
        } else if let Some(span) = spans.last_mut() {
            if let Some(id) = field(line, "SpanId") {
                span.id = id;
            } else if let Some(parent) = field(line, "ParentSpanId") {
                span.parent = parent;
            } else if let Some(kind) = field(line, "Kind") {
                span.kind = kind;
            } else if line.trim_start().starts_with("->") {
                span.attributes.push(line.trim().to_owned());
            }
        }
    }
    spans
}

/// Runs the example on `url` (a store of `system`); spans name the URL's host where the store
/// has a server.
fn run(url: &str, system: &str) {
    let server = host_of(url).filter(|_| system != "sqlite");
    let out = Command::new(env!("CARGO_BIN_EXE_traced"))
        .args(["--store", url])
        .output()
        .expect("run the traced example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{url}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let spans = spans(&stdout);
    let request = spans
        .iter()
        .find(|span| span.name == "handle_request")
        .unwrap_or_else(|| panic!("{url}: no request span in\n{stdout}"));
    let calls: Vec<&Span> = spans
        .iter()
        .filter(|span| span.name == "state_store" && span.parent == request.id)
        .collect();
    let operations: Vec<&str> = ["set", "increment", "get", "remove"]
        .into_iter()
        .filter(|op| {
            calls.iter().any(|span| {
                span.attributes.iter().any(|a| {
                    a.starts_with("->  db.operation.name") && a.contains(&format!("\"{op}\""))
                })
            })
        })
        .collect();
    assert_eq!(
        operations,
        ["set", "increment", "get", "remove"],
        "{url}: the request's store calls are not its child spans:\n{stdout}"
    );
    for span in &calls {
        let has = |name: &str, value: &str| {
            span.attributes
                .iter()
                .any(|a| a.starts_with(&format!("->  {name}:")) && a.contains(value))
        };
        assert!(span.kind == "Client", "{url}: {span:?}");
        assert!(has("db.system.name", system), "{url}: {span:?}");
        assert!(has("db.operation.batch.size", "I64("), "{url}: {span:?}");
        assert!(has("db.namespace", "traced"), "{url}: {span:?}");
        if let Some(host) = server {
            assert!(has("server.address", host), "{url}: {span:?}");
            assert!(has("server.port", "I64("), "{url}: {span:?}");
        }
    }
    // The key (`visits`) and the values never leave the process in a span.
    assert!(
        !stdout.contains("visits"),
        "{url}: a key in a span:\n{stdout}"
    );
}

#[test]
fn store_calls_are_child_spans_on_sqlite() {
    let dir = temp_dir("traced");
    run(
        &format!("sqlite://{}", dir.path().join("state.db").display()),
        "sqlite",
    );
}

#[test]
fn store_calls_name_their_server_on_redis() {
    if let Some(url) = redis_url() {
        run(&url, "redis");
    }
}

#[test]
fn store_calls_name_their_server_on_nats() {
    if let Some(url) = nats_url() {
        run(&url, "nats");
    }
}
