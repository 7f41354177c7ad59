//! The Kannel contract, black-box: `/sms/kannel` driven exactly as a Kannel `sms-service` drives it
//! (`get-url` with a form-encoded query; `post-url` with the text as the body), what the citizen gets back
//! as the reply SMS, retries by message id, keywords, one conversation across USSD and SMS, the reply
//! charset, and refusals.

use kichhoat::domain::text::gsm7_len;
use kichhoat::domain::Msisdn;
use kichhoat::flow::{Charset, Flow};
use kichhoat::store::audit_all;

use crate::helpers::{
    fold, get_kannel, get_kannel_raw, otp_in, post_kannel, repo, settings, AtPhone, KannelReply, SmsPhone, TestServer,
};
use crate::transcripts::sms_ends;

const AN: &str = "+84912345678";
const AN_ID: &str = "001099012345";
const PASSWORD: &str = "Abc*1234x";

fn flow() -> Flow {
    Flow::load(&repo().join("flows")).unwrap()
}

fn phone(p: &str) -> Msisdn {
    Msisdn::parse(p).unwrap()
}

/// The last OTP the outbox holds.
async fn last_otp(server: &TestServer) -> String {
    otp_in(&server.outbox().await.last().unwrap().text).unwrap()
}

/// Texts `inputs` in order; every reply must be a 200 that says what can be texted next. The replies.
async fn texts(p: &SmsPhone, inputs: &[&str]) -> Vec<String> {
    let flow = flow();
    let mut out = Vec::new();
    for input in inputs {
        let body = p.send(input).await;
        sms_ends(&flow, &body); // panics when the reply says nothing about what to text next
        out.push(body);
    }
    out
}

/// From the code prompt on: the code, password, passcode, two questions; the reply to the last answer.
async fn finish_by_sms(server: &TestServer, p: &SmsPhone) -> String {
    let otp = last_otp(server).await;
    let r = texts(p, &[&otp, PASSWORD, PASSWORD, "258147", "258147", "2", "Mướp", "4", "Phở bò"]).await;
    r.last().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sms_whatever_it_says_opens_the_menu_and_says_what_to_text_next() {
    let server = TestServer::start().await;
    let p = SmsPhone::new(&server.url, AN);
    let r = p.send_as(&SmsPhone::new_id(), "Xin chao").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; charset=UTF-8"));
    let body = fold(&r.body);
    assert!(body.starts_with("VNeID\n1. Kich hoat tai khoan\n2. Dang nhap"), "{body}");
    assert!(body.ends_with("Nhan MENU de ve menu, HUY de huy, TRO GIUP de duoc tro giup."), "{body}");
    assert!(!sms_ends(&flow(), &r.body), "the menu waits for an answer");
    // Anything at all opens it too, on another phone.
    let other = SmsPhone::new(&server.url, "+84987654321");
    assert!(fold(&other.send("Toi muon kich hoat tai khoan").await).contains("1. Kich hoat tai khoan"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_activation_by_sms_then_a_log_in_by_sms_greets_the_citizen_by_name() {
    let server = TestServer::start().await;
    let p = SmsPhone::new(&server.url, AN);
    let r = texts(&p, &["Xin chao", "1", AN_ID, "1"]).await;
    assert!(fold(&r[3]).contains("091****678"), "{}", r[3]);
    let sent = server.outbox().await;
    assert_eq!((sent.len(), sent[0].to.as_str()), (1, AN));
    let otp = otp_in(&sent[0].text).unwrap();

    let r = texts(&p, &[&otp, PASSWORD]).await;
    assert!(fold(&r[0]).contains("Dat mat khau") && !fold(&r[0]).contains("Hay xoa tin nhan"), "{}", r[0]);
    assert!(fold(&r[1]).starts_with("Hay xoa tin nhan ban vua gui"), "after the password: {}", r[1]);
    let r = texts(&p, &[PASSWORD, "258147", "258147", "2", "Mướp", "4", "Phở bò"]).await;
    let done = fold(r.last().unwrap());
    assert!(done.contains("Kich hoat tai khoan thanh cong") && done.contains("mo menu, chon 2"), "{done}");
    assert!(sms_ends(&flow(), r.last().unwrap()));
    assert_eq!(server.outbox().await.len(), 2, "the code, then the confirmation");

    let r = texts(&p, &["Dang nhap", "2", AN_ID, PASSWORD]).await;
    let hello = fold(&r[3]);
    assert!(hello.contains("Xin chao Nguyen Van An!"), "{hello}");
    assert!(hello.starts_with("Hay xoa tin nhan ban vua gui"), "the password was in the SMS: {hello}");
    // The same account logs in over USSD: one account whatever the channel.
    let mut at = AtPhone::new(&server.url, AN);
    assert!(fold(&at.log_in(AN_ID, PASSWORD).await).starts_with("END Xin chao Nguyen Van An"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_sms_gets_a_byte_identical_reply_and_sends_no_second_otp() {
    let server = TestServer::start().await;
    let p = SmsPhone::new(&server.url, AN);
    texts(&p, &["Xin chao", "1", AN_ID]).await;
    let id = SmsPhone::new_id();
    let first = p.send_as(&id, "1").await;
    assert!(fold(&first.body).contains("Nhap ma"), "{first:?}");
    for _ in 0..3 {
        assert_eq!(p.send_as(&id, "1").await, first, "status, headers (but the date) and body");
    }
    assert_eq!(server.outbox().await.len(), 1, "one code");
    // The retries moved nothing: the code is still what the conversation waits for.
    let otp = last_otp(&server).await;
    assert!(fold(&p.send(&otp).await).contains("Dat mat khau"));
    // A late retry of the first message, after the conversation moved on, still gets its own reply.
    assert_eq!(p.send_as(&id, "1").await, first);
    assert_eq!(server.outbox().await.len(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_copies_of_one_sms_at_once_get_one_reply_and_one_otp() {
    let server = TestServer::start().await;
    let p = SmsPhone::new(&server.url, AN);
    texts(&p, &["Xin chao", "1", AN_ID]).await;
    let id = SmsPhone::new_id();
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let (url, id) = (server.url.clone(), id.clone());
            tokio::spawn(async move { SmsPhone::new(&url, AN).send_as(&id, "1").await })
        })
        .collect();
    let mut replies = Vec::new();
    for c in calls {
        replies.push(c.await.unwrap());
    }
    assert!(fold(&replies[0].body).contains("Nhap ma"), "{:?}", replies[0]);
    assert!(replies.iter().all(|r| *r == replies[0]), "{replies:?}");
    assert_eq!(server.outbox().await.len(), 1, "one code for eight copies");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sms_without_an_id_is_never_taken_for_a_retry() {
    let server = TestServer::start().await;
    let no_id = |text: &'static str| {
        let url = server.url.clone();
        async move { get_kannel(&url, &[("from", AN), ("text", text)]).await }
    };
    assert!(fold(&no_id("Xin chao").await.body).contains("1. Kich hoat"));
    assert!(fold(&no_id("1").await.body).contains("so dinh danh"));
    let again = no_id("1").await;
    assert!(
        fold(&again.body).contains("So dinh danh phai co dung 12 chu so"),
        "the second \"1\" is an answer: {again:?}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huy_in_the_middle_of_an_activation_ends_it_and_the_old_code_no_longer_continues_it() {
    let server = TestServer::start().await;
    let p = SmsPhone::new(&server.url, AN);
    texts(&p, &["Xin chao", "1", AN_ID, "1"]).await;
    let otp = last_otp(&server).await;
    let cancelled = p.send("Hủy").await;
    assert!(fold(&cancelled).contains("Da huy"), "{cancelled}");
    assert!(sms_ends(&flow(), &cancelled));
    let after = fold(&p.send(&otp).await);
    assert!(after.contains("1. Kich hoat tai khoan"), "the code only opens the menu: {after}");
    assert!(!after.contains("Dat mat khau"), "{after}");
    let events: Vec<String> =
        audit_all(server.app().store.as_ref()).await.unwrap().into_iter().map(|a| a.event.event).collect();
    assert!(events.contains(&"cancelled".to_string()), "{events:?}");
    assert!(!events.iter().any(|e| e.contains("verified")), "{events:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn menu_and_tro_giup_answer_in_the_middle_of_a_step() {
    let server = TestServer::start().await;
    let p = SmsPhone::new(&server.url, AN);
    texts(&p, &["Xin chao", "1"]).await;
    let menu = fold(&p.send("MENU").await);
    assert!(menu.starts_with("VNeID\n1. Kich hoat tai khoan"), "{menu}");
    texts(&p, &["1", AN_ID]).await;
    let help = p.send("TRỢ GIÚP").await;
    assert!(fold(&help).contains("Cong an xa, phuong noi cu tru"), "{help}");
    assert!(sms_ends(&flow(), &help));
    assert!(fold(&p.send("help").await).contains("Cong an xa, phuong"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_begun_by_ussd_is_finished_by_sms() {
    let server = TestServer::start().await;
    let mut at = AtPhone::new(&server.url, AN);
    assert!(fold(&at.request_code(AN_ID, "1").await).starts_with("CON Ma OTP da gui toi 091****678"));
    let p = SmsPhone::new(&server.url, AN);
    let done = fold(&finish_by_sms(&server, &p).await);
    assert!(done.contains("Kich hoat tai khoan thanh cong"), "{done}");
    let mut at = AtPhone::new(&server.url, AN);
    assert!(fold(&at.log_in(AN_ID, PASSWORD).await).starts_with("END Xin chao Nguyen Van An"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_begun_by_sms_is_finished_by_ussd() {
    let server = TestServer::start().await;
    let p = SmsPhone::new(&server.url, AN);
    texts(&p, &["Xin chao", "1", AN_ID, "1"]).await;
    let otp = last_otp(&server).await;
    let mut at = AtPhone::new(&server.url, AN);
    let resumed = fold(&at.dial().await);
    assert!(resumed.starts_with("CON Tiep tuc") && resumed.contains("Nhap ma"), "{resumed}");
    assert!(fold(&at.send(&otp).await).contains("Dat mat khau"));
    for input in [PASSWORD, PASSWORD, "258147", "258147", "2", "Mướp", "4"] {
        assert!(at.send(input).await.starts_with("CON "), "at {input}");
    }
    let done = fold(&at.send("Phở bò").await);
    assert!(done.starts_with("END Kich hoat tai khoan thanh cong") && done.contains("quay *384*2#"), "{done}");
    let r = texts(&p, &["Xin chao", "2", AN_ID, PASSWORD]).await;
    assert!(fold(&r[3]).contains("Xin chao Nguyen Van An"), "{}", r[3]);
    server.stop().await;
}

/// A reply either needs UCS-2 and says so, or is GSM-7 and says nothing.
fn coding_agrees(r: &KannelReply) {
    match r.header("x-kannel-coding") {
        Some("2") => assert!(gsm7_len(&r.body).is_none(), "UCS-2 for a GSM-7 body: {r:?}"),
        None => assert!(gsm7_len(&r.body).is_some(), "no coding header for a body GSM-7 cannot carry: {r:?}"),
        Some(other) => panic!("X-Kannel-Coding: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_sms_charset_ucs2_a_reply_keeps_its_diacritics_and_says_x_kannel_coding_2() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path());
    s.sms_charset = Charset::Ucs2;
    let server = TestServer::start_with(dir, s).await;
    let p = SmsPhone::new(&server.url, AN);
    let menu = p.send_as(&SmsPhone::new_id(), "Xin chào").await;
    assert_eq!(menu.header("x-kannel-coding"), Some("2"), "{menu:?}");
    assert_eq!(menu.header("content-type"), Some("text/plain; charset=UTF-8"));
    assert!(menu.body.contains("1. Kích hoạt tài khoản") && menu.body.contains("Trả lời tin nhắn này"), "{menu:?}");
    // Through a whole activation, every reply's coding agrees with its body; the long ones are folded.
    let mut folded = 0;
    for input in ["1", AN_ID, "1"] {
        let r = p.send_as(&SmsPhone::new_id(), input).await;
        coding_agrees(&r);
    }
    let otp = last_otp(&server).await;
    for input in [otp.as_str(), PASSWORD, PASSWORD, "258147", "258147", "2", "Mướp", "4", "Phở bò", "TRO GIUP"] {
        let r = p.send_as(&SmsPhone::new_id(), input).await;
        coding_agrees(&r);
        folded += usize::from(r.header("x-kannel-coding").is_none());
    }
    assert!(folded > 0, "some replies are too long for 3 UCS-2 parts and go out folded");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_default_gsm7_no_reply_has_a_diacritic_or_a_coding_header() {
    let server = TestServer::start().await;
    let p = SmsPhone::new(&server.url, AN);
    let gsm7_only = |r: &KannelReply| {
        assert_eq!(r.header("x-kannel-coding"), None, "{r:?}");
        assert!(gsm7_len(&r.body).is_some() && r.body == fold(&r.body), "{r:?}");
    };
    for input in ["Xin chào", "1", AN_ID, "1"] {
        gsm7_only(&p.send_as(&SmsPhone::new_id(), input).await);
    }
    let otp = last_otp(&server).await;
    for input in [otp.as_str(), PASSWORD, PASSWORD, "258147", "258147", "2", "Mướp", "4", "Phở bò", "TRỢ GIÚP"]
    {
        gsm7_only(&p.send_as(&SmsPhone::new_id(), input).await);
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_not_in_kannels_form_get_a_4xx_and_store_nothing() {
    let server = TestServer::start().await;
    let url = &server.url;
    let cases: Vec<(&str, KannelReply)> = vec![
        (
            "no from (a get-url naming it sender)",
            get_kannel(url, &[("sender", AN), ("text", "Xin chao"), ("id", "a")]).await,
        ),
        ("an empty from", get_kannel(url, &[("from", ""), ("text", "Xin chao"), ("id", "b")]).await),
        ("a foreign number", get_kannel(url, &[("from", "+14155550123"), ("text", "Xin chao"), ("id", "c")]).await),
        ("a landline", get_kannel(url, &[("from", "+842438123456"), ("text", "Xin chao"), ("id", "d")]).await),
        ("text that is not UTF-8", get_kannel_raw(url, "from=%2B84912345678&text=Xin+ch%E0o&id=e").await),
        ("a from that is not UTF-8", get_kannel_raw(url, "from=%2B8491234567%FF&text=hi&id=f").await),
        ("a text of 1100 bytes", get_kannel(url, &[("from", AN), ("text", &"a".repeat(1100)), ("id", "g")]).await),
        (
            "a binary post",
            post_kannel(
                url,
                "id=h",
                &[("x-kannel-from", AN), ("content-type", "application/octet-stream")],
                vec![1, 2],
            )
            .await,
        ),
        (
            "a post that is not UTF-8",
            post_kannel(url, "id=i", &[("x-kannel-from", AN), ("content-type", "text/plain")], vec![0xff, 0xfe]).await,
        ),
    ];
    for (what, r) in &cases {
        assert!((400..500).contains(&r.status), "{what}: {r:?}");
    }
    let store = &server.app().store;
    assert!(store.load(&phone(AN)).await.unwrap().is_none(), "a conversation was stored");
    assert!(audit_all(store.as_ref()).await.unwrap().is_empty());
    assert!(server.outbox().await.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_url_sms_is_answered_like_a_get_and_its_retry_alike() {
    let server = TestServer::start().await;
    let post = |query: String, from: &'static str, content_type: &'static str, body: Vec<u8>| {
        let url = server.url.clone();
        async move {
            post_kannel(
                &url,
                &query,
                &[("x-kannel-from", from), ("x-kannel-to", "8088"), ("content-type", content_type)],
                body,
            )
            .await
        }
    };
    let utf8 = "text/plain; charset=\"UTF-8\"";
    let id = SmsPhone::new_id();
    let menu = post(format!("id={id}"), AN, utf8, "Xin chào".as_bytes().to_vec()).await;
    assert_eq!((menu.status, menu.header("content-type")), (200, Some("text/plain; charset=UTF-8")));
    assert!(fold(&menu.body).contains("1. Kich hoat tai khoan"), "{menu:?}");
    assert_eq!(post(format!("id={id}"), AN, utf8, "Xin chào".as_bytes().to_vec()).await, menu, "a retry");
    let r = post(format!("id={}", SmsPhone::new_id()), AN, utf8, b"1".to_vec()).await;
    assert!(fold(&r.body).contains("so dinh danh ca nhan"), "{r:?}");
    // Without mo-recode Kannel posts a UCS-2 SMS as UTF-16BE.
    let utf16: Vec<u8> = " trợ giúp ".encode_utf16().flat_map(u16::to_be_bytes).collect();
    let help = post(format!("id={}", SmsPhone::new_id()), AN, "text/plain; charset=\"UTF-16BE\"", utf16).await;
    assert!(fold(&help.body).contains("Cong an xa, phuong"), "{help:?}");
    // from in the query serves as well as the header.
    let r = post(format!("from=%2B84987654321&id={}", SmsPhone::new_id()), AN, utf8, b"hello".to_vec()).await;
    assert_eq!(r.status, 200);
    assert!(server.app().store.load(&phone("+84987654321")).await.unwrap().is_some(), "the query's from");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huy_typed_as_a_best_friends_name_is_the_answer_not_a_cancel() {
    let server = TestServer::start().await;
    let p = SmsPhone::new(&server.url, AN);
    texts(&p, &["Xin chao", "1", AN_ID, "1"]).await;
    let otp = last_otp(&server).await;
    // Question 5 is "Tên bạn thân?": Huy is a common given name.
    let r = texts(&p, &[&otp, PASSWORD, PASSWORD, "258147", "258147", "5", "Huy", "4", "Phở bò"]).await;
    let done = fold(r.last().unwrap());
    assert!(done.contains("Kich hoat tai khoan thanh cong"), "{done}");
    // Anywhere else HUY still cancels.
    let q = SmsPhone::new(&server.url, "+84987654321");
    texts(&q, &["Xin chao", "1"]).await;
    assert!(fold(&q.send("huy").await).contains("Da huy"));
    server.stop().await;
}
