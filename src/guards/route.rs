//! Guard `route`: requests refused for their path or method before anything
//! else is read — a path that spells a guarded route ambiguously (400), a
//! guarded route called with the wrong method (405).

use http::StatusCode;

use super::{Guard, Rejection};
use crate::routes::Class;

/// Reasons of guard `route`.
pub const REASONS: &[&str] = &["ambiguous_path", "method_not_allowed"];

/// The refusal a request's class earns, if any.
pub fn check(class: &Class<'_>) -> Option<Rejection> {
    match class {
        Class::Ambiguous(why) => Some(Rejection::http(
            Guard::Route,
            "ambiguous_path",
            StatusCode::BAD_REQUEST,
            format!("request path is ambiguous: {why}"),
        )),
        Class::WrongMethod(r) => Some(Rejection::http(
            Guard::Route,
            "method_not_allowed",
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} only accepts {}", r.path, r.method),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::RouteTable;
    use http::Method;

    #[test]
    fn wrong_methods_and_ambiguous_paths_are_refused_by_route() {
        let t = RouteTable::default_table();
        let get = t.classify(&Method::GET, "/api/v2/login/account");
        let r = check(&get).expect("GET on a login route is refused");
        assert_eq!(
            (r.guard, r.reason, r.code),
            (Guard::Route, "method_not_allowed", 405)
        );
        assert_eq!(r.message, "/api/v2/login/account only accepts POST");
        let post = t.classify(&Method::POST, "/api/v2/login/account");
        assert!(check(&post).is_none());
        let odd = t.classify(&Method::POST, "/api/v2/login/%zz");
        let r = check(&odd).expect("an undecodable path is refused");
        assert_eq!(
            (r.guard, r.reason, r.code),
            (Guard::Route, "ambiguous_path", 400)
        );
    }
}
