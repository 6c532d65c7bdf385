//! Compare-and-set: create, update by version, conditional remove, and the races they decide.

use super::*;

#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct Tally {
    seen: Vec<u32>,
}

/// `Create` on an existing key is `Conflict` and leaves the value; on a missing key it writes.
pub async fn create_conflicts(ctx: Context) {
    let store = ctx.store().await;
    let create = SetOptions::new().mode(SetMode::Create);
    let result = store.set_with("c", &json!(1), create.clone()).await;
    if !declared_or_unsupported(store.capabilities().conditional, result, "create") {
        return;
    }
    let err = expect_err(
        store.set_with("c", &json!(2), create.clone()).await,
        "second create",
    );
    assert!(err.is_conflict(), "{}", report(&err));
    assert_eq!(read(&store, "c").await, Some(json!(1)));
    ok(store.remove_state("c").await, "remove");
    ok(
        store.set_with("c", &json!(3), create).await,
        "create after remove",
    );
    assert_eq!(read(&store, "c").await, Some(json!(3)));
}

/// `Update` with the current version writes; with a stale one, or on a removed key, it is
/// `Conflict` and writes nothing.
pub async fn update_checks_version(ctx: Context) {
    let store = ctx.store().await;
    let v1 = ok(
        store.set_with("u", &json!("one"), SetOptions::new()).await,
        "set",
    );
    let result = store
        .set_with(
            "u",
            &json!("two"),
            SetOptions::new().mode(SetMode::Update(v1.clone())),
        )
        .await;
    if !declared_or_unsupported(store.capabilities().conditional, result, "update") {
        return;
    }
    assert_eq!(read(&store, "u").await, Some(json!("two")));
    let stale = SetOptions::new().mode(SetMode::Update(v1));
    let err = expect_err(
        store.set_with("u", &json!("three"), stale.clone()).await,
        "stale",
    );
    assert!(err.is_conflict(), "{}", report(&err));
    assert_eq!(read(&store, "u").await, Some(json!("two")));

    let current = ok(store.get_entry("u").await, "get_entry")
        .expect("written")
        .version;
    ok(store.remove_state("u").await, "remove");
    let gone = SetOptions::new().mode(SetMode::Update(current));
    let err = expect_err(
        store.set_with("u", &json!("four"), gone).await,
        "update removed",
    );
    assert!(err.is_conflict(), "{}", report(&err));
    assert_eq!(read(&store, "u").await, None);
}

/// A version read from a value written by a plain `set_state` is a valid base for `Update`.
pub async fn update_after_plain_set(ctx: Context) {
    let store = ctx.store().await;
    write(&store, "p", json!({"n": 1})).await;
    let Some(entry) = ok(store.get_entry("p").await, "get_entry") else {
        panic!("written value missing");
    };
    assert_eq!(entry.value, json!({"n": 1}));
    let result = store
        .set_with(
            "p",
            &json!({"n": 2}),
            SetOptions::new().mode(SetMode::Update(entry.version)),
        )
        .await;
    if declared_or_unsupported(store.capabilities().conditional, result, "update") {
        assert_eq!(read(&store, "p").await, Some(json!({"n": 2})));
    }
}

/// `remove_if` removes only at the expected version; otherwise `Conflict`, value kept.
pub async fn conditional_remove(ctx: Context) {
    let store = ctx.store().await;
    let v1 = ok(
        store.set_with("r", &json!(1), SetOptions::new()).await,
        "set",
    );
    let v2 = ok(
        store.set_with("r", &json!(2), SetOptions::new()).await,
        "set",
    );
    let stale = store.remove_if("r", &v1).await;
    if !declared_or_unsupported(store.capabilities().conditional, stale, "remove_if") {
        return;
    }
    let err = expect_err(store.remove_if("r", &v1).await, "remove_if stale");
    assert!(err.is_conflict(), "{}", report(&err));
    assert_eq!(read(&store, "r").await, Some(json!(2)));
    ok(store.remove_if("r", &v2).await, "remove_if current");
    assert_eq!(read(&store, "r").await, None);
    let err = expect_err(store.remove_if("r", &v2).await, "remove_if gone");
    assert!(err.is_conflict(), "{}", report(&err));
}

/// `update::<T>` under 32 concurrent writers on 2 handles, with the default retries, loses
/// no update and gives up on none.
pub async fn update_loses_nothing(ctx: Context) {
    let store = ctx.store().await;
    let first = store
        .update("tally", |old: Option<Tally>| old.unwrap_or_default())
        .await;
    if !declared_or_unsupported(store.capabilities().conditional, first, "update") {
        return;
    }
    let other = ctx.store().await;
    let mut tasks = Vec::new();
    for writer in 0..32u32 {
        let store = if writer % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            for i in 0..5 {
                let n = writer * 100 + i;
                ok(
                    store
                        .update("tally", |old: Option<Tally>| {
                            let mut tally = old.unwrap_or_default();
                            tally.seen.push(n);
                            tally
                        })
                        .await,
                    "update",
                );
            }
        }));
    }
    for task in tasks {
        if let Err(err) = task.await {
            panic!("update task failed: {err}");
        }
    }
    let tally: Tally = ok(store.get("tally").await, "get").expect("written");
    let seen: HashSet<u32> = tally.seen.iter().copied().collect();
    assert_eq!(tally.seen.len(), 160, "no update lost, none applied twice");
    assert_eq!(seen.len(), 160);
}

/// A plain write works after a conditional write and after an increment on the same key,
/// and replaces the value.
pub async fn plain_write_after_conditional_write(ctx: Context) {
    let store = ctx.store().await;
    let caps = store.capabilities().clone();
    let created = store
        .set_with(
            "c",
            &json!("created"),
            SetOptions::new().mode(SetMode::Create),
        )
        .await;
    if declared_or_unsupported(caps.conditional, created, "Create") {
        write(&store, "c", json!("plain")).await;
        assert_eq!(read(&store, "c").await, Some(json!("plain")));
        let entry = ok(store.get_entry("c").await, "get_entry").expect("written");
        ok(
            store
                .set_with(
                    "c",
                    &json!("cas"),
                    SetOptions::new().mode(SetMode::Update(entry.version)),
                )
                .await,
            "update",
        );
        write(&store, "c", json!("plain again")).await;
        assert_eq!(read(&store, "c").await, Some(json!("plain again")));
    }
    let counted = store.increment("n", 1, None).await;
    if declared_or_unsupported(caps.increment, counted, "increment") {
        write(&store, "n", json!("plain")).await;
        assert_eq!(read(&store, "n").await, Some(json!("plain")));
    }
}

/// A version never matches a value it was not read from: after a remove (or an expiry) and
/// a re-create, the old version is refused by `remove_if` and `Update`.
pub async fn versions_are_never_reused(ctx: Context) {
    let store = ctx.store().await;
    let caps = store.capabilities().clone();
    let created = store
        .set_with("lock", &json!("A"), SetOptions::new().mode(SetMode::Create))
        .await;
    let Some(old) = declared_then(caps.conditional, created, "Create") else {
        return;
    };
    ok(store.remove_state("lock").await, "remove");
    // Identical bytes give the same version where versions are derived from the value.
    let again = if caps.versions_from_value { "B" } else { "A" };
    ok(
        store
            .set_with(
                "lock",
                &json!(again),
                SetOptions::new().mode(SetMode::Create),
            )
            .await,
        "re-create",
    );
    let err = expect_err(
        store.remove_if("lock", &old).await,
        "remove_if with old version",
    );
    assert!(err.is_conflict(), "{}", report(&err));
    let err = expect_err(
        store
            .set_with(
                "lock",
                &json!("C"),
                SetOptions::new().mode(SetMode::Update(old.clone())),
            )
            .await,
        "update with old version",
    );
    assert!(err.is_conflict(), "{}", report(&err));
    assert_eq!(read(&store, "lock").await, Some(json!(again)));

    if !caps.ttl {
        return;
    }
    let short = SetOptions::new()
        .mode(SetMode::Create)
        .ttl(Duration::from_secs(1));
    let old = ok(
        store.set_with("lease", &json!("A"), short.clone()).await,
        "create with TTL",
    );
    wait_until_missing(&store, "lease").await;
    ok(
        store
            .set_with(
                "lease",
                &json!(again),
                SetOptions::new().mode(SetMode::Create),
            )
            .await,
        "re-create after expiry",
    );
    let err = expect_err(
        store.remove_if("lease", &old).await,
        "remove_if after expiry",
    );
    assert!(err.is_conflict(), "{}", report(&err));
    assert_eq!(read(&store, "lease").await, Some(json!(again)));
}

/// Of 16 concurrent `remove_if` calls with the current version, exactly one removes the
/// value; the other 15 get `Conflict`.
pub async fn conditional_remove_has_one_winner(ctx: Context) {
    let store = ctx.store().await;
    let created = store
        .set_with(
            "job",
            &json!("take me"),
            SetOptions::new().mode(SetMode::Create),
        )
        .await;
    let Some(version) = declared_then(store.capabilities().conditional, created, "Create") else {
        return;
    };
    let other = ctx.store().await;
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = if i % 2 == 0 {
                store.clone()
            } else {
                other.clone()
            };
            let version = version.clone();
            tokio::spawn(async move { store.remove_if("job", &version).await })
        })
        .collect();
    let mut winners = 0;
    for task in tasks {
        match task.await.expect("remove_if task") {
            Ok(()) => winners += 1,
            Err(err) => assert!(err.is_conflict(), "{}", report(&err)),
        }
    }
    assert_eq!(
        winners, 1,
        "exactly one caller may be told it removed the value"
    );
    assert_eq!(read(&store, "job").await, None);
}
