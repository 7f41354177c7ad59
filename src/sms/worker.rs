//! The delivery worker: claims due messages from the store's outbox (with a lease, so two workers never
//! hold the same message), opens each, hands it to the sender, and records what happened:
//!
//! - sent (or the sender already had it): marked sent, forgotten;
//! - a temporary failure: tried again after an exponential backoff (2 s doubling to 5 min, spread a little
//!   per message), up to [`MAX_ATTEMPTS`];
//! - a permanent failure, too many attempts, a body that cannot be opened, or a message past its use (an
//!   OTP older than its lifetime): failed for good, kept for operators and audited (`sms_failed`);
//! - in doubt (the sender may have taken it: a timeout after the request left, or a crash during the
//!   send): for a sender that is not idempotent, never handed over again. Before such a sender gets a
//!   message, the message is marked in flight, durably ([`Store::outbox_sending`]); a claimed message
//!   found in flight is parked until its `give_up_at`, and then failed for good with the audit event
//!   `sms_outcome_unknown` (the citizen can ask for a new code), unless a delivery report removed it
//!   first ([`super::dlr`]). An idempotent sender simply gets it again.
//!
//! What a round failed for good is written to the audit trail file at the end of the round (a failure
//! there is logged; the sweeper writes it later).
//!
//! Each message is handled on its own, so one that cannot be sent never delays the others. Time comes from
//! the injected clock. Woken by the service after a commit that queued an SMS, and every second for
//! retries that fall due.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

use super::{Delivery, OutgoingSms, SendError, SmsSender};
use crate::audit::AuditLog;
use crate::clock::{Clock, Millis};
use crate::crypto::Crypto;
use crate::engine::AuditEvent;
use crate::store::{AuditRecord, QueuedSms, Store, StoreError};

/// Attempts before a message that keeps failing temporarily is failed for good.
pub const MAX_ATTEMPTS: u32 = 10;
/// How long a claim lasts: a worker that dies holding it leaves the message to another after this.
pub const LEASE: Duration = Duration::from_secs(30);
const FIRST_RETRY: Duration = Duration::from_secs(2);
const LAST_RETRY: Duration = Duration::from_secs(5 * 60);
/// Messages claimed at once.
const BATCH: usize = 32;
/// How long the worker waits for a gateway to take one message before giving up on the attempt: a
/// gateway that hangs on one message must not hold up the rest (well under [`LEASE`]). The attempt then
/// counts as a temporary failure for an idempotent sender, and as in doubt for one that is not.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Audit event of a message failed for good.
pub const EVENT_FAILED: &str = "sms_failed";
/// Audited when the sender took a message (written to the outbox file, accepted by the gateway).
pub const EVENT_ACCEPTED: &str = "sms_accepted";
/// Audit event of a message failed for good while in doubt: the gateway may have taken it.
pub const EVENT_OUTCOME_UNKNOWN: &str = "sms_outcome_unknown";

/// When to try a message again after its `attempts`-th attempt failed: exponential, capped, and spread by
/// up to a quarter (derived from the id, so it is the same on every run) so retries do not arrive in step.
pub fn backoff(attempts: u32, id: u64) -> Duration {
    let exp = FIRST_RETRY.saturating_mul(1u32.checked_shl(attempts.saturating_sub(1).min(20)).unwrap_or(u32::MAX));
    let base = exp.min(LAST_RETRY);
    let spread = base.as_millis() as u64 / 4;
    let jitter = if spread == 0 { 0 } else { id.wrapping_mul(0x9E37_79B9_7F4A_7C15) % spread };
    base + Duration::from_millis(jitter)
}

pub struct Worker {
    pub store: Arc<dyn Store>,
    pub crypto: Arc<Crypto>,
    pub sender: Arc<dyn SmsSender>,
    pub clock: Arc<dyn Clock>,
    /// Names this worker's claims (host, process and a random part).
    pub owner: String,
    /// See [`SEND_TIMEOUT`]; real time, not the injected clock: it guards against a gateway that hangs.
    pub send_timeout: Duration,
    /// Drained after a round that audited a failure; `None` (tests): left to the next drain elsewhere.
    pub audit_log: Option<Arc<AuditLog>>,
}

/// What happened to one claimed message.
#[derive(Debug)]
enum Fate {
    Sent(Delivery),
    Retry(Millis, String),
    /// The outcome is unknown: due again at this time (its `give_up_at`), never sent again.
    Park(Millis, String),
    Failed(String),
    /// Failed for good while in doubt.
    FailedInDoubt(String),
    /// Another worker holds the claim now: nothing to record.
    Lost,
}

impl Worker {
    pub fn new(
        store: Arc<dyn Store>,
        crypto: Arc<Crypto>,
        sender: Arc<dyn SmsSender>,
        clock: Arc<dyn Clock>,
    ) -> Worker {
        let mut bytes = [0u8; 4];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        let owner = format!("{}-{}", std::process::id(), hex::encode(bytes));
        Worker { store, crypto, sender, clock, owner, send_timeout: SEND_TIMEOUT, audit_log: None }
    }

    /// The id senders and delivery reports know a message by: `<store instance>-<seq>`.
    fn message_id(&self, seq: u64) -> String {
        format!("{}-{}", self.store.instance(), seq)
    }

    /// Delivers every message due now; returns how many were handed to the sender and taken.
    pub async fn deliver_due(&self) -> Result<usize, StoreError> {
        let mut audited = false;
        let delivered = self.deliver_batches(&mut audited).await;
        if audited {
            if let Some(log) = &self.audit_log {
                if let Err(e) = log.drain().await {
                    error!(error = %e, "audit trail not written after sms deliveries; the next drain writes it");
                }
            }
        }
        delivered
    }

    /// The rounds of [`Worker::deliver_due`]; `audited` is set once a failure was audited.
    async fn deliver_batches(&self, audited: &mut bool) -> Result<usize, StoreError> {
        let mut sent = 0;
        loop {
            let now = self.clock.now();
            let batch = self.store.claim_outbox(&self.owner, BATCH, LEASE, now).await?;
            if batch.is_empty() {
                break;
            }
            // What we claimed is committed but maybe not yet on disk: never send an SMS whose record (and
            // the OTP state it goes with) a crash could still undo.
            self.store.durable().await?;
            for sms in batch {
                let fate = self.attempt(&sms, now).await?;
                if matches!(fate, Fate::Sent(_)) {
                    sent += 1;
                }
                *audited |= matches!(fate, Fate::Sent(Delivery::Sent) | Fate::Failed(_) | Fate::FailedInDoubt(_));
                self.record(&sms, fate, now).await?;
            }
        }
        Ok(sent)
    }

    async fn attempt(&self, q: &QueuedSms, now: Millis) -> Result<Fate, StoreError> {
        let once_only = !self.sender.idempotent();
        if now >= q.give_up_at {
            return Ok(if q.in_flight {
                Fate::FailedInDoubt(format!(
                    "the gateway may have taken it, and no delivery report came by its deadline{}",
                    q.last_error.as_deref().map(|e| format!(" (last: {e})")).unwrap_or_default()
                ))
            } else {
                Fate::Failed("no longer of use when it could be sent".into())
            });
        }
        if q.in_flight && once_only {
            // An earlier attempt's outcome is unknown (a crash during the send, or no answer): sending it
            // again could deliver it twice. Wait for a delivery report until the message is of no use.
            return Ok(Fate::Park(q.give_up_at, "outcome of an earlier attempt unknown; not sent again".into()));
        }
        let Ok(text) = self.crypto.open(&q.sealed, q.to.as_str().as_bytes()) else {
            // Sealed under another key (the key file was replaced): it can never be sent.
            return Ok(Fate::Failed("sealed under another key".into()));
        };
        let sms =
            OutgoingSms { id: self.message_id(q.id), to: q.to.clone(), text, purpose: q.purpose, at: q.queued_at };
        if once_only && !self.store.outbox_sending(&self.owner, q.id).await? {
            return Ok(Fate::Lost);
        }
        let sent = tokio::time::timeout(self.send_timeout, self.sender.send(&sms)).await.unwrap_or_else(|_| {
            let why = format!("the gateway did not answer within {:?}", self.send_timeout);
            Err(if once_only { SendError::Unknown(why) } else { SendError::Temporary(why) })
        });
        Ok(match sent {
            Ok(delivery) => Fate::Sent(delivery),
            Err(SendError::Permanent(why)) => Fate::Failed(why),
            Err(SendError::Unknown(why)) if once_only => Fate::Park(q.give_up_at, why),
            Err(SendError::Temporary(why) | SendError::Unknown(why)) if q.attempts >= MAX_ATTEMPTS => {
                Fate::Failed(format!("{MAX_ATTEMPTS} attempts failed; last: {why}"))
            }
            Err(SendError::Temporary(why) | SendError::Unknown(why)) => {
                Fate::Retry(now.plus(backoff(q.attempts, q.id)), why)
            }
        })
    }

    async fn record(&self, q: &QueuedSms, fate: Fate, now: Millis) -> Result<(), StoreError> {
        let to = q.to.masked();
        let sms_id = self.message_id(q.id);
        match fate {
            Fate::Sent(Delivery::Sent) => {
                self.store.outbox_sent(q.id).await?;
                info!(sms_id = %sms_id, to = %to, purpose = ?q.purpose, "sms sent");
                // The gateway took it (the outbox file wrote it; Kannel answered 202). Not in the same
                // transaction as `outbox_sent`: a crash between the two loses this line, never an SMS.
                self.store.append_audit(&[self.audit(q, EVENT_ACCEPTED, now)]).await?;
            }
            Fate::Sent(Delivery::AlreadySent) => {
                self.store.outbox_sent(q.id).await?;
                info!(sms_id = %sms_id, "sms was already sent (before a restart); not again");
            }
            Fate::Retry(at, why) => {
                warn!(sms_id = %sms_id, to = %to, attempt = q.attempts, error = %why, retry_in_s = at.since(now).as_secs(), "sms not sent; will retry");
                self.store.outbox_retry(&self.owner, q.id, at, &why).await?;
            }
            Fate::Park(until, why) => {
                warn!(
                    sms_id = %sms_id,
                    to = %to,
                    attempt = q.attempts,
                    why = %why,
                    wait_s = until.since(now).as_secs(),
                    "sms outcome unknown: not sent again; waiting for a delivery report until it is of no use"
                );
                self.store.outbox_park(&self.owner, q.id, until, &why).await?;
            }
            Fate::Failed(why) => {
                error!(sms_id = %sms_id, to = %to, purpose = ?q.purpose, attempts = q.attempts, why = %why, "sms failed for good");
                self.store.outbox_failed(&self.owner, q.id, &why, self.audit(q, EVENT_FAILED, now)).await?;
            }
            Fate::FailedInDoubt(why) => {
                error!(sms_id = %sms_id, to = %to, purpose = ?q.purpose, attempts = q.attempts, why = %why, "sms outcome unknown at its deadline; failed for good");
                self.store.outbox_failed(&self.owner, q.id, &why, self.audit(q, EVENT_OUTCOME_UNKNOWN, now)).await?;
            }
            Fate::Lost => {
                warn!(sms_id = %sms_id, to = %to, "sms claim lost before sending (lease ended); left to its new holder");
            }
        }
        Ok(())
    }

    fn audit(&self, q: &QueuedSms, event: &str, now: Millis) -> AuditRecord {
        let event = AuditEvent {
            event: event.into(),
            national_id: None,
            phone: Some(q.to.clone()),
            detail: Some(self.message_id(q.id)),
        };
        AuditRecord { at: now, caller: Some(q.to.clone()), channel: None, event }
    }

    /// Runs until `stop` changes (or its sender is dropped).
    pub async fn run(self: Arc<Self>, wake: Arc<Notify>, mut stop: watch::Receiver<bool>) {
        loop {
            if let Err(e) = self.deliver_due().await {
                error!(error = %e, "sms delivery round failed");
            }
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};
    use std::sync::Mutex;

    use rand::rngs::OsRng;

    use super::*;
    use crate::clock::ManualClock;
    use crate::crypto::HashCost;
    use crate::domain::{Msisdn, Secret};
    use crate::engine::{Session, Slots, SmsPurpose};
    use crate::flow::Lang;
    use crate::sms::SendFuture;
    use crate::store::memory::MemoryStore;
    use crate::store::sled_store::SledStore;
    use crate::store::{audit_all, Commit, CommitOutcome, Conversation, FailedSms, NewSms};

    const T0: Millis = Millis(1_795_996_800_000);
    const MS: Duration = Duration::from_millis(1);

    fn minus_1ms(t: Millis) -> Millis {
        Millis(t.0 - 1)
    }

    /// What the scripted gateway answers to one call.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Answer {
        Sent,
        Temporary,
        Permanent,
        /// Never answers.
        Hang,
        /// Fails after the request may have reached the gateway.
        Unknown,
    }

    /// A gateway that answers each recipient from a script and records every call.
    #[derive(Default)]
    struct Scripted {
        /// Answers per recipient (canonical `84…`), in order; the last one repeats. Unscripted: `Sent`.
        script: Mutex<HashMap<String, VecDeque<Answer>>>,
        /// Every call, in order: (message id, recipient, text).
        calls: Mutex<Vec<(String, String, String)>>,
        /// Ids the recipient actually received, once per delivery.
        received: Mutex<Vec<String>>,
        /// Recognises an id it delivered before and answers `AlreadySent`, as the file sender does.
        idempotent: bool,
    }

    impl Scripted {
        fn idempotent() -> Scripted {
            Scripted { idempotent: true, ..Scripted::default() }
        }

        fn script(&self, to: &Msisdn, answers: &[Answer]) {
            self.script.lock().unwrap().insert(to.as_str().to_string(), answers.iter().copied().collect());
        }

        fn calls_to(&self, to: &Msisdn) -> usize {
            self.calls.lock().unwrap().iter().filter(|c| c.1 == to.as_str()).count()
        }

        fn calls(&self) -> usize {
            self.calls.lock().unwrap().len()
        }

        fn received_by(&self, to: &Msisdn) -> Vec<String> {
            let calls = self.calls.lock().unwrap();
            let to_ids: Vec<&String> = calls.iter().filter(|c| c.1 == to.as_str()).map(|c| &c.0).collect();
            self.received.lock().unwrap().iter().filter(|id| to_ids.contains(id)).cloned().collect()
        }

        /// The outbox sequence number of the last message handed over (ids are `<instance>-<seq>`).
        fn last_seq(&self) -> u64 {
            let calls = self.calls.lock().unwrap();
            let id = &calls.last().unwrap().0;
            id.rsplit('-').next().unwrap().parse().unwrap()
        }

        fn answer(&self, to: &Msisdn) -> Answer {
            let mut script = self.script.lock().unwrap();
            match script.get_mut(to.as_str()) {
                Some(q) if q.len() > 1 => q.pop_front().unwrap(),
                Some(q) => q.front().copied().unwrap_or(Answer::Sent),
                None => Answer::Sent,
            }
        }
    }

    impl SmsSender for Scripted {
        fn send<'a>(&'a self, sms: &'a OutgoingSms) -> SendFuture<'a> {
            Box::pin(async move {
                // Give a concurrent delivery round the chance to run in between.
                tokio::task::yield_now().await;
                let to = sms.to.as_str().to_string();
                self.calls.lock().unwrap().push((sms.id.clone(), to, sms.text.expose().to_string()));
                if self.idempotent && self.received.lock().unwrap().contains(&sms.id) {
                    return Ok(Delivery::AlreadySent);
                }
                match self.answer(&sms.to) {
                    Answer::Sent => {
                        self.received.lock().unwrap().push(sms.id.clone());
                        Ok(Delivery::Sent)
                    }
                    Answer::Temporary => Err(SendError::Temporary("gateway busy".into())),
                    Answer::Permanent => Err(SendError::Permanent("number refused by the gateway".into())),
                    Answer::Hang => std::future::pending().await,
                    Answer::Unknown => Err(SendError::Unknown("connection reset after the request".into())),
                }
            })
        }

        fn idempotent(&self) -> bool {
            self.idempotent
        }
    }

    /// A store, the test key, a manual clock and a scripted gateway.
    struct Rig {
        store: Arc<dyn Store>,
        crypto: Arc<Crypto>,
        clock: Arc<ManualClock>,
        sender: Arc<Scripted>,
    }

    impl Rig {
        fn new(sender: Scripted) -> Rig {
            Rig::on(Arc::new(MemoryStore::new()), sender)
        }

        fn on(store: Arc<dyn Store>, sender: Scripted) -> Rig {
            Rig {
                store,
                crypto: Arc::new(Crypto::from_master(&[9; 32], HashCost::DANGER_TEST_ONLY).unwrap()),
                clock: Arc::new(ManualClock::new(T0)),
                sender: Arc::new(sender),
            }
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
            let phone = Msisdn::parse(to).unwrap();
            let sealed = self.crypto.seal(&Secret::new(text), phone.as_str().as_bytes(), &mut OsRng).unwrap();
            self.queue_sealed(&phone, sealed, purpose).await;
            phone
        }

        async fn queue_sealed(&self, to: &Msisdn, sealed: Vec<u8>, purpose: SmsPurpose) {
            let now = self.now();
            let version = self.store.load(to).await.unwrap().map(|(_, v)| v);
            let session = Session {
                lang: Lang::Vi,
                state: "otp".into(),
                tries: 0,
                updated_at: now,
                slots: Slots::default(),
                leaving: false,
                parked: None,
            };
            let sms = NewSms { to: to.clone(), purpose, sealed, give_up_at: now.plus(purpose.useful_for()) };
            let commit = Commit {
                at: now,
                phone: to.clone(),
                conversation: Conversation::new(session),
                activate: None,
                sms: vec![sms],
                audit: Vec::new(),
                bumps: Vec::new(),
                account_update: None,
            };
            let outcome = self.store.commit(version, commit).await.unwrap();
            assert!(matches!(outcome, CommitOutcome::Committed(_)), "{outcome:?}");
        }

        async fn waiting(&self) -> usize {
            self.store.outbox_len().await.unwrap()
        }

        async fn failed(&self) -> Vec<FailedSms> {
            self.store.failed_sms(1000).await.unwrap()
        }

        /// The recipients of `sms_failed` audit records.
        async fn failures_audited(&self) -> Vec<Msisdn> {
            let all = audit_all(self.store.as_ref()).await.unwrap();
            all.into_iter().filter(|a| a.event.event == "sms_failed").filter_map(|a| a.caller).collect()
        }
    }

    #[test]
    fn backoff_doubles_from_two_seconds_to_five_minutes_with_a_stable_spread() {
        let secs: Vec<u64> = (1..=10).map(|a| backoff(a, 0).as_secs()).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        for a in 1..=10 {
            let d = backoff(a, 12345);
            let base = backoff(a, 0);
            assert!(d >= base && d <= base + base / 4, "attempt {a}: {d:?}");
            assert_eq!(d, backoff(a, 12345), "the same every time");
        }
    }

    #[tokio::test]
    async fn a_temporary_failure_is_retried_only_after_its_backoff_and_failed_for_good_after_max_attempts() {
        let rig = Rig::new(Scripted::default());
        let to = rig.queue("0912000001", "Tai khoan VNeID da kich hoat", SmsPurpose::Activated).await;
        rig.sender.script(&to, &[Answer::Temporary]);
        let w = rig.worker();
        assert_eq!(w.deliver_due().await.unwrap(), 0);
        assert_eq!(rig.sender.calls_to(&to), 1);
        let seq = rig.sender.last_seq();
        for attempt in 1..MAX_ATTEMPTS {
            let wait = backoff(attempt, seq);
            rig.advance(wait - MS);
            w.deliver_due().await.unwrap();
            assert_eq!(rig.sender.calls_to(&to), attempt as usize, "attempt {attempt}: retried before {wait:?}");
            assert_eq!(rig.waiting().await, 1, "attempt {attempt}: still waiting");
            rig.advance(MS);
            w.deliver_due().await.unwrap();
            assert_eq!(rig.sender.calls_to(&to), attempt as usize + 1, "attempt {attempt}: retried after {wait:?}");
        }
        assert_eq!(rig.waiting().await, 0, "failed for good after {MAX_ATTEMPTS} attempts");
        let failed = rig.failed().await;
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].sms.id, seq);
        assert_eq!(failed[0].sms.attempts, MAX_ATTEMPTS, "each attempt counted");
        assert_eq!(failed[0].sms.last_error.as_deref(), Some("gateway busy"));
        assert!(failed[0].why.contains(&format!("{MAX_ATTEMPTS} attempts failed")), "{}", failed[0].why);
        assert_eq!(failed[0].failed_at, rig.now());
        assert_eq!(rig.failures_audited().await, vec![to.clone()]);
        rig.advance(Duration::from_secs(24 * 60 * 60));
        w.deliver_due().await.unwrap();
        assert_eq!(rig.sender.calls_to(&to), MAX_ATTEMPTS as usize, "never tried again");
    }

    #[tokio::test]
    async fn a_message_that_succeeds_on_a_retry_is_sent_once_and_not_failed() {
        let rig = Rig::new(Scripted::default());
        let to = rig.queue("0912000001", "Tai khoan VNeID da kich hoat", SmsPurpose::Activated).await;
        rig.sender.script(&to, &[Answer::Temporary, Answer::Temporary, Answer::Sent]);
        let w = rig.worker();
        w.deliver_due().await.unwrap();
        let seq = rig.sender.last_seq();
        rig.advance(backoff(1, seq));
        assert_eq!(w.deliver_due().await.unwrap(), 0);
        rig.advance(backoff(2, seq));
        assert_eq!(w.deliver_due().await.unwrap(), 1);
        assert_eq!(rig.sender.calls_to(&to), 3);
        assert_eq!(rig.sender.received_by(&to).len(), 1);
        assert_eq!(rig.waiting().await, 0);
        assert!(rig.failed().await.is_empty());
        assert!(rig.failures_audited().await.is_empty());
    }

    #[tokio::test]
    async fn a_permanent_failure_fails_at_once_without_a_retry_and_is_audited() {
        let rig = Rig::new(Scripted::default());
        let to = rig.queue("0912000001", "Ma OTP: 123456", SmsPurpose::Otp).await;
        rig.sender.script(&to, &[Answer::Permanent, Answer::Sent]);
        let w = rig.worker();
        assert_eq!(w.deliver_due().await.unwrap(), 0);
        assert_eq!(rig.waiting().await, 0);
        let failed = rig.failed().await;
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].sms.attempts, 1);
        assert_eq!(failed[0].why, "number refused by the gateway");
        assert_eq!(rig.failures_audited().await, vec![to.clone()]);
        for _ in 0..10 {
            rig.advance(Duration::from_secs(10));
            w.deliver_due().await.unwrap();
        }
        assert_eq!(rig.sender.calls_to(&to), 1, "a permanent failure is never retried");
    }

    #[tokio::test]
    async fn one_bad_message_never_delays_the_others_queued_after_it() {
        let rig = Rig::new(Scripted::default());
        let refused = rig.queue("0912000001", "Ma OTP: 111111", SmsPurpose::Otp).await;
        rig.sender.script(&refused, &[Answer::Permanent]);
        // A whole claim batch of messages that fail temporarily, ahead of the good ones.
        let mut busy = Vec::new();
        for i in 0..BATCH {
            let to = rig.queue(&format!("0913{i:06}"), "Ma OTP: 222222", SmsPurpose::Otp).await;
            rig.sender.script(&to, &[Answer::Temporary]);
            busy.push(to);
        }
        let mut good = Vec::new();
        for i in 0..3 {
            good.push(rig.queue(&format!("0914{i:06}"), "Ma OTP: 333333", SmsPurpose::Otp).await);
        }
        assert_eq!(rig.worker().deliver_due().await.unwrap(), good.len(), "sent in the same round");
        for to in &good {
            assert_eq!(rig.sender.received_by(to).len(), 1);
        }
        for to in &busy {
            assert_eq!(rig.sender.calls_to(to), 1, "tried once, waiting for its retry");
        }
        assert_eq!(rig.waiting().await, busy.len());
        assert_eq!(rig.failures_audited().await, vec![refused]);
    }

    #[tokio::test]
    async fn an_idempotent_gateway_that_hangs_on_one_message_does_not_hold_up_the_others_and_gets_it_again() {
        let rig = Rig::new(Scripted::idempotent());
        let stuck = rig.queue("0912000001", "Ma OTP: 111111", SmsPurpose::Otp).await;
        rig.sender.script(&stuck, &[Answer::Hang, Answer::Sent]);
        let good = rig.queue("0912000002", "Ma OTP: 222222", SmsPurpose::Otp).await;
        let mut w = rig.worker();
        w.send_timeout = Duration::from_millis(50);
        let round = tokio::time::timeout(Duration::from_secs(5), w.deliver_due()).await;
        assert_eq!(round.expect("the round ends though the gateway hangs").unwrap(), 1);
        assert_eq!(rig.sender.received_by(&good).len(), 1);
        assert_eq!(rig.waiting().await, 1, "the unanswered message waits for a retry");
        rig.advance(FIRST_RETRY * 2);
        assert_eq!(w.deliver_due().await.unwrap(), 1);
        assert_eq!(rig.sender.received_by(&stuck).len(), 1);
    }

    #[tokio::test]
    async fn an_otp_past_its_lifetime_is_failed_as_no_longer_of_use_not_sent() {
        let rig = Rig::new(Scripted::default());
        let late = rig.queue("0912000001", "Ma OTP: 123456", SmsPurpose::Otp).await;
        rig.advance(SmsPurpose::Otp.useful_for());
        let fresh = rig.queue("0912000002", "Ma OTP: 654321", SmsPurpose::Otp).await;
        assert_eq!(rig.worker().deliver_due().await.unwrap(), 1);
        assert_eq!(rig.sender.calls_to(&late), 0, "an expired code is not sent");
        assert_eq!(rig.sender.received_by(&fresh).len(), 1);
        let failed = rig.failed().await;
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].sms.to, late);
        assert!(failed[0].why.contains("no longer of use"), "{}", failed[0].why);
        assert_eq!(rig.failures_audited().await, vec![late]);
    }

    #[tokio::test]
    async fn an_otp_whose_retries_outlast_its_lifetime_is_failed_and_never_sent_late() {
        let rig = Rig::new(Scripted::default());
        let to = rig.queue("0912000001", "Ma OTP: 123456", SmsPurpose::Otp).await;
        let give_up_at = rig.now().plus(SmsPurpose::Otp.useful_for());
        rig.sender.script(&to, &[Answer::Temporary]);
        let w = rig.worker();
        w.deliver_due().await.unwrap();
        let mut before = 0;
        for _ in 0..600 {
            rig.advance(Duration::from_secs(1));
            w.deliver_due().await.unwrap();
            if rig.now() < give_up_at {
                before = rig.sender.calls_to(&to);
            }
        }
        assert!(before > 1, "retried while the code was of use");
        assert_eq!(rig.sender.calls_to(&to), before, "not handed over once the code expired");
        assert!((before as u32) < MAX_ATTEMPTS);
        let failed = rig.failed().await;
        assert_eq!(failed.len(), 1);
        assert!(failed[0].why.contains("no longer of use"), "{}", failed[0].why);
        assert_eq!(rig.failures_audited().await, vec![to]);
    }

    #[tokio::test]
    async fn a_body_sealed_under_another_key_fails_for_good_without_stopping_the_others() {
        let rig = Rig::new(Scripted::default());
        let other = Crypto::from_master(&[8; 32], HashCost::DANGER_TEST_ONLY).unwrap();
        let foreign = Msisdn::parse("0912000001").unwrap();
        let sealed = other.seal(&Secret::new("Ma OTP: 123456"), foreign.as_str().as_bytes(), &mut OsRng).unwrap();
        rig.queue_sealed(&foreign, sealed, SmsPurpose::Otp).await;
        let good = rig.queue("0912000002", "Ma OTP: 654321", SmsPurpose::Otp).await;
        let w = rig.worker();
        assert_eq!(w.deliver_due().await.unwrap(), 1);
        assert_eq!(rig.sender.calls_to(&foreign), 0);
        assert_eq!(rig.sender.received_by(&good).len(), 1);
        assert_eq!(rig.waiting().await, 0, "not kept for a retry");
        let failed = rig.failed().await;
        assert_eq!(failed.len(), 1);
        assert!(failed[0].why.contains("another key"), "{}", failed[0].why);
        assert_eq!(rig.failures_audited().await, vec![foreign]);
    }

    #[tokio::test]
    async fn a_message_handed_over_by_a_worker_that_died_before_recording_it_reaches_the_recipient_once() {
        let rig = Rig::new(Scripted::idempotent());
        let to = rig.queue("0912000001", "Ma OTP: 123456", SmsPurpose::Otp).await;
        let dead = rig.worker();
        let claimed = rig.store.claim_outbox(&dead.owner, BATCH, LEASE, rig.now()).await.unwrap();
        assert_eq!(claimed.len(), 1);
        // It hands the message to the gateway, then dies before marking it sent.
        assert!(matches!(dead.attempt(&claimed[0], rig.now()).await.unwrap(), Fate::Sent(Delivery::Sent)));
        drop(dead);
        let survivor = rig.worker();
        assert_eq!(survivor.deliver_due().await.unwrap(), 0, "the claim still holds");
        rig.advance(LEASE - MS);
        assert_eq!(survivor.deliver_due().await.unwrap(), 0, "the claim still holds");
        assert_eq!(rig.sender.calls(), 1);
        rig.advance(MS);
        assert_eq!(survivor.deliver_due().await.unwrap(), 1, "handed over again once the lease ended");
        assert_eq!(rig.sender.calls(), 2);
        assert_eq!(rig.sender.received_by(&to).len(), 1, "the gateway knew the id: received once");
        assert_eq!(rig.waiting().await, 0, "already sent: marked sent");
        assert!(rig.failed().await.is_empty());
        rig.advance(Duration::from_secs(3600));
        survivor.deliver_due().await.unwrap();
        assert_eq!(rig.sender.calls(), 2, "never again");
    }

    #[tokio::test]
    async fn a_message_claimed_by_a_worker_that_died_before_sending_is_delivered_by_another_after_the_lease() {
        let rig = Rig::new(Scripted::idempotent());
        let to = rig.queue("0912000001", "Ma OTP: 123456", SmsPurpose::Otp).await;
        let dead = rig.worker();
        assert_eq!(rig.store.claim_outbox(&dead.owner, BATCH, LEASE, rig.now()).await.unwrap().len(), 1);
        drop(dead);
        let survivor = rig.worker();
        rig.advance(LEASE - MS);
        assert_eq!(survivor.deliver_due().await.unwrap(), 0);
        assert_eq!(rig.sender.calls(), 0);
        rig.advance(MS);
        assert_eq!(survivor.deliver_due().await.unwrap(), 1);
        assert_eq!(rig.sender.received_by(&to).len(), 1);
        assert_eq!(rig.waiting().await, 0);
    }

    #[tokio::test]
    async fn a_worker_whose_lease_ended_cannot_fail_or_reschedule_a_message_another_worker_holds() {
        let rig = Rig::new(Scripted::default());
        let to = rig.queue("0912000001", "Ma OTP: 123456", SmsPurpose::Otp).await;
        let slow = rig.worker();
        let claimed = rig.store.claim_outbox(&slow.owner, BATCH, LEASE, rig.now()).await.unwrap();
        rig.advance(LEASE);
        let other = rig.worker();
        let again = rig.store.claim_outbox(&other.owner, BATCH, LEASE, rig.now()).await.unwrap();
        assert_eq!(again.len(), 1, "claimable again once the lease ended");
        // The slow worker reports late: neither report may touch the other worker's claim.
        slow.record(&claimed[0], Fate::Failed("late".into()), rig.now()).await.unwrap();
        slow.record(&claimed[0], Fate::Retry(rig.now(), "late".into()), rig.now()).await.unwrap();
        assert!(rig.failed().await.is_empty());
        assert!(rig.failures_audited().await.is_empty());
        assert!(rig.store.claim_outbox(&slow.owner, BATCH, LEASE, rig.now()).await.unwrap().is_empty(), "still held");
        rig.advance(LEASE);
        assert_eq!(other.deliver_due().await.unwrap(), 1);
        assert_eq!(rig.sender.received_by(&to).len(), 1);
    }

    /// The recipients of `sms_outcome_unknown` audit records.
    async fn in_doubt_audited(rig: &Rig) -> Vec<Msisdn> {
        let all = audit_all(rig.store.as_ref()).await.unwrap();
        all.into_iter().filter(|a| a.event.event == EVENT_OUTCOME_UNKNOWN).filter_map(|a| a.caller).collect()
    }

    /// Runs a delivery round every second of the injected clock until `until` (inclusive).
    async fn rounds_until(rig: &Rig, w: &Worker, until: Millis) {
        while rig.now() < until {
            rig.advance(Duration::from_secs(1).min(until.since(rig.now())));
            w.deliver_due().await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_gateway_that_is_not_idempotent_and_hangs_leaves_the_message_in_doubt_and_never_gets_it_again() {
        let rig = Rig::new(Scripted::default());
        let stuck = rig.queue("0912000001", "Ma OTP: 111111", SmsPurpose::Otp).await;
        let give_up_at = rig.now().plus(SmsPurpose::Otp.useful_for());
        rig.sender.script(&stuck, &[Answer::Hang, Answer::Sent]);
        let good = rig.queue("0912000002", "Ma OTP: 222222", SmsPurpose::Otp).await;
        let mut w = rig.worker();
        w.send_timeout = Duration::from_millis(50);
        let round = tokio::time::timeout(Duration::from_secs(5), w.deliver_due()).await;
        assert_eq!(round.expect("the round ends though the gateway hangs").unwrap(), 1);
        assert_eq!(rig.sender.received_by(&good).len(), 1, "the other message is not held up");
        assert_eq!(rig.waiting().await, 1, "the unanswered message stays, in doubt");
        rounds_until(&rig, &w, minus_1ms(give_up_at)).await;
        assert_eq!(rig.sender.calls_to(&stuck), 1, "never handed over again while in doubt");
        assert!(rig.failed().await.is_empty(), "kept in doubt until it is of no use");
        rounds_until(&rig, &w, give_up_at).await;
        assert_eq!(rig.sender.calls_to(&stuck), 1);
        assert_eq!(rig.waiting().await, 0);
        let failed = rig.failed().await;
        assert_eq!(failed.len(), 1);
        assert!(failed[0].sms.in_flight);
        assert!(failed[0].why.contains("no delivery report"), "{}", failed[0].why);
        assert!(failed[0].why.contains("did not answer"), "the attempt's own error is kept: {}", failed[0].why);
        assert_eq!(in_doubt_audited(&rig).await, vec![stuck]);
        assert!(rig.failures_audited().await.is_empty(), "audited as in doubt, not as refused");
    }

    #[tokio::test]
    async fn an_unknown_outcome_is_parked_for_a_gateway_that_is_not_idempotent_and_retried_for_one_that_is() {
        let once = Rig::new(Scripted::default());
        let to = once.queue("0912000001", "Tai khoan VNeID da kich hoat", SmsPurpose::Activated).await;
        once.sender.script(&to, &[Answer::Unknown, Answer::Sent]);
        let w = once.worker();
        assert_eq!(w.deliver_due().await.unwrap(), 0);
        for _ in 0..20 {
            once.advance(LAST_RETRY);
            w.deliver_due().await.unwrap();
        }
        assert_eq!(once.sender.calls_to(&to), 1, "not handed over again");
        assert_eq!(once.waiting().await, 1, "parked until its deadline, a day away");

        let again = Rig::new(Scripted::idempotent());
        let to = again.queue("0912000001", "Tai khoan VNeID da kich hoat", SmsPurpose::Activated).await;
        again.sender.script(&to, &[Answer::Unknown, Answer::Sent]);
        let w = again.worker();
        assert_eq!(w.deliver_due().await.unwrap(), 0);
        again.advance(backoff(1, again.sender.last_seq()));
        assert_eq!(w.deliver_due().await.unwrap(), 1, "an idempotent gateway can safely get it again");
        assert_eq!(again.sender.received_by(&to).len(), 1);
    }

    #[tokio::test]
    async fn a_refusal_by_a_gateway_that_is_not_idempotent_clears_the_doubt_and_the_message_is_retried_then_sent_once()
    {
        let rig = Rig::new(Scripted::default());
        let to = rig.queue("0912000001", "Tai khoan VNeID da kich hoat", SmsPurpose::Activated).await;
        rig.sender.script(&to, &[Answer::Temporary, Answer::Sent]);
        let w = rig.worker();
        assert_eq!(w.deliver_due().await.unwrap(), 0);
        let claimed_later = rig.store.claim_outbox("peek", 1, LEASE, rig.now().plus(LAST_RETRY)).await.unwrap();
        assert!(!claimed_later[0].in_flight, "a refusal is known: not in doubt");
        rig.advance(LAST_RETRY + LEASE);
        assert_eq!(w.deliver_due().await.unwrap(), 1);
        assert_eq!(rig.sender.calls_to(&to), 2);
        assert_eq!(rig.sender.received_by(&to).len(), 1);
        assert_eq!(rig.waiting().await, 0);
    }

    /// A worker claims a message, marks it in flight and dies during the send (its request may or may
    /// not have reached the gateway); a new worker on `store` (`reopen` gives the store as a restarted
    /// process finds it) must never hand it over again.
    async fn a_message_in_flight_when_its_worker_died_is_never_sent_again(
        rig: Rig,
        reopen: impl FnOnce(Rig) -> std::pin::Pin<Box<dyn std::future::Future<Output = Rig>>>,
    ) {
        let to = rig.queue("0912000001", "Ma OTP: 123456", SmsPurpose::Otp).await;
        let give_up_at = rig.now().plus(SmsPurpose::Otp.useful_for());
        let dead = rig.worker();
        let claimed = rig.store.claim_outbox(&dead.owner, BATCH, LEASE, rig.now()).await.unwrap();
        assert!(rig.store.outbox_sending(&dead.owner, claimed[0].id).await.unwrap());
        drop(dead);
        let rig = reopen(rig).await;
        let survivor = rig.worker();
        rig.advance(LEASE);
        assert_eq!(survivor.deliver_due().await.unwrap(), 0);
        rounds_until(&rig, &survivor, minus_1ms(give_up_at)).await;
        assert_eq!(rig.sender.calls(), 0, "in doubt: not handed over again");
        assert_eq!(rig.waiting().await, 1);
        rounds_until(&rig, &survivor, give_up_at).await;
        assert_eq!(rig.sender.calls(), 0);
        assert_eq!(in_doubt_audited(&rig).await, vec![to]);
    }

    #[tokio::test]
    async fn a_message_in_flight_when_its_worker_died_is_not_sent_again_after_the_lease() {
        let rig = Rig::new(Scripted::default());
        a_message_in_flight_when_its_worker_died_is_never_sent_again(rig, |rig| Box::pin(async { rig })).await;
    }

    #[tokio::test]
    async fn a_message_in_flight_when_the_process_died_is_not_sent_again_from_the_reopened_sled_store() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let rig = Rig::on(Arc::new(SledStore::open(&db).unwrap()), Scripted::default());
        a_message_in_flight_when_its_worker_died_is_never_sent_again(rig, move |rig| {
            Box::pin(async move {
                let Rig { store, crypto, clock, sender } = rig;
                drop(store); // closes the database, as the dead process would have left it
                Rig { store: Arc::new(SledStore::open(&db).unwrap()), crypto, clock, sender }
            })
        })
        .await;
    }

    #[tokio::test]
    async fn a_worker_whose_lease_ended_before_sending_to_a_gateway_that_is_not_idempotent_does_not_send() {
        let rig = Rig::new(Scripted::default());
        let to = rig.queue("0912000001", "Ma OTP: 123456", SmsPurpose::Otp).await;
        let slow = rig.worker();
        let claimed = rig.store.claim_outbox(&slow.owner, BATCH, LEASE, rig.now()).await.unwrap();
        rig.advance(LEASE);
        let other = rig.worker();
        assert_eq!(rig.store.claim_outbox(&other.owner, BATCH, LEASE, rig.now()).await.unwrap().len(), 1);
        let fate = slow.attempt(&claimed[0], rig.now()).await.unwrap();
        assert!(matches!(fate, Fate::Lost), "{fate:?}");
        assert_eq!(rig.sender.calls(), 0, "the claim's new holder sends it, not the slow worker");
        rig.advance(LEASE);
        assert_eq!(other.deliver_due().await.unwrap(), 1);
        assert_eq!(rig.sender.received_by(&to).len(), 1);
    }

    #[tokio::test]
    async fn a_message_resolved_by_a_delivery_report_while_parked_is_neither_sent_again_nor_failed() {
        let rig = Rig::new(Scripted::default());
        let to = rig.queue("0912000001", "Ma OTP: 123456", SmsPurpose::Otp).await;
        rig.sender.script(&to, &[Answer::Unknown]);
        let w = rig.worker();
        w.deliver_due().await.unwrap();
        assert_eq!(rig.waiting().await, 1);
        let event = AuditEvent {
            event: "sms_delivered".into(),
            national_id: None,
            phone: Some(to.clone()),
            detail: Some(format!("{}-{}", rig.store.instance(), rig.sender.last_seq())),
        };
        let report = AuditRecord { at: rig.now(), caller: Some(to.clone()), channel: None, event };
        assert!(rig.store.delivery_report(rig.sender.last_seq(), report).await.unwrap());
        rounds_until(&rig, &w, rig.now().plus(SmsPurpose::Otp.useful_for())).await;
        assert_eq!(rig.sender.calls_to(&to), 1);
        assert_eq!(rig.waiting().await, 0);
        assert!(rig.failed().await.is_empty());
        assert!(in_doubt_audited(&rig).await.is_empty());
    }

    /// Two workers deliver concurrently while messages keep arriving; a gateway that does not deduplicate
    /// counts what it was handed.
    async fn two_concurrent_workers_hand_each_message_over_once(store: Arc<dyn Store>) {
        let rig = Arc::new(Rig::on(store, Scripted::default()));
        const MESSAGES: usize = 300;
        let (a, b) = (Arc::new(rig.worker()), Arc::new(rig.worker()));
        let (stop_tx, stop) = watch::channel(false);
        let rounds = |w: Arc<Worker>, stop: watch::Receiver<bool>| {
            tokio::spawn(async move {
                let mut sent = 0;
                loop {
                    let last = *stop.borrow();
                    sent += w.deliver_due().await.unwrap();
                    if last {
                        return sent;
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        let (ta, tb) = (rounds(a, stop.clone()), rounds(b, stop));
        for i in 0..MESSAGES {
            rig.queue(&format!("0915{i:06}"), "Ma OTP: 123456", SmsPurpose::Otp).await;
        }
        stop_tx.send(true).unwrap();
        let sent = ta.await.unwrap() + tb.await.unwrap();
        let calls = rig.sender.calls.lock().unwrap().clone();
        let mut per_id: HashMap<String, usize> = HashMap::new();
        for (id, _, _) in &calls {
            *per_id.entry(id.clone()).or_default() += 1;
        }
        let twice: Vec<_> = per_id.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "handed over more than once: {twice:?}");
        assert_eq!(per_id.len(), MESSAGES, "every message handed over");
        assert_eq!(sent, MESSAGES);
        assert_eq!(rig.waiting().await, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_workers_on_one_memory_store_never_hand_the_same_message_to_the_sender_twice() {
        two_concurrent_workers_hand_each_message_over_once(Arc::new(MemoryStore::new())).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_workers_on_one_sled_store_never_hand_the_same_message_to_the_sender_twice() {
        let dir = tempfile::tempdir().unwrap();
        two_concurrent_workers_hand_each_message_over_once(Arc::new(SledStore::open(dir.path()).unwrap())).await;
    }
}
