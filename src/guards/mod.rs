//! The guards: pure decisions over the compiled policy and a request's facts.
//!
//! Nothing here does I/O or holds a lock; counters and captchas are consulted
//! by the gateway, which passes their answers in. Each rejection names its
//! guard and reason (metric labels and log fields) and carries Authing's code
//! and message.

pub mod cors;
pub mod outcome;
pub mod plan;

use std::borrow::Cow;
use std::time::Duration;

use http::StatusCode;

use crate::extract::{Facts, Password};
use crate::policy::{CompiledPolicy, FailStrategy, PasswordRule};
use crate::routes::IdKind;

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
    "send_code",
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

/// Where a call stands against its failure counters (`loginFailCheck` per
/// client, `loginPasswordFailCheck` per account): `Some(retry_after)` when
/// that counter is at its limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Over {
    /// The client's failure counter is at its limit.
    pub client: Option<Duration>,
    /// The account's counter is at its limit.
    pub account: Option<Duration>,
    /// The account could not be counted (its counter is full): it must
    /// solve a captcha, but is never locked, whatever the strategy, or
    /// anyone able to fill the table could lock every new account.
    pub account_full: bool,
}

impl Over {
    /// Whether any counter is over.
    pub fn any(&self) -> bool {
        self.client.is_some() || self.account.is_some()
    }
}

/// What the captcha sent with a call said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptchaCheck {
    /// None sent, or not checked because no counter is over.
    NotSent,
    /// Solved: the call may pass the captcha-strategy limits.
    Solved,
    /// Wrong, expired, unknown or another client's (the reason label).
    Failed(&'static str),
}

/// Whether a call over its limits could pass with a captcha (so one sent
/// with it is worth checking): not when the account is locked.
pub fn captcha_can_help(policy: &CompiledPolicy, over: &Over) -> bool {
    over.any() && !account_locked(policy, over)
}

fn account_locked(policy: &CompiledPolicy, over: &Over) -> bool {
    over.account.is_some()
        && !over.account_full
        && policy.fail_strategy == FailStrategy::BlockAccount
}

/// Every rejection a call earns from its failure counters, most severe
/// first; empty means forward. Each names its own guard, so shadowing one
/// guard never lets another's verdict through: an account over
/// `loginPasswordFailCheck` is refused by `password_fail` even when
/// `login_fail` is in dry run.
pub fn failure_violations(
    policy: &CompiledPolicy,
    over: &Over,
    captcha: CaptchaCheck,
) -> Vec<Rejection> {
    let mut out = Vec::new();
    if account_locked(policy, over) {
        // A locked account stays locked, captcha or not.
        out.push(
            Rejection::business(
                "password_fail",
                "account_locked",
                2057,
                "密码错误次数过多，账号已被锁定，请稍后再试",
            )
            .retry_after(over.account.unwrap_or(Duration::from_secs(1))),
        );
    }
    let needs = [
        ("login_fail", over.client.is_some()),
        (
            "password_fail",
            over.account.is_some() && !account_locked(policy, over),
        ),
    ];
    for (guard, over_limit) in needs {
        if !over_limit {
            continue;
        }
        match captcha {
            CaptchaCheck::Solved => {}
            CaptchaCheck::NotSent => out.push(captcha_required(guard)),
            CaptchaCheck::Failed(why) => {
                let r = captcha_failed(why);
                if !out.contains(&r) {
                    out.push(r);
                }
            }
        }
    }
    out
}

/// The answer when one-time codes were sent too often (per client or per
/// recipient): HTTP 429 with `Retry-After`.
pub fn send_code_limited(reason: &'static str, wait: Duration) -> Rejection {
    Rejection::http(
        "send_code",
        reason,
        StatusCode::TOO_MANY_REQUESTS,
        "too many one-time codes sent, try again later",
    )
    .retry_after(wait)
}

/// The answer when registrations from one client are too frequent (2100).
pub fn register_too_frequent(reason: &'static str, wait: Duration) -> Rejection {
    Rejection::business("register_limit", reason, 2100, "注册过于频繁，请稍候再试")
        .retry_after(wait)
}

/// Registration rules that need no counter: `registerDisabled`, `whitelist`,
/// and the password rule; the first broken one.
pub fn registration(policy: &CompiledPolicy, facts: &Facts) -> Result<(), Rejection> {
    match registration_violations(policy, facts).into_iter().next() {
        Some(r) => Err(r),
        None => Ok(()),
    }
}

/// Every registration rule a call breaks, in order: `registerDisabled`,
/// `whitelist`, the password rule (shadow mode picks the first one not shadowed).
pub fn registration_violations(policy: &CompiledPolicy, facts: &Facts) -> Vec<Rejection> {
    let mut out = Vec::new();
    if let Err(r) = registration_rules(policy, facts) {
        out.push(r);
    }
    if let Err(r) = whitelist(policy, facts) {
        out.push(r);
    }
    if let Err(r) = password_strength(&policy.password_rule, facts.password.as_ref()) {
        out.push(r);
    }
    out
}

fn registration_rules(policy: &CompiledPolicy, _facts: &Facts) -> Result<(), Rejection> {
    if policy.register_disabled {
        return Err(Rejection::business(
            "register_disabled",
            "register_disabled",
            2031,
            "应用已禁止注册用户",
        ));
    }
    Ok(())
}

fn whitelist(policy: &CompiledPolicy, facts: &Facts) -> Result<(), Rejection> {
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
    Ok(())
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
    fn failure_decisions() {
        let p = policy(
            r#"{"loginFailStrategy": "captcha"}"#,
            WhitelistEntries::default(),
        );
        let w = Some(Duration::from_secs(5));
        let over = |client, account| Over {
            client,
            account,
            account_full: false,
        };
        let guards = |v: Vec<Rejection>| v.iter().map(|r| (r.guard, r.code)).collect::<Vec<_>>();
        assert!(failure_violations(&p, &over(None, None), CaptchaCheck::NotSent).is_empty());
        assert_eq!(
            guards(failure_violations(
                &p,
                &over(w, None),
                CaptchaCheck::NotSent
            )),
            [("login_fail", 2000)]
        );
        assert!(failure_violations(&p, &over(w, w), CaptchaCheck::Solved).is_empty());
        // Both counters over: each guard names its own verdict, so shadowing
        // one leaves the other in force.
        assert_eq!(
            guards(failure_violations(&p, &over(w, w), CaptchaCheck::NotSent)),
            [("login_fail", 2000), ("password_fail", 2000)]
        );
        assert_eq!(
            guards(failure_violations(
                &p,
                &over(w, w),
                CaptchaCheck::Failed("captcha_wrong")
            )),
            [("captcha", 2001)]
        );
        let b = policy(
            r#"{"loginFailStrategy": "block-account"}"#,
            WhitelistEntries::default(),
        );
        assert_eq!(
            guards(failure_violations(&b, &over(None, w), CaptchaCheck::Solved)),
            [("password_fail", 2057)]
        );
        assert!(!captcha_can_help(&b, &over(None, w)));
        // A full account table asks for a captcha, never locks.
        let full = Over {
            client: None,
            account: w,
            account_full: true,
        };
        assert_eq!(
            guards(failure_violations(&b, &full, CaptchaCheck::NotSent)),
            [("password_fail", 2000)]
        );
        assert!(captcha_can_help(&b, &full));
    }

    #[test]
    fn every_broken_registration_rule_is_reported() {
        let wl = WhitelistEntries {
            email: vec!["ok@x.com".into()],
            ..Default::default()
        };
        let p = policy(
            r#"{"registerDisabled": true, "whitelist": {"emailEnabled": true}, "passwordStrength": 1}"#,
            wl,
        );
        let f = Facts {
            identifier: Some(crate::extract::identify("no@x.com", IdKind::Auto)),
            password: clear("123"),
            ..Default::default()
        };
        let v: Vec<_> = registration_violations(&p, &f)
            .iter()
            .map(|r| r.guard)
            .collect();
        assert_eq!(v, ["register_disabled", "whitelist", "password_strength"]);
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
