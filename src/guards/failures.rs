//! `loginFailCheck` (guard `login_fail`, per client) and
//! `loginPasswordFailCheck` with `loginFailStrategy` (guard `password_fail`,
//! per account): what a call over its failure counters earns — a captcha
//! required (2000), or a locked account (2057).
//!
//! Where a call stands ([`Over`]) comes from what its counters answered
//! ([`super::plan::over_limit`]); whether a captcha sent with it was solved,
//! from [`super::captcha`].

use std::time::Duration;

use super::captcha::{captcha_failed, CaptchaCheck};
use super::{Guard, Rejection};
use crate::policy::{CompiledPolicy, FailStrategy};

/// Reasons of guard `login_fail`.
pub const LOGIN_FAIL_REASONS: &[&str] = &["captcha_required"];
/// Reasons of guard `password_fail`.
pub const PASSWORD_FAIL_REASONS: &[&str] = &["captcha_required", "account_locked"];

/// Authing's captcha-required answer (code 2000).
pub fn captcha_required(guard: Guard) -> Rejection {
    Rejection::business(guard, "captcha_required", 2000, "账号异常，需要输入验证码")
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

impl Over {
    /// The guard a solved captcha let a call past (the `allow_captcha`
    /// decision's label): the client's limit when it is over, else the account's.
    pub fn blamed(&self) -> Guard {
        if self.client.is_some() {
            Guard::LoginFail
        } else {
            Guard::PasswordFail
        }
    }
}

/// Whether a call over its limits could pass with a captcha (so one sent
/// with it is worth checking): not when the account is locked.
pub fn captcha_can_help(policy: &CompiledPolicy, over: &Over) -> bool {
    over.any() && !account_locked(policy, over)
}

/// Whether the captcha sent with a call is worth checking: one was sent,
/// and solving it could let the call past the limits it is over.
pub fn captcha_worth_checking(policy: &CompiledPolicy, over: &Over, sent: bool) -> bool {
    sent && captcha_can_help(policy, over)
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
                Guard::PasswordFail,
                "account_locked",
                2057,
                "密码错误次数过多，账号已被锁定，请稍后再试",
            )
            .retry_after(over.account.unwrap_or(Duration::from_secs(1))),
        );
    }
    let needs = [
        (Guard::LoginFail, over.client.is_some()),
        (
            Guard::PasswordFail,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::CompiledPolicy;
    use crate::policy::{PoolDetail, WhitelistEntries};

    fn policy(json: &str, wl: WhitelistEntries) -> CompiledPolicy {
        CompiledPolicy::compile(&PoolDetail::from_json(json.as_bytes()).unwrap(), &wl, "t").unwrap()
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
        let guards = |v: Vec<Rejection>| {
            v.iter()
                .map(|r| (r.guard.as_str(), r.code))
                .collect::<Vec<_>>()
        };
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
    fn the_client_limit_takes_the_blame_for_a_solved_captcha() {
        let w = Some(Duration::from_secs(1));
        let over = |client, account| Over {
            client,
            account,
            account_full: false,
        };
        assert_eq!(over(w, w).blamed(), Guard::LoginFail);
        assert_eq!(over(None, w).blamed(), Guard::PasswordFail);
    }
}
