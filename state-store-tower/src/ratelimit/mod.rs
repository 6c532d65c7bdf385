//! A tower layer that rate-limits requests with a [`Limiter`] shared by every instance.

mod client_ip;
mod keys;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use state_store_core::{Decision, Limiter};
use tower_layer::Layer;
use tower_service::Service;

pub use client_ip::{ClientIp, InvalidNetwork, IpNetwork, TrustedProxies};
pub use keys::{Global, Header, KeyExtractor, PeerIp, RequestHead, WeakSecret, MIN_SECRET_LEN};

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
