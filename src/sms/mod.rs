//! Outgoing SMS: the [`SmsSender`] trait, the outbox-file sender used by default, and the delivery worker
//! that moves queued messages from the store to a sender.
//!
//! An SMS is first committed to the store's outbox (sealed) in the same transaction as the conversation
//! step that caused it; the worker claims it afterwards, delivers it and only then marks it sent. A crash
//! between the two re-delivers once the claim's lease ends, and a sender recognises what it already took
//! by the message id, so a message is neither lost nor duplicated. A message that fails is retried with
//! exponential backoff, or failed for good, without holding up any other. Kannel and Twilio senders slot
//! in behind the same trait.

pub mod file;
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
    /// Delivers `sms`; must be idempotent by `sms.id`.
    fn send<'a>(&'a self, sms: &'a OutgoingSms) -> SendFuture<'a>;
}
