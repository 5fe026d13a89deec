//! Request classification: `RouteTable::classify` of arbitrary methods and
//! paths, and `canonical_path`.
//!
//! The path is the attacker's, and classification is what decides whether a
//! request is judged at all: a spelling of a login path that classifies as
//! "other" would skip every guard. Two inputs: a free-form path, and a
//! guarded route of the default table respelled by fuzzer-chosen rewrites
//! that an upstream may route the same way (case, percent-encoding, extra
//! slashes, dot segments, matrix parameters, backslashes).

#![no_main]

use arbitrary::Arbitrary;
use http::Method;
use libfuzzer_sys::fuzz_target;
use poolgate::routes::{canonical_path, default_routes, percent_decode, Class, RouteTable};

#[derive(Arbitrary, Debug)]
struct Input {
    method: u8,
    free: String,
    route: u8,
    rewrites: Vec<Rewrite>,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Rewrite {
    /// Upper-case the byte at this position.
    Upper(u16),
    /// Percent-encode the byte at this position once.
    Encode(u16),
    /// Double a slash.
    DoubleSlash(u16),
    /// Insert `/.` after a slash.
    Dot(u16),
    /// Insert `/x/..` after a slash.
    DotDot(u16),
    /// Add `;jsessionid=1` before a slash (or at the end).
    Matrix(u16),
    /// Write a slash as a backslash.
    Backslash(u16),
    /// A trailing slash.
    Trailing,
}

const METHODS: &[&str] = &["POST", "GET", "HEAD", "OPTIONS", "PUT", "post", "PATCH"];

fn slashes(p: &str) -> Vec<usize> {
    p.bytes()
        .enumerate()
        .filter(|&(_, b)| b == b'/')
        .map(|(i, _)| i)
        .collect()
}

fn nth<T: Copy>(v: &[T], n: u16) -> Option<T> {
    (!v.is_empty()).then(|| v[usize::from(n) % v.len()])
}

/// Applies one rewrite. Encoded bytes are never rewritten again, so every
/// result decodes (once) to a spelling of the route.
fn apply(p: &mut String, r: Rewrite) {
    // Positions of plain route characters (letters, digits, `-`, `_`, `/`):
    // not inside a `%XX` escape or a matrix parameter.
    let plain: Vec<usize> = {
        let b = p.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        let mut in_matrix = false;
        while i < b.len() {
            match b[i] {
                b'%' => i += 3,
                b';' => {
                    in_matrix = true;
                    i += 1;
                }
                b'/' | b'\\' => {
                    in_matrix = false;
                    out.push(i);
                    i += 1;
                }
                _ => {
                    if !in_matrix {
                        out.push(i);
                    }
                    i += 1;
                }
            }
        }
        out
    };
    let slash: Vec<usize> = slashes(p);
    match r {
        Rewrite::Upper(n) => {
            if let Some(i) = nth(&plain, n) {
                let c = p.as_bytes()[i];
                if c.is_ascii_lowercase() {
                    p.replace_range(i..=i, &(c.to_ascii_uppercase() as char).to_string());
                }
            }
        }
        Rewrite::Encode(n) => {
            if let Some(i) = nth(&plain, n) {
                let c = p.as_bytes()[i];
                if c != b'\\' {
                    p.replace_range(i..=i, &format!("%{c:02X}"));
                }
            }
        }
        Rewrite::DoubleSlash(n) => {
            if let Some(i) = nth(&slash, n) {
                p.insert(i, '/');
            }
        }
        Rewrite::Dot(n) => {
            if let Some(i) = nth(&slash, n) {
                p.insert_str(i, "/.");
            }
        }
        Rewrite::DotDot(n) => {
            if let Some(i) = nth(&slash, n) {
                p.insert_str(i, "/x/..");
            }
        }
        Rewrite::Matrix(n) => {
            // Before a slash that ends a segment (not the leading one), or at the end.
            let ends: Vec<usize> = slash.iter().copied().filter(|&i| i > 0).collect();
            match nth(&ends, n) {
                Some(i) if n % 2 == 0 => p.insert_str(i, ";jsessionid=1"),
                _ => p.push_str(";v=2"),
            }
        }
        Rewrite::Backslash(n) => {
            if let Some(i) = nth(&slash, n) {
                if i > 0 {
                    p.replace_range(i..=i, "\\");
                }
            }
        }
        Rewrite::Trailing => p.push('/'),
    }
}

fuzz_target!(|input: Input| {
    let table = RouteTable::default_table();
    let method = Method::from_bytes(METHODS[usize::from(input.method) % METHODS.len()].as_bytes())
        .unwrap_or(Method::POST);

    // Free-form: no panic, and the answer agrees with the canonical form.
    let class = table.classify(&method, &input.free);
    match canonical_path(&input.free) {
        Ok(canon) => {
            let guarded = table.routes().find(|r| r.path == canon);
            match (guarded, class) {
                (Some(r), Class::Route(hit)) => {
                    assert_eq!(hit.path, r.path);
                    assert_eq!(hit.method, method.as_str());
                }
                (Some(r), Class::WrongMethod(hit)) => {
                    assert_eq!(hit.path, r.path);
                    assert_ne!(hit.method, method.as_str());
                }
                (Some(r), other) => {
                    panic!(
                        "{:?} normalises to guarded {} but is {other:?}",
                        input.free, r.path
                    )
                }
                (None, Class::Route(r) | Class::WrongMethod(r)) => {
                    panic!("{:?} is not {} yet classified as it", input.free, r.path)
                }
                (None, Class::Ambiguous(_)) => {
                    // A decodable path is refused only when a second decoding
                    // fails, or when it names a guarded route once decoded
                    // again (from its canonical or its once-decoded form) or
                    // once the white space around its segments is trimmed.
                    let once = String::from_utf8(percent_decode(&input.free).expect("decodes"))
                        .expect("UTF-8");
                    let loosely = |p: &str| {
                        let segs: Vec<&str> = p
                            .split('/')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .collect();
                        let trimmed = format!("/{}", segs.join("/"));
                        table.routes().any(|r| r.path == p || r.path == trimmed)
                    };
                    let guarded_twice = |p: &str| canonical_path(p).is_ok_and(|t| loosely(&t));
                    let second_fails = canon.contains('%') && canonical_path(&canon).is_err();
                    assert!(
                        second_fails
                            || guarded_twice(&canon)
                            || guarded_twice(&once)
                            || loosely(&canon),
                        "{:?}",
                        input.free
                    );
                }
                (None, Class::Other) => {}
            }
            // The canonical form is canonical: without `%` left, it is a fixed point.
            if !canon.contains('%') {
                assert_eq!(canonical_path(&canon).ok().as_deref(), Some(canon.as_ref()));
                assert!(canon.starts_with('/'));
                assert!(canon.len() == 1 || !canon.ends_with('/'));
                assert!(!canon.contains("//") && !canon.contains('\\') && !canon.contains(';'));
            }
        }
        Err(_) => assert!(matches!(class, Class::Ambiguous(_)), "{:?}", input.free),
    }

    // A respelled guarded route is still that route.
    let routes = default_routes();
    let route = &routes[usize::from(input.route) % routes.len()];
    let mut path = route.path.clone();
    for r in input.rewrites.iter().take(12) {
        apply(&mut path, *r);
    }
    let route_method = Method::from_bytes(route.method.as_bytes()).expect("table method");
    match table.classify(&route_method, &path) {
        Class::Route(hit) => assert_eq!(hit.path, route.path, "{path:?}"),
        other => panic!(
            "{path:?} (a spelling of {}) classified as {other:?}",
            route.path
        ),
    }
    // Encoding the `%` of an escape once more never makes it "other": it is
    // refused as ambiguous, or still the route when the escape sat in a
    // segment that `..` removes.
    if let Some(i) = path.find('%') {
        let mut twice = path.clone();
        twice.replace_range(i..=i, "%25");
        match table.classify(&route_method, &twice) {
            Class::Ambiguous(_) => {}
            Class::Route(hit) => assert_eq!(hit.path, route.path, "{twice:?}"),
            other => panic!("{twice:?} double-encodes {} yet is {other:?}", route.path),
        }
    }
});
