//! One turn of a conversation, from a channel's parsed request to a durable reply. Shared by every
//! channel, the HTTP server and `kichhoat simulate`; it names no carrier.
//!
//! Per turn: take the phone's lock stripe (an optimisation: concurrent turns of one phone in this process
//! wait instead of conflicting), load the conversation and its version, let the channel say what the
//! request means (a retry gets the stored reply and changes nothing), run the engine on the bounded
//! blocking pool, and commit the conversation with its effects against the version loaded. The commit
//! is what makes it correct across processes: when the conversation changed meanwhile, another phone
//! activated the ID first, or a counter's limit was reached, nothing is written and the turn runs again
//! on fresh state (a bounded number of times). The reply goes out only once its commit is durable and,
//! when it audited something, once the audit trail file has those lines on disk ([`AuditLog::drain`]);
//! a trail that cannot be written (disk full) makes the turn a fault: the commit stands, the records stay
//! unexported for the next drain, and the citizen gets the polite "try again later".

use std::sync::Arc;
use std::time::Duration;

use rand::rngs::OsRng;
use tokio::sync::{Mutex, MutexGuard, Notify, Semaphore};
use tracing::{error, info, info_span, Instrument};

use crate::audit::{AuditLog, AuditLogError};
use crate::channel::{Channel, Derived};
use crate::clock::{Clock, Millis};
use crate::crypto::{Crypto, CryptoError};
use crate::domain::{Msisdn, NationalId};
use crate::engine::Policy;
use crate::engine::{
    self, keys, Account, Citizen, Ctx, Directory, DirectoryError, Effect, EngineError, Inbound, Medium, Reply, Session,
    Site,
};
use crate::flow::{Flow, Lang};
use crate::limits::{CounterKey, Tally};
use crate::registry::Registry;
use crate::store::{AuditRecord, Commit, CommitOutcome, Conversation, NewSms, RecentReply, Store, StoreError};

/// Lock stripes for per-phone serialization: bounded memory, rare false sharing.
const LOCK_STRIPES: usize = 1024;
/// How often a turn runs again when its commit was refused (a conflict, a lost activation race, a limit
/// reached meanwhile). Each refusal means another turn made progress, so a handful suffices.
const COMMIT_ATTEMPTS: usize = 6;
/// How long a reply is kept for a channel's retries (an Africa's Talking session lasts at most ~180 s),
/// and how many per phone. The keys are keyed hashes of texts that may hold a password: not kept longer.
pub const RETRY_TTL: Duration = Duration::from_secs(10 * 60);
const RECENT_REPLIES: usize = 8;
/// How long after a reply that queued an SMS the delivery worker is woken.
const WAKE_AFTER_REPLY: Duration = Duration::from_millis(20);
/// The least time a turn that looked an ID number up takes to its reply. Unknown ID, phone mismatch, pending
/// and a real lookup (which hashes and seals a code) already do the same store work; padding them to one
/// floor, above what any of them costs on a loaded 2-core machine, hides what differences remain (OWASP
/// Authentication Cheat Sheet: response times must not tell whether an account exists).
const LOOKUP_FLOOR: Duration = Duration::from_millis(30);

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
    #[error("the turn's commit was refused {COMMIT_ATTEMPTS} times in a row")]
    Contention,
    #[error("the turn was not answered in time")]
    Timeout,
    #[error(transparent)]
    AuditLog(#[from] AuditLogError),
}

pub struct Service {
    pub store: Arc<dyn Store>,
    /// Where citizens are looked up (the imported CSV today; a national registry API later).
    pub registry: Arc<dyn Registry>,
    pub flow: Arc<Flow>,
    pub crypto: Arc<Crypto>,
    pub clock: Arc<dyn Clock>,
    /// The abuse limits in force.
    pub policy: Arc<Policy>,
    /// The USSD code and hotline the texts mention (see [`Service::with_site`]).
    pub site: Arc<Site>,
    /// Woken after a commit that queued an SMS.
    pub outbox_ready: Arc<Notify>,
    /// Where a turn's audit records are written before its reply.
    pub audit_log: Arc<AuditLog>,
    locks: Vec<Mutex<()>>,
    /// Bounds concurrent engine steps, which may hash with argon2id (19 MiB each).
    hashing: Arc<Semaphore>,
}

/// The engine's view, read from the blocking pool: citizens from the registry, the rest from the store.
struct Lookups {
    store: Arc<dyn Store>,
    registry: Arc<dyn Registry>,
    rt: tokio::runtime::Handle,
}

fn lookup<T>(r: Result<T, StoreError>) -> Result<T, DirectoryError> {
    r.map_err(|e| DirectoryError(e.to_string()))
}

impl Directory for Lookups {
    fn citizen(&self, id: &NationalId) -> Result<Option<Citizen>, DirectoryError> {
        lookup(self.rt.block_on(self.registry.citizen(id)))
    }
    fn account(&self, id: &NationalId) -> Result<Option<Account>, DirectoryError> {
        lookup(self.rt.block_on(self.store.account(id)))
    }
    fn tally(&self, key: &CounterKey) -> Result<Tally, DirectoryError> {
        lookup(self.rt.block_on(self.store.tally(key)))
    }
}

impl Service {
    pub fn new(
        store: Arc<dyn Store>,
        registry: Arc<dyn Registry>,
        flow: Arc<Flow>,
        crypto: Arc<Crypto>,
        clock: Arc<dyn Clock>,
        policy: Policy,
        audit_log: Arc<AuditLog>,
    ) -> Service {
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).max(2);
        Service {
            store,
            registry,
            flow,
            crypto,
            clock,
            policy: Arc::new(policy),
            site: Arc::new(Site::default()),
            outbox_ready: Arc::new(Notify::new()),
            audit_log,
            locks: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            hashing: Arc::new(Semaphore::new(workers)),
        }
    }

    /// The service with the USSD code and hotline its texts mention.
    pub fn with_site(mut self, site: Site) -> Service {
        self.site = Arc::new(site);
        self
    }

    async fn lock(&self, phone: &Msisdn) -> MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        phone.hash(&mut h);
        let i = (h.finish() as usize) % self.locks.len();
        self.locks[i].lock().await
    }

    /// Answers one request of channel `ch`.
    pub async fn turn<C: Channel>(&self, ch: &C, request: C::Request) -> Result<Reply, ServiceError> {
        // Log lines of a turn carry the masked phone and a short pseudonym of the channel's session, so an
        // operator can follow a conversation without the logs holding who it was or what was typed.
        let span = info_span!("turn", channel = C::KIND, phone = %ch.phone(&request).masked(), session = %ch.pseudonym(&request));
        self.turn_in_span(ch, request).instrument(span).await
    }

    async fn turn_in_span<C: Channel>(&self, ch: &C, request: C::Request) -> Result<Reply, ServiceError> {
        let started = tokio::time::Instant::now();
        let phone = ch.phone(&request).clone();
        let guard = self.lock(&phone).await;
        let key = ch.retry_key(&request);
        for _ in 0..COMMIT_ATTEMPTS {
            let loaded = self.store.load(&phone).await?;
            let (conversation, version) = match loaded {
                Some((c, v)) => (Some(c), Some(v)),
                None => (None, None),
            };
            let stored = conversation.as_ref().and_then(|c| c.recent.iter().find(|r| r.key == key));
            let cursor = conversation.as_ref().and_then(|c| c.cursors.get(C::KIND));
            let inbound = match ch.derive(&request, cursor, stored.map(|r| &r.reply)) {
                Derived::Replay(reply) => {
                    // The original answer may have timed out before its commit was on disk, or before its
                    // audit lines were: make sure they are.
                    self.store.durable().await?;
                    self.audit_log.drain().await?;
                    info!("retry answered from the stored reply");
                    return Ok(reply);
                }
                Derived::Lost => {
                    info!("request does not follow the channel's session; asked to start again");
                    let lang = conversation.as_ref().map(|c| c.session.lang).unwrap_or(Lang::Vi);
                    return Ok(Reply {
                        text: self.flow.catalog(lang).get(keys::END_DIAL_AGAIN).to_string(),
                        end: true,
                    });
                }
                Derived::Inbound(i) => i,
            };
            let now = self.clock.now();
            let session = conversation.as_ref().map(|c| c.session.clone());
            let (session, reply, effects, looked_up) =
                self.run_step(phone.clone(), C::MEDIUM, session, inbound, now).await?;
            let state = session.state.clone();
            let mut next = conversation.unwrap_or_else(|| Conversation::new(session.clone()));
            next.session = session;
            next.recent.retain(|r| now.since(r.at) <= RETRY_TTL && r.key != key);
            next.recent.push(RecentReply { key: key.clone(), reply: reply.clone(), at: now });
            if next.recent.len() > RECENT_REPLIES {
                next.recent.drain(..next.recent.len() - RECENT_REPLIES);
            }
            match ch.advance(&request, next.cursors.get(C::KIND), &reply) {
                Some(c) => next.cursors.insert(C::KIND.to_string(), c),
                None => next.cursors.remove(C::KIND),
            };
            let queued_sms = effects.iter().any(|e| matches!(e, Effect::Sms { .. }));
            let commit = self.commit_of(&phone, C::KIND, next, effects, now)?;
            let audited: Vec<_> = commit.audit.iter().map(|a| a.event.clone()).collect();
            match self.store.commit(version, commit).await? {
                CommitOutcome::Committed(_) => {
                    // Logged once, and only for what was written.
                    for a in &audited {
                        let id = a.national_id.as_ref().map(|i| i.masked()).unwrap_or_default();
                        let to = a.phone.as_ref().map(|p| p.masked()).unwrap_or_default();
                        info!(event = %a.event, id = %id, registered_phone = %to, "audit");
                    }
                    if !audited.is_empty() {
                        // Everything audited is in the trail file, on disk, before the citizen is answered.
                        self.audit_log.drain().await?;
                    }
                    // The floor is waited out without the phone's lock: the phone's next hop may go on.
                    drop(guard);
                    if looked_up {
                        tokio::time::sleep_until(started + LOOKUP_FLOOR).await;
                    }
                    if queued_sms {
                        // Woken once the reply is on its way, not while it is: a lookup that sends a code
                        // must not be told apart from one that does not by the delivery it starts
                        // (OWASP: no enumeration by timing). The SMS still leaves within milliseconds.
                        let ready = self.outbox_ready.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(WAKE_AFTER_REPLY).await;
                            ready.notify_one();
                        });
                    }
                    info!(state = %state, end = reply.end, "turn answered");
                    return Ok(reply);
                }
                CommitOutcome::Conflict => info!("conversation or counter changed meanwhile; running the turn again"),
                CommitOutcome::AccountExists => info!("activation lost a race; running the turn again"),
                CommitOutcome::LimitReached(limit) => info!(%limit, "limit reached meanwhile; running the turn again"),
            }
        }
        Err(ServiceError::Contention)
    }

    async fn run_step(
        &self,
        caller: Msisdn,
        medium: Medium,
        session: Option<Session>,
        inbound: Inbound,
        now: Millis,
    ) -> Result<(Session, Reply, Vec<Effect>, bool), ServiceError> {
        let permit = self.hashing.clone().acquire_owned().await.map_err(|e| ServiceError::Pool(e.to_string()))?;
        let flow = self.flow.clone();
        let crypto = self.crypto.clone();
        let policy = self.policy.clone();
        let site = self.site.clone();
        let lookups = Lookups {
            store: self.store.clone(),
            registry: self.registry.clone(),
            rt: tokio::runtime::Handle::current(),
        };
        let job = move || -> Result<(Session, Reply, Vec<Effect>, bool), EngineError> {
            let _permit = permit;
            let ctx = Ctx {
                flow: &flow,
                directory: &lookups,
                crypto: &crypto,
                now,
                caller: &caller,
                medium,
                policy: &policy,
                site: &site,
            };
            let stepped = engine::step(&ctx, session, inbound, &mut OsRng)?;
            Ok((stepped.session, stepped.reply, stepped.effects, stepped.lookup))
        };
        let result = tokio::task::spawn_blocking(job).await.map_err(|e| ServiceError::Pool(e.to_string()))?;
        Ok(result?)
    }

    fn commit_of(
        &self,
        phone: &Msisdn,
        channel: &str,
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
            bumps: Vec::new(),
            account_update: None,
        };
        for e in effects {
            match e {
                Effect::Sms { to, body, purpose } => {
                    let sealed = self.crypto.seal(&body, to.as_str().as_bytes(), &mut OsRng)?;
                    commit.sms.push(NewSms { to, purpose, sealed, give_up_at: now.plus(purpose.useful_for()) });
                }
                Effect::Activate(account) => commit.activate = Some(account),
                Effect::Count(bump) => commit.bumps.push(bump),
                Effect::UpdateAccount(u) => commit.account_update = Some(u),
                Effect::Audit(event) => commit.audit.push(AuditRecord {
                    at: now,
                    caller: Some(phone.clone()),
                    channel: Some(channel.to_string()),
                    event,
                }),
            }
        }
        Ok(commit)
    }

    /// The reply for an operational fault: logged here once, with no detail for the caller.
    pub fn fault_reply(&self, err: &ServiceError) -> Reply {
        error!(error = %err, "turn failed");
        Reply { text: self.flow.catalog(Lang::Vi).get(keys::END_UNAVAILABLE).to_string(), end: true }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::africastalking::{AfricasTalking, Hop};
    use crate::clock::ManualClock;
    use crate::crypto::HashCost;
    use crate::domain::Secret;
    use crate::registry::ImportedRegistry;
    use crate::store::memory::MemoryStore;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_turn_whose_audit_line_cannot_be_written_is_a_fault_and_its_retry_writes_it_before_answering() {
        let now = Millis(1_795_996_800_000);
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        crate::registry::import_demo(store.as_ref(), now, "test").await.unwrap();
        let crypto = Arc::new(Crypto::from_master(&[4; 32], HashCost::DANGER_TEST_ONLY).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let log = Arc::new(AuditLog::open(&path, 1 << 20, store.clone(), crypto.clone()).unwrap());
        let service = Service::new(
            store.clone(),
            Arc::new(ImportedRegistry(store.clone())),
            Arc::new(Flow::load_from(None).unwrap()),
            crypto.clone(),
            Arc::new(ManualClock::new(now)),
            Policy::default(),
            log.clone(),
        );
        let at = AfricasTalking::new(crypto);
        let phone = Msisdn::parse("0987654321").unwrap();
        let hop = |text: &str| Hop { phone: phone.clone(), session_id: "s1".into(), text: Secret::new(text) };
        for text in ["", "2", "2*001099012345"] {
            service.turn(&at, hop(text)).await.unwrap();
        }

        log.fail_writes(true);
        let err = service.turn(&at, hop("2*001099012345*Wrong*pw1")).await.unwrap_err();
        assert!(matches!(err, ServiceError::AuditLog(_)), "{err}");
        assert!(service.fault_reply(&err).end, "the polite fault reply");
        let audited = crate::store::audit_all(store.as_ref()).await.unwrap();
        assert_eq!(audited.last().map(|r| r.event.event.as_str()), Some("login_failed"), "the commit stands");
        assert_eq!(store.audit_unexported(10).await.unwrap().len(), 1, "and waits for the next drain");
        assert!(!std::fs::read_to_string(&path).unwrap().contains("login_failed"));

        // The carrier retries the hop: the stored reply, once the line is on disk.
        log.fail_writes(false);
        let reply = service.turn(&at, hop("2*001099012345*Wrong*pw1")).await.unwrap();
        assert!(!reply.end, "the password is asked again");
        assert!(std::fs::read_to_string(&path).unwrap().contains("\"event\":\"login_failed\""));
        assert!(store.audit_unexported(10).await.unwrap().is_empty());
    }
}
