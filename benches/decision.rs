//! The per-request decision path and its parts, without sockets.
//!
//! `cargo bench --bench decision`. Targets (issue 4): the whole login decision
//! under 250 ns single-threaded; CORS cost flat in the number of origins.

use std::net::IpAddr;
use std::time::Duration;

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use poolgate::client_ip::ClientIpResolver;
use poolgate::config::{GuardsConfig, RateLimitConfig};
use poolgate::extract;
use poolgate::guards::{self, cors};
use poolgate::policy::origins::OriginMatcher;
use poolgate::policy::{CompiledPolicy, PoolDetail, WhitelistEntries};
use poolgate::routes::RouteTable;
use poolgate::store::{AccountKey, AccountKeyer, Ask, Counter, MemoryStore, Reservation, Subject};

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

/// Everything the login decision reads, built once.
struct Env {
    p: CompiledPolicy,
    table: RouteTable,
    resolver: ClientIpResolver,
    state: MemoryStore,
    /// The memory store's: keyed, with a random key.
    keyer: AccountKeyer,
    headers: HeaderMap,
    body: &'static [u8],
    peer: IpAddr,
    method: Method,
}

impl Env {
    fn new() -> Self {
        let rate = RateLimitConfig {
            login: poolgate::config::Rate {
                per_second: 1_000_000_000,
                burst: 1_000_000_000,
            },
            ..RateLimitConfig::default()
        };
        let mut headers = HeaderMap::new();
        headers.insert("origin", HeaderValue::from_static("https://app.sample.com"));
        headers.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7"));
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        Env {
            p: policy(),
            table: RouteTable::default_table(),
            resolver: ClientIpResolver::new(vec!["10.0.0.0/8".parse().unwrap()]),
            state: MemoryStore::new(&GuardsConfig::default(), &rate),
            keyer: AccountKeyer::random(),
            headers,
            body: br#"{"account":"bob@example.com","password":"hunter2!x","captchaCode":""}"#,
            peer: "10.1.2.3".parse().unwrap(),
            method: Method::POST,
        }
    }

    /// One login decision with every guard on. `salt` spreads the client and
    /// account keys (0: everyone hits the same keys). Never inlined, so
    /// callgrind counts its instructions per call
    /// (`benches/decision_instructions.sh`).
    #[inline(never)]
    fn decide(&self, salt: u128) -> bool {
        let route = match self
            .table
            .classify(&self.method, black_box("/api/v2/login/account"))
        {
            poolgate::routes::Class::Route(r) => r,
            _ => unreachable!(),
        };
        let ip = self.resolver.resolve(self.peer, &self.headers);
        let key = self.resolver.key(ip) ^ salt;
        let allowed = matches!(
            cors::check(&self.p, &self.headers, None),
            cors::Cors::Allowed(_)
        );
        let rate_ok = self.state.rate.check(route.kind, key).is_ok();
        let facts = extract::body_facts(
            extract::BodyKind::Json,
            black_box(self.body),
            &route.fields,
            extract::Normalize::default(),
        )
        .unwrap();
        let acct = facts
            .identifier
            .as_ref()
            .unwrap()
            .account_key(&self.keyer)
            .get()
            ^ salt;
        // As the gateway asks the memory store: both counters in one call.
        let asks = [
            Ask {
                counter: Counter::LoginIp,
                subject: Subject::Client(key),
                limit: self.p.login_fail.unwrap(),
            },
            Ask {
                counter: Counter::Account,
                subject: Subject::Account(AccountKey::from_raw(acct)),
                limit: self.p.password_fail.unwrap(),
            },
        ];
        let answers = self.state.reserve_now(black_box(&asks), false);
        let mut over = guards::Over::default();
        for (ask, answer) in asks.iter().zip(&answers) {
            if let Reservation::Denied(wait) = answer {
                match ask.counter {
                    Counter::LoginIp => over.client = Some(*wait),
                    _ => over.account = Some(*wait),
                }
            }
        }
        let verdicts = guards::failure_violations(&self.p, &over, guards::CaptchaCheck::NotSent);
        for answer in answers {
            if let Reservation::Held(slot) = answer {
                slot.settle(false);
            }
        }
        black_box(allowed && rate_ok && verdicts.is_empty())
    }
}

fn decision(c: &mut Criterion) {
    let env = Env::new();
    c.bench_function("login_decision_all_guards", |b| b.iter(|| env.decide(0)));
    let Env {
        p,
        table,
        resolver,
        state,
        keyer,
        headers,
        body,
        peer,
        method,
    } = &env;
    let (p, state, method, peer, body) = (p, state, method.clone(), *peer, *body);

    // The parts of the login decision, to see where its time goes.
    let mut g = c.benchmark_group("login_parts");
    g.bench_function("client_ip", |b| {
        b.iter(|| resolver.key(resolver.resolve(peer, black_box(headers))))
    });
    g.bench_function("cors", |b| {
        b.iter(|| {
            matches!(
                cors::check(p, black_box(headers), None),
                cors::Cors::Allowed(_)
            )
        })
    });
    g.bench_function("rate_limit", |b| {
        let route = match table.classify(&method, "/api/v2/login/account") {
            poolgate::routes::Class::Route(r) => r,
            _ => unreachable!(),
        };
        b.iter(|| state.rate.check(route.kind, black_box(7)).is_ok())
    });
    g.bench_function("body_facts", |b| {
        let route = match table.classify(&method, "/api/v2/login/account") {
            poolgate::routes::Class::Route(r) => r,
            _ => unreachable!(),
        };
        b.iter(|| {
            extract::body_facts(
                extract::BodyKind::Json,
                black_box(body),
                &route.fields,
                extract::Normalize::default(),
            )
        })
    });
    // The JSON body alone: the single-pass scanner and serde_json (its
    // reference, and the fallback for shapes the scanner leaves to it).
    g.bench_function("json_scanner", |b| {
        b.iter(|| {
            let doc = extract::json::LazyJson::parse(black_box(body)).ok()?;
            doc.text_at("/password").ok().flatten().map(|p| p.len())
        })
    });
    g.bench_function("json_serde_reference", |b| {
        b.iter(|| {
            let doc = extract::json::LazyJson::parse_reference(black_box(body)).ok()?;
            doc.text_at("/password").ok().flatten().map(|p| p.len())
        })
    });
    g.bench_function("account_key", |b| {
        b.iter(|| keyer.key(black_box("bob@example.com")))
    });
    // Redis without `account_key_secret_env`: unkeyed SHA-256.
    g.bench_function("account_key_unkeyed", |b| {
        let unkeyed = AccountKeyer::unkeyed();
        b.iter(|| unkeyed.key(black_box("bob@example.com")))
    });
    // Reserved and settled as the decision does: one call for both asks.
    let asks = [
        Ask {
            counter: Counter::LoginIp,
            subject: Subject::Client(9),
            limit: p.login_fail.unwrap(),
        },
        Ask {
            counter: Counter::Account,
            subject: Subject::Account(keyer.key("bob@example.com")),
            limit: p.password_fail.unwrap(),
        },
    ];
    g.bench_function("two_reservations", |b| {
        b.iter(|| {
            for r in state.reserve_now(black_box(&asks), false) {
                if let Reservation::Held(slot) = r {
                    slot.settle(false);
                }
            }
        })
    });
    // The parts the others leave out.
    g.bench_function("classify", |b| {
        b.iter(|| {
            matches!(
                table.classify(&method, black_box("/api/v2/login/account")),
                poolgate::routes::Class::Route(_)
            )
        })
    });
    g.bench_function("failure_violations", |b| {
        let over = guards::Over::default();
        b.iter(|| {
            guards::failure_violations(p, black_box(&over), guards::CaptchaCheck::NotSent).len()
        })
    });
    g.bench_function("clock_read", |b| b.iter(std::time::Instant::now));
    // The clock the rate limiters and (since session 2026-12-02) the counters read.
    g.bench_function("clock_read_quanta", |b| {
        use governor::clock::Clock;
        let clock = governor::clock::DefaultClock::default();
        b.iter(|| clock.now())
    });
    g.finish();

    c.bench_function("classify_canonical_path", |b| {
        b.iter(|| {
            matches!(
                table.classify(&method, black_box("/api/v2/login/account")),
                poolgate::routes::Class::Other
            )
        })
    });
    c.bench_function("classify_odd_spelling", |b| {
        b.iter(|| {
            matches!(
                table.classify(&method, black_box("//API/v2/x/../login/account/")),
                poolgate::routes::Class::Other
            )
        })
    });
}

/// The login decision on 1, 2 and all cores at once, on one shared key and on
/// distinct keys. The time shown is wall time per decision over all threads
/// (total wall time / decisions made): it halves when two cores scale perfectly.
fn decision_threads(c: &mut Criterion) {
    let env = Env::new();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut counts = vec![1, 2, cores];
    counts.dedup();
    let mut g = c.benchmark_group("login_decision_threads");
    for threads in counts {
        for (name, spread) in [("one_key", false), ("distinct_keys", true)] {
            g.bench_function(BenchmarkId::new(name, threads), |b| {
                b.iter_custom(|iters| {
                    let per_thread = iters.div_ceil(threads as u64);
                    let start = std::time::Instant::now();
                    std::thread::scope(|sc| {
                        for t in 0..threads {
                            let env = &env;
                            sc.spawn(move || {
                                for i in 0..per_thread {
                                    // 100,000 keys per thread: a realistic, bounded key set.
                                    let salt = if spread {
                                        ((t as u128) << 64) | u128::from(i % 100_000)
                                    } else {
                                        0
                                    };
                                    env.decide(salt);
                                }
                            });
                        }
                    });
                    start.elapsed()
                })
            });
        }
    }
    g.finish();
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
    let state = MemoryStore::new(&GuardsConfig::default(), &RateLimitConfig::default());
    let limit = poolgate::policy::WindowLimit {
        limit: u32::MAX,
        window: Duration::from_secs(60),
    };
    c.bench_function("counter_reserve_commit_one_key", |b| {
        b.iter(|| {
            if let Reservation::Held(p) = state.login_ip.try_reserve(black_box(42), limit, false) {
                p.settle(true);
            }
        })
    });
    let mut k: u128 = 0;
    c.bench_function("counter_reserve_commit_distinct_keys", |b| {
        b.iter(|| {
            k = k.wrapping_add(1) % 500_000;
            if let Reservation::Held(p) = state.register_ip.try_reserve(black_box(k), limit, false)
            {
                p.settle(true);
            }
        })
    });
}

criterion_group!(
    benches,
    decision,
    decision_threads,
    cors_scaling,
    compile,
    counters
);
criterion_main!(benches);
