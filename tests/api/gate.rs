//! The carrier gate and the connection protections, against the binary: a token in the header or the
//! callback URL, refusals that change nothing, a non-loopback start refused without a token, and
//! `/healthz` answering through a flood of slow clients.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::helpers::{fold, otp_in, scratch, wait_outbox, AtPhone, Proc};

const TOKEN: &str = "Kh-test-token-0123456789";

/// A raw Africa's Talking POST with the given extra header and query.
async fn at_post(url: &str, query: &str, auth: Option<&str>, phone: &str, session: &str, text: &str) -> (u16, String) {
    let body = format!(
        "sessionId={session}&serviceCode=%2A384%23&phoneNumber={}&text={}",
        phone.replace('+', "%2B"),
        text.replace('*', "%2A")
    );
    let mut req = reqwest::Client::new()
        .post(format!("{url}/ussd/africastalking{query}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_set_every_carrier_endpoint_wants_it_in_the_header_or_the_url() {
    let (_dir, data, outbox, log) = scratch();
    let server = Proc::spawn_with(&data, &outbox, &log, "info", &[], &[("KICHHOAT_WEBHOOK_TOKEN", TOKEN)]).await;
    let url = &server.url;
    for (query, auth) in [("", None), ("?token=wrong-token-0123456789", None), ("", Some("Bearer nope"))] {
        let (status, body) = at_post(url, query, auth, "+84912345678", "s0", "").await;
        assert_eq!(status, 401, "{query} {auth:?}: {body}");
        assert!(!body.contains("CON") && !body.contains("token"), "no detail: {body}");
    }
    let (status, body) = at_post(url, "", Some(&format!("Bearer {TOKEN}")), "+84912345678", "s1", "").await;
    assert_eq!((status, body.starts_with("CON ")), (200, true), "{body}");
    let (status, body) = at_post(url, &format!("?token={TOKEN}"), None, "+84912345678", "s2", "").await;
    assert_eq!((status, body.starts_with("CON ")), (200, true), "{body}");
    // Kannel's callbacks too: the MO route and the delivery reports.
    for path in ["/sms/kannel?from=%2B84912345678&text=Xin+chao&id=k1", "/sms/kannel/dlr?id=x&status=1"] {
        let r = reqwest::get(format!("{url}{path}")).await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
    }
    let r = reqwest::get(format!("{url}/sms/kannel?from=%2B84912345678&text=Xin+chao&id=k2&token={TOKEN}")).await;
    assert_eq!(r.unwrap().status(), 200);
    // Health stays open.
    assert_eq!(reqwest::get(format!("{url}/healthz")).await.unwrap().status(), 200);
    server.terminate();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kichhoat"))
        .args(["audit", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let trail = String::from_utf8_lossy(&out.stdout);
    assert!(trail.contains("webhook_rejected"), "refusals are audited: {trail}");
    assert!(!trail.contains(TOKEN), "never the token");
    assert!(!std::fs::read_to_string(&log).unwrap().contains(TOKEN), "never the token in the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_without_the_token_cannot_take_over_an_activation_the_citizen_just_verified() {
    let (_dir, data, outbox, log) = scratch();
    let server = Proc::spawn_with(&data, &outbox, &log, "info", &[], &[("KICHHOAT_WEBHOOK_TOKEN", TOKEN)]).await;
    let url = server.url.clone();
    let auth = format!("Bearer {TOKEN}");
    let citizen = |session: &str, text: &str| {
        let (url, auth, session, text) = (url.clone(), auth.clone(), session.to_string(), text.to_string());
        async move { fold(&at_post(&url, "", Some(&auth), "+84912345678", &session, &text).await.1) }
    };
    citizen("v1", "").await;
    citizen("v1", "1").await;
    citizen("v1", "1*001099012345").await;
    assert!(citizen("v1", "1*001099012345*1").await.contains("Nhap ma"));
    let otp = otp_in(&wait_outbox(&outbox, 1).await[0].text).unwrap();
    citizen("v2", "").await;
    assert!(citizen("v2", &otp).await.contains("Dat mat khau"), "the citizen verified the code");
    // The stranger posts the victim's number, without the token: refused, nothing changes.
    assert_eq!(at_post(&url, "", None, "+84912345678", "x1", "").await.0, 401);
    assert_eq!(at_post(&url, "", None, "+84912345678", "x1", "Evil*pw123").await.0, 401);
    // The citizen carries on where she was.
    assert!(citizen("v2", &format!("{otp}*Abc*1234x")).await.contains("Nhap lai"));
    server.terminate();
}

#[test]
fn serving_on_a_public_address_without_a_token_is_refused_with_why_and_how_to_override() {
    let (_dir, data, _outbox, _log) = scratch();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kichhoat"))
        .args(["serve", "--listen", "0.0.0.0:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--webhook-token") && stderr.contains("--allow-no-token"), "{stderr}");
    assert!(!data.join("db").exists(), "refused before anything was opened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_keeps_answering_through_a_flood_of_clients_that_trickle_their_headers() {
    let (_dir, data, outbox, log) = scratch();
    let server = Proc::spawn_with(&data, &outbox, &log, "info", &["--header-timeout-secs", "2"], &[]).await;
    let addr = server.url.trim_start_matches("http://").to_string();
    // 1,100 connections, each sends half a request head and then nothing.
    let mut slow = Vec::new();
    for _ in 0..1100 {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(b"POST /ussd/africastalking HTTP/1.1\r\nHost: x\r\nContent-Le").unwrap();
        slow.push(s);
    }
    let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().unwrap();
    let t = Instant::now();
    let health = client.get(format!("{}/healthz", server.url)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(t.elapsed() < Duration::from_secs(1), "health took {:?}", t.elapsed());
    let mut p = AtPhone::new(&server.url, "+84912345678");
    assert!(p.dial().await.starts_with("CON "), "hops are answered too");
    // The slow ones are cut once their header time is up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut closed = 0;
    for s in &mut slow {
        s.set_read_timeout(Some(Duration::from_millis(10))).unwrap();
        let mut buf = [0u8; 256];
        match std::io::Read::read(s, &mut buf) {
            // End of stream, or a 408 and then the end: the server let go.
            Ok(_) => closed += 1,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => closed += 1, // reset
        }
    }
    assert!(closed >= 1000, "{closed} of 1100 slow connections cut after the header timeout");
    server.terminate();
}
