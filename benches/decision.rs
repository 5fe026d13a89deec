//! The per-request decision path and its parts, without sockets.
//!
//! `cargo bench --bench decision`. Targets (issue 4): the whole login decision
//! under 250 ns single-threaded; CORS cost flat in the number of origins.

use std::net::IpAddr;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use poolgate::classify::RouteTable;
use poolgate::client_ip::ClientIpResolver;
use poolgate::config::{GuardsConfig, RateLimitConfig};
use poolgate::extract;
use poolgate::guards::{self, cors};
use poolgate::policy::origins::OriginMatcher;
use poolgate::policy::{CompiledPolicy, PoolDetail, WhitelistEntries};
use poolgate::store::counters::Reserve;
use poolgate::store::GuardState;

const POOL: &str = r#"{"code":200,"message":"ok","data":{
  "loginFailCheck":{"enabled":true,"limit":1000000000,"timeInterval":3600},
  "loginPasswordFailCheck":{"enabled":true,"limit":1000000000,"timeInterval":3600},
  "frequentRegisterCheck":{"enabled":true,"limit":50,"timeInterval":300},
  "loginFailStrategy":"captcha","allowedOrigins":"https://app.sample.com\nhttps://*.sample.com",
  "registerDisabled":false,"passwordStrength":3,
  "whitelist":{"emailEnabled":true},"customDb":{"cahceConfig":null}}}"#;

fn policy() -> CompiledPolicy {
    let pool = PoolDetail::from_json(POOL.as_bytes()).expect("bench pool parses");
    let wl = WhitelistEntries {
        email: vec!["a@b.c".into()],
        ..Default::default()
    };
    CompiledPolicy::compile(&pool, &wl, "bench").expect("bench pool compiles")
}

fn decision(c: &mut Criterion) {
    let p = policy();
    let table = RouteTable::default_table();
    let resolver = ClientIpResolver::new(vec!["10.0.0.0/8".parse().unwrap()]);
    let rate = RateLimitConfig {
        login: poolgate::config::Rate {
            per_second: 1_000_000_000,
            burst: 1_000_000_000,
        },
        ..RateLimitConfig::default()
    };
    let state = GuardState::new(&GuardsConfig::default(), &rate);
    let mut headers = HeaderMap::new();
    headers.insert("origin", HeaderValue::from_static("https://app.sample.com"));
    headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let body = br#"{"account":"bob@example.com","password":"hunter2!x","captchaCode":""}"#;
    let peer: IpAddr = "10.1.2.3".parse().unwrap();
    let method = Method::POST;

    c.bench_function("login_decision_all_guards", |b| {
        b.iter(|| {
            let class = table.classify(&method, black_box("/api/v2/login/account"));
            let route = match class {
                poolgate::classify::Class::Route(r) => r,
                _ => unreachable!(),
            };
            let ip = resolver.resolve(peer, &headers);
            let key = state.client_key(ip);
            let allowed = matches!(cors::check(&p, &headers), cors::Cors::Allowed(_));
            let rate_ok = state.rate.check(route.kind, key).is_ok();
            let v = extract::parse_body(extract::BodyKind::Json, black_box(body)).unwrap();
            let facts = extract::facts(&v, &route.fields);
            let acct = state.account_key(&facts.identifier.as_ref().unwrap().value);
            let ip_res = state
                .login_ip
                .try_reserve(key, p.login_fail.unwrap(), false);
            let acct_res = state
                .account
                .try_reserve(acct, p.password_fail.unwrap(), false);
            let gate = guards::login_gate(&p, None, None, facts.captcha_code.is_some());
            if let (Reserve::Granted(a), Reserve::Granted(b2)) = (ip_res, acct_res) {
                a.release();
                b2.release();
            }
            black_box((allowed, rate_ok, gate))
        })
    });

    c.bench_function("classify_canonical_path", |b| {
        b.iter(|| {
            table
                .classify(&method, black_box("/api/v2/login/account"))
                .is_other()
        })
    });
    c.bench_function("classify_odd_spelling", |b| {
        b.iter(|| {
            table
                .classify(&method, black_box("//API/v2/x/../login/account/"))
                .is_other()
        })
    });
}

fn cors_scaling(c: &mut Criterion) {
    let mut g = c.benchmark_group("cors_match");
    for n in [1usize, 100, 1000] {
        let list: String = (0..n)
            .map(|i| format!("https://app{i}.sample.com\n"))
            .collect();
        let (m, _) = OriginMatcher::compile(&format!("{list}https://*.wild.com"));
        g.bench_with_input(BenchmarkId::new("exact_hit", n), &m, |b, m| {
            b.iter(|| m.allows(black_box("https://app0.sample.com")))
        });
        g.bench_with_input(BenchmarkId::new("wildcard_hit", n), &m, |b, m| {
            b.iter(|| m.allows(black_box("https://x.wild.com")))
        });
        g.bench_with_input(BenchmarkId::new("miss", n), &m, |b, m| {
            b.iter(|| m.allows(black_box("https://evil.example")))
        });
    }
    g.finish();
}

fn compile(c: &mut Criterion) {
    let text = std::fs::read("config/pool.json").expect("run from the crate root");
    c.bench_function("policy_parse_and_compile_fixture", |b| {
        b.iter(|| {
            let pool = PoolDetail::from_json(black_box(&text)).unwrap();
            CompiledPolicy::compile(&pool, &WhitelistEntries::default(), "bench").unwrap()
        })
    });
}

fn counters(c: &mut Criterion) {
    let state = GuardState::new(&GuardsConfig::default(), &RateLimitConfig::default());
    let limit = poolgate::policy::WindowLimit {
        limit: u32::MAX,
        window: Duration::from_secs(60),
    };
    c.bench_function("counter_reserve_commit_one_key", |b| {
        b.iter(|| {
            if let Reserve::Granted(p) = state.login_ip.try_reserve(black_box(42), limit, false) {
                p.commit();
            }
        })
    });
    let mut k: u128 = 0;
    c.bench_function("counter_reserve_commit_distinct_keys", |b| {
        b.iter(|| {
            k = k.wrapping_add(1) % 500_000;
            if let Reserve::Granted(p) = state.register_ip.try_reserve(black_box(k), limit, false) {
                p.commit();
            }
        })
    });
}

criterion_group!(benches, decision, cors_scaling, compile, counters);
criterion_main!(benches);
