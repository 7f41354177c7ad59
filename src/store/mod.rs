//! Storage behind one async trait: conversations (per phone, versioned), citizens, accounts, counters,
//! the SMS outbox and the audit trail. sled is the embedded default ([`sled_store::SledStore`]), an
//! in-memory store serves tests and `simulate` ([`memory::MemoryStore`]); PostgreSQL implements the same
//! trait with the same guarantees across several instances on one database ([`postgres::PgStore`]: one
//! transaction per commit, row locks for conversations and counters, `FOR UPDATE SKIP LOCKED` for outbox
//! claims).
//!
//! The contract every backend keeps (and `tests/api/store_contract.rs` checks against each):
//! - [`Store::commit`] is one transaction: the conversation, compared and set against the version the
//!   caller loaded, with every effect of the step (account, queued SMS, audit records, counter bumps).
//!   It answers [`CommitOutcome::Conflict`] when the conversation changed since it was loaded,
//!   [`CommitOutcome::AccountExists`] when the account to create exists, and
//!   [`CommitOutcome::LimitReached`] when a counter's rule refuses its event (see [`crate::limits`]);
//!   then nothing at all is written. It returns only once the commit is durable.
//! - Versions never repeat for a phone, even after its conversation was expired and made again, so a
//!   stale version can never match.
//! - The outbox is claimed with an owner and a lease: a claimed message is not claimable again until the
//!   lease ends; a message is then marked sent, rescheduled, parked, or failed for good (kept and
//!   audited), and no message ever waits behind another.
//! - A message about to go to a sender that is not idempotent is first marked in flight
//!   ([`Store::outbox_sending`]), durably, by the owner of its claim only; the mark stays through
//!   parking, lease ends and restarts, until a retry (the sender said it did not take it) clears it or
//!   the message leaves the outbox (sent, failed, or resolved by a delivery report).
//! - [`Store::expire`] reclaims what is no longer needed, walking indexes by time rather than every
//!   record, so the store stays flat under constant load.
//! - Every audit record, whoever writes it ([`Store::commit`], [`Store::append_audit`],
//!   [`Store::outbox_failed`], [`Store::delivery_report`]), is also marked *unexported* in the same
//!   transaction, and stays so until [`Store::audit_exported`]: the audit trail file
//!   ([`crate::audit::AuditLog`]) drains [`Store::audit_unexported`], so a crash between a commit and its
//!   line in the file loses nothing. Audit ids are unique but not given out in commit order (sled draws
//!   them inside transactions that finish in any order), so "everything after the last id exported" would
//!   miss records: the mark is what says what is left.
//! - Citizens are never deleted: a registry import marks the ones its file no longer lists
//!   ([`Store::remove_citizens`], with their audit records in the same write), and accounts are never
//!   touched by an import. Operators clear counters ([`Store::reset_counters`]) in one write with its
//!   audit record, and find the conversations holding an ID number ([`Store::conversations_of`]; a scan is
//!   acceptable, it is not on a request path).
//! - Nothing secret is written in plain text: callers pass hashes and sealed SMS bodies only.

pub mod memory;
pub mod postgres;
pub mod sled_store;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::clock::Millis;
use crate::domain::{Msisdn, NationalId};
use crate::engine::{Account, AccountUpdate, AuditEvent, Citizen, Reply, Session, SmsPurpose};
use crate::limits::{Bump, CounterKey, Limit, Tally};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Backend(String),
    #[error("stored record {what} could not be read: {why}")]
    Corrupt { what: &'static str, why: String },
    #[error("the data was written by a newer release (store schema {found}; this build reads up to {supported})")]
    NewerSchema { found: u32, supported: u32 },
    #[error("the database was written with another master key than --key-file's: every instance on one database needs a copy of the same key file")]
    KeyMismatch,
}

/// The version of a stored conversation: changes on every write, never repeats.
pub type Version = u64;

/// Everything kept per phone between turns, whatever the channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    pub session: Session,
    /// Replies to the last few turns by their retry key: a channel's retry of a turn gets the same reply
    /// and repeats no effect. Kept only while a channel could still retry.
    #[serde(default)]
    pub recent: Vec<RecentReply>,
    /// Each channel's own cursor (where its session stands), by channel kind; opaque to the store.
    #[serde(default)]
    pub cursors: BTreeMap<String, Cursor>,
}

impl Conversation {
    pub fn new(session: Session) -> Conversation {
        Conversation { session, recent: Vec::new(), cursors: BTreeMap::new() }
    }
}

/// A channel's cursor, encoded by the channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cursor(pub String);

/// A reply kept for retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentReply {
    /// The retry key the channel derived for the turn (a keyed hash: it may cover typed secrets).
    pub key: String,
    pub reply: Reply,
    pub at: Millis,
}

/// An SMS to queue, its body sealed (see `crypto::Crypto::seal`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSms {
    pub to: Msisdn,
    pub purpose: SmsPurpose,
    pub sealed: Vec<u8>,
    /// After this, the message is no use to the citizen (an OTP past its lifetime): fail it for good.
    pub give_up_at: Millis,
}

/// An SMS in the outbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedSms {
    /// Sequence number, unique in this database.
    pub id: u64,
    pub to: Msisdn,
    pub purpose: SmsPurpose,
    #[serde(with = "hex_bytes")]
    pub sealed: Vec<u8>,
    pub queued_at: Millis,
    /// Delivery attempts so far: claims, the current one included.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub give_up_at: Millis,
    /// Why the last attempt failed (no secret: a gateway's status line).
    #[serde(default)]
    pub last_error: Option<String>,
    /// When it is next due: when queued, the time of a scheduled retry, or the end of a claim's lease.
    #[serde(default)]
    pub due_at: Millis,
    /// Who holds the current claim (until `due_at`).
    #[serde(default)]
    pub claimed_by: Option<String>,
    /// Marked (durably) right before it is handed to a sender that cannot recognise a message it already
    /// took (Kannel): while set, whether that sender accepted it is not known (a send in progress, one a
    /// crash interrupted, or one never answered). Such a message is never handed to that sender again; a
    /// delivery report resolves it, or it is failed at `give_up_at`. Set by [`Store::outbox_sending`],
    /// kept by [`Store::outbox_park`], cleared by [`Store::outbox_retry`].
    #[serde(default)]
    pub in_flight: bool,
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub at: Millis,
    /// The phone the conversation came from (for an SMS delivery event, its recipient); none for a
    /// request no phone can be trusted for (a webhook call refused at the gate).
    pub caller: Option<Msisdn>,
    /// The channel the event came through (`africastalking`, `sms`), when it came through one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
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
    pub sms: Vec<NewSms>,
    pub audit: Vec<AuditRecord>,
    /// Counted events, applied with their rules inside the transaction.
    pub bumps: Vec<Bump>,
    /// A credential replaced (a reset, or a hash upgraded after a log-in): written only if the account still
    /// holds the old one; otherwise skipped, or the whole commit refused as a conflict when it is required.
    pub account_update: Option<AccountUpdate>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed(Version),
    /// The conversation changed since it was loaded: load again and re-run the step.
    Conflict,
    /// Another conversation activated this ID first.
    AccountExists,
    /// A counter's rule refused its event.
    LimitReached(Limit),
}

/// How long what expires is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Replies kept for retries and channel cursors (they hold keyed hashes of typed texts): as long as
    /// a carrier could still retry or continue a session.
    pub replies: Duration,
    /// An idle conversation is then reduced to the citizen's language choice (or deleted when that is
    /// the default): everything else in it is past the engine's idle reset.
    pub conversations: Duration,
    /// SMS that failed for good are kept this long for operators.
    pub failed_sms: Duration,
}

impl Retention {
    pub const DEFAULT: Retention = Retention {
        replies: Duration::from_secs(10 * 60),
        conversations: Duration::from_secs(60 * 60),
        failed_sms: Duration::from_secs(30 * 24 * 60 * 60),
    };
}

/// What one [`Store::expire`] pass reclaimed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    /// Conversations whose retry replies and cursors were dropped.
    pub swept: usize,
    /// Idle conversations reduced to their language choice or deleted.
    pub conversations: usize,
    pub counters: usize,
    pub failed_sms: usize,
}

impl Expired {
    pub fn total(&self) -> usize {
        self.swept + self.conversations + self.counters + self.failed_sms
    }
}

/// An SMS that failed for good, kept for operators.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedSms {
    pub sms: QueuedSms,
    pub failed_at: Millis,
    pub why: String,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// A random id of this database, made when it was created (outbox message ids start with it).
    fn instance(&self) -> &str;

    /// The conversation of `phone` and its version.
    async fn load(&self, phone: &Msisdn) -> Result<Option<(Conversation, Version)>, StoreError>;
    /// Writes `commit` if the stored conversation still has version `expect` (`None`: there is none).
    /// Durable when it returns `Committed`.
    async fn commit(&self, expect: Option<Version>, commit: Commit) -> Result<CommitOutcome, StoreError>;
    /// Resolves once everything committed before the call is durable (a reply replayed for a retry may
    /// belong to a commit whose caller gave up waiting).
    async fn durable(&self) -> Result<(), StoreError>;

    // Reads for the engine: hints only; the commit enforces.
    async fn citizen(&self, id: &NationalId) -> Result<Option<Citizen>, StoreError>;
    async fn account(&self, id: &NationalId) -> Result<Option<Account>, StoreError>;
    async fn tally(&self, key: &CounterKey) -> Result<Tally, StoreError>;

    /// Inserts or updates citizens (the registry import); never touches an account. A removed citizen
    /// upserted again takes the status given (the registry lists them again).
    async fn upsert_citizens(&self, citizens: &[Citizen]) -> Result<(), StoreError>;
    /// Up to `n` citizens (removed ones included) whose ID numbers sort after `after` (from the first when
    /// `None`), in ID-number order: how an import compares the registry file with what is stored.
    async fn citizens_after(&self, after: Option<&NationalId>, n: usize) -> Result<Vec<Citizen>, StoreError>;
    /// Marks the citizens `ids` removed ([`CitizenStatus::Removed`](crate::engine::CitizenStatus)): never
    /// deletes them and never touches an account. Appends `audit` in the same transaction. IDs not stored
    /// or already removed are skipped. Returns how many were marked; durable when it returns.
    async fn remove_citizens(&self, ids: &[NationalId], audit: &[AuditRecord]) -> Result<usize, StoreError>;

    /// The conversations (with their phones and versions) whose activation or recovery holds the ID number
    /// `id`, for operators. May walk every conversation: not for request paths.
    async fn conversations_of(&self, id: &NationalId) -> Result<Vec<(Msisdn, Conversation, Version)>, StoreError>;
    /// Deletes the counters `keys` (their counts and locks: an operator clearing a lock), with `audit`
    /// appended in the same transaction. Returns how many of them existed; durable when it returns.
    async fn reset_counters(&self, keys: &[CounterKey], audit: &[AuditRecord]) -> Result<usize, StoreError>;

    /// Claims up to `n` messages that are due at `now` and not claimed by a live lease, oldest due
    /// first, for `owner` until `now + lease`. A message whose lease ends unreported is due again.
    async fn claim_outbox(
        &self,
        owner: &str,
        n: usize,
        lease: Duration,
        now: Millis,
    ) -> Result<Vec<QueuedSms>, StoreError>;
    /// The gateway has it: forget it.
    async fn outbox_sent(&self, id: u64) -> Result<(), StoreError>;
    /// About to hand the message to a sender that is not idempotent: marks it in flight if `owner` holds
    /// its claim, and returns whether it did. **Durable before it returns**, so a crash during the send
    /// leaves a message that is known to be in doubt. `false`: the claim is lost, do not send.
    async fn outbox_sending(&self, owner: &str, id: u64) -> Result<bool, StoreError>;
    /// Try again at `at`: a failure known to have left the gateway without the message (it refused it,
    /// or could not be reached), so it also clears `in_flight`. Ignored unless `owner` holds the claim.
    async fn outbox_retry(&self, owner: &str, id: u64, at: Millis, why: &str) -> Result<(), StoreError>;
    /// The outcome of the send is unknown: releases the claim and makes the message due again at
    /// `until`, keeping `in_flight` (it must not be sent again). Ignored unless `owner` holds the claim.
    async fn outbox_park(&self, owner: &str, id: u64, until: Millis, why: &str) -> Result<(), StoreError>;
    /// A delivery report for message `id` arrived (signed, so the gateway did accept it): if the message
    /// is still in the outbox (in doubt, or mid-send) it is removed as sent, whoever holds its claim; and
    /// `audit` is appended either way, in the same transaction. Returns whether a message was removed.
    /// Durable before it returns.
    async fn delivery_report(&self, id: u64, audit: AuditRecord) -> Result<bool, StoreError>;
    /// Never to be sent: moved to the failed list, with `audit` in the same transaction. Ignored unless
    /// `owner` holds the claim.
    async fn outbox_failed(&self, owner: &str, id: u64, why: &str, audit: AuditRecord) -> Result<(), StoreError>;
    /// Messages waiting (claimed or not), for operators and tests.
    async fn outbox_len(&self) -> Result<usize, StoreError>;
    /// Messages that failed for good, oldest first.
    async fn failed_sms(&self, n: usize) -> Result<Vec<FailedSms>, StoreError>;

    /// Reclaims what `keep` no longer covers at `now`.
    async fn expire(&self, now: Millis, keep: &Retention) -> Result<Expired, StoreError>;

    /// Appends audit records that belong to no commit (a webhook call refused at the gate); durable when
    /// it returns.
    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError>;

    /// Up to `n` audit records after the cursor `after` (from the first when `None`), with their cursors.
    async fn audit_after(&self, after: Option<u64>, n: usize) -> Result<Vec<(u64, AuditRecord)>, StoreError>;

    /// Up to `n` audit records not yet exported to the audit trail file, with their ids, smallest id first.
    /// A record is unexported from the transaction that writes it until [`Store::audit_exported`] names it.
    async fn audit_unexported(&self, n: usize) -> Result<Vec<(u64, AuditRecord)>, StoreError>;
    /// The records `ids` are in the audit trail file: no longer unexported. Ids that are not unexported
    /// are ignored. Need not be durable when it returns: a mark lost in a crash only makes the file's
    /// writer see the record again, and it recognises a record it already wrote.
    async fn audit_exported(&self, ids: &[u64]) -> Result<(), StoreError>;
}

/// Reads the whole audit trail (operators and tests).
pub async fn audit_all(store: &dyn Store) -> Result<Vec<AuditRecord>, StoreError> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store.audit_after(after, 1000).await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(*last);
        out.extend(page.into_iter().map(|(_, r)| r));
    }
    Ok(out)
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
