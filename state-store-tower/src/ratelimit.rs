//! A tower layer that rate-limits requests with a [`Limiter`] shared by every instance.

use std::fmt::{self, Write as _};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hmac::{Hmac, Mac};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use sha2::Sha256;
use state_store_core::{Decision, Limiter};
use tower_layer::Layer;
use tower_service::Service;

/// What a request is limited by.
///
/// Implement it for your own keys (a user id from an extension, an API key); `None` means the
/// request has no key, and the layer's [`MissingKey`] policy decides.
pub trait KeyExtractor: Clone + Send + Sync + 'static {
    /// The key for `request`, or `None` when it has none.
    fn extract<B>(&self, request: &Request<B>) -> Option<String>;
}

/// Limits by the client's IP address: axum's `ConnectInfo<SocketAddr>` (serve with
/// `into_make_service_with_connect_info::<SocketAddr>()`), or a `SocketAddr` extension.
/// Behind a proxy, use [`Header`] with the header the proxy sets instead.
///
/// An IPv6 client is keyed by its /64 network, the block one subscriber is usually given: a
/// client that rotates through its own /64 stays one key (and one stored record). An
/// IPv4-mapped IPv6 address counts as the IPv4 address.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerIp;

/// The key of an address: `ip:<v4>`, or `ip:<first four groups>::/64` for IPv6.
fn ip_key(ip: std::net::IpAddr) -> String {
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
    fn extract<B>(&self, request: &Request<B>) -> Option<String> {
        let extensions = request.extensions();
        #[cfg(feature = "axum")]
        if let Some(info) = extensions.get::<axum::extract::ConnectInfo<SocketAddr>>() {
            return Some(ip_key(info.0.ip()));
        }
        extensions.get::<SocketAddr>().map(|addr| ip_key(addr.ip()))
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
/// instance of the service the same secret — at least 32 random bytes, kept like a password —
/// or each counts alone. A changed secret starts every limit afresh.
#[derive(Clone)]
pub struct Header {
    name: HeaderName,
    mac: Hmac<Sha256>,
}

impl Header {
    /// Keys by the header `name`, hashed with `secret`.
    pub fn new(name: HeaderName, secret: impl AsRef<[u8]>) -> Self {
        #[allow(clippy::expect_used)] // HMAC takes a key of any length.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_ref())
            .expect("HMAC takes a key of any length");
        Header { name, mac }
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
    fn extract<B>(&self, request: &Request<B>) -> Option<String> {
        let value = request.headers().get(&self.name)?;
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
    fn extract<B>(&self, _: &Request<B>) -> Option<String> {
        Some("global".to_owned())
    }
}

/// What [`RateLimitLayer`] does with a request its [`KeyExtractor`] finds no key for (no peer
/// address, no header).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum MissingKey {
    /// Every such request counts against one shared key (`anonymous`): limited together, so a
    /// client cannot get out of its limit by leaving the key out. The default.
    #[default]
    Shared,
    /// Refused with `403 Forbidden`.
    Deny,
    /// Let through without counting: only where something in front guarantees a key.
    Allow,
}

/// A [`Layer`] that checks every request against a [`Limiter`]: allowed requests go on with
/// `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` headers added to the
/// response; denied ones get `429 Too Many Requests` with the same headers and `Retry-After`
/// (seconds, rounded up). When the limiter fails for a reason its
/// [`FailurePolicy`](state_store_core::FailurePolicy) does not cover (say, a bad key), the
/// request gets `500` and the error is logged.
///
/// ```
/// # use std::time::Duration;
/// use state_store_core::{DefaultStateStore, Limiter, Quota, StateStore};
/// use state_store_tower::{PeerIp, RateLimitLayer};
///
/// let store = StateStore::new(DefaultStateStore::new());
/// let layer = RateLimitLayer::new(Limiter::gcra(&store, Quota::per_minute(60)), PeerIp);
/// // axum::Router::new().route(..).layer(layer)
/// # let _ = layer;
/// ```
#[derive(Debug, Clone)]
pub struct RateLimitLayer<K> {
    limiter: Arc<Limiter>,
    key: K,
    missing: MissingKey,
}

impl<K: KeyExtractor> RateLimitLayer<K> {
    /// Limits requests by `key` with `limiter`.
    pub fn new(limiter: Limiter, key: K) -> Self {
        RateLimitLayer {
            limiter: Arc::new(limiter),
            key,
            missing: MissingKey::default(),
        }
    }

    /// What to do with a request without a key (default [`MissingKey::Shared`]).
    pub fn on_missing_key(mut self, policy: MissingKey) -> Self {
        self.missing = policy;
        self
    }
}

impl<S, K: Clone> Layer<S> for RateLimitLayer<K> {
    type Service = RateLimit<S, K>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            limiter: Arc::clone(&self.limiter),
            key: self.key.clone(),
            missing: self.missing,
        }
    }
}

/// The service [`RateLimitLayer`] wraps around yours.
#[derive(Debug, Clone)]
pub struct RateLimit<S, K> {
    inner: S,
    limiter: Arc<Limiter>,
    key: K,
    missing: MissingKey,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, K, B, ResBody> Service<Request<B>> for RateLimit<S, K>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    K: KeyExtractor,
    B: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let key = self.key.extract(&request);
        // The ready service answers this request; the clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let limiter = Arc::clone(&self.limiter);
        let missing = self.missing;
        Box::pin(async move {
            let key = match (key, missing) {
                (Some(key), _) => key,
                (None, MissingKey::Shared) => "anonymous".to_owned(),
                (None, MissingKey::Deny) => {
                    let mut response = Response::new(ResBody::default());
                    *response.status_mut() = StatusCode::FORBIDDEN;
                    return Ok(response);
                }
                (None, MissingKey::Allow) => return inner.call(request).await,
            };
            match limiter.check(&key).await {
                Ok(decision) if decision.allowed => {
                    let mut response = inner.call(request).await?;
                    add_headers(&mut response, &decision);
                    Ok(response)
                }
                Ok(decision) => {
                    let mut response = Response::new(ResBody::default());
                    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
                    add_headers(&mut response, &decision);
                    if let Some(wait) = decision.retry_after {
                        response
                            .headers_mut()
                            .insert(http::header::RETRY_AFTER, seconds(wait));
                    }
                    Ok(response)
                }
                Err(err) => {
                    tracing::error!("rate limiter failed: {err}");
                    let mut response = Response::new(ResBody::default());
                    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    Ok(response)
                }
            }
        })
    }
}

/// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`.
fn add_headers<B>(response: &mut Response<B>, decision: &Decision) {
    let headers = response.headers_mut();
    headers.insert(
        HeaderName::from_static("ratelimit-limit"),
        HeaderValue::from(decision.limit),
    );
    headers.insert(
        HeaderName::from_static("ratelimit-remaining"),
        HeaderValue::from(decision.remaining),
    );
    headers.insert(
        HeaderName::from_static("ratelimit-reset"),
        seconds(decision.reset_after),
    );
}

/// Whole seconds, rounded up.
fn seconds(d: Duration) -> HeaderValue {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    HeaderValue::from(secs)
}
