//! Request classification: which route of the table a request is, judged on
//! the path the upstream will route on.
//!
//! Paths are compared in a canonical form (percent-decoded, `\` as `/`,
//! repeated slashes and trailing slash dropped, dot segments resolved, matrix
//! parameters removed, lowercase), so that no spelling the upstream might
//! route as a login lets it pass as "other". A path that cannot be decoded, or
//! that only matches after a second decoding, is refused as ambiguous.

use std::borrow::Cow;
use std::collections::HashMap;

use http::Method;
use serde::Deserialize;

/// What a route is, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// A login attempt.
    Login,
    /// A registration.
    Register,
    /// A password set or reset.
    Password,
    /// Authing v2's graphic captcha (answered by poolgate).
    CaptchaV2,
    /// Authing v3's captcha (answered by poolgate).
    CaptchaV3,
    /// GraphQL endpoint: the operation in the body decides.
    Graphql,
    /// Anything else: forwarded unjudged.
    Other,
}

impl RouteKind {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteKind::Login => "login",
            RouteKind::Register => "register",
            RouteKind::Password => "password",
            RouteKind::CaptchaV2 | RouteKind::CaptchaV3 => "captcha",
            RouteKind::Graphql => "graphql",
            RouteKind::Other => "other",
        }
    }
}

/// Which answer shape the client expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Flavor {
    /// `{code, message, data}` (v2 REST and a team's own service).
    V2,
    /// `{statusCode, message, apiCode, data}` (v3).
    V3,
    /// `{data: null, errors: [{message: {code, message}}]}`.
    Graphql,
}

/// How an identifier's kind is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdKind {
    /// An email address.
    Email,
    /// A phone number.
    Phone,
    /// A username.
    Username,
    /// Guess from the value (`account` fields): `@` is email, digits are phone.
    Auto,
}

/// Where a guarded request carries its fields (JSON pointers into the body;
/// form bodies are read as a flat object).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fields {
    /// Candidate identifier locations, tried in order.
    #[serde(default)]
    pub identifier: Vec<IdField>,
    /// The password (new password for set/reset).
    #[serde(default)]
    pub password: Option<String>,
    /// The captcha answer.
    #[serde(default)]
    pub captcha_code: Option<String>,
    /// The captcha token (v3); v2 clients use the captcha cookie instead.
    #[serde(default)]
    pub captcha_token: Option<String>,
    /// Where the client says how the password is encrypted (`none`, `rsa`, `sm2`).
    #[serde(default)]
    pub encrypt_type: Option<String>,
}

/// One identifier location.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdField {
    /// JSON pointer.
    pub pointer: String,
    /// The identifier's kind.
    pub kind: IdKind,
}

/// One entry of the route table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// HTTP method (guarded routes: other methods on the path are refused).
    #[serde(default = "post")]
    pub method: String,
    /// The path, in canonical form (lowercase, no trailing slash).
    pub path: String,
    /// What it is.
    pub kind: RouteKind,
    /// The answer shape.
    #[serde(default = "v2")]
    pub flavor: Flavor,
    /// Where its fields are.
    #[serde(default, flatten)]
    pub fields: Fields,
}

fn post() -> String {
    "POST".into()
}
fn v2() -> Flavor {
    Flavor::V2
}

/// A GraphQL mutation the guards judge.
#[derive(Debug, Clone)]
pub struct GraphqlOp {
    /// Field name, e.g. `loginByEmail`.
    pub name: &'static str,
    /// What it is.
    pub kind: RouteKind,
    /// Where its fields are, relative to the `input` argument's value.
    pub fields: Fields,
}

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

impl Class<'_> {
    /// Whether the request is not a guarded route.
    pub fn is_other(&self) -> bool {
        matches!(self, Class::Other)
    }
}

/// The route table, compiled for lookups by canonical path.
#[derive(Debug, Clone)]
pub struct RouteTable {
    by_path: HashMap<String, Route>,
    graphql: Vec<GraphqlOp>,
}

fn id(pointer: &str, kind: IdKind) -> IdField {
    IdField {
        pointer: pointer.to_string(),
        kind,
    }
}

fn fields(ids: &[(&str, IdKind)], password: Option<&str>, captcha: bool) -> Fields {
    Fields {
        identifier: ids.iter().map(|&(p, k)| id(p, k)).collect(),
        password: password.map(str::to_string),
        captcha_code: captcha.then(|| "/captchaCode".to_string()),
        captcha_token: None,
        encrypt_type: None,
    }
}

fn route(path: &str, kind: RouteKind, flavor: Flavor, fields: Fields) -> Route {
    Route {
        method: "POST".into(),
        path: path.into(),
        kind,
        flavor,
        fields,
    }
}

/// The default table: how Authing's official SDKs call the service
/// (`../shared/AUTHING-FACTS.md`; sources: Authing/authing-js-sdk
/// `src/lib/authentication/AuthenticationClient.ts` and `src/types/graphql.v2.ts`,
/// Authing/Guard `packages/guard-core-v4`, Authing/authing-node-sdk
/// `src/AuthenticationClient.ts` and `src/models/SignInOptionsDto.ts`).
pub fn default_routes() -> Vec<Route> {
    use IdKind::*;
    use RouteKind::*;
    let v2 = Flavor::V2;
    let mut r = vec![
        // v2 REST logins.
        route(
            "/api/v2/login/account",
            Login,
            v2,
            fields(&[("/account", Auto)], Some("/password"), true),
        ),
        route(
            "/api/v2/login/phone-code",
            Login,
            v2,
            fields(&[("/phone", Phone)], None, true),
        ),
        route(
            "/api/v2/login/email-code",
            Login,
            v2,
            fields(&[("/email", Email)], None, true),
        ),
        route(
            "/api/v2/login/ldap",
            Login,
            v2,
            fields(&[("/username", Username)], Some("/password"), true),
        ),
        route(
            "/api/v2/login/ad",
            Login,
            v2,
            fields(&[("/username", Username)], Some("/password"), true),
        ),
        route(
            "/api/v2/login/ad-all-in-one",
            Login,
            v2,
            fields(&[("/username", Username)], Some("/password"), true),
        ),
        // v2 REST registrations (SDK paths and Guard's).
        route(
            "/api/v2/register/email",
            Register,
            v2,
            fields(&[("/email", Email)], Some("/password"), false),
        ),
        route(
            "/api/v2/register/username",
            Register,
            v2,
            fields(&[("/username", Username)], Some("/password"), false),
        ),
        route(
            "/api/v2/register/phone-code",
            Register,
            v2,
            fields(&[("/phone", Phone)], Some("/password"), false),
        ),
        route(
            "/api/v2/register/email-code",
            Register,
            v2,
            fields(&[("/email", Email)], Some("/password"), false),
        ),
        route(
            "/api/v2/register-email",
            Register,
            v2,
            fields(
                &[("/email", Email), ("/account", Email)],
                Some("/password"),
                false,
            ),
        ),
        route(
            "/api/v2/register-phone",
            Register,
            v2,
            fields(
                &[("/phone", Phone), ("/account", Phone)],
                Some("/password"),
                false,
            ),
        ),
        route(
            "/api/v2/register-phone-code",
            Register,
            v2,
            fields(&[("/phone", Phone)], Some("/password"), false),
        ),
        route(
            "/api/v2/register-email-code",
            Register,
            v2,
            fields(&[("/email", Email)], Some("/password"), false),
        ),
        // v2 REST password set/reset (authing-js-sdk resetPasswordByPhoneCode/EmailCode, updatePassword).
        route(
            "/api/v2/password/reset/sms",
            Password,
            v2,
            fields(&[("/phone", Phone)], Some("/newPassword"), false),
        ),
        route(
            "/api/v2/password/reset/email",
            Password,
            v2,
            fields(&[("/email", Email)], Some("/newPassword"), false),
        ),
        route(
            "/api/v2/users/password",
            Password,
            v2,
            fields(&[], Some("/newPassword"), false),
        ),
    ];
    let v3_ids = [
        ("/passwordPayload/email", Email),
        ("/passwordPayload/phone", Phone),
        ("/passwordPayload/username", Username),
        ("/passwordPayload/account", Auto),
        ("/passCodePayload/email", Email),
        ("/passCodePayload/phone", Phone),
    ];
    let v3_fields = |password: &str| Fields {
        identifier: v3_ids.iter().map(|&(p, k)| id(p, k)).collect(),
        password: Some(password.to_string()),
        captcha_code: Some("/options/captchaCode".into()),
        captcha_token: Some("/options/captchaToken".into()),
        encrypt_type: Some("/options/passwordEncryptType".into()),
    };
    r.push(route(
        "/api/v3/signin",
        Login,
        Flavor::V3,
        v3_fields("/passwordPayload/password"),
    ));
    r.push(route(
        "/api/v3/signup",
        Register,
        Flavor::V3,
        v3_fields("/passwordPayload/password"),
    ));
    let v3_pw = |ids: &[(&str, IdKind)], pw: &str| Fields {
        identifier: ids.iter().map(|&(p, k)| id(p, k)).collect(),
        password: Some(pw.into()),
        encrypt_type: Some("/passwordEncryptType".into()),
        ..Fields::default()
    };
    r.push(route(
        "/api/v3/reset-password",
        Password,
        Flavor::V3,
        v3_pw(&[], "/password"),
    ));
    r.push(route(
        "/api/v3/update-password",
        Password,
        Flavor::V3,
        v3_pw(&[], "/newPassword"),
    ));
    // Captchas poolgate answers itself.
    let mut c2 = route("/api/v2/security/captcha", CaptchaV2, v2, Fields::default());
    c2.method = "GET".into();
    let mut c3 = route(
        "/api/v3/get-captcha-code",
        CaptchaV3,
        Flavor::V3,
        Fields::default(),
    );
    c3.method = "GET".into();
    r.push(c2);
    r.push(c3);
    r.push(route(
        "/graphql/v2",
        Graphql,
        Flavor::Graphql,
        Fields::default(),
    ));
    r
}

/// GraphQL v2 mutations (authing-js-sdk `src/types/graphql.v2.ts`): fields are
/// read from the `input` argument's variable.
pub fn default_graphql_ops() -> Vec<GraphqlOp> {
    use IdKind::*;
    use RouteKind::*;
    let op = |name, kind, ids: &[(&str, IdKind)], pw: Option<&str>, captcha: bool| GraphqlOp {
        name,
        kind,
        fields: fields(ids, pw, captcha),
    };
    vec![
        op(
            "loginByEmail",
            Login,
            &[("/email", Email)],
            Some("/password"),
            true,
        ),
        op(
            "loginByUsername",
            Login,
            &[("/username", Username)],
            Some("/password"),
            true,
        ),
        op(
            "loginByPhonePassword",
            Login,
            &[("/phone", Phone)],
            Some("/password"),
            true,
        ),
        op("loginByPhoneCode", Login, &[("/phone", Phone)], None, true),
        op(
            "registerByEmail",
            Register,
            &[("/email", Email)],
            Some("/password"),
            false,
        ),
        op(
            "registerByUsername",
            Register,
            &[("/username", Username)],
            Some("/password"),
            false,
        ),
        op(
            "registerByPhoneCode",
            Register,
            &[("/phone", Phone)],
            Some("/password"),
            false,
        ),
        op(
            "resetPassword",
            Password,
            &[("/phone", Phone), ("/email", Email)],
            Some("/newPassword"),
            false,
        ),
        op("updatePassword", Password, &[], Some("/newPassword"), false),
    ]
}

impl RouteTable {
    /// Compiles a table; later entries with the same path replace earlier ones.
    pub fn new(routes: Vec<Route>, graphql: Vec<GraphqlOp>) -> anyhow::Result<RouteTable> {
        let mut by_path = HashMap::new();
        for mut r in routes {
            let canon = canonical_path(&r.path)
                .map_err(|e| anyhow::anyhow!("route path {:?}: {e}", r.path))?
                .into_owned();
            r.method = r.method.to_ascii_uppercase();
            Method::from_bytes(r.method.as_bytes())
                .map_err(|_| anyhow::anyhow!("route {:?}: bad method {:?}", r.path, r.method))?;
            for f in r
                .fields
                .identifier
                .iter()
                .map(|i| &i.pointer)
                .chain(r.fields.password.iter())
                .chain(r.fields.captcha_code.iter())
                .chain(r.fields.captcha_token.iter())
            {
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
        canonical_path(path).is_ok_and(|p| self.by_path.contains_key(p.as_ref()))
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
            None => {
                // Matching only after a second decoding means the upstream
                // might decode twice: refuse rather than guess.
                if canon.contains('%') && self.guarded_when_decoded(&canon) {
                    return Class::Ambiguous("double-encoded path of a guarded route");
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

/// The canonical form of a path (see the module doc). Borrowed when the path
/// is canonical already, which is the common case.
pub fn canonical_path(path: &str) -> Result<Cow<'_, str>, &'static str> {
    let simple = path.starts_with('/')
        && path.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'/' | b'-' | b'_')
        })
        && !path.contains("//")
        && (path.len() == 1 || !path.ends_with('/'));
    if simple {
        return Ok(Cow::Borrowed(path));
    }
    let decoded = percent_decode(path)?;
    let text = std::str::from_utf8(&decoded).map_err(|_| "path is not UTF-8")?;
    if text.chars().any(|c| c.is_control()) {
        return Err("control character in path");
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in text.split(['/', '\\']) {
        // Matrix parameters (`/login;jsessionid=x`) are not part of the route.
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                if out.pop().is_none() {
                    return Err("path climbs above the root");
                }
            }
            s => out.push(s),
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if s.is_empty() {
        s.push('/');
    }
    s.make_ascii_lowercase();
    Ok(Cow::Owned(s))
}

/// Decodes `%XX` escapes; an invalid escape is an error.
pub fn percent_decode(s: &str) -> Result<Vec<u8>, &'static str> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                _ => return Err("invalid percent-encoding"),
            }
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(matches!(
            table.classify(&Method::GET, "/api/v2/login/account"),
            Class::WrongMethod(_)
        ));
        assert!(matches!(
            table.classify(&Method::GET, "/api/v2/users/me"),
            Class::Other
        ));
    }

    #[test]
    fn v3_and_captcha_routes() {
        assert_eq!(
            kind(&Method::POST, "/api/v3/signin"),
            Some(RouteKind::Login)
        );
        assert_eq!(
            kind(&Method::POST, "/api/v3/signup"),
            Some(RouteKind::Register)
        );
        assert_eq!(
            kind(&Method::GET, "/api/v2/security/captcha"),
            Some(RouteKind::CaptchaV2)
        );
        assert_eq!(
            kind(&Method::GET, "/api/v3/get-captcha-code"),
            Some(RouteKind::CaptchaV3)
        );
        assert_eq!(kind(&Method::POST, "/graphql/v2"), Some(RouteKind::Graphql));
    }

    #[test]
    fn canonical_is_borrowed_when_simple() {
        assert!(matches!(
            canonical_path("/api/v2/login/account"),
            Ok(Cow::Borrowed(_))
        ));
        assert_eq!(canonical_path("/").unwrap(), "/");
    }
}
