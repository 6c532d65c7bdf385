//! The session store on every backend: create-if-absent with a new id on collision, saves that
//! never resurrect a deleted session, loads that check the expiry date, a TTL on the backend.
//! Run for both tower-sessions versions the crate supports.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use serde_json::json;
use state_store::StateStore;
use state_store_testkit::harness::dapr::{dapr_endpoint, Component, COMPONENT};
use state_store_testkit::harness::nats::nats_url;
use state_store_testkit::harness::postgres::postgres_url;
use state_store_testkit::harness::redis::redis_url;
use state_store_testkit::harness::temp_dir;
use state_store_tower::SessionStore;
use time::{Duration, OffsetDateTime};

macro_rules! session_cases {
    ($module:ident, $core:ident) => {
        mod $module {
            use super::*;
            use $core::session::{Id, Record};
            use $core::session_store::SessionStore as _;

            fn record(id: i128, minutes: i64) -> Record {
                let mut data = std::collections::HashMap::new();
                data.insert("visits".to_owned(), json!(1));
                Record {
                    id: Id(id),
                    data,
                    expiry_date: OffsetDateTime::now_utc() + Duration::minutes(minutes),
                }
            }

            pub(crate) async fn cases(store: StateStore, url: &str) {
                let sessions = SessionStore::new(&store);
                let seed = random_id();

                // create + load
                let built = std::time::Instant::now();
                let mut first = record(seed, 30);
                sessions.create(&mut first).await.expect("create");
                assert_eq!(first.id, Id(seed), "a free id was replaced");
                let loaded = sessions
                    .load(&first.id)
                    .await
                    .expect("load")
                    .expect("stored");
                assert_eq!(loaded.data["visits"], json!(1));
                if store.capabilities().ttl {
                    // The backend's TTL ends with the session: 30 minutes after `built`
                    // (give or take the seconds some backends round TTLs to).
                    let left = ttl_left(&store, url, stored_key(&store, first.id))
                        .await
                        .expect("sessions get a TTL");
                    let lifetime = std::time::Duration::from_secs(30 * 60);
                    let rounding = std::time::Duration::from_secs(2);
                    assert!(left <= lifetime + rounding, "{left:?}");
                    assert!(
                        left + built.elapsed() + rounding >= lifetime,
                        "{left:?} left of a session that ends in 30 minutes"
                    );
                }

                // no name a caller passes reaches a session: not read, forged, removed or listed
                let forged = format!("$sessions:{}", first.id);
                let refused = |what: &str, result: Result<(), state_store::Error>| {
                    assert!(
                        matches!(result, Err(state_store::Error::InvalidKey { .. })),
                        "{what} of {forged}: {result:?}"
                    );
                };
                refused("get", store.get_state(&[forged.as_str()]).await.map(drop));
                refused("set", store.set_state(&forged, &json!({})).await);
                refused("remove", store.remove_state(&forged).await);
                if store.capabilities().list {
                    let names = store.list_all("").await.expect("list");
                    assert!(names.iter().all(|n| !n.contains('$')), "{names:?}");
                    store.remove_prefix("").await.expect("remove_prefix");
                    assert!(
                        sessions.load(&first.id).await.expect("load").is_some(),
                        "remove_prefix removed a session"
                    );
                }

                // create on a taken id draws a new one; the first session is untouched
                let mut clash = record(seed, 30);
                clash.data.insert("visits".to_owned(), json!(99));
                sessions
                    .create(&mut clash)
                    .await
                    .expect("create on a taken id");
                assert_ne!(clash.id, first.id, "a colliding create overwrote a session");
                let kept = sessions.load(&first.id).await.expect("load").expect("kept");
                assert_eq!(kept.data["visits"], json!(1));

                // save updates an existing session
                let mut changed = kept.clone();
                changed.data.insert("visits".to_owned(), json!(2));
                sessions.save(&changed).await.expect("save");
                let loaded = sessions
                    .load(&first.id)
                    .await
                    .expect("load")
                    .expect("saved");
                assert_eq!(loaded.data["visits"], json!(2));

                // deleted by another instance: a late save does not bring it back
                let other_instance = SessionStore::new(&store);
                other_instance.delete(&first.id).await.expect("delete");
                sessions.save(&changed).await.expect("late save");
                assert!(
                    sessions.load(&first.id).await.expect("load").is_none(),
                    "a save resurrected a deleted session"
                );

                // an expired session never loads, even while the backend still holds it
                let expired = record(seed ^ 1, -5);
                let name = expired.id.to_string();
                sessions
                    .state_store()
                    .set(&name, &expired)
                    .await
                    .expect("plant an expired record");
                assert!(sessions.load(&expired.id).await.expect("load").is_none());
                let left = store.get_state(&[name.as_str()]).await.expect("get");
                assert!(
                    left[&name].is_none(),
                    "the expired record was not removed on load"
                );

                // deleting a missing session is fine
                sessions
                    .delete(&Id(seed ^ 2))
                    .await
                    .expect("delete missing");
            }
        }
    };
}

session_cases!(v015, tower_sessions_core);
// `scripts/test` runs this crate's tests with `--all-features`.
#[cfg(feature = "sessions-014")]
session_cases!(v014, tower_sessions_core_014);

fn random_id() -> i128 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    i128::try_from(nanos).expect("fits") ^ (i128::from(std::process::id()) << 80)
}

/// How long the stored `key` has left, read past the handle: Redis reads do not report
/// deadlines, so there it is `PTTL` on a connection of its own.
async fn ttl_left(store: &StateStore, url: &str, key: String) -> Option<std::time::Duration> {
    use state_store::redis::fred::interfaces::{ClientLike, KeysInterface};
    use state_store::redis::{RedisConfig, RedisStateStore};

    if store.name() == "redis" {
        let config = RedisConfig::from_url(url).expect("url");
        let redis = RedisStateStore::connect(config).await.expect("connect");
        let ms: i64 = redis.client().pttl(key).await.expect("PTTL");
        let _ = redis.client().quit().await;
        return u64::try_from(ms).ok().map(std::time::Duration::from_millis);
    }
    store
        .raw_backend()
        .get_many(&[key])
        .await
        .expect("raw read")
        .pop()
        .flatten()
        .expect("stored")
        .expires_in
}

fn stored_key(store: &StateStore, id: impl std::fmt::Display) -> String {
    format!("{}:$sessions:{id}", store.config().key_prefix)
}

async fn all(url: &str) {
    let store = state_store::open(url)
        .await
        .expect("open")
        .with_prefix(&format!("sessions-test-{}", std::process::id()))
        .expect("prefix");
    v015::cases(store.with_prefix("v015").expect("prefix"), url).await;
    #[cfg(feature = "sessions-014")]
    v014::cases(store.with_prefix("v014").expect("prefix"), url).await;
    store.destroy().await.expect("destroy");
}

#[tokio::test]
async fn on_memory() {
    all("memory://").await;
}

#[tokio::test]
async fn on_sqlite() {
    let dir = temp_dir("sessions");
    all(&format!(
        "sqlite://{}",
        dir.path().join("state.db").display()
    ))
    .await;
}

#[tokio::test]
async fn on_redis() {
    if let Some(url) = redis_url() {
        all(&url).await;
    }
}

#[tokio::test]
async fn on_postgres() {
    if let Some(url) = postgres_url() {
        all(&url).await;
    }
}

#[tokio::test]
async fn on_nats() {
    if let Some(url) = nats_url() {
        all(&url).await;
    }
}

fn dapr_url(component: Component) -> Option<String> {
    dapr_endpoint(component).map(|endpoint| {
        let host = endpoint
            .split_once("://")
            .map_or(endpoint.as_str(), |(_, h)| h);
        format!("dapr://{host}/{COMPONENT}")
    })
}

#[tokio::test]
async fn on_dapr_in_memory() {
    if let Some(url) = dapr_url(Component::InMemory) {
        all(&url).await;
    }
}

#[tokio::test]
async fn on_dapr_redis_without_ttl_or_compare_and_set() {
    if let Some(url) = dapr_url(Component::Redis) {
        all(&url).await;
    }
}

/// Refuses every create-if-absent as taken: a store that can never give a free id.
#[derive(Debug)]
struct EveryIdTaken;

impl state_store::Intercept for EveryIdTaken {
    fn before(
        &self,
        _: state_store::Site<'_>,
        call: &state_store::Call<'_>,
    ) -> state_store::Result<()> {
        match call {
            state_store::Call::Set { key, options, .. }
                if options.mode == state_store::SetMode::Create =>
            {
                Err(state_store::Error::Conflict {
                    key: (*key).to_owned(),
                })
            }
            _ => Ok(()),
        }
    }
}

/// `create` draws a few ids and then fails: it never spins on a store that refuses them all.
#[tokio::test]
async fn create_gives_up_on_a_store_that_refuses_every_id() {
    use tower_sessions_core::SessionStore as _;
    let backend = state_store::DefaultStateStore::new();
    let store = StateStore::builder(backend)
        .layer(|inner| {
            std::sync::Arc::new(state_store::Intercepted::new(inner, EveryIdTaken))
                as std::sync::Arc<dyn state_store::Backend>
        })
        .build();
    let sessions = SessionStore::new(&store);
    let mut record = tower_sessions_core::session::Record {
        id: tower_sessions_core::session::Id::default(),
        data: Default::default(),
        expiry_date: OffsetDateTime::now_utc() + Duration::minutes(5),
    };
    // A liveness bound: the old code looped here forever.
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        sessions.create(&mut record).await
    })
    .await
    .expect("create gave up");
    assert!(
        matches!(
            &outcome,
            Err(tower_sessions_core::session_store::Error::Backend(_))
        ),
        "{outcome:?}"
    );
}
