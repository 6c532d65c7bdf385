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

/// `url` for printing: the user information of every server (`nats://u:p@a,u:p@b`) and the
/// value of any `token`, `password`, `secret` or `key` parameter replaced by `***` (a URL may
/// carry a password or an API token).
pub fn redacted(url: &str) -> String {
    // Servers are separated by commas, each a whole URL (`nats://u:p@a,nats://u:q@b`) or a
    // bare `u:p@b`; parameters follow the last one.
    let (servers, query) = match url.split_once('?') {
        Some((servers, query)) => (servers, Some(query)),
        None => (url, None),
    };
    let servers: Vec<String> = servers.split(',').map(redact_server).collect();
    let mut out = servers.join(",");
    if let Some(query) = query {
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _))
                    if SECRET_PARAMETERS.contains(&name.to_ascii_lowercase().as_str()) =>
                {
                    format!("{name}=***")
                }
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&pairs.join("&"));
    }
    out
}

/// One server of a URL with its user information replaced by `***`.
fn redact_server(server: &str) -> String {
    let (scheme, rest) = match server.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, server),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rfind('@') {
        Some(at) => format!("***{}", &authority[at..]),
        None => authority.to_owned(),
    };
    match scheme {
        Some(scheme) => format!("{scheme}://{authority}{path}"),
        None => format!("{authority}{path}"),
    }
}

/// Query parameters whose values [`redacted`] hides.
const SECRET_PARAMETERS: &[&str] = &["token", "password", "secret", "key", "api_token"];

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn every_secret_in_a_url_is_hidden() {
        let cases = [
            ("redis://:pw@h:6379/0", "redis://***@h:6379/0"),
            (
                "nats://u:p@a:4222,u:q@b:4222",
                "nats://***@a:4222,***@b:4222",
            ),
            (
                "dapr://h:50001/s?token=t0k%2B",
                "dapr://h:50001/s?token=***",
            ),
            (
                "rediss://u:p@h/?Password=x&db=1",
                "rediss://***@h/?Password=***&db=1",
            ),
            ("sqlite://./state.db", "sqlite://./state.db"),
        ];
        for (url, want) in cases {
            assert_eq!(redacted(url), want, "{url}");
        }
    }
}

/// The repository README, compiled as a doctest so its Rust examples stay true.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
