//! The delivery worker: opens queued SMS from the store's outbox, hands them to the sender, and forgets
//! each once the sender has it. Woken by the service after every commit that queued an SMS, and every
//! second in case a send failed and must be retried.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tracing::{error, info, warn};

use super::{Delivery, OutgoingSms, SmsSender};
use crate::crypto::Crypto;
use crate::store::{Store, StoreError};

/// Delivers what is queued now; returns how many were sent.
pub async fn deliver_pending(store: &dyn Store, crypto: &Crypto, sender: &dyn SmsSender) -> Result<usize, StoreError> {
    let mut sent = 0;
    loop {
        let batch = store.outbox(64)?;
        if batch.is_empty() {
            break;
        }
        // What we read is committed but maybe not yet on disk: never send an SMS whose record (and the
        // OTP state it goes with) a crash could still undo.
        durable(store).await?;
        let mut progressed = false;
        for q in batch {
            let text = match crypto.open(&q.sealed, q.to.as_str().as_bytes()) {
                Ok(t) => t,
                Err(_) => {
                    // Sealed under another key (the key file was replaced): it can never be sent.
                    error!(sms_id = q.id, to = %q.to.masked(), "queued SMS cannot be opened with this key; dropped");
                    store.outbox_done(q.id)?;
                    progressed = true;
                    continue;
                }
            };
            let sms = OutgoingSms {
                id: format!("{}-{}", store.instance(), q.id),
                to: q.to.clone(),
                text,
                purpose: q.purpose,
                at: q.queued_at,
            };
            match sender.send(&sms).await {
                Ok(delivery) => {
                    store.outbox_done(q.id)?;
                    match delivery {
                        Delivery::Sent => info!(sms_id = q.id, to = %q.to.masked(), purpose = ?q.purpose, "sms sent"),
                        Delivery::AlreadySent => {
                            info!(sms_id = q.id, "sms was already sent (before a restart); not again")
                        }
                    }
                    sent += 1;
                    progressed = true;
                }
                Err(e) => {
                    warn!(sms_id = q.id, to = %q.to.masked(), error = %e, "sms not sent; will retry");
                    break;
                }
            }
        }
        if !progressed {
            break;
        }
    }
    if sent > 0 {
        durable(store).await?;
    }
    Ok(sent)
}

async fn durable(store: &dyn Store) -> Result<(), StoreError> {
    store.durable().await.map_err(|e| StoreError::Backend(e.to_string()))?.map_err(StoreError::Backend)
}

/// Runs until `stop` changes (or its sender is dropped).
pub async fn run(
    store: Arc<dyn Store>,
    crypto: Arc<Crypto>,
    sender: Arc<dyn SmsSender>,
    wake: Arc<Notify>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = deliver_pending(store.as_ref(), &crypto, sender.as_ref()).await {
            error!(error = %e, "sms delivery failed");
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => break,
        }
    }
}
