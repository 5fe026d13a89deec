//! Connection-level behaviour of the proxy listener, with raw sockets where a
//! client library would hide it: slow headers, `Expect: 100-continue`, and
//! the in-process drain (`App::shutdown`) with idle and busy connections.

mod harness;

use std::time::{Duration, Instant};

use harness::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    bounded("test", LIMIT, async {
        let (up, app, _d) =
            start_fixture(|c| c.server.header_read_timeout = Duration::from_millis(300)).await;
        let mut s = TcpStream::connect(app.proxy_addr()).await.unwrap();
        s.write_all(b"GET /slowloris HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let got = read_to_close(&mut s, Duration::from_secs(10)).await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "the connection stayed open {took:?} without complete headers"
        );
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 408"),
            "unexpected answer: {text}"
        );
        assert_eq!(up.arrived_total(), 0);
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn expect_100_continue_gets_a_continue_then_the_answer() {
    bounded("test", LIMIT, async {
        let (up, app, _d) = start_fixture(|_| {}).await;
        let mut s = TcpStream::connect(app.proxy_addr()).await.unwrap();
        let body = "x".repeat(2048);
        s.write_all(
            format!(
                "POST /echo/expect HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        // Like curl: wait for the 100 before sending the body.
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        bounded("100 Continue", Duration::from_secs(10), async {
            while !head.ends_with(b"\r\n\r\n") {
                assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed early");
                head.push(byte[0]);
            }
        })
        .await;
        assert!(
            head.starts_with(b"HTTP/1.1 100 Continue\r\n"),
            "{}",
            String::from_utf8_lossy(&head)
        );
        s.write_all(body.as_bytes()).await.unwrap();
        let rest = String::from_utf8_lossy(&read_to_close(&mut s, Duration::from_secs(10)).await)
            .into_owned();
        assert!(rest.starts_with("HTTP/1.1 201 Created\r\n"), "{rest}");
        assert!(rest.ends_with(&body), "{rest}");
        let seen = up.only("/echo/expect");
        assert_eq!(seen.body, body);
        app.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn shutdown_finishes_the_request_in_flight_and_does_not_wait_for_idle_connections() {
    bounded("test", LIMIT, async {
        let (up, app, _d) =
            start_fixture(|c| c.server.shutdown_grace = Duration::from_secs(20)).await;
        let gw = app.proxy_addr();
        // Idle keep-alive connections, HTTP/1.1 and h2c.
        let h1 = h1_client();
        let h2 = h2_client();
        assert_eq!(
            send_with(&h1, build("GET", gw, "/idle1", &[], ""))
                .await
                .status,
            StatusCode::OK
        );
        assert_eq!(
            send_with(&h2, build("GET", gw, "/idle2", &[], ""))
                .await
                .status,
            StatusCode::OK
        );

        up.set_mode(UpMode::Delay(Duration::from_millis(800)));
        let busy =
            tokio::spawn(
                async move { send(build("POST", gw, "/echo/busy", &[], "busy body")).await },
            );
        wait_for(
            "the busy request at the upstream",
            Duration::from_secs(10),
            || up.arrived("/echo/busy") == 1,
        )
        .await;
        let started = Instant::now();
        bounded("shutdown", Duration::from_secs(15), app.shutdown()).await;
        let took = started.elapsed();
        let reply = busy.await.unwrap();
        assert_eq!(reply.status, StatusCode::CREATED);
        assert_eq!(reply.body, "busy body");
        assert!(
            took < Duration::from_secs(10),
            "shutdown took {took:?}: it waited on idle connections instead of closing them"
        );
        drop((h1, h2));
    })
    .await;
}
