//! The guards: pure decisions over the compiled policy and a request's facts.
//!
//! Nothing here does I/O or holds a lock; counters and captchas are consulted
//! by the gateway, which passes their answers in. Each rejection names its
//! guard and reason (metric labels and log fields) and carries Authing's code
//! and message.

pub mod cors;
pub mod outcome;
pub mod ratelimit;

use std::borrow::Cow;
use std::time::Duration;

use http::StatusCode;

use crate::classify::IdKind;
use crate::extract::{Facts, Password};
use crate::policy::{CompiledPolicy, FailStrategy, PasswordRule};

/// Guard names, as used in `dry_run_guards`, metrics and logs.
pub const GUARD_NAMES: &[&str] = &[
    "cors",
    "rate_limit",
    "body",
    "login_fail",
    "password_fail",
    "captcha",
    "register_disabled",
    "register_limit",
    "whitelist",
    "password_strength",
    "store",
];

/// Code poolgate uses for "identifier not on the registration whitelist": no
/// Authing source gives one; 2040 is unused in Authing's published table.
pub const WHITELIST_CODE: i64 = 2040;

/// A request the guards refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The guard (see [`GUARD_NAMES`]).
    pub guard: &'static str,
    /// Why, in a word (metric label).
    pub reason: &'static str,
    /// HTTP status of the answer.
    pub status: StatusCode,
    /// Authing's code.
    pub code: i64,
    /// Authing's message.
    pub message: Cow<'static, str>,
    /// When a retry can succeed.
    pub retry_after: Option<Duration>,
}

impl Rejection {
    /// A business-rule rejection: like Authing, HTTP 200 with the code in the body.
    pub fn business(
        guard: &'static str,
        reason: &'static str,
        code: i64,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Rejection {
            guard,
            reason,
            status: StatusCode::OK,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// A transport-level rejection (400, 403, 413, 415, 429...).
    pub fn http(
        guard: &'static str,
        reason: &'static str,
        status: StatusCode,
        message: impl Into<Cow<'static, str>>,
    ) -> Self {
        Rejection {
            guard,
            reason,
            status,
            code: i64::from(status.as_u16()),
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds a `Retry-After`.
    pub fn retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }
}

/// Authing's captcha-required answer (code 2000).
pub fn captcha_required(guard: &'static str) -> Rejection {
    Rejection::business(guard, "captcha_required", 2000, "账号异常，需要输入验证码")
}

/// Authing's wrong-captcha answer (code 2001).
pub fn captcha_failed(reason: &'static str) -> Rejection {
    Rejection::business("captcha", reason, 2001, "验证码验证失败(验证码错误)")
}

/// What a login may do, given the counters' answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginGate {
    /// Forward it.
    Forward,
    /// Over a limit and a captcha was sent: verify it; forward if right.
    VerifyCaptcha,
    /// Over a limit and no captcha: answer 2000.
    Reject(Rejection),
}

/// Decides a login. `ip_over` / `account_over` are `Some(retry_after)` when
/// that counter is at its limit.
pub fn login_gate(
    policy: &CompiledPolicy,
    ip_over: Option<Duration>,
    account_over: Option<Duration>,
    captcha_sent: bool,
) -> LoginGate {
    if let Some(wait) = account_over {
        if policy.fail_strategy == FailStrategy::BlockAccount {
            // A locked account stays locked, captcha or not.
            return LoginGate::Reject(
                Rejection::business(
                    "password_fail",
                    "account_locked",
                    2057,
                    "密码错误次数过多，账号已被锁定，请稍后再试",
                )
                .retry_after(wait),
            );
        }
    }
    if ip_over.is_none() && account_over.is_none() {
        return LoginGate::Forward;
    }
    if captcha_sent {
        return LoginGate::VerifyCaptcha;
    }
    let guard = if ip_over.is_some() {
        "login_fail"
    } else {
        "password_fail"
    };
    LoginGate::Reject(captcha_required(guard))
}

/// Registration rules that need no counter: `registerDisabled`, `whitelist`,
/// and the password rule.
pub fn registration(policy: &CompiledPolicy, facts: &Facts) -> Result<(), Rejection> {
    if policy.register_disabled {
        return Err(Rejection::business(
            "register_disabled",
            "register_disabled",
            2031,
            "应用已禁止注册用户",
        ));
    }
    let wl = &policy.whitelist;
    if let Some(id) = &facts.identifier {
        let set = match id.kind {
            IdKind::Email => &wl.email,
            IdKind::Phone => &wl.phone,
            _ => &wl.username,
        };
        if let Some(set) = set {
            if !set.contains(&id.value) {
                return Err(Rejection::business(
                    "whitelist",
                    "not_whitelisted",
                    WHITELIST_CODE,
                    "该账号不在注册白名单中",
                ));
            }
        }
    } else if wl.email.is_some() || wl.phone.is_some() || wl.username.is_some() {
        // A registration whose identifier cannot be read cannot be whitelisted.
        return Err(Rejection::business(
            "whitelist",
            "no_identifier",
            WHITELIST_CODE,
            "该账号不在注册白名单中",
        ));
    }
    password_strength(&policy.password_rule, facts.password.as_ref())
}

/// `passwordStrength` on a clear password; encrypted ones pass (the upstream judges them).
pub fn password_strength(
    rule: &PasswordRule,
    password: Option<&Password>,
) -> Result<(), Rejection> {
    let Some(Password::Clear(p)) = password else {
        return Ok(());
    };
    let too_short = || {
        Rejection::business(
            "password_strength",
            "too_short",
            2029,
            "密码长度不能少于 6 位",
        )
    };
    let weak = || Rejection::business("password_strength", "weak", 2061, "密码强度不符合要求");
    let classes = || {
        let digit = p.chars().any(|c| c.is_ascii_digit());
        let letter = p.chars().any(|c| c.is_alphabetic());
        let symbol = p
            .chars()
            .any(|c| !c.is_alphanumeric() && !c.is_whitespace());
        u8::from(digit) + u8::from(letter) + u8::from(symbol)
    };
    let long_enough = p.chars().count() >= 6;
    match rule {
        PasswordRule::None => Ok(()),
        PasswordRule::MinLength if !long_enough => Err(too_short()),
        PasswordRule::MinLength => Ok(()),
        PasswordRule::TwoClasses | PasswordRule::ThreeClasses if !long_enough => Err(too_short()),
        PasswordRule::TwoClasses if classes() < 2 => Err(weak()),
        PasswordRule::ThreeClasses if classes() < 3 => Err(weak()),
        PasswordRule::TwoClasses | PasswordRule::ThreeClasses => Ok(()),
        PasswordRule::Custom { regex, message } => {
            if regex.is_match(p) {
                Ok(())
            } else {
                Err(Rejection::business(
                    "password_strength",
                    "custom_rule",
                    2061,
                    message.clone(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PoolDetail, WhitelistEntries};

    fn policy(json: &str, wl: WhitelistEntries) -> CompiledPolicy {
        CompiledPolicy::compile(&PoolDetail::from_json(json.as_bytes()).unwrap(), &wl, "t").unwrap()
    }

    fn clear(p: &str) -> Option<Password> {
        Some(Password::Clear(p.into()))
    }

    #[test]
    fn strength_levels() {
        use PasswordRule::*;
        assert!(
            password_strength(&MinLength, clear("12345").as_ref()).is_err_and(|r| r.code == 2029)
        );
        assert!(password_strength(&MinLength, clear("123456").as_ref()).is_ok());
        assert!(
            password_strength(&TwoClasses, clear("123456").as_ref()).is_err_and(|r| r.code == 2061)
        );
        assert!(password_strength(&TwoClasses, clear("abc123").as_ref()).is_ok());
        assert!(password_strength(&ThreeClasses, clear("abc123").as_ref()).is_err());
        assert!(password_strength(&ThreeClasses, clear("abc12!").as_ref()).is_ok());
        assert!(password_strength(&ThreeClasses, Some(&Password::Encrypted)).is_ok());
        let p = policy(
            r#"{"passwordStrength": 4, "customPasswordStrength": {"enabled": true, "regex": "^[a-z]{8,}$", "message": "eight lowercase"}}"#,
            WhitelistEntries::default(),
        );
        let r = password_strength(&p.password_rule, clear("short").as_ref()).unwrap_err();
        assert_eq!((r.code, r.message.as_ref()), (2061, "eight lowercase"));
    }

    #[test]
    fn gate_decisions() {
        let p = policy(
            r#"{"loginFailStrategy": "captcha"}"#,
            WhitelistEntries::default(),
        );
        let w = Some(Duration::from_secs(5));
        assert_eq!(login_gate(&p, None, None, false), LoginGate::Forward);
        assert!(
            matches!(login_gate(&p, w, None, false), LoginGate::Reject(r) if r.code == 2000 && r.guard == "login_fail")
        );
        assert_eq!(login_gate(&p, w, None, true), LoginGate::VerifyCaptcha);
        assert!(
            matches!(login_gate(&p, None, w, false), LoginGate::Reject(r) if r.guard == "password_fail")
        );
        let b = policy(
            r#"{"loginFailStrategy": "block-account"}"#,
            WhitelistEntries::default(),
        );
        assert!(matches!(login_gate(&b, None, w, true), LoginGate::Reject(r) if r.code == 2057));
    }

    #[test]
    fn registration_rules() {
        let wl = WhitelistEntries {
            email: vec!["ok@x.com".into()],
            ..Default::default()
        };
        let p = policy(r#"{"whitelist": {"emailEnabled": true}}"#, wl);
        let f = |v: &str| Facts {
            identifier: Some(crate::extract::identify(v, IdKind::Auto)),
            ..Default::default()
        };
        assert!(registration(&p, &f("OK@x.com")).is_ok());
        assert!(registration(&p, &f("no@x.com")).is_err_and(|r| r.code == WHITELIST_CODE));
        assert!(
            registration(&p, &f("bob")).is_ok(),
            "usernames are not restricted here"
        );
        let d = policy(r#"{"registerDisabled": true}"#, WhitelistEntries::default());
        assert!(registration(&d, &f("a@b.c")).is_err_and(|r| r.code == 2031));
    }
}
