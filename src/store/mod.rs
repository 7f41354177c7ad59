//! Storage behind a trait: conversations (per phone), citizens, accounts, the SMS outbox and the audit
//! trail. sled is the embedded default ([`sled_store::SledStore`]); a multi-node backend (PostgreSQL)
//! implements the same trait later.
//!
//! The contract the service relies on:
//! - [`Store::commit`] writes a conversation together with its effects (account, queued SMS, audit events)
//!   atomically, and refuses to create an account that already exists;
//! - [`Store::durable`] resolves once everything committed before the call is on disk (group commit), so a
//!   reply is sent only after the state it reflects survives a crash;
//! - nothing secret is ever written in plain text: callers pass hashes and sealed SMS bodies only.
//!
//! Stored records are versioned (`"v": 1`) and kept apart from in-memory types where they differ.

pub mod sled_store;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::clock::Millis;
use crate::domain::{Msisdn, NationalId};
use crate::engine::{Account, AuditEvent, Citizen, LoginFailures, Reply, Session, SmsPurpose};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Backend(String),
    #[error("stored record {what} could not be read: {why}")]
    Corrupt { what: &'static str, why: String },
}

/// Everything kept per phone between hops.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub session: Session,
    /// The last USSD hop of this phone, to derive new input and recognise retries.
    pub hop: Option<HopCursor>,
}

/// Where the current USSD session stands, without storing its text (which may repeat a password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HopCursor {
    /// Keyed hash of (phone, carrier session id).
    pub session_mac: String,
    /// Length in bytes of the cumulative text of the last hop answered.
    pub text_len: usize,
    /// Keyed hash of (phone, session id, that text).
    pub text_mac: String,
    /// Replies to the last few hops, by the keyed hash of their text: a retry gets the same reply.
    pub recent: Vec<RecentHop>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentHop {
    pub text_mac: String,
    pub reply: Reply,
    /// When it was answered; kept only while a carrier could still retry it.
    #[serde(default)]
    pub at: Millis,
}

/// An SMS waiting in the outbox; its body is sealed (see `crypto::Crypto::seal`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedSms {
    #[serde(default)]
    pub id: u64,
    pub to: Msisdn,
    pub purpose: SmsPurpose,
    #[serde(with = "hex_bytes")]
    pub sealed: Vec<u8>,
    pub queued_at: Millis,
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub at: Millis,
    /// The phone the conversation came from.
    pub caller: Msisdn,
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// A conversation and its effects, written all or nothing.
#[derive(Debug)]
pub struct Commit {
    pub at: Millis,
    pub phone: Msisdn,
    pub conversation: Conversation,
    pub activate: Option<Account>,
    pub sms: Vec<QueuedSms>,
    pub audit: Vec<AuditRecord>,
    /// Registered phones an OTP SMS was queued for (counted for the per-phone send limit).
    pub otp_sent: Vec<Msisdn>,
    /// New log-in failure records, by ID number.
    pub login_failures: Vec<(NationalId, LoginFailures)>,
}

/// How long OTP send times are kept per phone (the engine's limit looks back one hour).
pub const OTP_SENDS_KEPT: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed,
    /// Another conversation activated this ID first; nothing was written.
    AccountExists,
}

/// Resolves when the data committed before it was asked for is durable.
pub type Durable = oneshot::Receiver<Result<(), String>>;

pub trait Store: Send + Sync + 'static {
    /// A random id of this database, made when it was created (outbox message ids start with it).
    fn instance(&self) -> &str;
    fn conversation(&self, phone: &Msisdn) -> Result<Option<Conversation>, StoreError>;
    fn citizen(&self, id: &NationalId) -> Result<Option<Citizen>, StoreError>;
    fn account(&self, id: &NationalId) -> Result<Option<Account>, StoreError>;
    /// When OTP SMS were queued for `phone` (the last [`OTP_SENDS_KEPT`]).
    fn otp_sends(&self, phone: &Msisdn) -> Result<Vec<Millis>, StoreError>;
    fn login_failures(&self, id: &NationalId) -> Result<LoginFailures, StoreError>;
    /// Inserts or updates a citizen; never touches the account.
    fn upsert_citizen(&self, citizen: &Citizen) -> Result<(), StoreError>;
    fn commit(&self, commit: Commit) -> Result<CommitOutcome, StoreError>;
    fn durable(&self) -> Durable;
    /// Queued SMS, oldest first.
    fn outbox(&self, limit: usize) -> Result<Vec<QueuedSms>, StoreError>;
    fn outbox_done(&self, id: u64) -> Result<(), StoreError>;
    fn audit(&self) -> Result<Vec<AuditRecord>, StoreError>;
    /// Forgets the USSD hop cursor (keyed hashes of typed texts) of conversations idle since before
    /// `cutoff`, without racing a hop that updates one meanwhile. Returns how many were cleared.
    fn sweep_hops(&self, cutoff: Millis) -> Result<usize, StoreError>;
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}
