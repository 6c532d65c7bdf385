//! How to reach the sidecar.

use std::fmt;
use std::time::Duration;

use state_store_core::{Error, Result};

/// Settings of a [`DaprStateStore`](crate::DaprStateStore).
///
/// ```
/// use state_store_dapr::DaprConfig;
///
/// let config = DaprConfig::new("http://127.0.0.1:50001", "statestore").api_token("s3cret");
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct DaprConfig {
    pub(crate) endpoint: String,
    pub(crate) store_name: String,
    pub(crate) api_token: Option<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
}

impl fmt::Debug for DaprConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DaprConfig")
            .field("endpoint", &self.endpoint)
            .field("store_name", &self.store_name)
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl DaprConfig {
    /// The sidecar's gRPC endpoint (`http://127.0.0.1:50001`) and the name of the state store
    /// component to use.
    pub fn new(endpoint: impl Into<String>, store_name: impl Into<String>) -> Self {
        DaprConfig {
            endpoint: normalize(endpoint.into()),
            store_name: store_name.into(),
            api_token: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }

    /// The endpoint from `DAPR_GRPC_ENDPOINT`, else `http://127.0.0.1:$DAPR_GRPC_PORT` (default
    /// port 50001), and the token from `DAPR_API_TOKEN`. The component name has no standard
    /// variable and is required.
    pub fn from_env(store_name: impl Into<String>) -> Self {
        let endpoint = std::env::var("DAPR_GRPC_ENDPOINT").unwrap_or_else(|_| {
            let port = std::env::var("DAPR_GRPC_PORT").unwrap_or_else(|_| "50001".into());
            format!("http://127.0.0.1:{port}")
        });
        let mut config = DaprConfig::new(endpoint, store_name);
        config.api_token = std::env::var("DAPR_API_TOKEN")
            .ok()
            .filter(|t| !t.is_empty());
        config
    }

    /// The Dapr API token, sent as `dapr-api-token` on every call.
    pub fn api_token(mut self, token: impl Into<String>) -> Self {
        self.api_token = Some(token.into());
        self
    }

    /// How long connecting may take (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one call may take before it fails with `Unavailable` (default 5 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.store_name.is_empty() {
            return Err(Error::config(
                "the Dapr state store component name is required",
            ));
        }
        if self.request_timeout.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::config("Dapr timeouts must be positive"));
        }
        Ok(())
    }
}

/// `127.0.0.1:50001` → `http://127.0.0.1:50001`.
fn normalize(endpoint: String) -> String {
    if endpoint.contains("://") {
        endpoint
    } else {
        format!("http://{endpoint}")
    }
}
