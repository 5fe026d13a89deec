//! Which counters a call asks for, and which outcome commits each: the
//! part of a decision made before the counters answer.
//!
//! A login or check (and any call proving itself with a one-time code, a
//! reset token or an old password) is a guessing surface: it asks for a
//! slot in the client's failure counter (`loginFailCheck`) and, when it names
//! an account and carries a secret, in the account's (`loginPasswordFailCheck`).
//! A registration asks for one in `frequentRegisterCheck`; a code sent, in
//! the send limits per client and per recipient. What the counters answer
//! is judged by [`super::failure_violations`] and friends; which outcome
//! then counts is [`CommitOn::commits`].

use crate::config::SendCodeConfig;
use crate::extract::Facts;
use crate::guards::outcome::Outcome;
use crate::policy::{CompiledPolicy, WindowLimit};
use crate::routes::RouteKind;

/// What a counter slot stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `loginFailCheck`: the client's failures.
    FailClient,
    /// `loginPasswordFailCheck`: the account's failures.
    FailAccount,
    /// `frequentRegisterCheck`: the client's registrations.
    Register,
    /// `guards.send_code.per_client`.
    SendClient,
    /// `guards.send_code.per_recipient`.
    SendRecipient,
}

/// Which outcome commits a held slot (any other releases it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOn {
    /// The attempt failed in any way, or its answer could not be read
    /// (a client's failure counter).
    Failure,
    /// A wrong password; for a call proving itself with a one-time code or
    /// token instead, any failure (an account's counter: Authing's
    /// wrong-code answers are not 2333).
    AccountFailure {
        /// The call's secret is a code or token, not a password.
        code: bool,
    },
    /// It succeeded, or its answer could not be read (registrations, sends).
    Success,
}

impl CommitOn {
    /// Whether `o` commits the slot (counts the event).
    pub fn commits(self, o: Outcome) -> bool {
        match self {
            CommitOn::Failure => matches!(
                o,
                Outcome::WrongPassword | Outcome::Failed | Outcome::Unreadable
            ),
            CommitOn::AccountFailure { code } => {
                o == Outcome::WrongPassword || (code && o == Outcome::Failed)
            }
            CommitOn::Success => matches!(o, Outcome::Success | Outcome::Unreadable),
        }
    }
}

/// One counter a call asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// What it stands for.
    pub role: Role,
    /// Which outcome commits it.
    pub on: CommitOn,
    /// Its limit and window.
    pub limit: WindowLimit,
}

/// The counters a call of `kind` with `facts` asks for under `policy`
/// (and the send limits of the configuration).
pub fn counters(
    kind: RouteKind,
    facts: &Facts,
    policy: &CompiledPolicy,
    send: &SendCodeConfig,
) -> Vec<Counted> {
    let mut out = Vec::new();
    let mut push = |role, on, limit: Option<WindowLimit>| {
        if let Some(limit) = limit {
            out.push(Counted { role, on, limit });
        }
    };
    let guesses = matches!(kind, RouteKind::Login | RouteKind::Verify) || facts.proof;
    if guesses {
        push(Role::FailClient, CommitOn::Failure, policy.login_fail);
        let secret = facts.password.is_some() || facts.proof;
        if facts.identifier.is_some() && secret {
            // A login by password counts wrong passwords only; a call whose
            // secret is a code or token counts every failure.
            let code = facts.proof && (facts.password.is_none() || kind != RouteKind::Login);
            push(
                Role::FailAccount,
                CommitOn::AccountFailure { code },
                policy.password_fail,
            );
        }
    }
    match kind {
        RouteKind::Register => push(Role::Register, CommitOn::Success, policy.register_limit),
        RouteKind::SendCode => {
            let lim = |n: u32| {
                (n > 0).then_some(WindowLimit {
                    limit: n,
                    window: send.window,
                })
            };
            push(Role::SendClient, CommitOn::Success, lim(send.per_client));
            if facts.identifier.is_some() {
                push(
                    Role::SendRecipient,
                    CommitOn::Success,
                    lim(send.per_recipient),
                );
            }
        }
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::extract::{identify, Password};
    use crate::policy::{PoolDetail, WhitelistEntries};
    use crate::routes::IdKind;

    fn policy() -> CompiledPolicy {
        let json = r#"{"loginFailCheck": {"enabled": true, "limit": 5, "timeInterval": 60},
            "loginPasswordFailCheck": {"enabled": true, "limit": 3, "timeInterval": 60},
            "frequentRegisterCheck": {"enabled": true, "limit": 2, "timeInterval": 60}}"#;
        CompiledPolicy::compile(
            &PoolDetail::from_json(json.as_bytes()).unwrap(),
            &WhitelistEntries::default(),
            "t",
        )
        .unwrap()
    }

    fn facts(id: Option<&str>, password: bool, proof: bool) -> Facts {
        Facts {
            identifier: id.map(|i| identify(i, IdKind::Auto)),
            password: password.then(|| Password::Clear("p".into())),
            proof,
            ..Facts::default()
        }
    }

    fn roles(kind: RouteKind, f: &Facts) -> Vec<(Role, CommitOn)> {
        counters(kind, f, &policy(), &SendCodeConfig::default())
            .into_iter()
            .map(|c| (c.role, c.on))
            .collect()
    }

    #[test]
    fn what_each_call_counts() {
        use CommitOn::*;
        use Role::*;
        let login = facts(Some("a@x.com"), true, false);
        assert_eq!(
            roles(RouteKind::Login, &login),
            [
                (FailClient, Failure),
                (FailAccount, AccountFailure { code: false })
            ]
        );
        // A login without an account or a secret counts for the client only.
        assert_eq!(
            roles(RouteKind::Login, &facts(None, true, false)),
            [(FailClient, Failure)]
        );
        assert_eq!(
            roles(RouteKind::Login, &facts(Some("a@x.com"), false, false)),
            [(FailClient, Failure)]
        );
        // A code login counts every failure for the recipient.
        assert_eq!(
            roles(RouteKind::Login, &facts(Some("13800138000"), false, true)),
            [
                (FailClient, Failure),
                (FailAccount, AccountFailure { code: true })
            ]
        );
        // A password set counts nothing, unless it proves itself with a code.
        assert!(roles(RouteKind::Password, &facts(Some("a@x.com"), true, false)).is_empty());
        assert_eq!(
            roles(RouteKind::Password, &facts(Some("a@x.com"), true, true)),
            [
                (FailClient, Failure),
                (FailAccount, AccountFailure { code: true })
            ]
        );
        assert_eq!(
            roles(RouteKind::Register, &facts(Some("a@x.com"), true, false)),
            [(Register, Success)]
        );
        assert_eq!(
            roles(RouteKind::SendCode, &facts(Some("a@x.com"), false, false)),
            [(SendClient, Success), (SendRecipient, Success)]
        );
        assert_eq!(
            roles(RouteKind::Verify, &facts(None, false, true)),
            [(FailClient, Failure)]
        );
    }

    #[test]
    fn which_outcome_counts() {
        use Outcome::*;
        let all = [Success, WrongPassword, Failed, Unknown, Unreadable];
        let counted = |on: CommitOn| {
            all.iter()
                .filter(|o| on.commits(**o))
                .copied()
                .collect::<Vec<_>>()
        };
        assert_eq!(
            counted(CommitOn::Failure),
            [WrongPassword, Failed, Unreadable]
        );
        assert_eq!(
            counted(CommitOn::AccountFailure { code: false }),
            [WrongPassword]
        );
        assert_eq!(
            counted(CommitOn::AccountFailure { code: true }),
            [WrongPassword, Failed]
        );
        assert_eq!(counted(CommitOn::Success), [Success, Unreadable]);
    }
}
