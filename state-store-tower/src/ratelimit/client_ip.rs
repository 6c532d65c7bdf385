//! The client address behind trusted proxies: [`ClientIp`].

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use super::keys::ip_key;
use super::{KeyExtractor, RequestHead};

#[cfg(doc)]
use super::{MissingKey, PeerIp};

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
