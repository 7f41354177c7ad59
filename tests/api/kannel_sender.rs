//! Outgoing SMS through Kannel, against an in-process fake smsbox (axum on a random port, answering each
//! sendsms from a script: 202 accepted, 202 queued, 403, 503, or never): what a request carries, what
//! the delivery worker makes of each answer (sent once; failed for good; retried; in doubt and never sent
//! again, also across a crash), delivery reports through the HTTP route, the binary sending an OTP
//! through Kannel, and no password or OTP in the logs.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;

use kichhoat::clock::{Clock, ManualClock, Millis};
use kichhoat::crypto::{stored_mac_eq, Crypto, HashCost};
use kichhoat::domain::{Msisdn, Secret};
use kichhoat::engine::{Session, Slots, SmsPurpose};
use kichhoat::flow::{Charset, Lang};
use kichhoat::sms::dlr::DeliveryReports;
use kichhoat::sms::kannel::{KannelConfig, KannelSender};
use kichhoat::sms::worker::{backoff, Worker, LEASE};
use kichhoat::store::memory::MemoryStore;
use kichhoat::store::sled_store::SledStore;
use kichhoat::store::{audit_all, Commit, CommitOutcome, Conversation, FailedSms, NewSms, Store};

use crate::helpers::{fold, otp_in, read_outbox, scratch, settings, AtPhone, Proc, TestServer, T0, WORKER_ROUND};
use crate::secrets::leaks;

const PASSWORD: &str = "kannel-Pw-7731";
/// The `--kannel-dlr-url` of the in-process tests; the test calls the reports on the real server.
const DLR_BASE: &str = "http://kichhoat.test:8080/sms/kannel/dlr";

// ---------------------------------------------------------------------------------------------------------
// A fake smsbox

/// What the fake answers to one sendsms.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// 202 `0: Accepted for delivery`
    Accepted,
    /// 202 `3: Queued for later delivery`
    Queued,
    /// 403 `Authorization failed for sendsms`
    Refused,
    /// 503 `Temporal failure, try again later.`
    Busy,
    /// Never answers.
    Hang,
}

/// One sendsms as the fake received it.
#[derive(Debug, Clone)]
struct Sendsms {
    params: Vec<(String, String)>,
    at: Instant,
}

impl Sendsms {
    fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// A field of the `dlr-url` (as Kannel would call it, before it fills in `%d`).
    fn dlr_field(&self, name: &str) -> String {
        let dlr = self.param("dlr-url").unwrap();
        let query = dlr.split_once('?').unwrap().1;
        query.split('&').find_map(|kv| kv.strip_prefix(&format!("{name}="))).unwrap().to_string()
    }

    /// The outbox sequence of the message (its id is `<instance>-<seq>`).
    fn seq(&self) -> u64 {
        self.dlr_field("id").rsplit_once('-').unwrap().1.parse().unwrap()
    }

    /// The delivery report Kannel would send for report type `status`, to the server at `base`.
    fn dlr(&self, status: u32, base: &str) -> String {
        let dlr = self.param("dlr-url").unwrap();
        dlr.replace(DLR_BASE, &format!("{base}/sms/kannel/dlr")).replace("%d", &status.to_string())
    }
}

#[derive(Default)]
struct Fake {
    got: Mutex<Vec<Sendsms>>,
    /// Answers to the next requests, in order; then `Accepted`.
    script: Mutex<VecDeque<Answer>>,
}

struct FakeKannel {
    url: String,
    fake: Arc<Fake>,
    server: tokio::task::JoinHandle<()>,
}

impl FakeKannel {
    async fn start() -> FakeKannel {
        Self::on(0).await
    }

    async fn on(port: u16) -> FakeKannel {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let url = format!("http://{}/cgi-bin/sendsms", listener.local_addr().unwrap());
        let fake = Arc::new(Fake::default());
        let router = Router::new().route("/cgi-bin/sendsms", get(sendsms)).with_state(fake.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        FakeKannel { url, fake, server }
    }

    fn script(&self, answers: &[Answer]) {
        self.fake.script.lock().unwrap().extend(answers.iter().copied());
    }

    fn got(&self) -> Vec<Sendsms> {
        self.fake.got.lock().unwrap().clone()
    }

    fn got_for(&self, to: &Msisdn) -> Vec<Sendsms> {
        self.got().into_iter().filter(|s| s.param("to") == Some(&to.e164())).collect()
    }

    /// The requests once there are `n` (or after 10 s).
    async fn wait_for(&self, n: usize) -> Vec<Sendsms> {
        for _ in 0..400 {
            if self.got().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        self.got()
    }
}

impl Drop for FakeKannel {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn sendsms(State(fake): State<Arc<Fake>>, RawQuery(query): RawQuery) -> (StatusCode, &'static str) {
    let query = query.unwrap_or_default();
    let url = reqwest::Url::parse(&format!("http://kannel/?{query}")).unwrap();
    let params = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    fake.got.lock().unwrap().push(Sendsms { params, at: Instant::now() });
    let answer = fake.script.lock().unwrap().pop_front().unwrap_or(Answer::Accepted);
    match answer {
        Answer::Accepted => (StatusCode::ACCEPTED, "0: Accepted for delivery"),
        Answer::Queued => (StatusCode::ACCEPTED, "3: Queued for later delivery"),
        Answer::Refused => (StatusCode::FORBIDDEN, "Authorization failed for sendsms"),
        Answer::Busy => (StatusCode::SERVICE_UNAVAILABLE, "Temporal failure, try again later."),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            (StatusCode::ACCEPTED, "0: Accepted for delivery")
        }
    }
}

/// A URL where nothing listens: connections are refused.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------------------------
// The worker with a Kannel sender, on the injected clock

/// A Kannel sender with short timeouts (a hang is noticed in half a second).
fn kannel(url: &str, crypto: &Arc<Crypto>, charset: Charset) -> Arc<KannelSender> {
    let config = KannelConfig {
        url: url.into(),
        user: "kichhoat".into(),
        password: Secret::new(PASSWORD),
        from: Some("VNeID".into()),
        dlr_url: DLR_BASE.into(),
        charset,
        connect_timeout: Duration::from_millis(500),
        request_timeout: Duration::from_millis(500),
    };
    Arc::new(KannelSender::new(config, crypto.clone()).unwrap())
}

struct Rig {
    store: Arc<dyn Store>,
    crypto: Arc<Crypto>,
    clock: Arc<ManualClock>,
    sender: Arc<KannelSender>,
}

impl Rig {
    fn new(kannel_url: &str) -> Rig {
        Rig::with(Arc::new(MemoryStore::new()), kannel_url, Charset::Gsm7)
    }

    fn with(store: Arc<dyn Store>, kannel_url: &str, charset: Charset) -> Rig {
        let crypto = Arc::new(Crypto::from_master(&[3; 32], HashCost::DANGER_TEST_ONLY).unwrap());
        let sender = kannel(kannel_url, &crypto, charset);
        Rig { store, crypto, clock: Arc::new(ManualClock::new(T0)), sender }
    }

    fn worker(&self) -> Worker {
        Worker::new(self.store.clone(), self.crypto.clone(), self.sender.clone(), self.clock.clone())
    }

    fn now(&self) -> Millis {
        self.clock.now()
    }

    fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }

    /// Queues `text` for `to` as the service does: committed with a conversation, sealed for `to`.
    async fn queue(&self, to: &str, text: &str, purpose: SmsPurpose) -> Msisdn {
        let to = Msisdn::parse(to).unwrap();
        let now = self.now();
        let sealed = self.crypto.seal(&Secret::new(text), to.as_str().as_bytes(), &mut rand::rngs::OsRng).unwrap();
        let version = self.store.load(&to).await.unwrap().map(|(_, v)| v);
        let session = Session {
            lang: Lang::Vi,
            state: "otp".into(),
            tries: 0,
            updated_at: now,
            slots: Slots::default(),
            leaving: false,
            parked: None,
        };
        let commit = Commit {
            at: now,
            phone: to.clone(),
            conversation: Conversation::new(session),
            activate: None,
            sms: vec![NewSms { to: to.clone(), purpose, sealed, give_up_at: now.plus(purpose.useful_for()) }],
            audit: Vec::new(),
            bumps: Vec::new(),
            account_update: None,
        };
        assert!(matches!(self.store.commit(version, commit).await.unwrap(), CommitOutcome::Committed(_)));
        to
    }

    async fn waiting(&self) -> usize {
        self.store.outbox_len().await.unwrap()
    }

    async fn failed(&self) -> Vec<FailedSms> {
        self.store.failed_sms(100).await.unwrap()
    }

    /// The audit trail's SMS events: (event, recipient, message id).
    async fn sms_events(&self) -> Vec<(String, Msisdn, Option<String>)> {
        sms_events(self.store.as_ref()).await
    }

    fn id_of(&self, seq: u64) -> String {
        format!("{}-{seq}", self.store.instance())
    }

    /// A delivery round every second of the injected clock until `until`.
    async fn rounds_until(&self, w: &Worker, until: Millis) {
        while self.now() < until {
            self.advance(Duration::from_secs(1).min(until.since(self.now())));
            w.deliver_due().await.unwrap();
        }
    }
}

/// The SMS events that are not the ordinary `sms_accepted` (failures, doubt, delivery reports).
async fn sms_events(store: &dyn Store) -> Vec<(String, Msisdn, Option<String>)> {
    let all = audit_all(store).await.unwrap();
    all.into_iter()
        .filter(|a| a.event.event.starts_with("sms_") && a.event.event != "sms_accepted")
        .map(|a| {
            assert_eq!(a.event.phone, a.caller, "the recipient is the event's phone");
            (a.event.event, a.caller.expect("an SMS event names its recipient"), a.event.detail)
        })
        .collect()
}

fn minus_1ms(t: Millis) -> Millis {
    Millis(t.0 - 1)
}

#[tokio::test]
async fn kannel_accepting_or_queueing_a_message_sends_it_once_in_gsm7_from_the_sender_with_a_signed_dlr_url() {
    let fake = FakeKannel::start().await;
    fake.script(&[Answer::Accepted, Answer::Queued]);
    let rig = Rig::new(&fake.url);
    let otp = rig.queue("0912345678", "Mã OTP kích hoạt tài khoản VNeID: 123456", SmsPurpose::Otp).await;
    let done = rig.queue("0987654321", "Tài khoản VNeID đã được kích hoạt", SmsPurpose::Activated).await;
    let w = rig.worker();
    assert_eq!(w.deliver_due().await.unwrap(), 2);
    assert_eq!(rig.waiting().await, 0);
    for _ in 0..5 {
        rig.advance(Duration::from_secs(3600));
        w.deliver_due().await.unwrap();
    }
    let got = fake.got();
    assert_eq!(got.len(), 2, "each sent once: {got:?}");
    let want = [(&otp, "Ma OTP kich hoat tai khoan VNeID: 123456"), (&done, "Tai khoan VNeID da duoc kich hoat")];
    for (sent, (to, text)) in got.iter().zip(want) {
        assert_eq!(sent.param("username"), Some("kichhoat"));
        assert_eq!(sent.param("password"), Some(PASSWORD));
        assert_eq!(sent.param("from"), Some("VNeID"));
        assert_eq!(sent.param("to"), Some(to.e164().as_str()));
        assert_eq!(sent.param("text"), Some(text), "GSM-7 without diacritics");
        assert_eq!((sent.param("coding"), sent.param("charset")), (None, None), "no coding parameter");
        assert_eq!(sent.param("dlr-mask"), Some("31"));
        let id = rig.id_of(sent.seq());
        let dlr = sent.param("dlr-url").unwrap();
        let sig = sent.dlr_field("sig");
        assert_eq!(dlr, format!("{DLR_BASE}?id={id}&to={}&status=%d&sig={sig}", to.e164()));
        assert!(stored_mac_eq(&sig, &rig.crypto.dlr_mac(&id, to.as_str())), "signed for this message and recipient");
    }
    assert!(rig.failed().await.is_empty());
    assert!(rig.sms_events().await.is_empty());
    let trail = audit_all(rig.store.as_ref()).await.unwrap();
    assert!(trail.iter().any(|a| a.event.event == "sms_accepted"), "a message Kannel took is audited");
}

#[tokio::test]
async fn with_ucs2_a_text_with_diacritics_goes_as_utf8_with_coding_2_and_a_plain_text_without_a_coding() {
    let fake = FakeKannel::start().await;
    let rig = Rig::with(Arc::new(MemoryStore::new()), &fake.url, Charset::Ucs2);
    rig.queue("0912345678", "Mã OTP kích hoạt: 123456", SmsPurpose::Otp).await;
    rig.queue("0987654321", "Ma OTP kich hoat: 654321", SmsPurpose::Otp).await;
    assert_eq!(rig.worker().deliver_due().await.unwrap(), 2);
    let got = fake.got();
    assert_eq!(got[0].param("text"), Some("Mã OTP kích hoạt: 123456"));
    assert_eq!((got[0].param("coding"), got[0].param("charset")), (Some("2"), Some("UTF-8")));
    assert_eq!(got[1].param("text"), Some("Ma OTP kich hoat: 654321"));
    assert_eq!((got[1].param("coding"), got[1].param("charset")), (None, None));
}

#[tokio::test]
async fn a_message_kannel_refuses_with_403_fails_for_good_audited_and_never_retried_while_the_others_go() {
    let fake = FakeKannel::start().await;
    fake.script(&[Answer::Refused]);
    let rig = Rig::new(&fake.url);
    let refused = rig.queue("0912000001", "Ma OTP: 111111", SmsPurpose::Otp).await;
    let others = [
        rig.queue("0912000002", "Ma OTP: 222222", SmsPurpose::Otp).await,
        rig.queue("0912000003", "Ma OTP: 333333", SmsPurpose::Otp).await,
    ];
    let w = rig.worker();
    assert_eq!(w.deliver_due().await.unwrap(), 2, "the others are sent in the same round");
    for to in &others {
        assert_eq!(fake.got_for(to).len(), 1);
    }
    let failed = rig.failed().await;
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].sms.to, refused);
    assert!(failed[0].why.contains("403") && failed[0].why.contains("Authorization failed"), "{}", failed[0].why);
    let id = rig.id_of(fake.got_for(&refused)[0].seq());
    assert_eq!(rig.sms_events().await, [("sms_failed".to_string(), refused.clone(), Some(id))]);
    for _ in 0..20 {
        rig.advance(Duration::from_secs(30));
        w.deliver_due().await.unwrap();
    }
    assert_eq!(fake.got_for(&refused).len(), 1, "a 403 is never retried");
    assert_eq!(rig.waiting().await, 0);
}

#[tokio::test]
async fn a_503_from_kannel_is_retried_only_after_its_backoff_and_then_sent_once() {
    let fake = FakeKannel::start().await;
    fake.script(&[Answer::Busy]);
    let rig = Rig::new(&fake.url);
    let to = rig.queue("0912000001", "Tai khoan VNeID da kich hoat", SmsPurpose::Activated).await;
    let w = rig.worker();
    assert_eq!(w.deliver_due().await.unwrap(), 0);
    assert_eq!(rig.waiting().await, 1);
    let wait = backoff(1, fake.got()[0].seq());
    rig.advance(wait - Duration::from_millis(1));
    w.deliver_due().await.unwrap();
    assert_eq!(fake.got().len(), 1, "not before its backoff");
    rig.advance(Duration::from_millis(1));
    assert_eq!(w.deliver_due().await.unwrap(), 1);
    for _ in 0..5 {
        rig.advance(Duration::from_secs(600));
        w.deliver_due().await.unwrap();
    }
    assert_eq!(fake.got_for(&to).len(), 2, "tried twice, accepted once");
    assert_eq!(rig.waiting().await, 0);
    assert!(rig.failed().await.is_empty());
    assert!(rig.sms_events().await.is_empty());
}

#[tokio::test]
async fn a_refused_connection_is_retried_after_its_backoff_and_sent_once_when_smsbox_is_back() {
    let port = closed_port();
    let rig = Rig::new(&format!("http://127.0.0.1:{port}/cgi-bin/sendsms"));
    let to = rig.queue("0912000001", "Tai khoan VNeID da kich hoat", SmsPurpose::Activated).await;
    let w = rig.worker();
    assert_eq!(w.deliver_due().await.unwrap(), 0);
    assert_eq!(rig.waiting().await, 1, "kept for a retry, not failed");
    assert!(rig.failed().await.is_empty());
    let fake = FakeKannel::on(port).await; // smsbox is back
    rig.advance(Duration::from_secs(1));
    w.deliver_due().await.unwrap();
    assert!(fake.got().is_empty(), "the first retry waits at least 2 s");
    rig.advance(Duration::from_secs(2)); // the first backoff is 2 s spread by up to a quarter
    assert_eq!(w.deliver_due().await.unwrap(), 1);
    rig.advance(Duration::from_secs(3600));
    w.deliver_due().await.unwrap();
    assert_eq!(fake.got_for(&to).len(), 1);
    assert_eq!(rig.waiting().await, 0);
}

#[tokio::test]
async fn a_kannel_that_hangs_leaves_the_message_in_doubt_never_sent_again_and_failed_as_outcome_unknown_at_its_deadline(
) {
    let fake = FakeKannel::start().await;
    fake.script(&[Answer::Hang]);
    let rig = Rig::new(&fake.url);
    let stuck = rig.queue("0912000001", "Ma OTP: 111111", SmsPurpose::Otp).await;
    let give_up_at = rig.now().plus(SmsPurpose::Otp.useful_for());
    let good = rig.queue("0912000002", "Ma OTP: 222222", SmsPurpose::Otp).await;
    let w = rig.worker();
    let round = tokio::time::timeout(Duration::from_secs(10), w.deliver_due()).await;
    assert_eq!(round.expect("the round ends though Kannel hangs").unwrap(), 1);
    assert_eq!(fake.got_for(&good).len(), 1, "the other message is not held up");
    assert_eq!(rig.waiting().await, 1);
    rig.rounds_until(&w, minus_1ms(give_up_at)).await;
    assert_eq!(fake.got_for(&stuck).len(), 1, "in doubt: never handed to Kannel again");
    assert!(rig.failed().await.is_empty());
    rig.rounds_until(&w, give_up_at).await;
    assert_eq!(fake.got_for(&stuck).len(), 1);
    let failed = rig.failed().await;
    assert_eq!(failed.len(), 1);
    assert!(failed[0].why.contains("may have taken it"), "{}", failed[0].why);
    let id = rig.id_of(fake.got_for(&stuck)[0].seq());
    assert_eq!(rig.sms_events().await, [("sms_outcome_unknown".to_string(), stuck, Some(id))]);
}

type Reopen = Box<dyn FnOnce(Rig) -> Pin<Box<dyn Future<Output = Rig>>>>;

/// A worker claims a message and marks it in flight, then dies before (or while) handing it to Kannel;
/// the next worker (after `reopen`, the store as a restarted process finds it) must never send it.
async fn a_message_in_flight_when_its_worker_died_is_never_sent_to_kannel(rig: Rig, reopen: Reopen) {
    let to = rig.queue("0912000001", "Ma OTP: 123456", SmsPurpose::Otp).await;
    let give_up_at = rig.now().plus(SmsPurpose::Otp.useful_for());
    let dead = rig.worker();
    let claimed = rig.store.claim_outbox(&dead.owner, 10, LEASE, rig.now()).await.unwrap();
    assert!(rig.store.outbox_sending(&dead.owner, claimed[0].id).await.unwrap());
    drop(dead);
    let rig = reopen(rig).await;
    rig.advance(LEASE);
    let after = rig.queue("0912000002", "Ma OTP: 654321", SmsPurpose::Otp).await;
    let survivor = rig.worker();
    assert_eq!(survivor.deliver_due().await.unwrap(), 1, "the next message goes");
    rig.rounds_until(&survivor, give_up_at).await;
    assert_eq!(rig.waiting().await, 0);
    let events = rig.sms_events().await;
    assert_eq!(events, [("sms_outcome_unknown".to_string(), to, Some(rig.id_of(claimed[0].id)))]);
    assert!(!events.iter().any(|e| e.1 == after));
}

#[tokio::test]
async fn a_message_in_flight_when_its_worker_died_is_never_sent_to_kannel_by_the_worker_after_the_lease() {
    let fake = FakeKannel::start().await;
    let rig = Rig::new(&fake.url);
    a_message_in_flight_when_its_worker_died_is_never_sent_to_kannel(rig, Box::new(|rig| Box::pin(async { rig })))
        .await;
    let got = fake.got();
    assert_eq!(got.len(), 1, "only the message queued after the crash: {got:?}");
    assert_eq!(got[0].param("to"), Some("+84912000002"));
}

#[tokio::test]
async fn a_message_in_flight_when_the_process_died_is_never_sent_to_kannel_from_the_reopened_sled_store() {
    let fake = FakeKannel::start().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("db");
    let rig = Rig::with(Arc::new(SledStore::open(&db).unwrap()), &fake.url, Charset::Gsm7);
    let reopen: Reopen = Box::new(move |rig| {
        Box::pin(async move {
            let Rig { store, crypto, clock, sender } = rig;
            drop(store); // the database closes, as the dead process left it
            Rig { store: Arc::new(SledStore::open(&db).unwrap()), crypto, clock, sender }
        })
    });
    a_message_in_flight_when_its_worker_died_is_never_sent_to_kannel(rig, reopen).await;
    let got = fake.got();
    assert_eq!(got.len(), 1, "only the message queued after the crash: {got:?}");
    assert_eq!(got[0].param("to"), Some("+84912000002"));
}

// ---------------------------------------------------------------------------------------------------------
// Delivery reports through the server

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_delivery_reports_resolve_a_message_in_doubt_and_forged_ones_get_403_and_change_nothing() {
    let fake = FakeKannel::start().await;
    fake.script(&[Answer::Hang]);
    let dir = tempfile::tempdir().unwrap();
    let settings = settings(dir.path());
    let crypto = Arc::new(Crypto::load_or_create(&settings.key_file, HashCost::DANGER_TEST_ONLY).unwrap());
    let server = TestServer::start_with_sender(dir, settings, kannel(&fake.url, &crypto, Charset::Gsm7)).await;
    let app = server.app();
    let mut p = AtPhone::new(&server.url, "+84912345678");
    assert!(fold(&p.request_code("001099012345", "1").await).contains("3 phut"));
    let sent = fake.wait_for(1).await;
    assert_eq!(sent.len(), 1);
    // Kannel took the request and never answered: the message is in doubt, and stays unsent.
    tokio::time::sleep(WORKER_ROUND).await;
    server.clock.advance(Duration::from_secs(60));
    app.worker.deliver_due().await.unwrap();
    tokio::time::sleep(WORKER_ROUND).await;
    assert_eq!(fake.got().len(), 1, "not sent again");
    assert_eq!(app.store.outbox_len().await.unwrap(), 1);

    let status = |url: String| async move { reqwest::get(url).await.unwrap().status().as_u16() };
    let genuine = sent[0].dlr(8, &server.url);
    let sig = sent[0].dlr_field("sig");
    let id = sent[0].dlr_field("id");
    let other_id = format!("{}-{}", app.store.instance(), sent[0].seq() + 1);
    let flipped = format!("{}{}", &sig[..63], if sig.ends_with('0') { '1' } else { '0' });
    let forged = [
        genuine.replace(&sig, &flipped),
        genuine.replace(&format!("id={id}"), &format!("id={other_id}")),
        genuine.replace("to=+84912345678", "to=+84912345679"),
        genuine.replace(&format!("&sig={sig}"), ""),
        format!("{}/sms/kannel/dlr", server.url),
    ];
    for url in forged {
        assert_eq!(status(url.clone()).await, 403, "{url}");
    }
    assert_eq!(app.store.outbox_len().await.unwrap(), 1, "a forged report resolves nothing");
    assert!(sms_events(app.store.as_ref()).await.is_empty(), "and records nothing");

    assert_eq!(status(genuine).await, 200);
    assert_eq!(app.store.outbox_len().await.unwrap(), 0, "Kannel took it: no longer in doubt");
    assert_eq!(status(sent[0].dlr(1, &server.url)).await, 200);
    let to = Msisdn::parse("0912345678").unwrap();
    let want = |e: &str| (e.to_string(), to.clone(), Some(id.clone()));
    assert_eq!(sms_events(app.store.as_ref()).await, [want("sms_submitted"), want("sms_delivered")]);

    // Past the code's lifetime nothing is failed or sent: the report settled it.
    server.clock.advance(SmsPurpose::Otp.useful_for());
    app.worker.deliver_due().await.unwrap();
    tokio::time::sleep(WORKER_ROUND).await;
    assert_eq!(fake.got().len(), 1);
    assert_eq!(sms_events(app.store.as_ref()).await, [want("sms_submitted"), want("sms_delivered")]);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------------------
// Logs

/// Collects formatted log lines.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Runs on one thread (the default test runtime), so the scoped subscriber sees every task's events.
#[tokio::test]
async fn neither_the_kannel_password_nor_an_otp_nor_a_full_phone_is_logged_whatever_kannel_answers() {
    // tracing caches each callsite's interest for the whole process, and while a single dispatcher is
    // registered it asks only the default of the thread that first hits the callsite: one first hit by
    // another test's thread would stay disabled here. With a second one registered it asks every one.
    let _second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _scope = tracing::subscriber::set_default(subscriber);

    let fake = FakeKannel::start().await;
    fake.script(&[Answer::Accepted, Answer::Refused, Answer::Busy, Answer::Hang, Answer::Queued]);
    let rig = Rig::new(&fake.url);
    let codes = ["418257", "530964", "672813", "794102", "815639"];
    let mut phones = Vec::new();
    for (i, code) in codes.iter().enumerate() {
        phones.push(rig.queue(&format!("091200000{i}"), &format!("Ma OTP: {code}"), SmsPurpose::Otp).await);
    }
    let w = rig.worker();
    w.deliver_due().await.unwrap();
    rig.advance(Duration::from_secs(3));
    w.deliver_due().await.unwrap(); // the 503 again, accepted this time
                                    // smsbox down.
    let down =
        Rig::with(rig.store.clone(), &format!("http://127.0.0.1:{}/cgi-bin/sendsms", closed_port()), Charset::Gsm7);
    let refused_code = "903318";
    phones.push(down.queue("0912000009", &format!("Ma OTP: {refused_code}"), SmsPurpose::Otp).await);
    down.worker().deliver_due().await.unwrap();
    // A delivery report for the one Kannel never answered.
    let hung = fake.got().into_iter().find(|s| s.param("text") == Some("Ma OTP: 794102")).unwrap();
    let query = hung.dlr(1, "http://x").split_once('?').unwrap().1.to_string();
    let fields = reqwest::Url::parse(&format!("http://x/?{query}")).unwrap();
    let fields = fields.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let reports = DeliveryReports {
        store: rig.store.clone(),
        crypto: rig.crypto.clone(),
        clock: rig.clock.clone(),
        audit_log: None,
    };
    reports.report(&fields).await.unwrap();
    assert_eq!(fake.got().len(), 6, "every answer was exercised");

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    for real in [
        "kannel: sendsms accepted",
        "403 Authorization failed",
        "503 Temporal failure",
        "may have taken it",
        "kannel unreachable",
        "kannel dlr recorded",
        "091****000",
    ] {
        assert!(text.contains(real), "the log is real: no {real:?} in\n{text}");
    }
    let mut needles: Vec<String> = vec![PASSWORD.into(), "password=".into(), "text=".into(), "sendsms?".into()];
    needles.extend(codes.iter().map(|c| c.to_string()));
    needles.push(refused_code.into());
    for p in &phones {
        needles.extend([p.as_str().to_string(), p.national(), p.e164()]);
    }
    for n in &needles {
        assert!(!leaks(text.as_bytes(), n.as_bytes()), "{n:?} logged:\n{text}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// The binary

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_with_the_kannel_sender_sends_the_otp_once_to_the_registered_phone_from_the_sms_from_flag() {
    let fake = FakeKannel::start().await;
    let (_dir, data, outbox, log) = scratch();
    let flags =
        ["--sms-sender", "kannel", "--kannel-url", &fake.url, "--kannel-user", "kichhoat", "--sms-from", "VNeID"];
    let server =
        Proc::spawn_with(&data, &outbox, &log, "trace", &flags, &[("KICHHOAT_KANNEL_PASSWORD", PASSWORD)]).await;
    let mut p = AtPhone::new(&server.url, "+84912345678");
    let reply = p.request_code("001099012345", "1").await;
    let answered = Instant::now();
    assert!(fold(&reply).contains("3 phut"), "{reply}");
    let first = fake.wait_for(1).await;
    assert!(!first.is_empty(), "Kannel got the code");
    let after = first[0].at.saturating_duration_since(answered);
    assert!(after < Duration::from_secs(1), "the code left {after:?} after the reply announcing it");
    tokio::time::sleep(WORKER_ROUND).await;
    let got = fake.got();
    assert_eq!(got.len(), 1, "exactly one sendsms: {got:?}");
    let sms = &got[0];
    assert_eq!(sms.param("to"), Some("+84912345678"), "the registered phone");
    assert_eq!(sms.param("from"), Some("VNeID"));
    assert_eq!((sms.param("username"), sms.param("password")), (Some("kichhoat"), Some(PASSWORD)));
    let otp = otp_in(sms.param("text").unwrap()).unwrap();
    assert!(fold(&p.send(&otp).await).contains("Dat mat khau"), "the code Kannel got is the one the server expects");
    server.terminate();

    assert!(read_outbox(&outbox).is_empty(), "--sms-outbox is unused with kannel");
    let logs = std::fs::read(&log).unwrap();
    let text = String::from_utf8_lossy(&logs);
    assert!(text.contains("outgoing SMS go through Kannel"), "the sender is named at start");
    assert!(text.contains("kannel: sendsms accepted"), "the log is real");
    for n in [PASSWORD, otp.as_str(), "password=", "sendsms?"] {
        assert!(!leaks(&logs, n.as_bytes()), "{n:?} in the log");
    }
}

#[test]
fn the_binary_refuses_to_start_with_the_kannel_sender_and_no_kannel_url_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kichhoat"))
        .args(["serve", "--listen", "127.0.0.1:0", "--sms-sender", "kannel", "--kannel-user", "kichhoat", "--data-dir"])
        .arg(dir.path().join("data"))
        .env("KICHHOAT_KANNEL_PASSWORD", PASSWORD)
        .env_remove("KICHHOAT_KANNEL_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--kannel-url") && stderr.contains("needs"), "{stderr}");
    assert!(!stderr.contains("--kannel-user (") && !stderr.contains(PASSWORD), "{stderr}");
    assert!(!dir.path().join("data").exists(), "nothing was opened");
}
