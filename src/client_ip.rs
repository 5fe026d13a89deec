//! Client IP resolution behind trusted proxies.
//!
//! The socket peer is the client unless it is a trusted proxy; then the
//! forwarding headers are walked from the right, past trusted hops, and the
//! first untrusted address is the client (nginx's `real_ip_recursive`). The
//! left-most entries are whatever the client wrote, so they are never believed
//! on their own. `X-Forwarded-For` is read when present, else `Forwarded`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use http::{HeaderMap, HeaderValue};
use ipnet::IpNet;

/// `X-Forwarded-For`, as a constant: looking a header up by `&str` parses
/// the name every time.
pub const X_FORWARDED_FOR: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");

/// Resolves the client address of a request.
#[derive(Debug, Clone)]
pub struct ClientIpResolver {
    trusted: Vec<IpNet>,
    backends: Vec<IpNet>,
    ipv6_prefix: u8,
}

impl Default for ClientIpResolver {
    fn default() -> Self {
        ClientIpResolver::new(Vec::new())
    }
}

/// The IPv6 prefix length a client is counted by unless configured
/// (`guards.ipv6_prefix`): one /64 is one subscriber.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// The counter key of a client, made once per request beside its resolution:
/// an IPv4 address (in the IPv4-mapped range, apart from any IPv6 prefix), or
/// the IPv6 network of `ipv6_prefix` bits (one subscriber rotating through
/// its /64 is one client).
#[inline]
pub fn client_key(ip: IpAddr, ipv6_prefix: u8) -> u128 {
    match canonical(ip) {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => {
            let p = u32::from(ipv6_prefix.min(128));
            if p == 0 {
                0
            } else {
                u128::from(v6) & (u128::MAX << (128 - p))
            }
        }
    }
}

/// The `X-Real-IP` header a trusted backend names its end user with.
pub const X_REAL_IP: http::HeaderName = http::HeaderName::from_static("x-real-ip");

impl ClientIpResolver {
    /// A resolver that believes forwarding headers from `trusted` peers only.
    pub fn new(trusted: Vec<IpNet>) -> Self {
        ClientIpResolver {
            trusted,
            backends: Vec::new(),
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
        }
    }

    /// Counts IPv6 clients by networks of `prefix` bits (`guards.ipv6_prefix`).
    pub fn with_ipv6_prefix(mut self, prefix: u8) -> Self {
        self.ipv6_prefix = prefix;
        self
    }

    /// The counter key of a resolved client ([`client_key`]).
    #[inline]
    pub fn key(&self, ip: IpAddr) -> u128 {
        client_key(ip, self.ipv6_prefix)
    }

    /// Also believes `trusted_backends` about their end users (see [`Self::end_user`]).
    pub fn with_backends(mut self, backends: Vec<IpNet>) -> Self {
        self.backends = backends;
        self
    }

    /// Whether `ip` (a resolved client) is a trusted backend calling on
    /// behalf of its end users.
    #[inline]
    pub fn is_backend(&self, ip: IpAddr) -> bool {
        !self.backends.is_empty() && self.backends.iter().any(|n| n.contains(&ip))
    }

    /// The end user a trusted backend names in `X-Real-IP`: `None` without
    /// the header, `Some(Err)` when it is not one address.
    pub fn real_ip_header(headers: &HeaderMap) -> Option<Result<IpAddr, ()>> {
        let mut values = headers.get_all(X_REAL_IP).iter();
        let first = values.next()?;
        if values.next().is_some() {
            return Some(Err(()));
        }
        Some(parse_client_ip(first.to_str().unwrap_or("")).ok_or(()))
    }

    /// Whether `ip` is a trusted proxy.
    #[inline]
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        !self.trusted.is_empty() && self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The client address of a request that arrived from `peer`.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.is_trusted(peer) {
            return peer;
        }
        self.resolve_forwarded(peer, &Forwarding::scan(headers))
    }

    /// [`Self::resolve`] from a request's forwarding headers already found
    /// (the gateway reads them once for this and the CORS scheme). `peer` is
    /// canonical; an untrusted one is the client, whatever `fwd` holds.
    pub fn resolve_forwarded(&self, peer: IpAddr, fwd: &Forwarding<'_>) -> IpAddr {
        if !self.is_trusted(peer) {
            return peer;
        }
        let mut current = peer;
        if fwd.xff.last.is_some() {
            // Several header lines form one list, in order: walk it from the right.
            for line in fwd.xff.rev(fwd.headers, &X_FORWARDED_FOR) {
                for entry in line.as_bytes().rsplit(|&b| b == b',') {
                    if !self.is_trusted(current) {
                        return current;
                    }
                    // The usual entry is a bare IPv4 address: read it as
                    // bytes; anything else takes the general path.
                    let next = match plain_v4(entry.trim_ascii()) {
                        Some(v4) => Some(IpAddr::V4(v4)),
                        None => std::str::from_utf8(entry).ok().and_then(parse_xff_entry),
                    };
                    match next {
                        Some(ip) => current = ip,
                        None => return current,
                    }
                }
            }
            return current;
        }
        for line in fwd.forwarded.rev(fwd.headers, &http::header::FORWARDED) {
            for element in line.as_bytes().rsplit(|&b| b == b',') {
                if !self.is_trusted(current) {
                    return current;
                }
                match std::str::from_utf8(element).ok().and_then(forwarded_for) {
                    Some(ip) => current = ip,
                    None => return current,
                }
            }
        }
        current
    }
}

/// `X-Forwarded-Proto`, which the CORS scheme is read from.
pub const X_FORWARDED_PROTO: http::HeaderName = http::HeaderName::from_static("x-forwarded-proto");

/// A request's forwarding headers (`X-Forwarded-For`, `Forwarded`,
/// `X-Forwarded-Proto`), found in one pass over its header map: the client
/// IP and the CORS scheme both read them, and four hashed lookups of these
/// names were ~600 instructions per request from a trusted proxy
/// (callgrind). A name sent on several lines is looked up again when walked.
#[derive(Clone, Copy)]
pub struct Forwarding<'a> {
    headers: &'a HeaderMap,
    xff: Lines<'a>,
    forwarded: Lines<'a>,
    proto: Lines<'a>,
}

/// The lines of one header name: the last, and whether there are others.
#[derive(Clone, Copy, Default)]
struct Lines<'a> {
    last: Option<&'a HeaderValue>,
    many: bool,
}

impl<'a> Lines<'a> {
    fn push(&mut self, v: &'a HeaderValue) {
        self.many |= self.last.is_some();
        self.last = Some(v);
    }

    /// Its lines from the last to the first.
    fn rev(
        self,
        headers: &'a HeaderMap,
        name: &http::HeaderName,
    ) -> impl Iterator<Item = &'a HeaderValue> + 'a {
        let (one, all) = if self.many {
            (None, Some(headers.get_all(name).iter().rev()))
        } else {
            (self.last, None)
        };
        one.into_iter().chain(all.into_iter().flatten())
    }
}

impl<'a> Forwarding<'a> {
    /// Finds the forwarding headers of `headers`.
    pub fn scan(headers: &'a HeaderMap) -> Self {
        let mut fwd = Forwarding::none(headers);
        for (name, value) in headers {
            if *name == http::header::FORWARDED {
                fwd.forwarded.push(value);
            } else if *name == X_FORWARDED_FOR {
                fwd.xff.push(value);
            } else if *name == X_FORWARDED_PROTO {
                fwd.proto.push(value);
            }
        }
        fwd
    }

    /// As if the request had none (its peer is not a trusted proxy, whose
    /// headers are not to be read).
    pub fn none(headers: &'a HeaderMap) -> Self {
        Forwarding {
            headers,
            xff: Lines::default(),
            forwarded: Lines::default(),
            proto: Lines::default(),
        }
    }

    /// The last `X-Forwarded-Proto` line.
    pub fn last_proto(&self) -> Option<&'a HeaderValue> {
        self.proto.last
    }

    /// The last `Forwarded` line.
    pub fn last_forwarded(&self) -> Option<&'a HeaderValue> {
        self.forwarded.last
    }
}

/// IPv4-mapped IPv6 addresses are IPv4 clients.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// An end user's address as a backend gives it (`X-Real-IP`, a body's
/// `clientIp`): one IPv4 or IPv6 address, IPv4-mapped read as IPv4.
pub fn parse_client_ip(s: &str) -> Option<IpAddr> {
    parse_node(s.trim().trim_matches('"'))
}

/// A bare dotted-quad IPv4 address as `Ipv4Addr`'s parser reads one (four
/// octets of 1 to 3 digits, none over 255, no leading zero), else `None`, and
/// the caller takes the general path, which gives the same answer for it.
/// `from_utf8`, the Unicode trims and `IpAddr`'s parser were ~500
/// instructions per `X-Forwarded-For` entry (callgrind).
fn plain_v4(s: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut at = 0;
    let mut value: u16 = 0;
    let mut digits = 0;
    for &b in s {
        if b.is_ascii_digit() {
            if digits == 3 || (digits == 1 && value == 0) {
                return None;
            }
            value = value * 10 + u16::from(b - b'0');
            digits += 1;
        } else if b == b'.' && digits > 0 && at < 3 {
            octets[at] = u8::try_from(value).ok()?;
            at += 1;
            value = 0;
            digits = 0;
        } else {
            return None;
        }
    }
    if at != 3 || digits == 0 {
        return None;
    }
    octets[3] = u8::try_from(value).ok()?;
    Some(Ipv4Addr::from(octets))
}

/// One `X-Forwarded-For` entry: an address, possibly `[v6]:port` or `v4:port`.
fn parse_xff_entry(s: &str) -> Option<IpAddr> {
    parse_node(s.trim().trim_matches('"'))
}

fn parse_node(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, _) = rest.split_once(']')?;
        return inner
            .parse::<Ipv6Addr>()
            .ok()
            .map(|v| canonical(IpAddr::V6(v)));
    }
    let (host, port) = s.rsplit_once(':')?;
    if port.bytes().all(|b| b.is_ascii_digit()) {
        return host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4);
    }
    None
}

/// The `for=` of one `Forwarded` element (RFC 7239); `unknown` and obfuscated
/// identifiers are not addresses.
fn forwarded_for(element: &str) -> Option<IpAddr> {
    element.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("for") {
            return None;
        }
        parse_node(v.trim().trim_matches('"'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_keys_group_ipv6_by_prefix_and_never_ipv4() {
        let r = ClientIpResolver::default();
        let key = |s: &str| r.key(s.parse().unwrap());
        assert_eq!(key("2001:db8:1:2:aaaa::1"), key("2001:db8:1:2:bbbb::2"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_ne!(
            key("1.2.3.4"),
            key("1.2.3.5"),
            "IPv4 addresses are never grouped"
        );
        assert_eq!(key("::ffff:1.2.3.4"), key("1.2.3.4"), "IPv4-mapped is IPv4");
        let wide = r.clone().with_ipv6_prefix(48);
        assert_eq!(
            wide.key("2001:db8:1:2::1".parse().unwrap()),
            wide.key("2001:db8:1:3::1".parse().unwrap())
        );
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn r() -> ClientIpResolver {
        ClientIpResolver::new(vec![
            "10.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
        ])
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_ignores_headers() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(r().resolve(ip("8.8.8.8"), &h), ip("8.8.8.8"));
    }

    #[test]
    fn rightmost_untrusted_wins() {
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 5.5.5.5, 10.1.1.1")]);
        assert_eq!(r().resolve(ip("10.0.0.1"), &h), ip("5.5.5.5"));
    }

    #[test]
    fn multiple_header_lines_are_one_list() {
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "5.5.5.5, 10.2.2.2"),
        ]);
        assert_eq!(r().resolve(ip("10.0.0.1"), &h), ip("5.5.5.5"));
    }

    #[test]
    fn garbage_stops_the_walk() {
        let h = headers(&[("x-forwarded-for", "5.5.5.5, garbage")]);
        assert_eq!(r().resolve(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn all_trusted_gives_leftmost_trusted() {
        let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.1.1.1")]);
        assert_eq!(r().resolve(ip("10.0.0.1"), &h), ip("10.9.9.9"));
    }

    #[test]
    fn forwarded_header() {
        let h = headers(&[(
            "forwarded",
            "for=6.6.6.6, for=\"[2001:db8::1]:4711\";proto=https",
        )]);
        assert_eq!(r().resolve(ip("::1"), &h), ip("2001:db8::1"));
        let h = headers(&[("forwarded", "for=unknown")]);
        assert_eq!(r().resolve(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn one_pass_finds_what_lookups_find() {
        let cases: &[&[(&str, &str)]] = &[
            &[],
            &[("x-forwarded-for", "5.5.5.5")],
            &[
                ("x-forwarded-for", "6.6.6.6"),
                ("forwarded", "for=7.7.7.7;proto=http"),
                ("x-forwarded-for", "5.5.5.5, 10.2.2.2"),
                ("x-forwarded-proto", "http"),
                ("x-forwarded-proto", "https"),
            ],
            &[
                ("forwarded", "for=6.6.6.6"),
                ("forwarded", "for=10.3.3.3;proto=https"),
                ("host", "gw.example"),
            ],
            &[("x-forwarded-proto", "https"), ("forwarded", "for=6.6.6.6")],
        ];
        for pairs in cases {
            let h = headers(pairs);
            let fwd = Forwarding::scan(&h);
            let last = |n: &http::HeaderName| h.get_all(n).iter().next_back();
            assert_eq!(fwd.last_proto(), last(&X_FORWARDED_PROTO), "{pairs:?}");
            assert_eq!(
                fwd.last_forwarded(),
                last(&http::header::FORWARDED),
                "{pairs:?}"
            );
            let mut walked: Vec<_> = fwd.xff.rev(&h, &X_FORWARDED_FOR).collect();
            walked.reverse();
            assert!(
                walked
                    .iter()
                    .copied()
                    .eq(h.get_all(&X_FORWARDED_FOR).iter()),
                "{pairs:?}"
            );
            let ten = ip("10.0.0.1");
            assert_eq!(
                r().resolve_forwarded(ten, &fwd),
                r().resolve(ten, &h),
                "{pairs:?}"
            );
            assert_eq!(
                r().resolve_forwarded(ten, &Forwarding::none(&h)),
                ten,
                "{pairs:?}"
            );
        }
    }

    #[test]
    fn plain_v4_reads_what_the_std_parser_reads() {
        let fixed = [
            "1.2.3.4",
            "0.0.0.0",
            "255.255.255.255",
            "256.1.1.1",
            "01.2.3.4",
            "1.2.3.04",
            "1.2.3",
            "1.2.3.4.5",
            "1..3.4",
            ".1.2.3",
            "1.2.3.",
            "1000.1.1.1",
            "",
            "1.2.3.4:80",
        ];
        let mut samples: Vec<String> = fixed.iter().map(|s| s.to_string()).collect();
        // Every string of up to 9 characters over "0", "1", "5", "9" and ".",
        // more or less: a cheap generator, not exhaustive.
        let alphabet = b"0159.";
        let mut n: u64 = 0;
        while samples.len() < 60_000 {
            let mut s = String::new();
            let mut k = n;
            loop {
                s.push(char::from(alphabet[(k % 5) as usize]));
                k /= 5;
                if k == 0 {
                    break;
                }
            }
            samples.push(s);
            n = n
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407)
                >> 35;
            n += samples.len() as u64;
        }
        for o in [
            0u16, 7, 10, 99, 100, 199, 200, 249, 250, 255, 256, 299, 300, 999,
        ] {
            samples.push(format!("10.{o}.1.{o}"));
        }
        for s in &samples {
            let fast = plain_v4(s.as_bytes());
            if let Some(v4) = fast {
                assert_eq!(s.parse::<Ipv4Addr>().ok(), Some(v4), "{s}");
            }
            if s.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
                assert_eq!(fast, s.parse::<Ipv4Addr>().ok(), "{s}");
            }
        }
        let h = headers(&[("x-forwarded-for", " 5.5.5.5 ,\t10.1.1.1")]);
        assert_eq!(r().resolve(ip("10.0.0.1"), &h), ip("5.5.5.5"));
    }

    #[test]
    fn mapped_v4_and_ports() {
        assert_eq!(canonical(ip("::ffff:1.2.3.4")), ip("1.2.3.4"));
        let h = headers(&[("x-forwarded-for", "1.2.3.4:5678")]);
        assert_eq!(r().resolve(ip("10.0.0.1"), &h), ip("1.2.3.4"));
    }
}
