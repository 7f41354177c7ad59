//! kichhoat behind a real Kannel (bearerbox, smsbox, fake SMSC): what a citizen texting from a keypad
//! phone sees, end to end. Each test starts its own gateway and server ([`crate::kannel_harness`]); without
//! Kannel installed they are skipped loudly (or fail, with `KICHHOAT_REQUIRE_KANNEL` set).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::response::IntoResponse;

use crate::helpers::{fold, otp_in, repo};
use crate::kannel_harness::{
    alive, kannel, same_number, FakePhone, Gateway, Rig, Service, Sms, SENDSMS_PASSWORD, SENDSMS_USER, SHORT_CODE,
    SMS_FROM,
};
use crate::secrets::{files, leaks};

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

    let gateway = Gateway::start(&k, &Service::Get.conf(port)).await;
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

/// An's phone as the SMSC gives it (`%p`), and An's ID number (`fixtures/registry.csv`).
const AN_PHONE: &str = "84912345678";
const AN_ID: &str = "001099012345";
/// How long "nothing more arrives" is watched for: a delivery round of kichhoat's worker (1 s) and the
/// way through Kannel, with margin.
const SETTLE: Duration = Duration::from_millis(2500);

/// What Kannel sends the citizen when kichhoat did not answer 2xx, or answered something that is not text.
const KANNEL_FAILURES: [&str; 2] = ["Could not fetch content", "Result could not be represented"];

/// The one SMS in `got` that answers the citizen's SMS (relayed by Kannel from the short code).
fn reply(got: &[Sms]) -> &Sms {
    let replies: Vec<&Sms> = got.iter().filter(|s| s.from == SHORT_CODE).collect();
    assert_eq!(replies.len(), 1, "one reply: {got:#?}");
    replies[0]
}

/// The SMS in `got` kichhoat sent through sendsms (from `--sms-from`).
fn sent(got: &[Sms]) -> Vec<&Sms> {
    got.iter().filter(|s| s.from == SMS_FROM).collect()
}

/// Texts `text`, expects one reply containing `needle` (folded), and returns the reply's text.
async fn step(phone: &mut FakePhone, text: &str, needle: &str) -> String {
    let got = phone.send(text, 1).await;
    let r = reply(&got).text.clone();
    assert!(fold(&r).contains(needle), "after {text:?}: {needle:?} not in {r:?}");
    r
}

/// Texts `text`, expects its reply (containing `needle`) and one SMS from kichhoat (containing
/// `sms_needle`), in any order; returns the SMS's text.
async fn step_and_sms(phone: &mut FakePhone, text: &str, needle: &str, sms_needle: &str) -> String {
    let got = phone.send(text, 2).await;
    let r = &reply(&got).text;
    assert!(fold(r).contains(needle), "after {text:?}: {needle:?} not in {r:?}");
    let ours = sent(&got);
    assert_eq!(ours.len(), 1, "{got:#?}");
    assert!(same_number(&ours[0].to, &phone.number), "{:?}", ours[0]);
    assert!(fold(&ours[0].text).contains(sms_needle), "{sms_needle:?} not in {:?}", ours[0].text);
    ours[0].text.clone()
}

/// Asks for a code: menu, 1, An's ID, `1` (this number). Returns the code from the SMS.
async fn request_code(phone: &mut FakePhone) -> String {
    step(phone, "Xin chao", "1. Kich hoat tai khoan").await;
    step(phone, "1", "Nhap so dinh danh ca nhan").await;
    step(phone, AN_ID, "Nhap so dien thoai da dang ky").await;
    let otp_sms = step_and_sms(phone, "1", "Ma OTP da gui toi", "Ma OTP kich hoat VNeID").await;
    otp_in(&otp_sms).unwrap_or_else(|| panic!("no code in {otp_sms:?}"))
}

/// What a whole activation typed, secrets included.
struct Typed {
    otp: String,
    password: &'static str,
    passcode: &'static str,
    answers: [&'static str; 2],
    mos: usize,
}

/// A whole activation of An's account by SMS, then a log-in by SMS; checks every reply on the way.
async fn activate_and_log_in(phone: &mut FakePhone) -> Typed {
    let t = Typed {
        otp: String::new(),
        password: "Zq*8!mWx#2",
        passcode: "604918",
        answers: ["Kim Dong", "Phở bò"],
        mos: 17,
    };
    let otp = request_code(phone).await;
    step(phone, &otp, "Dat mat khau").await;
    let again = step(phone, t.password, "Nhap lai mat khau").await;
    assert!(fold(&again).contains("Hay xoa tin nhan ban vua gui"), "the reminder after a secret: {again:?}");
    step(phone, t.password, "Dat passcode").await;
    step(phone, t.passcode, "Nhap lai passcode").await;
    step(phone, t.passcode, "Cau hoi bao mat 1/2").await;
    step(phone, "1", "Truong tieu hoc?").await;
    step(phone, t.answers[0], "Cau hoi bao mat 2/2").await;
    step(phone, "4", "Mon an thich nhat?").await;
    // Typed with diacritics, so the phone sends it in UCS-2.
    let got = phone.send_ucs2(t.answers[1], 2).await;
    assert!(fold(&reply(&got).text).contains("Kich hoat tai khoan thanh cong"), "{got:#?}");
    let ours = sent(&got);
    assert_eq!(ours.len(), 1, "the confirmation: {got:#?}");
    assert!(fold(&ours[0].text).contains("da duoc kich hoat"), "{:?}", ours[0]);

    step(phone, "Xin chao", "2. Dang nhap").await;
    step(phone, "2", "Nhap so dinh danh ca nhan").await;
    step(phone, AN_ID, "Nhap mat khau").await;
    step(phone, t.password, "Xin chao Nguyen Van An").await;
    Typed { otp, ..t }
}

/// Kannel never had to apologise for kichhoat: no SMS says it could not fetch, smsbox fetched each of
/// the `mos` SMS exactly once and got a 2xx each time, and smsbox logged no failed call to kichhoat
/// (replies or delivery reports).
fn assert_kannel_was_always_answered(rig: &Rig, phone: &FakePhone, mos: usize) {
    for sms in &phone.inbox {
        for f in KANNEL_FAILURES {
            assert!(!sms.text.contains(f), "Kannel replied {:?}", sms.text);
        }
    }
    let fetches = rig.gateway.fetches();
    assert_eq!(fetches.len(), mos, "one fetch per SMS sent: {fetches:#?}");
    for (status, url) in &fetches {
        assert!(url.contains("/sms/kannel?"), "{url}");
        assert!((200..300).contains(status), "smsbox got {status} from {url}");
    }
    let log = rig.gateway.smsbox_log();
    for line in log.lines().filter(|l| l.contains("ERROR") || l.contains("HTTP: Retrying")) {
        assert!(!line.contains("/sms/kannel"), "smsbox: {line}");
    }
}

/// Delivery reports kichhoat recorded; fails on one it refused.
fn reports_recorded(rig: &Rig) -> usize {
    let log = rig.server_log();
    let refused: Vec<&str> = log.lines().filter(|l| l.contains("kannel dlr:")).collect();
    assert!(refused.is_empty(), "delivery reports refused: {refused:#?}");
    log.lines().filter(|l| l.contains("kannel dlr recorded")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_citizen_activates_by_sms_through_kannel_and_then_logs_in_by_sms() {
    let Some(k) = kannel("a_citizen_activates_by_sms_through_kannel_and_then_logs_in_by_sms") else { return };
    let started = Instant::now();
    let rig = Rig::start(&k, &[], "info").await;
    let mut phone = rig.phone(AN_PHONE);
    let typed = activate_and_log_in(&mut phone).await;

    assert!(phone.listen_for(SETTLE).await.is_empty(), "nothing more arrives: {:#?}", phone.inbox);
    // One reply per SMS sent, plus exactly one code and one confirmation.
    assert_eq!(phone.inbox.len(), typed.mos + 2, "{:#?}", phone.inbox);
    assert_eq!(sent(&phone.inbox).len(), 2, "{:#?}", phone.inbox);
    assert!(phone.inbox.iter().all(|s| same_number(&s.to, AN_PHONE)));
    assert!(phone.inbox.iter().all(|s| !s.ucs2), "GSM-7 by default: {:#?}", phone.inbox);
    assert_kannel_was_always_answered(&rig, &phone, typed.mos);
    // The fake SMSC reports each SMS kichhoat sent twice: accepted by the SMSC (8), delivered (1).
    let start = Instant::now();
    while reports_recorded(&rig) < 4 && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reports_recorded(&rig), 4, "{}", rig.server_log());
    eprintln!("activation and log-in by SMS through Kannel: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_webhook_token_the_gateway_s_calls_carry_it_and_a_forged_sms_without_it_is_refused() {
    let Some(k) = kannel("with_a_webhook_token_the_gateway_s_calls_carry_it_and_a_forged_sms_without_it_is_refused")
    else {
        return;
    };
    const TOKEN: &str = "kannel-test-token-0123456789";
    let rig = Rig::start_with(&k, Service::GetWithToken(TOKEN), &["--webhook-token", TOKEN], "info").await;
    // A forged SMS straight to kichhoat, without the token: refused, nothing sent.
    let (status, _, _) = rig.mo(AN_PHONE, "Xin chao", "forged-1").await;
    assert_eq!(status, 401);
    // Through Kannel (its get-url carries the token) the whole activation works, and the delivery
    // reports (their URL carries it too) are recorded.
    let mut phone = rig.phone(AN_PHONE);
    let typed = activate_and_log_in(&mut phone).await;
    assert_eq!(sent(&phone.inbox).len(), 2, "the code and the confirmation: {:#?}", phone.inbox);
    assert_kannel_was_always_answered(&rig, &phone, typed.mos);
    let start = Instant::now();
    while reports_recorded(&rig) < 4 && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(reports_recorded(&rig), 4, "{}", rig.server_log());
    assert!(!rig.server_log().contains(TOKEN), "never the token in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_secret_is_kept_or_logged_after_an_activation_by_sms_through_kannel() {
    let Some(k) = kannel("nothing_secret_is_kept_or_logged_after_an_activation_by_sms_through_kannel") else {
        return;
    };
    let mut rig = Rig::start(&k, &[], "trace").await;
    let mut phone = rig.phone(AN_PHONE);
    let typed = activate_and_log_in(&mut phone).await;
    step(&mut phone, "Xin chao", "1. Kich hoat tai khoan").await;
    step(&mut phone, "2", "Nhap so dinh danh ca nhan").await;
    step(&mut phone, AN_ID, "Nhap mat khau").await;
    step(&mut phone, "Wr0ng*pass!", "khong dung").await;
    // Delivery reports of the two SMS kichhoat sent may still be on their way: let them land first.
    phone.listen_for(SETTLE).await;
    rig.terminate();

    let mut all = Vec::new();
    files(&rig.data, &mut all);
    all.push(rig.log.clone());
    let stored = all.iter().any(|f| std::fs::read(f).unwrap().windows(10).any(|w| w == b"$argon2id$"));
    assert!(stored, "the scan saw the stored account: {all:?}");
    let needles = [
        typed.password.to_string(),
        typed.passcode.to_string(),
        typed.otp.clone(),
        "Wr0ng*pass!".to_string(),
        typed.answers[0].to_string(),
        typed.answers[1].to_string(),
        "kim dong".to_string(),
        "pho bo".to_string(),
    ];
    // As they may appear in a logged URL too.
    let encoded: Vec<String> = needles.iter().map(|n| crate::kannel_harness::url_encode(n.as_bytes())).collect();
    let plus: Vec<String> = needles.iter().map(|n| n.replace(' ', "+")).collect();
    for f in &all {
        let bytes = std::fs::read(f).unwrap();
        for n in needles.iter().chain(&encoded).chain(&plus) {
            assert!(!leaks(&bytes, n.as_bytes()), "{n:?} found in {}", f.display());
            assert!(!leaks(&bytes.to_ascii_lowercase(), n.to_ascii_lowercase().as_bytes()), "{n:?} in {}", f.display());
        }
    }
    let log = rig.server_log();
    assert!(log.contains("sms sent"), "the log is real: {log}");
    for personal in [AN_ID, "0912345678", AN_PHONE] {
        assert!(!log.contains(personal), "{personal} appears unmasked in kichhoat's log");
    }
}

/// The menu with diacritics and the SMS frame, from the catalogue.
fn catalogue() -> toml::Value {
    let text = std::fs::read_to_string(repo().join("flows/messages/vi.toml")).unwrap();
    toml::from_str(&text).unwrap()
}

fn message<'a>(cat: &'a toml::Value, path: &str) -> &'a str {
    path.split('.').fold(cat, |v, k| &v[k]).as_str().unwrap_or_else(|| panic!("no {path} in vi.toml"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_ucs2_replies_keep_their_diacritics_through_kannel() {
    let Some(k) = kannel("with_ucs2_replies_keep_their_diacritics_through_kannel") else { return };
    let rig = Rig::start(&k, &["--sms-charset", "ucs2"], "info").await;
    let mut phone = rig.phone(AN_PHONE);
    let cat = catalogue();

    let got = phone.send("Xin chao", 1).await;
    let menu = reply(&got);
    let expected = format!("{}\n{}", message(&cat, "menu"), message(&cat, "sms_reply.more"));
    assert!(menu.ucs2, "{menu:?}");
    assert!(menu.parts > 1, "longer than one UCS-2 SMS: {menu:?}");
    assert_eq!(menu.text, expected);

    // The code kichhoat sends itself keeps its diacritics too, over three UCS-2 parts (sendsms-user's
    // max-messages = 3 and concatenation are what let it through whole).
    step(&mut phone, "1", "Nhap so dinh danh ca nhan").await;
    step(&mut phone, AN_ID, "Nhap so dien thoai da dang ky").await;
    let got = phone.send("1", 2).await;
    let otp = sent(&got)[0];
    assert!(otp.ucs2 && otp.parts > 1, "{otp:?}");
    let template = message(&cat, "for_sms.sms.otp");
    let pattern = regex::escape(template).replace(r"\{otp\}", r"\d{6}").replace(r"\{minutes\}", r"\d+");
    assert!(regex::Regex::new(&format!("^{pattern}$")).unwrap().is_match(&otp.text), "{otp:?} vs {template:?}");
    assert_kannel_was_always_answered(&rig, &phone, 4);
}

/// A message id as Kannel makes them (`%I`, a UUID), unique in this test run.
fn kannel_id() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("5e0c7a1b-{:04x}-4d2e-9f3a-{:012x}", std::process::id() & 0xffff, N.fetch_add(1, Ordering::SeqCst))
}

/// Drives An's activation up to the code request with SMS posted straight to kichhoat as smsbox would,
/// and returns the reply to the code request and its message id.
async fn request_code_directly(rig: &Rig) -> ((u16, Option<String>, String), String) {
    for (text, needle) in [("Xin chao", "1. Kich hoat"), ("1", "Nhap so dinh danh"), (AN_ID, "Nhap so dien thoai")] {
        let (status, _, body) = rig.mo(AN_PHONE, text, &kannel_id()).await;
        assert_eq!(status, 200, "{body}");
        assert!(fold(&body).contains(needle), "after {text:?}: {body:?}");
    }
    let id = kannel_id();
    let r = rig.mo(AN_PHONE, "1", &id).await;
    assert_eq!(r.0, 200, "{r:?}");
    assert!(fold(&r.2).contains("Ma OTP da gui toi"), "{r:?}");
    (r, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kannel_retry_of_the_same_sms_gets_the_same_reply_and_sends_no_second_code() {
    let Some(k) = kannel("a_kannel_retry_of_the_same_sms_gets_the_same_reply_and_sends_no_second_code") else {
        return;
    };
    let rig = Rig::start(&k, &[], "info").await;
    let (first, id) = request_code_directly(&rig).await;
    for _ in 0..2 {
        assert_eq!(rig.mo(AN_PHONE, "1", &id).await, first, "a retry (same id) gets the same reply");
    }
    let mut phone = rig.phone(AN_PHONE);
    let got = phone.listen(1, Duration::from_secs(15)).await;
    assert_eq!(got.len(), 1, "{got:#?}");
    assert!(otp_in(&got[0].text).is_some(), "{got:?}");
    assert!(phone.listen_for(SETTLE).await.is_empty(), "one code only: {:#?}", phone.inbox);
}

/// Lines of kichhoat's log saying an SMS could not be handed to the gateway and will be tried again.
fn retries_logged(rig: &Rig) -> usize {
    rig.server_log().lines().filter(|l| l.contains("sms not sent; will retry")).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_queued_while_sendsms_is_down_arrives_once_when_it_is_back() {
    let Some(k) = kannel("a_code_queued_while_sendsms_is_down_arrives_once_when_it_is_back") else { return };
    let mut rig = Rig::start(&k, &[], "info").await;
    rig.gateway.stop_smsbox().await;
    // Without smsbox no SMS reaches kichhoat through Kannel: post them as smsbox would.
    request_code_directly(&rig).await;

    // The first attempt and the first retry (2 s later) fail.
    let start = Instant::now();
    while retries_logged(&rig) < 2 {
        assert!(start.elapsed() < Duration::from_secs(15), "no retries logged:\n{}", rig.server_log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rig.gateway.start_smsbox().await;

    let mut phone = rig.phone(AN_PHONE);
    let got = phone.listen(1, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 1, "the code arrives: {got:#?}\n{}", rig.server_log());
    assert_eq!(got[0].from, SMS_FROM);
    assert!(otp_in(&got[0].text).is_some(), "{got:?}");
    // Past the retry that would follow the attempt that succeeded (2 s doubling per failure, up to a
    // quarter more), and a delivery round: no second copy.
    let failures = retries_logged(&rig) as u32;
    let next_retry = Duration::from_secs(2u64 << failures.min(3)).mul_f64(1.25) + SETTLE;
    let more = phone.listen_for(next_retry).await;
    assert!(more.is_empty(), "a second copy: {more:#?}");
    let log = rig.server_log();
    assert_eq!(log.lines().filter(|l| l.contains("sms sent")).count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_huy_the_code_received_before_no_longer_continues_the_activation() {
    let Some(k) = kannel("after_huy_the_code_received_before_no_longer_continues_the_activation") else { return };
    let rig = Rig::start(&k, &[], "info").await;
    let mut phone = rig.phone(AN_PHONE);
    let old = request_code(&mut phone).await;

    step(&mut phone, "HUY", "Da huy").await;
    let r = step(&mut phone, &old, "1. Kich hoat tai khoan").await;
    assert!(!fold(&r).contains("Dat mat khau"), "the old code opened nothing: {r:?}");

    // A new activation: the old code is wrong there, the new one works.
    step(&mut phone, "1", "Nhap so dinh danh ca nhan").await;
    step(&mut phone, AN_ID, "Nhap so dien thoai da dang ky").await;
    let sms = step_and_sms(&mut phone, "1", "Ma OTP da gui toi", "Ma OTP kich hoat").await;
    let new = otp_in(&sms).unwrap();
    if new != old {
        step(&mut phone, &old, "Ma OTP khong dung").await;
    }
    step(&mut phone, &new, "Dat mat khau").await;
    assert!(phone.listen_for(SETTLE).await.is_empty(), "{:#?}", phone.inbox);
    assert_eq!(sent(&phone.inbox).len(), 2, "two codes, nothing else: {:#?}", phone.inbox);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_kannel_posting_the_text_an_sms_with_diacritics_is_understood_and_answered() {
    let Some(k) = kannel("with_kannel_posting_the_text_an_sms_with_diacritics_is_understood_and_answered") else {
        return;
    };
    let rig = Rig::start_with(&k, Service::Post, &[], "info").await;
    let mut phone = rig.phone(AN_PHONE);
    let got = phone.send_ucs2("Xin chào", 1).await;
    assert!(fold(&reply(&got).text).contains("1. Kich hoat tai khoan"), "{got:#?}");
    step(&mut phone, "1", "Nhap so dinh danh ca nhan").await;
    // A keyword typed with its diacritics.
    let got = phone.send_ucs2("Hủy", 1).await;
    assert!(fold(&reply(&got).text).contains("Da huy"), "{got:#?}");
    let fetches = rig.gateway.fetches();
    assert!(fetches.iter().all(|(_, url)| !url.contains("text=")), "the text is not in the URL: {fetches:#?}");
    assert_kannel_was_always_answered(&rig, &phone, 3);
}
