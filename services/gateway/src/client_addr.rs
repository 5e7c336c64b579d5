//! The caller's address for per-IP limits (anonymous callers' rate-limit key, WebSocket
//! connections per IP), from the socket peer or, when configured, a trusted proxy header.
//!
//! - Default: the TCP peer. No header is believed, since any client can send one.
//! - `SECURITY_TRUSTED_PROXY_HOPS = N`: `N` proxies that each append the address they
//!   received from to `X-Forwarded-For` always sit in front. The caller is then the entry
//!   `N` places from the right: the one the outermost trusted proxy wrote. Entries further
//!   left came from the client and are never read.
//! - `SECURITY_TRUST_ENVOY_EXTERNAL_ADDRESS`: the caller is Envoy's
//!   `x-envoy-external-address` (set by an edge Envoy that has already made that choice).
//!
//! Whenever the trusted place holds no usable address (header missing, fewer entries than
//! hops, malformed text), the peer is used: the answer falls back to what the network says,
//! never to anything a client chose.

use std::net::{IpAddr, SocketAddr};

use agentmesh_runtime::config::ClientAddressConfig;
use http::{HeaderMap, HeaderName};

/// `X-Forwarded-For`: one address appended per proxy, the nearest proxy's rightmost.
pub const FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Envoy's `x-envoy-external-address`: the caller as seen by the edge Envoy.
pub const ENVOY_EXTERNAL_ADDRESS: HeaderName = HeaderName::from_static("x-envoy-external-address");

/// Picks a request's client address according to the configured trust.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientAddresses {
    /// Trusted `X-Forwarded-For` hops; 0 reads no header.
    hops: usize,
    /// Whether `x-envoy-external-address` names the caller.
    envoy: bool,
}

impl ClientAddresses {
    /// From the `SECURITY_TRUSTED_PROXY_HOPS` / `SECURITY_TRUST_ENVOY_EXTERNAL_ADDRESS` settings.
    pub fn new(config: ClientAddressConfig) -> Self {
        Self {
            hops: usize::try_from(config.trusted_proxy_hops).unwrap_or(usize::MAX),
            envoy: config.trust_envoy_external_address,
        }
    }

    /// The address of the caller that reached us from `peer` with `headers`.
    pub fn resolve(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        let trusted = if self.envoy {
            envoy_external_address(headers)
        } else if self.hops > 0 {
            forwarded_for(headers, self.hops)
        } else {
            None
        };
        trusted.unwrap_or(peer)
    }
}

/// The `X-Forwarded-For` entry `hops` places from the right, over every header line in
/// order; `None` when there are fewer entries or that one is not an address. Entries are
/// split as bytes, so junk a client put further left cannot spoil the trusted one.
fn forwarded_for(headers: &HeaderMap, hops: usize) -> Option<IpAddr> {
    let entries: Vec<&[u8]> =
        headers.get_all(FORWARDED_FOR).iter().flat_map(|value| value.as_bytes().split(|&byte| byte == b',')).collect();
    let index = entries.len().checked_sub(hops)?;
    parse_address(entries[index])
}

/// The single `x-envoy-external-address`; `None` when absent, repeated or malformed.
fn envoy_external_address(headers: &HeaderMap) -> Option<IpAddr> {
    let mut values = headers.get_all(ENVOY_EXTERNAL_ADDRESS).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => parse_address(value.as_bytes()),
        _ => None,
    }
}

/// An IPv4 or IPv6 address, optionally with a port (`203.0.113.7:4711`, `[2001:db8::1]:443`)
/// or in brackets, surrounded by optional white space.
fn parse_address(raw: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(raw).ok()?.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(socket) = text.parse::<SocketAddr>() {
        return Some(socket.ip());
    }
    text.strip_prefix('[')?.strip_suffix(']')?.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 9));

    fn addresses(hops: u32, envoy: bool) -> ClientAddresses {
        ClientAddresses::new(ClientAddressConfig { trusted_proxy_hops: hops, trust_envoy_external_address: envoy })
    }

    fn headers(pairs: &[(HeaderName, &[u8])]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name.clone(), HeaderValue::from_bytes(value).unwrap());
        }
        map
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let pairs: Vec<(HeaderName, &[u8])> = values.iter().map(|v| (FORWARDED_FOR, v.as_bytes())).collect();
        headers(&pairs)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn default_believes_no_header() {
        let spoofed = xff(&["198.51.100.1"]);
        assert_eq!(addresses(0, false).resolve(&spoofed, PEER), PEER);
        let envoy = headers(&[(ENVOY_EXTERNAL_ADDRESS, b"198.51.100.1")]);
        assert_eq!(addresses(0, false).resolve(&envoy, PEER), PEER);
        assert_eq!(addresses(1, false).resolve(&envoy, PEER), PEER, "hops trust XFF only");
    }

    #[test]
    fn hops_count_from_the_right_and_skip_client_entries() {
        // The client forged the first entry; one proxy appended the real address.
        let one_proxy = xff(&["1.1.1.1, 203.0.113.7"]);
        assert_eq!(addresses(1, false).resolve(&one_proxy, PEER), ip("203.0.113.7"));
        // Two proxies: the client's address is second from the right.
        let two_proxies = xff(&["1.1.1.1, 203.0.113.7, 10.1.2.3"]);
        assert_eq!(addresses(2, false).resolve(&two_proxies, PEER), ip("203.0.113.7"));
        // Several header lines are one list, in order.
        let lines = xff(&["1.1.1.1", "203.0.113.7", "10.1.2.3"]);
        assert_eq!(addresses(2, false).resolve(&lines, PEER), ip("203.0.113.7"));
    }

    #[test]
    fn too_few_entries_fall_back_to_the_peer() {
        assert_eq!(addresses(2, false).resolve(&xff(&["203.0.113.7"]), PEER), PEER);
        assert_eq!(addresses(1, false).resolve(&HeaderMap::new(), PEER), PEER);
        assert_eq!(addresses(3, false).resolve(&xff(&["a, b"]), PEER), PEER);
    }

    #[test]
    fn malformed_entries_fall_back_to_the_peer() {
        for bad in ["unknown", "", " ", "203.0.113", "203.0.113.7.1", "_hidden", "2001:db8::g", "[2001:db8::1"] {
            assert_eq!(addresses(1, false).resolve(&xff(&[&format!("1.1.1.1,{bad}")]), PEER), PEER, "{bad:?}");
        }
        // Junk, even non-UTF-8 bytes, left of the trusted entry does not spoil it.
        let junk = headers(&[(FORWARDED_FOR, b"\xff\xfe, 203.0.113.7")]);
        assert_eq!(addresses(1, false).resolve(&junk, PEER), ip("203.0.113.7"));
    }

    #[test]
    fn ipv6_and_ports_are_understood() {
        let cases = [
            ("2001:db8::1", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("203.0.113.7:4711", "203.0.113.7"),
            ("  203.0.113.7  ", "203.0.113.7"),
            ("::ffff:203.0.113.7", "::ffff:203.0.113.7"),
        ];
        for (entry, expected) in cases {
            assert_eq!(addresses(1, false).resolve(&xff(&[entry]), PEER), ip(expected), "{entry}");
        }
    }

    #[test]
    fn envoy_external_address_when_configured() {
        let envoy = |value: &[u8]| headers(&[(ENVOY_EXTERNAL_ADDRESS, value), (FORWARDED_FOR, b"1.1.1.1")]);
        assert_eq!(addresses(0, true).resolve(&envoy(b"203.0.113.7"), PEER), ip("203.0.113.7"));
        assert_eq!(addresses(0, true).resolve(&envoy(b"2001:db8::7"), PEER), ip("2001:db8::7"));
        assert_eq!(addresses(0, true).resolve(&envoy(b"garbage"), PEER), PEER);
        assert_eq!(addresses(0, true).resolve(&xff(&["1.1.1.1"]), PEER), PEER, "absent: the peer, not XFF");
        let twice = headers(&[(ENVOY_EXTERNAL_ADDRESS, b"203.0.113.7"), (ENVOY_EXTERNAL_ADDRESS, b"1.1.1.1")]);
        assert_eq!(addresses(0, true).resolve(&twice, PEER), PEER, "ambiguous: the peer");
    }
}
