//! Shared by the example programs: choosing a store from the command line or environment.

/// Where the examples keep state unless told otherwise.
pub const DEFAULT_URL: &str = "sqlite://./state.db";

/// The store URL, first found of: `--store <url>`; `STATE_STORE_URL`; `REDIS_URL`; `NATS_URL`;
/// `DAPR_GRPC_ENDPOINT` (as `dapr://host:port/<component>`, the component from
/// `DAPR_STATE_STORE`, default `statestore`); else [`DEFAULT_URL`].
pub fn store_url() -> String {
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--store" {
            if let Some(url) = args.next() {
                return url;
            }
        } else if let Some(url) = arg.strip_prefix("--store=") {
            return url.to_owned();
        }
    }
    let var = |name| std::env::var(name).ok().filter(|v: &String| !v.is_empty());
    if let Some(url) = var("STATE_STORE_URL")
        .or_else(|| var("REDIS_URL"))
        .or_else(|| var("NATS_URL"))
    {
        return url;
    }
    if let Some(endpoint) = var("DAPR_GRPC_ENDPOINT") {
        let host = endpoint
            .split_once("://")
            .map_or(endpoint.as_str(), |(_, rest)| rest);
        let component = var("DAPR_STATE_STORE").unwrap_or_else(|| "statestore".to_owned());
        return format!("dapr://{}/{component}", host.trim_end_matches('/'));
    }
    DEFAULT_URL.to_owned()
}

/// `url` with any user information replaced by `***`, for printing (a URL may carry a
/// password or token).
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// The repository README, compiled as a doctest so its Rust examples stay true.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
