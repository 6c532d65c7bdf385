//! The rate-limit layer's HTTP behaviour: headers on every answer, 429 with Retry-After,
//! keys from the extractor, requests without a key limited together (or denied, or let
//! through, as configured), IPv6 clients by /64, 500 when the limiter fails.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, Request, Response, StatusCode};
use state_store::{Limiter, Quota, StateStore, StoreConfig};
use state_store_tower::{Global, Header, MissingKey, PeerIp, RateLimitLayer};
use tower::{Layer, ServiceExt};

/// The header extractor's secret, as every instance of a service would share it.
const SECRET: &str = "0123456789abcdef0123456789abcdef";

async fn ok(_: Request<()>) -> Result<Response<String>, Infallible> {
    Ok(Response::new("hello".to_owned()))
}

fn from(ip: [u8; 4]) -> Request<()> {
    let mut request = Request::new(());
    request
        .extensions_mut()
        .insert(SocketAddr::from((ip, 40000)));
    request
}

async fn memory() -> StateStore {
    state_store::open("memory://").await.expect("open")
}

#[tokio::test]
async fn allowed_requests_get_headers_and_denied_ones_429_with_retry_after() {
    limits_by_peer(&memory().await).await;
}

/// The same on PostgreSQL: the layer runs on any store unchanged.
#[tokio::test]
async fn the_layer_limits_on_postgres() {
    let Some(url) = state_store_testkit::harness::postgres::postgres_url() else {
        return;
    };
    let store = state_store::open(&url)
        .await
        .expect("open")
        .with_prefix(&format!("layer-{}", std::process::id()))
        .expect("prefix");
    limits_by_peer(&store).await;
    store.destroy().await.expect("destroy");
}

/// Two requests per minute per client: headers on the allowed ones, then 429 with
/// `Retry-After`; another client has its own limit.
async fn limits_by_peer(store: &StateStore) {
    let layer = RateLimitLayer::new(
        Limiter::fixed_window(store, 2, Duration::from_secs(60)),
        PeerIp,
    );
    let service = layer.layer(tower::service_fn(ok));
    for remaining in ["1", "0"] {
        let response = service
            .clone()
            .oneshot(from([10, 0, 0, 1]))
            .await
            .expect("call");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.body(), "hello");
        assert_eq!(response.headers()["ratelimit-limit"], "2");
        assert_eq!(response.headers()["ratelimit-remaining"], remaining);
        assert_eq!(response.headers()["ratelimit-reset"], "60");
    }
    let denied = service
        .clone()
        .oneshot(from([10, 0, 0, 1]))
        .await
        .expect("call");
    assert_eq!(denied.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(
        denied.body().is_empty(),
        "the inner service ran for a denied request"
    );
    let retry: u64 = denied.headers()["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=60).contains(&retry), "{retry}");
    // Another client has its own limit.
    let other = service.oneshot(from([10, 0, 0, 2])).await.expect("call");
    assert_eq!(other.status(), StatusCode::OK);
}

#[tokio::test]
async fn requests_without_a_key_share_one_limit_by_default() {
    let store = memory().await;
    let limiter = Limiter::gcra(&store, Quota::per_hour(1));
    let service = RateLimitLayer::new(
        limiter,
        Header::new(HeaderName::from_static("x-api-key"), SECRET),
    )
    .layer(tower::service_fn(ok));
    let status = |response: Response<String>| response.status();
    let anonymous = || service.clone().oneshot(Request::new(()));
    assert_eq!(status(anonymous().await.expect("call")), StatusCode::OK);
    // A second request without the header is not a fresh client: it is out of the quota.
    assert_eq!(
        status(anonymous().await.expect("call")),
        StatusCode::TOO_MANY_REQUESTS
    );
    // A keyed client has a limit of its own.
    let keyed = || {
        Request::builder()
            .header("x-api-key", "k1")
            .body(())
            .expect("request")
    };
    assert_eq!(
        status(service.clone().oneshot(keyed()).await.expect("call")),
        StatusCode::OK
    );
    assert_eq!(
        status(service.clone().oneshot(keyed()).await.expect("call")),
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn requests_without_a_key_are_denied_or_let_through_when_configured() {
    let store = memory().await;
    let header = || Header::new(HeaderName::from_static("x-api-key"), SECRET);
    let deny = RateLimitLayer::new(Limiter::gcra(&store, Quota::per_hour(1)), header())
        .on_missing_key(MissingKey::Deny)
        .layer(tower::service_fn(ok));
    let response = deny.oneshot(Request::new(())).await.expect("call");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);

    let allow = RateLimitLayer::new(Limiter::gcra(&store, Quota::per_hour(1)), header())
        .on_missing_key(MissingKey::Allow)
        .layer(tower::service_fn(ok));
    for _ in 0..3 {
        let response = allow.clone().oneshot(Request::new(())).await.expect("call");
        assert_eq!(response.status(), StatusCode::OK);
        assert!(response.headers().get("ratelimit-limit").is_none());
    }
}

/// An IPv6 client is limited by its /64: rotating addresses inside it is the same client,
/// another /64 is another; an IPv4-mapped address is its IPv4 address.
#[tokio::test]
async fn ipv6_clients_are_limited_by_their_64() {
    let store = memory().await;
    let service = RateLimitLayer::new(
        Limiter::fixed_window(&store, 1, Duration::from_secs(60)),
        PeerIp,
    )
    .layer(tower::service_fn(ok));
    let from_v6 = |ip: &str| {
        let mut request = Request::new(());
        let ip: std::net::Ipv6Addr = ip.parse().expect("ipv6");
        request
            .extensions_mut()
            .insert(SocketAddr::from((ip, 40000)));
        request
    };
    let status = |request| {
        let service = service.clone();
        async move { service.oneshot(request).await.expect("call").status() }
    };
    assert_eq!(status(from_v6("2001:db8:1:2::1")).await, StatusCode::OK);
    assert_eq!(
        status(from_v6("2001:db8:1:2:ffff:aaaa:bbbb:cccc")).await,
        StatusCode::TOO_MANY_REQUESTS,
        "the same /64"
    );
    assert_eq!(status(from_v6("2001:db8:1:3::1")).await, StatusCode::OK);
    assert_eq!(status(from([192, 0, 2, 7])).await, StatusCode::OK);
    assert_eq!(
        status(from_v6("::ffff:192.0.2.7")).await,
        StatusCode::TOO_MANY_REQUESTS,
        "an IPv4-mapped address is the IPv4 client"
    );
}

#[tokio::test]
async fn a_failing_limiter_answers_500() {
    let config = StoreConfig::default().with_enable_set(false);
    let store = state_store::open_with("memory://", config)
        .await
        .expect("open");
    let limiter = Limiter::gcra(&store, Quota::per_second(10));
    let service = RateLimitLayer::new(limiter, Global).layer(tower::service_fn(ok));
    let response = service.oneshot(Request::new(())).await.expect("call");
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn any_header_value_is_limited_and_never_stored_in_clear() {
    let store = memory().await;
    let limiter = Limiter::fixed_window(&store, 1, Duration::from_secs(60));
    let service = RateLimitLayer::new(
        limiter,
        Header::new(HeaderName::from_static("x-api-key"), SECRET),
    )
    .layer(tower::service_fn(ok));
    let request = |value: &[u8]| {
        let mut request = Request::new(());
        request.headers_mut().insert(
            "x-api-key",
            http::HeaderValue::from_bytes(value).expect("header bytes"),
        );
        request
    };
    // Not visible ASCII, and long: still a key of its own, not a free pass.
    let odd = [b"secret-\x80".as_slice(), &[b'k'; 4000]].concat();
    for value in [odd.as_slice(), b"sk_live_plain"] {
        let first = service.clone().oneshot(request(value)).await.expect("call");
        assert_eq!(first.status(), StatusCode::OK);
        let second = service.clone().oneshot(request(value)).await.expect("call");
        assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    let limits = store.reserved("ratelimit").expect("the limiter's area");
    let stored = limits.list_all("").await.expect("list");
    assert_eq!(stored.len(), 2);
    assert!(
        stored
            .iter()
            .all(|name| !name.contains("secret") && !name.contains("sk_live")),
        "{stored:?}"
    );
}

/// A store dump does not reveal which API keys were seen: the stored key of a header value
/// depends on the secret (a plain hash of a short key could be reversed by trying them all),
/// instances sharing the secret share the limit, and the secret never shows in `Debug`.
#[tokio::test]
async fn header_keys_are_hashed_with_the_secret() {
    let store = memory().await;
    let name = HeaderName::from_static("x-api-key");
    let request = || {
        let mut request = Request::new(());
        request
            .headers_mut()
            .insert("x-api-key", http::HeaderValue::from_static("k1"));
        request
    };
    let limiter = Limiter::fixed_window(&store, 1, Duration::from_secs(60));
    let mut stored = Vec::new();
    for secret in [SECRET, SECRET, "another secret, another deployment"] {
        let header = Header::new(name.clone(), secret);
        assert!(!format!("{header:?}").contains(secret), "{header:?}");
        let service = RateLimitLayer::new(limiter.clone(), header).layer(tower::service_fn(ok));
        stored.push(service.oneshot(request()).await.expect("call").status());
    }
    assert_eq!(
        stored,
        [
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS,
            StatusCode::OK
        ],
        "one secret, one limit; another secret, another key"
    );
    let limits = store.reserved("ratelimit").expect("the limiter's area");
    let keys = limits.list_all("").await.expect("list");
    assert_eq!(keys.len(), 2, "{keys:?}");
    // SHA-1 and SHA-256 of "k1", unkeyed: what a dump must not show.
    for plain in ["a2ab1959", "6ab9f1eb"] {
        assert!(keys.iter().all(|key| !key.contains(plain)), "{keys:?}");
    }
}
