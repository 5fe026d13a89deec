//! The compiled form of `allowedOrigins`.
//!
//! Authing's rules: one origin per line; an empty list allows every origin; a
//! `*` wildcard stands only for the leftmost label (`https://*.sample.com`); an
//! entry carrying a query or fragment is ignored as a whole; scheme, host and
//! port must match exactly. Entries are indexed by host so that a lookup costs
//! one or two hash probes whatever the list's length.

use std::collections::{HashMap, HashSet};

/// The table is built from the pool's configuration, never from requests, so
/// a fast hash is safe here (no attacker chooses the keys that are inserted).
type Fast = foldhash::fast::RandomState;

/// Matches request `Origin` values against the pool's `allowedOrigins`.
#[derive(Debug, Clone, Default)]
pub struct OriginMatcher {
    allow_all: bool,
    /// host -> (scheme, port) pairs allowed exactly.
    exact: HashMap<Box<str>, Vec<(Scheme, u16)>, Fast>,
    /// parent domain -> (scheme, port) pairs allowed for any one label below it.
    wildcard: HashMap<Box<str>, Vec<(Scheme, u16)>, Fast>,
    /// The exact entries spelt the way browsers send them (`https://h`,
    /// `https://h:8443`, lowercase): a request's `Origin` found here is
    /// allowed without parsing it. Each string parses to an entry of
    /// `exact`, so this only answers sooner, never differently.
    verbatim: HashSet<Box<str>, Fast>,
    entries: Vec<String>,
}

/// A web origin's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `http`
    Http,
    /// `https`
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A parsed origin: scheme, lowercase host (possibly `*.`-prefixed), port.
#[derive(Debug, PartialEq, Eq)]
struct Origin<'a> {
    scheme: Scheme,
    host: std::borrow::Cow<'a, str>,
    port: u16,
}

/// Why an `allowedOrigins` line was skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedOrigin {
    /// The line as configured.
    pub line: String,
    /// Why it is not used.
    pub reason: &'static str,
}

impl OriginMatcher {
    /// Compiles the newline-separated list; returns the matcher and the lines it skipped.
    ///
    /// ```
    /// use poolgate::policy::origins::OriginMatcher;
    /// let (m, skipped) = OriginMatcher::compile("https://app.sample.com\nhttps://*.sample.com\nhttps://x.io?a=1");
    /// assert!(m.allows("https://app.sample.com"));
    /// assert!(m.allows("https://eu.sample.com"));
    /// assert!(!m.allows("https://sample.com.evil.io"));
    /// assert_eq!(skipped.len(), 1); // a line with a query is ignored as a whole
    /// ```
    pub fn compile(list: &str) -> (OriginMatcher, Vec<SkippedOrigin>) {
        let mut m = OriginMatcher::default();
        let mut skipped = Vec::new();
        let mut had_lines = false;
        for raw in list.split(['\n', '\r']) {
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            had_lines = true;
            if line == "*" {
                m.allow_all = true;
                m.entries.push(line.to_string());
                continue;
            }
            if line.contains('?') || line.contains('#') {
                skipped.push(SkippedOrigin {
                    line: line.to_string(),
                    reason: "carries a query or fragment",
                });
                continue;
            }
            let Some(o) = parse_origin(line.trim_end_matches('/'), true) else {
                skipped.push(SkippedOrigin {
                    line: line.to_string(),
                    reason: "not an origin (scheme://host[:port], `*.` only as the first label)",
                });
                continue;
            };
            m.entries.push(line.to_string());
            let (map, host) = match o.host.strip_prefix("*.") {
                Some(parent) => (&mut m.wildcard, parent.to_string()),
                None => {
                    let scheme = match o.scheme {
                        Scheme::Http => "http",
                        Scheme::Https => "https",
                    };
                    m.verbatim
                        .insert(format!("{scheme}://{}:{}", o.host, o.port).into_boxed_str());
                    if o.port == o.scheme.default_port() {
                        m.verbatim
                            .insert(format!("{scheme}://{}", o.host).into_boxed_str());
                    }
                    (&mut m.exact, o.host.into_owned())
                }
            };
            let v = map.entry(host.into_boxed_str()).or_default();
            if !v.contains(&(o.scheme, o.port)) {
                v.push((o.scheme, o.port));
            }
        }
        // An empty list is Authing's "every origin". A list whose every line was
        // skipped is not empty: it stays closed (fail safe), and `check` reports it.
        if !had_lines {
            m.allow_all = true;
        }
        (m, skipped)
    }

    /// Whether every origin is allowed (the list is empty, or `*`).
    pub fn allows_all(&self) -> bool {
        self.allow_all
    }

    /// The configured entries in use.
    pub fn entries(&self) -> &[String] {
        &self.entries
    }

    /// Whether a request's `Origin` header value is allowed.
    pub fn allows(&self, origin: &str) -> bool {
        if self.allow_all {
            return true;
        }
        if self.verbatim.contains(origin) {
            return true;
        }
        let Some(o) = parse_origin(origin, false) else {
            return false;
        };
        let hit = |v: Option<&Vec<(Scheme, u16)>>| {
            v.is_some_and(|v| v.iter().any(|&(s, p)| s == o.scheme && p == o.port))
        };
        if hit(self.exact.get(o.host.as_ref())) {
            return true;
        }
        match o.host.split_once('.') {
            Some((label, parent)) if !label.is_empty() => hit(self.wildcard.get(parent)),
            _ => false,
        }
    }
}

/// Parses `scheme://host[:port]`. With `pattern`, the host may start with `*.`.
fn parse_origin(s: &str, pattern: bool) -> Option<Origin<'_>> {
    let (scheme, rest) = s.split_once("://")?;
    let scheme = if scheme.eq_ignore_ascii_case("https") {
        Scheme::Https
    } else if scheme.eq_ignore_ascii_case("http") {
        Scheme::Http
    } else {
        return None;
    };
    if rest.is_empty()
        || rest
            .bytes()
            .any(|b| matches!(b, b'/' | b'@' | b'?' | b'#' | b' ' | b'\\'))
    {
        return None;
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (inner, after) = v6.split_once(']')?;
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return None;
        }
        let host_len = inner.len() + 2;
        (&rest[..host_len], parse_port(after, scheme)?)
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h, parse_port_num(p)?),
            None => (rest, scheme.default_port()),
        }
    };
    if host.is_empty() {
        return None;
    }
    let labels_ok = |h: &str| {
        h.starts_with('[')
            || h.split('.').all(|l| {
                !l.is_empty()
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            })
    };
    let checked = match host.strip_prefix("*.") {
        Some(parent) if pattern => labels_ok(parent) && !parent.is_empty(),
        _ => labels_ok(host),
    };
    if !checked {
        return None;
    }
    let host = if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    };
    Some(Origin { scheme, host, port })
}

fn parse_port(after: &str, scheme: Scheme) -> Option<u16> {
    match after {
        "" => Some(scheme.default_port()),
        p => parse_port_num(p.strip_prefix(':')?),
    }
}

fn parse_port_num(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(list: &str) -> OriginMatcher {
        OriginMatcher::compile(list).0
    }

    #[test]
    fn empty_allows_all() {
        assert!(m("").allows("https://evil.example"));
        assert!(m("\n  \n").allows_all());
        assert!(m("*").allows("http://x.y"));
    }

    #[test]
    fn exact_scheme_host_port() {
        let o = m("https://app.sample.com\nhttp://localhost:3000");
        assert!(o.allows("https://app.sample.com"));
        assert!(o.allows("https://APP.sample.com"));
        assert!(o.allows("https://app.sample.com:443"));
        assert!(!o.allows("http://app.sample.com"));
        assert!(!o.allows("https://app.sample.com:8443"));
        assert!(!o.allows("https://app.sample.com.evil.com"));
        assert!(!o.allows("https://evilapp.sample.com"));
        assert!(o.allows("http://localhost:3000"));
        assert!(!o.allows("http://localhost"));
        assert!(!o.allows("null"));
        assert!(!o.allows(""));
    }

    #[test]
    fn wildcard_one_label() {
        let o = m("https://*.sample.com");
        assert!(o.allows("https://a.sample.com"));
        assert!(!o.allows("https://sample.com"));
        assert!(!o.allows("https://a.b.sample.com"));
        assert!(!o.allows("https://asample.com"));
        assert!(!o.allows("https://a.sample.com.evil.io"));
        assert!(!o.allows("http://a.sample.com"));
        assert!(!o.allows("https://.sample.com"));
    }

    #[test]
    fn query_or_fragment_lines_are_skipped() {
        let (o, skipped) =
            OriginMatcher::compile("https://a.com?x=1\nhttps://b.com#f\nhttps://c.com");
        assert_eq!(skipped.len(), 2);
        assert!(!o.allows("https://a.com"));
        assert!(o.allows("https://c.com"));
    }

    #[test]
    fn only_bad_lines_is_not_allow_all() {
        // A list that had entries but none usable must not silently open CORS to all.
        let (o, skipped) = OriginMatcher::compile("https://a.com?x=1");
        assert_eq!(skipped.len(), 1);
        assert!(!o.allows_all());
        assert!(!o.allows("https://a.com"));
    }

    #[test]
    fn ipv6_and_trailing_slash() {
        let o = m("http://[::1]:8080\nhttps://x.com/");
        assert!(o.allows("http://[::1]:8080"));
        assert!(o.allows("https://x.com"));
    }

    #[test]
    fn the_verbatim_set_only_answers_what_parsing_would() {
        let o = m("https://App.Sample.com\nhttp://x.io:8080\nhttps://*.w.io\nhttp://[::1]");
        for v in &o.verbatim {
            let p = parse_origin(v, false).unwrap();
            let ports = o.exact.get(p.host.as_ref()).unwrap();
            assert!(ports.contains(&(p.scheme, p.port)), "{v}");
        }
        assert!(o.verbatim.contains("https://app.sample.com"));
        assert!(o.verbatim.contains("https://app.sample.com:443"));
        assert!(o.verbatim.contains("http://x.io:8080"));
        assert!(!o.verbatim.contains("http://x.io"));
        // Spellings outside the set still go through parsing, as before.
        assert!(o.allows("HTTPS://APP.sample.com"));
        assert!(o.allows("http://[::1]:80"));
        assert!(!o.allows("http://x.io"));
        assert!(o.allows("https://a.w.io"));
    }
}
