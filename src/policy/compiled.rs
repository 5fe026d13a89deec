//! The compiled, immutable policy the guards read on every request.
//!
//! Compilation happens once per change of the source document: durations,
//! limits, origin matchers, whitelist sets and the password rule are built here
//! so that no request ever parses or allocates policy state.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::model::{PoolDetail, WhitelistEntries, WindowCheck};
use super::origins::OriginMatcher;
use crate::extract::Normalize;

/// A limit of `limit` events per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WindowLimit {
    /// Events allowed per window.
    pub limit: u32,
    /// Window length.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

/// What `loginPasswordFailCheck` does when it trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailStrategy {
    /// The account's next logins need a captcha.
    Captcha,
    /// The account is locked for the window.
    BlockAccount,
}

/// The password rule of `passwordStrength`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum PasswordRule {
    /// No check (0), or a level the gateway leaves to the server (5).
    None,
    /// At least 6 characters (1).
    MinLength,
    /// At least 6 characters and two of digit, letter, symbol (2).
    TwoClasses,
    /// At least 6 characters and all of digit, letter, symbol (3).
    ThreeClasses,
    /// Must match the pool's regex (4).
    Custom {
        /// The pattern.
        #[serde(serialize_with = "ser_regex")]
        regex: PasswordRegex,
        /// The message shown on failure.
        message: String,
    },
}

fn ser_regex<S: serde::Serializer>(r: &PasswordRegex, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(r.as_str())
}

/// The pool's `customPasswordStrength.regex`, written for JavaScript.
///
/// Patterns the linear-time `regex` crate accepts run there. Authing's console
/// patterns often use look-ahead (`^(?=.*[A-Z])(?=.*\d).{8,}$`), which it does
/// not support: those run on `fancy-regex` (backtracking) with a bounded
/// number of steps. A password that exhausts the bound does not pass.
#[derive(Debug, Clone)]
pub enum PasswordRegex {
    /// Linear time.
    Linear(regex::Regex),
    /// Look-around or back-references: backtracking, bounded.
    Backtracking(fancy_regex::Regex),
}

/// Steps a backtracking password pattern may take before it counts as failed.
const BACKTRACK_LIMIT: usize = 100_000;

impl PasswordRegex {
    /// Compiles `pattern`, preferring the linear engine.
    pub fn new(pattern: &str) -> Result<Self, String> {
        match regex::RegexBuilder::new(pattern)
            .size_limit(1 << 20)
            .build()
        {
            Ok(r) => Ok(PasswordRegex::Linear(r)),
            Err(linear) => fancy_regex::RegexBuilder::new(pattern)
                .backtrack_limit(BACKTRACK_LIMIT)
                .delegate_size_limit(1 << 20)
                .build()
                .map(PasswordRegex::Backtracking)
                .map_err(|e| format!("{e} (as a linear pattern: {linear})")),
        }
    }

    /// Whether `password` matches; a backtracking run that exceeds its
    /// bound is a failure, so a pathological pattern cannot be talked past.
    pub fn is_match(&self, password: &str) -> bool {
        match self {
            PasswordRegex::Linear(r) => r.is_match(password),
            PasswordRegex::Backtracking(r) => r.is_match(password).unwrap_or(false),
        }
    }

    /// The pattern as configured.
    pub fn as_str(&self) -> &str {
        match self {
            PasswordRegex::Linear(r) => r.as_str(),
            PasswordRegex::Backtracking(r) => r.as_str(),
        }
    }
}

/// Whitelist sets; `None` where that identifier kind is not restricted.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Whitelist {
    /// Normalised usernames, when usernames are restricted.
    #[serde(serialize_with = "ser_len")]
    pub username: Option<HashSet<String>>,
    /// Lowercased emails, when emails are restricted.
    #[serde(serialize_with = "ser_len")]
    pub email: Option<HashSet<String>>,
    /// Normalised phone numbers, when phones are restricted.
    #[serde(serialize_with = "ser_len")]
    pub phone: Option<HashSet<String>>,
}

// The admin view shows how many entries a list has, not the identifiers.
fn ser_len<S: serde::Serializer>(v: &Option<HashSet<String>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        None => s.serialize_none(),
        Some(set) => s.serialize_some(&serde_json::json!({ "entries": set.len() })),
    }
}

/// Identifier normalisation shared by the whitelist and the account counters.
pub mod normalize {
    /// Emails compare case-insensitively, without surrounding space. The
    /// usual ASCII address skips the Unicode case tables (ASCII lowercases
    /// to the same string under both).
    pub fn email(s: &str) -> String {
        let t = s.trim();
        if t.is_ascii() {
            t.to_ascii_lowercase()
        } else {
            t.to_lowercase()
        }
    }
    /// Phone numbers in E.164 (see [`crate::extract::phone`]).
    pub fn phone(s: &str, region: crate::extract::phone::PhoneRegion) -> String {
        crate::extract::phone::normalize(s, None, region)
    }
    /// Usernames lose surrounding space.
    pub fn username(s: &str) -> String {
        s.trim().to_string()
    }
}

/// The policy in force.
#[derive(Debug, Clone, Serialize)]
pub struct CompiledPolicy {
    /// Short hash of the source document: changes exactly when the policy does.
    pub version: String,
    /// Which source produced it (`file`, `authing`, `snapshot`).
    pub source: String,
    /// When it was compiled.
    #[serde(with = "humantime_serde")]
    pub compiled_at: SystemTime,
    /// Pool id.
    pub pool_id: Option<String>,
    /// Pool name.
    pub pool_name: Option<String>,
    /// `loginFailCheck`: failures per client IP before a captcha is required.
    pub login_fail: Option<WindowLimit>,
    /// `loginPasswordFailCheck`: wrong passwords per account.
    pub password_fail: Option<WindowLimit>,
    /// `loginFailStrategy`.
    pub fail_strategy: FailStrategy,
    /// `frequentRegisterCheck`: registrations per client IP.
    pub register_limit: Option<WindowLimit>,
    /// `registerDisabled`.
    pub register_disabled: bool,
    /// `allowedOrigins`.
    #[serde(serialize_with = "ser_origins")]
    pub origins: OriginMatcher,
    /// `whitelist` with its entries.
    pub whitelist: Whitelist,
    /// `passwordStrength` / `customPasswordStrength`.
    pub password_rule: PasswordRule,
    /// Things in the document that were odd but not fatal.
    pub warnings: Vec<String>,
}

fn ser_origins<S: serde::Serializer>(o: &OriginMatcher, s: S) -> Result<S::Ok, S::Error> {
    if o.allows_all() {
        s.serialize_str("*")
    } else {
        o.entries().serialize(s)
    }
}

/// Why a document cannot become the policy in force.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// A field has a value the gateway cannot enforce safely.
    #[error("{field}: {message}")]
    Invalid {
        /// The Authing field name.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

fn invalid(field: &'static str, message: impl Into<String>) -> CompileError {
    CompileError::Invalid {
        field,
        message: message.into(),
    }
}

/// Longest window accepted (30 days): longer ones are almost certainly a unit mistake.
const MAX_WINDOW_SECS: i64 = 30 * 24 * 3600;

fn window(
    field: &'static str,
    c: &WindowCheck,
    warnings: &mut Vec<String>,
) -> Result<Option<WindowLimit>, CompileError> {
    if c.enabled != Some(true) {
        return Ok(None);
    }
    let limit = c.limit.unwrap_or(0);
    let secs = c.time_interval.unwrap_or(0);
    if limit < 0 || secs < 0 {
        return Err(invalid(
            field,
            "limit and timeInterval must not be negative",
        ));
    }
    if limit == 0 || secs == 0 {
        // Authing's console never produces this; enforcing it would lock every
        // client out, so the check is off and `poolgate check` says so.
        warnings.push(format!(
            "{field} is enabled with limit {limit} and timeInterval {secs}: not enforced"
        ));
        return Ok(None);
    }
    if secs > MAX_WINDOW_SECS {
        return Err(invalid(
            field,
            format!("timeInterval {secs}s is longer than 30 days"),
        ));
    }
    let limit = u32::try_from(limit).map_err(|_| invalid(field, "limit is too large"))?;
    Ok(Some(WindowLimit {
        limit,
        window: Duration::from_secs(secs as u64),
    }))
}

impl CompiledPolicy {
    /// Compiles a pool document and its whitelist entries (phone numbers in
    /// the default region).
    pub fn compile(
        pool: &PoolDetail,
        entries: &WhitelistEntries,
        source: &str,
    ) -> Result<CompiledPolicy, CompileError> {
        Self::compile_with(pool, entries, source, Normalize::default())
    }

    /// Compiles a pool document and its whitelist entries, normalising
    /// whitelisted identifiers as request identifiers are.
    pub fn compile_with(
        pool: &PoolDetail,
        entries: &WhitelistEntries,
        source: &str,
        norm: Normalize,
    ) -> Result<CompiledPolicy, CompileError> {
        let mut warnings = Vec::new();
        let login_fail = window("loginFailCheck", &pool.login_fail_check, &mut warnings)?;
        let password_fail = window(
            "loginPasswordFailCheck",
            &pool.login_password_fail_check,
            &mut warnings,
        )?;
        let register_limit = window(
            "frequentRegisterCheck",
            &pool.frequent_register_check,
            &mut warnings,
        )?;
        let fail_strategy = match pool.login_fail_strategy.as_deref().map(str::trim) {
            None | Some("") | Some("captcha") => FailStrategy::Captcha,
            Some("block-account") => FailStrategy::BlockAccount,
            Some(other) => {
                // Unknown strategies get the milder, still protective one.
                warnings.push(format!(
                    "loginFailStrategy {other:?} is unknown: using \"captcha\""
                ));
                FailStrategy::Captcha
            }
        };
        let (origins, skipped) =
            OriginMatcher::compile(pool.allowed_origins.as_deref().unwrap_or(""));
        for s in skipped {
            warnings.push(format!(
                "allowedOrigins line {:?} ignored: {}",
                s.line, s.reason
            ));
        }
        if !origins.allows_all() && origins.entries().is_empty() {
            warnings
                .push("allowedOrigins has no usable entry: no browser origin is allowed".into());
        }
        let t = &pool.whitelist;
        let set = |on: Option<bool>, list: &[String], f: &dyn Fn(&str) -> String| {
            (on == Some(true)).then(|| {
                list.iter()
                    .map(|s| f(s))
                    .filter(|s| !s.is_empty())
                    .collect()
            })
        };
        let whitelist = Whitelist {
            username: set(t.username_enabled, &entries.username, &normalize::username),
            email: set(t.email_enabled, &entries.email, &normalize::email),
            phone: set(t.phone_enabled, &entries.phone, &|s| {
                normalize::phone(s, norm.phone_region)
            }),
        };
        let password_rule = match pool.password_strength.unwrap_or(0) {
            0 | 5 => PasswordRule::None,
            1 => PasswordRule::MinLength,
            2 => PasswordRule::TwoClasses,
            3 => PasswordRule::ThreeClasses,
            4 => {
                let c = &pool.custom_password_strength;
                let pattern = c.regex.as_deref().unwrap_or("").trim();
                if pattern.is_empty() {
                    return Err(invalid(
                        "customPasswordStrength.regex",
                        "passwordStrength is 4 but no regex is set",
                    ));
                }
                let regex = PasswordRegex::new(pattern)
                    .map_err(|e| invalid("customPasswordStrength.regex", e))?;
                PasswordRule::Custom {
                    regex,
                    message: c
                        .message
                        .clone()
                        .filter(|m| !m.trim().is_empty())
                        .unwrap_or_else(|| "密码强度不符合要求".to_string()),
                }
            }
            other => {
                return Err(invalid(
                    "passwordStrength",
                    format!("{other} is not a level (0-5)"),
                ))
            }
        };
        Ok(CompiledPolicy {
            version: version_of(pool, entries),
            source: source.to_string(),
            compiled_at: SystemTime::now(),
            pool_id: pool.id.clone(),
            pool_name: pool.name.clone(),
            login_fail,
            password_fail,
            fail_strategy,
            register_limit,
            register_disabled: pool.register_disabled == Some(true),
            origins,
            whitelist,
            password_rule,
            warnings,
        })
    }
}

/// A short, stable hash of what the gateway enforces — the checks, the
/// strategy, the origins, registration and password rules, and the whitelist
/// entries — as the policy's version label: it changes exactly when the
/// enforced policy does (the pool's name, id and `updatedAt` are not in it,
/// so a renamed pool is the same policy).
pub fn version_of(pool: &PoolDetail, entries: &WhitelistEntries) -> String {
    let enforced = PoolDetail {
        id: None,
        name: None,
        updated_at: None,
        ..pool.clone()
    };
    let mut h = Sha256::new();
    // Serialising our own types cannot fail; an empty hash would still be a valid label.
    h.update(serde_json::to_vec(&enforced).unwrap_or_default());
    h.update([0]);
    h.update(serde_json::to_vec(entries).unwrap_or_default());
    let d = h.finalize();
    d[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ascii_email_path_agrees_with_unicode_lowercasing() {
        for raw in [
            " Bob@Example.COM ",
            "\tA.B+c@X.io\n",
            "ÉLODIE@Exemple.fr",
            "x@y",
            "İ@x.tr",
            "",
        ] {
            assert_eq!(normalize::email(raw), raw.trim().to_lowercase(), "{raw:?}");
        }
    }

    fn pool(json: &str) -> PoolDetail {
        PoolDetail::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn fixture_compiles() {
        // The shared fixture, copied into the repository so the test needs nothing beside it.
        let text = std::fs::read("tests/fixtures/pool-detail-response.json").unwrap();
        let p = PoolDetail::from_json(&text).unwrap();
        let c = CompiledPolicy::compile(&p, &WhitelistEntries::default(), "file").unwrap();
        assert_eq!(c.version.len(), 12);
        assert!(c.origins.allows_all());
    }

    #[test]
    fn the_version_follows_what_is_enforced() {
        let a = pool(r#"{"name": "a", "updatedAt": "1", "registerDisabled": true}"#);
        let b = pool(r#"{"name": "b", "updatedAt": "2", "registerDisabled": true}"#);
        let c = pool(r#"{"name": "a", "updatedAt": "1", "registerDisabled": false}"#);
        let e = WhitelistEntries::default();
        assert_eq!(version_of(&a, &e), version_of(&b, &e));
        assert_ne!(version_of(&a, &e), version_of(&c, &e));
    }

    #[test]
    fn windows_and_strategy() {
        let p = pool(
            r#"{"loginFailCheck": {"enabled": true, "limit": 3, "timeInterval": 60},
            "loginPasswordFailCheck": {"enabled": false, "limit": 3, "timeInterval": 60},
            "frequentRegisterCheck": {"enabled": true, "limit": 0, "timeInterval": 0},
            "loginFailStrategy": "block-account"}"#,
        );
        let c = CompiledPolicy::compile(&p, &WhitelistEntries::default(), "t").unwrap();
        assert_eq!(
            c.login_fail,
            Some(WindowLimit {
                limit: 3,
                window: Duration::from_secs(60)
            })
        );
        assert_eq!(c.password_fail, None);
        assert_eq!(c.register_limit, None);
        assert_eq!(c.fail_strategy, FailStrategy::BlockAccount);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    }

    #[test]
    fn javascript_password_patterns_compile() {
        let lookahead = PasswordRegex::new(r"^(?=.*[A-Z])(?=.*\d).{8,}$").unwrap();
        assert!(matches!(lookahead, PasswordRegex::Backtracking(_)));
        assert!(lookahead.is_match("abcdEfg1"));
        assert!(!lookahead.is_match("abcdefg1"));
        assert!(matches!(
            PasswordRegex::new("^[a-z]{6,}$").unwrap(),
            PasswordRegex::Linear(_)
        ));
        // A catastrophic pattern runs out of steps: the password does not pass.
        let evil = PasswordRegex::new(r"^(?=a)(a+)+$").unwrap();
        assert!(!evil.is_match(&format!("{}!", "a".repeat(40))));
        assert!(PasswordRegex::new("(?=(").is_err());
    }

    #[test]
    fn invalid_values_are_refused() {
        for bad in [
            r#"{"loginFailCheck": {"enabled": true, "limit": -1, "timeInterval": 60}}"#,
            r#"{"passwordStrength": 9}"#,
            r#"{"passwordStrength": 4, "customPasswordStrength": {"enabled": true, "regex": "("}}"#,
            r#"{"passwordStrength": 4}"#,
        ] {
            assert!(
                CompiledPolicy::compile(&pool(bad), &WhitelistEntries::default(), "t").is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn whitelist_normalised_only_when_enabled() {
        let p = pool(r#"{"whitelist": {"emailEnabled": true, "phoneEnabled": false}}"#);
        let e = WhitelistEntries {
            email: vec![" Alice@Example.COM ".into()],
            phone: vec!["+86 138-0000-0000".into()],
            ..Default::default()
        };
        let c = CompiledPolicy::compile(&p, &e, "t").unwrap();
        assert!(c
            .whitelist
            .email
            .as_ref()
            .unwrap()
            .contains("alice@example.com"));
        assert!(c.whitelist.phone.is_none());
        let shown = serde_json::to_string(&c).unwrap();
        assert!(
            !shown.contains("alice"),
            "admin view shows counts, not identifiers"
        );
    }

    #[test]
    fn version_tracks_content() {
        let a = pool(r#"{"registerDisabled": false}"#);
        let b = pool(r#"{"registerDisabled": true}"#);
        let w = WhitelistEntries::default();
        assert_eq!(version_of(&a, &w), version_of(&a.clone(), &w));
        assert_ne!(version_of(&a, &w), version_of(&b, &w));
    }
}
