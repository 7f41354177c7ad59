//! kichhoat behind a real Kannel (bearerbox, smsbox, fake SMSC): what a citizen texting from a keypad
//! phone sees, end to end. Each test starts its own gateway and server ([`crate::kannel_harness`]); without
//! Kannel installed they are skipped loudly (or fail, with `KICHHOAT_REQUIRE_KANNEL` set).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::IntoResponse;

use crate::kannel_harness::{alive, kannel, Gateway, SENDSMS_PASSWORD, SENDSMS_USER, SHORT_CODE, SMS_FROM};

/// What the stand-in service saw: the query of each call.
type Calls = Arc<Mutex<Vec<HashMap<String, String>>>>;

/// A stand-in for kichhoat's `/sms/kannel`: echoes the text back (in UCS-2 with diacritics when it
/// starts with `ucs`, over several parts when it is `long`), with a second line to show newlines survive.
async fn stub(State(calls): State<Calls>, Query(q): Query<HashMap<String, String>>) -> axum::response::Response {
    let text = q.get("text").cloned().unwrap_or_default();
    calls.lock().unwrap().push(q);
    let ct = ("content-type", "text/plain; charset=UTF-8");
    if text.starts_with("ucs") {
        ([ct, ("x-kannel-coding", "2")], format!("Kích hoạt: {text}")).into_response()
    } else if text == "long" {
        ([ct], long_reply()).into_response()
    } else {
        ([ct], format!("echo: {text}\nsecond line")).into_response()
    }
}

fn long_reply() -> String {
    (0..70).map(|i| format!("{i:03}")).collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_harness_carries_sms_both_ways_between_a_fake_phone_and_a_web_service_and_leaves_no_process_behind() {
    let Some(k) = kannel("the harness self-test") else { return };
    let calls: Calls = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route("/sms/kannel", axum::routing::get(stub)).with_state(calls.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let gateway = Gateway::start(&k, &crate::kannel_harness::kichhoat_get_url(port)).await;
    let mut phone = gateway.phone("84912345678");

    // MO to the service, its reply back to the phone (two lines in one SMS).
    let got = phone.send("hello there", 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].text, "echo: hello there\nsecond line");
    assert_eq!((got[0].from.as_str(), got[0].ucs2), (SHORT_CODE, false));
    {
        let calls = calls.lock().unwrap();
        let q = &calls[0];
        assert_eq!(
            (q["from"].as_str(), q["to"].as_str(), q["text"].as_str()),
            ("84912345678", SHORT_CODE, "hello there")
        );
        assert!(q["id"].len() >= 32, "Kannel's message id: {q:?}");
    }

    // Diacritics both ways: UCS-2 MO reaches the service as UTF-8; a reply marked X-Kannel-Coding: 2
    // arrives in UCS-2.
    let got = phone.send_ucs2("ucs Chuồn Chuồn", 1).await;
    assert_eq!(calls.lock().unwrap()[1]["text"], "ucs Chuồn Chuồn");
    assert_eq!((got[0].text.as_str(), got[0].ucs2), ("Kích hoạt: ucs Chuồn Chuồn", true));

    // A reply longer than one SMS arrives in parts and is joined.
    let got = phone.send("long", 1).await;
    assert_eq!((got[0].text.clone(), got[0].parts), (long_reply(), 2));

    // sendsms while no phone is connected: waits in bearerbox, reaches the phone when it connects.
    let r = reqwest::get(format!(
        "{}?username={SENDSMS_USER}&password={SENDSMS_PASSWORD}&from={SMS_FROM}&to=%2B84912345678&text=Ma+OTP%3A+123456",
        gateway.sendsms_url()
    ))
    .await
    .unwrap();
    assert!(r.status().is_success(), "{:?}", r.text().await);
    let got = phone.listen(1, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!((got[0].from.as_str(), got[0].text.as_str()), (SMS_FROM, "Ma OTP: 123456"));
    assert!(phone.listen_for(Duration::from_millis(500)).await.is_empty(), "nothing else");
    assert_eq!(phone.inbox.len(), 4);

    // smsbox stopped: sendsms refuses connections; started again: it takes SMS for the phone again.
    let mut gateway = gateway;
    gateway.stop_smsbox().await;
    let sendsms = format!(
        "{}?username={SENDSMS_USER}&password={SENDSMS_PASSWORD}&from={SMS_FROM}&to=84912345678&text=again",
        gateway.sendsms_url()
    );
    assert!(reqwest::get(&sendsms).await.is_err(), "sendsms is down");
    gateway.start_smsbox().await;
    assert!(reqwest::get(&sendsms).await.unwrap().status().is_success());
    let got = phone.listen(1, Duration::from_secs(10)).await;
    assert_eq!(got.iter().map(|s| s.text.as_str()).collect::<Vec<_>>(), ["again"]);
    assert!(gateway.smsbox_log().contains("Got HTTP request </cgi-bin/sendsms>"), "the log is smsbox's");

    // smsbox fetched once per MO, each answered 200.
    let fetches = gateway.fetches();
    assert_eq!(fetches.len(), 3, "{fetches:?}");
    assert!(fetches.iter().all(|(s, _)| *s == 200), "{fetches:?}");

    let pids = gateway.pids();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|&p| alive(p)));
    drop(gateway);
    assert!(pids.iter().all(|&p| !alive(p)), "bearerbox and smsbox are gone");
    server.abort();
}
