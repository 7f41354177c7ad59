//! The delivery worker: claims due messages from the store's outbox (with a lease, so two workers never
//! hold the same message), opens each, hands it to the sender, and records what happened:
//!
//! - sent (or the sender already had it): marked sent, forgotten;
//! - a temporary failure: tried again after an exponential backoff (2 s doubling to 5 min, spread a little
//!   per message), up to [`MAX_ATTEMPTS`];
//! - a permanent failure, too many attempts, a body that cannot be opened, or a message past its use (an
//!   OTP older than its lifetime): failed for good, kept for operators and audited.
//!
//! Each message is handled on its own, so one that cannot be sent never delays the others. Time comes from
//! the injected clock. Woken by the service after a commit that queued an SMS, and every second for
//! retries that fall due.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

use super::{Delivery, OutgoingSms, SendError, SmsSender};
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
}

/// What happened to one claimed message.
enum Fate {
    Sent(Delivery),
    Retry(Millis, String),
    Failed(String),
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
        Worker { store, crypto, sender, clock, owner }
    }

    /// Delivers every message due now; returns how many were handed to the sender.
    pub async fn deliver_due(&self) -> Result<usize, StoreError> {
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
                let fate = self.attempt(&sms, now).await;
                if matches!(fate, Fate::Sent(_)) {
                    sent += 1;
                }
                self.record(&sms, fate, now).await?;
            }
        }
        Ok(sent)
    }

    async fn attempt(&self, q: &QueuedSms, now: Millis) -> Fate {
        if now >= q.give_up_at {
            return Fate::Failed("no longer of use when it could be sent".into());
        }
        let Ok(text) = self.crypto.open(&q.sealed, q.to.as_str().as_bytes()) else {
            // Sealed under another key (the key file was replaced): it can never be sent.
            return Fate::Failed("sealed under another key".into());
        };
        let sms = OutgoingSms {
            id: format!("{}-{}", self.store.instance(), q.id),
            to: q.to.clone(),
            text,
            purpose: q.purpose,
            at: q.queued_at,
        };
        match self.sender.send(&sms).await {
            Ok(delivery) => Fate::Sent(delivery),
            Err(SendError::Permanent(why)) => Fate::Failed(why),
            Err(SendError::Temporary(why)) if q.attempts >= MAX_ATTEMPTS => {
                Fate::Failed(format!("{MAX_ATTEMPTS} attempts failed; last: {why}"))
            }
            Err(SendError::Temporary(why)) => Fate::Retry(now.plus(backoff(q.attempts, q.id)), why),
        }
    }

    async fn record(&self, q: &QueuedSms, fate: Fate, now: Millis) -> Result<(), StoreError> {
        let to = q.to.masked();
        match fate {
            Fate::Sent(Delivery::Sent) => {
                self.store.outbox_sent(q.id).await?;
                info!(sms_id = q.id, to = %to, purpose = ?q.purpose, "sms sent");
            }
            Fate::Sent(Delivery::AlreadySent) => {
                self.store.outbox_sent(q.id).await?;
                info!(sms_id = q.id, "sms was already sent (before a restart); not again");
            }
            Fate::Retry(at, why) => {
                warn!(sms_id = q.id, to = %to, attempt = q.attempts, error = %why, retry_in_s = at.since(now).as_secs(), "sms not sent; will retry");
                self.store.outbox_retry(&self.owner, q.id, at, &why).await?;
            }
            Fate::Failed(why) => {
                error!(sms_id = q.id, to = %to, purpose = ?q.purpose, attempts = q.attempts, why = %why, "sms failed for good");
                let event = AuditEvent { event: "sms_failed".into(), national_id: None, phone: Some(q.to.clone()) };
                let audit = AuditRecord { at: now, caller: q.to.clone(), event };
                self.store.outbox_failed(&self.owner, q.id, &why, audit).await?;
            }
        }
        Ok(())
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
    use super::*;

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
}
