//! The Africa's Talking contract: what a carrier sends and sees, retries, races and refusals.

use std::sync::Arc;

use kichhoat::domain::Msisdn;

use crate::helpers::{fold, otp_in, post_at, scratch, AtPhone, Proc, TestServer};

/// Runs a whole activation of `id` from `phone` with `password`.
pub async fn activate(server: &TestServer, phone: &str, id: &str, password: &str) {
    let mut p = AtPhone::new(&server.url, phone);
    assert!(fold(&p.request_code(id, "1").await).contains("Nhap ma"));
    let otp = otp_in(&server.outbox().await.last().unwrap().text).unwrap();
    assert!(fold(&p.send(&otp).await).contains("Dat mat khau"));
    assert!(p.send(password).await.starts_with("CON "));
    assert!(fold(&p.send(password).await).contains("passcode"));
    for input in ["258147", "258147", "1", "Truong Kim Dong", "4"] {
        assert!(p.send(input).await.starts_with("CON "), "at {input}");
    }
    let done = p.send("Pho").await;
    assert!(fold(&done).contains("thanh cong"), "{done}");
}

async fn login(server: &TestServer, phone: &str, id: &str, password: &str) -> String {
    let mut p = AtPhone::new(&server.url, phone);
    p.log_in(id, password).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_full_of_stars_arrives_whole_and_logs_in() {
    let server = TestServer::start().await;
    let password = "*A*b*1*2*c*";
    activate(&server, "+84912345678", "001099012345", password).await;
    assert!(
        fold(&login(&server, "+84912345678", "001099012345", password).await).starts_with("END Xin chao Nguyen Van An")
    );
    // Any split of the password at its stars is a different (wrong) password.
    assert!(fold(&login(&server, "+84912345678", "001099012345", "A*b*1*2*c").await).contains("khong dung"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_id_and_phone_mismatch_get_byte_identical_replies_and_no_sms() {
    let server = TestServer::start().await;
    let mut replies = Vec::new();
    for id in ["001199012346", "001099099999"] {
        let mut p = AtPhone::new(&server.url, "+84912345678");
        replies.push(p.request_code(id, "1").await);
    }
    assert!(replies[0].starts_with("END "), "{}", replies[0]);
    assert_eq!(replies[0], replies[1]);
    assert!(server.outbox().await.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_retry_gets_the_same_reply_and_sends_no_second_otp() {
    let server = TestServer::start().await;
    let mut p = AtPhone::new(&server.url, "+84912345678");
    let menu = p.dial().await;
    assert_eq!(p.hop().await.1, menu, "a retried first hop");
    p.send("1").await;
    p.send("001099012345").await;
    let first = p.send("1").await;
    for _ in 0..3 {
        assert_eq!(p.hop().await, (200, first.clone()));
    }
    assert_eq!(server.outbox().await.len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_of_a_hop_send_one_otp() {
    let server = TestServer::start().await;
    let mut p = AtPhone::new(&server.url, "+84912345678");
    p.dial().await;
    p.send("1").await;
    p.send("001099012345").await;
    p.inputs.push("1".into());
    let p = Arc::new(p);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let p = p.clone();
        tasks.push(tokio::spawn(async move { p.hop().await }));
    }
    let mut bodies = Vec::new();
    for t in tasks {
        bodies.push(t.await.unwrap());
    }
    assert!(bodies.iter().all(|b| b == &bodies[0]), "{bodies:?}");
    assert!(fold(&bodies[0].1).contains("Nhap ma"));
    assert_eq!(server.outbox().await.len(), 1, "exactly one OTP SMS");
    server.stop().await;
}

/// Drives `phone` through an activation of An's ID up to the last answer, not sent yet.
async fn up_to_the_last_answer(server: &TestServer, phone: &str) -> AtPhone {
    let mut p = AtPhone::new(&server.url, phone);
    p.request_code("001099012345", "0912345678").await;
    let otp = otp_in(&server.outbox().await.last().unwrap().text).unwrap();
    for input in [otp.as_str(), "Abc*1234x", "Abc*1234x", "258147", "258147", "1", "Kim Dong", "4"] {
        assert!(p.send(input).await.starts_with("CON "), "at {input}");
    }
    p.inputs.push("Pho".into());
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phones_racing_to_activate_one_id_make_one_account() {
    let server = TestServer::start().await;
    // Both callers type An's registered phone, so both get codes there and both reach the last step.
    let a = up_to_the_last_answer(&server, "+84912345678").await;
    let b = up_to_the_last_answer(&server, "+84988000111").await;
    let (ra, rb) = tokio::join!(a.hop(), b.hop());
    let mut replies = [fold(&ra.1), fold(&rb.1)];
    replies.sort();
    assert!(replies[0].contains("thanh cong"), "{replies:?}");
    assert!(replies[1].contains("Tai khoan cua ban da thuc hien kich hoat"), "{replies:?}");
    let confirmations = server.outbox().await.iter().filter(|l| fold(&l.text).contains("da duoc kich hoat")).count();
    assert_eq!(confirmations, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_server_cannot_understand_get_a_4xx_and_change_nothing() {
    let server = TestServer::start().await;
    let base = [
        ("sessionId", "s1"),
        ("serviceCode", "*384#"),
        ("phoneNumber", "+84912345678"),
        ("networkCode", "45204"),
        ("text", ""),
    ];
    let without = |name: &str| base.iter().filter(|(k, _)| *k != name).cloned().collect::<Vec<_>>();
    let with = |name: &str, v: &'static str| {
        base.iter().map(|(k, old)| if *k == name { (*k, v) } else { (*k, *old) }).collect::<Vec<_>>()
    };
    let long_id = "x".repeat(200);
    let cases: Vec<Vec<(&str, &str)>> = vec![
        without("sessionId"),
        without("phoneNumber"),
        with("phoneNumber", "+254711XXXYYY"),
        with("phoneNumber", "+254711082000"),
        with("sessionId", ""),
        vec![("sessionId", &long_id), ("phoneNumber", "+84912345678"), ("text", "")],
    ];
    for case in cases {
        let (status, body) = post_at(&server.url, &case).await;
        assert!((400..500).contains(&status), "{case:?} gave {status} {body}");
    }
    for raw in
        ["sessionId=s1&phoneNumber=%2B84912345678&text=%FF%FE", "sessionId=s%FF&phoneNumber=%2B84912345678&text="]
    {
        let resp = reqwest::Client::new()
            .post(format!("{}/ussd/africastalking", server.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(raw)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{raw}");
    }
    let resp = reqwest::Client::new()
        .post(format!("{}/ussd/africastalking", server.url))
        .header("content-type", "application/json")
        .body(r#"{"sessionId":"s1","phoneNumber":"+84912345678","text":""}"#)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error());
    let phone = Msisdn::parse("+84912345678").unwrap();
    assert!(server.app().store.load(&phone).await.unwrap().is_none(), "nothing was stored");
    let health = reqwest::get(format!("{}/healthz", server.url)).await.unwrap();
    assert_eq!(health.status(), 200);
    server.stop().await;
}

/// Posts an end-of-session notification as Africa's Talking does.
async fn post_event(url: &str, body: &str) -> u16 {
    let resp = reqwest::Client::new()
        .post(format!("{url}/ussd/africastalking/events"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    resp.status().as_u16()
}

/// The value of `name=` in a text log line.
fn field<'l>(line: &'l str, name: &str) -> Option<&'l str> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    line[at..].split([' ', ':', '}']).next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_of_session_notification_is_logged_with_its_outcome_and_never_the_input_it_carries() {
    let (_dir, data, outbox, log) = scratch();
    let server = Proc::spawn(&data, &outbox, &log, "info").await;
    let mut p = AtPhone::new(&server.url, "+84912345678");
    p.dial().await;
    let session = p.session.clone();
    let body = format!(
        "sessionId={session}&serviceCode=%2A384%23&networkCode=45204&phoneNumber=%2B84912345678&status=Incomplete\
         &input=Abc%2A1234x&lastAppResponse=CON+Nhap+mat+khau&hopsCount=3&durationInMillis=20000&cost=0"
    );
    assert_eq!(post_event(&server.url, &body).await, 200);
    server.terminate();

    let logs = std::fs::read_to_string(&log).unwrap();
    let ends: Vec<&str> = logs.lines().filter(|l| l.contains("session ended")).collect();
    assert_eq!(ends.len(), 1, "one line for the end: {logs}");
    let end = ends[0];
    assert_eq!(field(end, "status"), Some("Incomplete"), "{end}");
    assert_eq!(field(end, "hops"), Some("3"), "{end}");
    assert_eq!(field(end, "duration_ms"), Some("20000"), "{end}");
    // The end carries the pseudonym the session's hops were logged with, so an operator can follow it.
    let pseudonym = field(end, "session").unwrap();
    let hop = logs.lines().find(|l| l.contains("turn answered")).unwrap();
    assert_eq!(field(hop, "session"), Some(pseudonym), "{hop}\n{end}");
    for typed in ["Abc*1234x", "Abc%2A1234x", "1234x", "Nhap mat khau"] {
        assert!(!logs.contains(typed), "{typed:?} is in the log:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_of_session_notification_without_session_or_status_is_refused_and_not_logged_as_an_end() {
    let (_dir, data, outbox, log) = scratch();
    let server = Proc::spawn(&data, &outbox, &log, "info").await;
    for body in [
        "status=Success&phoneNumber=%2B84912345678&hopsCount=3&input=Abc%2A1234x",
        "sessionId=&status=Success&phoneNumber=%2B84912345678",
        "sessionId=ATUid_1&phoneNumber=%2B84912345678&hopsCount=3&input=Abc%2A1234x",
        "sessionId=ATUid_1&status=&phoneNumber=%2B84912345678",
        "sessionId=ATUid_1&status=Success%0Aforged+line&phoneNumber=%2B84912345678",
    ] {
        assert_eq!(post_event(&server.url, body).await, 400, "{body}");
    }
    let resp = reqwest::Client::new()
        .post(format!("{}/ussd/africastalking/events", server.url))
        .header("content-type", "application/json")
        .body(r#"{"sessionId":"ATUid_1","status":"Success"}"#)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());
    server.terminate();
    let logs = std::fs::read_to_string(&log).unwrap();
    assert!(logs.contains("session end refused"), "the refusals are logged: {logs}");
    assert!(!logs.contains("session ended"), "no refused notification is logged as an end: {logs}");
    assert!(!logs.contains("1234x") && !logs.contains("forged"), "{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shortcut_dial_mid_activation_starts_at_the_menu() {
    let server = TestServer::start().await;
    let mut p = AtPhone::new(&server.url, "+84912345678");
    p.request_code("001099012345", "1").await;
    // *384*3# while the activation waits at the code prompt: help, not "1 = send a new code".
    let mut q = AtPhone::new(&server.url, "+84912345678");
    q.session = "shortcut-1".into();
    q.inputs.push("3".into());
    let (status, body) = q.hop().await;
    assert_eq!(status, 200);
    assert!(fold(&body).starts_with("END ") && fold(&body).contains("Cong an xa, phuong"), "{body}");
    assert_eq!(server.outbox().await.len(), 1, "no extra OTP");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_get_three_codes_per_citizen_in_15_minutes_and_ten_a_day_and_the_citizen_keeps_his_own() {
    let server = TestServer::start().await;
    // Each request from a different caller (so no per-caller cap applies), each naming An's phone.
    let request = |caller: String| {
        let url = server.url.clone();
        async move {
            let mut p = AtPhone::new(&url, &caller);
            fold(&p.request_code("001099012345", "0912345678").await)
        }
    };
    let mut n = 0;
    let mut next_caller = || {
        n += 1;
        format!("+849880{n:05}")
    };
    for round in 0..4 {
        let allowed = if round < 3 { 3 } else { 1 }; // 3 + 3 + 3 + 1 = 10 a day
        for i in 0..allowed {
            assert!(request(next_caller()).await.contains("Nhap ma"), "round {round}, code {}", i + 1);
        }
        let refused = request(next_caller()).await;
        assert!(refused.starts_with("END ") && refused.contains("qua nhieu lan"), "round {round}: {refused}");
        if round == 0 {
            // 2026-11-30 07:00 in Hanoi: the window frees up at 07:15.
            assert!(refused.contains("thu lai sau 07:15"), "{refused}");
            // The citizen's own phone has its own allowance.
            let mut own = AtPhone::new(&server.url, "+84912345678");
            assert!(fold(&own.request_code("001099012345", "1").await).contains("Nhap ma"));
        }
        server.outbox().await; // delivered before the clock jumps past the codes' lifetime
        server.clock.advance(std::time::Duration::from_secs(15 * 60 + 1));
    }
    // Ten from strangers today, whatever the quarter hour; the citizen's own code besides.
    assert!(request(next_caller()).await.contains("qua nhieu lan"));
    assert_eq!(server.outbox().await.len(), 11);
    let audit = kichhoat::store::audit_all(server.app().store.as_ref()).await.unwrap();
    assert!(audit.iter().any(|a| a.event.event == "rate_limited" && a.event.detail.as_deref() == Some("otp_per_id")));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_failed_log_ins_from_strangers_lock_only_their_pool_and_each_further_lock_doubles() {
    let server = TestServer::start().await;
    activate(&server, "+84912345678", "001099012345", "Abc*1234x").await;
    for id in ["001099012345", "001099099999"] {
        for (i, left) in [(1, None), (2, None), (3, Some(2)), (4, Some(1))] {
            let reply = fold(&login(&server, "+84988000111", id, "Wrong*pw1").await);
            assert!(reply.contains("khong dung"), "{id} try {i}: {reply}");
            match left {
                Some(n) => assert!(reply.contains(&format!("Con {n} lan thu")), "{id} try {i}: {reply}"),
                None => assert!(!reply.contains("lan thu"), "{id} try {i}: {reply}"),
            }
        }
        let fifth = fold(&login(&server, "+84988000222", id, "Wrong*pw1").await);
        assert!(fifth.contains("tam khoa den 07:15"), "strangers share one pool: {fifth}");
    }
    // Strangers are locked out, even with the right password; the citizen's own phone is not.
    assert!(fold(&login(&server, "+84988000333", "001099012345", "Abc*1234x").await).contains("tam khoa"));
    assert!(fold(&login(&server, "+84912345678", "001099012345", "Abc*1234x").await).contains("Xin chao"));
    // After the lock, five more failures lock for twice as long.
    server.clock.advance(std::time::Duration::from_secs(15 * 60 + 1));
    for _ in 0..4 {
        login(&server, "+84988000111", "001099012345", "Wrong*pw1").await;
    }
    let again = fold(&login(&server, "+84988000111", "001099012345", "Wrong*pw1").await);
    assert!(again.contains("tam khoa den 07:45"), "{again}");
    let audit = kichhoat::store::audit_all(server.app().store.as_ref()).await.unwrap();
    let events: Vec<String> = audit.into_iter().map(|a| a.event.event).collect();
    assert_eq!(events.iter().filter(|e| *e == "login_locked").count(), 3, "every lockout is audited");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_ucs2_mode_a_flow_whose_screens_do_not_all_fit_is_sent_without_diacritics_on_every_screen() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = crate::helpers::settings(dir.path());
    settings.ussd_charset = kichhoat::flow::Charset::Ucs2;
    let server = TestServer::start_with(dir, settings).await;
    let mut p = AtPhone::new(&server.url, "+84912345678");
    // The shipped screens do not all fit 80 UCS-2 characters: one style, GSM-7, from the first screen on
    // (a short screen no longer shows diacritics while the next long one drops them).
    let menu = p.dial().await;
    assert!(menu.contains("Kich hoat tai khoan"), "{menu}");
    let id = p.send("1").await;
    assert!(id.chars().count() <= 84 && id.contains("Nhap so dinh danh"), "short, and still GSM-7: {id}");
    p.send("0").await;
    let long = p.send("3").await;
    assert!(long.contains("Cong an xa") && long.chars().count() > 84, "{long}");
    server.stop().await;
}
