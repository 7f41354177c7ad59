//! Expiry, on the injected clock, through `App::expire_now` (the pass the periodic sweeper runs): what a
//! citizen sees on the next dial, and what the data dir still holds about them.
//!
//! - 10 minutes after the last hop, the retry replies and the carrier's cursor (keyed hashes of typed
//!   texts) are dropped, and nothing else: the activation still resumes on the next dial.
//! - An hour after it, the conversation is deleted, or reduced to the language a citizen chose; the OTP
//!   counter of a phone goes once its window has passed.
//! - So the store stays flat: conversations that go idle leave no record, and no index entry, behind.

use std::path::Path;
use std::time::Duration;

use kichhoat::clock::Clock;
use kichhoat::config::{Common, Settings, StoreKind};
use kichhoat::domain::Msisdn;
use kichhoat::engine::policy::{Policy, Pool};
use kichhoat::flow::{Charset, Lang};
use kichhoat::store::Conversation;

use crate::helpers::{fold, repo, AtPhone, TestServer};

const MINUTE: Duration = Duration::from_secs(60);
const AN: (&str, &str) = ("001099012345", "+84912345678");

async fn stored(server: &TestServer, phone: &str) -> Option<Conversation> {
    let phone = Msisdn::parse(phone).unwrap();
    server.app().store.load(&phone).await.unwrap().map(|(c, _)| c)
}

/// Whether the store still holds the OTP-per-phone counter of `phone`.
async fn otp_counted(server: &TestServer, phone: &str) -> bool {
    let (key, _) = Policy::default().otp_phone(&Msisdn::parse(phone).unwrap(), Pool::Own);
    !server.app().store.tally(&key).await.unwrap().is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_minutes_after_the_code_was_sent_the_retry_data_goes_but_the_activation_still_resumes() {
    let server = TestServer::start().await;
    let mut phone = AtPhone::new(&server.url, AN.1);
    let sent = phone.request_code(AN.0, "1").await;
    assert!(fold(&sent).contains("Nhap ma"), "{sent}");
    // Delivered before the clock moves on (an OTP still queued 11 minutes later would be failed as stale).
    assert_eq!(server.outbox().await.len(), 1);
    let before = stored(&server, AN.1).await.unwrap();
    assert!(!before.recent.is_empty() && !before.cursors.is_empty(), "kept while the carrier may retry");

    server.clock.advance(9 * MINUTE);
    assert_eq!(server.app().expire_now().await.unwrap().swept, 0, "not yet");
    assert_eq!(stored(&server, AN.1).await.unwrap(), before);

    server.clock.advance(2 * MINUTE);
    let expired = server.app().expire_now().await.unwrap();
    assert_eq!((expired.swept, expired.conversations), (1, 0), "{expired:?}");
    let after = stored(&server, AN.1).await.unwrap();
    assert!(after.recent.is_empty(), "retry replies dropped");
    assert!(after.cursors.is_empty(), "the carrier's cursor dropped");
    assert_eq!(after.session, before.session, "the activation itself is kept");
    assert!(otp_counted(&server, AN.1).await, "the OTP counter's window is still open");

    // Within the 15 idle minutes, a new dial reopens the code prompt (the code itself has expired).
    let shown = fold(&phone.dial().await);
    assert!(shown.starts_with("CON "), "{shown}");
    assert!(shown.contains(&fold("Mã OTP đã hết hạn. Chọn 1")), "{shown}");
    assert!(shown.contains("Nhap ma"), "{shown}");
    let resent = fold(&phone.send("1").await);
    assert!(resent.contains("091****678"), "{resent}");
    assert_eq!(server.outbox().await.len(), 2, "a new code went out");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_idle_hours_later_the_conversation_and_the_otp_counter_are_gone_and_a_new_dial_works() {
    let server = TestServer::start().await;
    let mut phone = AtPhone::new(&server.url, AN.1);
    phone.request_code(AN.0, "1").await;
    assert_eq!(server.outbox().await.len(), 1);

    server.clock.advance(120 * MINUTE);
    assert!(stored(&server, AN.1).await.is_some(), "kept until an expiry pass");
    assert!(otp_counted(&server, AN.1).await, "kept until an expiry pass");
    let expired = server.app().expire_now().await.unwrap();
    // The code request's hourly counters (per phone, per caller, the ID's 15 minutes) are gone; its daily
    // ones (the ID's codes, the caller's lookups) wait out their day.
    assert_eq!((expired.conversations, expired.counters), (1, 3), "{expired:?}");
    assert_eq!(stored(&server, AN.1).await, None, "Vietnamese is the default: nothing kept");
    assert!(!otp_counted(&server, AN.1).await);
    assert_eq!(server.app().expire_now().await.unwrap().total(), 0, "nothing left to reclaim");

    let menu = fold(&phone.dial().await);
    assert!(menu.starts_with("CON ") && menu.contains(&fold("1. Kích hoạt tài khoản")), "{menu}");
    assert!(!menu.contains(&fold("Tiếp tục")), "{menu}");
    let sent = fold(&phone.request_code(AN.0, "1").await);
    assert!(sent.contains("091****678"), "{sent}");
    assert_eq!(server.outbox().await.len(), 2, "a new code went out");
    assert!(otp_counted(&server, AN.1).await, "counted afresh");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_citizen_who_chose_english_still_gets_english_after_the_conversation_expired() {
    let server = TestServer::start().await;
    let mut phone = AtPhone::new(&server.url, AN.1);
    phone.dial().await;
    let english = phone.send("9").await;
    assert!(english.contains("1. Activate account"), "{english}");
    phone.send("1").await;
    phone.send(AN.0).await;
    phone.send("1").await;
    assert!(stored(&server, AN.1).await.unwrap().session.slots.national_id.is_some());

    server.clock.advance(120 * MINUTE);
    let expired = server.app().expire_now().await.unwrap();
    assert_eq!(expired.conversations, 1, "{expired:?}");
    let kept = stored(&server, AN.1).await.expect("the language choice is kept");
    assert_eq!(kept.session.lang, Lang::En);
    assert_eq!(kept.session.state, "", "at no state");
    assert_eq!(kept.session.slots, Default::default(), "nothing of the activation");
    assert!(kept.recent.is_empty() && kept.cursors.is_empty());
    assert_eq!(server.app().expire_now().await.unwrap().total(), 0, "the language choice is not expired again");

    let menu = phone.dial().await;
    assert!(menu.starts_with("CON ") && menu.contains("1. Activate account"), "{menu}");
    assert!(!fold(&menu).contains("Continue"), "{menu}");
    server.stop().await;
}

/// A registry of `n` approved citizens, each with their own phone (one OTP counter each).
fn registry(dir: &Path, n: usize) -> Vec<(String, String)> {
    let people: Vec<(String, String)> =
        (0..n).map(|i| (format!("001099{:06}", 100_000 + i), format!("0916{i:06}"))).collect();
    let mut csv = String::from("national_id,phone,full_name,status\n");
    for (id, phone) in &people {
        csv.push_str(&format!("{id},{phone},Nguyen Van Thu,approved\n"));
    }
    std::fs::write(dir.join("registry.csv"), csv).unwrap();
    people
}

/// Counts the records in sled trees, reading the data dir itself.
async fn records_on_disk(db: &Path, trees: &[&'static str]) -> Vec<(&'static str, usize)> {
    for _ in 0..100 {
        // The stopped server's flusher thread lets go of the database a moment after shutdown.
        if let Ok(db) = sled::open(db) {
            return trees.iter().map(|t| (*t, db.open_tree(t).unwrap().len())).collect();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("could not reopen {}", db.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_that_request_a_code_and_go_idle_leave_nothing_on_disk_after_expiry() {
    const N: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let people = registry(dir.path(), N);
    let common = Common {
        flows: Some(repo().join("flows")),
        registry: Some(dir.path().join("registry.csv")),
        key_file: None,
        ussd_charset: Charset::Gsm7,
        ussd_code: kichhoat::engine::DEFAULT_USSD_CODE.into(),
        help_phone: None,
        sms_charset: Charset::Gsm7,
        audit_log: None,
        audit_log_max_mb: kichhoat::audit::DEFAULT_MAX_MB,
        limits: Default::default(),
    };
    let settings = Settings::new(dir.path().join("data"), None, StoreKind::Sled, &common);
    let db_dir = settings.db_dir();
    let server = TestServer::start_with(dir, settings).await;
    let t0 = server.clock.now();

    let mut calls = Vec::new();
    for (id, phone) in people.clone() {
        let url = server.url.clone();
        calls.push(tokio::spawn(async move {
            let mut at = AtPhone::new(&url, &Msisdn::parse(&phone).unwrap().e164());
            at.request_code(&id, "1").await
        }));
    }
    for call in calls {
        let reply = fold(&call.await.unwrap());
        assert!(reply.starts_with("CON ") && reply.contains("3 phut"), "{reply}");
    }
    assert_eq!(server.outbox().await.len(), N, "every code sent");
    for (_, phone) in &people {
        assert!(stored(&server, phone).await.is_some());
        assert!(otp_counted(&server, phone).await);
    }

    // A day and an hour later even the daily counters are past their window.
    server.clock.advance(25 * 60 * MINUTE);
    assert_eq!(server.clock.now().since(t0), 25 * 60 * MINUTE);
    let expired = server.app().expire_now().await.unwrap();
    // Per citizen: the lookups of the hour and of the day, the ID's codes in 15 minutes and in a day, the
    // codes to the phone in an hour.
    assert_eq!((expired.swept, expired.conversations, expired.counters), (N, N, 5 * N), "{expired:?}");
    for (_, phone) in &people {
        assert_eq!(stored(&server, phone).await, None);
        assert!(!otp_counted(&server, phone).await);
    }
    assert_eq!(server.app().store.outbox_len().await.unwrap(), 0);
    assert!(server.app().store.failed_sms(10).await.unwrap().is_empty());

    let dir = server.stop().await;
    assert_eq!(records_on_disk(&db_dir, &["citizens"]).await, [("citizens", N)], "the server's database");
    // The records expiry must reclaim, and the time indexes it walks.
    let trees = ["conversations", "conv_fresh", "conv_idle", "counters", "counter_due", "outbox", "outbox_due"];
    let left: Vec<_> = records_on_disk(&db_dir, &trees).await.into_iter().filter(|(_, n)| *n > 0).collect();
    assert!(left.is_empty(), "records left behind by {N} idle conversations: {left:?}");
    drop(dir);
}
