//! Reads, writes and removals of single and many names; enable flags; typed reads; the declared capabilities; closing.

use super::*;

/// PURISTA's own case: an object is set, read back equal, removed, and then missing.
pub async fn set_get_remove_object(ctx: Context) {
    let store = ctx.store().await;
    let value = json!({ "user": "ada", "roles": ["admin"], "count": 3 });
    write(&store, "purista", value.clone()).await;
    assert_eq!(read(&store, "purista").await, Some(value));
    ok(store.remove_state("purista").await, "remove_state");
    assert_eq!(read(&store, "purista").await, None);
}

/// With `enable_get` off, reads fail with PURISTA's exact message.
pub async fn get_disabled(ctx: Context) {
    let store = ctx
        .store_with(StoreConfig::default().with_enable_get(false))
        .await;
    let err = expect_err(store.get_state(&["x"]).await, "disabled get");
    assert!(matches!(
        err,
        Error::OperationDisabled {
            operation: Operation::Get
        }
    ));
    assert_eq!(
        err.to_string(),
        "get state from store is disabled by config"
    );
    let err = expect_err(store.get::<Value>("x").await, "disabled typed get");
    assert_eq!(
        err.to_string(),
        "get state from store is disabled by config"
    );
}

/// With `enable_set` off, writes fail with PURISTA's exact message and write nothing.
pub async fn set_disabled(ctx: Context) {
    let store = ctx
        .store_with(StoreConfig::default().with_enable_set(false))
        .await;
    let err = expect_err(store.set_state("x", &json!(1)).await, "disabled set");
    assert!(matches!(
        err,
        Error::OperationDisabled {
            operation: Operation::Set
        }
    ));
    assert_eq!(err.to_string(), "set state at store is disabled by config");
    let err = expect_err(store.increment("x", 1, None).await, "disabled increment");
    assert_eq!(err.to_string(), "set state at store is disabled by config");
    assert_eq!(read(&ctx.store().await, "x").await, None);
}

/// With `enable_remove` off, removals fail with PURISTA's exact message and remove nothing.
pub async fn remove_disabled(ctx: Context) {
    let writer = ctx.store().await;
    write(&writer, "x", json!("kept")).await;
    let store = ctx
        .store_with(StoreConfig::default().with_enable_remove(false))
        .await;
    let err = expect_err(store.remove_state("x").await, "disabled remove");
    assert!(matches!(
        err,
        Error::OperationDisabled {
            operation: Operation::Remove
        }
    ));
    assert_eq!(
        err.to_string(),
        "remove state from store is disabled by config"
    );
    assert_eq!(read(&writer, "x").await, Some(json!("kept")));
}

/// A missing name reads as `None`; a stored JSON `null` as `Some(Null)`.
pub async fn missing_is_not_null(ctx: Context) {
    let store = ctx.store().await;
    write(&store, "null", Value::Null).await;
    let state = ok(store.get_state(&["null", "missing"]).await, "get_state");
    assert_eq!(state.get("null"), Some(&Some(Value::Null)));
    assert_eq!(state.get("missing"), Some(&None));
    assert_eq!(ok(store.get::<Option<u8>>("null").await, "get"), Some(None));
    assert!(ok(store.get_entry("null").await, "get_entry").is_some());
}

/// Every kind of JSON value round-trips unchanged, exactly.
pub async fn json_kinds_round_trip(ctx: Context) {
    let store = ctx.store().await;
    let values = [
        json!({ "nested": { "deeper": [1, { "x": null }], "t": true } }),
        json!([1, "two", 3.5, null, false, [], {}]),
        json!(i64::MIN),
        json!(i64::MAX),
        json!(u64::MAX),
        json!(0.1),
        json!(-1.5e300),
        json!(true),
        json!("ünïcødé ✓ 🦀 \u{0} \"quotes\" \\ \n"),
        json!(""),
        json!([]),
        json!({}),
    ];
    for (i, value) in values.iter().enumerate() {
        write(&store, &format!("kind{i}"), value.clone()).await;
    }
    let names: Vec<String> = (0..values.len()).map(|i| format!("kind{i}")).collect();
    let state = ok(store.get_state(&names).await, "get_state");
    for (name, value) in names.iter().zip(&values) {
        assert_eq!(state[name].as_ref(), Some(value), "{name}");
    }
}

/// `get_state` returns one entry per distinct name (duplicates collapse), missing as `None`,
/// and an empty map for no names.
pub async fn get_state_many(ctx: Context) {
    let store = ctx.store().await;
    for i in 0..20 {
        write(&store, &format!("n{i}"), json!(i)).await;
    }
    let mut names: Vec<String> = (0..25).map(|i| format!("n{i}")).collect();
    names.push("n3".into());
    names.push("n21".into());
    let state = ok(store.get_state(&names).await, "get_state");
    assert_eq!(state.len(), 25);
    for i in 0..25 {
        let expected = (i < 20).then(|| json!(i));
        assert_eq!(state[&format!("n{i}")], expected);
    }
    let none: [&str; 0] = [];
    assert!(ok(store.get_state(&none).await, "get_state()").is_empty());

    // Through the backend, which does not deduplicate: each slot answers its own key, in
    // order, also when a key is asked twice; short and long lists (backends batch them
    // differently), with and without versions.
    let backend = store.raw_backend();
    let key = |name: &str| format!("{}:{name}", store.config().key_prefix);
    let short: Vec<&str> = vec!["n3", "n21", "n3", "n0", "n21"];
    let long: Vec<&str> = short
        .iter()
        .copied()
        .chain(["n19", "n24", "n5", "n19", "n0"])
        .cycle()
        .take(40)
        .collect();
    for names in [short, long] {
        let keys: Vec<String> = names.iter().map(|name| key(name)).collect();
        let expected: Vec<Option<Value>> = names
            .iter()
            .map(|name| {
                name[1..]
                    .parse::<i64>()
                    .ok()
                    .filter(|&i| i < 20)
                    .map(|i| json!(i))
            })
            .collect();
        let json = |bytes: &[u8]| serde_json::from_slice::<Value>(bytes).ok();
        let entries = ok(backend.get_many(&keys).await, "get_many");
        let from_entries: Vec<Option<Value>> = entries
            .iter()
            .map(|e| e.as_ref().and_then(|e| json(&e.value)))
            .collect();
        assert_eq!(from_entries, expected, "get_many of {names:?}");
        let values = ok(backend.get_values(&keys).await, "get_values");
        let from_values: Vec<Option<Value>> =
            values.iter().map(|v| v.as_deref().and_then(json)).collect();
        assert_eq!(from_values, expected, "get_values of {names:?}");
    }
    // One key at a time, the path typed `get` takes.
    for name in ["n3", "n19", "n21", "n0"] {
        let value = ok(backend.get_values(&[key(name)]).await, "get_values").pop();
        let expected = name[1..]
            .parse::<i64>()
            .ok()
            .filter(|&i| i < 20)
            .map(|i| json!(i));
        assert_eq!(
            value
                .flatten()
                .and_then(|v| serde_json::from_slice::<Value>(&v).ok()),
            expected,
            "get_values of {name}"
        );
    }
}

/// A second write replaces the first, and the version changes.
pub async fn overwrite_replaces(ctx: Context) {
    let store = ctx.store().await;
    let v1 = ok(
        store
            .set_with("k", &json!({"a": 1}), SetOptions::new())
            .await,
        "set",
    );
    let v2 = ok(
        store.set_with("k", &json!([2]), SetOptions::new()).await,
        "set",
    );
    assert_ne!(v1, v2, "every write must give a new version");
    assert_eq!(read(&store, "k").await, Some(json!([2])));
    let entry = ok(store.get_entry("k").await, "get_entry").expect("written");
    assert_eq!(entry.version, v2);
}

/// Removing a missing name is `Ok`, and twice as well.
pub async fn remove_missing_is_ok(ctx: Context) {
    let store = ctx.store().await;
    ok(store.remove_state("never-written").await, "remove missing");
    write(&store, "once", json!(1)).await;
    ok(store.remove_state("once").await, "remove");
    ok(store.remove_state("once").await, "remove again");
}

/// A stored value that does not fit `T` is a `Decode` error naming the key, with no value in
/// the message.
pub async fn typed_decode_error(ctx: Context) {
    let store = ctx.store().await;
    write(&store, "typed", json!({ "secret": "hunter2" })).await;
    let err = expect_err(store.get::<Vec<u32>>("typed").await, "decode");
    match &err {
        Error::Decode { key, .. } => assert_eq!(key, "typed"),
        other => panic!("expected Decode, got {}", report(other)),
    }
    assert!(!report(&err).contains("hunter2"), "{}", report(&err));
    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Wrong {
        count: u32,
    }
    let err = expect_err(store.get::<Wrong>("typed").await, "decode");
    assert!(matches!(err, Error::Decode { .. }));
    assert!(!report(&err).contains("hunter2"), "{}", report(&err));
}

/// Every feature is either declared and working or refused with `Unsupported`.
pub async fn capabilities_are_truthful(ctx: Context) {
    let store = ctx.store().await;
    let caps = store.capabilities().clone();
    let ttl = store
        .set_with(
            "cap-ttl",
            &json!(1),
            SetOptions::new().ttl(Duration::from_secs(60)),
        )
        .await;
    if declared_or_unsupported(caps.ttl, ttl, "TTL") {
        assert_eq!(read(&store, "cap-ttl").await, Some(json!(1)));
    } else {
        assert_eq!(
            read(&store, "cap-ttl").await,
            None,
            "a refused TTL write wrote"
        );
    }
    let create = store
        .set_with(
            "cap-create",
            &json!(1),
            SetOptions::new().mode(SetMode::Create),
        )
        .await;
    if declared_or_unsupported(caps.conditional, create, "Create") {
        assert_eq!(read(&store, "cap-create").await, Some(json!(1)));
    } else {
        assert_eq!(
            read(&store, "cap-create").await,
            None,
            "a refused Create wrote"
        );
    }
    let incr = store.increment("cap-incr", 3, None).await;
    if declared_or_unsupported(caps.increment, incr, "increment") {
        assert_eq!(read(&store, "cap-incr").await, Some(json!(3)));
    }
    assert!(caps.max_key_len > 0 && caps.max_value_len > 0);
}

/// The backend itself — not only the stack in front of it — refuses what its capabilities
/// leave out with `Unsupported`, and a refused write writes nothing; it offers an extension
/// exactly when it declares the feature. A layer or a caller that goes around the handle gets
/// no silent half-support.
pub async fn the_backend_refuses_what_it_does_not_declare(ctx: Context) {
    let store = ctx.store().await;
    let backend = store.raw_backend();
    let caps = backend.capabilities();
    let extensions = backend.extensions();
    let key = |name: &str| format!("{}:{name}", store.config().key_prefix);
    let refused = |what: &str, result: Result<(), Error>| match result {
        Err(Error::Unsupported { .. }) => {}
        other => panic!("the backend gave {other:?} for undeclared {what}, not Unsupported"),
    };
    if !caps.ttl {
        let options = SetOptions::new().ttl(Duration::from_secs(60));
        let written = backend.set(&key("raw-ttl"), b"1".to_vec(), &options).await;
        refused("TTL", written.map(drop));
        let left = ok(backend.get_many(&[key("raw-ttl")]).await, "raw read");
        assert!(left[0].is_none(), "a refused TTL write wrote");
    }
    if !caps.conditional {
        let options = SetOptions::new().mode(SetMode::Create);
        let written = backend
            .set(&key("raw-create"), b"1".to_vec(), &options)
            .await;
        refused("Create", written.map(drop));
    }
    if caps.ttl && !caps.upsert_keep_ttl {
        let options = SetOptions::new().keep_ttl(true);
        let written = backend.set(&key("raw-keep"), b"1".to_vec(), &options).await;
        refused("an upsert keeping the TTL", written.map(drop));
    }
    assert_eq!(
        extensions.increment.is_some(),
        caps.increment,
        "offers increments exactly when it declares them"
    );
    assert_eq!(
        extensions.list.is_some(),
        caps.list,
        "offers listing exactly when it declares it"
    );
    assert_eq!(
        extensions.watch.is_some(),
        caps.watch != WatchSupport::None,
        "offers watching exactly when it declares it"
    );
    // And the stack over it completes what it can, and declares that.
    let stack = store.capabilities();
    assert_eq!(stack.increment, caps.increment || caps.conditional);
    assert_eq!(
        store.backend().extensions().lease.is_some(),
        stack.leases(),
        "the stack offers leases exactly when it declares them"
    );
}

/// After `destroy`, every operation fails with a clear error, and nothing hangs; a second
/// `destroy` is `Ok`.
pub async fn destroy_then_fail(ctx: Context) {
    let store = ctx.store().await;
    write(&store, "before", json!(1)).await;
    ok(store.destroy().await, "destroy");
    ok(store.destroy().await, "second destroy");
    let clone = store.clone();
    let errors = [
        expect_err(clone.get_state(&["before"]).await, "get after destroy"),
        expect_err(clone.set_state("x", &json!(1)).await, "set after destroy"),
        expect_err(clone.remove_state("before").await, "remove after destroy"),
        expect_err(
            clone.increment("n", 1, None).await,
            "increment after destroy",
        ),
    ];
    for err in errors {
        assert!(
            matches!(err, Error::Closed { .. } | Error::Unavailable { .. }),
            "{}",
            report(&err)
        );
    }
}
