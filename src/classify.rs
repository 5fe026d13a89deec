//! Request classification: what a request is, as far as the policy cares.

/// The kind of request, for guards and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteClass {
    /// A login attempt.
    Login,
    /// A registration.
    Register,
    /// A password set or reset.
    Password,
    /// A captcha fetch.
    Captcha,
    /// A GraphQL call (classified further by its body).
    Graphql,
    /// Anything else: forwarded unjudged.
    Other,
}

impl RouteClass {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteClass::Login => "login",
            RouteClass::Register => "register",
            RouteClass::Password => "password",
            RouteClass::Captcha => "captcha",
            RouteClass::Graphql => "graphql",
            RouteClass::Other => "other",
        }
    }
}

/// Classifies a request by its path (the route table of the guards refines this).
pub fn classify_path(path: &str) -> RouteClass {
    let p = path.trim_end_matches('/');
    if p == "/graphql/v2" {
        RouteClass::Graphql
    } else if p.starts_with("/api/v2/login/") || p == "/api/v3/signin" {
        RouteClass::Login
    } else if p.starts_with("/api/v2/register") || p == "/api/v3/signup" {
        RouteClass::Register
    } else if p == "/api/v2/security/captcha" || p == "/api/v3/get-captcha-code" {
        RouteClass::Captcha
    } else {
        RouteClass::Other
    }
}
