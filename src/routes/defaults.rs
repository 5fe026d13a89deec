//! The built-in route table: every security-relevant call of Authing's
//! official SDKs, REST and GraphQL, with the JSON pointers of its fields.

use super::{Fields, Flavor, GraphqlOp, IdField, IdKind, Route, RouteKind, Variant};

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

#[cfg(test)]
mod tests {
    use http::Method;

    use crate::routes::{Class, RouteKind, RouteTable};

    fn kind(method: &Method, path: &str) -> Option<RouteKind> {
        match RouteTable::default_table().classify(method, path) {
            Class::Route(r) => Some(r.kind),
            _ => None,
        }
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
}
