//! Fenced writes: state that refuses a stale holder's token.

use serde::{Deserialize, Serialize};

use crate::backend::{SetMode, SetOptions};
use crate::cas::CAS_DEADLINE;
use crate::error::{Error, Result};
use crate::lease::FencingToken;
use crate::retry::Backoff;
use crate::store::StateStore;

/// A fenced value as stored by [`StateStore::set_fenced`].
#[derive(Serialize)]
struct FencedRecord<'a, T: ?Sized> {
    fence: u64,
    value: &'a T,
}

/// Only the fence of a stored fenced value.
#[derive(Deserialize)]
struct FenceOnly {
    fence: u64,
}

/// A value written with [`StateStore::set_fenced`], with the token of its writer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Fenced<T> {
    /// The value.
    pub value: T,
    /// The token it was written with: the highest token this name has seen.
    #[serde(rename = "fence")]
    pub token: FencingToken,
}

impl StateStore {
    /// Writes `value` under `name` only if `token` is at least the highest token written to
    /// `name` so far: a holder whose lease was taken over cannot overwrite what the next
    /// holder wrote. The value is stored with its token as `{"fence": token, "value": …}`;
    /// read it with [`StateStore::get_fenced`]. Removing the name forgets its highest token.
    ///
    /// # Errors
    ///
    /// [`Error::Fenced`] when a higher token was seen (nothing written);
    /// [`Error::Unsupported`] without conditional writes; [`Error::Decode`] when `name`
    /// holds a value that was not written fenced; [`Error::Conflict`] after losing races for
    /// [`CAS_DEADLINE`](crate::CAS_DEADLINE); and see [`StateStore`].
    pub async fn set_fenced<T: Serialize + ?Sized>(
        &self,
        name: &str,
        value: &T,
        token: FencingToken,
    ) -> Result<()> {
        self.require(self.capabilities().conditional, "conditional writes")?;
        let record = FencedRecord {
            fence: token.get(),
            value,
        };
        let mut backoff = Backoff::new(usize::MAX, CAS_DEADLINE);
        loop {
            let mode = match self.get_versioned::<FenceOnly>(name).await? {
                None => SetMode::Create,
                Some(current) if current.value.fence > token.get() => {
                    return Err(Error::Fenced {
                        key: name.to_owned(),
                        token: token.get(),
                        highest: current.value.fence,
                    })
                }
                Some(current) => SetMode::Update(current.version),
            };
            let mut options = SetOptions::new().mode(mode);
            options.want_version = false;
            match self.set_with(name, &record, options).await {
                Ok(_) => return Ok(()),
                Err(Error::Conflict { .. }) if backoff.wait().await => {}
                Err(err) => return Err(err),
            }
        }
    }

    /// Reads a value written with [`StateStore::set_fenced`], with its token.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] when the stored value is not a fenced `T`; and see [`StateStore`].
    pub async fn get_fenced<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<Fenced<T>>> {
        self.get(name).await
    }
}
