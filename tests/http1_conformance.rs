//! HTTP/1 as the client's bytes arrive, over raw sockets: pipelined requests
//! (a batch of logins in one write), request targets in absolute form,
//! method spellings, `HEAD`, HTTP/1.0 keep-alive, bare-LF heads and bytes no
//! header may hold. These are the listener's answers any replacement of
//! hyper's server loop (issue 12's lever) must keep, and each asks how a
//! client could get one more try or one more request past the guards.

mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use harness::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(60);

/// One answer read off the wire.
#[derive(Debug)]
struct Answer {
    version: u8,
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "answer body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Splits `raw` into answers framed by `Content-Length` (every answer here
/// has one); `heads[i]` marks the answers to `HEAD` requests, which have no
/// body whatever their length says. Fails on anything left over.
fn answers(mut raw: &[u8], heads: &[bool]) -> Vec<Answer> {
    let mut out = Vec::new();
    while !raw.is_empty() {
        let mut hs = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut hs);
        let n = match r.parse(raw) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "answer {} does not parse ({other:?}): {:?}",
                out.len(),
                String::from_utf8_lossy(raw)
            ),
        };
        let headers: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_string(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let len = if heads.get(out.len()).copied().unwrap_or(false) {
            0
        } else {
            len
        };
        assert!(
            raw.len() >= n + len,
            "answer {} is cut short: {:?}",
            out.len(),
            String::from_utf8_lossy(raw)
        );
        out.push(Answer {
            version: r.version.unwrap_or(0),
            status: r.code.unwrap_or(0),
            headers,
            body: raw[n..n + len].to_vec(),
        });
        raw = &raw[n + len..];
    }
    out
}

/// Writes `bytes` in one write and reads until poolgate closes the connection.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    bounded("the exchange", LIMIT, async {
        let mut s = TcpStream::connect(addr).await.expect("connects");
        s.write_all(bytes).await.expect("writes");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out
    })
    .await
}

/// A v2 password login with a JSON body, as raw bytes, to `target`.
fn login(target: &str, password: &str, last: bool) -> String {
    let body = json!({"account": "pipe", "password": password}).to_string();
    format!(
        "POST {target} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{body}",
        body.len(),
        if last { "Connection: close\r\n" } else { "" },
    )
}

#[tokio::test]
async fn pipelined_logins_in_one_write_are_judged_one_by_one_and_in_order() {
    let s = Setup::new(json!({"loginFailCheck": check(3, 60)}))
        .start()
        .await;
    // A batch: a passthrough request, five wrong passwords, a right one, and
    // another passthrough request, all in one write on one connection.
    let mut batch = String::from("GET /echo/first HTTP/1.1\r\nHost: gw\r\n\r\n");
    for _ in 0..5 {
        batch.push_str(&login(LOGIN, "wrong", false));
    }
    batch.push_str(&login(LOGIN, "right", false));
    batch.push_str("GET /echo/last HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
    let raw = exchange(s.gw(), batch.as_bytes()).await;
    let a = answers(&raw, &[]);
    assert_eq!(a.len(), 8, "one answer per request: {a:?}");
    assert_eq!(a[0].status, 201);
    assert_eq!(a[0].header("x-echo-method"), Some("GET"));
    // The limit holds inside the batch: three failures reach the upstream,
    // then every login needs a captcha, the right password too.
    for (i, w) in a[1..4].iter().enumerate() {
        assert_eq!(w.json(), wrong_password_v2(), "login {i}");
    }
    for (i, w) in a[4..7].iter().enumerate() {
        assert_eq!(w.json(), captcha_required_v2(), "login {}", i + 3);
    }
    assert_eq!(a[7].status, 201, "the batch's last request is answered");
    assert_eq!(s.up.count_route(LOGIN), 3);
    assert_eq!(s.up.arrived("/echo/last"), 1);
    let (_, c) = admin_get(s.admin(), "/counters?ip=127.0.0.1").await;
    let c: Value = serde_json::from_str(&c).expect("counters are JSON");
    assert_eq!(c["login_failures"]["count"], 3);
    s.shutdown().await;
}

#[tokio::test]
async fn a_login_target_in_absolute_form_is_the_same_login_whatever_its_authority() {
    let s = Setup::new(json!({"loginFailCheck": check(4, 60)}))
        .start()
        .await;
    let targets = [
        format!("http://{}{LOGIN}", s.gw()),
        format!("http://elsewhere.example{LOGIN}"),
        format!("HTTP://ELSEWHERE.EXAMPLE:80{LOGIN}"),
        LOGIN.to_string(),
    ];
    for t in &targets {
        let raw = exchange(s.gw(), login(t, "wrong", true).as_bytes()).await;
        let a = answers(&raw, &[]);
        assert_eq!(a.len(), 1, "{t}: {a:?}");
        assert_eq!(
            a[0].json(),
            wrong_password_v2(),
            "{t} is forwarded as a login"
        );
    }
    // Four failures, whatever the spelling: the next one in absolute form
    // needs a captcha.
    let raw = exchange(s.gw(), login(&targets[1], "wrong", true).as_bytes()).await;
    assert_eq!(answers(&raw, &[])[0].json(), captcha_required_v2());
    assert_eq!(s.up.count_route(LOGIN), 4);
    assert_eq!(s.up.total(), 4);
    // The upstream is sent the path alone, never the client's authority.
    for r in s.up.requests() {
        assert_eq!(r.target, LOGIN, "{r:?}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_method_spelled_otherwise_is_not_a_post_and_reaches_nothing() {
    let s = Setup::new(json!({"loginFailCheck": check(2, 60)}))
        .start()
        .await;
    let body = json!({"account": "m", "password": "wrong"}).to_string();
    for method in ["post", "Post", "P0ST"] {
        let raw = exchange(
            s.gw(),
            format!(
                "{method} {LOGIN} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await;
        let a = answers(&raw, &[]);
        assert_eq!(a.len(), 1, "{method}: {a:?}");
        assert_eq!(a[0].status, 405, "{method}: methods are case-sensitive");
    }
    assert_eq!(
        s.up.arrived_total(),
        0,
        "no other spelling reached the upstream"
    );
    let m = metrics(s.admin()).await;
    assert_eq!(
        metric(
            &m,
            "poolgate_rejections_total",
            &[("reason", "method_not_allowed")]
        ),
        Some(3.0),
        "each refusal is counted with its reason"
    );
    s.shutdown().await;
}

#[tokio::test]
async fn a_head_answer_has_no_body_and_the_connection_serves_the_next_request() {
    let s = Setup::new(json!({})).start().await;
    let raw = exchange(
        s.gw(),
        b"HEAD /echo/head HTTP/1.1\r\nHost: gw\r\n\r\nGET /echo/next HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    let a = answers(&raw, &[true, false]);
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(a[0].status, 201);
    assert_eq!(a[0].header("x-echo-method"), Some("HEAD"));
    assert_eq!(a[1].status, 201);
    assert_eq!(a[1].header("x-echo-method"), Some("GET"));
    assert_eq!(s.up.arrived("/echo/head"), 1);
    assert_eq!(s.up.arrived("/echo/next"), 1);
    s.shutdown().await;
}

#[tokio::test]
async fn http_1_0_is_closed_after_its_answer_unless_it_asks_to_keep_alive() {
    let s = Setup::new(json!({})).start().await;
    // No keep-alive asked: one answer, then poolgate closes (the read ends).
    let raw = exchange(s.gw(), b"GET /echo/ten HTTP/1.0\r\nHost: gw\r\n\r\n").await;
    let a = answers(&raw, &[]);
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!((a[0].version, a[0].status), (0, 201));
    // Asked: the connection serves the next request, which ends it.
    let raw = exchange(
        s.gw(),
        b"GET /echo/ka1 HTTP/1.0\r\nHost: gw\r\nConnection: keep-alive\r\n\r\nGET /echo/ka2 HTTP/1.0\r\nHost: gw\r\n\r\n",
    )
    .await;
    let a = answers(&raw, &[]);
    assert_eq!(a.len(), 2, "{a:?}");
    assert!(a[0]
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("keep-alive")));
    assert_eq!(s.up.arrived("/echo/ka1") + s.up.arrived("/echo/ka2"), 2);
    s.shutdown().await;
}

#[tokio::test]
async fn bytes_no_header_may_hold_are_refused_and_a_bare_lf_head_is_reframed() {
    let s = Setup::new(json!({})).start().await;
    let refused: [&[u8]; 4] = [
        b"GET /echo/nul HTTP/1.1\r\nHost: gw\r\nX-A: a\x00b\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"GET /echo/space HTTP/1.1\r\nHost: gw\r\nX A: b\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"GET /echo/cr HTTP/1.1\rHost: gw\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n",
        b"GET /echo/two-spaces  HTTP/1.1\r\nHost: gw\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: gw\r\n\r\n",
    ];
    for bytes in refused {
        let raw = exchange(s.gw(), bytes).await;
        let a = answers(&raw, &[]);
        assert_eq!(a.len(), 1, "{:?}: {a:?}", String::from_utf8_lossy(bytes));
        assert_eq!(a[0].status, 400, "{:?}", String::from_utf8_lossy(bytes));
    }
    // A head whose lines end in LF alone is read (as nginx reads it) and
    // sent on in poolgate's own framing: the upstream sees one whole request.
    let raw = exchange(
        s.gw(),
        b"POST /echo/lf HTTP/1.1\nHost: gw\nContent-Length: 2\n\nokGET /echo/after HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
    )
    .await;
    let a = answers(&raw, &[]);
    assert_eq!(a.len(), 2, "{a:?}");
    assert_eq!(a[0].body, b"ok");
    let lf = s.up.only("/echo/lf");
    assert!(lf.complete && &lf.body[..] == b"ok", "{lf:?}");
    assert_eq!(s.up.arrived("/smuggled"), 0, "nothing was smuggled");
    assert_eq!(s.up.arrived("/echo/nul") + s.up.arrived("/echo/space"), 0);
    // Counted when the connection's task ends, just after the socket closes.
    wait_for_async("each refusal is counted", LIMIT, || async {
        let m = metrics(s.admin()).await;
        metric(
            &m,
            "poolgate_connection_errors_total",
            &[("listener", "proxy"), ("reason", "bad_request")],
        ) == Some(4.0)
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn a_batch_written_and_abandoned_gets_no_attempt_for_free() {
    let s = Setup::new(json!({"loginFailCheck": check(3, 60)}))
        .start()
        .await;
    // Six wrong passwords in one write, then the client hangs up without
    // reading a byte: whatever poolgate got to, nothing goes uncounted.
    let mut batch = String::new();
    for _ in 0..6 {
        batch.push_str(&login(LOGIN, "wrong", false));
    }
    bounded("the abandoned batch", LIMIT, async {
        let mut c = TcpStream::connect(s.gw()).await.expect("connects");
        c.write_all(batch.as_bytes()).await.expect("writes");
    })
    .await;
    // Then one login at a time until poolgate asks for a captcha.
    let mut forwarded_after = 0;
    for _ in 0..10 {
        let raw = exchange(s.gw(), login(LOGIN, "wrong", true).as_bytes()).await;
        let a = answers(&raw, &[]);
        if a[0].json() == captcha_required_v2() {
            break;
        }
        assert_eq!(a[0].json(), wrong_password_v2());
        forwarded_after += 1;
    }
    // The limit is three tries in all, the abandoned batch's included.
    wait_for("the batch's forwarded logins arrive", LIMIT, || {
        s.up.count_route(LOGIN) >= 3
    })
    .await;
    assert_eq!(
        s.up.count_route(LOGIN),
        3,
        "{forwarded_after} after the batch"
    );
    wait_for_async("every forwarded login is counted", LIMIT, || async {
        let (_, c) = admin_get(s.admin(), "/counters?ip=127.0.0.1").await;
        serde_json::from_str::<Value>(&c).is_ok_and(|c| c["login_failures"]["count"] == 3)
    })
    .await;
    assert_eq!(s.up.count_route(LOGIN), 3);
    s.shutdown().await;
}
