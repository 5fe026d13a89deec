//! Inputs the fuzz targets (`fuzz/`) found, replayed as ordinary tests so a
//! fix cannot quietly regress without `cargo fuzz`. The raw fuzzer inputs are
//! kept under `fuzz/regressions/<target>/` for `cargo fuzz run <target> FILE`.

use http::Method;
use poolgate::routes::{Class, RouteTable};

fn classify(path: &str) -> String {
    match RouteTable::default_table().classify(&Method::POST, path) {
        Class::Route(r) => format!("route {}", r.path),
        Class::WrongMethod(r) => format!("wrong method {}", r.path),
        Class::Ambiguous(_) => "ambiguous".into(),
        Class::Other => "other".into(),
    }
}

/// `classify` target, `fuzz/regressions/classify/crash-0e32d9aa...`: a
/// double-encoded slash inside a segment that `..` removes. Decoded once and
/// canonicalised, the `%` vanished with the segment and the path was "other";
/// an upstream that decodes twice and then resolves dot segments routes it as
/// `/api/v3/update-password`, so the gateway would not have judged it.
#[test]
fn double_encoded_segment_removed_by_dot_dot_is_ambiguous() {
    assert_eq!(
        classify("/api%252Fx/../v3/update-password"),
        "ambiguous",
        "decoded twice this is a guarded route"
    );
    // The same hiding place in front of a login.
    assert_eq!(classify("/api%252Fx/../v2/login/account"), "ambiguous");
    assert_eq!(classify("/api/v2%252Fx/../login/account"), "ambiguous");
    // Once encoded it is simply the route, and a `%25` whose second
    // decoding reads as another harmless path stays "other"...
    assert_eq!(
        classify("/api%2Fx/../v3/update-password"),
        "route /api/v3/update-password"
    );
    assert_eq!(classify("/static%252Fx/../app.js"), "other");
    // ...but one whose second decoding fails cannot be read the way every
    // upstream reads it: refused.
    assert_eq!(classify("/api/v2/users/%25me"), "ambiguous");
}

/// `classify` target, `fuzz/regressions/classify/crash-74ceba47...`: a path
/// whose second decoding fails (`i%25` is `/i%` once decoded) is refused as
/// ambiguous now, whatever route it might be.
#[test]
fn a_path_whose_second_decoding_fails_is_ambiguous() {
    assert_eq!(classify("i%25"), "ambiguous");
    assert_eq!(classify("/api/v2/users/%2500"), "ambiguous");
}
