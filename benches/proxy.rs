//! The hop end to end, over loopback: a keep-alive HTTP/1 client → poolgate
//! (the real server, one proxy worker, every guard on) → an in-process
//! upstream answering like Authing.
//!
//! `cargo bench --bench proxy`. One request at a time, so a figure is the
//! latency of a request through the hop (client, poolgate and upstream share
//! the machine); a regression in forwarding, the decision or the response
//! path shows here without nginx or wrk. `benches/loadtest.sh` measures
//! throughput under concurrency.
//!
//! Before timing, it counts heap allocations per request (a counting global
//! allocator): through poolgate, and straight to the upstream with the same
//! client, so the difference is poolgate's share.

use std::alloc::{GlobalAlloc, Layout, System};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

/// The system allocator, counting allocations (all threads of the process).
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is passed unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is the system allocator's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const POOL: &str = r#"{"code":200,"message":"ok","data":{
 "loginFailCheck":{"enabled":true,"limit":3,"timeInterval":300},
 "loginPasswordFailCheck":{"enabled":true,"limit":3,"timeInterval":300},
 "frequentRegisterCheck":{"enabled":true,"limit":1000000000,"timeInterval":300},
 "loginFailStrategy":"captcha","allowedOrigins":"https://app.sample.com\nhttps://*.sample.com",
 "registerDisabled":false,"passwordStrength":3,
 "whitelist":{"phoneEnabled":false,"emailEnabled":false,"usernameEnabled":false}}}"#;

/// An upstream answering every request at once, keep-alive.
async fn upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("upstream binds");
    let addr = l.local_addr().expect("upstream address");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let _ = s.set_nodelay(true);
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let login = req.uri().path() == "/api/v2/login/account";
                    // Read the whole body, as a real upstream would.
                    let _ = req.into_body().collect().await;
                    let body: &'static [u8] = if login {
                        br#"{"code":200,"message":"ok","data":{"token":"t"}}"#
                    } else {
                        br#"{"code":200,"message":"ok","data":null}"#
                    };
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(body)))
                            .expect("static response"),
                    )
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

struct Hop {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
    n: u64,
}

impl Hop {
    async fn connect(addr: SocketAddr) -> Hop {
        let s = TcpStream::connect(addr).await.expect("connect");
        let _ = s.set_nodelay(true);
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        Hop {
            send,
            host: addr.to_string(),
            n: 0,
        }
    }

    /// Heap allocations per request, over `n` requests (whole process).
    async fn allocations(&mut self, login: bool, n: u64) -> f64 {
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        for _ in 0..n {
            self.request(login).await;
        }
        (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / n as f64
    }

    async fn request(&mut self, login: bool) {
        self.n += 1;
        let n = self.n;
        let req = if login {
            // Distinct clients and accounts, as honest traffic: a login in
            // flight counts against its IP and account.
            Request::post("/api/v2/login/account")
                .header("host", &self.host)
                .header("content-type", "application/json")
                .header("origin", "https://app.sample.com")
                .header(
                    "x-forwarded-for",
                    format!("198.51.{}.{}", (n / 256) % 256, n % 256),
                )
                .body(Full::new(Bytes::from(format!(
                    r#"{{"account":"user{}@example.com","password":"Secr3t!x"}}"#,
                    n % 65536
                ))))
        } else {
            Request::get("/api/ping")
                .header("host", &self.host)
                .body(Full::new(Bytes::new()))
        }
        .expect("bench request");
        self.send.ready().await.expect("connection stays open");
        let resp = self.send.send_request(req).await.expect("an answer");
        assert_eq!(resp.status(), 200, "the hop answers 200");
        let _ = resp.into_body().collect().await.expect("the whole body");
    }
}

fn hop(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let pool = dir.path().join("pool.json");
    std::fs::write(&pool, POOL).expect("pool file");
    let (app, mut client) = rt.block_on(async {
        let up = upstream().await;
        let text = format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
workers = 1
trusted_proxies = ["127.0.0.1/32"]
[upstream]
url = "http://{up}"
[policy]
source = "file"
[policy.file]
path = {pool:?}
[guards]
max_tracked_keys = 2000000
[rate_limit]
login = {{ per_second = 100000000, burst = 100000000 }}
[log]
level = "error"
"#,
            pool = pool.display().to_string()
        );
        let cfg = poolgate::Config::parse(&text).expect("bench config parses");
        cfg.validate().expect("bench config is valid");
        let app = poolgate::app::App::start(cfg)
            .await
            .expect("poolgate starts");
        let mut hop = Hop::connect(app.proxy_addr()).await;
        // Warm the upstream pool and the policy.
        hop.request(false).await;
        hop.request(true).await;
        let mut direct = Hop::connect(up).await;
        for (name, login) in [("GET passthrough", false), ("guarded login", true)] {
            let via = hop.allocations(login, 2000).await;
            let straight = direct.allocations(login, 2000).await;
            eprintln!(
                "allocations per request, {name}: {via:.1} through poolgate, {straight:.1} \
                 client to upstream directly, so {:.1} in poolgate",
                via - straight
            );
        }
        (app, hop)
    });
    let mut g = c.benchmark_group("hop");
    g.measurement_time(Duration::from_secs(4));
    for (name, login) in [("get_passthrough", false), ("guarded_login", true)] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let t = Instant::now();
                    for _ in 0..iters {
                        client.request(login).await;
                    }
                    t.elapsed()
                })
            })
        });
    }
    g.finish();
    drop(client);
    rt.block_on(app.shutdown());
}

/// A per-request overhead of the hop, alone: arming and dropping a deadline
/// (hyper's header-read timeout and the upstream request timeout each do
/// that once per request) on the coarse timer and on tokio's.
fn per_request(c: &mut Criterion) {
    use std::future::Future;
    use std::task::Context;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _enter = rt.enter();
    let waker = futures_util::task::noop_waker();
    let mut cx = Context::from_waker(&waker);
    let mut g = c.benchmark_group("per_request");
    // Polled once (registered: the request is waiting), then dropped.
    g.bench_function("deadline_arm_and_drop/coarse", |b| {
        b.iter(|| {
            let mut s = Box::pin(poolgate::coarse_timer::CoarseSleep::until(
                Instant::now() + Duration::from_secs(30),
            ));
            std::hint::black_box(s.as_mut().poll(&mut cx).is_pending())
        })
    });
    g.bench_function("deadline_arm_and_drop/tokio", |b| {
        b.iter(|| {
            let mut s = Box::pin(tokio::time::sleep(Duration::from_secs(30)));
            std::hint::black_box(s.as_mut().poll(&mut cx).is_pending())
        })
    });
    g.finish();
}

criterion_group!(benches, hop, per_request);
criterion_main!(benches);
