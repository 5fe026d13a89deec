//! Registration rules: `registerDisabled` (2031), the whitelist (2040),
//! `passwordStrength` (2029, 2061) and `frequentRegisterCheck` (2100).
//!
//! The first three need no counter; the last is the answer when the
//! registration counter of [`super::plan`] is full or denied.

use std::time::Duration;

use super::{Guard, Rejection};
use crate::extract::{Facts, Password};
use crate::policy::{CompiledPolicy, PasswordRule};
use crate::routes::{IdKind, RouteKind};

/// Reasons of guard `register_disabled`.
pub const REGISTER_DISABLED_REASONS: &[&str] = &["register_disabled"];
/// Reasons of guard `register_limit`.
pub const REGISTER_LIMIT_REASONS: &[&str] = &["too_frequent", "store_full"];
/// Reasons of guard `whitelist`.
pub const WHITELIST_REASONS: &[&str] = &["not_whitelisted", "no_identifier"];
/// Reasons of guard `password_strength`.
pub const PASSWORD_STRENGTH_REASONS: &[&str] = &["too_short", "weak", "custom_rule"];

/// Code poolgate uses for "identifier not on the registration whitelist": no
/// Authing source gives one; 2040 is unused in Authing's published table.
pub const WHITELIST_CODE: i64 = 2040;

/// How long a registration refused because its counter is full should wait.
pub const FULL_RETRY: Duration = Duration::from_secs(10);

/// The answer when registrations from one client are too frequent (2100).
pub fn register_too_frequent(reason: &'static str, wait: Duration) -> Rejection {
    Rejection::business(
        Guard::RegisterLimit,
        reason,
        2100,
        "注册过于频繁，请稍候再试",
    )
    .retry_after(wait)
}

/// The rules a call of `kind` breaks that need no counter: the
/// registration rules for a registration, the password rule for a password
/// set; every one, in order (shadow mode picks the first one not shadowed).
pub fn call_rules(policy: &CompiledPolicy, kind: RouteKind, facts: &Facts) -> Vec<Rejection> {
    match kind {
        RouteKind::Register => registration_violations(policy, facts),
        RouteKind::Password => password_strength(&policy.password_rule, facts.password.as_ref())
            .err()
            .into_iter()
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether a call's password rule went unchecked because the client
/// encrypted the password (counted: the upstream judges those).
pub fn encrypted_unchecked(policy: &CompiledPolicy, kind: RouteKind, facts: &Facts) -> bool {
    matches!(kind, RouteKind::Register | RouteKind::Password)
        && matches!(facts.password, Some(Password::Encrypted))
        && !matches!(policy.password_rule, PasswordRule::None)
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
            Guard::RegisterDisabled,
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
                    Guard::Whitelist,
                    "not_whitelisted",
                    WHITELIST_CODE,
                    "该账号不在注册白名单中",
                ));
            }
        }
    } else if wl.email.is_some() || wl.phone.is_some() || wl.username.is_some() {
        // A registration whose identifier cannot be read cannot be whitelisted.
        return Err(Rejection::business(
            Guard::Whitelist,
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
            Guard::PasswordStrength,
            "too_short",
            2029,
            "密码长度不能少于 6 位",
        )
    };
    let weak = || Rejection::business(Guard::PasswordStrength, "weak", 2061, "密码强度不符合要求");
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
                    Guard::PasswordStrength,
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
    use crate::guards::Guard;
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
        assert_eq!(
            v,
            [
                Guard::RegisterDisabled,
                Guard::Whitelist,
                Guard::PasswordStrength
            ]
        );
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
