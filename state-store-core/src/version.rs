//! Versions and stored entries: what a read returns.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

#[cfg(doc)]
use crate::{SetMode, SetOptions};

/// An opaque version of a stored value: a counter, a stream revision or an ETag.
///
/// Read it with [`StateStore::get_entry`](crate::StateStore::get_entry) and hand it back in
/// [`SetMode::Update`] or [`StateStore::remove_if`](crate::StateStore::remove_if). Every write
/// gives a new version. Compare versions only for equality, and only from the same store.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Version(Arc<str>);

impl Version {
    /// Wraps a backend's version token. For backend implementors.
    pub fn new(token: impl Into<Arc<str>>) -> Self {
        Version(token.into())
    }

    /// What a write returns when its caller asked for no version
    /// ([`SetOptions::want_version`] is false): one shared empty token, no allocation.
    pub fn unwanted() -> Self {
        static UNWANTED: std::sync::OnceLock<Version> = std::sync::OnceLock::new();
        UNWANTED.get_or_init(|| Version::new("")).clone()
    }

    /// The backend's token. For backend implementors.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A version that also carries its value's deadline (Unix milliseconds), or says it has
    /// none: `<token>@<ms>`, `<token>@`. For backends whose conditional writes must know,
    /// without a read, whether the value a version was read from has expired (NATS, Dapr).
    /// [`Version::token_and_deadline`] reads it back. For backend implementors.
    pub fn with_deadline(token: &str, deadline_ms: Option<i64>) -> Self {
        match deadline_ms {
            None => Version::new(format!("{token}@")),
            Some(at) => Version::new(format!("{token}@{at}")),
        }
    }

    /// The token and deadline of a version made by [`Version::with_deadline`] (the token may
    /// hold `@` itself). Any other version is all token, with no deadline.
    ///
    /// ```
    /// use state_store_core::Version;
    ///
    /// let version = Version::with_deadline("etag@7", Some(1_700_000_000_000));
    /// assert_eq!(version.token_and_deadline(), ("etag@7", Some(1_700_000_000_000)));
    /// assert_eq!(Version::with_deadline("12", None).token_and_deadline(), ("12", None));
    /// assert_eq!(Version::new("plain").token_and_deadline(), ("plain", None));
    /// ```
    pub fn token_and_deadline(&self) -> (&str, Option<i64>) {
        match self.0.rsplit_once('@') {
            Some((token, "")) => (token, None),
            Some((token, at)) => match at.parse() {
                Ok(at) => (token, Some(at)),
                Err(_) => (&self.0, None),
            },
            None => (&self.0, None),
        }
    }
}

impl fmt::Debug for Version {
    // Redacted: a version can be derived from the value (Redis: its SHA-1, which a short or
    // guessable value can be recovered from), and `Debug` ends up in logs. `Display` (and
    // `as_str`) give the token to code that asks for it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Version(<redacted>)")
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A stored value as a backend returns it: JSON text and its version.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    /// The value, as UTF-8 JSON text.
    pub value: Vec<u8>,
    /// The version of this value.
    pub version: Version,
    /// Time left before the value expires, where the backend knows it; `None` for no TTL or
    /// unknown. Informational: a rewrite that must keep the deadline says so with
    /// [`SetOptions::keep_ttl`] instead of copying this.
    pub expires_in: Option<Duration>,
}

impl Entry {
    /// An entry without a known TTL.
    pub fn new(value: Vec<u8>, version: Version) -> Self {
        Entry {
            value,
            version,
            expires_in: None,
        }
    }
}

impl fmt::Debug for Entry {
    // State can be confidential: never print the value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("value", &format_args!("<{} bytes>", self.value.len()))
            .field("version", &self.version)
            .field("expires_in", &self.expires_in)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_debug_hides_the_value() {
        let entry = Entry::new(b"\"secret\"".to_vec(), Version::new("3"));
        let shown = format!("{entry:?}");
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("8 bytes"));
    }

    #[test]
    fn version_debug_hides_the_token() {
        // What Redis would store as the version of `"secret"`: its SHA-1.
        let digest = "1f0ab1b2c4fb8e9c8e1a4d8f1e2b0a9c3d4e5f60";
        let entry = Entry::new(b"\"secret\"".to_vec(), Version::new(digest));
        for shown in [format!("{entry:?}"), format!("{:?}", entry.version)] {
            assert!(!shown.contains(digest), "{shown}");
        }
        assert_eq!(entry.version.to_string(), digest, "Display gives the token");
    }
}
