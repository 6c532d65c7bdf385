//! `tower_sessions::SessionStore` over any [`StateStore`].

use std::fmt;

use state_store_core::{Error, SetMode, SetOptions, StateStore, MAX_TTL};
use time::OffsetDateTime;

/// A [tower-sessions](https://docs.rs/tower-sessions) store over any [`StateStore`]: sessions
/// shared by every instance of a service, on every backend.
///
/// Each session is one JSON value, `$sessions:<id>` under the handle's prefix: in its
/// [reserved](state_store_core::RESERVED_MARKER) area, so no name a caller passes to the
/// handle (say, one taken from a request) can read, forge or remove a session, and listings
/// leave them out. Each has a TTL until the session's expiry date, so the backend drops
/// expired sessions by itself. Semantics:
///
/// - `create` writes only if the id is free (create-if-absent) and draws a new id on a
///   collision;
/// - `save` rewrites only a session that still exists, with compare-and-set: a session deleted
///   elsewhere (logout on another instance) is not brought back by a late save;
/// - `load` also checks the expiry date, so an expired session never loads, even before the
///   backend has dropped it.
///
/// On a backend without TTL or compare-and-set (Dapr `state.redis`), sessions are written
/// without TTL and removed when an expired one is loaded; create and save then check for the
/// session with a read first, which a concurrent delete can race.
///
/// Implements `SessionStore` of tower-sessions 0.15 (feature `sessions`) and of 0.14 (feature
/// `sessions-014`, what axum-login 0.18 uses).
///
/// ```
/// # #[cfg(feature = "sessions")]
/// # fn wire() {
/// use state_store_core::{DefaultStateStore, StateStore};
/// use state_store_tower::SessionStore;
///
/// let store = StateStore::new(DefaultStateStore::new());
/// let sessions = SessionStore::new(&store);
/// // tower_sessions::SessionManagerLayer::new(sessions)
/// # let _ = sessions;
/// # }
/// ```
#[derive(Clone)]
pub struct SessionStore {
    store: StateStore,
}

impl fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionStore")
            .field("store", &self.store.name())
            .field("prefix", &self.store.config().key_prefix)
            .finish()
    }
}

/// Random ids `create` draws before it gives up: more than one collision is never luck.
const CREATE_ATTEMPTS: usize = 4;

/// The reserved area of the caller's handle that holds sessions.
const AREA: &str = "sessions";

impl SessionStore {
    /// Sessions in `store`'s reserved area `$sessions` (under its prefix).
    pub fn new(store: &StateStore) -> Self {
        #[allow(clippy::expect_used)] // A constant, valid area: one plain segment.
        let store = store.reserved(AREA).expect("`sessions` is a valid area");
        SessionStore { store }
    }

    /// The handle of the sessions' area: names are session ids.
    pub fn state_store(&self) -> &StateStore {
        &self.store
    }
}

fn name(id: impl fmt::Display) -> String {
    id.to_string()
}

/// Time left until `expiry`, at most [`MAX_TTL`]; `None` when it has passed.
fn time_left(expiry: OffsetDateTime) -> Option<std::time::Duration> {
    let left = expiry - OffsetDateTime::now_utc();
    std::time::Duration::try_from(left)
        .ok()
        .filter(|d| !d.is_zero())
        .map(|d| d.min(MAX_TTL))
}

/// The write options for a session expiring at `expiry`, or `None` when it has expired.
fn options(store: &StateStore, mode: SetMode, expiry: OffsetDateTime) -> Option<SetOptions> {
    let ttl = time_left(expiry)?;
    let mut options = SetOptions::new();
    if store.capabilities().conditional {
        options = options.mode(mode);
    }
    if store.capabilities().ttl {
        options = options.ttl(ttl);
    }
    options.want_version = false;
    Some(options)
}

/// Implements `SessionStore` of one tower-sessions version (its core crate is `$core`).
macro_rules! session_store_impl {
    ($module:ident, $core:ident) => {
        mod $module {
            use super::*;
            use ::$core::session::{Id, Record};
            use ::$core::session_store::{self, Error as StoreError};
            use state_store_core::Backoff;

            /// The store's error for tower-sessions, which logs it. Messages never carry
            /// values, but they name the key, and a session id is a bearer secret: it is
            /// replaced.
            fn convert(id: &Id, err: Error) -> StoreError {
                let secret = id.to_string();
                let text = state_store_core::report(&err).replace(&secret, "<session id>");
                match err {
                    Error::Serialization { .. } => StoreError::Encode(text),
                    Error::Decode { .. } => StoreError::Decode(text),
                    _ => StoreError::Backend(text),
                }
            }

            #[async_trait::async_trait]
            impl session_store::SessionStore for SessionStore {
                async fn create(&self, record: &mut Record) -> session_store::Result<()> {
                    let store = &self.store;
                    // Ids are 128 random bits: a second collision in a row means something
                    // else is wrong (a store that refuses every create), not bad luck.
                    for _ in 0..CREATE_ATTEMPTS {
                        let Some(options) = options(store, SetMode::Create, record.expiry_date)
                        else {
                            // Born expired: nothing to keep.
                            return Ok(());
                        };
                        let id = record.id;
                        if !store.capabilities().conditional
                            && store
                                .get_entry(&name(id))
                                .await
                                .map_err(|e| convert(&id, e))?
                                .is_some()
                        {
                            record.id = Id::default();
                            continue;
                        }
                        match store.set_with(&name(record.id), &*record, options).await {
                            Ok(_) => return Ok(()),
                            Err(Error::Conflict { .. }) => record.id = Id::default(),
                            Err(err) => return Err(convert(&id, err)),
                        }
                    }
                    Err(StoreError::Backend(format!(
                        "no free session id in {CREATE_ATTEMPTS} random draws"
                    )))
                }

                async fn save(&self, record: &Record) -> session_store::Result<()> {
                    let store = &self.store;
                    let id = &record.id;
                    let key = name(id);
                    let mut backoff = Backoff::new(usize::MAX, state_store_core::CAS_DEADLINE);
                    loop {
                        // Only a session that still exists is rewritten.
                        let current = store.get_entry(&key).await.map_err(|e| convert(id, e))?;
                        let Some(current) = current else {
                            return Ok(());
                        };
                        let mode = SetMode::Update(current.version);
                        let Some(options) = options(store, mode, record.expiry_date) else {
                            return store.remove_state(&key).await.map_err(|e| convert(id, e));
                        };
                        match store.set_with(&key, record, options).await {
                            Ok(_) => return Ok(()),
                            Err(Error::Conflict { .. }) if backoff.wait().await => {}
                            Err(err) => return Err(convert(id, err)),
                        }
                    }
                }

                async fn load(&self, id: &Id) -> session_store::Result<Option<Record>> {
                    let key = name(id);
                    let found = self.store.get::<Record>(&key).await;
                    let Some(record) = found.map_err(|e| convert(id, e))? else {
                        return Ok(None);
                    };
                    if time_left(record.expiry_date).is_some() {
                        return Ok(Some(record));
                    }
                    // Expired (a backend without TTL, or not dropped yet).
                    self.store
                        .remove_state(&key)
                        .await
                        .map_err(|e| convert(id, e))?;
                    Ok(None)
                }

                async fn delete(&self, id: &Id) -> session_store::Result<()> {
                    self.store
                        .remove_state(&name(id))
                        .await
                        .map_err(|e| convert(id, e))
                }
            }
        }
    };
}

#[cfg(feature = "sessions")]
session_store_impl!(v015, tower_sessions_core);

#[cfg(feature = "sessions-014")]
session_store_impl!(v014, tower_sessions_core_014);
