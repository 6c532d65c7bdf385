//! What a request is limited by: its head, and the extractors that key it.

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

use hmac::{Hmac, Mac};
use http::{Extensions, HeaderMap, HeaderName, Method, Request, Uri};
use sha2::Sha256;

#[cfg(doc)]
use super::{ClientIp, MissingKey};

/// What the layer sees of a request when it picks its limit: everything but the body.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI (route: `uri.path()`).
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The extensions (axum's `ConnectInfo`, a user id an authentication layer put there).
    pub extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    /// The head of `request`.
    pub fn of<B>(request: &'a Request<B>) -> Self {
        RequestHead {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        }
    }

    /// The address of the connection's peer: axum's `ConnectInfo<SocketAddr>` (serve with
    /// `into_make_service_with_connect_info::<SocketAddr>()`), or a `SocketAddr` extension.
    pub fn peer(&self) -> Option<IpAddr> {
        #[cfg(feature = "axum")]
        if let Some(info) = self
            .extensions
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
        {
            return Some(info.0.ip());
        }
        self.extensions.get::<SocketAddr>().map(SocketAddr::ip)
    }
}

/// What a request is limited by.
///
/// Implement it for your own keys (a user id from an extension, an API key); `None` means the
/// request has no key, and the layer's [`MissingKey`] policy decides.
pub trait KeyExtractor: Clone + Send + Sync + 'static {
    /// The key for `request`, or `None` when it has none.
    fn extract(&self, request: &RequestHead<'_>) -> Option<String>;
}

/// Limits by the client's IP address: axum's `ConnectInfo<SocketAddr>` (serve with
/// `into_make_service_with_connect_info::<SocketAddr>()`), or a `SocketAddr` extension.
/// Behind proxies, use [`ClientIp`], which reads the address they forward.
///
/// An IPv6 client is keyed by its /64 network, the block one subscriber is usually given: a
/// client that rotates through its own /64 stays one key (and one stored record). An
/// IPv4-mapped IPv6 address counts as the IPv4 address.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerIp;

/// The key of an address: `ip:<v4>`, or `ip:<first four groups>::/64` for IPv6.
pub(super) fn ip_key(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => format!("ip:{v4}"),
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("ip:{v4}"),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                format!("ip:{a:x}:{b:x}:{c:x}:{d:x}::/64")
            }
        },
    }
}

impl KeyExtractor for PeerIp {
    fn extract(&self, request: &RequestHead<'_>) -> Option<String> {
        request.peer().map(ip_key)
    }
}

/// Limits by the value of a request header (an API key, or a client address header that
/// your proxy *sets* — not one a client can add to, like an appended `x-forwarded-for`).
/// Requests without the header get what the layer's [`MissingKey`] says.
///
/// The key is an HMAC-SHA-256 of the header's raw bytes under `secret` (its first 128 bits,
/// in hex): any value (non-ASCII, very long) gets a key of its own, API keys never appear in
/// stored keys or logs, and without the secret a store dump does not tell which values were
/// seen (a plain hash of a short API key can be reversed by trying them all). Give every
/// instance of the service the same secret — 32 random bytes or more, kept like a password —
/// or each counts alone. A changed secret starts every limit afresh.
///
/// ```
/// use http::HeaderName;
/// use state_store_tower::{Header, WeakSecret};
///
/// let secret = std::env::var("RATE_LIMIT_SECRET").unwrap_or_else(|_| "x".repeat(32));
/// let by_api_key = Header::new(HeaderName::from_static("x-api-key"), secret)?;
/// assert!(Header::new(HeaderName::from_static("x-api-key"), "changeme").is_err());
/// # let _ = by_api_key;
/// # Ok::<(), WeakSecret>(())
/// ```
#[derive(Clone)]
pub struct Header {
    name: HeaderName,
    mac: Hmac<Sha256>,
}

/// The fewest bytes [`Header::new`] takes as a secret: 128 bits, if they are random.
pub const MIN_SECRET_LEN: usize = 16;

/// A secret too short to key [`Header`] with: fewer than [`MIN_SECRET_LEN`] bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeakSecret {
    /// How many bytes it had.
    pub len: usize,
}

impl fmt::Display for WeakSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a header-key secret of {} bytes is too short: give at least {MIN_SECRET_LEN} (32 \
             random bytes are best)",
            self.len
        )
    }
}

impl std::error::Error for WeakSecret {}

impl Header {
    /// Keys by the header `name`, hashed with `secret`.
    ///
    /// # Errors
    ///
    /// [`WeakSecret`] for a secret of fewer than [`MIN_SECRET_LEN`] bytes (an empty one, a
    /// word): a dump's keys could be matched to API keys by trying secrets.
    pub fn new(name: HeaderName, secret: impl AsRef<[u8]>) -> Result<Self, WeakSecret> {
        let secret = secret.as_ref();
        if secret.len() < MIN_SECRET_LEN {
            return Err(WeakSecret { len: secret.len() });
        }
        #[allow(clippy::expect_used)] // HMAC takes a key of any length.
        let mac =
            <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes a key of any length");
        Ok(Header { name, mac })
    }
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Header")
            .field("name", &self.name)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl KeyExtractor for Header {
    fn extract(&self, request: &RequestHead<'_>) -> Option<String> {
        let value = request.headers.get(&self.name)?;
        let mut mac = self.mac.clone();
        mac.update(value.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut key = format!("header:{}:", self.name);
        for byte in &digest[..16] {
            let _ = write!(key, "{byte:02x}");
        }
        Some(key)
    }
}

/// One limit for all requests together.
#[derive(Debug, Clone, Copy, Default)]
pub struct Global;

impl KeyExtractor for Global {
    fn extract(&self, _: &RequestHead<'_>) -> Option<String> {
        Some("global".to_owned())
    }
}
