//! The route table compiled for lookups by canonical path, and the
//! classification of a request line against it.

use std::borrow::Cow;
use std::collections::HashMap;

use http::Method;

use super::canonical::{canonical_path, percent_decode};
use super::{default_graphql_ops, default_routes, GraphqlOp, Route};

/// The result of classifying a request line.
#[derive(Debug, Clone, Copy)]
pub enum Class<'a> {
    /// A route of the table.
    Route(&'a Route),
    /// A guarded path with a method the table does not expect.
    WrongMethod(&'a Route),
    /// The path cannot be read unambiguously.
    Ambiguous(&'static str),
    /// Not a guarded route.
    Other,
}

/// The route table, compiled for lookups by canonical path.
#[derive(Debug, Clone)]
pub struct RouteTable {
    /// Keyed by canonical path. The keys come from the configuration only
    /// (a lookup never inserts), so a fast hash without SipHash's flooding
    /// resistance is safe here: a client cannot grow a bucket, only probe
    /// the fixed table.
    by_path: HashMap<String, Route, foldhash::fast::RandomState>,
    graphql: Vec<GraphqlOp>,
}

impl RouteTable {
    /// Compiles a table; later entries with the same path replace earlier ones.
    pub fn new(routes: Vec<Route>, graphql: Vec<GraphqlOp>) -> anyhow::Result<RouteTable> {
        let mut by_path = HashMap::default();
        for mut r in routes {
            let canon = canonical_path(&r.path)
                .map_err(|e| anyhow::anyhow!("route path {:?}: {e}", r.path))?
                .into_owned();
            r.method = r.method.to_ascii_uppercase();
            Method::from_bytes(r.method.as_bytes())
                .map_err(|_| anyhow::anyhow!("route {:?}: bad method {:?}", r.path, r.method))?;
            for f in r.fields.pointers() {
                if !f.starts_with('/') {
                    anyhow::bail!(
                        "route {:?}: field {f:?} must be a JSON pointer starting with '/'",
                        r.path
                    );
                }
            }
            r.path = canon.clone();
            by_path.insert(canon, r);
        }
        Ok(RouteTable { by_path, graphql })
    }

    /// The default table.
    pub fn default_table() -> RouteTable {
        // The defaults are constants: compiling them cannot fail.
        RouteTable::new(default_routes(), default_graphql_ops())
            .unwrap_or_else(|e| unreachable!("default route table is valid: {e}"))
    }

    /// The GraphQL operations judged.
    pub fn graphql_ops(&self) -> &[GraphqlOp] {
        &self.graphql
    }

    /// The routes, for documentation and `poolgate check`.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.by_path.values()
    }

    /// Whether `path`, decoded (again) and canonicalised, is a guarded route.
    fn guarded_when_decoded(&self, path: &str) -> bool {
        canonical_path(path).is_ok_and(|p| self.guarded_loosely(&p))
    }

    /// Whether a canonical path is a guarded route, also once the white
    /// space around each segment is trimmed.
    fn guarded_loosely(&self, canon: &str) -> bool {
        if self.by_path.contains_key(canon) {
            return true;
        }
        if !canon.contains(|c: char| c.is_whitespace()) {
            return false;
        }
        let trimmed: Vec<&str> = canon
            .split('/')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        self.by_path
            .contains_key(format!("/{}", trimmed.join("/")).as_str())
    }

    /// Classifies a request line.
    pub fn classify(&self, method: &Method, path: &str) -> Class<'_> {
        let canon = match canonical_path(path) {
            Ok(c) => c,
            Err(e) => return Class::Ambiguous(e),
        };
        match self.by_path.get(canon.as_ref()) {
            Some(r) if r.method == method.as_str() => Class::Route(r),
            // A GET/HEAD to a guarded POST route cannot log anyone in; refusing
            // it keeps "other" from ever covering a guarded path.
            Some(r) => Class::WrongMethod(r),
            // A path canonical as sent has no `%`, white space or dot segment:
            // none of the second readings below can name a guarded route.
            None if matches!(canon, Cow::Borrowed(_)) => Class::Other,
            None => {
                // A `%` left after one decoding: an upstream that decodes twice
                // reads another path. When that second decoding fails (`%2500`
                // is a NUL byte) or names a guarded route (`%252e%252e`,
                // `%2520`), refuse rather than guess.
                if canon.contains('%') {
                    match canonical_path(&canon) {
                        Err(_) => return Class::Ambiguous("a second decoding of the path fails"),
                        Ok(twice) if self.guarded_loosely(&twice) => {
                            return Class::Ambiguous("double-encoded path of a guarded route")
                        }
                        Ok(_) => {}
                    }
                }
                // A guarded route but for white space around a segment: an
                // upstream that trims it routes it as that route.
                if canon.contains(|c: char| c.is_whitespace()) && self.guarded_loosely(&canon) {
                    return Class::Ambiguous("white space in the path of a guarded route");
                }
                // The once-decoded text too, before dot segments are resolved:
                // in `/api%252Fx/../v2/login/account` the `%` sits in a segment
                // that `..` removes from `canon`, yet an upstream that decodes
                // twice and then resolves dots routes it as the login (found by
                // the `classify` fuzz target).
                if path.contains("%25") {
                    let once = percent_decode(path)
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok());
                    if once.is_some_and(|o| self.guarded_when_decoded(&o)) {
                        return Class::Ambiguous("double-encoded path of a guarded route");
                    }
                }
                Class::Other
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::RouteKind;

    fn t() -> RouteTable {
        RouteTable::default_table()
    }

    fn kind(method: &Method, path: &str) -> Option<RouteKind> {
        match t().classify(method, path) {
            Class::Route(r) => Some(r.kind),
            _ => None,
        }
    }

    #[test]
    fn spellings_of_a_login_are_a_login() {
        for p in [
            "/api/v2/login/account",
            "/api/v2/login/account/",
            "//api//v2/login/account",
            "/API/V2/Login/Account",
            "/api/v2/%6Cogin/account",
            "/api/v2/login%2Faccount",
            "/api/v2/x/../login/account",
            "/api/v2/./login/account",
            "/api/v2/login/account;jsessionid=1",
            "/api\\v2\\login\\account",
        ] {
            assert_eq!(kind(&Method::POST, p), Some(RouteKind::Login), "{p}");
        }
    }

    #[test]
    fn ambiguous_and_wrong_method() {
        let table = t();
        assert!(matches!(
            table.classify(&Method::POST, "/api/v2/login/%zz"),
            Class::Ambiguous(_)
        ));
        assert!(matches!(
            table.classify(&Method::POST, "/../api"),
            Class::Ambiguous(_)
        ));
        assert!(matches!(
            table.classify(&Method::POST, "/api/v2/login/%2561ccount"),
            Class::Ambiguous(_)
        ));
        assert!(matches!(
            table.classify(&Method::POST, "/api/v2/login/%00account"),
            Class::Ambiguous(_)
        ));
        // A second decoding that fails, or that names a guarded route, is
        // ambiguous whatever the route.
        for p in [
            "/api/v2/users/%2500",
            "/api/v2/%252e%252e/v2/login/account",
            "/api/v2/login/account%2520",
            "/api/v2/login/%2520account",
            "/api/v2/login/account%20",
        ] {
            assert!(
                matches!(table.classify(&Method::POST, p), Class::Ambiguous(_)),
                "{p}"
            );
        }
        assert!(matches!(
            table.classify(&Method::GET, "/api/v2/users/me%20too"),
            Class::Other
        ));
        assert!(matches!(
            table.classify(&Method::GET, "/api/v2/login/account"),
            Class::WrongMethod(_)
        ));
        assert!(matches!(
            table.classify(&Method::GET, "/api/v2/users/me"),
            Class::Other
        ));
    }
}
