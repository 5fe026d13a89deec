//! What a route is: its kind, answer shape and where its fields are.

use serde::Deserialize;

/// What a route is, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// A login attempt.
    Login,
    /// A registration.
    Register,
    /// A password set, reset or change.
    Password,
    /// Sending a one-time code (SMS, e-mail, push): limited per client and recipient.
    SendCode,
    /// Checking a one-time code, an MFA factor or a password outside a login
    /// (MFA verify, code pre-checks, binding a phone): failures count like
    /// failed logins.
    Verify,
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
            RouteKind::SendCode => "send_code",
            RouteKind::Verify => "verify",
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
    /// An opaque token naming a login in progress (an MFA token): counted as
    /// its own account, never whitelisted.
    Token,
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
    /// The secret the call proves itself with, other than a password it
    /// logs in with or sets: a one-time code (SMS or e-mail code, TOTP,
    /// recovery code), a reset token, or the old password. A guessing
    /// surface: its failures count like wrong passwords.
    #[serde(default)]
    pub proof: Option<String>,
    /// The country calling code sent beside a phone number (Authing's
    /// `phoneCountryCode`, e.g. `+86`).
    #[serde(default)]
    pub phone_country_code: Option<String>,
    /// The end user's address, believed only from `server.trusted_backends`.
    #[serde(default)]
    pub client_ip: Option<String>,
    /// A header whose value names the account when the body names none (the
    /// MFA token of `Authorization: Bearer <mfaToken>`).
    #[serde(default)]
    pub token_header: Option<String>,
    /// A member that names which payload the call uses (v3 `connection`):
    /// only the fields of the named case are read.
    #[serde(default)]
    pub variant: Option<Variant>,
}

/// Fields that depend on the value of one member of the body.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variant {
    /// JSON pointer of the member naming the case (e.g. `/connection`).
    pub pointer: String,
    /// Fields of each case, by the member's value (compared case-insensitively).
    /// A value not listed, or a missing member, cannot be judged: refused.
    pub cases: std::collections::BTreeMap<String, Fields>,
}

impl Fields {
    /// Every JSON pointer these fields read (for validation).
    pub fn pointers(&self) -> Vec<&String> {
        let mut v: Vec<&String> = self.identifier.iter().map(|i| &i.pointer).collect();
        v.extend(
            [
                &self.password,
                &self.captcha_code,
                &self.captcha_token,
                &self.encrypt_type,
                &self.proof,
                &self.phone_country_code,
                &self.client_ip,
            ]
            .into_iter()
            .flatten(),
        );
        if let Some(var) = &self.variant {
            v.push(&var.pointer);
            for f in var.cases.values() {
                v.extend(f.pointers());
            }
        }
        v
    }

    /// The fields of one case of the variant: the case's own, then the base's
    /// for what the case leaves unset.
    pub fn with_case(&self, case: &Fields) -> Fields {
        let or = |a: &Option<String>, b: &Option<String>| a.clone().or_else(|| b.clone());
        Fields {
            identifier: if case.identifier.is_empty() {
                self.identifier.clone()
            } else {
                case.identifier.clone()
            },
            password: or(&case.password, &self.password),
            captcha_code: or(&case.captcha_code, &self.captcha_code),
            captcha_token: or(&case.captcha_token, &self.captcha_token),
            encrypt_type: or(&case.encrypt_type, &self.encrypt_type),
            proof: or(&case.proof, &self.proof),
            phone_country_code: or(&case.phone_country_code, &self.phone_country_code),
            client_ip: or(&case.client_ip, &self.client_ip),
            token_header: or(&case.token_header, &self.token_header),
            variant: None,
        }
    }
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
