//! The embedded store: sled 0.34, one tree per record kind, one multi-tree transaction per hop, and a
//! group-commit flusher thread.
//!
//! Durability: sled's `flush_async` deadlocks under concurrent load (sled issue 1308), and a blocking
//! `flush` per request would serialize every reply behind its own fsync. Instead one thread owns
//! flushing: callers register a waiter, the thread takes every waiter queued so far, runs one `flush`, and
//! answers them all. Everything committed before a waiter was registered is covered by that flush.

use std::path::Path;
use std::sync::mpsc;
use std::sync::Mutex;
use std::thread;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use tokio::sync::oneshot;

use super::{AuditRecord, Commit, CommitOutcome, Conversation, Durable, QueuedSms, Store, StoreError};
use crate::clock::Millis;
use crate::domain::{Msisdn, NationalId};
use crate::engine::{Account, Citizen, LoginFailures};

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

fn backend(e: impl std::fmt::Display) -> StoreError {
    StoreError::Backend(e.to_string())
}

pub struct SledStore {
    db: sled::Db,
    conversations: sled::Tree,
    citizens: sled::Tree,
    accounts: sled::Tree,
    outbox: sled::Tree,
    audit: sled::Tree,
    otp_sends: sled::Tree,
    login_failures: sled::Tree,
    /// Random, made with the database: outbox message ids are `<instance>-<seq>`, so a fresh database
    /// writing to an old outbox file never collides with the messages already in it.
    instance: String,
    flush_tx: Mutex<mpsc::Sender<oneshot::Sender<Result<(), String>>>>,
}

impl SledStore {
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let db = sled::Config::new().path(dir).mode(sled::Mode::HighThroughput).open().map_err(backend)?;
        let tree = |name: &str| db.open_tree(name).map_err(backend);
        let instance = instance_id(&db)?;
        let (tx, rx) = mpsc::channel::<oneshot::Sender<Result<(), String>>>();
        let flusher_db = db.clone();
        thread::Builder::new()
            .name("sled-group-commit".into())
            .spawn(move || group_commit(flusher_db, rx))
            .map_err(backend)?;
        Ok(SledStore {
            conversations: tree("conversations")?,
            citizens: tree("citizens")?,
            accounts: tree("accounts")?,
            outbox: tree("outbox")?,
            audit: tree("audit")?,
            otp_sends: tree("otp_sends")?,
            login_failures: tree("login_failures")?,
            db,
            instance,
            flush_tx: Mutex::new(tx),
        })
    }

    /// Flushes synchronously (shutdown).
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(backend)
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
}

/// Why a commit transaction stopped.
enum Abort {
    AccountExists,
    Store(StoreError),
}

impl Abort {
    fn store(e: StoreError) -> ConflictableTransactionError<Abort> {
        ConflictableTransactionError::Abort(Abort::Store(e))
    }
}

/// The OTP send times of one phone, as stored.
#[derive(Serialize, Deserialize, Default)]
struct OtpSends {
    times: Vec<Millis>,
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

fn group_commit(db: sled::Db, rx: mpsc::Receiver<oneshot::Sender<Result<(), String>>>) {
    while let Ok(first) = rx.recv() {
        let mut waiters = vec![first];
        waiters.extend(rx.try_iter());
        let result = db.flush().map(|_| ()).map_err(|e| e.to_string());
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

impl Store for SledStore {
    fn instance(&self) -> &str {
        &self.instance
    }

    fn conversation(&self, phone: &Msisdn) -> Result<Option<Conversation>, StoreError> {
        self.get(&self.conversations, "conversation", phone.as_str().as_bytes())
    }

    fn citizen(&self, id: &NationalId) -> Result<Option<Citizen>, StoreError> {
        self.get(&self.citizens, "citizen", id.as_str().as_bytes())
    }

    fn account(&self, id: &NationalId) -> Result<Option<Account>, StoreError> {
        self.get(&self.accounts, "account", id.as_str().as_bytes())
    }

    fn otp_sends(&self, phone: &Msisdn) -> Result<Vec<Millis>, StoreError> {
        let sends: Option<OtpSends> = self.get(&self.otp_sends, "otp sends", phone.as_str().as_bytes())?;
        Ok(sends.map(|s| s.times).unwrap_or_default())
    }

    fn login_failures(&self, id: &NationalId) -> Result<LoginFailures, StoreError> {
        Ok(self.get(&self.login_failures, "login failures", id.as_str().as_bytes())?.unwrap_or_default())
    }

    fn upsert_citizen(&self, citizen: &Citizen) -> Result<(), StoreError> {
        let bytes = encode(citizen)?;
        let key = citizen.national_id.as_str().as_bytes();
        if self.citizens.get(key).map_err(backend)?.as_deref() != Some(&bytes[..]) {
            self.citizens.insert(key, bytes).map_err(backend)?;
        }
        Ok(())
    }

    fn commit(&self, c: Commit) -> Result<CommitOutcome, StoreError> {
        let conversation = encode(&c.conversation)?;
        let account = match &c.activate {
            Some(a) => Some((a.national_id.as_str().as_bytes().to_vec(), encode(a)?)),
            None => None,
        };
        let audit: Vec<Vec<u8>> = c.audit.iter().map(encode).collect::<Result<_, _>>()?;
        let login: Vec<(Vec<u8>, Vec<u8>)> = c
            .login_failures
            .iter()
            .map(|(id, f)| Ok((id.as_str().as_bytes().to_vec(), encode(f)?)))
            .collect::<Result<_, StoreError>>()?;
        let trees =
            (&self.conversations, &self.accounts, &self.outbox, &self.audit, &self.otp_sends, &self.login_failures);
        let result = trees.transaction(|(conv, accounts, outbox, audit_tree, sends, failures)| {
            for (key, bytes) in &login {
                failures.insert(key.as_slice(), bytes.as_slice())?;
            }
            if let Some((key, bytes)) = &account {
                if accounts.get(key)?.is_some() {
                    return Err(ConflictableTransactionError::Abort(Abort::AccountExists));
                }
                accounts.insert(key.as_slice(), bytes.as_slice())?;
            }
            conv.insert(c.phone.as_str().as_bytes(), conversation.as_slice())?;
            for sms in &c.sms {
                let id = outbox.generate_id()?;
                let record = QueuedSms { id, ..sms.clone() };
                let bytes = encode(&record).map_err(Abort::store)?;
                outbox.insert(&id.to_be_bytes(), bytes)?;
            }
            for a in &audit {
                let id = audit_tree.generate_id()?;
                audit_tree.insert(&id.to_be_bytes(), a.as_slice())?;
            }
            for phone in &c.otp_sent {
                let key = phone.as_str().as_bytes();
                let mut times: Vec<Millis> = sends
                    .get(key)?
                    .and_then(|b| decode::<OtpSends>("otp sends", &b).ok())
                    .map(|s| s.times)
                    .unwrap_or_default();
                times.retain(|t| c.at.since(*t) < super::OTP_SENDS_KEPT);
                times.push(c.at);
                let bytes = encode(OtpSends { times }).map_err(Abort::store)?;
                sends.insert(key, bytes)?;
            }
            Ok(())
        });
        match result {
            Ok(()) => Ok(CommitOutcome::Committed),
            Err(TransactionError::Abort(Abort::AccountExists)) => Ok(CommitOutcome::AccountExists),
            Err(TransactionError::Abort(Abort::Store(e))) => Err(e),
            Err(TransactionError::Storage(e)) => Err(backend(e)),
        }
    }

    fn durable(&self) -> Durable {
        let (tx, rx) = oneshot::channel();
        let sent = match self.flush_tx.lock() {
            Ok(sender) => sender.send(tx).map_err(|e| e.0),
            Err(_) => Err(tx),
        };
        if let Err(tx) = sent {
            // The flusher is gone (shutting down): flush here rather than promise durability we lack.
            let _ = tx.send(self.db.flush().map(|_| ()).map_err(|e| e.to_string()));
        }
        rx
    }

    fn outbox(&self, limit: usize) -> Result<Vec<QueuedSms>, StoreError> {
        self.outbox.iter().take(limit).map(|kv| kv.map_err(backend).and_then(|(_, v)| decode("outbox", &v))).collect()
    }

    fn outbox_done(&self, id: u64) -> Result<(), StoreError> {
        self.outbox.remove(id.to_be_bytes()).map(|_| ()).map_err(backend)
    }

    fn sweep_hops(&self, cutoff: Millis) -> Result<usize, StoreError> {
        let mut cleared = 0;
        for kv in self.conversations.iter() {
            let (key, old) = kv.map_err(backend)?;
            let Ok(mut conv) = decode::<Conversation>("conversation", &old) else { continue };
            if conv.hop.is_none() || conv.session.updated_at >= cutoff {
                continue;
            }
            conv.hop = None;
            let new = encode(&conv)?;
            // Compare-and-swap: if a hop rewrote the conversation since we read it, leave it alone.
            if let Ok(Ok(())) = self.conversations.compare_and_swap(&key, Some(old), Some(new)) {
                cleared += 1;
            }
        }
        Ok(cleared)
    }

    fn audit(&self) -> Result<Vec<AuditRecord>, StoreError> {
        self.audit.iter().map(|kv| kv.map_err(backend).and_then(|(_, v)| decode("audit", &v))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{AuditEvent, Session, Slots, SmsPurpose};
    use crate::flow::Lang;
    use crate::store::QueuedSms;

    fn conversation(state: &str) -> Conversation {
        let session =
            Session { lang: Lang::Vi, state: state.into(), tries: 0, updated_at: Millis(1), slots: Slots::default() };
        Conversation { session, hop: None }
    }

    fn account(id: &NationalId, phone: &Msisdn) -> Account {
        Account {
            national_id: id.clone(),
            phone: phone.clone(),
            password_hash: "$argon2id$x".into(),
            passcode_hash: "$argon2id$y".into(),
            questions: Vec::new(),
            activated_at: Millis(1),
        }
    }

    #[tokio::test]
    async fn a_second_activation_of_one_id_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let id = NationalId::parse("001099012345", 2026).unwrap();
        let (a, b) = (Msisdn::parse("0912345678").unwrap(), Msisdn::parse("0987654321").unwrap());
        let sms = QueuedSms {
            id: 0,
            to: a.clone(),
            purpose: SmsPurpose::Activated,
            sealed: vec![1, 2],
            queued_at: Millis(1),
        };
        let audit = AuditRecord {
            at: Millis(1),
            caller: a.clone(),
            event: AuditEvent { event: "activated".into(), national_id: Some(id.clone()), phone: Some(a.clone()) },
        };
        let first = Commit {
            at: Millis(1),
            otp_sent: vec![],
            login_failures: vec![],
            phone: a.clone(),
            conversation: conversation("menu"),
            activate: Some(account(&id, &a)),
            sms: vec![sms.clone()],
            audit: vec![audit.clone()],
        };
        assert_eq!(store.commit(first).unwrap(), CommitOutcome::Committed);
        let second = Commit {
            at: Millis(1),
            otp_sent: vec![],
            login_failures: vec![],
            phone: b.clone(),
            conversation: conversation("menu"),
            activate: Some(account(&id, &b)),
            sms: vec![sms],
            audit: vec![audit],
        };
        assert_eq!(store.commit(second).unwrap(), CommitOutcome::AccountExists);
        assert!(store.conversation(&b).unwrap().is_none(), "nothing of the refused commit was written");
        assert_eq!(store.outbox(10).unwrap().len(), 1);
        assert_eq!(store.audit().unwrap().len(), 1);
        assert_eq!(store.account(&id).unwrap().unwrap().phone, a);
        store.durable().await.unwrap().unwrap();
    }

    #[test]
    fn idle_hop_cursors_are_swept_and_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let cursor =
            crate::store::HopCursor { session_mac: "00".into(), text_len: 0, text_mac: "00".into(), recent: vec![] };
        for (phone, at) in [("0912345678", 1_000), ("0987654321", 900_000)] {
            let mut conversation = conversation("act_otp");
            conversation.session.updated_at = Millis(at);
            conversation.hop = Some(cursor.clone());
            let phone = Msisdn::parse(phone).unwrap();
            store
                .commit(Commit {
                    at: Millis(1),
                    phone,
                    conversation,
                    activate: None,
                    sms: vec![],
                    audit: vec![],
                    otp_sent: vec![],
                    login_failures: vec![],
                })
                .unwrap();
        }
        assert_eq!(store.sweep_hops(Millis(600_000)).unwrap(), 1);
        let old = store.conversation(&Msisdn::parse("0912345678").unwrap()).unwrap().unwrap();
        assert!(old.hop.is_none() && old.session.state == "act_otp", "only the cursor goes");
        assert!(store.conversation(&Msisdn::parse("0987654321").unwrap()).unwrap().unwrap().hop.is_some());
    }

    #[tokio::test]
    async fn many_waiters_share_group_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(SledStore::open(dir.path()).unwrap());
        let mut tasks = Vec::new();
        for i in 0..64u32 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let phone = Msisdn::parse(&format!("09123{i:05}")).unwrap();
                let c = Commit {
                    at: Millis(1),
                    phone,
                    conversation: conversation("menu"),
                    activate: None,
                    sms: vec![],
                    audit: vec![],
                    otp_sent: vec![],
                    login_failures: vec![],
                };
                store.commit(c).unwrap();
                store.durable().await.unwrap().unwrap();
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    }
}
