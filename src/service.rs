//! One inbound hop, from a carrier's parsed request to a durable reply. Shared by the HTTP server and
//! `kichhoat simulate`, so both run exactly the same path.
//!
//! Per hop: take the phone's lock (concurrent hops of one phone are serialized), load its conversation,
//! recognise a retry (same session and text → the stored reply, no side effect), run the engine on the
//! bounded blocking pool, commit the conversation with its effects in one transaction, wait for the group
//! commit, and only then answer. If another phone activated the same ID in between, the commit is refused
//! and the step runs again on the fresh state.

use std::sync::Arc;

use rand::rngs::OsRng;
use tokio::sync::{Mutex, MutexGuard, Notify, Semaphore};
use tracing::{error, info, info_span, Instrument};

use crate::channel::africastalking::{self as at, Derived, Hop};
use crate::clock::{Clock, Millis};
use crate::crypto::{Crypto, CryptoError};
use crate::domain::{Msisdn, NationalId};
use crate::engine::{
    self, keys, Account, Citizen, Ctx, Directory, DirectoryError, Effect, EngineError, Inbound, LoginFailures, Reply,
    Session, SmsPurpose,
};
use crate::flow::{Charset, Flow};
use crate::registry::Registry;
use crate::store::{AuditRecord, Commit, CommitOutcome, Conversation, QueuedSms, Store, StoreError};

/// Lock stripes for per-phone serialization: bounded memory, rare false sharing.
const LOCK_STRIPES: usize = 1024;
/// How often a step is re-run when its activation lost a race.
const COMMIT_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("worker pool: {0}")]
    Pool(String),
    #[error("durability: {0}")]
    Durability(String),
    #[error("the account changed under the step {COMMIT_ATTEMPTS} times")]
    Contention,
    #[error("the hop was not answered in time")]
    Timeout,
}

pub struct Service {
    pub store: Arc<dyn Store>,
    /// Where citizens are looked up (the imported CSV today; a national registry API later).
    pub registry: Arc<dyn Registry>,
    pub flow: Arc<Flow>,
    pub crypto: Arc<Crypto>,
    pub clock: Arc<dyn Clock>,
    pub charset: Charset,
    /// Woken after a commit that queued an SMS.
    pub outbox_ready: Arc<Notify>,
    locks: Vec<Mutex<()>>,
    /// Bounds concurrent engine steps, which may hash with argon2id (19 MiB each).
    hashing: Arc<Semaphore>,
}

/// The engine's view: citizens from the registry, everything else from the store.
struct StoreDirectory(Arc<dyn Store>, Arc<dyn Registry>);

impl Directory for StoreDirectory {
    fn citizen(&self, id: &NationalId) -> Result<Option<Citizen>, DirectoryError> {
        self.1.citizen(id).map_err(|e| DirectoryError(e.to_string()))
    }
    fn account(&self, id: &NationalId) -> Result<Option<Account>, DirectoryError> {
        self.0.account(id).map_err(|e| DirectoryError(e.to_string()))
    }
    fn otp_sends(&self, phone: &Msisdn) -> Result<Vec<Millis>, DirectoryError> {
        self.0.otp_sends(phone).map_err(|e| DirectoryError(e.to_string()))
    }
    fn login_failures(&self, id: &NationalId) -> Result<LoginFailures, DirectoryError> {
        self.0.login_failures(id).map_err(|e| DirectoryError(e.to_string()))
    }
}

impl Service {
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<dyn Registry>,
        flow: Arc<Flow>,
        crypto: Arc<Crypto>,
        clock: Arc<dyn Clock>,
        charset: Charset,
    ) -> Service {
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2);
        Service {
            store,
            registry,
            flow,
            crypto,
            clock,
            charset,
            outbox_ready: Arc::new(Notify::new()),
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            hashing: Arc::new(Semaphore::new(workers)),
        }
    }

    async fn lock(&self, phone: &Msisdn) -> MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        phone.hash(&mut h);
        let i = (h.finish() as usize) % self.locks.len();
        self.locks[i].lock().await
    }

    /// Answers one Africa's Talking hop.
    pub async fn ussd(&self, hop: Hop) -> Result<Reply, ServiceError> {
        // Log lines of one hop carry the masked phone and a short pseudonym of the carrier session, so an
        // operator can follow a conversation without the logs holding who it was or what was typed.
        let session = hex::encode(&self.crypto.hop_mac(hop.phone.as_str(), &hop.session_id, "")[..4]);
        let span = info_span!("hop", phone = %hop.phone.masked(), session = %session);
        self.ussd_in_span(hop).instrument(span).await
    }

    async fn ussd_in_span(&self, hop: Hop) -> Result<Reply, ServiceError> {
        let _guard = self.lock(&hop.phone).await;
        let conv = self.store.conversation(&hop.phone)?;
        let cursor = conv.as_ref().and_then(|c| c.hop.as_ref());
        let inputs = match at::derive(&self.crypto, &hop, cursor) {
            Derived::Replay(reply) => {
                // The original answer may have timed out before its commit was on disk: make sure it is.
                self.durable().await?;
                info!("ussd retry answered from the stored reply");
                return Ok(reply);
            }
            Derived::Lost => {
                info!("ussd text does not extend the previous hop");
                let lang = conv.as_ref().map(|c| c.session.lang).unwrap_or(crate::flow::Lang::Vi);
                return Ok(Reply { text: self.flow.catalog(lang).get(keys::END_DIAL_AGAIN).to_string(), end: true });
            }
            Derived::Dial => vec![Inbound::Dial],
            Derived::DialThen(parts) => {
                std::iter::once(Inbound::DialWithChoices).chain(parts.into_iter().map(Inbound::Text)).collect()
            }
            Derived::Input(s) => vec![Inbound::Text(s)],
        };
        let session = conv.as_ref().map(|c| c.session.clone());
        let mut replay = Some(inputs);
        for _ in 0..COMMIT_ATTEMPTS {
            let inputs = match replay.take() {
                Some(i) => i,
                None => break,
            };
            let kept = inputs.clone();
            let now = self.clock.now();
            let (session, reply, effects) = self.run_steps(hop.phone.clone(), session.clone(), inputs, now).await?;
            let state = session.state.clone();
            let cursor = at::advance(&self.crypto, &hop, cursor, &reply, now);
            let conversation = Conversation { session, hop: Some(cursor) };
            let queued_sms = effects.iter().any(|e| matches!(e, Effect::Sms { .. }));
            let commit = self.commit_of(&hop.phone, conversation, effects, now)?;
            let audited: Vec<_> = commit.audit.iter().map(|a| a.event.clone()).collect();
            match self.store.commit(commit)? {
                CommitOutcome::Committed => {
                    self.durable().await?;
                    // Logged once, and only for what was written.
                    for a in &audited {
                        let id = a.national_id.as_ref().map(|i| i.masked()).unwrap_or_default();
                        let to = a.phone.as_ref().map(|p| p.masked()).unwrap_or_default();
                        info!(event = %a.event, id = %id, registered_phone = %to, "audit");
                    }
                    if queued_sms {
                        self.outbox_ready.notify_one();
                    }
                    info!(state = %state, end = reply.end, "ussd hop answered");
                    return Ok(reply);
                }
                CommitOutcome::AccountExists => {
                    info!("activation lost a race; running the step again");
                    replay = Some(kept);
                }
            }
        }
        Err(ServiceError::Contention)
    }

    /// Waits until everything committed so far is on disk.
    pub async fn durable(&self) -> Result<(), ServiceError> {
        self.store
            .durable()
            .await
            .map_err(|e| ServiceError::Durability(e.to_string()))?
            .map_err(ServiceError::Durability)
    }

    async fn run_steps(
        &self,
        caller: Msisdn,
        session: Option<Session>,
        inputs: Vec<Inbound>,
        now: Millis,
    ) -> Result<(Session, Reply, Vec<Effect>), ServiceError> {
        let permit = self.hashing.clone().acquire_owned().await.map_err(|e| ServiceError::Pool(e.to_string()))?;
        let flow = self.flow.clone();
        let crypto = self.crypto.clone();
        let directory = StoreDirectory(self.store.clone(), self.registry.clone());
        let job = move || -> Result<(Session, Reply, Vec<Effect>), EngineError> {
            let _permit = permit;
            let ctx = Ctx { flow: &flow, directory: &directory, crypto: &crypto, now, caller: &caller };
            let mut session = session;
            let mut effects = Vec::new();
            let mut reply = None;
            for input in inputs {
                let turn = engine::step(&ctx, session.take(), input, &mut OsRng)?;
                session = Some(turn.session);
                effects.extend(turn.effects);
                let end = turn.reply.end;
                reply = Some(turn.reply);
                if end {
                    break;
                }
            }
            match (session, reply) {
                (Some(s), Some(r)) => Ok((s, r, effects)),
                _ => Err(EngineError::Flow { state: String::new(), why: "no input to run" }),
            }
        };
        let result = tokio::task::spawn_blocking(job).await.map_err(|e| ServiceError::Pool(e.to_string()))?;
        Ok(result?)
    }

    fn commit_of(
        &self,
        phone: &Msisdn,
        conversation: Conversation,
        effects: Vec<Effect>,
        now: Millis,
    ) -> Result<Commit, ServiceError> {
        let mut commit = Commit {
            at: now,
            phone: phone.clone(),
            conversation,
            activate: None,
            sms: Vec::new(),
            audit: Vec::new(),
            otp_sent: Vec::new(),
            login_failures: Vec::new(),
        };
        for e in effects {
            match e {
                Effect::Sms { to, body, purpose } => {
                    if purpose == SmsPurpose::Otp {
                        commit.otp_sent.push(to.clone());
                    }
                    let sealed = self.crypto.seal(&body, to.as_str().as_bytes(), &mut OsRng)?;
                    commit.sms.push(QueuedSms { id: 0, to, purpose, sealed, queued_at: now });
                }
                Effect::Activate(account) => commit.activate = Some(account),
                Effect::LoginFailures(id, record) => commit.login_failures.push((id, record)),
                Effect::Audit(event) => commit.audit.push(AuditRecord { at: now, caller: phone.clone(), event }),
            }
        }
        Ok(commit)
    }

    /// The reply for an operational fault: logged here once, with no detail for the caller.
    pub fn fault_reply(&self, err: &ServiceError) -> Reply {
        error!(error = %err, "hop failed");
        Reply { text: self.flow.catalog(crate::flow::Lang::Vi).get(keys::END_UNAVAILABLE).to_string(), end: true }
    }
}
