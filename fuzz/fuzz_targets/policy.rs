//! Pool-detail parsing and compiling: `PoolDetail::from_json`,
//! `WhitelistEntries::from_json` and `CompiledPolicy::compile`.
//!
//! The policy document comes from Authing's API or a file an operator edits:
//! not an attacker's bytes on the hot path, but a malformed one must be an
//! error, never a crash of the gateway that keeps the last good policy.
//! Random bytes rarely reach `compile`, so half the input also builds a
//! pool object field by field from fuzzer-chosen values of every JSON type.

#![no_main]

use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use poolgate::policy::compiled::{normalize, CompiledPolicy, PasswordRule};
use poolgate::policy::{PoolDetail, WhitelistEntries};
use serde_json::{json, Value};

/// A JSON value of any type, as Authing's loosely typed fields may carry.
#[derive(Arbitrary, Debug)]
enum Loose {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Absent,
}

impl Loose {
    fn value(&self) -> Option<Value> {
        match self {
            Loose::Null => Some(Value::Null),
            Loose::Bool(b) => Some(json!(b)),
            Loose::Int(i) => Some(json!(i)),
            // NaN and infinities are not JSON: serde_json makes them null.
            Loose::Float(f) => Some(json!(f)),
            Loose::Str(s) => Some(json!(s)),
            Loose::Absent => None,
        }
    }
}

#[derive(Arbitrary, Debug)]
struct Check {
    enabled: Loose,
    limit: Loose,
    time_interval: Loose,
}

#[derive(Arbitrary, Debug)]
struct Pool {
    envelope: Option<(Loose, Loose)>,
    login_fail: Check,
    password_fail: Check,
    register: Check,
    strategy: Loose,
    allowed_origins: Loose,
    register_disabled: Loose,
    whitelist: (Loose, Loose, Loose),
    password_strength: Loose,
    custom_regex: Loose,
    custom_message: Loose,
}

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    raw: &'a [u8],
    raw_whitelist: &'a [u8],
    pool: Pool,
    usernames: Vec<String>,
    emails: Vec<String>,
    phones: Vec<String>,
    passwords: Vec<String>,
}

fn put(obj: &mut serde_json::Map<String, Value>, key: &str, v: &Loose) {
    if let Some(v) = v.value() {
        obj.insert(key.to_string(), v);
    }
}

fn check(c: &Check) -> Value {
    let mut o = serde_json::Map::new();
    put(&mut o, "enabled", &c.enabled);
    put(&mut o, "limit", &c.limit);
    put(&mut o, "timeInterval", &c.time_interval);
    Value::Object(o)
}

fn document(p: &Pool) -> Vec<u8> {
    let mut o = serde_json::Map::new();
    o.insert("loginFailCheck".into(), check(&p.login_fail));
    o.insert("loginPasswordFailCheck".into(), check(&p.password_fail));
    o.insert("frequentRegisterCheck".into(), check(&p.register));
    put(&mut o, "loginFailStrategy", &p.strategy);
    put(&mut o, "allowedOrigins", &p.allowed_origins);
    put(&mut o, "registerDisabled", &p.register_disabled);
    let mut w = serde_json::Map::new();
    put(&mut w, "usernameEnabled", &p.whitelist.0);
    put(&mut w, "emailEnabled", &p.whitelist.1);
    put(&mut w, "phoneEnabled", &p.whitelist.2);
    o.insert("whitelist".into(), Value::Object(w));
    put(&mut o, "passwordStrength", &p.password_strength);
    let mut c = serde_json::Map::new();
    put(&mut c, "regex", &p.custom_regex);
    put(&mut c, "message", &p.custom_message);
    o.insert("customPasswordStrength".into(), Value::Object(c));
    // Fields poolgate must never model: present in real answers.
    o.insert("secret".into(), json!("s3cr3t-do-not-leak"));
    o.insert("jwtSecret".into(), json!("jwt-s3cr3t-do-not-leak"));
    let pool = Value::Object(o);
    let doc = match &p.envelope {
        Some((code, message)) => {
            let mut e = serde_json::Map::new();
            e.insert("code".into(), code.value().unwrap_or(json!(200)));
            put(&mut e, "message", message);
            e.insert("data".into(), pool);
            Value::Object(e)
        }
        None => pool,
    };
    serde_json::to_vec(&doc).unwrap_or_default()
}

fn judge(pool: &PoolDetail, entries: &WhitelistEntries, passwords: &[String]) {
    let Ok(c) = CompiledPolicy::compile(pool, entries, "fuzz") else {
        return;
    };
    // Enforced windows are real limits: a zero limit or window would lock
    // every client out, an absurd window is a unit mistake.
    for w in [c.login_fail, c.password_fail, c.register_limit]
        .into_iter()
        .flatten()
    {
        assert!(w.limit > 0, "{w:?}");
        assert!(
            w.window >= Duration::from_secs(1) && w.window <= Duration::from_secs(30 * 24 * 3600),
            "{w:?}"
        );
    }
    // The version is a 12-hex-digit label, stable for one document.
    assert_eq!(c.version.len(), 12);
    assert!(c.version.bytes().all(|b| b.is_ascii_hexdigit()));
    let again = CompiledPolicy::compile(pool, entries, "other").expect("compiled once");
    assert_eq!(c.version, again.version);
    // Whitelist sets hold normalised, non-empty entries only.
    for (set, norm) in [
        (
            &c.whitelist.username,
            normalize::username as fn(&str) -> String,
        ),
        (&c.whitelist.email, normalize::email),
        (&c.whitelist.phone, |p: &str| {
            normalize::phone(p, Default::default())
        }),
    ] {
        if let Some(set) = set {
            for e in set {
                assert!(!e.is_empty());
                assert_eq!(&norm(e), e, "entry not normalised");
            }
        }
    }
    // The admin view (`/policy`) shows entry counts, never the identifiers,
    // and no secret of the pool document.
    let shown = serde_json::to_value(&c).expect("policy serialises");
    for kind in ["username", "email", "phone"] {
        let v = &shown["whitelist"][kind];
        let set = match kind {
            "username" => &c.whitelist.username,
            "email" => &c.whitelist.email,
            _ => &c.whitelist.phone,
        };
        match set {
            None => assert!(v.is_null(), "{v}"),
            Some(s) => assert_eq!(v, &json!({ "entries": s.len() })),
        }
    }
    let text = shown.to_string();
    assert!(
        !text.contains("do-not-leak"),
        "a secret reached the admin view"
    );
    // The password rule judges any password without panicking.
    if let PasswordRule::Custom { regex, .. } = &c.password_rule {
        for p in passwords.iter().take(4) {
            let _ = regex.is_match(p);
        }
    }
}

fuzz_target!(|input: Input<'_>| {
    // Arbitrary bytes: errors are fine, panics are not.
    let raw_entries = WhitelistEntries::from_json(input.raw_whitelist).unwrap_or_default();
    if let Ok(pool) = PoolDetail::from_json(input.raw) {
        judge(&pool, &raw_entries, &input.passwords);
    }
    let entries = WhitelistEntries {
        username: input.usernames,
        email: input.emails,
        phone: input.phones,
    };
    let doc = document(&input.pool);
    if let Ok(pool) = PoolDetail::from_json(&doc) {
        // What was parsed survives a snapshot round trip unchanged.
        let snap = serde_json::to_vec(&pool).expect("pool serialises");
        let back = PoolDetail::from_json(&snap).expect("a snapshot parses again");
        assert_eq!(back, pool);
        judge(&pool, &entries, &input.passwords);
    }
});
