//! Which counters a call asks for, and which outcome commits each: the
//! part of a decision made before the counters answer.
//!
//! A login or check (and any call proving itself with a one-time code, a
//! reset token or an old password) is a guessing surface: it asks for a
//! slot in the client's failure counter (`loginFailCheck`) and, when it names
//! an account and carries a secret, in the account's (`loginPasswordFailCheck`).
//! A registration asks for one in `frequentRegisterCheck`; a code sent, in
//! the send limits per client and per recipient. What the counters answer
//! means for the call is [`over_limit`] (a full or denied failure counter
//! asks for a captcha, a full or denied registration or send counter refuses);
//! what that earns is judged by [`super::failure_violations`]; which outcome
//! then counts is [`CommitOn::commits`]. A counter that refused a slot to a
//! request that goes through anyway (a solved captcha, a guard in dry run)
//! is asked again, forced: what passed over a limit still counts.

use std::time::Duration;

use super::failures::Over;
use super::{register_too_frequent, registration, send_code, send_code_limited, Rejection};
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

/// One counter a call of a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// The call's index in its request.
    pub call: usize,
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
    let mut out = Counters::new();
    push_counters(&mut out, 0, kind, facts, policy, send);
    out.into_vec()
}

/// A request's counters: inline for the common REST call (a login asks for
/// two), so the guarded path does not allocate for them.
pub type Counters = smallvec::SmallVec<[Counted; 4]>;

/// The counters every call of a request asks for, in call order: asked in
/// one round trip to a shared store.
pub fn request_counters<'a>(
    calls: impl IntoIterator<Item = (RouteKind, &'a Facts)>,
    policy: &CompiledPolicy,
    send: &SendCodeConfig,
) -> Counters {
    let mut out = Counters::new();
    for (i, (kind, facts)) in calls.into_iter().enumerate() {
        push_counters(&mut out, i, kind, facts, policy, send);
    }
    out
}

fn push_counters(
    out: &mut Counters,
    call: usize,
    kind: RouteKind,
    facts: &Facts,
    policy: &CompiledPolicy,
    send: &SendCodeConfig,
) {
    let mut push = |role, on, limit: Option<WindowLimit>| {
        if let Some(limit) = limit {
            out.push(Counted {
                call,
                role,
                on,
                limit,
            });
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
}

/// How long a call over a failure counter that is full (not denied) waits.
const FULL_FAILURE_WAIT: Duration = Duration::from_secs(1);

/// What a counter that refused its slot means for its call. `wait` is when
/// the counter frees a slot; `None` means its table is full (the key could
/// not be tracked). A failure counter puts the call over its limit (recorded
/// in `over`, judged with the captcha by [`super::failure_violations`]; a
/// full account table asks for a captcha but never locks). A registration
/// or send counter refuses the call: fail closed, what cannot be counted is
/// not let through.
pub fn over_limit(c: &Counted, wait: Option<Duration>, over: &mut Over) -> Option<Rejection> {
    match c.role {
        Role::FailClient => {
            over.client = Some(wait.unwrap_or(FULL_FAILURE_WAIT));
            None
        }
        Role::FailAccount => {
            over.account = Some(wait.unwrap_or(FULL_FAILURE_WAIT));
            over.account_full = wait.is_none();
            None
        }
        Role::Register => Some(match wait {
            Some(w) => register_too_frequent("too_frequent", w),
            None => register_too_frequent("store_full", registration::FULL_RETRY),
        }),
        Role::SendClient | Role::SendRecipient => Some(send_code_limited(
            if c.role == Role::SendClient {
                "client_limit"
            } else {
                "recipient_limit"
            },
            wait.unwrap_or(send_code::FULL_RETRY),
        )),
    }
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

    #[test]
    fn what_a_refused_counter_means() {
        let c = |role| Counted {
            call: 0,
            role,
            on: CommitOn::Failure,
            limit: WindowLimit {
                limit: 1,
                window: Duration::from_secs(60),
            },
        };
        let w = Duration::from_secs(30);
        let mut over = Over::default();
        assert!(over_limit(&c(Role::FailClient), Some(w), &mut over).is_none());
        assert_eq!(over.client, Some(w));
        // A full account table asks for a captcha and never locks.
        assert!(over_limit(&c(Role::FailAccount), None, &mut over).is_none());
        assert_eq!(
            (over.account, over.account_full),
            (Some(FULL_FAILURE_WAIT), true)
        );
        let r = over_limit(&c(Role::Register), None, &mut over).unwrap();
        assert_eq!((r.reason, r.code), ("store_full", 2100));
        let r = over_limit(&c(Role::Register), Some(w), &mut over).unwrap();
        assert_eq!((r.reason, r.retry_after), ("too_frequent", Some(w)));
        let r = over_limit(&c(Role::SendRecipient), None, &mut over).unwrap();
        assert_eq!((r.reason, r.code), ("recipient_limit", 429));
        assert_eq!(r.retry_after, Some(send_code::FULL_RETRY));
    }

    #[test]
    fn a_request_asks_for_every_call_in_order() {
        let login = facts(Some("a@x.com"), true, false);
        let reg = facts(Some("b@x.com"), true, false);
        let asked: Vec<_> = request_counters(
            [(RouteKind::Login, &login), (RouteKind::Register, &reg)],
            &policy(),
            &SendCodeConfig::default(),
        )
        .into_iter()
        .map(|c| (c.call, c.role))
        .collect();
        assert_eq!(
            asked,
            [
                (0, Role::FailClient),
                (0, Role::FailAccount),
                (1, Role::Register)
            ]
        );
    }
}
