//! A tower layer that rate-limits requests with a [`Limiter`] shared by every instance.

use std::fmt::{self, Write as _};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hmac::{Hmac, Mac};
use http::{
    Extensions, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri,
};
use sha2::Sha256;
use state_store_core::{Decision, Limiter};
use tower_layer::Layer;
use tower_service::Service;

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

/// The client's IP address as trusted proxies forward it (`X-Forwarded-For` or RFC 7239
/// `Forwarded`), keyed as [`PeerIp`] keys a peer (IPv6 by its /64).
///
/// The addresses are read right to left — from the connection's peer back through the
/// header, each proxy appending the address it got the request from — and the client is the
/// first one that is not a trusted proxy. A header a client wrote itself is therefore only
/// believed as far as trusted proxies vouch for it: a request straight from an untrusted peer
/// is keyed by that peer whatever its headers say, and addresses a client prepends to the
/// header sit left of the first untrusted one, where they are never read.
///
/// Name the header your proxies *append to*, and only that one: a header they pass through
/// untouched is the client's to forge. An entry that is not an address (`unknown`, an
/// obfuscated `Forwarded` identifier) where the client would be gives no key: the layer's
/// [`MissingKey`] policy decides.
///
/// ```
/// use state_store_tower::{ClientIp, TrustedProxies};
///
/// // Behind a load balancer in 10.0.0.0/8 that appends to X-Forwarded-For:
/// let client = ClientIp::x_forwarded_for(TrustedProxies::networks(["10.0.0.0/8"])?);
/// // Behind exactly two proxies (a CDN, then a load balancer), whatever their addresses:
/// let client = ClientIp::forwarded(TrustedProxies::hops(2));
/// # let _ = client;
/// # Ok::<(), state_store_tower::InvalidNetwork>(())
/// ```
#[derive(Debug, Clone)]
pub struct ClientIp {
    header: Forwarding,
    trusted: TrustedProxies,
}

#[derive(Debug, Clone, Copy)]
enum Forwarding {
    XForwardedFor,
    Forwarded,
}

impl ClientIp {
    /// Reads `X-Forwarded-For` (`client, proxy1, proxy2`).
    pub fn x_forwarded_for(trusted: TrustedProxies) -> Self {
        ClientIp {
            header: Forwarding::XForwardedFor,
            trusted,
        }
    }

    /// Reads RFC 7239 `Forwarded` (`for=client, for="[2001:db8::1]:4711";proto=https`).
    pub fn forwarded(trusted: TrustedProxies) -> Self {
        ClientIp {
            header: Forwarding::Forwarded,
            trusted,
        }
    }

    /// The client's address: see [`ClientIp`]. `None` without a peer address, or when the
    /// entry where the client would be is not an address.
    pub fn client(&self, request: &RequestHead<'_>) -> Option<IpAddr> {
        let peer = request.peer()?;
        let (name, entries): (_, Entries) = match self.header {
            Forwarding::XForwardedFor => ("x-forwarded-for", x_forwarded_for_entries),
            Forwarding::Forwarded => ("forwarded", forwarded_entries),
        };
        // Every line of the header, in order: together one list. Entries are split on the
        // raw bytes, so one that is not text (a client's junk) is one unreadable entry, and
        // the addresses proxies appended after it on the same line still count.
        let mut chain: Vec<Option<IpAddr>> = request
            .headers
            .get_all(name)
            .iter()
            .flat_map(|line| {
                line.as_bytes()
                    .split(|&b| b == b',')
                    .flat_map(|entry| {
                        std::str::from_utf8(entry).map_or_else(|_| vec![None], entries)
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        chain.push(Some(peer));
        let at = match &self.trusted {
            TrustedProxies::Networks(networks) => {
                let trusted = |ip: &Option<IpAddr>| {
                    ip.is_some_and(|ip| networks.iter().any(|n| n.contains(ip)))
                };
                // Right to left past trusted proxies; all trusted: the leftmost.
                chain.iter().rposition(|ip| !trusted(ip)).unwrap_or(0)
            }
            TrustedProxies::Hops(hops) => chain.len().saturating_sub(hops + 1),
        };
        chain[at]
    }
}

impl KeyExtractor for ClientIp {
    fn extract(&self, request: &RequestHead<'_>) -> Option<String> {
        self.client(request).map(ip_key)
    }
}

/// Parses one line of a forwarding header into its addresses (`None`: not an address).
type Entries = fn(&str) -> Vec<Option<IpAddr>>;

/// The entries of one `X-Forwarded-For` line: addresses, with or without a port.
fn x_forwarded_for_entries(line: &str) -> Vec<Option<IpAddr>> {
    line.split(',')
        .map(|entry| parse_node(entry.trim()))
        .collect()
}

/// The `for=` of each element of one `Forwarded` line (an element without one: `None`).
fn forwarded_entries(line: &str) -> Vec<Option<IpAddr>> {
    line.split(',')
        .map(|element| {
            element.split(';').find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                name.trim()
                    .eq_ignore_ascii_case("for")
                    .then(|| parse_node(value.trim().trim_matches('"')))
            })?
        })
        .collect()
}

/// An address from a node: `192.0.2.1`, `192.0.2.1:8080`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:4711`; anything else (`unknown`, `_hidden`) is `None`.
fn parse_node(node: &str) -> Option<IpAddr> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Some(rest) = node.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    node.parse::<SocketAddr>().ok().map(|addr| addr.ip())
}

/// Which peers [`ClientIp`] believes.
#[derive(Debug, Clone)]
pub enum TrustedProxies {
    /// Proxies with an address in these networks.
    Networks(Vec<IpNetwork>),
    /// Exactly this many proxies in front of the service, the peer being the last: the
    /// client is the address that many entries from the right.
    Hops(usize),
}

impl TrustedProxies {
    /// Proxies in `networks` (`10.0.0.0/8`, `2001:db8::/32`, or a single address).
    ///
    /// # Errors
    ///
    /// A network that does not parse.
    pub fn networks<I, S>(networks: I) -> Result<Self, InvalidNetwork>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        networks
            .into_iter()
            .map(|n| n.as_ref().parse())
            .collect::<Result<_, _>>()
            .map(TrustedProxies::Networks)
    }

    /// Exactly `hops` proxies in front of the service.
    pub fn hops(hops: usize) -> Self {
        TrustedProxies::Hops(hops)
    }
}

/// An IP network: an address and a prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNetwork {
    addr: IpAddr,
    prefix: u8,
}

impl IpNetwork {
    /// Whether `ip` is in the network (an IPv4-mapped IPv6 address as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address as its IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    }
}

impl std::str::FromStr for IpNetwork {
    type Err = InvalidNetwork;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidNetwork(text.to_owned());
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr = canonical(addr.trim().parse().map_err(|_| invalid())?);
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(prefix) => prefix.trim().parse().map_err(|_| invalid())?,
            None => bits,
        };
        if prefix > bits {
            return Err(invalid());
        }
        Ok(IpNetwork { addr, prefix })
    }
}

/// A trusted network that does not parse (`10.0.0.0/33`, `proxy.local`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidNetwork(String);

impl fmt::Display for InvalidNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not an IP network: {:?}", self.0)
    }
}

impl std::error::Error for InvalidNetwork {}

/// The limit one request counts against: a limiter (its algorithm and quota) and the key
/// within it. Keys of different limiters on one store must differ — name the route or tier
/// in the key (`login:ip:…`) — or the limiters would count on one record.
#[derive(Debug, Clone)]
pub struct Limit {
    limiter: Limiter,
    key: String,
}

impl Limit {
    /// `key` counted by `limiter`.
    pub fn new(limiter: &Limiter, key: impl Into<String>) -> Self {
        Limit {
            limiter: limiter.clone(),
            key: key.into(),
        }
    }
}

type KeyFn = dyn Fn(&RequestHead<'_>) -> Option<String> + Send + Sync;
type SelectFn = dyn Fn(&RequestHead<'_>) -> Option<Limit> + Send + Sync;

/// How the layer picks the limit of a request.
#[derive(Clone)]
enum Select {
    /// One limiter, keyed by an extractor.
    Keyed {
        limiter: Limiter,
        key: Arc<KeyFn>,
        missing: MissingKey,
    },
    /// A limit per request, or none.
    PerRequest(Arc<SelectFn>),
}

/// What a request gets: a limit to count against, or an answer without counting.
enum Rule {
    Count(Limit),
    /// No key, and [`MissingKey::Deny`].
    Forbid,
    /// Not limited.
    Pass,
}

impl Select {
    fn rule(&self, request: &RequestHead<'_>) -> Rule {
        match self {
            Select::Keyed {
                limiter,
                key,
                missing,
            } => match (key(request), missing) {
                (Some(key), _) => Rule::Count(Limit::new(limiter, key)),
                (None, MissingKey::Shared) => Rule::Count(Limit::new(limiter, "anonymous")),
                (None, MissingKey::Deny) => Rule::Forbid,
                (None, MissingKey::Allow) => Rule::Pass,
            },
            Select::PerRequest(select) => select(request).map_or(Rule::Pass, Rule::Count),
        }
    }
}

type Deny = Arc<dyn Fn(&Decision) -> Response<String> + Send + Sync>;

/// A [`Layer`] that checks requests against [`Limiter`]s: one limiter keyed by a
/// [`KeyExtractor`] ([`RateLimitLayer::new`]), or a limit chosen per request — by route, by
/// tier, by client ([`RateLimitLayer::per_request`]).
///
/// Allowed requests go on, and their responses get the IETF rate-limit headers: `RateLimit`
/// (`"<limiter name>";r=<remaining>;t=<seconds to reset>`) and `RateLimit-Policy`
/// (`"<limiter name>";q=<requests>;w=<window seconds>`), plus the earlier drafts'
/// `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` that clients still read.
/// Denied ones get `429 Too Many Requests` with the same headers, `Retry-After` (seconds,
/// rounded up) and an RFC 9457 problem-details body (`application/problem+json`;
/// [`RateLimitLayer::on_denied`] replaces it). When the limiter fails for a reason its
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
#[derive(Clone)]
pub struct RateLimitLayer {
    select: Select,
    deny: Option<Deny>,
}

impl fmt::Debug for RateLimitLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer").finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// Limits every request by `key` with `limiter`.
    pub fn new<K: KeyExtractor>(limiter: Limiter, key: K) -> Self {
        Self::with(Select::Keyed {
            limiter,
            key: Arc::new(move |request: &RequestHead<'_>| key.extract(request)),
            missing: MissingKey::default(),
        })
    }

    /// Limits each request by the [`Limit`] `select` picks for it — a quota per route, per
    /// tier — or lets it through uncounted (`None`).
    ///
    /// ```
    /// # use std::time::Duration;
    /// use state_store_core::{DefaultStateStore, Limiter, Quota, StateStore};
    /// use state_store_tower::{KeyExtractor, Limit, PeerIp, RateLimitLayer, RequestHead};
    ///
    /// let store = StateStore::new(DefaultStateStore::new());
    /// let login = Limiter::fixed_window(&store, 5, Duration::from_secs(60)).named("login");
    /// let api = Limiter::gcra(&store, Quota::per_minute(600)).named("api");
    /// let layer = RateLimitLayer::per_request(move |request: &RequestHead<'_>| {
    ///     let ip = PeerIp.extract(request).unwrap_or_else(|| "anonymous".to_owned());
    ///     match request.uri.path() {
    ///         "/login" => Some(Limit::new(&login, format!("login:{ip}"))),
    ///         path if path.starts_with("/api/") => Some(Limit::new(&api, format!("api:{ip}"))),
    ///         _ => None,
    ///     }
    /// });
    /// # let _ = layer;
    /// ```
    pub fn per_request<F>(select: F) -> Self
    where
        F: Fn(&RequestHead<'_>) -> Option<Limit> + Send + Sync + 'static,
    {
        Self::with(Select::PerRequest(Arc::new(select)))
    }

    fn with(select: Select) -> Self {
        RateLimitLayer { select, deny: None }
    }

    /// What to do with a request without a key (default [`MissingKey::Shared`]). For
    /// [`RateLimitLayer::new`]; a [`RateLimitLayer::per_request`] function decides itself.
    pub fn on_missing_key(mut self, policy: MissingKey) -> Self {
        if let Select::Keyed { missing, .. } = &mut self.select {
            *missing = policy;
        }
        self
    }

    /// The response to a denied request, in place of the problem-details body; the layer
    /// still adds `Retry-After` and the rate-limit headers (unless `deny` set them).
    pub fn on_denied<F>(mut self, deny: F) -> Self
    where
        F: Fn(&Decision) -> Response<String> + Send + Sync + 'static,
    {
        self.deny = Some(Arc::new(deny));
        self
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RateLimitLayer`] wraps around yours.
#[derive(Clone)]
pub struct RateLimit<S> {
    inner: S,
    layer: RateLimitLayer,
}

impl<S: fmt::Debug> fmt::Debug for RateLimit<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResBody> Service<Request<B>> for RateLimit<S>
where
    S: Service<Request<B>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    ResBody: Default + From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let rule = self.layer.select.rule(&RequestHead::of(&request));
        // The ready service answers this request; the clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let deny = self.layer.deny.clone();
        Box::pin(async move {
            let limit = match rule {
                Rule::Count(limit) => limit,
                Rule::Forbid => return Ok(status(StatusCode::FORBIDDEN)),
                Rule::Pass => return inner.call(request).await,
            };
            match limit.limiter.check(&limit.key).await {
                Ok(decision) if decision.allowed => {
                    let mut response = inner.call(request).await?;
                    add_headers(response.headers_mut(), &limit.limiter, &decision);
                    Ok(response)
                }
                Ok(decision) => {
                    let denied = deny.map_or_else(|| problem(&decision), |deny| deny(&decision));
                    let mut response = denied.map(ResBody::from);
                    let headers = response.headers_mut();
                    if let Some(wait) = decision.retry_after {
                        if !headers.contains_key(http::header::RETRY_AFTER) {
                            headers.insert(http::header::RETRY_AFTER, seconds(wait));
                        }
                    }
                    add_headers(headers, &limit.limiter, &decision);
                    Ok(response)
                }
                Err(err) => {
                    tracing::error!("rate limiter failed: {err}");
                    Ok(status(StatusCode::INTERNAL_SERVER_ERROR))
                }
            }
        })
    }
}

fn status<B: Default>(code: StatusCode) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = code;
    response
}

/// `429` with an RFC 9457 problem-details body.
fn problem(decision: &Decision) -> Response<String> {
    let detail = match decision.retry_after {
        Some(wait) => format!(
            "The request rate limit is exceeded; retry in {} s.",
            seconds_of(wait)
        ),
        None => "The request costs more than the rate limit ever allows.".to_owned(),
    };
    let body = serde_json::json!({
        "type": "about:blank",
        "title": "Too Many Requests",
        "status": 429,
        "detail": detail,
    });
    let mut response = Response::new(body.to_string());
    *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// The IETF headers (`RateLimit`, `RateLimit-Policy`) and the earlier drafts' ones
/// (`RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`); headers already set stay.
fn add_headers(headers: &mut HeaderMap, limiter: &Limiter, decision: &Decision) {
    let (quota, window) = limiter.rate();
    let name = limiter.name();
    let reset = seconds_of(decision.reset_after);
    let values = [
        (
            "ratelimit",
            format!("\"{name}\";r={};t={reset}", decision.remaining),
        ),
        (
            "ratelimit-policy",
            format!("\"{name}\";q={quota};w={}", seconds_of(window)),
        ),
        ("ratelimit-limit", decision.limit.to_string()),
        ("ratelimit-remaining", decision.remaining.to_string()),
        ("ratelimit-reset", reset.to_string()),
    ];
    for (header, value) in values {
        let header = HeaderName::from_static(header);
        if !headers.contains_key(&header) {
            if let Ok(value) = HeaderValue::from_str(&value) {
                headers.insert(header, value);
            }
        }
    }
}

/// Whole seconds, rounded up.
fn seconds_of(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn seconds(d: Duration) -> HeaderValue {
    HeaderValue::from(seconds_of(d))
}

#[cfg(test)]
mod tests {
    use super::{forwarded_entries, parse_node, x_forwarded_for_entries, IpNetwork};
    use std::net::IpAddr;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().expect("an address"))
    }

    #[test]
    fn nodes_parse_with_and_without_ports_and_brackets() {
        assert_eq!(parse_node("192.0.2.1"), ip("192.0.2.1"));
        assert_eq!(parse_node("192.0.2.1:8080"), ip("192.0.2.1"));
        assert_eq!(parse_node("2001:db8::1"), ip("2001:db8::1"));
        assert_eq!(parse_node("[2001:db8::1]"), ip("2001:db8::1"));
        assert_eq!(parse_node("[2001:db8::1]:4711"), ip("2001:db8::1"));
        for junk in ["unknown", "_hidden", "", "[", "1.2.3", "[::1"] {
            assert_eq!(parse_node(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn headers_split_into_entries() {
        assert_eq!(
            x_forwarded_for_entries(" 203.0.113.7 , 10.0.0.1,unknown"),
            [ip("203.0.113.7"), ip("10.0.0.1"), None]
        );
        assert_eq!(
            forwarded_entries(
                "for=192.0.2.60;proto=http;by=203.0.113.43, For=\"[2001:db8:cafe::17]:4711\", proto=https"
            ),
            [ip("192.0.2.60"), ip("2001:db8:cafe::17"), None]
        );
    }

    #[test]
    fn networks_contain_their_addresses_only() {
        let net: IpNetwork = "10.0.0.0/8".parse().expect("network");
        assert!(net.contains("10.255.0.1".parse().expect("ip")));
        assert!(net.contains("::ffff:10.1.2.3".parse().expect("ip")));
        assert!(!net.contains("11.0.0.1".parse().expect("ip")));
        let v6: IpNetwork = "2001:db8::/32".parse().expect("network");
        assert!(v6.contains("2001:db8:ffff::1".parse().expect("ip")));
        assert!(!v6.contains("2001:db9::1".parse().expect("ip")));
        let all: IpNetwork = "0.0.0.0/0".parse().expect("network");
        assert!(all.contains("192.0.2.1".parse().expect("ip")));
        let one: IpNetwork = "192.0.2.1".parse().expect("address");
        assert!(one.contains("192.0.2.1".parse().expect("ip")));
        assert!(!one.contains("192.0.2.2".parse().expect("ip")));
        for bad in ["10.0.0.0/33", "::/129", "proxy.local", "10.0.0.0/x"] {
            assert!(bad.parse::<IpNetwork>().is_err(), "{bad}");
        }
    }
}
