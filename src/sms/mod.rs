//! Outgoing SMS: the [`SmsSender`] trait, the senders (the outbox file by default, a Kannel smsbox), the
//! delivery worker that moves queued messages from the store to a sender, and the receiver of Kannel's
//! delivery reports.
//!
//! An SMS is first committed to the store's outbox (sealed) in the same transaction as the conversation
//! step that caused it; the worker claims it afterwards, delivers it and only then marks it sent. A crash
//! between the two re-delivers once the claim's lease ends. An idempotent sender (the outbox file)
//! recognises what it already took by the message id, so nothing is lost or duplicated. A sender that is
//! not idempotent (Kannel's sendsms has no idempotency key) gets each message at most once: the message
//! is marked in flight, durably, before it is handed over, and one whose outcome is then unknown is never
//! handed over again; a delivery report resolves it, or it is failed at its deadline. A message that
//! fails is retried with exponential backoff, or failed for good, without holding up any other.

pub mod dlr;
pub mod file;
pub mod kannel;
pub mod worker;

use std::future::Future;
use std::pin::Pin;

use crate::clock::Millis;
use crate::domain::{Msisdn, Secret};
use crate::engine::SmsPurpose;

/// One SMS ready to hand to a gateway. The text is a [`Secret`]: it may carry an OTP.
#[derive(Debug)]
pub struct OutgoingSms {
    /// `<store instance>-<outbox sequence>`: stable across retries and unique across databases, so a
    /// sender can deduplicate.
    pub id: String,
    pub to: Msisdn,
    pub text: Secret,
    pub purpose: SmsPurpose,
    pub at: Millis,
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worth retrying later (gateway down, disk full): the message is tried again after a backoff.
    #[error("temporary SMS failure: {0}")]
    Temporary(String),
    /// Will never succeed (the gateway refuses the number or the credentials): the message is kept as
    /// failed and audited, and never tried again.
    #[error("permanent SMS failure: {0}")]
    Permanent(String),
    /// In doubt: the request may have reached the gateway (a timeout or a broken connection after it was
    /// sent), so the gateway may have accepted the message. For a sender that is not idempotent the
    /// message is never handed over again; for an idempotent one this is a temporary failure.
    #[error("SMS outcome unknown: {0}")]
    Unknown(String),
}

/// What a sender did with a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Sent,
    /// It had this id already (delivered before a crash or by a concurrent delivery round).
    AlreadySent,
}

pub type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<Delivery, SendError>> + Send + 'a>>;

pub trait SmsSender: Send + Sync + 'static {
    /// Delivers `sms`. An idempotent sender answers [`Delivery::AlreadySent`] for an id it took before;
    /// one that is not may deliver the same message twice if handed it twice.
    fn send<'a>(&'a self, sms: &'a OutgoingSms) -> SendFuture<'a>;

    /// Whether handing the same message over twice is harmless (it recognises `sms.id`). When it is not,
    /// the worker marks each message in flight before handing it over and never hands over again one
    /// whose outcome is unknown.
    fn idempotent(&self) -> bool;
}
