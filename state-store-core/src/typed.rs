//! Typed reads and writes: serde is the schema (PURISTA validates reads with zod).

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::backend::{SetMode, SetOptions};
use crate::cas::CAS_DEADLINE;
use crate::error::{Error, Operation, Result};
use crate::layer::Call;
use crate::retry::Backoff;
use crate::store::{decode, encode, StateEntry, StateStore};

impl StateStore {
    /// Reads `name` and decodes it into `T`; `None` when missing.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] naming the key when the stored value does not fit `T` (never a panic);
    /// and see [`StateStore`].
    ///
    /// # Examples
    ///
    /// ```
    /// # use state_store_core::{DefaultStateStore, StateStore};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), state_store_core::Error> {
    /// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    /// struct Job { status: String }
    ///
    /// let store = StateStore::new(DefaultStateStore::new());
    /// store.set("job:1", &Job { status: "running".into() }).await?;
    /// let job: Option<Job> = store.get("job:1").await?;
    /// assert_eq!(job.map(|j| j.status).as_deref(), Some("running"));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn get<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        self.check(Operation::Get)?;
        self.fetch_values(&[name])
            .await?
            .pop()
            .flatten()
            .map(|value| decode(name, &value))
            .transpose()
    }

    /// Reads `name` decoded into `T`, with its version.
    ///
    /// # Errors
    ///
    /// As [`StateStore::get`].
    pub async fn get_versioned<T: DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<StateEntry<T>>> {
        self.get_entry_as::<T>(name).await
    }

    /// Encodes `value` as JSON and writes it under `name` (the config's default TTL applies).
    ///
    /// # Errors
    ///
    /// [`Error::Serialization`] when `T` cannot be JSON; and see [`StateStore`].
    pub async fn set<T: Serialize + ?Sized>(&self, name: &str, value: &T) -> Result<()> {
        let options = SetOptions {
            mode: SetMode::Upsert,
            ttl: self.config().default_ttl,
            keep_ttl: false,
            want_version: false,
        };
        self.set_with(name, value, options).await.map(drop)
    }

    /// Read-modify-write without lost updates: reads `name`, calls `f` with the current value
    /// (`None` when missing), and writes the result only if nobody wrote in between; on a lost
    /// race it backs off (exponentially, with jitter) and tries again, up to
    /// [`StoreConfig::update_retries`] attempts within [`CAS_DEADLINE`](crate::CAS_DEADLINE).
    /// Returns the value written. `f` may run several times, so keep it free of side effects.
    ///
    /// The value keeps its TTL: an update of a value that expires in a minute still expires
    /// then (a session does not become permanent by being touched). A value created here gets
    /// the config's default TTL.
    ///
    /// [`StoreConfig::update_retries`]: crate::StoreConfig::update_retries
    ///
    /// # Errors
    ///
    /// [`Error::Conflict`] when every attempt lost a race; [`Error::Decode`] when the stored
    /// value does not fit `T`; [`Error::Unsupported`] without conditional writes; and see
    /// [`StateStore`]. An attempt that ends with [`Error::OutcomeUnknown`] is not retried: its
    /// write may have happened, so the error goes to the caller.
    ///
    /// # Examples
    ///
    /// ```
    /// # use state_store_core::{DefaultStateStore, StateStore};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), state_store_core::Error> {
    /// let store = StateStore::new(DefaultStateStore::new());
    /// let tags = store
    ///     .update("tags", |old: Option<Vec<String>>| {
    ///         let mut tags = old.unwrap_or_default();
    ///         tags.push("new".into());
    ///         tags
    ///     })
    ///     .await?;
    /// assert_eq!(tags, ["new"]);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn update<T, F>(&self, name: &str, mut f: F) -> Result<T>
    where
        T: Serialize + DeserializeOwned,
        F: FnMut(Option<T>) -> T,
    {
        self.check(Operation::Get)?;
        self.check(Operation::Set)?;
        let ttl = self.config().default_ttl;
        // Refused before the first read (and before `f` runs) when no write could follow.
        let first = SetOptions {
            mode: SetMode::Create,
            ttl,
            keep_ttl: true,
            want_version: false,
        };
        self.preflight(&Call::Set {
            key: name,
            value: &[],
            options: &first,
        })?;
        let mut backoff = Backoff::new(self.config().update_retries, CAS_DEADLINE);
        loop {
            let (old, mode) = match self.fetch_entry(name).await? {
                None => (None, SetMode::Create),
                Some(entry) => (
                    Some(decode::<T>(name, &entry.value)?),
                    SetMode::Update(entry.version),
                ),
            };
            let new = f(old);
            let options = SetOptions {
                mode,
                ttl,
                keep_ttl: true,
                want_version: false,
            };
            match self
                .dispatch()
                .set(name, encode(name, &new)?, &options)
                .await
            {
                Ok(_) => return Ok(new),
                Err(Error::Conflict { .. }) if backoff.wait().await => {}
                Err(other) => return Err(other),
            }
        }
    }
}
