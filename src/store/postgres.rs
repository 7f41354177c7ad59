//! The store on PostgreSQL, for several instances on one database (`--store postgres://…`): the same
//! contract as sled ([`super`]), held across processes by the database instead of one process's lock.
//!
//! - **Schema.** The migrations in `migrations/postgres/` are built in and applied at start, in order, each
//!   in its own transaction, under a session advisory lock so instances starting at once migrate once. The
//!   version is kept in `kichhoat_meta`; a database of a newer schema than this build knows is refused.
//! - **Commit.** One transaction (READ COMMITTED, row locks): the conversation's row is locked
//!   (`SELECT … FOR UPDATE`) and its version compared, so a phone's turns are serialized whichever instance
//!   runs them and a stale one is a `Conflict`; the counters it bumps are locked in key order and the rules
//!   applied to what they hold then; a second insert of one row (two first turns of a phone, two first
//!   events of a counter, two activations of an ID) fails on the primary key and is a `Conflict` (or
//!   `AccountExists`), as are a deadlock or a serialization failure the database reports. Nothing is
//!   written unless all of it is.
//! - **Durability.** Every session runs with `synchronous_commit = on` (unless the server is already at
//!   `on` or `remote_apply`): a commit returns once its WAL is flushed, so [`Store::durable`] has nothing
//!   left to wait for.
//! - **Outbox.** Claimed with `FOR UPDATE SKIP LOCKED` and a lease (`due_at` moves to the lease's end), so
//!   each message goes to one instance's worker and a dead instance's claims are taken over once their
//!   lease ends; the claim's owner alone may then mark, reschedule or fail it.
//! - **Expiry.** Walks the time indexes (`fresh_at`, `idle_at`, `expires_at`, `failed_at`) in batches
//!   locked with `SKIP LOCKED`, so instances sweeping at once neither wait on each other nor on a turn.
//! - **Audit.** Records are shared; those not yet in an audit trail file are claimed by the instance that
//!   drains them (for [`AUDIT_CLAIM`], the database's clock), so each lands in one instance's file, and
//!   a dead instance's claims pass to the others.
//!
//! Only hashes and sealed SMS bodies reach the tables (the callers'), as with sled. The instances share the
//! master key (`--key-file`); the database keeps a fingerprint of it ([`PgStore::check_key`]) and refuses
//! an instance started with another.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row};
use tracing::{info, warn};

use super::{
    AuditRecord, Commit, CommitOutcome, Conversation, Expired, FailedSms, QueuedSms, Retention, Store, StoreError,
    Version,
};
use crate::clock::Millis;
use crate::domain::{Msisdn, NationalId};
use crate::engine::{Account, Citizen, CitizenStatus, SmsPurpose};
use crate::limits::{self, CounterKey, Tally};

mod migrate;

pub use migrate::SCHEMA;

/// Connections per instance: turns, engine reads, the delivery worker and the sweeper share them.
const POOL_SIZE: usize = 16;
/// How long waiting for, or opening, a connection may take before the turn is a fault.
const POOL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an instance's claim on unexported audit records lasts (far longer than one drain's fsync).
pub const AUDIT_CLAIM: Duration = Duration::from_secs(60);
/// Rows per expiry transaction.
const EXPIRE_BATCH: i64 = 500;
/// Citizens per upsert statement.
const UPSERT_BATCH: usize = 500;

/// What a transaction of this store stopped on.
enum Fail {
    Pg(tokio_postgres::Error),
    Store(StoreError),
}

impl From<tokio_postgres::Error> for Fail {
    fn from(e: tokio_postgres::Error) -> Fail {
        Fail::Pg(e)
    }
}

impl From<StoreError> for Fail {
    fn from(e: StoreError) -> Fail {
        Fail::Store(e)
    }
}

impl From<Fail> for StoreError {
    fn from(f: Fail) -> StoreError {
        match f {
            Fail::Pg(e) => backend(e),
            Fail::Store(e) => e,
        }
    }
}

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(format!("postgres: {e}"))
}

/// A refusal the database makes when two transactions race for one row: the turn runs again.
fn is_race(e: &tokio_postgres::Error) -> bool {
    matches!(
        e.code(),
        Some(c) if *c == SqlState::UNIQUE_VIOLATION
            || *c == SqlState::T_R_SERIALIZATION_FAILURE
            || *c == SqlState::T_R_DEADLOCK_DETECTED
    )
}

fn json<T: Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(backend)
}

fn parse<T: DeserializeOwned>(what: &'static str, text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt { what, why: e.to_string() })
}

/// Times and ids are BIGINT: u64 values past i64 do not occur (milliseconds until the year 292 million).
fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn small(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn purpose_name(p: SmsPurpose) -> Result<String, StoreError> {
    match serde_json::to_value(p).map_err(backend)? {
        serde_json::Value::String(s) => Ok(s),
        other => Err(backend(format!("SMS purpose encoded as {other}"))),
    }
}

/// The outbox columns, in the order [`queued`] reads them.
const OUTBOX_COLUMNS: &str =
    "o.id, o.recipient, o.purpose, o.sealed, o.queued_at, o.give_up_at, o.attempts, o.last_error, o.due_at, \
     o.claimed_by, o.in_flight";

fn queued(row: &Row) -> Result<QueuedSms, StoreError> {
    let to: String = row.get(1);
    let purpose: String = row.get(2);
    Ok(QueuedSms {
        id: small(row.get(0)),
        to: Msisdn::try_from(to).map_err(|e| StoreError::Corrupt { what: "outbox recipient", why: e.to_string() })?,
        purpose: serde_json::from_value(serde_json::Value::String(purpose))
            .map_err(|e| StoreError::Corrupt { what: "outbox purpose", why: e.to_string() })?,
        sealed: row.get(3),
        queued_at: Millis(small(row.get(4))),
        give_up_at: Millis(small(row.get(5))),
        attempts: u32::try_from(row.get::<_, i32>(6)).unwrap_or(0),
        last_error: row.get(7),
        due_at: Millis(small(row.get(8))),
        claimed_by: row.get(9),
        in_flight: row.get(10),
    })
}

/// The PostgreSQL URL as given, for messages: without a password.
pub fn display_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (auth, host) = match rest.rsplit_once('@') {
                Some((auth, host)) => (Some(auth), host),
                None => (None, rest),
            };
            let host = host.split('?').next().unwrap_or(host);
            match auth {
                Some(auth) => {
                    let user = auth.split(':').next().unwrap_or(auth);
                    format!("{scheme}://{user}@{host}")
                }
                None => format!("{scheme}://{host}"),
            }
        }
        None => "(not a URL)".into(),
    }
}

pub struct PgStore {
    pool: Pool,
    /// The database's random id (made by the first instance that migrated it): shared by every instance,
    /// as the outbox and audit ids it prefixes are.
    instance: String,
    /// This process's name for its claims on unexported audit records.
    exporter: String,
    /// The server has `synchronous_commit`, so a transaction may set it off ([`PgStore::unhurried`]).
    relaxable: bool,
}

impl PgStore {
    /// Connects to `url` (`postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?…]`, or the key=value form), migrates
    /// the database to [`SCHEMA`] and opens the pool.
    pub async fn open(url: &str) -> Result<PgStore, StoreError> {
        let mut config: tokio_postgres::Config =
            url.parse().map_err(|e| backend(format!("the database URL {}: {e}", display_url(url))))?;
        if config.get_application_name().is_none() {
            config.application_name("kichhoat");
        }
        config.connect_timeout(POOL_TIMEOUT);
        let (mut client, connection) = config.connect(NoTls).await.map_err(backend)?;
        let driver = tokio::spawn(connection);
        // A server without the setting (CockroachDB: commits are durable through Raft) is taken as it is.
        let setting: String = match client.query_one("SHOW synchronous_commit", &[]).await {
            Ok(row) => row.get(0),
            Err(e) => {
                warn!(error = %e, "the database has no synchronous_commit setting; relying on its own durability");
                "unknown".into()
            }
        };
        if !matches!(setting.as_str(), "on" | "remote_apply" | "unknown") {
            // A reply goes out only once its commit is on disk: never `off` or `local` for this service.
            let options = match config.get_options() {
                Some(o) => format!("{o} -c synchronous_commit=on"),
                None => "-c synchronous_commit=on".to_string(),
            };
            config.options(&options);
        }
        let instance = migrate::to_current(&mut client).await;
        drop(client);
        let _ = driver.await;
        let instance = instance?;
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(POOL_TIMEOUT))
            .create_timeout(Some(POOL_TIMEOUT))
            .recycle_timeout(Some(POOL_TIMEOUT))
            .build()
            .map_err(backend)?;
        let mut bytes = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
        let exporter = format!("{}-{}", std::process::id(), hex::encode(bytes));
        info!(database = %display_url(url), schema = SCHEMA, synchronous_commit = %setting, "postgres store open");
        Ok(PgStore { pool, instance, exporter, relaxable: setting != "unknown" })
    }

    /// As [`PgStore::open`], for a spawned task.
    pub async fn open_owned(url: String) -> Result<PgStore, StoreError> {
        PgStore::open(&url).await
    }

    /// Records `fingerprint` ([`crate::crypto::Crypto::key_check`]) as the database's key, or refuses it when
    /// the database already holds another: instances with different key files would each seal SMS and hash
    /// codes the others cannot open or check.
    pub async fn check_key(&self, fingerprint: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO kichhoat_meta (key, value) VALUES ('key_check', $1) ON CONFLICT (key) DO NOTHING",
                &[&fingerprint],
            )
            .await
            .map_err(backend)?;
        let row =
            client.query_one("SELECT value FROM kichhoat_meta WHERE key = 'key_check'", &[]).await.map_err(backend)?;
        match row.get::<_, String>(0) == fingerprint {
            true => Ok(()),
            false => Err(StoreError::KeyMismatch),
        }
    }

    /// Lets `tx` commit without waiting for its WAL flush: for what need not survive a crash of the
    /// database (an export claim, an export mark: lost, they only make the trail file's writer see records
    /// again, which it recognises), so the audit drain after each turn adds no fsync of its own.
    async fn unhurried(&self, tx: &deadpool_postgres::Transaction<'_>) -> Result<(), Fail> {
        if self.relaxable {
            tx.batch_execute("SET LOCAL synchronous_commit = off").await?;
        }
        Ok(())
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(backend)
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        what: &'static str,
        sql: &str,
        key: &str,
    ) -> Result<Option<T>, StoreError> {
        let client = self.client().await?;
        let st = client.prepare_cached(sql).await.map_err(backend)?;
        match client.query_opt(&st, &[&key]).await.map_err(backend)? {
            Some(row) => Ok(Some(parse(what, row.get(0))?)),
            None => Ok(None),
        }
    }

    async fn begin(client: &mut deadpool_postgres::Client) -> Result<deadpool_postgres::Transaction<'_>, Fail> {
        Ok(client.transaction().await?)
    }
}

/// Ends a transaction by what its body returned: committed on `Ok((true, _))`, rolled back otherwise.
async fn finish<T>(tx: deadpool_postgres::Transaction<'_>, result: Result<(bool, T), Fail>) -> Result<T, Fail> {
    match result {
        Ok((true, v)) => {
            tx.commit().await?;
            Ok(v)
        }
        Ok((false, v)) => {
            tx.rollback().await?;
            Ok(v)
        }
        Err(e) => {
            let _ = tx.rollback().await;
            Err(e)
        }
    }
}

/// Writes one audit record, marked unexported, inside `tx`.
async fn add_audit(tx: &deadpool_postgres::Transaction<'_>, record: &AuditRecord) -> Result<(), Fail> {
    let st = tx
        .prepare_cached(
            "WITH a AS (INSERT INTO kichhoat_audit (id, record) VALUES (nextval('kichhoat_audit_ids'), $1) \
             RETURNING id) INSERT INTO kichhoat_audit_unexported (id) SELECT id FROM a",
        )
        .await?;
    tx.execute(&st, &[&json(record)?]).await?;
    Ok(())
}

/// The conversation, counters, account, outbox and audit writes of one commit, in `tx`.
async fn write_commit(
    tx: &deadpool_postgres::Transaction<'_>,
    expect: Option<Version>,
    c: &Commit,
) -> Result<CommitOutcome, Fail> {
    let phone = c.phone.as_str();
    let st = tx.prepare_cached("SELECT version FROM kichhoat_conversations WHERE phone = $1 FOR UPDATE").await?;
    let current: Option<i64> = tx.query_opt(&st, &[&phone]).await?.map(|r| r.get(0));
    if current.map(small) != expect {
        return Ok(CommitOutcome::Conflict);
    }
    if let Some(outcome) = bump_all(tx, c).await? {
        return Ok(outcome);
    }
    if let Some(a) = &c.activate {
        let st = tx
            .prepare_cached(
                "INSERT INTO kichhoat_accounts (national_id, body) VALUES ($1, $2) ON CONFLICT (national_id) DO NOTHING",
            )
            .await?;
        if tx.execute(&st, &[&a.national_id.as_str(), &json(a)?]).await? == 0 {
            return Ok(CommitOutcome::AccountExists);
        }
    }
    if let Some(u) = &c.account_update {
        let st = tx.prepare_cached("SELECT body FROM kichhoat_accounts WHERE national_id = $1 FOR UPDATE").await?;
        let mut account: Option<Account> = match tx.query_opt(&st, &[&u.national_id.as_str()]).await? {
            Some(row) => Some(parse("account", row.get(0))?),
            None => None,
        };
        match u.apply(account.as_mut()) {
            None => return Ok(CommitOutcome::Conflict),
            Some(false) => {}
            Some(true) => {
                if let Some(a) = &account {
                    let st = tx.prepare_cached("UPDATE kichhoat_accounts SET body = $2 WHERE national_id = $1").await?;
                    tx.execute(&st, &[&u.national_id.as_str(), &json(a)?]).await?;
                }
            }
        }
    }
    let body = json(&c.conversation)?;
    let at = big(c.at.0);
    let st = if current.is_some() {
        tx.prepare_cached(
            "UPDATE kichhoat_conversations SET version = nextval('kichhoat_versions'), fresh_at = $2, \
             idle_at = NULL, body = $3 WHERE phone = $1 RETURNING version",
        )
        .await?
    } else {
        tx.prepare_cached(
            "INSERT INTO kichhoat_conversations (phone, version, fresh_at, idle_at, body) \
             VALUES ($1, nextval('kichhoat_versions'), $2, NULL, $3) RETURNING version",
        )
        .await?
    };
    let version: i64 = tx.query_one(&st, &[&phone, &at, &body]).await?.get(0);
    if !c.sms.is_empty() {
        let st = tx
            .prepare_cached(
                "INSERT INTO kichhoat_outbox (id, recipient, purpose, sealed, queued_at, give_up_at, due_at) \
                 VALUES (nextval('kichhoat_outbox_ids'), $1, $2, $3, $4, $5, $4)",
            )
            .await?;
        for sms in &c.sms {
            let purpose = purpose_name(sms.purpose)?;
            tx.execute(&st, &[&sms.to.as_str(), &purpose, &sms.sealed, &at, &big(sms.give_up_at.0)]).await?;
        }
    }
    for a in &c.audit {
        add_audit(tx, a).await?;
    }
    Ok(CommitOutcome::Committed(small(version)))
}

/// Applies the commit's bumps to its counters, locked in key order; `Some` when a rule refuses.
async fn bump_all(tx: &deadpool_postgres::Transaction<'_>, c: &Commit) -> Result<Option<CommitOutcome>, Fail> {
    if c.bumps.is_empty() {
        return Ok(None);
    }
    let mut keys: Vec<&str> = c.bumps.iter().map(|b| b.key.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    let st = tx
        .prepare_cached("SELECT key, tally FROM kichhoat_counters WHERE key = ANY($1) ORDER BY key FOR UPDATE")
        .await?;
    let mut stored: HashMap<String, Tally> = HashMap::new();
    for row in tx.query(&st, &[&keys]).await? {
        stored.insert(row.get(0), parse("counter", row.get(1))?);
    }
    let mut next: BTreeMap<&str, Tally> = BTreeMap::new();
    for b in &c.bumps {
        let key = b.key.as_str();
        let current = next.get(key).or_else(|| stored.get(key)).cloned().unwrap_or_default();
        let (tally, effect) = match limits::apply(&b.rule, &current, c.at) {
            Ok(v) => v,
            Err(limit) => return Ok(Some(CommitOutcome::LimitReached(limit))),
        };
        if effect != b.expect {
            return Ok(Some(CommitOutcome::Conflict));
        }
        next.insert(key, tally);
    }
    for (key, tally) in next {
        match (stored.contains_key(key), tally.is_empty()) {
            (true, true) => {
                let st = tx.prepare_cached("DELETE FROM kichhoat_counters WHERE key = $1").await?;
                tx.execute(&st, &[&key]).await?;
            }
            (true, false) => {
                let st = tx
                    .prepare_cached("UPDATE kichhoat_counters SET tally = $2, expires_at = $3 WHERE key = $1")
                    .await?;
                tx.execute(&st, &[&key, &json(&tally)?, &big(tally.expires_at.0)]).await?;
            }
            (false, false) => {
                // Not ON CONFLICT: a counter another transaction created meanwhile was not counted here, so
                // the insert must fail (a race: the turn runs again on the real counter).
                let st = tx
                    .prepare_cached("INSERT INTO kichhoat_counters (key, tally, expires_at) VALUES ($1, $2, $3)")
                    .await?;
                tx.execute(&st, &[&key, &json(&tally)?, &big(tally.expires_at.0)]).await?;
            }
            (false, true) => {}
        }
    }
    Ok(None)
}

/// What an outbox row holds besides its columns, for the failed list.
#[derive(Serialize, Deserialize)]
struct FailedRow {
    sms: QueuedSms,
}

#[async_trait]
impl Store for PgStore {
    fn instance(&self) -> &str {
        &self.instance
    }

    async fn load(&self, phone: &Msisdn) -> Result<Option<(Conversation, Version)>, StoreError> {
        let client = self.client().await?;
        let st = client
            .prepare_cached("SELECT version, body FROM kichhoat_conversations WHERE phone = $1")
            .await
            .map_err(backend)?;
        match client.query_opt(&st, &[&phone.as_str()]).await.map_err(backend)? {
            Some(row) => Ok(Some((parse("conversation", row.get(1))?, small(row.get(0))))),
            None => Ok(None),
        }
    }

    async fn commit(&self, expect: Option<Version>, c: Commit) -> Result<CommitOutcome, StoreError> {
        let done = async {
            let mut client = self.client().await?;
            let tx = Self::begin(&mut client).await?;
            let result = async {
                let outcome = write_commit(&tx, expect, &c).await?;
                Ok((matches!(outcome, CommitOutcome::Committed(_)), outcome))
            }
            .await;
            finish(tx, result).await
        }
        .await;
        match done {
            Ok(outcome) => Ok(outcome),
            Err(Fail::Pg(e)) if is_race(&e) => Ok(CommitOutcome::Conflict),
            Err(e) => Err(e.into()),
        }
    }

    async fn durable(&self) -> Result<(), StoreError> {
        // Every commit waited for its WAL flush (synchronous_commit = on) before it returned or became visible.
        Ok(())
    }

    async fn citizen(&self, id: &NationalId) -> Result<Option<Citizen>, StoreError> {
        self.get_json("citizen", "SELECT body FROM kichhoat_citizens WHERE national_id = $1", id.as_str()).await
    }

    async fn account(&self, id: &NationalId) -> Result<Option<Account>, StoreError> {
        self.get_json("account", "SELECT body FROM kichhoat_accounts WHERE national_id = $1", id.as_str()).await
    }

    async fn tally(&self, key: &CounterKey) -> Result<Tally, StoreError> {
        Ok(self
            .get_json("counter", "SELECT tally FROM kichhoat_counters WHERE key = $1", key.as_str())
            .await?
            .unwrap_or_default())
    }

    async fn upsert_citizens(&self, citizens: &[Citizen]) -> Result<(), StoreError> {
        // By ID (the last row of one ID wins, as in a file read top to bottom), so every instance importing
        // at start locks rows in one order.
        let mut rows: BTreeMap<&str, String> = BTreeMap::new();
        for c in citizens {
            rows.insert(c.national_id.as_str(), json(c)?);
        }
        let rows: Vec<(&str, String)> = rows.into_iter().collect();
        let client = self.client().await?;
        let st = client
            .prepare_cached(
                "INSERT INTO kichhoat_citizens (national_id, body) SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[]) \
                 ON CONFLICT (national_id) DO UPDATE SET body = EXCLUDED.body \
                 WHERE kichhoat_citizens.body <> EXCLUDED.body",
            )
            .await
            .map_err(backend)?;
        for chunk in rows.chunks(UPSERT_BATCH) {
            let ids: Vec<&str> = chunk.iter().map(|(id, _)| *id).collect();
            let bodies: Vec<&str> = chunk.iter().map(|(_, b)| b.as_str()).collect();
            client.execute(&st, &[&ids, &bodies]).await.map_err(backend)?;
        }
        Ok(())
    }

    async fn citizens_after(&self, after: Option<&NationalId>, n: usize) -> Result<Vec<Citizen>, StoreError> {
        let client = self.client().await?;
        let after = after.map(|a| a.as_str()).unwrap_or("");
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let st = client
            .prepare_cached("SELECT body FROM kichhoat_citizens WHERE national_id > $1 ORDER BY national_id LIMIT $2")
            .await
            .map_err(backend)?;
        let rows = client.query(&st, &[&after, &n]).await.map_err(backend)?;
        rows.iter().map(|r| parse("citizen", r.get(0))).collect()
    }

    async fn remove_citizens(&self, ids: &[NationalId], audit: &[AuditRecord]) -> Result<usize, StoreError> {
        let ids: Vec<&str> = ids.iter().map(|i| i.as_str()).collect();
        let mut client = self.client().await?;
        let tx = Self::begin(&mut client).await?;
        let result = async {
            let st = tx
                .prepare_cached(
                    "SELECT national_id, body FROM kichhoat_citizens WHERE national_id = ANY($1) \
                     ORDER BY national_id FOR UPDATE",
                )
                .await?;
            let mut marked = 0;
            for row in tx.query(&st, &[&ids]).await? {
                let mut c: Citizen = parse("citizen", row.get(1))?;
                if c.status == CitizenStatus::Removed {
                    continue;
                }
                c.status = CitizenStatus::Removed;
                let st = tx.prepare_cached("UPDATE kichhoat_citizens SET body = $2 WHERE national_id = $1").await?;
                tx.execute(&st, &[&row.get::<_, &str>(0), &json(&c)?]).await?;
                marked += 1;
            }
            for a in audit {
                add_audit(&tx, a).await?;
            }
            Ok((true, marked))
        }
        .await;
        Ok(finish(tx, result).await?)
    }

    async fn conversations_of(&self, id: &NationalId) -> Result<Vec<(Msisdn, Conversation, Version)>, StoreError> {
        // For operators, not request paths: every conversation mentioning the number is read, and those
        // whose activation or recovery holds it kept. (ID numbers are digits: nothing to escape for LIKE.)
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT phone, version, body FROM kichhoat_conversations WHERE body LIKE $1 ORDER BY phone",
                &[&format!("%{}%", id.as_str())],
            )
            .await
            .map_err(backend)?;
        let mut out = Vec::new();
        for row in &rows {
            let conversation: Conversation = parse("conversation", row.get(2))?;
            if conversation.session.activation_of(id).is_none() {
                continue;
            }
            let phone = Msisdn::try_from(row.get::<_, String>(0))
                .map_err(|e| StoreError::Corrupt { what: "conversation phone", why: e.to_string() })?;
            out.push((phone, conversation, small(row.get(1))));
        }
        Ok(out)
    }

    async fn reset_counters(&self, keys: &[CounterKey], audit: &[AuditRecord]) -> Result<usize, StoreError> {
        let keys: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
        let mut client = self.client().await?;
        let tx = Self::begin(&mut client).await?;
        let result = async {
            let st = tx.prepare_cached("DELETE FROM kichhoat_counters WHERE key = ANY($1)").await?;
            let cleared = tx.execute(&st, &[&keys]).await?;
            for a in audit {
                add_audit(&tx, a).await?;
            }
            Ok((true, usize::try_from(cleared).unwrap_or(0)))
        }
        .await;
        Ok(finish(tx, result).await?)
    }

    async fn claim_outbox(
        &self,
        owner: &str,
        n: usize,
        lease: Duration,
        now: Millis,
    ) -> Result<Vec<QueuedSms>, StoreError> {
        let client = self.client().await?;
        let sql = format!(
            "WITH due AS (SELECT id, due_at FROM kichhoat_outbox WHERE due_at <= $1 ORDER BY due_at, id LIMIT $2 \
             FOR UPDATE SKIP LOCKED) \
             UPDATE kichhoat_outbox o SET attempts = o.attempts + 1, due_at = $3, claimed_by = $4 \
             FROM due WHERE o.id = due.id RETURNING {OUTBOX_COLUMNS}, due.due_at"
        );
        let st = client.prepare_cached(&sql).await.map_err(backend)?;
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let rows = client.query(&st, &[&big(now.0), &n, &big(now.plus(lease).0), &owner]).await.map_err(backend)?;
        let mut claimed: Vec<(i64, QueuedSms)> =
            rows.iter().map(|r| Ok((r.get::<_, i64>(11), queued(r)?))).collect::<Result<_, StoreError>>()?;
        claimed.sort_by_key(|(was, q)| (*was, q.id));
        Ok(claimed.into_iter().map(|(_, q)| q).collect())
    }

    async fn outbox_sent(&self, id: u64) -> Result<(), StoreError> {
        let client = self.client().await?;
        let st = client.prepare_cached("DELETE FROM kichhoat_outbox WHERE id = $1").await.map_err(backend)?;
        client.execute(&st, &[&big(id)]).await.map_err(backend)?;
        Ok(())
    }

    async fn outbox_sending(&self, owner: &str, id: u64) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let st = client
            .prepare_cached("UPDATE kichhoat_outbox SET in_flight = TRUE WHERE id = $1 AND claimed_by = $2")
            .await
            .map_err(backend)?;
        Ok(client.execute(&st, &[&big(id), &owner]).await.map_err(backend)? == 1)
    }

    async fn outbox_retry(&self, owner: &str, id: u64, at: Millis, why: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        let st = client
            .prepare_cached(
                "UPDATE kichhoat_outbox SET due_at = $3, claimed_by = NULL, in_flight = FALSE, last_error = $4 \
                 WHERE id = $1 AND claimed_by = $2",
            )
            .await
            .map_err(backend)?;
        client.execute(&st, &[&big(id), &owner, &big(at.0), &why]).await.map_err(backend)?;
        Ok(())
    }

    async fn outbox_park(&self, owner: &str, id: u64, until: Millis, why: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        let st = client
            .prepare_cached(
                "UPDATE kichhoat_outbox SET due_at = $3, claimed_by = NULL, last_error = $4 \
                 WHERE id = $1 AND claimed_by = $2",
            )
            .await
            .map_err(backend)?;
        client.execute(&st, &[&big(id), &owner, &big(until.0), &why]).await.map_err(backend)?;
        Ok(())
    }

    async fn delivery_report(&self, id: u64, audit: AuditRecord) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = Self::begin(&mut client).await?;
        let result = async {
            let st = tx.prepare_cached("DELETE FROM kichhoat_outbox WHERE id = $1").await?;
            let removed = tx.execute(&st, &[&big(id)]).await? == 1;
            add_audit(&tx, &audit).await?;
            Ok((true, removed))
        }
        .await;
        Ok(finish(tx, result).await?)
    }

    async fn outbox_failed(&self, owner: &str, id: u64, why: &str, audit: AuditRecord) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = Self::begin(&mut client).await?;
        let result = async {
            let sql = format!(
                "DELETE FROM kichhoat_outbox o WHERE o.id = $1 AND o.claimed_by = $2 RETURNING {OUTBOX_COLUMNS}"
            );
            let st = tx.prepare_cached(&sql).await?;
            let Some(row) = tx.query_opt(&st, &[&big(id), &owner]).await? else { return Ok((false, ())) };
            let sms = queued(&row)?;
            let st = tx
                .prepare_cached("INSERT INTO kichhoat_outbox_failed (id, failed_at, why, sms) VALUES ($1, $2, $3, $4)")
                .await?;
            tx.execute(&st, &[&big(id), &big(audit.at.0), &why, &json(&FailedRow { sms })?]).await?;
            add_audit(&tx, &audit).await?;
            Ok((true, ()))
        }
        .await;
        Ok(finish(tx, result).await?)
    }

    async fn outbox_len(&self) -> Result<usize, StoreError> {
        let client = self.client().await?;
        let n: i64 = client.query_one("SELECT count(*) FROM kichhoat_outbox", &[]).await.map_err(backend)?.get(0);
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn failed_sms(&self, n: usize) -> Result<Vec<FailedSms>, StoreError> {
        let client = self.client().await?;
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let rows = client
            .query("SELECT failed_at, why, sms FROM kichhoat_outbox_failed ORDER BY failed_at, id LIMIT $1", &[&n])
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| {
                let row: FailedRow = parse("failed sms", r.get(2))?;
                Ok(FailedSms { sms: row.sms, failed_at: Millis(small(r.get(0))), why: r.get(1) })
            })
            .collect()
    }

    async fn expire(&self, now: Millis, keep: &Retention) -> Result<Expired, StoreError> {
        let mut out = Expired::default();
        let cutoff = |d: Duration| big(now.0.saturating_sub(d.as_millis() as u64));
        loop {
            let n = self.expire_batch(cutoff(keep.replies), true).await?;
            out.swept += n;
            if n < EXPIRE_BATCH as usize {
                break;
            }
        }
        loop {
            let n = self.expire_batch(cutoff(keep.conversations), false).await?;
            out.conversations += n;
            if n < EXPIRE_BATCH as usize {
                break;
            }
        }
        let client = self.client().await?;
        let n = client
            .execute("DELETE FROM kichhoat_counters WHERE expires_at <= $1", &[&big(now.0)])
            .await
            .map_err(backend)?;
        out.counters = usize::try_from(n).unwrap_or(0);
        let n = client
            .execute("DELETE FROM kichhoat_outbox_failed WHERE failed_at < $1", &[&cutoff(keep.failed_sms)])
            .await
            .map_err(backend)?;
        out.failed_sms = usize::try_from(n).unwrap_or(0);
        Ok(out)
    }

    async fn append_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = Self::begin(&mut client).await?;
        let result = async {
            for r in records {
                add_audit(&tx, r).await?;
            }
            Ok((true, ()))
        }
        .await;
        Ok(finish(tx, result).await?)
    }

    async fn audit_after(&self, after: Option<u64>, n: usize) -> Result<Vec<(u64, AuditRecord)>, StoreError> {
        let client = self.client().await?;
        let after = after.map(big).unwrap_or(-1);
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let st = client
            .prepare_cached("SELECT id, record FROM kichhoat_audit WHERE id > $1 ORDER BY id LIMIT $2")
            .await
            .map_err(backend)?;
        let rows = client.query(&st, &[&after, &n]).await.map_err(backend)?;
        rows.iter().map(|r| Ok((small(r.get(0)), parse("audit", r.get(1))?))).collect()
    }

    async fn audit_unexported(&self, n: usize) -> Result<Vec<(u64, AuditRecord)>, StoreError> {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        let claim = big(AUDIT_CLAIM.as_millis() as u64);
        let mut client = self.client().await?;
        let tx = Self::begin(&mut client).await?;
        let result = async {
            self.unhurried(&tx).await?;
            let st = tx
                .prepare_cached(
                    "WITH t AS (SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT AS now), \
                     c AS (SELECT u.id FROM kichhoat_audit_unexported u, t \
                           WHERE u.claimed_by IS NULL OR u.claimed_by = $1 OR u.claim_until < t.now \
                           ORDER BY u.id LIMIT $2 FOR UPDATE OF u SKIP LOCKED) \
                     UPDATE kichhoat_audit_unexported x SET claimed_by = $1, claim_until = t.now + $3 \
                     FROM c, t WHERE x.id = c.id RETURNING x.id",
                )
                .await?;
            let ids: Vec<i64> = tx.query(&st, &[&self.exporter, &n, &claim]).await?.iter().map(|r| r.get(0)).collect();
            if ids.is_empty() {
                return Ok((true, Vec::new()));
            }
            let st = tx.prepare_cached("SELECT id, record FROM kichhoat_audit WHERE id = ANY($1) ORDER BY id").await?;
            let rows = tx.query(&st, &[&ids]).await?;
            if rows.len() != ids.len() {
                // Both are written in one transaction and audit records are never removed.
                return Err(Fail::Store(StoreError::Corrupt {
                    what: "unexported audit record",
                    why: format!("{} ids marked unexported, {} records found", ids.len(), rows.len()),
                }));
            }
            let records: Vec<(u64, AuditRecord)> = rows
                .iter()
                .map(|r| Ok((small(r.get(0)), parse("audit", r.get(1))?)))
                .collect::<Result<_, StoreError>>()?;
            Ok((true, records))
        }
        .await;
        Ok(finish(tx, result).await?)
    }

    async fn audit_exported(&self, ids: &[u64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = ids.iter().map(|i| big(*i)).collect();
        let mut client = self.client().await?;
        let tx = Self::begin(&mut client).await?;
        let result = async {
            self.unhurried(&tx).await?;
            let st = tx.prepare_cached("DELETE FROM kichhoat_audit_unexported WHERE id = ANY($1)").await?;
            tx.execute(&st, &[&ids]).await?;
            Ok((true, ()))
        }
        .await;
        Ok(finish(tx, result).await?)
    }
}

impl PgStore {
    /// One batch of conversation expiry: sweeps the replies and cursors of conversations written before
    /// `cut` (`sweep`), or reduces idle ones swept before `cut`. Returns how many it changed.
    async fn expire_batch(&self, cut: i64, sweep: bool) -> Result<usize, StoreError> {
        let mut client = self.client().await?;
        let tx = Self::begin(&mut client).await?;
        let result = async {
            let sql = if sweep {
                "SELECT phone, fresh_at, body FROM kichhoat_conversations WHERE fresh_at < $1 \
                         ORDER BY fresh_at LIMIT $2 FOR UPDATE SKIP LOCKED"
            } else {
                "SELECT phone, idle_at, body FROM kichhoat_conversations WHERE idle_at < $1 \
                         ORDER BY idle_at LIMIT $2 FOR UPDATE SKIP LOCKED"
            };
            let st = tx.prepare_cached(sql).await?;
            let rows = tx.query(&st, &[&cut, &EXPIRE_BATCH]).await?;
            for row in &rows {
                let phone: &str = row.get(0);
                let at: i64 = row.get(1);
                let mut conv: Conversation = parse("conversation", row.get(2))?;
                if sweep {
                    conv.recent.clear();
                    conv.cursors.clear();
                    let st = tx
                        .prepare_cached(
                            "UPDATE kichhoat_conversations SET version = nextval('kichhoat_versions'), \
                                     fresh_at = NULL, idle_at = $2, body = $3 WHERE phone = $1",
                        )
                        .await?;
                    tx.execute(&st, &[&phone, &at, &json(&conv)?]).await?;
                } else {
                    match conv.session.idle_form() {
                        None => {
                            let st = tx.prepare_cached("DELETE FROM kichhoat_conversations WHERE phone = $1").await?;
                            tx.execute(&st, &[&phone]).await?;
                        }
                        Some(session) => {
                            // Filed nowhere: nothing more to expire.
                            let st = tx
                                .prepare_cached(
                                    "UPDATE kichhoat_conversations SET \
                                             version = nextval('kichhoat_versions'), fresh_at = NULL, \
                                             idle_at = NULL, body = $2 WHERE phone = $1",
                                )
                                .await?;
                            tx.execute(&st, &[&phone, &json(&Conversation::new(session))?]).await?;
                        }
                    }
                }
            }
            Ok((true, rows.len()))
        }
        .await;
        Ok(finish(tx, result).await?)
    }
}
