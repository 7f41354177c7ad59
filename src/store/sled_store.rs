//! The embedded store: sled 0.34, one tree per record kind plus time indexes, one multi-tree transaction
//! per commit (one compare-and-swap when it writes only the conversation), and a group-commit flusher
//! thread.
//!
//! Trees: `conversations` (phone → version, conversation), `conv_fresh` and `conv_idle` (time indexes for
//! [`Store::expire`]: conversations whose retry replies are still kept, and those already swept),
//! `citizens`, `accounts`, `counters` with `counter_due`, `outbox` with `outbox_due` (when each message
//! is next due: queued, retried, or its lease ends), `outbox_failed` (by time of failure), `audit`, and
//! `audit_unexported` (the ids of audit records not yet in the audit trail file, written in the
//! transaction of each record and removed once the file has it). Each time index key starts with a
//! big-endian time, so expiry and outbox claims walk a range, never the whole store.
//!
//! Durability: sled's `flush_async` deadlocks under concurrent load (sled issue 1308), and a blocking
//! `flush` per request would serialize every reply behind its own fsync. Instead one thread owns
//! flushing: callers register a waiter, the thread takes every waiter queued so far, runs one `flush`, and
//! answers them all. Everything committed before a waiter was registered is covered by that flush.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;
use tokio::sync::oneshot;

use super::{
    AuditRecord, Commit, CommitOutcome, Conversation, Expired, FailedSms, QueuedSms, Retention, Store, StoreError,
    Version,
};
use crate::clock::{Clock, Millis, SystemClock};
use crate::domain::{Msisdn, NationalId};
use crate::engine::{Account, Citizen, CitizenStatus};
use crate::limits::{self, CounterKey, Tally};

mod migrate;

/// The store layout this build writes. 1: the first release (conversations with a USSD hop cursor,
/// per-kind limit trees); 2: versioned conversations with channel cursors, counters, time indexes; 3:
/// every audit record not yet in the audit trail file is marked in `audit_unexported` (a release of schema
/// 2 would write records without the mark, and the file would silently miss them: it is refused).
pub const SCHEMA: u32 = 3;

/// Versioned envelopes: what is on disk, apart from the in-memory types.
#[derive(Serialize, Deserialize)]
#[serde(tag = "v")]
enum Stored<T> {
    #[serde(rename = "1")]
    V1(T),
}

fn encode<T: Serialize>(value: T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(&Stored::V1(value)).map_err(|e| StoreError::Backend(e.to_string()))
}

fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, StoreError> {
    match serde_json::from_slice::<Stored<T>>(bytes) {
        Ok(Stored::V1(v)) => Ok(v),
        Err(e) => Err(StoreError::Corrupt { what, why: e.to_string() }),
    }
}

/// A conversation as stored: `{"v":"2", ...}` (schema 1 wrote `{"v":"1", session, hop}`).
///
/// The tag is a plain first field, not serde's internally tagged enum: the bytes are the same, but reading
/// such an enum first copies the whole record into serde's buffered `Content` tree (allocations per hop
/// seen in a profile, BENCHMARKS.md).
#[derive(Debug, Serialize, Deserialize)]
struct ConvRecord {
    v: V2,
    version: Version,
    /// The time it is filed under in `conv_fresh` (or `conv_idle` once `swept`).
    indexed_at: Millis,
    /// The time of its last commit: later than `indexed_at` when commits within [`REFILE_AFTER`] of it
    /// left it where it was filed (expiry files it again under this time when it finds it early). Records
    /// written before this field read it as 0: their `indexed_at` is their last commit.
    #[serde(default, skip_serializing_if = "is_zero")]
    at: Millis,
    #[serde(default)]
    swept: bool,
    conversation: Conversation,
}

fn is_zero(m: &Millis) -> bool {
    m.0 == 0
}

impl ConvRecord {
    /// When it was last committed.
    fn last_at(&self) -> Millis {
        self.at.max(self.indexed_at)
    }

    /// What commit `c` stores, as `version`, filed under `filed` (see [`ConvRecord::filing`]).
    fn committed(version: Version, filed: Millis, c: &Commit) -> ConvRecord {
        ConvRecord { v: V2, version, indexed_at: filed, at: c.at, swept: false, conversation: c.conversation.clone() }
    }

    /// Where a commit at `at` files the conversation that was `old`, and whether that is a new entry:
    /// where it already is, when that is a fresh entry at most [`REFILE_AFTER`] older (no index write at
    /// all), or else a new entry under `at`.
    fn filing(old: Option<&ConvRecord>, at: Millis) -> (Millis, bool) {
        match old {
            Some(o) if !o.swept && o.indexed_at <= at && at.since(o.indexed_at) < REFILE_AFTER => (o.indexed_at, false),
            _ => (at, true),
        }
    }
}

/// How long a conversation's commits leave it filed where it is in `conv_fresh`. Re-filing it on every
/// commit took two of a hop's three writes (a new entry, the old one removed): without them durable first
/// hops ran a third faster (BENCHMARKS.md). Expiry, finding an entry before the record's last commit, files
/// it again under that time, so replies are swept exactly when due, never early.
const REFILE_AFTER: Duration = Duration::from_secs(60);

/// The tag `"2"`: anything else is not a conversation this build can read.
#[derive(Debug, Clone, Copy)]
struct V2;

impl Serialize for V2 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("2")
    }
}

impl<'de> Deserialize<'de> for V2 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<V2, D::Error> {
        struct Tag;
        impl serde::de::Visitor<'_> for Tag {
            type Value = V2;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("the conversation tag \"2\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<V2, E> {
                if v == "2" {
                    Ok(V2)
                } else {
                    Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                }
            }
        }
        d.deserialize_str(Tag)
    }
}

fn encode_conv(r: ConvRecord) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(&r).map_err(|e| StoreError::Backend(e.to_string()))
}

fn decode_conv(bytes: &[u8]) -> Result<ConvRecord, StoreError> {
    serde_json::from_slice::<ConvRecord>(bytes)
        .map_err(|e| StoreError::Corrupt { what: "conversation", why: e.to_string() })
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// An index key: a big-endian time, then the record's key.
fn at_key(at: Millis, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + rest.len());
    k.extend_from_slice(&at.0.to_be_bytes());
    k.extend_from_slice(rest);
    k
}

fn split_at_key(k: &[u8]) -> Option<(Millis, &[u8])> {
    let (t, rest) = k.split_first_chunk::<8>()?;
    Some((Millis(u64::from_be_bytes(*t)), rest))
}

fn id_of(bytes: &[u8]) -> Option<u64> {
    bytes.first_chunk::<8>().map(|b| u64::from_be_bytes(*b))
}

type Waiter = oneshot::Sender<Result<(), String>>;

/// sled's own cache of pages by default (resident memory; measured in BENCHMARKS.md: 64 MiB instead of 128
/// takes 45 MB off the server's RSS during a burst of 200 log-ins; 96 MiB brings the p99 of first hops at
/// 1M stored conversations from 11.9 to 9.0 ms but takes that burst past 250 MiB). `--sled-cache-mb`.
pub const CACHE_BYTES: u64 = 64 << 20;

/// Citizens written per sled batch (see `upsert_citizens`).
const CITIZEN_BATCH: usize = 500;

pub struct SledStore {
    db: sled::Db,
    conversations: sled::Tree,
    conv_fresh: sled::Tree,
    conv_idle: sled::Tree,
    citizens: sled::Tree,
    accounts: sled::Tree,
    counters: sled::Tree,
    counter_due: sled::Tree,
    outbox: sled::Tree,
    outbox_due: sled::Tree,
    outbox_failed: sled::Tree,
    audit: sled::Tree,
    /// Audit ids (big-endian) whose records the audit trail file does not have yet; values empty.
    audit_unexported: sled::Tree,
    /// Random, made with the database: outbox message ids are `<instance>-<seq>`, so a fresh database
    /// writing to an old outbox file never collides with the messages already in it.
    instance: String,
    /// `None` once dropped: the flusher thread then ends, and `Drop` waits for it so the database is
    /// closed (and its lock released) when the store is gone.
    flush_tx: Mutex<Option<mpsc::Sender<Waiter>>>,
    flusher: Mutex<Option<thread::JoinHandle<()>>>,
    flushes: Arc<AtomicU64>,
}

impl Drop for SledStore {
    fn drop(&mut self) {
        if let Ok(mut tx) = self.flush_tx.lock() {
            tx.take();
        }
        if let Some(handle) = self.flusher.lock().ok().and_then(|mut h| h.take()) {
            let _ = handle.join();
        }
    }
}

/// Why a commit transaction stopped.
enum Abort {
    Outcome(CommitOutcome),
    Store(StoreError),
}

type TxError = ConflictableTransactionError<Abort>;

fn abort_store(e: StoreError) -> TxError {
    ConflictableTransactionError::Abort(Abort::Store(e))
}

fn abort(o: CommitOutcome) -> TxError {
    ConflictableTransactionError::Abort(Abort::Outcome(o))
}

impl SledStore {
    /// Opens (or creates) the database at `dir`, migrating a data dir of an earlier schema.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        Self::open_at(dir, SystemClock.now())
    }

    /// As [`SledStore::open`], with the time a migration dates what it converts by (the service's clock:
    /// migrated counters must not be forgotten, nor kept, on another clock than the one that reads them).
    pub fn open_at(dir: &Path, now: Millis) -> Result<SledStore, StoreError> {
        Self::open_with(dir, now, CACHE_BYTES)
    }

    /// As [`SledStore::open_at`], with a page cache of `cache_bytes` (resident memory) instead of the
    /// default [`CACHE_BYTES`].
    pub fn open_with(dir: &Path, now: Millis, cache_bytes: u64) -> Result<SledStore, StoreError> {
        // sled's page cache defaults to 1 GiB and is resident memory; the OS page cache keeps what falls out.
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(cache_bytes)
            .open()
            .map_err(backend)?;
        migrate::to_current(&db, now)?;
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        let instance = instance_id(&db)?;
        release_claims(&db)?;
        let (tx, rx) = mpsc::channel::<Waiter>();
        let flusher_db = db.clone();
        let flushes = Arc::new(AtomicU64::new(0));
        let counted = flushes.clone();
        let flusher = thread::Builder::new()
            .name("sled-group-commit".into())
            .spawn(move || group_commit(flusher_db, rx, counted))
            .map_err(backend)?;
        Ok(SledStore {
            conversations: tree("conversations")?,
            conv_fresh: tree("conv_fresh")?,
            conv_idle: tree("conv_idle")?,
            citizens: tree("citizens")?,
            accounts: tree("accounts")?,
            counters: tree("counters")?,
            counter_due: tree("counter_due")?,
            outbox: tree("outbox")?,
            outbox_due: tree("outbox_due")?,
            outbox_failed: tree("outbox_failed")?,
            audit: tree("audit")?,
            audit_unexported: tree("audit_unexported")?,
            db,
            instance,
            flush_tx: Mutex::new(Some(tx)),
            flusher: Mutex::new(Some(flusher)),
            flushes,
        })
    }

    /// Flushes synchronously (shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(backend)
    }

    /// How many group flushes have run: many waiters share one.
    pub fn flushes(&self) -> u64 {
        self.flushes.load(Ordering::SeqCst)
    }

    fn get<T: DeserializeOwned>(
        &self,
        tree: &sled::Tree,
        what: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match tree.get(key).map_err(backend)? {
            Some(bytes) => decode(what, &bytes).map(Some),
            None => Ok(None),
        }
    }

    fn wait_durable(&self) -> oneshot::Receiver<Result<(), String>> {
        let (tx, rx) = oneshot::channel();
        let sent = match self.flush_tx.lock() {
            Ok(sender) => match sender.as_ref() {
                Some(sender) => sender.send(tx).map_err(|e| e.0),
                None => Err(tx),
            },
            Err(_) => Err(tx),
        };
        if let Err(tx) = sent {
            // The flusher is gone (shutting down): flush here rather than promise durability we lack.
            let _ = tx.send(self.db.flush().map(|_| ()).map_err(|e| e.to_string()));
        }
        rx
    }

    /// A commit that writes only the conversation: one compare-and-swap on its stored bytes instead of a
    /// multi-tree transaction. sled runs transactions one at a time under a global write lock that every
    /// other operation (each hop's load included) waits for; single-key operations only share it, and
    /// stay ordered against transactions (expiry's among them).
    ///
    /// The time index: the new entry is written before the swap (a crash after the swap still finds it)
    /// and checked again after it (expiry removes an entry whose record does not match yet, which it may
    /// have seen between the two). The old entry is removed after the swap and the record read again: if
    /// a later commit filed itself under the same key meanwhile (a clock that went back), it is put back.
    /// An entry left over is harmless: expiry drops entries whose record does not match them.
    fn commit_conversation_only(&self, expect: Option<Version>, c: &Commit) -> Result<CommitOutcome, StoreError> {
        let phone = c.phone.as_str().as_bytes();
        let old_bytes = self.conversations.get(phone).map_err(backend)?;
        let old = match &old_bytes {
            Some(bytes) => Some(decode_conv(bytes)?),
            None => None,
        };
        if old.as_ref().map(|r| r.version) != expect {
            return Ok(CommitOutcome::Conflict);
        }
        let (filed, refiled) = ConvRecord::filing(old.as_ref(), c.at);
        let new_key = at_key(filed, phone);
        if refiled {
            self.conv_fresh.insert(&new_key, &[]).map_err(backend)?;
        }
        // The same counter as a transaction's `generate_id`: versions never repeat, across restarts too.
        let version = self.db.generate_id().map_err(backend)? + 1;
        let record = ConvRecord::committed(version, filed, c);
        let swapped = self
            .conversations
            .compare_and_swap(phone, old_bytes.as_ref(), Some(encode_conv(record)?))
            .map_err(backend)?;
        if swapped.is_err() {
            return Ok(CommitOutcome::Conflict);
        }
        if !self.conv_fresh.contains_key(&new_key).map_err(backend)? {
            self.conv_fresh.insert(&new_key, &[]).map_err(backend)?;
        }
        if !refiled {
            return Ok(CommitOutcome::Committed(version));
        }
        if let Some(old) = old.filter(|o| !(o.swept && o.indexed_at == Millis(0))) {
            let old_key = at_key(old.indexed_at, phone);
            let index = if old.swept { &self.conv_idle } else { &self.conv_fresh };
            if old_key != new_key || old.swept {
                index.remove(&old_key).map_err(backend)?;
                if let Some(bytes) = self.conversations.get(phone).map_err(backend)? {
                    let now = decode_conv(&bytes)?;
                    if now.indexed_at == old.indexed_at && now.swept == old.swept {
                        index.insert(&old_key, &[]).map_err(backend)?;
                    }
                }
            }
        }
        Ok(CommitOutcome::Committed(version))
    }

    /// Sweeps or compacts the conversation filed at `index_key` in `index` (one expiry step), or files it
    /// again under its last commit when that is not yet before `due` (it was left filed earlier).
    fn expire_conversation(&self, index_key: &[u8], sweep: bool, due: Millis) -> Result<bool, StoreError> {
        let Some((at, phone)) = split_at_key(index_key) else { return Ok(false) };
        let phone = phone.to_vec();
        let trees = (&self.conversations, &self.conv_fresh, &self.conv_idle);
        let done = trees.transaction(|(conv, fresh, idle)| {
            let index = if sweep { fresh } else { idle };
            index.remove(index_key)?;
            let Some(bytes) = conv.get(&phone)? else { return Ok(false) };
            let mut r = decode_conv(&bytes).map_err(abort_store)?;
            if r.indexed_at != at || r.swept == sweep {
                return Ok(false); // a stale index entry: the record was rewritten since
            }
            let last = r.last_at();
            if sweep && last >= due {
                // Filed early (later commits left it where it was): filed again, not yet swept.
                r.indexed_at = last;
                fresh.insert(at_key(last, &phone), &[])?;
                r.version = conv.generate_id()? + 1;
                conv.insert(phone.as_slice(), encode_conv(r).map_err(abort_store)?)?;
                return Ok(false);
            }
            if sweep {
                r.conversation.recent.clear();
                r.conversation.cursors.clear();
                r.swept = true;
                r.indexed_at = last;
                idle.insert(at_key(last, &phone), &[])?;
            } else {
                match r.conversation.session.idle_form() {
                    None => {
                        conv.remove(phone.as_slice())?;
                        return Ok(true);
                    }
                    Some(session) => {
                        r.conversation = Conversation::new(session);
                        r.indexed_at = Millis(0); // filed nowhere: nothing more to expire
                        r.swept = true;
                    }
                }
            }
            r.version = conv.generate_id()? + 1;
            conv.insert(phone.as_slice(), encode_conv(r).map_err(abort_store)?)?;
            Ok(true)
        });
        tx_result(done)
    }
}

fn tx_result<T>(r: Result<T, TransactionError<Abort>>) -> Result<T, StoreError> {
    match r {
        Ok(v) => Ok(v),
        Err(TransactionError::Abort(Abort::Store(e))) => Err(e),
        Err(TransactionError::Abort(Abort::Outcome(o))) => Err(StoreError::Backend(format!("unexpected {o:?}"))),
        Err(TransactionError::Storage(e)) => Err(backend(e)),
    }
}

fn instance_id(db: &sled::Db) -> Result<String, StoreError> {
    if let Some(v) = db.get("instance").map_err(backend)? {
        return String::from_utf8(v.to_vec())
            .map_err(|e| StoreError::Corrupt { what: "instance id", why: e.to_string() });
    }
    let mut bytes = [0u8; 8];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let id = hex::encode(bytes);
    db.insert("instance", id.as_bytes()).map_err(backend)?;
    db.flush().map_err(backend)?;
    Ok(id)
}

/// Expiry walks many records on a runtime thread: let other tasks run between chunks of them.
async fn yield_sometimes(i: usize) {
    if i % 256 == 255 {
        tokio::task::yield_now().await;
    }
}

/// Makes every claimed message due again at once. sled allows one process per data dir, so any claim found
/// at open belongs to a process that died holding it; its message need not wait for the lease to end.
fn release_claims(db: &sled::Db) -> Result<(), StoreError> {
    let (outbox, due) = (db.open_tree("outbox").map_err(backend)?, db.open_tree("outbox_due").map_err(backend)?);
    for kv in outbox.iter() {
        let (key, bytes) = kv.map_err(backend)?;
        let mut sms: QueuedSms = decode("outbox", &bytes)?;
        if sms.claimed_by.take().is_none() {
            continue;
        }
        due.remove(at_key(sms.due_at, &key)).map_err(backend)?;
        sms.due_at = sms.queued_at;
        due.insert(at_key(sms.due_at, &key), &[]).map_err(backend)?;
        outbox.insert(&key, encode(&sms)?).map_err(backend)?;
    }
    Ok(())
}

fn group_commit(db: sled::Db, rx: mpsc::Receiver<Waiter>, flushes: Arc<AtomicU64>) {
    while let Ok(first) = rx.recv() {
        let mut waiters = vec![first];
        waiters.extend(rx.try_iter());
        let started = std::time::Instant::now();
        let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
        crate::metrics::METRICS.flush_seconds.observe(started.elapsed().as_secs_f64());
        flushes.fetch_add(1, Ordering::SeqCst);
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

/// Writes one (encoded) audit record under a fresh id, marked unexported, inside a transaction.
fn add_audit(audit: &TransactionalTree, unexported: &TransactionalTree, record: &[u8]) -> Result<(), TxError> {
    let id = audit.generate_id()?.to_be_bytes();
    audit.insert(&id, record)?;
    unexported.insert(&id, &[])?;
    Ok(())
}

/// Applies one counted event inside a commit transaction.
fn bump(counters: &TransactionalTree, due: &TransactionalTree, b: &limits::Bump, now: Millis) -> Result<(), TxError> {
    let key = b.key.as_str().as_bytes();
    let old: Option<Tally> = match counters.get(key)? {
        Some(bytes) => Some(decode("counter", &bytes).map_err(abort_store)?),
        None => None,
    };
    let current = old.clone().unwrap_or_default();
    let (next, effect) = match limits::apply(&b.rule, &current, now) {
        Ok(v) => v,
        Err(limit) => return Err(abort(CommitOutcome::LimitReached(limit))),
    };
    if effect != b.expect {
        return Err(abort(CommitOutcome::Conflict));
    }
    if let Some(old) = &old {
        due.remove(at_key(old.expires_at, key))?;
    }
    if next.is_empty() {
        counters.remove(key)?;
    } else {
        due.insert(at_key(next.expires_at, key), &[])?;
        counters.insert(key, encode(&next).map_err(abort_store)?)?;
    }
    Ok(())
}

#[async_trait]
impl Store for SledStore {
    fn instance(&self) -> &str {
        &self.instance
    }

    async fn load(&self, phone: &Msisdn) -> Result<Option<(Conversation, Version)>, StoreError> {
        match self.conversations.get(phone.as_str().as_bytes()).map_err(backend)? {
            Some(bytes) => decode_conv(&bytes).map(|r| Some((r.conversation, r.version))),
            None => Ok(None),
        }
    }

    async fn commit(&self, expect: Option<Version>, c: Commit) -> Result<CommitOutcome, StoreError> {
        if c.activate.is_none()
            && c.account_update.is_none()
            && c.sms.is_empty()
            && c.audit.is_empty()
            && c.bumps.is_empty()
        {
            let tx_started = std::time::Instant::now();
            let result = self.commit_conversation_only(expect, &c);
            crate::metrics::METRICS.transaction_seconds.observe(tx_started.elapsed().as_secs_f64());
            let version = match result? {
                CommitOutcome::Committed(v) => v,
                other => return Ok(other),
            };
            self.durable().await?;
            return Ok(CommitOutcome::Committed(version));
        }
        let account = match &c.activate {
            Some(a) => Some((a.national_id.as_str().as_bytes().to_vec(), encode(a)?)),
            None => None,
        };
        let audit: Vec<Vec<u8>> = c.audit.iter().map(encode).collect::<Result<_, _>>()?;
        let phone = c.phone.as_str().as_bytes().to_vec();
        let trees = (
            &self.conversations,
            &self.conv_fresh,
            &self.conv_idle,
            &self.accounts,
            &self.outbox,
            &self.outbox_due,
            &self.audit,
            &self.audit_unexported,
            &self.counters,
            &self.counter_due,
        );
        let tx_started = std::time::Instant::now();
        let result = trees.transaction(
            |(conv, fresh, idle, accounts, outbox, outbox_due, audit_tree, unexported, counters, counter_due)| {
                let current = match conv.get(&phone)? {
                    Some(bytes) => Some(decode_conv(&bytes).map_err(abort_store)?),
                    None => None,
                };
                if current.as_ref().map(|r| r.version) != expect {
                    return Err(abort(CommitOutcome::Conflict));
                }
                for b in &c.bumps {
                    bump(counters, counter_due, b, c.at)?;
                }
                if let Some((key, bytes)) = &account {
                    if accounts.get(key)?.is_some() {
                        return Err(abort(CommitOutcome::AccountExists));
                    }
                    accounts.insert(key.as_slice(), bytes.as_slice())?;
                }
                if let Some(u) = &c.account_update {
                    let key = u.national_id.as_str().as_bytes();
                    let mut account: Option<Account> = match accounts.get(key)? {
                        Some(bytes) => Some(decode("account", &bytes).map_err(abort_store)?),
                        None => None,
                    };
                    match u.apply(account.as_mut()) {
                        None => return Err(abort(CommitOutcome::Conflict)),
                        Some(true) => {
                            if let Some(a) = &account {
                                accounts.insert(key, encode(a).map_err(abort_store)?)?;
                            }
                        }
                        Some(false) => {}
                    }
                }
                let (filed, refiled) = ConvRecord::filing(current.as_ref(), c.at);
                if let Some(old) = current.as_ref().filter(|_| refiled) {
                    let index = if old.swept { idle } else { fresh };
                    index.remove(at_key(old.indexed_at, &phone))?;
                }
                let version = conv.generate_id()? + 1;
                let record = ConvRecord::committed(version, filed, &c);
                conv.insert(phone.as_slice(), encode_conv(record).map_err(abort_store)?)?;
                // Written even when not re-filed: expiry may have taken the entry away meanwhile.
                fresh.insert(at_key(filed, &phone), &[])?;
                for sms in &c.sms {
                    let id = outbox.generate_id()?;
                    let record = QueuedSms {
                        id,
                        to: sms.to.clone(),
                        purpose: sms.purpose,
                        sealed: sms.sealed.clone(),
                        queued_at: c.at,
                        attempts: 0,
                        give_up_at: sms.give_up_at,
                        last_error: None,
                        due_at: c.at,
                        claimed_by: None,
                        in_flight: false,
                    };
                    outbox.insert(&id.to_be_bytes(), encode(&record).map_err(abort_store)?)?;
                    outbox_due.insert(at_key(c.at, &id.to_be_bytes()), &[])?;
                }
                for a in &audit {
                    add_audit(audit_tree, unexported, a)?;
                }
                Ok(version)
            },
        );
        crate::metrics::METRICS.transaction_seconds.observe(tx_started.elapsed().as_secs_f64());
        let version = match result {
            Ok(v) => v,
            Err(TransactionError::Abort(Abort::Outcome(o))) => return Ok(o),
            Err(TransactionError::Abort(Abort::Store(e))) => return Err(e),
            Err(TransactionError::Storage(e)) => return Err(backend(e)),
        };
        self.durable().await?;
        Ok(CommitOutcome::Committed(version))
    }

    async fn durable(&self) -> Result<(), StoreError> {
        self.wait_durable().await.map_err(backend)?.map_err(StoreError::Backend)
    }

    async fn citizen(&self, id: &NationalId) -> Result<Option<Citizen>, StoreError> {
        self.get(&self.citizens, "citizen", id.as_str().as_bytes())
    }

    async fn account(&self, id: &NationalId) -> Result<Option<Account>, StoreError> {
        self.get(&self.accounts, "account", id.as_str().as_bytes())
    }

    async fn tally(&self, key: &CounterKey) -> Result<Tally, StoreError> {
        Ok(self.get(&self.counters, "counter", key.as_str().as_bytes())?.unwrap_or_default())
    }

    async fn upsert_citizens(&self, citizens: &[Citizen]) -> Result<(), StoreError> {
        // sled applies a batch under its global write lock, which every hop's read and swap waits for: the
        // rows go in batches of [`CITIZEN_BATCH`] so a registry import never holds up hops for long.
        for (i, chunk) in citizens.chunks(CITIZEN_BATCH).enumerate() {
            if i > 0 {
                tokio::task::yield_now().await;
            }
            let mut batch = sled::Batch::default();
            for citizen in chunk {
                // Every row is written: the import compared them with the store and passes only those that
                // differ (a read here first took a tree descent per row, a tenth of a 10M import).
                batch.insert(citizen.national_id.as_str().as_bytes(), encode(citizen)?);
            }
            self.citizens.apply_batch(batch).map_err(backend)?;
        }
        Ok(())
    }

    async fn citizens_after(&self, after: Option<&NationalId>, n: usize) -> Result<Vec<Citizen>, StoreError> {
        let range = match after {
            Some(id) => self
                .citizens
                .range::<&[u8], _>((std::ops::Bound::Excluded(id.as_str().as_bytes()), std::ops::Bound::Unbounded)),
            None => self.citizens.iter(),
        };
        let mut out = Vec::new();
        for (i, entry) in range.take(n).enumerate() {
            let (_, bytes) = entry.map_err(backend)?;
            out.push(decode("citizen", &bytes)?);
            yield_sometimes(i).await;
        }
        Ok(out)
    }

    async fn remove_citizens(&self, ids: &[NationalId], audit: &[AuditRecord]) -> Result<usize, StoreError> {
        let audit: Vec<Vec<u8>> = audit.iter().map(encode).collect::<Result<_, _>>()?;
        let trees = (&self.citizens, &self.audit, &self.audit_unexported);
        let marked = trees.transaction(|(citizens, audit_tree, unexported)| {
            let mut marked = 0;
            for id in ids {
                let key = id.as_str().as_bytes();
                let Some(bytes) = citizens.get(key)? else { continue };
                let mut c: Citizen = decode("citizen", &bytes).map_err(abort_store)?;
                if c.status == CitizenStatus::Removed {
                    continue;
                }
                c.status = CitizenStatus::Removed;
                citizens.insert(key, encode(&c).map_err(abort_store)?)?;
                marked += 1;
            }
            for a in &audit {
                add_audit(audit_tree, unexported, a)?;
            }
            Ok(marked)
        });
        let marked = tx_result(marked)?;
        self.durable().await?;
        Ok(marked)
    }

    async fn conversations_of(&self, id: &NationalId) -> Result<Vec<(Msisdn, Conversation, Version)>, StoreError> {
        let mut out = Vec::new();
        for (i, entry) in self.conversations.iter().enumerate() {
            let (key, bytes) = entry.map_err(backend)?;
            let r = decode_conv(&bytes)?;
            if r.conversation.session.activation_of(id).is_some() {
                let phone = std::str::from_utf8(&key)
                    .ok()
                    .and_then(|p| Msisdn::parse(p).ok())
                    .ok_or_else(|| StoreError::Corrupt { what: "conversation key", why: "not a phone".into() })?;
                out.push((phone, r.conversation, r.version));
            }
            yield_sometimes(i).await;
        }
        Ok(out)
    }

    async fn reset_counters(&self, keys: &[CounterKey], audit: &[AuditRecord]) -> Result<usize, StoreError> {
        let audit: Vec<Vec<u8>> = audit.iter().map(encode).collect::<Result<_, _>>()?;
        let trees = (&self.counters, &self.counter_due, &self.audit, &self.audit_unexported);
        let cleared = trees.transaction(|(counters, due, audit_tree, unexported)| {
            let mut cleared = 0;
            for key in keys {
                let key = key.as_str().as_bytes();
                let Some(bytes) = counters.remove(key)? else { continue };
                let old: Tally = decode("counter", &bytes).map_err(abort_store)?;
                due.remove(at_key(old.expires_at, key))?;
                cleared += 1;
            }
            for a in &audit {
                add_audit(audit_tree, unexported, a)?;
            }
            Ok(cleared)
        });
        let cleared = tx_result(cleared)?;
        self.durable().await?;
        Ok(cleared)
    }

    async fn claim_outbox(
        &self,
        owner: &str,
        n: usize,
        lease: Duration,
        now: Millis,
    ) -> Result<Vec<QueuedSms>, StoreError> {
        let mut claimed = Vec::new();
        let end = at_key(Millis(now.0.saturating_add(1)), &[]);
        let due: Vec<sled::IVec> =
            self.outbox_due.range(..end).keys().take(n).collect::<Result<_, _>>().map_err(backend)?;
        for index_key in due {
            let Some((_, id)) = split_at_key(&index_key) else { continue };
            let id = id.to_vec();
            let until = now.plus(lease);
            let got = (&self.outbox, &self.outbox_due).transaction(|(outbox, outbox_due)| {
                if outbox_due.remove(&*index_key)?.is_none() {
                    return Ok(None); // claimed by someone else meanwhile
                }
                let Some(bytes) = outbox.get(&id)? else { return Ok(None) };
                let mut sms: QueuedSms = decode("outbox", &bytes).map_err(abort_store)?;
                sms.attempts = sms.attempts.saturating_add(1);
                sms.due_at = until;
                sms.claimed_by = Some(owner.to_string());
                outbox.insert(id.as_slice(), encode(&sms).map_err(abort_store)?)?;
                outbox_due.insert(at_key(until, &id), &[])?;
                Ok(Some(sms))
            });
            if let Some(sms) = tx_result(got)? {
                claimed.push(sms);
            }
        }
        Ok(claimed)
    }

    async fn outbox_sent(&self, id: u64) -> Result<(), StoreError> {
        let key = id.to_be_bytes();
        let done = (&self.outbox, &self.outbox_due).transaction(|(outbox, outbox_due)| {
            if let Some(bytes) = outbox.remove(&key)? {
                let sms: QueuedSms = decode("outbox", &bytes).map_err(abort_store)?;
                outbox_due.remove(at_key(sms.due_at, &key))?;
            }
            Ok(())
        });
        tx_result(done)
    }

    async fn outbox_retry(&self, owner: &str, id: u64, at: Millis, why: &str) -> Result<(), StoreError> {
        let key = id.to_be_bytes();
        let done = (&self.outbox, &self.outbox_due).transaction(|(outbox, outbox_due)| {
            let Some(bytes) = outbox.get(key)? else { return Ok(()) };
            let mut sms: QueuedSms = decode("outbox", &bytes).map_err(abort_store)?;
            if sms.claimed_by.as_deref() != Some(owner) {
                return Ok(());
            }
            outbox_due.remove(at_key(sms.due_at, &key))?;
            sms.due_at = at;
            sms.claimed_by = None;
            sms.in_flight = false;
            sms.last_error = Some(why.to_string());
            outbox.insert(&key, encode(&sms).map_err(abort_store)?)?;
            outbox_due.insert(at_key(at, &key), &[])?;
            Ok(())
        });
        tx_result(done)
    }

    async fn outbox_sending(&self, owner: &str, id: u64) -> Result<bool, StoreError> {
        let key = id.to_be_bytes();
        let done = self.outbox.transaction(|outbox| {
            let Some(bytes) = outbox.get(key)? else { return Ok(false) };
            let mut sms: QueuedSms = decode("outbox", &bytes).map_err(abort_store)?;
            if sms.claimed_by.as_deref() != Some(owner) {
                return Ok(false);
            }
            if !sms.in_flight {
                sms.in_flight = true;
                outbox.insert(&key, encode(&sms).map_err(abort_store)?)?;
            }
            Ok(true)
        });
        let marked = tx_result(done)?;
        if marked {
            // The send that follows cannot be undone: the mark must survive a crash during it.
            self.durable().await?;
        }
        Ok(marked)
    }

    async fn outbox_park(&self, owner: &str, id: u64, until: Millis, why: &str) -> Result<(), StoreError> {
        let key = id.to_be_bytes();
        let done = (&self.outbox, &self.outbox_due).transaction(|(outbox, outbox_due)| {
            let Some(bytes) = outbox.get(key)? else { return Ok(()) };
            let mut sms: QueuedSms = decode("outbox", &bytes).map_err(abort_store)?;
            if sms.claimed_by.as_deref() != Some(owner) {
                return Ok(());
            }
            outbox_due.remove(at_key(sms.due_at, &key))?;
            sms.due_at = until;
            sms.claimed_by = None;
            sms.last_error = Some(why.to_string());
            outbox.insert(&key, encode(&sms).map_err(abort_store)?)?;
            outbox_due.insert(at_key(until, &key), &[])?;
            Ok(())
        });
        tx_result(done)
    }

    async fn delivery_report(&self, id: u64, audit: AuditRecord) -> Result<bool, StoreError> {
        let key = id.to_be_bytes();
        let audit_bytes = encode(&audit)?;
        let trees = (&self.outbox, &self.outbox_due, &self.audit, &self.audit_unexported);
        let done = trees.transaction(|(outbox, outbox_due, audit_tree, unexported)| {
            let removed = match outbox.remove(&key)? {
                Some(bytes) => {
                    let sms: QueuedSms = decode("outbox", &bytes).map_err(abort_store)?;
                    outbox_due.remove(at_key(sms.due_at, &key))?;
                    true
                }
                None => false,
            };
            add_audit(audit_tree, unexported, &audit_bytes)?;
            Ok(removed)
        });
        let removed = tx_result(done)?;
        self.durable().await?;
        Ok(removed)
    }

    async fn outbox_failed(&self, owner: &str, id: u64, why: &str, audit: AuditRecord) -> Result<(), StoreError> {
        let key = id.to_be_bytes();
        let audit_bytes = encode(&audit)?;
        let trees = (&self.outbox, &self.outbox_due, &self.outbox_failed, &self.audit, &self.audit_unexported);
        let done = trees.transaction(|(outbox, outbox_due, failed, audit_tree, unexported)| {
            let Some(bytes) = outbox.get(key)? else { return Ok(false) };
            let sms: QueuedSms = decode("outbox", &bytes).map_err(abort_store)?;
            if sms.claimed_by.as_deref() != Some(owner) {
                return Ok(false);
            }
            outbox.remove(&key)?;
            outbox_due.remove(at_key(sms.due_at, &key))?;
            let record = FailedSms { sms, failed_at: audit.at, why: why.to_string() };
            failed.insert(at_key(audit.at, &key), encode(&record).map_err(abort_store)?)?;
            add_audit(audit_tree, unexported, &audit_bytes)?;
            Ok(true)
        });
        let written = tx_result(done)?;
        if written {
            self.durable().await?;
        }
        Ok(())
    }

    async fn outbox_len(&self) -> Result<usize, StoreError> {
        Ok(self.outbox.len())
    }

    async fn failed_sms(&self, n: usize) -> Result<Vec<FailedSms>, StoreError> {
        self.outbox_failed
            .iter()
            .values()
            .take(n)
            .map(|v| v.map_err(backend).and_then(|v| decode("failed sms", &v)))
            .collect()
    }

    async fn expire(&self, now: Millis, keep: &Retention) -> Result<Expired, StoreError> {
        let mut out = Expired::default();
        let before = |d: Duration| Millis(now.0.saturating_sub(d.as_millis() as u64));
        for (index, sweep) in [(&self.conv_fresh, true), (&self.conv_idle, false)] {
            let due = before(if sweep { keep.replies } else { keep.conversations });
            let end = at_key(due, &[]);
            let keys: Vec<sled::IVec> = index.range(..end).keys().collect::<Result<_, _>>().map_err(backend)?;
            for (i, k) in keys.into_iter().enumerate() {
                yield_sometimes(i).await;
                if self.expire_conversation(&k, sweep, due)? {
                    if sweep {
                        out.swept += 1;
                    } else {
                        out.conversations += 1;
                    }
                }
            }
        }
        let end = at_key(Millis(now.0.saturating_add(1)), &[]);
        let keys: Vec<sled::IVec> = self.counter_due.range(..end).keys().collect::<Result<_, _>>().map_err(backend)?;
        for (i, k) in keys.into_iter().enumerate() {
            yield_sometimes(i).await;
            let Some((at, name)) = split_at_key(&k) else { continue };
            let name = name.to_vec();
            let done = (&self.counters, &self.counter_due).transaction(|(counters, due)| {
                due.remove(&*k)?;
                let Some(bytes) = counters.get(&name)? else { return Ok(false) };
                let tally: Tally = decode("counter", &bytes).map_err(abort_store)?;
                if tally.expires_at != at || tally.expires_at > now {
                    return Ok(false);
                }
                counters.remove(name.as_slice())?;
                Ok(true)
            });
            if tx_result(done)? {
                out.counters += 1;
            }
        }
        let end = at_key(before(keep.failed_sms), &[]);
        let keys: Vec<sled::IVec> =
            self.outbox_failed.range(..end).keys().collect::<Result<_, _>>().map_err(backend)?;
        for k in keys {
            if self.outbox_failed.remove(&k).map_err(backend)?.is_some() {
                out.failed_sms += 1;
            }
        }
        Ok(out)
    }

    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        let encoded: Vec<Vec<u8>> = records.iter().map(encode).collect::<Result<_, _>>()?;
        let done = (&self.audit, &self.audit_unexported).transaction(|(audit_tree, unexported)| {
            for r in &encoded {
                add_audit(audit_tree, unexported, r)?;
            }
            Ok(())
        });
        tx_result(done)?;
        self.durable().await
    }

    async fn audit_after(&self, after: Option<u64>, n: usize) -> Result<Vec<(u64, AuditRecord)>, StoreError> {
        let start = after.map(|a| a.saturating_add(1)).unwrap_or(0);
        self.audit
            .range(start.to_be_bytes()..)
            .take(n)
            .map(|kv| {
                let (k, v) = kv.map_err(backend)?;
                let id = id_of(&k).ok_or(StoreError::Corrupt { what: "audit key", why: "short".into() })?;
                Ok((id, decode("audit", &v)?))
            })
            .collect()
    }

    async fn audit_unexported(&self, n: usize) -> Result<Vec<(u64, AuditRecord)>, StoreError> {
        let mut out = Vec::new();
        for key in self.audit_unexported.iter().keys() {
            if out.len() >= n {
                break;
            }
            let key = key.map_err(backend)?;
            let id = id_of(&key).ok_or(StoreError::Corrupt { what: "unexported audit key", why: "short".into() })?;
            // Both are written in one transaction and audit records are never removed: a mark without its
            // record is damage, not a state to skip over.
            let record = self.get(&self.audit, "audit", &key)?.ok_or(StoreError::Corrupt {
                what: "unexported audit record",
                why: format!("audit id {id} is marked unexported but not in the audit tree"),
            })?;
            out.push((id, record));
        }
        Ok(out)
    }

    async fn audit_exported(&self, ids: &[u64]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for id in ids {
            batch.remove(&id.to_be_bytes());
        }
        self.audit_unexported.apply_batch(batch).map_err(backend)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Session, Slots};
    use crate::flow::Lang;

    fn commit_of(n: u32) -> Commit {
        let at = Millis(1_795_996_800_000);
        let phone = Msisdn::parse(&format!("+8491{n:07}")).unwrap();
        let session = Session {
            lang: Lang::Vi,
            state: "menu".into(),
            tries: 0,
            updated_at: at,
            slots: Slots::default(),
            leaving: false,
            parked: None,
        };
        Commit {
            at,
            phone,
            conversation: Conversation::new(session),
            activate: None,
            sms: Vec::new(),
            audit: Vec::new(),
            bumps: Vec::new(),
            account_update: None,
        }
    }

    /// Copies the files of a live database, as a crash would leave them.
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let target = to.join(entry.file_name());
            if entry.file_type().unwrap().is_dir() {
                copy_dir(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), target).unwrap();
            }
        }
    }

    /// The in-flight mark is what stops a message whose send a crash interrupted from being sent twice:
    /// it must be on disk when `outbox_sending` returns, and survive the release of claims at open.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_marked_in_flight_is_on_disk_when_marked_and_still_in_flight_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(&dir.path().join("db")).unwrap();
        let mut c = commit_of(1);
        c.sms.push(super::super::NewSms {
            to: c.phone.clone(),
            purpose: crate::engine::SmsPurpose::Otp,
            sealed: b"sealed".to_vec(),
            give_up_at: c.at.plus(Duration::from_secs(180)),
        });
        let at = c.at;
        assert!(matches!(store.commit(None, c).await.unwrap(), CommitOutcome::Committed(_)));
        let claimed = store.claim_outbox("dead", 10, Duration::from_secs(30), at).await.unwrap();
        assert!(store.outbox_sending("dead", claimed[0].id).await.unwrap());

        // What is on disk now (nothing flushed since the mark returned), reopened as after kill -9.
        let copy = tempfile::tempdir().unwrap();
        copy_dir(&dir.path().join("db"), &copy.path().join("db"));
        let reopened = SledStore::open(&copy.path().join("db")).unwrap();
        let again = reopened.claim_outbox("next", 10, Duration::from_secs(30), at).await.unwrap();
        assert_eq!(again.len(), 1, "the dead process's claim is released at open");
        assert!(again[0].in_flight, "the mark survived the crash");
    }

    /// The tag is a plain field now, but the bytes are those the internally tagged enum wrote and read: a
    /// store written before reads, and one written now reads in a build from before.
    #[test]
    fn a_stored_conversation_keeps_the_bytes_of_the_tagged_envelope_and_refuses_another_tag() {
        #[derive(Serialize, Deserialize)]
        #[serde(tag = "v")]
        enum Before {
            #[serde(rename = "2")]
            V2 { version: Version, indexed_at: Millis, swept: bool, conversation: Conversation },
        }
        let c = commit_of(1).conversation;
        let record = ConvRecord {
            v: V2,
            version: 7,
            indexed_at: Millis(5),
            at: Millis(0),
            swept: true,
            conversation: c.clone(),
        };
        let now = encode_conv(record).unwrap();
        let before =
            serde_json::to_vec(&Before::V2 { version: 7, indexed_at: Millis(5), swept: true, conversation: c.clone() })
                .unwrap();
        assert_eq!(String::from_utf8_lossy(&now), String::from_utf8_lossy(&before));
        let back = decode_conv(&before).unwrap();
        assert_eq!((back.version, back.indexed_at, back.swept, back.conversation), (7, Millis(5), true, c));
        let Before::V2 { version, .. } = serde_json::from_slice::<Before>(&now).unwrap();
        assert_eq!(version, 7);
        let other = String::from_utf8_lossy(&now).replacen(r#""v":"2""#, r#""v":"3""#, 1);
        assert!(matches!(decode_conv(other.as_bytes()), Err(StoreError::Corrupt { .. })));
    }

    /// Commits answer only once durable, and concurrent ones wait for the same flush: with one flush per
    /// commit (or a commit flushing on its own, uncounted), this fails.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sixty_four_concurrent_commits_share_group_flushes_and_are_on_disk_when_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(&dir.path().join("db")).unwrap());
        let before = store.flushes();
        let commits: Vec<_> = (0..64)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(async move { store.commit(None, commit_of(n)).await })
            })
            .collect();
        for c in commits {
            assert!(matches!(c.await.unwrap().unwrap(), CommitOutcome::Committed(_)));
        }
        let flushes = store.flushes() - before;
        assert!((1..64).contains(&flushes), "{flushes} flushes for 64 commits");

        // What is on disk now (the store still open, nothing flushed since) holds every commit.
        let copy = tempfile::tempdir().unwrap();
        copy_dir(&dir.path().join("db"), &copy.path().join("db"));
        let reopened = SledStore::open(&copy.path().join("db")).unwrap();
        for n in 0..64 {
            assert!(reopened.load(&commit_of(n).phone).await.unwrap().is_some(), "commit {n} is not on disk");
        }
    }
}
