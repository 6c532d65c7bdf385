//! The rate-limit layer's HTTP behaviour: headers on every answer, 429 with Retry-After,
//! keys from the extractor, requests without a key limited together (or denied, or let
//! through, as configured), IPv6 clients by /64, 500 when the limiter fails.

#![allow(clippy::expect_used)] // test helpers fail the test by panicking

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderName, Request, Response, StatusCode};
use state_store::{Limiter, Quota, StateStore, StoreConfig};
use state_store_tower::{
    ClientIp, Global, Header, KeyExtractor, Limit, MissingKey, PeerIp, RateLimitLayer, RequestHead,
    TrustedProxies,
};
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
        // The IETF draft's structured headers.
        assert_eq!(
            response.headers()["ratelimit"],
            format!("\"default\";r={remaining};t=60").as_str()
        );
        assert_eq!(
            response.headers()["ratelimit-policy"],
            "\"default\";q=2;w=60"
        );
    }
    let denied = service
        .clone()
        .oneshot(from([10, 0, 0, 1]))
        .await
        .expect("call");
    assert_eq!(denied.status(), StatusCode::TOO_MANY_REQUESTS);
    // An RFC 9457 problem, not the inner service's answer.
    assert_eq!(denied.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = serde_json::from_str(denied.body()).expect("JSON");
    assert_eq!(problem["status"], 429);
    assert_eq!(problem["title"], "Too Many Requests");
    assert_eq!(problem["type"], "about:blank");
    assert!(problem["detail"]
        .as_str()
        .is_some_and(|d| d.contains("retry")));
    assert_eq!(denied.headers()["ratelimit-remaining"], "0");
    assert_eq!(denied.headers()["ratelimit-policy"], "\"default\";q=2;w=60");
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
        Header::new(HeaderName::from_static("x-api-key"), SECRET).expect("a long secret"),
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
    let header =
        || Header::new(HeaderName::from_static("x-api-key"), SECRET).expect("a long secret");
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
        Header::new(HeaderName::from_static("x-api-key"), SECRET).expect("a long secret"),
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
        let header = Header::new(name.clone(), secret).expect("a long secret");
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
    // A secret anyone could guess is refused, and the error does not repeat it.
    for weak in ["", "changeme", "0123456789abcde"] {
        let refused = Header::new(name.clone(), weak).map(drop).expect_err(weak);
        assert_eq!(refused.len, weak.len());
        assert!(weak.is_empty() || !refused.to_string().contains(weak));
    }
    // SHA-1 and SHA-256 of "k1", unkeyed: what a dump must not show.
    for plain in ["a2ab1959", "6ab9f1eb"] {
        assert!(keys.iter().all(|key| !key.contains(plain)), "{keys:?}");
    }
}

/// A request from `peer` carrying `header: value` lines.
fn forwarded(peer: &str, header: &'static str, values: &[&str]) -> Request<()> {
    let mut request = Request::new(());
    let peer: std::net::IpAddr = peer.parse().expect("peer");
    request
        .extensions_mut()
        .insert(SocketAddr::from((peer, 40000)));
    for value in values {
        request
            .headers_mut()
            .append(header, http::HeaderValue::from_str(value).expect("value"));
    }
    request
}

/// The client address behind trusted proxies: read right to left past trusted ones, so
/// addresses a client wrote itself are never believed, and a request straight from an
/// untrusted peer is that peer whatever it claims.
#[test]
fn client_ip_believes_trusted_proxies_only() {
    let trusted = TrustedProxies::networks(["10.0.0.0/8", "2001:db8:ffff::/48"]).expect("nets");
    let xff = ClientIp::x_forwarded_for(trusted.clone());
    let client = |extractor: &ClientIp, request: &Request<()>| {
        extractor
            .client(&RequestHead::of(request))
            .map(|ip| ip.to_string())
    };
    let cases: &[(&str, &[&str], Option<&str>)] = &[
        // Through one trusted proxy.
        ("10.0.0.5", &["203.0.113.7"], Some("203.0.113.7")),
        // Spoofed: a client talking to the service directly claims another address.
        ("198.51.100.9", &["203.0.113.7"], Some("198.51.100.9")),
        // Spoofed through the proxy: the client prepends an address, the proxy appends the
        // real one; the prepended one is left of the first untrusted address.
        ("10.0.0.5", &["1.2.3.4, 203.0.113.7"], Some("203.0.113.7")),
        // A chain of trusted proxies, over two header lines.
        (
            "10.0.0.5",
            &["203.0.113.7, 10.1.1.1", "10.2.2.2:8080"],
            Some("203.0.113.7"),
        ),
        // Every address trusted: the leftmost.
        ("10.0.0.5", &["10.9.9.9"], Some("10.9.9.9")),
        // No header from a trusted proxy: the proxy itself.
        ("10.0.0.5", &[], Some("10.0.0.5")),
        // Not an address where the client would be: no key.
        ("10.0.0.5", &["unknown"], None),
        // IPv6 proxies, bracketed with a port.
        (
            "2001:db8:ffff::1",
            &["[2001:db8:1::7]:4711"],
            Some("2001:db8:1::7"),
        ),
    ];
    for (peer, values, expected) in cases {
        let request = forwarded(peer, "x-forwarded-for", values);
        assert_eq!(
            client(&xff, &request).as_deref(),
            *expected,
            "peer {peer}, X-Forwarded-For {values:?}"
        );
    }
    // Junk that is not text in the client's part of the line: the proxy's entry still counts.
    let mut request = forwarded("10.0.0.5", "x-forwarded-for", &[]);
    request.headers_mut().append(
        "x-forwarded-for",
        http::HeaderValue::from_bytes(b"\xff\xfe, 203.0.113.9").expect("bytes"),
    );
    assert_eq!(client(&xff, &request).as_deref(), Some("203.0.113.9"));
    // The other header is not read: a client can send it through a proxy untouched.
    let request = forwarded("10.0.0.5", "forwarded", &["for=203.0.113.7"]);
    assert_eq!(client(&xff, &request).as_deref(), Some("10.0.0.5"));
    let rfc = ClientIp::forwarded(trusted);
    let request = forwarded(
        "10.0.0.5",
        "forwarded",
        &["for=1.2.3.4, for=\"[2001:db8:cafe::17]:4711\";proto=https"],
    );
    assert_eq!(client(&rfc, &request).as_deref(), Some("2001:db8:cafe::17"));
    // A hop count: the address that many entries from the right, forged ones left of it.
    let two_hops = ClientIp::x_forwarded_for(TrustedProxies::hops(2));
    let request = forwarded(
        "192.0.2.1",
        "x-forwarded-for",
        &["6.6.6.6, 203.0.113.7, 192.0.2.2"],
    );
    assert_eq!(client(&two_hops, &request).as_deref(), Some("203.0.113.7"));
    let request = forwarded("192.0.2.1", "x-forwarded-for", &[]);
    assert_eq!(client(&two_hops, &request).as_deref(), Some("192.0.2.1"));
    // No peer address: nothing to start from.
    assert_eq!(client(&xff, &Request::new(())), None);
    assert!(TrustedProxies::networks(["10.0.0.0/33"]).is_err());
}

/// Behind a trusted proxy, clients are limited apart by the address it forwards; a client
/// that forges the header gets no fresh limit.
#[tokio::test]
async fn clients_behind_a_trusted_proxy_are_limited_apart() {
    let store = memory().await;
    let trusted = TrustedProxies::networks(["10.0.0.0/8"]).expect("nets");
    let service = RateLimitLayer::new(
        Limiter::fixed_window(&store, 1, Duration::from_secs(60)),
        ClientIp::x_forwarded_for(trusted),
    )
    .layer(tower::service_fn(ok));
    let status = |values: &[&str]| {
        let service = service.clone();
        let request = forwarded("10.0.0.5", "x-forwarded-for", values);
        async move { service.oneshot(request).await.expect("call").status() }
    };
    assert_eq!(status(&["203.0.113.7"]).await, StatusCode::OK);
    assert_eq!(status(&["203.0.113.8"]).await, StatusCode::OK);
    assert_eq!(
        status(&["9.9.9.9, 203.0.113.7"]).await,
        StatusCode::TOO_MANY_REQUESTS,
        "a forged first entry is not a new client"
    );
}

/// One layer, a quota per route: each route counts on its own limiter and key, a route
/// without a limit is never counted, and each answer names its limit.
#[tokio::test]
async fn quotas_are_chosen_per_route() {
    let store = memory().await;
    let login = Limiter::fixed_window(&store, 1, Duration::from_secs(60)).named("login");
    let api = Limiter::fixed_window(&store, 3, Duration::from_secs(60)).named("api");
    let service = RateLimitLayer::per_request(move |request: &RequestHead<'_>| {
        let ip = PeerIp.extract(request)?;
        match request.uri.path() {
            "/login" => Some(Limit::new(&login, format!("login:{ip}"))),
            path if path.starts_with("/api/") => Some(Limit::new(&api, format!("api:{ip}"))),
            _ => None,
        }
    })
    .layer(tower::service_fn(ok));
    let call = |path: &str| {
        let service = service.clone();
        let mut request = from([10, 0, 0, 1]);
        *request.uri_mut() = path.parse().expect("uri");
        async move { service.oneshot(request).await.expect("call") }
    };
    let first = call("/login").await;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["ratelimit-policy"], "\"login\";q=1;w=60");
    assert_eq!(call("/login").await.status(), StatusCode::TOO_MANY_REQUESTS);
    for remaining in ["2", "1", "0"] {
        let response = call("/api/items").await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()["ratelimit"],
            format!("\"api\";r={remaining};t=60").as_str()
        );
    }
    assert_eq!(
        call("/api/other").await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    for _ in 0..5 {
        let open = call("/").await;
        assert_eq!(open.status(), StatusCode::OK);
        assert!(open.headers().get("ratelimit").is_none());
    }
}

/// A custom denial replaces the problem body; the layer still adds what clients need to back
/// off.
#[tokio::test]
async fn a_custom_denial_keeps_retry_after_and_the_headers() {
    let store = memory().await;
    let service = RateLimitLayer::new(Limiter::gcra(&store, Quota::per_hour(1)), Global)
        .on_denied(|_| {
            let mut response = Response::new("slow down".to_owned());
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            response
        })
        .layer(tower::service_fn(ok));
    assert_eq!(
        service
            .clone()
            .oneshot(Request::new(()))
            .await
            .expect("call")
            .status(),
        StatusCode::OK
    );
    let denied = service.oneshot(Request::new(())).await.expect("call");
    assert_eq!(denied.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(denied.body(), "slow down");
    assert!(denied.headers().contains_key("retry-after"));
    assert!(denied.headers().contains_key("ratelimit"));
}
