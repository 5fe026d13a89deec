//! `allowedOrigins` matching: `OriginMatcher::compile` of an arbitrary list,
//! `allows` of arbitrary `Origin` values.
//!
//! The `Origin` header is the attacker's; the matcher decides whether a
//! credentialed cross-site request is answered. Besides "no panic", every
//! answer is checked against a small reference written from the rules in
//! docs/enforcement.md, "CORS" (scheme, host and port agree with an
//! entry; `*.` is exactly one leftmost label), and against properties that
//! need no reference at all.

#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use poolgate::policy::origins::OriginMatcher;

#[derive(Arbitrary, Debug)]
struct Input {
    /// Lines built from parts likely to collide, so hits are common.
    lines: Vec<Line>,
    /// A free-form list appended to them.
    extra: String,
    origins: Vec<Candidate>,
}

#[derive(Arbitrary, Debug)]
struct Line {
    scheme: u8,
    wildcard: bool,
    labels: Vec<u8>,
    port: Option<u16>,
    trailing: u8,
}

#[derive(Arbitrary, Debug)]
enum Candidate {
    Built(Line),
    Free(String),
}

const LABELS: &[&str] = &[
    "sample",
    "com",
    "evil",
    "a",
    "b",
    "APP",
    "x-y",
    "sample.com",
    "",
    "*",
    "localhost",
    "[::1]",
];

fn scheme(n: u8) -> &'static str {
    ["http", "https", "HTTPS", "ftp", "", "http:"][usize::from(n) % 6]
}

fn render(l: &Line, pattern: bool) -> String {
    let mut host: Vec<&str> = l
        .labels
        .iter()
        .take(4)
        .map(|&i| LABELS[usize::from(i) % LABELS.len()])
        .collect();
    if pattern && l.wildcard {
        host.insert(0, "*");
    }
    let mut s = format!("{}://{}", scheme(l.scheme), host.join("."));
    if let Some(p) = l.port {
        s.push_str(&format!(":{p}"));
    }
    s.push_str(["", "/", "?q=1", "#f", " ", "/path"][usize::from(l.trailing) % 6]);
    s
}

/// The reference: (scheme, lowercase host, port) of a well-formed origin.
fn parts(s: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = s.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let (host, port) = if rest.starts_with('[') {
        let end = rest.find(']')?;
        rest[1..end].parse::<std::net::Ipv6Addr>().ok()?;
        let port = match &rest[end + 1..] {
            "" => default,
            p => port_number(p.strip_prefix(':')?)?,
        };
        (&rest[..=end], port)
    } else {
        let (h, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (h, port_number(p)?),
            None => (rest, default),
        };
        // Host names as browsers send them: dot-separated non-empty labels of
        // letters, digits, `-` and `_` (a `*.` prefix only in an entry).
        let name = h.strip_prefix("*.").unwrap_or(h);
        let ok = name.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
        if !ok {
            return None;
        }
        (h, port)
    };
    Some((scheme, host.to_ascii_lowercase(), port))
}

/// A port: one to five decimal digits (no sign, no space), at most 65535.
fn port_number(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse().ok()
}

/// Whether the reference says `origin` is covered by `entry` (a line in use).
fn covered(entry: &str, origin: &str) -> bool {
    let entry = entry.trim_end_matches('/');
    let (Some((es, eh, ep)), Some((os, oh, op))) = (parts(entry), parts(origin)) else {
        return false;
    };
    // A `*` is a pattern, never part of a real origin.
    if es != os || ep != op || oh.contains('*') {
        return false;
    }
    match eh.strip_prefix("*.") {
        // One label, not empty, no dot, then exactly the parent.
        Some(parent) => oh
            .strip_suffix(parent)
            .and_then(|l| l.strip_suffix('.'))
            .is_some_and(|l| !l.is_empty() && !l.contains('.')),
        None => eh == oh,
    }
}

fuzz_target!(|input: Input| {
    let mut list: Vec<String> = input.lines.iter().map(|l| render(l, true)).collect();
    list.push(input.extra.clone());
    let text = list.join("\n");
    let (m, skipped) = OriginMatcher::compile(&text);
    let nonblank = text.split(['\n', '\r']).any(|l| !l.trim().is_empty());
    // Empty means "allow all" (Authing's rule); a list of only unusable lines does not.
    assert_eq!(
        m.allows_all(),
        !nonblank || m.entries().iter().any(|e| e == "*")
    );
    // Lines with a query or fragment are never in use.
    assert!(m
        .entries()
        .iter()
        .all(|e| !e.contains('?') && !e.contains('#')));
    assert!(skipped.iter().all(|s| !m.entries().contains(&s.line)));

    // Every exact entry allows itself.
    for e in m.entries() {
        if e != "*" && !e.contains('*') {
            assert!(
                m.allows(e.trim_end_matches('/')),
                "{e:?} does not allow itself"
            );
        }
    }

    let mut reversed: Vec<&str> = text.split('\n').collect();
    reversed.reverse();
    let (rev, _) = OriginMatcher::compile(&reversed.join("\n"));
    let (wider, _) = OriginMatcher::compile(&format!("{text}\nhttps://added.example"));

    for c in &input.origins {
        let origin = match c {
            Candidate::Built(l) => render(l, false),
            Candidate::Free(s) => s.clone(),
        };
        let allowed = m.allows(&origin);
        if !m.allows_all() {
            // Allowed exactly when some entry covers it.
            let reference = m.entries().iter().any(|e| covered(e, &origin));
            assert_eq!(
                allowed,
                reference,
                "origin {origin:?} against {:?}",
                m.entries()
            );
        }
        // Order of lines does not matter; adding a line never takes access away
        // (the list was not empty, so it was not "allow all" by emptiness).
        assert_eq!(rev.allows(&origin), allowed, "{origin:?}");
        if allowed && nonblank {
            assert!(wider.allows(&origin), "{origin:?}");
        }
        // Scheme and host are case-insensitive.
        assert_eq!(
            m.allows(&origin.to_ascii_lowercase()),
            allowed,
            "{origin:?}"
        );
    }
});
