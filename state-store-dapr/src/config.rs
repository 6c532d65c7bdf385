//! How to reach the sidecar.

use state_store_core::{Error, Result, Timeouts};
use std::fmt;

/// Settings of a [`DaprStateStore`](crate::DaprStateStore).
///
/// ```
/// use state_store_dapr::DaprConfig;
///
/// let config = DaprConfig::from_url("dapr://127.0.0.1:50001/statestore?token=s3cret")?;
/// assert!(!format!("{config:?}").contains("s3cret"));
/// let config = DaprConfig::new("http://127.0.0.1:50001", "statestore").with_api_token("s3cret");
/// assert!(!format!("{config:?}").contains("s3cret"));
/// # Ok::<(), state_store_core::Error>(())
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct DaprConfig {
    pub(crate) endpoint: String,
    pub(crate) store_name: String,
    pub(crate) api_token: Option<String>,
    pub(crate) timeouts: Timeouts,
}

impl fmt::Debug for DaprConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DaprConfig")
            .field("endpoint", &self.endpoint)
            .field("store_name", &self.store_name)
            .field("api_token", &self.api_token.as_ref().map(|_| "<redacted>"))
            .field("timeouts", &self.timeouts)
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
            timeouts: Timeouts::default(),
        }
    }

    /// Parses `dapr://host[:port]/<component>[?token=…]`: the sidecar's gRPC address (port
    /// 50001 when omitted, Dapr's default) and the state store component. The token is
    /// percent-decoded (`%2B` for `+`; a `+` stays a `+`); without one in the URL it is taken
    /// from `DAPR_API_TOKEN`, as Dapr's SDKs do (prefer that: URLs end up in logs).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for another scheme, no host or component, or an unknown parameter
    /// (the URL is not repeated: it may hold a token).
    pub fn from_url(url: &str) -> Result<Self> {
        let parsed = url::Url::parse(url).map_err(|e| Error::config_with("invalid Dapr URL", e))?;
        if parsed.scheme() != "dapr" {
            // The sidecar runs beside the service and speaks plain gRPC on loopback; this
            // crate is built without a TLS stack.
            return Err(Error::config("a Dapr URL is dapr://host:port/<component>"));
        }
        let host = parsed
            .host_str()
            .ok_or_else(|| Error::config("a Dapr URL needs the sidecar's host"))?;
        let port = parsed.port().unwrap_or(50001);
        let component = parsed.path().trim_matches('/');
        if component.is_empty() || component.contains('/') {
            return Err(Error::config(
                "a Dapr URL names one state store component: dapr://host:port/<component>",
            ));
        }
        let mut config = DaprConfig::new(format!("http://{host}:{port}"), component);
        for pair in parsed
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            match pair.split_once('=') {
                // Percent-decoded by hand: form decoding would turn a token's `+` into a space.
                Some(("token", token)) => {
                    let token = percent_encoding::percent_decode_str(token)
                        .decode_utf8()
                        .map_err(|e| Error::config_with("the Dapr token is not UTF-8", e))?;
                    config.api_token = Some(token.into_owned());
                }
                _ => return Err(Error::config("unknown Dapr URL parameter")),
            }
        }
        if config.api_token.is_none() {
            // As Dapr's own SDKs do: a token in the environment, not in a URL that gets logged.
            config.api_token = std::env::var("DAPR_API_TOKEN")
                .ok()
                .filter(|t| !t.is_empty());
        }
        Ok(config)
    }

    /// The endpoint from `DAPR_GRPC_ENDPOINT`, else `http://127.0.0.1:$DAPR_GRPC_PORT` (default
    /// port 50001), the token from `DAPR_API_TOKEN`, and the component from
    /// `DAPR_STATE_STORE` (default `statestore`, the name Dapr's own examples use).
    ///
    /// # Errors
    ///
    /// None today; a `Result` like every adapter's `from_env`.
    pub fn from_env() -> Result<Self> {
        let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
        let endpoint = var("DAPR_GRPC_ENDPOINT").unwrap_or_else(|| {
            let port = var("DAPR_GRPC_PORT").unwrap_or_else(|| "50001".into());
            format!("http://127.0.0.1:{port}")
        });
        let component = var("DAPR_STATE_STORE").unwrap_or_else(|| "statestore".into());
        let mut config = DaprConfig::new(endpoint, component);
        config.api_token = var("DAPR_API_TOKEN");
        Ok(config)
    }

    /// The Dapr API token, sent as `dapr-api-token` on every call.
    pub fn with_api_token(mut self, token: impl Into<String>) -> Self {
        self.api_token = Some(token.into());
        self
    }

    state_store_core::timeout_setters!();

    pub(crate) fn validate(&self) -> Result<()> {
        if self.store_name.is_empty() {
            return Err(Error::config(
                "the Dapr state store component name is required",
            ));
        }
        // This build has no TLS to the sidecar: tonic would send an `https://` endpoint's calls,
        // API token included, in plaintext. Refuse rather than downgrade.
        match self.endpoint.split_once("://").map(|(scheme, _)| scheme) {
            Some("http") => {}
            Some("https") => {
                return Err(Error::config(
                    "an https:// Dapr endpoint needs TLS to the sidecar, which this build does \
                     not have: its calls and API token would go out in plaintext. Use http:// \
                     to a sidecar on loopback or in the same pod",
                ))
            }
            _ => return Err(Error::config("a Dapr gRPC endpoint is http://host:port")),
        }
        self.timeouts.validate("Dapr")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_the_sidecar_the_component_and_the_token() {
        let config =
            DaprConfig::from_url("dapr://127.0.0.1:50001/statestore?token=t%40k").expect("url");
        assert_eq!(config.endpoint, "http://127.0.0.1:50001");
        assert_eq!(config.store_name, "statestore");
        assert_eq!(config.api_token.as_deref(), Some("t@k"));
        let config = DaprConfig::from_url("dapr://sidecar/orders?token=a+b%2Bc").expect("url");
        assert_eq!(config.endpoint, "http://sidecar:50001");
        assert_eq!(config.api_token.as_deref(), Some("a+b+c"));
        for bad in [
            "dapr+https://h/c",
            "dapr://h:1",
            "dapr://h:1/a/b",
            "http://h:1/c",
            "dapr://h:1/c?x=1",
        ] {
            let err = DaprConfig::from_url(bad).expect_err(bad);
            assert!(matches!(err, Error::Config { .. }), "{err:?}");
        }
    }

    #[test]
    fn only_plaintext_http_endpoints_are_accepted() {
        assert!(DaprConfig::new("127.0.0.1:50001", "s").validate().is_ok());
        assert!(DaprConfig::new("http://sidecar:50001", "s")
            .validate()
            .is_ok());
        for refused in [
            "https://sidecar:50001",
            "unix:///tmp/dapr.sock",
            "grpc://h:1",
        ] {
            let err = DaprConfig::new(refused, "s").validate().expect_err(refused);
            assert!(matches!(err, Error::Config { .. }), "{err:?}");
        }
    }
}
