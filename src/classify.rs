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
    by_path: HashMap<String, Route>,
    graphql: Vec<GraphqlOp>,
}

/// One builder step per pointer field: `fn pw(self, "/password") -> Self`.
macro_rules! pointer_setters {
    ($($step:ident => $field:ident),* $(,)?) => {
        $(
            fn $step(mut self, pointer: &str) -> Self {
                self.$field = Some(pointer.into());
                self
            }
        )*
    };
}

/// Builder steps for the default tables: each names one JSON pointer.
impl Fields {
    fn id(mut self, pointer: &str, kind: IdKind) -> Self {
        self.identifier.push(IdField {
            pointer: pointer.to_string(),
            kind,
        });
        self
    }
    pointer_setters! {
        pw => password,
        captcha => captcha_code,
        token => captcha_token,
        enc => encrypt_type,
        proof => proof,
        cc => phone_country_code,
        ip => client_ip,
    }
    fn bearer(mut self) -> Self {
        self.token_header = Some("authorization".into());
        self
    }
    fn by(mut self, pointer: &str, cases: Vec<(&str, Fields)>) -> Self {
        self.variant = Some(Variant {
            pointer: pointer.into(),
            cases: cases
                .into_iter()
                .map(|(k, f)| (k.to_ascii_uppercase(), f))
                .collect(),
        });
        self
    }
}

fn f() -> Fields {
    Fields::default()
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

/// The default table: every security-relevant call of Authing's official
/// SDKs (docs/authing-clients.md lists them with their SDK methods).
/// Sources: PyPI `authing` 4.5.x (`authing/v2/authentication`) and 5.1.x
/// (`authing/AuthenticationClient.py`), npm `authing-js-sdk` 4.23.x
/// (`src/lib/authentication/AuthenticationClient.ts`, `src/types/graphql.v2.ts`),
/// Authing/Guard `packages/guard-core-v4`, Authing/authing-node-sdk.
pub fn default_routes() -> Vec<Route> {
    use IdKind::*;
    use RouteKind::*;
    let (v2, v3) = (Flavor::V2, Flavor::V3);
    let mut r = Vec::new();
    let mut add = |path: &str, kind, flavor, fields| r.push(route(path, kind, flavor, fields));

    // v2 REST logins.
    let ldap = || {
        f().id("/username", Username)
            .pw("/password")
            .captcha("/captchaCode")
    };
    add(
        "/api/v2/login/account",
        Login,
        v2,
        f().id("/account", Auto)
            .pw("/password")
            .captcha("/captchaCode"),
    );
    add(
        "/api/v2/login/phone-code",
        Login,
        v2,
        f().id("/phone", Phone)
            .proof("/code")
            .cc("/phoneCountryCode")
            .captcha("/captchaCode"),
    );
    add(
        "/api/v2/login/email-code",
        Login,
        v2,
        f().id("/email", Email)
            .proof("/code")
            .captcha("/captchaCode")
            .ip("/clientIp"),
    );
    for p in [
        "/api/v2/login/ldap",
        "/api/v2/login/ad",
        "/api/v2/login/ad-all-in-one",
        // LDAP/AD password checks (v2 SDKs' loginByLdap / loginByAd, Guard's LDAP form).
        "/api/v2/ldap/verify-user",
        "/api/v2/ad/verify-user",
    ] {
        add(p, Login, v2, ldap());
    }

    // v2 REST registrations (SDK paths and Guard's).
    add(
        "/api/v2/register/email",
        Register,
        v2,
        f().id("/email", Email).pw("/password"),
    );
    add(
        "/api/v2/register/username",
        Register,
        v2,
        f().id("/username", Username).pw("/password"),
    );
    for p in ["/api/v2/register/phone-code", "/api/v2/register-phone-code"] {
        add(
            p,
            Register,
            v2,
            f().id("/phone", Phone)
                .pw("/password")
                .proof("/code")
                .cc("/phoneCountryCode"),
        );
    }
    for p in ["/api/v2/register/email-code", "/api/v2/register-email-code"] {
        add(
            p,
            Register,
            v2,
            f().id("/email", Email)
                .pw("/password")
                .proof("/code")
                .ip("/clientIp"),
        );
    }
    add(
        "/api/v2/register-email",
        Register,
        v2,
        f().id("/email", Email)
            .id("/account", Email)
            .pw("/password"),
    );
    add(
        "/api/v2/register-phone",
        Register,
        v2,
        f().id("/phone", Phone)
            .id("/account", Phone)
            .pw("/password")
            .proof("/code"),
    );

    // v2 REST password reset and change.
    add(
        "/api/v2/password/reset/sms",
        Password,
        v2,
        f().id("/phone", Phone)
            .proof("/code")
            .cc("/phoneCountryCode")
            .pw("/newPassword"),
    );
    add(
        "/api/v2/password/reset/email",
        Password,
        v2,
        f().id("/email", Email).proof("/code").pw("/newPassword"),
    );
    add(
        "/api/v2/users/password",
        Password,
        v2,
        f().pw("/newPassword").proof("/oldPassword"),
    );

    // v2 REST one-time codes sent.
    add(
        "/api/v2/sms/send",
        SendCode,
        v2,
        f().id("/phone", Phone).cc("/phoneCountryCode"),
    );
    add("/api/v2/email/send", SendCode, v2, f().id("/email", Email));

    // v3: `connection` names the payload; only that one is read.
    let options = || {
        f().captcha("/options/captchaCode")
            .token("/options/captchaToken")
            .enc("/options/passwordEncryptType")
            .ip("/options/clientIp")
    };
    let password_case = || {
        f().id("/passwordPayload/email", Email)
            .id("/passwordPayload/phone", Phone)
            .id("/passwordPayload/username", Username)
            .id("/passwordPayload/account", Auto)
            .pw("/passwordPayload/password")
    };
    let passcode_case = || {
        f().id("/passCodePayload/email", Email)
            .id("/passCodePayload/phone", Phone)
            .proof("/passCodePayload/passCode")
            .cc("/passCodePayload/phoneCountryCode")
    };
    let directory_case = |payload: &str| {
        f().id(&format!("/{payload}/sAMAccountName"), Username)
            .id(&format!("/{payload}/username"), Username)
            .pw(&format!("/{payload}/password"))
    };
    add(
        "/api/v3/signin",
        Login,
        v3,
        options().by(
            "/connection",
            vec![
                ("PASSWORD", password_case()),
                ("PASSCODE", passcode_case()),
                ("LDAP", directory_case("ldapPayload")),
                ("AD", directory_case("adPayload")),
            ],
        ),
    );
    add(
        "/api/v3/signup",
        Register,
        v3,
        options().by(
            "/connection",
            vec![
                ("PASSWORD", password_case()),
                // A phone sign-up may set a password in its options.
                (
                    "PASSCODE",
                    passcode_case().pw("/options/passwordForPhonePassCode"),
                ),
            ],
        ),
    );
    add(
        "/api/v3/verify-reset-password-request",
        Password,
        v3,
        f().by(
            "/verifyMethod",
            vec![
                (
                    "PHONE_PASSCODE",
                    f().id("/phonePassCodePayload/phoneNumber", Phone)
                        .proof("/phonePassCodePayload/passCode")
                        .cc("/phonePassCodePayload/phoneCountryCode"),
                ),
                (
                    "EMAIL_PASSCODE",
                    f().id("/emailPassCodePayload/email", Email)
                        .proof("/emailPassCodePayload/passCode"),
                ),
            ],
        ),
    );
    add(
        "/api/v3/reset-password",
        Password,
        v3,
        f().pw("/password")
            .proof("/passwordResetToken")
            .enc("/passwordEncryptType"),
    );
    add(
        "/api/v3/update-password",
        Password,
        v3,
        f().pw("/newPassword")
            .proof("/oldPassword")
            .enc("/passwordEncryptType"),
    );
    add(
        "/api/v3/send-sms",
        SendCode,
        v3,
        f().id("/phoneNumber", Phone).cc("/phoneCountryCode"),
    );
    add("/api/v3/send-email", SendCode, v3, f().id("/email", Email));

    // v3 signin-by-push sends a push approval to the user's app: a send.
    add(
        "/api/v3/signin-by-push",
        SendCode,
        v3,
        f().id("/account", Auto),
    );
    add(
        "/api/v3/send-enroll-factor-request",
        SendCode,
        v3,
        f().id("/profile/phoneNumber", Phone)
            .id("/profile/email", Email)
            .cc("/profile/phoneCountryCode")
            .bearer(),
    );
    // A password oracle outside login: node SDK's validatePassword.
    add(
        "/api/v3/validate-password",
        Verify,
        v3,
        f().id("/email", Email)
            .id("/phone", Phone)
            .id("/username", Username)
            .cc("/phoneCountryCode")
            .proof("/password")
            .enc("/passwordEncryptType"),
    );
    add(
        "/api/v3/verify-delete-account-request",
        Verify,
        v3,
        f().bearer().by(
            "/verifyMethod",
            vec![
                (
                    "PHONE_PASSCODE",
                    f().id("/phonePassCodePayload/phoneNumber", Phone)
                        .proof("/phonePassCodePayload/passCode")
                        .cc("/phonePassCodePayload/phoneCountryCode"),
                ),
                (
                    "EMAIL_PASSCODE",
                    f().id("/emailPassCodePayload/email", Email)
                        .proof("/emailPassCodePayload/passCode"),
                ),
                (
                    "PASSWORD",
                    f().proof("/passwordPayload/password")
                        .enc("/passwordPayload/passwordEncryptType"),
                ),
            ],
        ),
    );
    // Code pre-checks leave the code valid: the cheapest guessing surface.
    add(
        "/api/v3/pre-check-code",
        Verify,
        v3,
        f().by(
            "/codeType",
            vec![
                (
                    "SMS",
                    f().id("/smsCodePayload/phone", Phone)
                        .proof("/smsCodePayload/passCode")
                        .cc("/smsCodePayload/phoneCountryCode"),
                ),
                (
                    "EMAIL",
                    f().id("/emailCodePayload/email", Email)
                        .proof("/emailCodePayload/passCode"),
                ),
            ],
        ),
    );
    // MFA and code checks behind a token.
    add(
        "/api/v3/mfa-totp-verify",
        Verify,
        v3,
        f().proof("/totp").bearer(),
    );
    add(
        "/api/v3/enroll-factor",
        Verify,
        v3,
        f().proof("/enrollmentData/passCode").bearer(),
    );
    add(
        "/api/v3/bind-phone",
        Verify,
        v3,
        f().id("/phoneNumber", Phone)
            .proof("/passCode")
            .cc("/phoneCountryCode")
            .bearer(),
    );
    add(
        "/api/v3/bind-email",
        Verify,
        v3,
        f().id("/email", Email).proof("/passCode").bearer(),
    );
    for p in ["/api/v3/unbind-phone", "/api/v3/unbind-email"] {
        add(p, Verify, v3, f().proof("/passCode").bearer());
    }
    add(
        "/api/v3/verify-update-phone-request",
        Verify,
        v3,
        f().id("/phonePassCodePayload/newPhoneNumber", Phone)
            .proof("/phonePassCodePayload/newPhonePassCode")
            .cc("/phonePassCodePayload/newPhoneCountryCode")
            .bearer(),
    );
    add(
        "/api/v3/verify-update-email-request",
        Verify,
        v3,
        f().id("/emailPassCodePayload/newEmail", Email)
            .proof("/emailPassCodePayload/newEmailPassCode")
            .bearer(),
    );
    // v2 MFA (the mfaToken rides in `Authorization: Bearer`).
    add(
        "/api/v2/mfa/totp/verify",
        Verify,
        v2,
        f().proof("/totp").bearer(),
    );
    add(
        "/api/v2/mfa/totp/recovery",
        Verify,
        v2,
        f().proof("/recoveryCode").bearer(),
    );
    add(
        "/api/v2/mfa/totp/associate/confirm",
        Verify,
        v2,
        f().proof("/totp").bearer(),
    );
    add(
        "/api/v2/applications/mfa/sms/verify",
        Verify,
        v2,
        f().id("/phone", Phone)
            .proof("/code")
            .cc("/phoneCountryCode")
            .bearer(),
    );
    add(
        "/api/v2/applications/mfa/email/verify",
        Verify,
        v2,
        f().id("/email", Email).proof("/code").bearer(),
    );
    // WeChat-mobile account binding: a login by password or by code.
    add(
        "/api/v2/ecconn/wechatmobile/byaccount",
        Login,
        v2,
        f().id("/account", Auto).pw("/password"),
    );
    add(
        "/api/v2/ecconn/wechatmobile/byemailcode",
        Login,
        v2,
        f().id("/email", Email).proof("/code"),
    );
    add(
        "/api/v2/ecconn/wechatmobile/byphonecode",
        Login,
        v2,
        f().id("/phone", Phone)
            .proof("/code")
            .cc("/phoneCountryCode"),
    );

    // Captchas poolgate answers itself.
    let mut c2 = route("/api/v2/security/captcha", CaptchaV2, v2, f());
    c2.method = "GET".into();
    let mut c3 = route("/api/v3/get-captcha-code", CaptchaV3, v3, f());
    c3.method = "GET".into();
    r.push(c2);
    r.push(c3);
    r.push(route("/graphql/v2", Graphql, Flavor::Graphql, f()));
    r
}

/// GraphQL v2 operations judged (authing-js-sdk `src/types/graphql.v2.ts`,
/// PyPI `authing` 4.5.x `authing/v2/common/graphql`). Pointers are into the
/// field's arguments: `/input/email` for `loginByEmail(input: {...})`,
/// `/phone` for `resetPassword(phone: ...)`.
pub fn default_graphql_ops() -> Vec<GraphqlOp> {
    use IdKind::*;
    use RouteKind::*;
    let op = |name, kind, fields| GraphqlOp { name, kind, fields };
    let login = |id: &str, kind| {
        f().id(&format!("/input/{id}"), kind)
            .pw("/input/password")
            .captcha("/input/captchaCode")
            .ip("/input/clientIp")
    };
    vec![
        op("loginByEmail", Login, login("email", Email)),
        op("loginByUsername", Login, login("username", Username)),
        op("loginByPhonePassword", Login, login("phone", Phone)),
        op(
            "loginByPhoneCode",
            Login,
            f().id("/input/phone", Phone)
                .proof("/input/code")
                .cc("/input/phoneCountryCode")
                .captcha("/input/captchaCode")
                .ip("/input/clientIp"),
        ),
        op(
            "loginBySubAccount",
            Login,
            f().id("/account", Auto)
                .pw("/password")
                .captcha("/captchaCode")
                .ip("/clientIp"),
        ),
        op(
            "registerByEmail",
            Register,
            f().id("/input/email", Email)
                .pw("/input/password")
                .ip("/input/clientIp"),
        ),
        op(
            "registerByUsername",
            Register,
            f().id("/input/username", Username)
                .pw("/input/password")
                .ip("/input/clientIp"),
        ),
        op(
            "registerByPhoneCode",
            Register,
            f().id("/input/phone", Phone)
                .pw("/input/password")
                .proof("/input/code")
                .cc("/input/phoneCountryCode")
                .ip("/input/clientIp"),
        ),
        op(
            "resetPassword",
            Password,
            f().id("/phone", Phone)
                .id("/email", Email)
                .proof("/code")
                .cc("/phoneCountryCode")
                .pw("/newPassword"),
        ),
        op(
            "resetPasswordByFirstLoginToken",
            Password,
            f().proof("/token").pw("/password"),
        ),
        op(
            "resetPasswordByForceResetToken",
            Password,
            f().proof("/oldPassword").pw("/newPassword"),
        ),
        // A profile update may carry a password (py-v2 sends it in clear).
        op("updateUser", Password, f().pw("/input/password")),
        op(
            "updatePassword",
            Password,
            f().pw("/newPassword").proof("/oldPassword"),
        ),
        op("sendEmail", SendCode, f().id("/email", Email)),
        op(
            "bindPhone",
            Verify,
            f().id("/phone", Phone)
                .proof("/phoneCode")
                .cc("/phoneCountryCode"),
        ),
        op(
            "bindEmail",
            Verify,
            f().id("/email", Email).proof("/emailCode"),
        ),
        op(
            "updatePhone",
            Verify,
            f().id("/phone", Phone)
                .proof("/phoneCode")
                .cc("/phoneCountryCode"),
        ),
        op(
            "updateEmail",
            Verify,
            f().id("/email", Email).proof("/emailCode"),
        ),
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
